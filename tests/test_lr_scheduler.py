"""StepLR, CosineAnnealingLR and OneCycleLR against torch.optim.lr_scheduler over many steps,
momentum cycling, state dicts (JSON round trip), errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinynet import nn
from tinynet.optim import SGD, Adam, AdamW, CosineAnnealingLR, OneCycleLR, StepLR


def _pair(torch, opt_name, opt_kw, groups=1):
    ours_params = [[nn.Parameter(np.zeros(2))] for _ in range(groups)]
    theirs_params = [[torch.nn.Parameter(torch.zeros(2))] for _ in range(groups)]
    ours_cls = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[opt_name]
    ours = ours_cls([{"params": p} for p in ours_params], **opt_kw)
    theirs = getattr(torch.optim, opt_name)([{"params": p} for p in theirs_params], **opt_kw)
    return ours, theirs


SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5), 40),
    ("StepLR", dict(step_size=1), 12),
    ("CosineAnnealingLR", dict(T_max=10), 45),  # past T_max: the cosine climbs back
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001), 30),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=50), 49),
    ("OneCycleLR", dict(max_lr=0.3, epochs=4, steps_per_epoch=7, pct_start=0.25,
                        anneal_strategy="linear", div_factor=10, final_div_factor=100), 27),
    ("OneCycleLR", dict(max_lr=[0.2, 0.4], total_steps=40, three_phase=True), 39),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=20, cycle_momentum=False), 19),
]


@pytest.mark.parametrize("opt_name, opt_kw", [("SGD", dict(lr=0.1, momentum=0.9)),
                                               ("Adam", dict(lr=0.01))])
@pytest.mark.parametrize("name, kw, steps", SCHEDULES)
def test_matches_torch(opt_name, opt_kw, name, kw, steps):
    torch = pytest.importorskip("torch")
    groups = 2 if isinstance(kw.get("max_lr"), list) else 1
    ours, theirs = _pair(torch, opt_name, opt_kw, groups)
    import tinynet.optim.lr_scheduler as ours_mod

    s = getattr(ours_mod, name)(ours, **kw)
    r = getattr(torch.optim.lr_scheduler, name)(theirs, **kw)
    for step in range(steps + 1):
        np.testing.assert_allclose(s.get_last_lr(), r.get_last_lr(), rtol=1e-12, atol=1e-15,
                                   err_msg=f"step {step}")
        for g, h in zip(ours.param_groups, theirs.param_groups, strict=True):
            assert isinstance(g["lr"], float)
            if "momentum" in h:
                assert g["momentum"] == pytest.approx(h["momentum"], rel=1e-12)
            if "betas" in h:
                assert g["betas"][0] == pytest.approx(h["betas"][0], rel=1e-12)
        if step < steps:
            ours.step()
            theirs.step()
            s.step()
            r.step()


def test_onecycle_cycles_momentum_and_beta1():
    sgd = SGD([nn.Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    s = OneCycleLR(sgd, max_lr=1.0, total_steps=10, pct_start=0.5)
    assert sgd.param_groups[0]["momentum"] == 0.95
    assert s.get_last_lr()[0] == pytest.approx(1.0 / 25, rel=1e-14)
    for _ in range(4):
        s.step()  # step 4 = end of phase 1 (0.5 * 10 - 1)
    assert s.get_last_lr()[0] == pytest.approx(1.0, rel=1e-14)
    assert sgd.param_groups[0]["momentum"] == pytest.approx(0.85)
    for _ in range(5):
        s.step()
    assert s.get_last_lr()[0] == pytest.approx(1.0 / 25 / 1e4)
    assert sgd.param_groups[0]["momentum"] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="total_steps"):
        s.step()
        s.step()
    adam = Adam([nn.Parameter(np.zeros(1))])
    OneCycleLR(adam, max_lr=0.01, total_steps=5)
    assert adam.param_groups[0]["betas"] == (0.95, 0.999)


def test_by_hand_formulas():
    opt = SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    s = CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    lrs = [s.get_last_lr()[0]]
    for _ in range(4):
        s.step()
        lrs.append(s.get_last_lr()[0])
    expected = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(5)]
    np.testing.assert_allclose(lrs, expected, atol=1e-15)
    opt = SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    s = StepLR(opt, step_size=2, gamma=0.1)
    got = []
    for _ in range(6):
        got.append(opt.param_groups[0]["lr"])
        s.step()
    np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("make", [
    lambda o: StepLR(o, 3, 0.5),
    lambda o: CosineAnnealingLR(o, 9, 0.01),
    lambda o: OneCycleLR(o, 0.5, total_steps=30),
])
def test_state_dict_json_round_trip_resumes_exactly(make):
    def fresh():
        return SGD([nn.Parameter(np.zeros(1))], lr=0.1, momentum=0.9)

    opt_a = fresh()
    a = make(opt_a)
    for _ in range(12):
        a.step()
    opt_b = fresh()
    b = make(opt_b)
    for _ in range(5):
        b.step()
    saved = json.loads(json.dumps(b.state_dict()))  # JSON-able, for checkpoints
    opt_groups = json.loads(json.dumps(opt_b.state_dict()["param_groups"]))
    opt_c = fresh()
    c = make(opt_c)
    for g, saved_g in zip(opt_c.param_groups, opt_groups, strict=True):
        g.update({k: v for k, v in saved_g.items() if k != "params"})
    c.load_state_dict(saved)
    for _ in range(7):
        c.step()
    assert c.get_last_lr() == a.get_last_lr()
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    assert opt_c.param_groups[0]["momentum"] == opt_a.param_groups[0]["momentum"]


def test_errors():
    opt = SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        OneCycleLR(opt, 0.1)
    with pytest.raises(ValueError, match="cycle_momentum"):
        from tinynet.optim import Optimizer

        class Plain(Optimizer):
            def __init__(self, params):
                super().__init__(params, dict(lr=0.1))

        OneCycleLR(Plain([nn.Parameter(np.zeros(1))]), 0.1, total_steps=3)
    with pytest.raises(ValueError, match="step_size"):
        StepLR(opt, 0)
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(opt, 0)
    with pytest.raises(TypeError, match="tinynet optimizer"):
        StepLR(object(), 2)
    with pytest.raises(KeyError, match="unexpected"):
        StepLR(opt, 2).load_state_dict({"T_max": 3})
