"""tinynet.lab.flow: gradient flow during training (fit(..., monitor=...)) and plot.plot_flow.

The numbers are checked against a hand-written training loop (the seven steps, with the norms
and the weights' change measured by NumPy in float64), against activations computed by hand,
and against cases built so that a unit is always dead or a gradient cannot reach a layer.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

import tinynet
from tinynet import backend as B
from tinynet import nn
from tinynet.data import ArrayDataset, DataLoader, FashionMNIST
from tinynet.lab.flow import FLOW_FILE, FlowMonitor, FlowWarning, activation_stats, flow_problems
from tinynet.train import fit

RECORD_KEYS = {"step", "epoch", "batch", "lr", "params", "modules"}
PARAM_KEYS = {"ndim", "grad_norm", "weight_norm", "update_ratio"}


@pytest.fixture(scope="module")
def sample():
    """96 images of the embedded sample (3 batches of 32)."""
    data = FashionMNIST(train=True, sample=True)
    return ArrayDataset(data.images[:96], data.labels[:96])


def _mlp(seed=0, dtype=None, device=None):
    tinynet.manual_seed(seed)
    kw = dict(dtype=dtype, device=device)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16, **kw), nn.ReLU(), nn.Linear(16, 10, **kw))


def _norm(a):
    return float(np.linalg.norm(B.to_numpy(a).astype(np.float64).ravel()))


def _host(a):
    return B.to_numpy(a).astype(np.float64)


def _flow_warnings(record):
    return [w for w in record if issubclass(w.category, FlowWarning)]


# ----------------------------------------------------------------------------------------------
# the records: keys, and values equal to what a hand-written loop measures
# ----------------------------------------------------------------------------------------------
def test_records_equal_norms_and_changes_measured_by_hand(sample, tmp_path):
    model = _mlp()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(sample, batch_size=32, shuffle=True, seed=0)
    monitor = FlowMonitor(every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlowWarning)  # a healthy network: no warning
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=2, out_dir=tmp_path, progress=False,
            verbose=False, monitor=monitor)
    # 2 epochs of 3 updates, every 2nd from the first: updates 1, 3, 5
    assert [(r["step"], r["epoch"], r["batch"]) for r in monitor.records] == [
        (1, 1, 1), (3, 1, 3), (5, 2, 2)]
    lines = (tmp_path / FLOW_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == monitor.records

    # the same training by hand: the seven steps, measuring around every update
    model = _mlp()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    expected = {}
    step = 0
    loader = DataLoader(sample, batch_size=32, shuffle=True, seed=0)
    for _ in range(2):
        for x, y in loader:
            step += 1
            w1, b1, w2, b2 = (_host(model[i].weight.data if k == "w" else model[i].bias.data)
                              for i, k in ((1, "w"), (1, "b"), (3, "w"), (3, "b")))
            xh = _host(x).reshape(len(x), -1)  # the activations, by hand in float64
            z1 = xh @ w1.T + b1
            h1 = np.maximum(z1, 0)
            z2 = h1 @ w2.T + b2
            opt.zero_grad()
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            before = {n: _host(p.data) for n, p in model.named_parameters()}
            grads = {n: _norm(p.grad) for n, p in model.named_parameters()}
            opt.step()
            expected[step] = {
                "params": {n: {"grad_norm": grads[n], "weight_norm": _norm(before[n]),
                               "update_ratio": _norm(_host(p.data) - before[n]) / _norm(before[n])}
                           for n, p in model.named_parameters()},
                "modules": {"0": (xh.mean(), xh.std()), "1": (z1.mean(), z1.std()),
                            "2": (h1.mean(), h1.std()), "3": (z2.mean(), z2.std())},
                "dead": 1 - (h1 > 0).any(axis=0).mean(),
            }
    for record in monitor.records:
        assert set(record) == RECORD_KEYS and record["lr"] == 0.05
        assert list(record["params"]) == ["1.weight", "1.bias", "3.weight", "3.bias"]
        want = expected[record["step"]]
        for name, values in record["params"].items():
            assert set(values) == PARAM_KEYS
            assert values["ndim"] == (2 if name.endswith("weight") else 1)
            for key in ("grad_norm", "weight_norm", "update_ratio"):
                assert values[key] == pytest.approx(want["params"][name][key], rel=1e-6), (
                    record["step"], name, key)
        assert [(n, m["type"]) for n, m in record["modules"].items()] == [
            ("0", "Flatten"), ("1", "Linear"), ("2", "ReLU"), ("3", "Linear")]
        for name, m in record["modules"].items():
            assert set(m) == ({"type", "mean", "std", "dead"} if m["type"] == "ReLU"
                              else {"type", "mean", "std"})
            mean, std = want["modules"][name]
            assert m["mean"] == pytest.approx(mean, rel=1e-5, abs=1e-6)
            assert m["std"] == pytest.approx(std, rel=1e-5)
        assert record["modules"]["2"]["dead"] == pytest.approx(want["dead"], abs=1e-12)


@settings(max_examples=15)
@given(seed=seeds, lr=st.floats(1e-4, 0.5))
def test_update_ratio_of_plain_sgd_is_lr_times_grad_over_weight(sample, seed, lr):
    """Plain SGD moves W by exactly lr * dL/dW, so ||dW|| / ||W|| = lr * ||dL/dW|| / ||W||
    (float64, so that rounding W - lr * g stays far below the tolerance)."""
    model = _mlp(seed=seed % 1000, dtype=np.float64)
    opt = tinynet.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(sample, batch_size=48, shuffle=True, seed=seed, dtype=np.float64)
    monitor = FlowMonitor(every=1, warn=False)
    fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False, verbose=False,
        monitor=monitor)
    assert len(monitor.records) == 2
    for record in monitor.records:
        for name, p in record["params"].items():
            assert p["update_ratio"] == pytest.approx(lr * p["grad_norm"] / p["weight_norm"],
                                                      rel=1e-9), name


def test_records_on_every_device(device, sample):
    model = _mlp(device=device)
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(sample, batch_size=48, device=device)
    monitor = FlowMonitor(every=1, warn=False)
    fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False, verbose=False,
        monitor=monitor)
    record = monitor.records[-1]
    for name, _ in model.named_parameters():
        assert record["params"][name]["weight_norm"] > 0
        assert isinstance(record["params"][name]["grad_norm"], float)
    json.dumps(monitor.records)  # plain Python numbers, whatever the device


# ----------------------------------------------------------------------------------------------
# dead ReLUs and vanishing gradients, built on purpose
# ----------------------------------------------------------------------------------------------
def _toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return ArrayDataset(x, rng.integers(0, 3, n))


def _toy_loader(data):
    return DataLoader(data, batch_size=16, shuffle=True, seed=0, normalize=False)


def _with_dead_units(n_dead):
    """Linear(4, 8) -> ReLU -> Linear(8, 3) whose first ``n_dead`` units can never fire."""
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    w, b = model[0].weight.data, model[0].bias.data
    w[:n_dead] = 0
    b[:n_dead] = -1  # relu(0 * x - 1) = 0 for every input: dead, and no gradient revives it
    w[n_dead:] = np.eye(8, 4, dtype=np.float32)[n_dead:] + np.eye(8, 4, -4, dtype=np.float32)[
        n_dead:]
    b[n_dead:] = 0  # the others: relu(x_k), which fires for about half of the images
    return model


@pytest.mark.parametrize("n_dead, warned", [(5, True), (4, False)])
def test_dead_relu_share_and_its_warning_once(n_dead, warned):
    model = _with_dead_units(n_dead)
    opt = tinynet.optim.SGD(model.parameters(), lr=0.1)
    monitor = FlowMonitor(every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, nn.CrossEntropyLoss(), opt, _toy_loader(_toy_data()), epochs=2,
            progress=False, verbose=False, monitor=monitor)
    assert len(monitor.records) == 8
    for record in monitor.records:
        assert record["modules"]["1"]["dead"] == n_dead / 8
    flow = _flow_warnings(caught)
    if not warned:  # exactly half is not "more than half"
        assert flow == [] and monitor.warned == {}
        return
    assert len(flow) == 1  # once, although every one of the 8 records has 5/8 dead
    text = str(flow[0].message)
    assert "dead ReLUs" in text and "ReLU 1" in text and "62%" in text and "at step 1" in text
    assert "lower learning rate" in text and "Kaiming" in text
    assert flow[0].filename == __file__  # it points at the fit call, not inside tinynet
    assert list(monitor.warned) == ["dead"]


def test_vanishing_gradient_warns_once_naming_the_layer():
    """The middle layer's weights times 1e-6 (and frozen there): dL/dW of the first layer, which
    the gradient reaches only through them, is about a million times smaller than the middle
    layer's own."""
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    model[2].weight.data *= np.float32(1e-6)
    model[2].bias.data[...] = 1  # its units still fire, so the last layer keeps learning
    frozen = model[2].weight
    opt = tinynet.optim.SGD([p for p in model.parameters() if p is not frozen], lr=0.01)
    monitor = FlowMonitor(every=1)
    with pytest.warns(FlowWarning) as caught:
        fit(model, nn.CrossEntropyLoss(), opt, _toy_loader(_toy_data()), epochs=2,
            progress=False, verbose=False, monitor=monitor)
    flow = _flow_warnings(caught)
    assert len(flow) == 1 and list(monitor.warned) == ["vanishing"]
    text = str(flow[0].message)
    assert "vanishing gradients" in text and "layer 0.weight (Linear)" in text
    assert "next layer 2.weight (Linear)" in text and "Kaiming" in text and "BatchNorm" in text
    for record in monitor.records:
        g = {n: p["grad_norm"] for n, p in record["params"].items()}
        assert g["0.weight"] * 1e3 < g["2.weight"]  # in all 8 records, one warning
    assert len(monitor.records) == 8 and "at step 1" in text


