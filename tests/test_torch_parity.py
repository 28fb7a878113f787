"""Parity with PyTorch (an optional reference: skipped when torch is not installed).

Forward values and every gradient of each layer for drawn configurations, in float64; the course
network end to end; SGD over several steps; state dicts moved both ways; reprs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from script_loader import load_script
from strategies import (
    COURSE_INPUT,
    COURSE_KEYS,
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
import tinynet.nn as nn
from tinynet.optim import SGD, OneCycleLR

torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOL = dict(rtol=1e-10, atol=1e-12)

few = settings(max_examples=15)


# every parity test on both kernel paths: the fast engine and the reference kernels alone
pytestmark = pytest.mark.usefixtures("kernel_path")

def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def n(x):
    return x.detach().numpy()


def torch_course_network():
    tn = torch.nn
    return tn.Sequential(
        tn.Conv2d(1, 6, 5), tn.ReLU(), tn.MaxPool2d(2),
        tn.Conv2d(6, 12, 5), tn.ReLU(), tn.MaxPool2d(2),
        tn.Flatten(),
        tn.Linear(192, 120), tn.ReLU(), tn.Linear(120, 60), tn.ReLU(), tn.Linear(60, 10),
    ).double()


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
def _weighted_layer_parity(cfg, seed, torch_fn):
    """The layer of ``cfg`` (weight, maybe bias) against ``torch_fn(x, weight, bias)``: output,
    dL/dx and the parameters' gradients for the same random dL/dy."""
    tinynet.manual_seed(seed % 1000)
    layer = cfg.module(dtype=tinynet.float64)
    x, dy = normal(seed, cfg.x_shape), normal(seed + 1, cfg.y_shape)
    y = layer(x)
    dx = layer.backward(dy)
    xt, wt = t(x, True), t(layer.weight.data, True)
    bt = t(layer.bias.data, True) if cfg.bias else None
    yt = torch_fn(xt, wt, bt)
    yt.backward(t(dy))
    np.testing.assert_allclose(y, n(yt), **TOL)
    np.testing.assert_allclose(dx, n(xt.grad), **TOL)
    np.testing.assert_allclose(layer.weight.grad, n(wt.grad), **TOL)
    if cfg.bias:
        np.testing.assert_allclose(layer.bias.grad, n(bt.grad), **TOL)


@few
@given(cfg=conv_configs(), seed=seeds)
def test_conv2d(cfg, seed):
    _weighted_layer_parity(cfg, seed, lambda xt, wt, bt: TF.conv2d(
        xt, wt, bt, stride=cfg.stride, padding=cfg.padding))


@few
@given(cfg=linear_configs(), seed=seeds)
def test_linear(cfg, seed):
    _weighted_layer_parity(cfg, seed, TF.linear)


def _pool_parity(cfg, x, dy):
    pool = cfg.module()
    y = pool(x)
    dx = pool.backward(dy)
    xt = t(x, True)
    yt = TF.max_pool2d(xt, cfg.kernel, stride=cfg.effective_stride, padding=cfg.padding)
    yt.backward(t(dy))
    np.testing.assert_array_equal(y, n(yt))
    np.testing.assert_allclose(dx, n(xt.grad), **TOL)


@few
@given(cfg=pool_configs(), seed=seeds)
def test_maxpool2d(cfg, seed):
    _pool_parity(cfg, tie_free(seed, cfg.x_shape), normal(seed + 1, cfg.y_shape))


@few
@given(cfg=pool_configs(), seed=seeds)
def test_maxpool2d_with_ties(cfg, seed):
    """Many equal values (and negative ones, so that padding matters): PyTorch picks the first
    maximum of each window in row-major order, and so must tinynet."""
    x = np.random.default_rng(seed).integers(-3, 1, size=cfg.x_shape).astype(np.float64)
    _pool_parity(cfg, x, normal(seed + 1, cfg.y_shape))


@few
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple), seed=seeds)
def test_relu(shape, seed):
    x = kink_free(seed, shape)
    x[..., 0] = 0.0  # at 0 both give gradient 0
    dy = normal(seed + 1, shape)
    relu = nn.ReLU()
    y = relu(x)
    dx = relu.backward(dy)
    xt = t(x, True)
    yt = TF.relu(xt)
    yt.backward(t(dy))
    np.testing.assert_array_equal(y, n(yt))
    np.testing.assert_array_equal(dx, n(xt.grad))


