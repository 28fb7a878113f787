"""tinynet.summary and tinynet.inspect.trace: shapes, parameter counts, arithmetic, grouping,
shape errors, and a trace that leaves the caller's model untouched."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from script_loader import load_script
from strategies import conv_configs, course_network

import tinynet
from tinynet import nn
from tinynet.inspect import ShapeError, axis_names, summary, trace


def counted_params(model):
    """Count by walking the arrays themselves (independent of the summary's bookkeeping)."""
    return sum(int(np.prod(p.data.shape)) for p in model.parameters())


# -- summary -------------------------------------------------------------------------------------
def test_summary_rows_shapes_and_parameter_counts():
    model = course_network()
    s = summary(model, (1, 1, 28, 28))
    assert [r.type for r in s.rows] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
        "Linear", "ReLU", "Linear", "ReLU", "Linear",
    ]
    assert [r.output_shape for r in s.rows] == [
        (1, 6, 24, 24), (1, 6, 24, 24), (1, 6, 12, 12), (1, 12, 8, 8), (1, 12, 8, 8),
        (1, 12, 4, 4), (1, 192), (1, 120), (1, 120), (1, 60), (1, 60), (1, 10),
    ]
    # every row's output is the next row's input
    for a, b in zip(s.rows, s.rows[1:], strict=False):
        assert a.output_shape == b.input_shape
    # by hand: 6*1*5*5+6, 12*6*5*5+12, 192*120+120, 120*60+60, 60*10+10
    assert [r.num_params for r in s.rows if r.kind == "layer"] == [156, 1812, 23160, 7260, 610]
    assert s.total_params == 156 + 1812 + 23160 + 7260 + 610 == 32998 == counted_params(model)
    assert s.rows[0].param_shapes == {"weight": (6, 1, 5, 5), "bias": (6,)}
    assert s.rows[7].param_shapes == {"weight": (120, 192), "bias": (120,)}
    # layers have weights, operations do not
    assert {r.type for r in s.rows if r.kind == "layer"} == {"Conv2d", "Linear"}
    assert all(r.num_params == 0 for r in s.rows if r.kind == "operation")
    assert s.output_shape == (1, 10)


def test_summary_batch_axis_and_memory_follow_the_input():
    s = summary(course_network(), (64, 1, 28, 28))
    assert s.rows[-1].output_shape == (64, 10)
    # per sample: the outputs of all 12 modules
    per_sample = 6 * 24 * 24 * 2 + 6 * 12 * 12 + 12 * 8 * 8 * 2 + 12 * 4 * 4 + 192 + 120 * 2 \
        + 60 * 2 + 10
    assert s.activation_values_per_sample == per_sample
    assert s.activation_bytes_per_sample == 4 * per_sample
    s64 = summary(course_network(dtype="float64"), (2, 1, 28, 28))
    assert s64.activation_bytes_per_sample == 8 * per_sample
    assert f"{4 * per_sample:,} bytes" in str(s)


def test_summary_arithmetic_strings():
    s = summary(course_network(), (1, 1, 28, 28))
    assert "H_out = (28 + 2*0 - 5) / 1 + 1 = 24" in s.rows[0].arithmetic
    assert "W_out = (28 + 2*0 - 5) / 1 + 1 = 24" in s.rows[0].arithmetic
    assert "H_out = (24 + 2*0 - 2) / 2 + 1 = 12" in s.rows[2].arithmetic
    assert "H_out = (12 + 2*0 - 5) / 1 + 1 = 8" in s.rows[3].arithmetic
    assert "H_out = (8 + 2*0 - 2) / 2 + 1 = 4" in s.rows[5].arithmetic
    assert any("12*4*4 = 192" in a for a in s.rows[6].arithmetic)
    assert any("6*1*5*5 + 6 = 156" in a for a in s.rows[0].arithmetic)
    text = str(s)
    assert "H_out = (28 + 2*0 - 5) / 1 + 1 = 24" in text and "32,998" in text