def _record(norms, dead=None):
    params = {f"{i}.weight": {"ndim": 2, "grad_norm": g} for i, g in enumerate(norms)}
    modules = {str(i): {"type": "Linear"} for i in range(len(norms))}
    if dead is not None:
        modules["r"] = {"type": "ReLU", "dead": dead}
    return {"step": 7, "params": params, "modules": modules}


def test_flow_problems_by_hand():
    assert flow_problems(_record([1.0, 0.5, 2e-3 * 1.01])) == []  # gaps under 1e3
    assert [k for k, _ in flow_problems(_record([1e-5, 1.0, 0.5]))] == ["vanishing"]
    assert [k for k, _ in flow_problems(_record([0.0, 1.0]))] == ["vanishing"]
    kinds = flow_problems(_record([1.0, 1e4, 1.0]))  # 0 -> 1 vanishes, 1 -> 2 explodes
    assert [k for k, _ in kinds] == ["vanishing", "exploding"]
    assert "layer 1.weight (Linear)" in kinds[1][1] and "lower learning rate" in kinds[1][1]
    assert [k for k, _ in flow_problems(_record([1.0], dead=0.51))] == ["dead"]
    assert flow_problems(_record([1.0], dead=0.5)) == []
    assert flow_problems(_record([0.0, 0.0])) == []  # no gradient anywhere: nothing to compare


