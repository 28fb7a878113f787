"""tinynet.optim.SGD: PyTorch's update rule over several steps (against the rule written out here in
float64), argument checks, zero_grad, skipped parameters, state dicts, and a loss that goes down."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import COURSE_INPUT, course_network, labels_for, normal, seeds

import tinynet
import tinynet.nn as nn
from tinynet.optim import SGD


def sgd_reference(w0, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD's documented algorithm, step by step, in float64."""
    w = np.array(w0, dtype=np.float64)
    buf = None
    for g in grads:
        g = np.asarray(g, dtype=np.float64)
        if weight_decay != 0:
            g = g + weight_decay * w
        if momentum != 0:
            if buf is None:
                buf = g.copy()  # first step: the buffer is the gradient, no dampening
            else:
                buf = momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        w = w - lr * g
    return w


hyper = st.fixed_dictionaries({
    "lr": st.sampled_from([0.0, 0.01, 0.1, 0.5]),
    "momentum": st.sampled_from([0.0, 0.5, 0.9]),
    "dampening": st.sampled_from([0.0, 0.1, 0.5]),
    "weight_decay": st.sampled_from([0.0, 1e-3, 0.1]),
    "nesterov": st.booleans(),
}).filter(lambda h: not h["nesterov"] or (h["momentum"] > 0 and h["dampening"] == 0))


@given(h=hyper, seed=seeds, steps=st.integers(1, 5))
def test_update_rule_matches_pytorch_algorithm(h, seed, steps):
    w0 = normal(seed, (3, 4))
    b0 = normal(seed + 1, (4,))
    p, q = nn.Parameter(w0.copy()), nn.Parameter(b0.copy())
    opt = SGD([p, q], **h)
    gws = [normal(seed + 10 + i, w0.shape) for i in range(steps)]
    gbs = [normal(seed + 20 + i, b0.shape) for i in range(steps)]
    for gw, gb in zip(gws, gbs, strict=True):
        p.grad, q.grad = gw.copy(), gb.copy()
        opt.step()
        np.testing.assert_array_equal(p.grad, gw)  # step does not modify the gradient
    np.testing.assert_allclose(p.data, sgd_reference(w0, gws, **h), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(q.data, sgd_reference(b0, gbs, **h), rtol=1e-12, atol=1e-12)


def test_first_momentum_step_ignores_dampening():
    p = nn.Parameter(np.array([1.0, 2.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    p.grad = np.array([1.0, -1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.9, 2.1], rtol=1e-14)  # buffer = grad, not 0.5 * grad
    p.grad = np.array([1.0, -1.0])
    opt.step()
    # buffer = 0.9 * 1 + 0.5 * 1 = 1.4
    np.testing.assert_allclose(p.data, [0.9 - 0.14, 2.1 + 0.14], rtol=1e-14)


def test_parameters_without_gradient_are_skipped():
    p, q = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    opt = SGD([p, q], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.grad = np.ones(3)
    opt.step()
    np.testing.assert_array_equal(q.data, np.ones(2))  # no gradient: no weight decay either
    assert not np.array_equal(p.data, np.ones(3))


def test_zero_grad_clears_every_gradient():
    model = course_network()
    opt = SGD(model.parameters(), lr=0.1)
    y = model(normal(0, (2,) + COURSE_INPUT, dtype=np.float32))
    model.backward(np.ones_like(y))
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_optimizer_updates_the_models_own_parameters():
    tinynet.manual_seed(0)
    fc = nn.Linear(3, 2)
    opt = SGD(fc.parameters(), lr=0.5)
    w = fc.weight.data.copy()
    x = normal(0, (4, 3), dtype=np.float32)
    y = fc(x)
    fc.backward(np.ones_like(y))
    opt.step()
    np.testing.assert_allclose(fc.weight.data, w - 0.5 * (np.ones((2, 4)) @ x), rtol=1e-5,
                               atol=1e-6)
    # the layer's next forward uses the new weights
    np.testing.assert_allclose(fc(x), x @ fc.weight.data.T + fc.bias.data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(lr=-0.1),
    dict(lr=0.1, nesterov=True),                              # no momentum
    dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),  # dampening with nesterov
    dict(lr=0.1, momentum=-0.5),
    dict(lr=0.1, weight_decay=-1e-4),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SGD(nn.Linear(2, 2).parameters(), **kwargs)


def test_nesterov_with_momentum_is_fine():
    SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9, nesterov=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_keep_their_dtype(dtype):
    tinynet.set_default_dtype(dtype)
    model = course_network()
    opt = SGD(model.parameters(), lr=np.float64(0.01), momentum=np.float64(0.9),
              weight_decay=np.float64(1e-4), nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    x = normal(0, (3,) + COURSE_INPUT, dtype=dtype)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(x), np.array([1, 2, 3]))
        model.backward(loss_fn.backward())
        opt.step()
    for p in model.parameters():
        assert p.data.dtype == dtype and p.grad.dtype == dtype


def _train(model, opt, steps, x, labels):
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        losses.append(float(loss_fn(model(x), labels)))
        model.backward(loss_fn.backward())
        opt.step()
    return losses


def test_training_the_course_network_lowers_the_loss():
    tinynet.manual_seed(0)
    model = course_network()
    x = normal(1, (8,) + COURSE_INPUT, dtype=np.float32)
    labels = labels_for(2, 8, 10)
    losses = _train(model, SGD(model.parameters(), lr=0.05, momentum=0.9), 40, x, labels)
    assert losses[-1] < 0.5 * losses[0], losses


def test_state_dict_resumes_exactly():
    """Two steps, save model and optimizer, two more: the same as four steps without a break."""
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, labels = normal(1, (4, 6), dtype=np.float32), np.array([0, 2, 1, 2])
    settings_ = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)

    straight = model.copy()
    _train(straight, SGD(straight.parameters(), **settings_), 4, x, labels)

    first = model.copy()
    opt = SGD(first.parameters(), **settings_)
    _train(first, opt, 2, x, labels)
    model_state = {k: tinynet.to_numpy(v).copy() for k, v in first.state_dict().items()}
    opt_state = opt.state_dict()

    resumed = model.copy()  # the untrained weights, overwritten by the load
    resumed.load_state_dict(model_state)
    opt2 = SGD(resumed.parameters(), lr=0.5)  # hyperparameters come from the state dict
    opt2.load_state_dict(opt_state)
    _train(resumed, opt2, 2, x, labels)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-6, atol=1e-7, err_msg=name)


def test_state_dict_contents_follow_pytorch_layout():
    fc = nn.Linear(2, 2)
    opt = SGD(fc.parameters(), lr=0.1, momentum=0.9)
    fc(np.ones((1, 2), np.float32))
    fc.backward(np.ones((1, 2), np.float32))
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert sd["param_groups"][0]["lr"] == pytest.approx(0.1)
    assert sd["param_groups"][0]["momentum"] == pytest.approx(0.9)
    assert sorted(sd["param_groups"][0]["params"]) == [0, 1]
    assert set(sd["state"]) == {0, 1}
    np.testing.assert_allclose(sd["state"][0]["momentum_buffer"], fc.weight.grad)


@settings(max_examples=10)
@given(seed=seeds)
def test_lr_zero_changes_nothing(seed):
    tinynet.manual_seed(seed % 1000)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = [p.data.copy() for p in model.parameters()]
    _train(model, SGD(model.parameters(), lr=0.0, momentum=0.9), 2,
           normal(seed, (3, 3), dtype=np.float32), np.array([0, 1, 1]))
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.data, b)