def test_summary_arithmetic_with_padding_stride_and_floor():
    model = nn.Sequential(nn.Conv2d(3, 4, kernel_size=(3, 2), stride=2, padding=1),
                          nn.MaxPool2d(3, stride=2))
    s = summary(model, (2, 3, 10, 9))
    conv, pool = s.rows
    # H: (10 + 2 - 3) / 2 = 4.5 -> floor 4, +1 = 5;  W: (9 + 2 - 2) / 2 = 4.5 -> 5
    assert conv.output_shape == (2, 4, 5, 5)
    assert "H_out = floor((10 + 2*1 - 3) / 2) + 1 = 5" in conv.arithmetic
    assert "W_out = floor((9 + 2*1 - 2) / 2) + 1 = 5" in conv.arithmetic
    assert "H_out = (5 + 2*0 - 3) / 2 + 1 = 2" in pool.arithmetic
    assert pool.output_shape == (2, 4, 2, 2)
    # the formula agrees with running the layers
    y = model(np.zeros((2, 3, 10, 9), dtype=np.float32))
    assert y.shape == pool.output_shape


def test_summary_groups_a_layer_with_its_operations():
    s = summary(course_network(), (1, 1, 28, 28))
    titles = [t for t, _ in s.groups]
    assert titles[0] == "layer 1 (hidden layer): Conv2d + ReLU + MaxPool2d"
    # the course: "the second layer is a conv layer that performs conv, ReLU and max pooling"
    assert titles[1] == "layer 2 (hidden layer): Conv2d + ReLU + MaxPool2d"
    # flatten prepares the input of the first Linear layer
    assert titles[2] == "layer 3 (hidden layer): Flatten + Linear + ReLU"
    assert titles[3] == "layer 4 (hidden layer): Linear + ReLU"
    assert titles[4] == "layer 5 (output layer): Linear"
    assert [r.group for r in s.rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5]
    assert titles[1] in str(s)


def test_summary_operations_before_the_first_layer_form_group_zero():
    s = summary(nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)), (5, 3, 2, 2))
    assert [r.group for r in s.rows] == [0, 1, 1]
    assert s.groups[0][0] == "before the first layer: ReLU"


def test_shape_error_at_the_row_with_the_number_that_fits():
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(100, 10))
    with pytest.raises(ShapeError) as info:
        summary(model, (1, 1, 28, 28))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.row.index == 4 and err.row.type == "Linear"
    assert err.row.output_shape is None and err.row.input_shape == (1, 864)
    assert "Linear(864, 10)" in str(err)  # 6*12*12 = 864 is what would fit
    # the table up to that row: the rows before it, with their shapes
    assert len(err.summary.rows) == 5
    assert err.summary.rows[3].output_shape == (1, 864)
    assert "(1, 6, 12, 12)" in str(err) and ">>>" in str(err)


def test_shape_error_missing_flatten_and_wrong_channels():
    with pytest.raises(ShapeError, match=r"add Flatten\(\)") as info:
        summary(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(8, 2)), (1, 1, 4, 4))
    assert info.value.row.index == 1
    assert "Linear(8, 2)" in str(info.value)  # 2*2*2 = 8 features after flattening
    with pytest.raises(ShapeError, match=r"Conv2d\(3, 6") as info:
        summary(nn.Sequential(nn.Conv2d(1, 6, 5)), (1, 3, 28, 28))  # a colour image
    assert info.value.row.index == 0


class Doubler(nn.Module):
    """A module without output_shape: the summary falls back to a forward pass on zeros."""

    def forward(self, x):
        return tinynet.backend.xp_of(x).concatenate([x, x], axis=1)

    def backward(self, grad_output):
        half = grad_output.shape[1] // 2
        return grad_output[:, :half] + grad_output[:, half:]


