"""Adam and AdamW against torch.optim over many steps (with and without weight decay, amsgrad),
dtypes kept, state keys and state-dict round trip, a small step worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tinynet
from tinynet import nn
from tinynet.optim import SGD, Adam, AdamW

CASES = [
    ("Adam", dict()),
    ("Adam", dict(weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(weight_decay=0.0, amsgrad=True)),
]


def _grads(rng, shapes, step):
    return [rng.standard_normal(s) * (1 + 0.1 * step) for s in shapes]


@pytest.mark.parametrize("name, kw", CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_torch_over_many_steps(name, kw, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (2, 2, 3)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [nn.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = {"Adam": Adam, "AdamW": AdamW}[name](ours, **kw)
    ref = getattr(torch.optim, name)(theirs, **kw)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    for step in range(60):
        for p, q, g in zip(ours, theirs, _grads(rng, shapes, step), strict=True):
            p.grad = g.astype(dtype)
            q.grad = torch.from_numpy(g.astype(dtype))
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        assert p.data.dtype == np.dtype(dtype)
        np.testing.assert_allclose(p.data, q.detach().numpy(), **tol)
    for i, p in enumerate(ours):
        state, tstate = opt.state[id(p)], ref.state[theirs[i]]
        assert state["step"] == int(tstate["step"]) == 60
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if kw.get("amsgrad") else ()):
            assert state[key].dtype == np.dtype(dtype)
            np.testing.assert_allclose(state[key], tstate[key].numpy(), **tol)


def test_first_step_by_hand():
    # at t = 1: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) = lr * sign(g)
    p = nn.Parameter(np.array([1.0, -2.0, 3.0]))
    p.grad = np.array([0.5, -4.0, 1e-3])
    Adam([p], lr=0.1, eps=0.0).step()
    np.testing.assert_allclose(p.data, [0.9, -1.9, 2.9])
    # AdamW decays the weights first: w * (1 - lr * wd), then the same Adam step
    q = nn.Parameter(np.array([2.0]))
    q.grad = np.array([1.0])
    AdamW([q], lr=0.1, weight_decay=0.5, eps=0.0).step()
    np.testing.assert_allclose(q.data, [2.0 * (1 - 0.05) - 0.1])


def test_skips_parameters_without_gradients_and_keeps_float32():
    a, b = nn.Parameter(np.ones(3, np.float32)), nn.Parameter(np.ones(2, np.float32))
    a.grad = np.full(3, 0.5, np.float32)
    opt = Adam([a, b], lr=1e-2, weight_decay=1e-2)
    opt.step()
    assert a.data.dtype == np.float32 and id(b) not in opt.state
    np.testing.assert_array_equal(b.data, 1.0)
    assert all(isinstance(v, float) for k, v in opt.param_groups[0].items()
               if k in ("lr", "eps", "weight_decay"))


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)

    def model():
        tinynet.manual_seed(0)
        return nn.Linear(4, 3)

    x = rng.standard_normal((5, 4)).astype(np.float32)
    loss = nn.CrossEntropyLoss()
    y = np.array([0, 1, 2, 0, 1])

    def train(m, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss(m(x), y)
            m.backward(loss.backward())
            opt.step()

    m1 = model()
    o1 = AdamW(m1.parameters(), lr=0.05)
    train(m1, o1, 6)
    m2 = model()
    o2 = AdamW(m2.parameters(), lr=0.05)
    train(m2, o2, 3)
    sd = o2.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    m3, o3 = model().load_state_dict(m2.state_dict()), None
    o3 = AdamW(m3.parameters(), lr=0.05)
    o3.load_state_dict(sd)
    train(m3, o3, 3)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)


@pytest.mark.parametrize("kw", [dict(lr=-1), dict(betas=(0.9, 1.0)), dict(betas=(0.9,)),
                                dict(weight_decay=-0.1), dict(eps=-1)])
def test_invalid_hyperparameters(kw):
    with pytest.raises(ValueError, match="Adam"):
        Adam([nn.Parameter(np.zeros(2))], **kw)


def test_adam_moves_downhill_faster_than_sgd_on_a_badly_scaled_bowl():
    # L = 0.5 * (100 w0^2 + 0.01 w1^2): SGD's lr must suit the steep axis; Adam scales per weight
    def run(make):
        p = nn.Parameter(np.array([1.0, 1.0]))
        opt = make([p])
        for _ in range(100):
            p.grad = np.array([100.0, 0.01]) * p.data
            opt.step()
        return 0.5 * (100 * p.data[0] ** 2 + 0.01 * p.data[1] ** 2)

    adam, sgd = run(lambda ps: Adam(ps, lr=0.05)), run(lambda ps: SGD(ps, lr=0.01))
    assert adam < sgd and math.isfinite(adam)


def test_checkpoint_with_batchnorm_adamw_and_onecycle_resumes_exactly(tmp_path):
    """tinynet.save / load_into carry the BN running statistics, Adam's state and the schedule."""
    from tinynet.optim import OneCycleLR

    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    loss = nn.CrossEntropyLoss()

    def setup():
        tinynet.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(18, 3))
        o = AdamW(m.parameters(), lr=0.01)
        return m, o, OneCycleLR(o, max_lr=0.05, total_steps=10)

    def train(m, o, s, steps):
        for _ in range(steps):
            o.zero_grad()
            loss(m(x), y)
            m.backward(loss.backward())
            o.step()
            s.step()

    m1, o1, s1 = setup()
    train(m1, o1, s1, 8)
    m2, o2, s2 = setup()
    train(m2, o2, s2, 4)
    tinynet.save(tmp_path / "ck.npz", model=m2, optimizer=o2, scheduler=s2.state_dict())
    m3, o3, s3 = setup()
    tinynet.load_into(tmp_path / "ck.npz", m3, o3, scheduler=s3)
    assert int(m3[1].num_batches_tracked) == 4 and o3.state[id(m3[0].weight)]["step"] == 4
    train(m3, o3, s3, 4)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert s3.get_last_lr() == s1.get_last_lr()