# ----------------------------------------------------------------------------------------------
# the extra forward pass leaves no trace; monitor off changes nothing
# ----------------------------------------------------------------------------------------------
def _bn_dropout_model():
    tinynet.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(16, 10))


def _state(model):
    return {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}


def _same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_monitor_off_and_on_train_exactly_as_the_seven_steps(sample):
    """fit without a monitor is the seven steps, bit for bit; with one (every update recorded,
    BatchNorm and Dropout in the model) the weights, running statistics and losses stay the same
    too: the monitor's forward pass puts BatchNorm's buffers back and draws no dropout mask."""
    model = _bn_dropout_model()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(sample, batch_size=32, shuffle=True, seed=0)
    losses = []
    for _ in range(2):  # 7. the epochs
        total, seen = 0.0, 0
        for x, y in loader:  # 1. a batch
            opt.zero_grad()
            loss = float(loss_fn(model(x), y))  # 2. forward, 3. loss
            model.backward(loss_fn.backward())  # 4. gradients
            opt.step()  # 5. update
            total, seen = total + loss * len(y), seen + len(y)
        losses.append(total / seen)
    state = _state(model)
    for monitor in (None, FlowMonitor(every=1, warn=False)):
        model = _bn_dropout_model()
        opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        history = fit(model, nn.CrossEntropyLoss(), opt,
                      DataLoader(sample, batch_size=32, shuffle=True, seed=0), epochs=2,
                      progress=False, verbose=False, monitor=monitor)
        _same_state(_state(model), state)
        assert [h["train_loss"] for h in history] == losses
    assert len(monitor.records) == 6 and "dead" in monitor.records[0]["modules"]["3"]


def test_activation_stats_leaves_no_trace_and_walks_nested_sequentials():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(6, 2))
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    before, rng = _state(model), B.get_rng_state()
    stats = activation_stats(model, x)
    assert list(stats) == ["0.0", "0.1", "1", "2", "3"]
    _same_state(_state(model), before)  # running mean/var and the batch count put back
    assert json.dumps(B.get_rng_state(), default=str) == json.dumps(rng, default=str)
    assert model.training and model[2].training  # Dropout back in training mode
    # BatchNorm in training mode normalises with the batch's statistics: mean 0, std ~1
    assert abs(stats["0.1"]["mean"]) < 1e-6 and stats["0.1"]["std"] == pytest.approx(1, 1e-3)
    assert stats["2"]["mean"] == stats["1"]["mean"]  # Dropout switched off for the measurement


# ----------------------------------------------------------------------------------------------
# flow.jsonl on resume: appended to, never a step twice
# ----------------------------------------------------------------------------------------------
class _StopAt(DataLoader):
    """Raises ``error`` (KeyboardInterrupt, as Ctrl-C would) at one (epoch index, batch index)."""

    stop_at: tuple[int, int] | None = None
    error: type = KeyboardInterrupt

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if (self.epoch - 1, i) == self.stop_at:
                self.stop_at = None
                raise self.error
            yield batch


