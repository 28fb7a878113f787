"""tinynet.nn modules: shapes, gradients (tinynet.gradcheck in float64, input and every parameter),
gradient accumulation, zero_grad, no_grad, train/eval, the module tree, initialisation, repr."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    COURSE_INPUT,
    COURSE_KEYS,
    COURSE_SHAPES,
    conv_configs,
    course_network,
    flatten_cases,
    kink_free,
    labels_for,
    linear_configs,
    loss_configs,
    normal,
    pool_configs,
    seeds,
    tie_free,
)

import tinynet
import tinynet.functional as F
import tinynet.nn as nn


def on(device, a):
    return tinynet.to_device(a, device)


# ----------------------------------------------------------------------------------------------
# Every layer: output shape and gradcheck (input and all parameters), float64, on both paths
# ----------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("kernel_path")
@given(cfg=conv_configs(), seed=seeds)
def test_conv2d_shape_and_gradcheck(cfg, seed):
    tinynet.manual_seed(seed % 1000)
    conv = cfg.module(dtype=tinynet.float64)
    assert conv.weight.shape == cfg.w_shape
    assert (conv.bias is None) == (not cfg.bias)
    if cfg.bias:
        assert conv.bias.shape == (cfg.c_out,)
    x = normal(seed, cfg.x_shape)
    assert conv(x).shape == cfg.y_shape
    assert tinynet.gradcheck(conv, x) is True


@pytest.mark.usefixtures("kernel_path")
@given(cfg=linear_configs(), seed=seeds)
def test_linear_shape_and_gradcheck(cfg, seed):
    tinynet.manual_seed(seed % 1000)
    fc = cfg.module(dtype=tinynet.float64)
    assert fc.weight.shape == cfg.w_shape
    assert (fc.bias is None) == (not cfg.bias)
    x = normal(seed, cfg.x_shape)
    assert fc(x).shape == cfg.y_shape
    assert tinynet.gradcheck(fc, x) is True


@pytest.mark.usefixtures("kernel_path")
@given(cfg=pool_configs(), seed=seeds)
def test_maxpool2d_shape_and_gradcheck(cfg, seed):
    pool = cfg.module()
    x = tie_free(seed, cfg.x_shape)
    assert pool(x).shape == cfg.y_shape
    assert list(pool.parameters()) == []
    assert tinynet.gradcheck(pool, x) is True


@pytest.mark.usefixtures("kernel_path")
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple), seed=seeds)
def test_relu_shape_and_gradcheck(shape, seed):
    x = kink_free(seed, shape)
    relu = nn.ReLU()
    assert relu(x).shape == shape
    assert list(relu.parameters()) == []
    assert tinynet.gradcheck(relu, x) is True


@given(case=flatten_cases(), seed=seeds)
def test_flatten_shape_and_gradcheck(case, seed):
    shape, start, end = case
    flat = nn.Flatten(start, end)
    x = normal(seed, shape)
    y = flat(x)
    s, e = start % len(shape), end % len(shape)
    assert y.shape == shape[:s] + (int(np.prod(shape[s:e + 1])),) + shape[e + 1:]
    assert tinynet.gradcheck(flat, x) is True


@given(cfg=loss_configs(), seed=seeds)
def test_cross_entropy_loss_gradcheck(cfg, seed):
    z = normal(seed, cfg.logits_shape, cfg.scale)
    labels = labels_for(seed + 1, cfg.n, cfg.classes, cfg.label_dtype)
    assert tinynet.gradcheck(nn.CrossEntropyLoss(), (z, labels)) is True


def kink_margin(model, x) -> float:
    """How far the forward pass of x is from a kink: the smallest |input| of any ReLU and the
    smallest gap between the two largest values of any max-pool window whose maximum is not 0
    (float64). A finite difference whose step moves no value by this much crosses no kink and
    no tie. (Windows of zeros from dead ReLUs tie, harmlessly: they stay 0 and pass no gradient.)"""
    from tinynet.functional._geometry import pad2d, window_geometry, window_view

    margin, h = np.inf, x.astype(np.float64)
    for module in model.copy().double():
        if isinstance(module, nn.ReLU):
            margin = min(margin, np.abs(h).min())
        elif isinstance(module, nn.MaxPool2d):
            k, s, p, out = window_geometry(h.shape, module.kernel_size, module.stride,
                                           module.padding)
            windows = window_view(pad2d(h, p, -np.inf), k, s, out).reshape(h.shape[:2] + out
                                                                            + (-1,))
            top2 = np.sort(windows, axis=-1)[..., -2:]
            live = top2[..., 1] != 0
            if live.any():
                margin = min(margin, (top2[..., 1] - top2[..., 0])[live].min())
        h = module(h)
    return float(margin)


@settings(max_examples=5)
@given(seed=seeds)
@pytest.mark.usefixtures("kernel_path")
def test_course_network_gradcheck(seed):
    """On both paths. eps = 1e-7 moves every value of the network by less than about 1e-6, so
    the inputs are drawn (by seed) at least 1e-5 away from every ReLU kink and max-pool tie:
    then the finite difference cannot cross one, and every seed passes."""
    from hypothesis import assume

    tinynet.manual_seed(seed % 1000)
    model = course_network()  # float32: gradcheck works on a float64 copy
    x = normal(seed, (2,) + COURSE_INPUT, dtype=np.float32)
    assert model(x).shape == (2, 10)
    assume(kink_margin(model, x) > 1e-5)
    assert tinynet.gradcheck(model, x, eps=1e-7, n_samples=6, seed=seed % 100) is True


# ----------------------------------------------------------------------------------------------
# Modules compute what the functional pairs compute
# ----------------------------------------------------------------------------------------------
@given(cfg=conv_configs(), seed=seeds)
def test_conv2d_module_equals_functional(cfg, seed):
    conv = cfg.module(dtype=tinynet.float64)
    x = normal(seed, cfg.x_shape)
    y = conv(x)
    b = conv.bias.data if conv.bias is not None else None
    y_ref, cache = F.conv2d_forward(x, conv.weight.data, b, cfg.stride, cfg.padding)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = normal(seed + 1, y.shape)
    dx = conv.backward(dy)
    dx_ref, dw_ref, db_ref = F.conv2d_backward(dy, cache)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, dw_ref, rtol=1e-12, atol=1e-12)
    if b is not None:
        np.testing.assert_allclose(conv.bias.grad, db_ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Gradient accumulation and zero_grad
# ----------------------------------------------------------------------------------------------
def _layers():
    return [
        ("conv", lambda: nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=1,
                                   dtype=tinynet.float64), (2, 2, 6, 5)),
        ("linear", lambda: nn.Linear(5, 4, dtype=tinynet.float64), (3, 5)),
        ("course", lambda: course_network(dtype=tinynet.float64), (2,) + COURSE_INPUT),
    ]


@pytest.mark.parametrize("name, make, shape", _layers(), ids=[c[0] for c in _layers()])
def test_gradients_accumulate_over_backward_calls(name, make, shape):
    tinynet.manual_seed(0)
    model = make()
    params = list(model.parameters())
    assert params and all(p.grad is None for p in params)  # None until a backward
    x1, x2 = normal(1, shape), normal(2, shape)

    def grads_for(x, g_seed):
        model.zero_grad()
        y = model(x)
        dx = model.backward(normal(g_seed, y.shape))
        return dx, [p.grad.copy() for p in params]

    dx1, g1 = grads_for(x1, 10)
    dx2, g2 = grads_for(x2, 20)
    model.zero_grad()
    y = model(x1)
    dx1_again = model.backward(normal(10, y.shape))
    y = model(x2)
    model.backward(normal(20, y.shape))
    np.testing.assert_allclose(dx1_again, dx1, rtol=1e-12, atol=1e-14)
    for p, a, b in zip(params, g1, g2, strict=True):
        np.testing.assert_allclose(p.grad, a + b, rtol=1e-10, atol=1e-12)
    assert any(np.abs(a).max() > 0 for a in g1)  # not a vacuous check

    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    y = model(x2)
    model.backward(normal(20, y.shape))
    for p, b in zip(params, g2, strict=True):
        np.testing.assert_allclose(p.grad, b, rtol=1e-12, atol=1e-14)


def test_same_batch_twice_doubles_the_gradient():
    tinynet.manual_seed(3)
    fc = nn.Linear(4, 3, dtype=tinynet.float64)
    x, dy = normal(0, (5, 4)), normal(1, (5, 3))
    fc(x)
    fc.backward(dy)
    once = fc.weight.grad.copy(), fc.bias.grad.copy()
    fc(x)
    fc.backward(dy)
    np.testing.assert_allclose(fc.weight.grad, 2 * once[0], rtol=1e-12)
    np.testing.assert_allclose(fc.bias.grad, 2 * once[1], rtol=1e-12)


def test_backward_does_not_alias_the_gradient_it_is_given():
    """A later backward must not change an earlier returned or stored gradient in place."""
    fc = nn.Linear(3, 2, dtype=tinynet.float64)
    x = normal(0, (4, 3))
    fc(x)
    fc.backward(normal(1, (4, 2)))
    first = fc.weight.grad
    first_copy = first.copy()
    fc.zero_grad()
    fc(x)
    fc.backward(normal(2, (4, 2)))
    np.testing.assert_array_equal(first, first_copy)


# ----------------------------------------------------------------------------------------------
# Call order and no_grad
# ----------------------------------------------------------------------------------------------
def _all_modules():
    return [
        ("conv", lambda: nn.Conv2d(1, 2, 3), (2, 1, 5, 5)),
        ("linear", lambda: nn.Linear(4, 3), (2, 4)),
        ("relu", nn.ReLU, (2, 3)),
        ("pool", lambda: nn.MaxPool2d(2), (1, 1, 4, 4)),
        ("flatten", nn.Flatten, (2, 3, 2)),
        ("sequential", lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU()), (2, 4)),
    ]


@pytest.mark.parametrize("name, make, shape", _all_modules(), ids=[c[0] for c in _all_modules()])
def test_backward_before_forward_and_twice_is_an_error(name, make, shape):
    x = normal(0, shape, dtype=np.float32)
    y_shape = make()(x).shape
    m = make()
    with pytest.raises(RuntimeError):
        m.backward(np.ones(y_shape, np.float32))
    y = m(x)
    m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError):
        m.backward(np.ones_like(y))


@pytest.mark.parametrize("name, make, shape", _all_modules(), ids=[c[0] for c in _all_modules()])
def test_no_grad_keeps_no_cache(name, make, shape):
    m = make()
    x = normal(0, shape, dtype=np.float32)
    y_grad = m(x)
    m.backward(np.ones_like(y_grad))  # consume the cache
    with tinynet.no_grad():
        y = m(x)
    np.testing.assert_array_equal(y, y_grad)  # same values
    with pytest.raises(RuntimeError):
        m.backward(np.ones_like(y))
    # recording is back on after the block
    y = m(x)
    m.backward(np.ones_like(y))


def test_no_grad_restores_recording_after_an_exception():
    fc = nn.Linear(2, 2)
    with pytest.raises(ZeroDivisionError), tinynet.no_grad():
        raise ZeroDivisionError
    fc(np.ones((1, 2), np.float32))
    fc.backward(np.ones((1, 2), np.float32))


def test_no_grad_forward_does_not_drop_an_earlier_cache_silently_wrong():
    """Forward under no_grad after a recorded forward: backward must not use stale data silently
    with the new batch; either it errors (cache dropped) or uses the recorded batch."""
    fc = nn.Linear(3, 2, dtype=tinynet.float64)
    x1, x2 = normal(0, (4, 3)), normal(1, (5, 3))
    fc(x1)
    with tinynet.no_grad():
        fc(x2)
    dy = normal(2, (4, 2))
    try:
        fc.backward(dy)
    except RuntimeError:
        return
    np.testing.assert_allclose(fc.weight.grad, dy.T @ x1, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# train / eval
# ----------------------------------------------------------------------------------------------
def test_train_and_eval_flags_reach_every_module():
    model = course_network()
    assert model.training and all(m.training for m in model.modules())
    assert model.eval() is model
    assert not model.training and not any(m.training for m in model.modules())
    assert model.train() is model
    assert all(m.training for m in model.modules())
    model.train(False)
    assert not any(m.training for m in model.modules())
    model.train(True)
    assert all(m.training for m in model.modules())


def test_eval_mode_does_not_change_the_output():
    tinynet.manual_seed(0)
    model = course_network()
    x = normal(0, (2,) + COURSE_INPUT, dtype=np.float32)
    y_train = model(x)
    model.eval()
    np.testing.assert_array_equal(model(x), y_train)


# ----------------------------------------------------------------------------------------------
# Sequential and the module tree
# ----------------------------------------------------------------------------------------------
def test_sequential_indexing_len_and_order():
    layers = [nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3
    assert seq[0] is layers[0] and seq[2] is layers[2] and seq[-1] is layers[2]
    assert list(seq.children()) == layers
    assert [name for name, _ in seq.named_children()] == ["0", "1", "2"]
    mods = list(seq.modules())
    assert mods[0] is seq and mods[1:] == layers


def test_sequential_backward_runs_children_in_reverse():
    tinynet.manual_seed(1)
    a, r, b = nn.Linear(4, 3, dtype=tinynet.float64), nn.ReLU(), nn.Linear(3, 2,
                                                                           dtype=tinynet.float64)
    seq = nn.Sequential(a, r, b)
    x, dy = normal(0, (5, 4)), normal(1, (5, 2))
    y = seq(x)
    # the chain by hand, on copies
    a2, b2 = a.copy(), b.copy()
    h = a2(x)
    mask = h > 0
    y_ref = b2(np.maximum(h, 0))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    dx = seq.backward(dy)
    dx_ref = a2.backward(b2.backward(dy) * mask)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)
    for p, q in zip(seq.parameters(), list(a2.parameters()) + list(b2.parameters()), strict=True):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-14)


def _assert_same_step(model, other, x, dy, exact=True):
    """Forward, backward from dy, and every gradient: bit for bit (or to 1e-12)."""
    check = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12))
    model.zero_grad()
    other.zero_grad()
    check(model(x), other(x))
    check(model.backward(dy), other.backward(dy))
    for (name, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        assert p.grad is not None, name
        check(p.grad, q.grad)
    with tinynet.no_grad():
        check(model(x), other(x))


@settings(max_examples=25, deadline=None)
@given(cfg=conv_configs(), seed=seeds, pool=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_fuse_groups_conv_relu_pool_and_linear_relu_with_bit_for_bit_results(cfg, seed, pool):
    """``tinynet.fuse(model)``: Conv2d+ReLU(+MaxPool2d without padding) and Linear+ReLU run as
    one call each; outputs, dL/dx and every gradient are bit for bit those of the plain model
    (the fast engine's modules one by one), and close to the reference kernels'."""
    tinynet.manual_seed(seed % 1000)
    conv = nn.Conv2d(cfg.c_in, cfg.c_out, cfg.kernel, cfg.stride, cfg.padding, bias=cfg.bias,
                     dtype=tinynet.float64)
    ho, wo = conv.output_shape(cfg.x_shape)[2:]
    kernel = (min(pool[0], ho), min(pool[1], wo))
    pools = (nn.MaxPool2d(kernel, stride=pool[1]),
             nn.MaxPool2d(kernel, padding=(kernel[0] // 2, 0)))
    for p in pools:
        ph, pw = p.output_shape((1, 1, ho, wo))[2:]
        plain = nn.Sequential(conv.copy(), nn.ReLU(), p, nn.Flatten(),
                              nn.Linear(cfg.c_out * ph * pw, 3, dtype=tinynet.float64), nn.ReLU(),
                              nn.Linear(3, 2, dtype=tinynet.float64))
        fused = tinynet.fuse(plain)
        groups = [type(m).__name__ for m in fused]
        head = ["ConvReLU"] + ([] if p.padding == (0, 0) else ["MaxPool2d"])
        assert groups == head + ["Flatten", "LinearReLU", "Linear"]
        assert all(a is b for a, b in zip(fused.parameters(), plain.parameters(), strict=True))
        x, dy = normal(seed, cfg.x_shape), normal(seed + 1, (cfg.n, 2))
        _assert_same_step(fused, plain, x, dy)
        with tinynet.use_reference():  # the fused groups run their modules one by one there
            _assert_same_step(fused, plain, x, dy)
        reference = plain.copy()
        with tinynet.use_reference():
            reference.zero_grad()
            y_ref, dx_ref = reference(x), reference.backward(dy)
        plain.zero_grad()
        np.testing.assert_allclose(plain(x), y_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(plain.backward(dy), dx_ref, rtol=1e-12, atol=1e-12)


def test_fuse_shows_its_groups_and_leaves_the_model_as_it_was():
    model = course_network()
    before = repr(model)
    fused = tinynet.fuse(model)
    assert repr(model) == before
    text = repr(fused)
    assert text.count("Conv2d+ReLU+MaxPool2d(") == 2 and text.count("Linear+ReLU(") == 2
    assert [n for n, _ in model.named_parameters()] == COURSE_KEYS  # the plain keys
    custom = _Net()
    assert tinynet.fuse(custom) is custom  # not a Sequential: nothing to fuse


def test_the_fused_model_shares_the_train_eval_mode_of_the_plain_one():
    """model.eval() puts the fused copy's BatchNorm and Dropout in evaluation too (and back):
    a fused copy left in training would normalise with the batch and drop units, silently."""
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, dtype=tinynet.float64),
                          nn.BatchNorm2d(2, dtype=tinynet.float64), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(32, 3, dtype=tinynet.float64))
    fused = tinynet.fuse(model)
    x = normal(0, (4, 1, 6, 6))
    model(x)  # one training step's statistics, so that the running ones are not the defaults
    model.eval()
    assert not any(m.training for m in model.modules())
    with tinynet.no_grad():
        np.testing.assert_allclose(fused(x), model(x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fused(x), fused(x))  # no dropout: the same twice
    fused.train()
    assert all(m.training for m in list(model.modules())[1:])
    before = model[1].running_mean.copy()
    fused(x)  # training: the batch's statistics update the shared running mean
    assert not np.array_equal(model[1].running_mean, before)


def test_a_pool_too_large_for_the_fused_conv_output_gives_the_pools_error():
    model = tinynet.fuse(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(4)))
    with pytest.raises(ValueError, match=r"MaxPool2d.*window 4x4 is larger"):
        model(np.zeros((1, 1, 5, 5), np.float32))


def test_every_call_order_a_learner_tries_gives_the_right_gradients():
    """Model, then module by module, then backward; the fused copy in between; twice; eval.
    Each is compared with one clean forward/backward (float64): never a silent wrong number."""
    tinynet.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5, dtype=tinynet.float64), nn.ReLU(),
                      nn.Linear(5, 3, dtype=tinynet.float64))
    x, g = normal(0, (6, 4)), normal(1, (6, 3))
    clean = m.copy()
    clean(x)
    dx_clean = clean.backward(g)
    grads = [p.grad.copy() for p in clean.parameters()]

    def check(dx):
        np.testing.assert_allclose(dx, dx_clean, rtol=1e-12, atol=1e-12)
        for p, ref in zip(m.parameters(), grads, strict=True):
            np.testing.assert_allclose(p.grad, ref, rtol=1e-12, atol=1e-12)

    # the case: m(x), then the learner's loop, then m.backward
    m(x)
    h = x
    for mod in m:
        h = mod(h)
    m.zero_grad()
    check(m.backward(g))
    # module by module, backward by hand in reverse
    m.zero_grad()
    h = x
    for mod in m:
        h = mod(h)
    d = g
    for mod in reversed(list(m)):
        d = mod.backward(d)
    check(d)
    # a fused copy's forward and backward between the plain ones
    fused = tinynet.fuse(m)
    m.zero_grad()
    m(x)
    fused(x)
    dx = m.backward(g)
    check(dx)
    m.zero_grad()
    check(fused.backward(g))
    # a backward twice without a forward between them: a clear error, for each module
    with pytest.raises(RuntimeError, match="needs a forward pass first"):
        m.backward(g)
    with pytest.raises(RuntimeError, match="needs a forward pass first"):
        fused.backward(g)
    # after eval(): the same gradients (no dropout or batch norm here), and forward twice
    m.eval()
    m.zero_grad()
    m(x)
    m(x)
    check(m.backward(g))
    # a forward under no_grad keeps nothing: the backward after it is an error, not stale
    m.zero_grad()
    m(x)
    m.backward(g)
    with tinynet.no_grad():
        m(x)
    with pytest.raises(RuntimeError, match="needs a forward pass first"):
        m[2].backward(g)


def test_a_relu_whose_forward_is_replaced_on_the_instance_runs_on_its_own():
    """A wrapper put on one module (as tinynet.inspect records a model) sees every call, also in
    a fused model (such a module is never grouped)."""
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    seen = []
    relu = model[1]
    original = relu.forward
    relu.forward = lambda x: seen.append(x.shape) or original(x)
    fused = tinynet.fuse(model)
    assert [type(m).__name__ for m in fused] == ["Conv2d", "ReLU"] and fused[1] is relu
    assert (fused(normal(0, (2, 1, 5, 5), dtype=np.float32)) >= 0).all()
    assert seen == [(2, 2, 3, 3)]
    fused.backward(np.ones((2, 2, 3, 3), np.float32))  # the ReLU's own backward ran: no error
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())  # recorded by instance wrappers
    recorded = tinynet.inspect.record_forward(fresh, normal(0, (2, 1, 5, 5), dtype=np.float32))
    assert [type(m).__name__ for _, m, _, _ in recorded] == ["Conv2d", "ReLU"]


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))

    def forward(self, x):
        return self.head(self.act(self.conv1(x)))

    def backward(self, g):
        return self.conv1.backward(self.act.backward(self.head.backward(g)))


def test_named_parameters_use_pytorch_names():
    model = course_network()
    names = [n for n, _ in model.named_parameters()]
    assert names == COURSE_KEYS
    for (n, p), q in zip(model.named_parameters(), model.parameters(), strict=True):
        assert p is q and p.shape == COURSE_SHAPES[n]
        assert isinstance(p, nn.Parameter)
    net = _Net()
    assert [n for n, _ in net.named_parameters()] == ["conv1.weight", "conv1.bias",
                                                      "head.1.weight", "head.1.bias"]
    assert [n for n, _ in net.named_children()] == ["conv1", "act", "head"]
    assert len(list(net.modules())) == 6  # net, conv1, act, head, flatten, linear


def test_custom_module_trains_through_its_children():
    tinynet.manual_seed(2)
    net = _Net()
    x = normal(0, (2, 1, 6, 6), dtype=np.float32)
    y = net(x)
    assert y.shape == (2, 3)
    net.backward(np.ones_like(y))
    assert all(p.grad is not None and p.grad.shape == p.shape for p in net.parameters())
    assert tinynet.gradcheck(net, x.astype(np.float64)) is True


def test_parameter_basics():
    p = nn.Parameter(np.zeros((2, 3), np.float32))
    assert p.grad is None
    assert p.data.shape == (2, 3)


# ----------------------------------------------------------------------------------------------
# Initialisation, as in PyTorch
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Linear(300, 200), 300),
    (lambda: nn.Conv2d(3, 64, (5, 4)), 3 * 5 * 4),
    (lambda: nn.Conv2d(6, 100, 5), 150),
])
def test_default_init_is_uniform_within_one_over_sqrt_fan_in(make, fan_in):
    tinynet.manual_seed(0)
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    for p in (layer.weight.data, layer.bias.data):
        a = np.asarray(p, dtype=np.float64)
        assert np.abs(a).max() <= bound * (1 + 1e-6)
    w = np.asarray(layer.weight.data, dtype=np.float64).ravel()
    # uniform on [-bound, bound]: reaches close to both ends, mean 0, variance bound^2 / 3
    assert w.max() > 0.98 * bound and w.min() < -0.98 * bound
    assert abs(w.mean()) < 4 * bound / math.sqrt(3 * w.size)
    np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=0.1)
    # a quarter of the mass in each quarter of the interval
    hist, _ = np.histogram(w, bins=4, range=(-bound, bound))
    np.testing.assert_allclose(hist / w.size, 0.25, atol=0.03)
    b = np.asarray(layer.bias.data, dtype=np.float64)
    assert b.std() > 0.3 * bound  # spread over the interval, not zeros


def test_manual_seed_makes_init_reproducible():
    tinynet.manual_seed(42)
    a = course_network()
    tinynet.manual_seed(42)
    b = course_network()
    tinynet.manual_seed(43)
    c = course_network()
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        assert not np.array_equal(p.data, r.data), name
    # two layers built one after the other differ
    tinynet.manual_seed(42)
    l1, l2 = nn.Linear(5, 5), nn.Linear(5, 5)
    assert not np.array_equal(l1.weight.data, l2.weight.data)


def test_layers_without_bias():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    fc = nn.Linear(4, 2, bias=False)
    assert conv.bias is None and fc.bias is None
    assert [n for n, _ in conv.named_parameters()] == ["weight"]
    assert list(fc.state_dict()) == ["weight"]
    x = normal(0, (1, 4), dtype=np.float32)
    np.testing.assert_allclose(fc(x), x @ fc.weight.data.T, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Devices and dtypes of a module
# ----------------------------------------------------------------------------------------------
def test_module_device_and_dtype(device):
    model = course_network(device=device)
    assert model.device == device
    assert model.dtype == tinynet.float32
    x = on(device, normal(0, (2,) + COURSE_INPUT, dtype=np.float32))
    y = model(x)
    assert type(y).__module__.split(".")[0] == ("numpy" if device == "cpu" else "cupy")
    assert y.dtype == np.float32
    assert model.double() is model
    assert model.dtype == tinynet.float64
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model(on(device, normal(0, (2,) + COURSE_INPUT))).dtype == np.float64
    assert model.float() is model and model.dtype == tinynet.float32
    assert model.to(device) is model and model.device == device


def test_double_and_float_convert_existing_gradients():
    fc = nn.Linear(3, 2)
    fc(np.ones((1, 3), np.float32))
    fc.backward(np.ones((1, 2), np.float32))
    fc.double()
    assert fc.weight.data.dtype == np.float64
    assert fc.weight.grad is None or fc.weight.grad.dtype == np.float64
    # training continues in float64
    fc(np.ones((1, 3)))
    fc.backward(np.ones((1, 2)))
    assert fc.weight.grad.dtype == np.float64


def test_module_to_cpu_keeps_values():
    tinynet.manual_seed(0)
    fc = nn.Linear(3, 2)
    w = fc.weight.data.copy()
    fc.to("cpu")
    np.testing.assert_array_equal(tinynet.to_numpy(fc.weight.data), w)
    assert fc.device == "cpu"


# ----------------------------------------------------------------------------------------------
# repr, as in PyTorch
# ----------------------------------------------------------------------------------------------
def test_repr_looks_like_pytorch():
    text = repr(course_network())
    lines = text.splitlines()
    assert lines[0] == "Sequential("
    assert lines[-1] == ")"
    assert lines[1] == "  (0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))"
    assert lines[2] == "  (1): ReLU()"
    assert lines[3].startswith("  (2): MaxPool2d(") and "kernel_size" in lines[3]
    assert lines[7] == "  (6): Flatten(start_dim=1, end_dim=-1)"
    assert lines[8] == "  (7): Linear(in_features=192, out_features=120, bias=True)"
    assert len(lines) == 14
    assert repr(nn.Conv2d(2, 3, (3, 1), stride=2, padding=(1, 0), bias=False)) == (
        "Conv2d(2, 3, kernel_size=(3, 1), stride=(2, 2), padding=(1, 0), bias=False)")
    assert repr(nn.Linear(3, 1, bias=False)) == "Linear(in_features=3, out_features=1, bias=False)"
    nested = repr(_Net())
    assert "(conv1): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))" in nested
    assert "  (head): Sequential(\n    (0): Flatten(" in nested


# ----------------------------------------------------------------------------------------------
# Outputs and gradients handed out stay intact (no buffer is reused while someone holds it)
# ----------------------------------------------------------------------------------------------
ALIAS_CASES = [
    ("conv s1", lambda: nn.Conv2d(2, 3, 3, padding=1, dtype=tinynet.float64), (2, 2, 6, 5)),
    ("conv s2", lambda: nn.Conv2d(2, 3, 3, stride=2, dtype=tinynet.float64), (2, 2, 7, 7)),
    ("linear", lambda: nn.Linear(5, 4, dtype=tinynet.float64), (3, 5)),
    ("relu", nn.ReLU, (3, 4, 2)),
    ("pool tiles", lambda: nn.MaxPool2d(2), (2, 2, 4, 6)),
    ("pool overlap", lambda: nn.MaxPool2d(3, stride=1, padding=1), (2, 2, 5, 4)),
    ("flatten", nn.Flatten, (2, 3, 2)),
    ("course", lambda: course_network(dtype=tinynet.float64), (2,) + COURSE_INPUT),
]


@pytest.mark.parametrize("name, make, shape", ALIAS_CASES, ids=[c[0] for c in ALIAS_CASES])
def test_later_calls_do_not_overwrite_earlier_results(name, make, shape):
    tinynet.manual_seed(0)
    m, other = make(), make()
    x1, x2 = tie_free(1, shape), tie_free(2, shape) * -1.5
    y1 = m(x1)
    y1_copy = y1.copy()
    view = y1.reshape(-1)[: max(1, y1.size // 2)]  # hold a view only, after dropping y1 below
    view_copy = view.copy()
    dy1 = normal(3, y1.shape)
    dx1 = m.backward(dy1)
    dx1_copy = dx1.copy()
    grads1 = [p.grad.copy() for p in m.parameters()]
    del y1
    # the same layer and another one of the same shapes, forward and backward again
    for layer in (m, other, m):
        y2 = layer(x2)
        layer.backward(normal(4, y2.shape))
    ya, yb = m(x1), other(x2)  # two live caches of the same shapes
    np.testing.assert_array_equal(view, view_copy)
    np.testing.assert_array_equal(dx1, dx1_copy)
    np.testing.assert_array_equal(ya, y1_copy)
    # both caches still give the right gradients
    m.zero_grad()
    np.testing.assert_array_equal(m.backward(dy1), dx1_copy)
    for p, g in zip(m.parameters(), grads1, strict=True):
        np.testing.assert_array_equal(p.grad, g)
    other.backward(np.ones_like(yb))


def test_two_equal_pool_layers_in_a_row_match_one_at_a_time():
    """Two MaxPool2d of the same shapes in one Sequential: each keeps its own winners."""
    x = tie_free(0, (2, 3, 6, 6))
    seq = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.ReLU(),
                        nn.MaxPool2d(3, stride=1, padding=1), nn.ReLU())
    dy = normal(1, (2, 3, 6, 6))
    seq(x)
    dx = seq.backward(dy)
    # the same chain, one functional pair at a time, every intermediate array copied
    y1, c1 = F.maxpool2d_forward(x.copy(), 3, 1, 1)
    y1 = y1.copy()
    y2, m2 = F.relu_forward(y1)
    y2, m2 = y2.copy(), m2.copy()
    y3, c3 = F.maxpool2d_forward(y2, 3, 1, 1)
    c3 = c3._replace(argmax=c3.argmax.copy()) if hasattr(c3, "_replace") else c3
    _, m4 = F.relu_forward(y3.copy())
    m4 = m4.copy()
    g = F.relu_backward(dy, m4).copy()
    g = F.maxpool2d_backward(g, c3).copy()
    g = F.relu_backward(g, m2).copy()
    g = F.maxpool2d_backward(g, c1).copy()
    np.testing.assert_array_equal(dx, g)


def test_no_grad_nests():
    fc = nn.Linear(2, 2)
    x = np.ones((1, 2), np.float32)
    with tinynet.no_grad():
        with tinynet.no_grad():
            pass
        fc(x)  # still off after the inner block
        with pytest.raises(RuntimeError):
            fc.backward(np.ones((1, 2), np.float32))
    fc(x)
    fc.backward(np.ones((1, 2), np.float32))


def test_backend_helpers(device):
    backend = tinynet.backend.get_backend(device)
    assert backend.xp.__name__ == ("numpy" if device == "cpu" else "cupy")
    a = np.arange(6.0).reshape(2, 3)
    on_dev = tinynet.to_device(a, device)
    back = tinynet.to_numpy(on_dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)
    tinynet.set_default_device(device)
    assert tinynet.get_default_device() == device
    assert nn.Linear(2, 2).device == device


# ----------------------------------------------------------------------------------------------
# backward(g, input_grad=False): the same weight gradients, no input gradient
# ----------------------------------------------------------------------------------------------
INPUT_GRAD_CASES = [
    ("conv", lambda: nn.Conv2d(2, 3, 3, stride=(2, 1), padding=1, dtype=tinynet.float64),
     (2, 2, 6, 5), True),
    ("linear", lambda: nn.Linear(5, 4, dtype=tinynet.float64), (3, 5), True),
    ("course", lambda: course_network(dtype=tinynet.float64), (2,) + COURSE_INPUT, True),
    ("nested", lambda: nn.Sequential(nn.Sequential(nn.Linear(5, 4), nn.ReLU()), nn.Linear(4, 2))
     .double(), (3, 5), True),
    # a first module that cannot skip its input gradient computes it as usual
    ("relu first", lambda: nn.Sequential(nn.ReLU(), nn.Linear(5, 2)).double(), (3, 5), False),
]


@pytest.mark.parametrize("name, make, shape, skips", INPUT_GRAD_CASES,
                         ids=[c[0] for c in INPUT_GRAD_CASES])
def test_backward_without_input_grad(name, make, shape, skips):
    tinynet.manual_seed(0)
    full = make()
    lean = full.copy()
    x = kink_free(1, shape)
    dy = normal(2, full(x).shape)
    dx = full.backward(dy)
    lean(x)
    out = lean.backward(dy, input_grad=False)
    if skips:
        assert out is None
    else:
        np.testing.assert_array_equal(out, dx)
    for (k, p), q in zip(full.named_parameters(), lean.parameters(), strict=True):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-12, atol=1e-14, err_msg=k)