class TwoBranches(nn.Module):
    """A custom container: its module order is known only by running it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.flat(self.conv(x)))


def test_summary_fallback_for_unknown_modules_and_containers():
    s = summary(nn.Sequential(nn.Flatten(), Doubler(), nn.Linear(8, 2)), (3, 1, 2, 2))
    assert [r.output_shape for r in s.rows] == [(3, 4), (3, 8), (3, 2)]
    s = summary(TwoBranches(), (2, 1, 6, 6))
    assert [(r.name, r.output_shape) for r in s.rows] == [
        ("conv", (2, 2, 4, 4)), ("flat", (2, 32)), ("fc", (2, 3))]
    assert s.total_params == 2 * 9 + 2 + 32 * 3 + 3


def test_summary_is_exported_and_runs_no_math(monkeypatch):
    assert tinynet.summary is summary
    import tinynet.functional as F

    def boom(*a, **k):
        raise AssertionError("summary ran a kernel")

    for name in ("conv2d_forward", "maxpool2d_forward", "linear_forward", "relu_forward"):
        monkeypatch.setattr(F, name, boom)
    assert summary(course_network(), (1, 1, 28, 28)).output_shape == (1, 10)


# -- trace ---------------------------------------------------------------------------------------
def _batch(n=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, size=n)


def test_trace_leaves_the_model_unchanged():
    tinynet.manual_seed(0)
    model = course_network().eval()
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    x, y = _batch()
    report = trace(model, x, y, nn.CrossEntropyLoss())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, weights[k])
    assert all(not m.training for m in model.modules())
    # no cache was left behind either: a backward now must complain
    with pytest.raises(RuntimeError, match="forward pass first"):
        model.backward(np.zeros((4, 10), dtype=np.float32))
    assert len(report.rows) == 12


def test_trace_keeps_existing_gradients_and_train_mode():
    tinynet.manual_seed(1)
    model = course_network()
    loss_fn = nn.CrossEntropyLoss()
    x, y = _batch(seed=3)
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    trace(model, x, y, loss_fn)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[n])
    assert model.training


def test_trace_reports_shapes_ranks_axes_and_statistics():
    tinynet.manual_seed(0)
    model = course_network()
    x, y = _batch(n=5)
    report = trace(model, x, y, nn.CrossEntropyLoss())
    rows = report.rows
    assert [r.output_shape for r in rows][:3] == [(5, 6, 24, 24), (5, 6, 24, 24), (5, 6, 12, 12)]
    assert rows[0].input_shape == (5, 1, 28, 28) and rows[0].input_rank == 4
    assert rows[0].input_axes == ("batch", "channels", "height", "width")
    assert rows[0].output_axes == ("batch", "feature maps", "height", "width")
    assert rows[6].output_axes == ("batch", "features") and rows[6].output_rank == 2
    for r in rows:
        assert 0.0 <= r.output_stats["zeros"] <= 1.0
        assert r.output_stats["min"] <= r.output_stats["mean"] <= r.output_stats["max"]
    relu = [r for r in rows if r.type == "ReLU"]
    assert all(r.output_stats["min"] >= 0 for r in relu)
    assert any(r.output_stats["zeros"] > 0.05 for r in relu)  # a ReLU zeroes some values
    # gradients on the way back: every module received dL/d(its output)
    assert all(r.grad_stats is not None and r.grad_stats["max_abs"] > 0 for r in rows)
    layers = [r for r in rows if r.kind == "layer"]
    assert all(set(r.param_grad_norms) == {"weight", "bias"} for r in layers)
    assert all(r.param_grad_norms == {} for r in rows if r.kind == "operation")
    # the reported numbers are those of a plain forward/backward on the same weights
    loss_fn = nn.CrossEntropyLoss()
    logits = model(x)
    loss = float(loss_fn(logits, y))
    model.backward(loss_fn.backward())
    assert report.loss == pytest.approx(loss, rel=1e-6)
    assert rows[-1].output_stats["mean"] == pytest.approx(float(logits.mean()), rel=1e-5)
    w_grad = model[0].weight.grad.astype(np.float64)
    assert rows[0].param_grad_norms["weight"] == pytest.approx(float(np.sqrt((w_grad ** 2).sum())),
                                                               rel=1e-5)
    text = str(report)
    assert "(batch, feature maps, height, width)" in text and "dL/d(output)" in text


def test_trace_on_a_device(device):
    tinynet.manual_seed(0)
    model = course_network(device=device)
    x, y = _batch(n=2)
    report = trace(model, tinynet.to_device(x, device), tinynet.to_device(y, device),
                   nn.CrossEntropyLoss())
    assert report.rows[-1].output_shape == (2, 10)
    assert np.isfinite(report.loss)


def test_axis_names():
    assert axis_names(()) == ()
    assert axis_names((4, 10)) == ("batch", "features")
    assert axis_names((4, 3, 8, 8)) == ("batch", "channels", "height", "width")
    assert axis_names((4, 3, 8, 8), after_conv=True)[1] == "feature maps"


def test_summary_beyond_the_course_modules():
    if not all(hasattr(nn, n) for n in ("BatchNorm2d", "AvgPool2d", "Dropout")):
        pytest.skip("tinynet.nn has no BatchNorm2d/AvgPool2d/Dropout")
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(36, 10))
    s = summary(model, (2, 1, 7, 7))
    assert [r.output_shape for r in s.rows] == [
        (2, 4, 7, 7), (2, 4, 7, 7), (2, 4, 7, 7), (2, 4, 3, 3), (2, 4, 3, 3), (2, 36), (2, 10)]
    # BatchNorm has weights (a layer) but stays in the group of the conv it normalises
    assert s.rows[1].kind == "layer" and s.rows[1].num_params == 8
    assert [r.group for r in s.rows] == [1, 1, 1, 1, 1, 2, 2]
    assert "H_out = floor((7 + 2*0 - 2) / 2) + 1 = 3" in s.rows[3].arithmetic
    with tinynet.no_grad():
        assert model.eval()(np.zeros((2, 1, 7, 7), dtype=np.float32)).shape == (2, 10)


@pytest.fixture
def simulated_cuda():
    """A stand-in 'cuda' device whose arrays raise when NumPy is used on them directly or host
    arrays are mixed in, as CuPy does (see tests/test_no_numpy_in_layers.py)."""
    import pathlib

    strict = load_script(pathlib.Path(__file__).with_name("test_no_numpy_in_layers.py"),
                         "_strict_xp_inspect")
    with strict.simulated_cuda_device() as device:
        yield device


def test_summary_and_trace_on_a_simulated_gpu(simulated_cuda):
    from tinynet import backend as B

    tinynet.manual_seed(0)
    model = course_network(device=simulated_cuda)
    x, y = _batch(n=3)
    x, y = B.to_device(x, "cuda"), B.to_device(y, "cuda")
    report = trace(model, x, y, nn.CrossEntropyLoss())
    assert report.rows[-1].output_shape == (3, 10) and np.isfinite(report.loss)
    assert B.device_of(model[0].weight.data) == "cuda" and model[0].weight.grad is None
    # the fallback forward on zeros (a module without output_shape) runs on the model's device
    s = summary(nn.Sequential(nn.Flatten(), Doubler(), nn.Linear(8, 2, device="cuda")),
                (3, 1, 2, 2))
    assert s.output_shape == (3, 2)


# -- summary of a shape without its batch axis (the torchsummary habit) ----------------------------
def test_summary_adds_a_missing_batch_axis_and_says_so():
    with_batch = summary(course_network(), (1, 1, 28, 28))
    without = summary(course_network(), (1, 28, 28))  # torchsummary's (C, H, W)
    assert without.batch_axis_added and not with_batch.batch_axis_added
    assert without.input_shape == with_batch.input_shape == (1, 1, 28, 28)
    assert [r.output_shape for r in without.rows] == [r.output_shape for r in with_batch.rows]
    assert without.total_params == with_batch.total_params == 32998
    text = str(without)
    assert "batch axis added: (1, 28, 28) has no batch axis" in text
    assert "(1, 1, 28, 28)" in text.splitlines()[1]
    assert "batch axis added" not in str(with_batch)
    # the 4-D form keeps its batch size
    assert summary(course_network(), (64, 1, 28, 28)).rows[-1].output_shape == (64, 10)


@given(cfg=conv_configs(), relu_first=st.booleans())
def test_summary_without_batch_axis_equals_the_batch_of_one(cfg, relu_first):
    """Any valid conv (behind elementwise operations or not) reads (C, H, W) as (1, C, H, W)."""
    layers = ([nn.ReLU(), nn.Dropout(0.1)] if relu_first else []) + [cfg.module()]
    model = nn.Sequential(*layers)
    chw = (cfg.c_in, cfg.h, cfg.w)
    s3, s4 = summary(model, chw), summary(model, (1,) + chw)
    assert s3.batch_axis_added and not s4.batch_axis_added
    assert s3.input_shape == (1,) + chw
    assert [r.output_shape for r in s3.rows] == [r.output_shape for r in s4.rows]
    n = cfg.n
    assert summary(model, (n,) + chw).rows[-1].output_shape[0] == n  # 4-D: kept as given


@given(features=st.integers(1, 9), n=st.integers(2, 5))
def test_summary_without_batch_axis_for_linear_and_batchnorm1d(features, n):
    mlp = nn.Sequential(nn.Linear(features, 3), nn.ReLU(), nn.Linear(3, 2))
    s = summary(mlp, (features,))
    assert s.batch_axis_added and s.rows[-1].output_shape == (1, 2)
    s2 = summary(mlp, (n, features))
    assert not s2.batch_axis_added and s2.rows[-1].output_shape == (n, 2)
    bn = nn.Sequential(nn.BatchNorm1d(features), nn.Linear(features, 2))
    assert summary(bn, (features,)).batch_axis_added
    assert not summary(bn, (n, features)).batch_axis_added  # (N, C) is a 2-D input of BatchNorm1d
    bn_only = nn.Sequential(nn.BatchNorm1d(features))
    assert not summary(bn_only, (n, features, 4)).batch_axis_added  # (N, C, L) too


def test_summary_flatten_first_tries_the_shape_as_given_then_with_a_batch_axis():
    # Flatten fixes no rank: (3, 4, 4) as given would be 3 samples of 16 features, which
    # Linear(48) refuses; with a batch axis it is one 3x4x4 image of 48 features
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    s = summary(model, (3, 4, 4))
    assert s.batch_axis_added and s.rows[0].output_shape == (1, 48)
    s4 = summary(model, (5, 3, 4, 4))
    assert not s4.batch_axis_added and s4.rows[-1].output_shape == (5, 2)
    # a Flatten-first model that fits the shape as given keeps it (16 features per sample)
    s16 = summary(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), (3, 4, 4))
    assert not s16.batch_axis_added and s16.rows[-1].output_shape == (3, 2)


def test_summary_shape_mistakes_are_still_reported_for_the_shape_given():
    # not a missing batch axis: the error speaks of the shape that was given
    with pytest.raises(ShapeError, match=r"input shape \(28, 28\)"):
        summary(course_network(), (28, 28))
    with pytest.raises(ShapeError, match=r"Conv2d\(3, 6") as info:
        summary(nn.Sequential(nn.Conv2d(1, 6, 5)), (3, 28, 28))  # colour image, grey model
    assert info.value.summary.batch_axis_added  # the axis was added, the channels are wrong
    assert "batch axis added" in str(info.value)
    # neither as given (2 samples of 4 features) nor with a batch axis (8 features) fits
    # Linear(9, 2): the error is the one for the shape as given
    with pytest.raises(ShapeError, match=r"use Linear\(4, 2\)") as info:
        summary(nn.Sequential(nn.Flatten(), nn.Linear(9, 2)), (2, 2, 2))
    assert not info.value.summary.batch_axis_added and "batch axis added" not in str(info.value)


def test_summary_without_batch_axis_for_a_custom_container():
    s = summary(TwoBranches(), (1, 6, 6))  # a container: its order is learned by running it
    assert s.batch_axis_added and s.rows[-1].output_shape == (1, 3)
    assert not summary(TwoBranches(), (2, 1, 6, 6)).batch_axis_added