@few
@given(case=flatten_cases(), seed=seeds)
def test_flatten(case, seed):
    shape, start, end = case
    x = normal(seed, shape)
    flat = nn.Flatten(start, end)
    y = flat(x)
    yt = torch.flatten(t(x), start, end)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_array_equal(y, n(yt))


@few
@given(cfg=loss_configs(), seed=seeds)
def test_cross_entropy(cfg, seed):
    z = normal(seed, cfg.logits_shape, cfg.scale)
    labels = labels_for(seed + 1, cfg.n, cfg.classes, cfg.label_dtype)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(z, labels)
    dz = loss_fn.backward()
    zt = t(z, True)
    lt = TF.cross_entropy(zt, torch.from_numpy(labels.astype(np.int64)))
    lt.backward()
    np.testing.assert_allclose(float(loss), lt.item(), **TOL)
    np.testing.assert_allclose(dz, n(zt.grad), **TOL)


@pytest.mark.parametrize("dtype, torch_dtype", [(np.float64, torch.float64),
                                                (np.float32, torch.float32)])
def test_cross_entropy_huge_logits(dtype, torch_dtype):
    z = (normal(0, (6, 5)) * 1e4).astype(dtype)
    labels = np.array([0, 1, 2, 3, 4, 0])
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(z, labels)
    dz = loss_fn.backward()
    zt = torch.tensor(z, dtype=torch_dtype, requires_grad=True)
    lt = TF.cross_entropy(zt, torch.from_numpy(labels))
    lt.backward()
    np.testing.assert_allclose(float(loss), lt.item(), rtol=1e-6)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# The course network end to end, and state dicts both ways
# ----------------------------------------------------------------------------------------------
def _to_torch_state(model):
    return {k: torch.from_numpy(np.array(tinynet.to_numpy(v), dtype=np.float64))
            for k, v in model.state_dict().items()}


@settings(max_examples=5)
@given(seed=seeds)
def test_course_network_end_to_end(seed):
    tinynet.manual_seed(seed % 1000)
    model = course_network(dtype=tinynet.float64)
    ref = torch_course_network()
    ref.load_state_dict(_to_torch_state(model), strict=True)  # tinynet -> torch
    x = normal(seed, (4,) + COURSE_INPUT)
    labels = labels_for(seed + 1, 4, 10)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(x), labels)
    dx = model.backward(loss_fn.backward())

    xt = t(x, True)
    lt = TF.cross_entropy(ref(xt), torch.from_numpy(labels))
    lt.backward()
    np.testing.assert_allclose(float(loss), lt.item(), **TOL)
    np.testing.assert_allclose(dx, n(xt.grad), rtol=1e-9, atol=1e-12)
    torch_params = dict(ref.named_parameters())
    assert [k for k, _ in model.named_parameters()] == list(torch_params) == COURSE_KEYS
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, n(torch_params[k].grad), rtol=1e-9, atol=1e-12,
                                   err_msg=k)


def _repeated_shapes(lib):
    """Layers that repeat with identical shapes: a kernel that reused one buffer for two live
    results would mix them up here."""
    return lib.Sequential(
        lib.Conv2d(2, 2, 3, padding=1), lib.ReLU(), lib.Conv2d(2, 2, 3, padding=1), lib.ReLU(),
        lib.MaxPool2d(3, stride=1, padding=1), lib.MaxPool2d(3, stride=1, padding=1),
        lib.Conv2d(2, 2, 3, stride=2, padding=1), lib.ReLU(),
        lib.Conv2d(2, 2, 3, stride=2, padding=1), lib.Flatten(),
        lib.Linear(8, 8), lib.ReLU(), lib.Linear(8, 8), lib.ReLU(), lib.Linear(8, 3),
    )