def _run(sample, out, epochs=2, every=2, loader_cls=DataLoader, **kw):
    model = _mlp()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = loader_cls(sample, batch_size=32, shuffle=True, seed=0)
    return model, opt, loader, dict(out_dir=out, progress=False, verbose=False,
                                    monitor=FlowMonitor(every=every, warn=False), **kw)


def _lines(path):
    return [json.loads(line) for line in (path / FLOW_FILE).read_text().splitlines()]


@pytest.mark.parametrize("every", [1, 2])
def test_flow_file_is_appended_on_resume_after_ctrl_c(sample, tmp_path, every):
    model, opt, loader, kw = _run(sample, tmp_path / "straight", every=every)
    fit(model, nn.CrossEntropyLoss(), opt, loader, 2, **kw)
    straight = _lines(tmp_path / "straight")

    out = tmp_path / "stopped"
    model, opt, loader, kw = _run(sample, out, every=every, loader_cls=_StopAt)
    loader.stop_at = (1, 1)  # Ctrl-C while fetching epoch 2's second batch
    assert fit(model, nn.CrossEntropyLoss(), opt, loader, 2, **kw).status == "interrupted"
    assert [r["step"] for r in _lines(out)] == [r["step"] for r in straight if r["step"] <= 4]
    model, opt, loader, kw = _run(sample, out, every=every)
    fit(model, nn.CrossEntropyLoss(), opt, loader, 2, resume=out / "last.npz", **kw)
    assert _lines(out) == straight  # the same records, each once
    assert kw["monitor"].records == straight  # the resumed monitor holds them all


def test_resume_from_an_older_checkpoint_does_not_record_steps_twice(sample, tmp_path):
    """A crash in epoch 2 (not a Ctrl-C: no checkpoint then) after two of its updates were
    recorded; resuming from the end of epoch 1 runs those updates again but does not write them
    again."""
    model, opt, loader, kw = _run(sample, tmp_path / "straight", every=1)
    fit(model, nn.CrossEntropyLoss(), opt, loader, 2, **kw)
    straight = _lines(tmp_path / "straight")

    out = tmp_path / "crashed"
    model, opt, loader, kw = _run(sample, out, every=1, loader_cls=_StopAt)
    loader.stop_at, loader.error = (1, 2), RuntimeError
    with pytest.raises(RuntimeError):
        fit(model, nn.CrossEntropyLoss(), opt, loader, 2, **kw)
    assert tinynet.load(out / "last.npz")["epochs_completed"] == 1
    assert [r["step"] for r in _lines(out)] == [1, 2, 3, 4, 5]
    model, opt, loader, kw = _run(sample, out, every=1)
    fit(model, nn.CrossEntropyLoss(), opt, loader, 2, resume=out / "last.npz", **kw)
    assert _lines(out) == straight


def test_a_fresh_run_starts_the_file_afresh_and_monitor_true(sample, tmp_path):
    (tmp_path / FLOW_FILE).write_text('{"old": 1}\n')
    model, opt, loader, kw = _run(sample, tmp_path, epochs=1)
    kw["monitor"] = True  # a FlowMonitor with its defaults, writing into out_dir
    fit(model, nn.CrossEntropyLoss(), opt, loader, 1, **kw)
    assert [r["step"] for r in _lines(tmp_path)] == [1]


def test_monitor_arguments_are_checked(sample):
    model, opt, loader, kw = _run(sample, None)
    with pytest.raises(TypeError, match="monitor must be True or an object"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, 1, progress=False, monitor="yes")
    for every in (0, 1.5, True):
        with pytest.raises(ValueError, match="every must be an int >= 1"):
            FlowMonitor(every=every)


# ----------------------------------------------------------------------------------------------
# the picture
# ----------------------------------------------------------------------------------------------
def test_plot_flow_from_records_and_from_the_file(sample, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from tinynet import plot

    model, opt, loader, kw = _run(sample, tmp_path, every=1)
    fit(model, nn.CrossEntropyLoss(), opt, loader, 2, **kw)
    records = kw["monitor"].records
    fig = plot.plot_flow(tmp_path / FLOW_FILE, path=tmp_path / "flow.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grads = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}
    assert grads == {f"{n} Linear": [r["params"][f"{n}.weight"]["grad_norm"] for r in records]
                     for n in ("1", "3")}
    dead = fig.axes[3].get_lines()[0]
    assert list(dead.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(dead.get_ydata()) == [r["modules"]["2"]["dead"] for r in records]
    assert len(plot.plot_flow(kw["monitor"]).axes) == 6  # the monitor itself works too
    with pytest.raises(ValueError, match="no records"):
        plot.plot_flow([])