@settings(max_examples=5)
@given(seed=seeds)
def test_network_with_repeated_shapes(seed):
    tinynet.manual_seed(seed % 1000)
    model = _repeated_shapes(nn).double()
    ref = _repeated_shapes(torch.nn).double()
    ref.load_state_dict(_to_torch_state(model))
    loss_fn = nn.CrossEntropyLoss()
    for step in range(2):  # twice: the second pass runs on recycled buffers
        x = normal(seed + step, (3, 2, 7, 7))
        labels = labels_for(seed + step, 3, 3)
        model.zero_grad()
        loss = loss_fn(model(x), labels)
        dx = model.backward(loss_fn.backward())
        ref.zero_grad()
        xt = t(x, True)
        lt = TF.cross_entropy(ref(xt), torch.from_numpy(labels))
        lt.backward()
        np.testing.assert_allclose(float(loss), lt.item(), **TOL)
        np.testing.assert_allclose(dx, n(xt.grad), rtol=1e-9, atol=1e-12)
        theirs = dict(ref.named_parameters())
        for k, p in model.named_parameters():
            np.testing.assert_allclose(p.grad, n(theirs[k].grad), rtol=1e-9, atol=1e-12,
                                       err_msg=k)


def test_state_dict_torch_to_tinynet():
    torch.manual_seed(0)
    ref = torch_course_network().float()
    model = course_network()
    model.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    x = normal(0, (3,) + COURSE_INPUT, dtype=np.float32)
    with torch.no_grad():
        yt = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), yt, rtol=1e-4, atol=1e-5)
    assert model.dtype == np.float32


def test_state_dict_tinynet_to_torch_float32():
    tinynet.manual_seed(0)
    model = course_network()
    ref = torch_course_network().float()
    ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()})
    x = normal(0, (3,) + COURSE_INPUT, dtype=np.float32)
    with torch.no_grad():
        yt = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), yt, rtol=1e-4, atol=1e-5)


def test_same_shapes_as_torch_state_dict():
    ours = {k: tuple(v.shape) for k, v in course_network().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in torch_course_network().state_dict().items()}
    assert ours == theirs


def test_init_bounds_match_torch():
    """The same distribution: the largest |weight| over a big layer approaches the same bound."""
    torch.manual_seed(0)
    tinynet.manual_seed(0)
    for ours, theirs in [(nn.Linear(400, 300), torch.nn.Linear(400, 300)),
                         (nn.Conv2d(6, 40, 5), torch.nn.Conv2d(6, 40, 5))]:
        for name in ("weight", "bias"):
            a = np.abs(getattr(ours, name).data).max()
            b = getattr(theirs, name).detach().abs().max().item()
            np.testing.assert_allclose(a, b, rtol=0.02, err_msg=name)


# ----------------------------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------------------------
def _side_by_side(model, ref, opt, topt, x_shape, classes, steps, label_seed, schedulers=()):
    """Train tinynet's ``model`` (with ``opt``) and PyTorch's ``ref`` (with ``topt``) on the same
    drawn float64 batches, one SGD step each (then their schedulers, (tinynet's, PyTorch's), if
    given); yields ``(step, tinynet's loss, PyTorch's loss)`` after every step."""
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        x = normal(step, x_shape)
        labels = labels_for(step + label_seed, x_shape[0], classes)
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
        topt.zero_grad()
        loss_t = TF.cross_entropy(ref(t(x)), torch.from_numpy(labels))
        loss_t.backward()
        topt.step()
        for scheduler in schedulers:
            scheduler.step()
        yield step, float(loss), loss_t.item()


SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.02, weight_decay=0.1),
    dict(lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
]


@pytest.mark.parametrize("kwargs", SGD_SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in
                                                                          k.items()))
def test_sgd_matches_torch_over_several_steps(kwargs):
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(),
                              torch.nn.Linear(5, 4)).double()
    ref.load_state_dict(_to_torch_state(model))
    opt = SGD(model.parameters(), **kwargs)
    topt = torch.optim.SGD(ref.parameters(), **kwargs)
    for step, loss, loss_t in _side_by_side(model, ref, opt, topt, (6, 1, 6, 6), 4, steps=5,
                                            label_seed=100):
        np.testing.assert_allclose(loss, loss_t, rtol=1e-9, err_msg=f"step {step}")
    theirs = dict(ref.named_parameters())
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.data, n(theirs[k]), rtol=1e-9, atol=1e-12, err_msg=k)


def _torch_bn_benchmark():
    """benchmarks/torch_fashion_mnist_bn.py as a module: the PyTorch twin of the BN example's
    model that the 18-epoch comparison runs (it imports ``bn_cnn`` from the example itself)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_fashion_mnist_bn.py"
    return load_script(path, "torch_fashion_mnist_bn")


def test_bn_example_recipe_matches_torch_step_by_step():
    """The BN example's model and recipe (fused as ``fit`` runs it: Conv+BN+ReLU+MaxPool groups;
    SGD with Nesterov momentum and weight decay; OneCycleLR stepped every batch, cycling the
    momentum) against the benchmark's PyTorch twin, in float64: the same loss at every step, the
    same weights and BatchNorm running statistics after, the same evaluation output. (Dropout 0:
    the two frameworks draw their masks from different generators.) So the two 18-epoch runs
    in README differ by their random draws and float rounding only."""
    bench = _torch_bn_benchmark()
    tinynet.manual_seed(3)
    model = bench.bn_cnn(0.0).double()
    ref = bench.torch_bn_cnn(0.0).double()
    ref.load_state_dict(_to_torch_state(model))
    fused = tinynet.fuse(model)
    assert [type(m).__name__ for m in fused][:2] == ["ConvBN", "ConvBN"]  # (the fused groups)
    recipe = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = SGD(model.parameters(), **recipe)
    sched = OneCycleLR(opt, max_lr=0.1, epochs=2, steps_per_epoch=4)
    topt = torch.optim.SGD(ref.parameters(), **recipe)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.1, epochs=2, steps_per_epoch=4)
    fused.train()
    ref.train()
    for step, loss, loss_t in _side_by_side(fused, ref, opt, topt, (6, 1, 28, 28), 10, steps=8,
                                            label_seed=50, schedulers=(sched, tsched)):
        np.testing.assert_allclose(loss, loss_t, rtol=1e-9, err_msg=f"step {step}")
        assert opt.param_groups[0]["momentum"] == pytest.approx(topt.param_groups[0]["momentum"])
    theirs = ref.state_dict()
    for k, v in model.state_dict().items():  # weights, running means and variances, counts
        np.testing.assert_allclose(np.asarray(tinynet.to_numpy(v), dtype=np.float64),
                                   theirs[k].double().numpy(), rtol=1e-8, atol=1e-10, err_msg=k)
    fused.eval()
    ref.eval()
    x = normal(99, (5, 1, 28, 28))
    with torch.no_grad():
        expected = n(ref(t(x)))
    with tinynet.no_grad():
        np.testing.assert_allclose(fused(x), expected, rtol=1e-8, atol=1e-10)


def test_sgd_state_dict_layout_like_torch():
    tinynet.manual_seed(0)
    fc = nn.Linear(3, 2, dtype=tinynet.float64)
    ref = torch.nn.Linear(3, 2).double()
    ref.load_state_dict(_to_torch_state(fc))
    opt = SGD(fc.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x = normal(0, (4, 3))
    y = fc(x)
    fc.backward(np.ones_like(y))
    opt.step()
    ref(t(x)).sum().backward()
    topt.step()
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert set(ours) == set(theirs)
    assert ours["param_groups"][0]["params"] == theirs["param_groups"][0]["params"]
    assert set(ours["state"]) == set(theirs["state"])
    for i in theirs["state"]:
        np.testing.assert_allclose(tinynet.to_numpy(ours["state"][i]["momentum_buffer"]),
                                   theirs["state"][i]["momentum_buffer"].numpy(), **TOL)


# ----------------------------------------------------------------------------------------------
# repr
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ours, theirs", [
    (lambda: nn.Conv2d(1, 6, 5), lambda: torch.nn.Conv2d(1, 6, 5)),
    (lambda: nn.Conv2d(3, 8, (3, 1), stride=2, padding=(1, 0), bias=False),
     lambda: torch.nn.Conv2d(3, 8, (3, 1), stride=2, padding=(1, 0), bias=False)),
    (lambda: nn.Linear(192, 120), lambda: torch.nn.Linear(192, 120)),
    (lambda: nn.Linear(4, 2, bias=False), lambda: torch.nn.Linear(4, 2, bias=False)),
    (nn.ReLU, torch.nn.ReLU),
    (nn.Flatten, torch.nn.Flatten),
    (lambda: nn.Sequential(nn.Linear(2, 3), nn.ReLU()),
     lambda: torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())),
])
def test_repr_matches_torch(ours, theirs):
    assert repr(ours()) == repr(theirs())
