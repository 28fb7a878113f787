"""tinynet.lab.explain: every worked entry equals the module's real gradient, the model is left
unchanged, entries can be chosen, the text and Markdown hold together, the example runs.

The real gradients are computed here independently of the explanation's own walk: the weight
gradients by the Sequential's ordinary forward and backward (``model(x)``, ``model.backward``),
each module's dL/dX by a module-by-module loop written in this file.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from script_loader import load_script
from strategies import conv_configs, kink_free, labels_for, seeds

import tinynet
from tinynet import nn
from tinynet.lab.explain import Explanation, explain_backward, main, sample_batch
from tinynet.models import course_cnn

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "04_explain_backward.py"


def real_gradients(model: nn.Sequential, x, y) -> dict:
    """``{'<param name>': grad, ('input', '<module name>'): dL/dX, 'logits': dL/dz}`` by the
    ordinary path, on copies (the caller's model is not touched)."""
    state = tinynet.backend.get_rng_state()  # the same dropout masks as the explanation drew
    ref = model.copy()
    ref.zero_grad()
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(ref(x), y)
    dlogits = loss_fn.backward()
    ref.backward(dlogits)
    out = {name: tinynet.to_numpy(p.grad).astype(np.float64)
           for name, p in ref.named_parameters()}
    out["logits"] = tinynet.to_numpy(dlogits).astype(np.float64)
    # dL/dX of every module, by a loop of our own over the (nested) Sequential's leaves
    tinynet.backend.set_rng_state(state)
    loop = model.copy()
    leaves = [(name, m) for name, m in loop.named_modules()
              if name and not isinstance(m, nn.Sequential)]
    h = x
    for _, m in leaves:
        h = m(h)
    loss_fn(h, y)
    g = loss_fn.backward()
    for name, m in reversed(leaves):
        g = m.backward(g)
        out[("input", name)] = tinynet.to_numpy(g).astype(np.float64)
    return out


def assert_entries_are_real(ex: Explanation, real: dict, rtol: float) -> None:
    assert ex.entries, "no worked entries"
    for e in ex.entries:
        if e.grad_of in ("weight", "bias"):
            key = f"{e.module}.{e.grad_of}"
        elif e.grad_of == "input":
            key = ("input", e.module)
        else:
            key = "logits"
        truth = float(real[key][e.index])
        tol = rtol * max(e.scale, abs(truth)) + 1e-12
        assert abs(e.value - truth) <= tol, (
            f"{e.module} {e.label}: the worked entry {e.value!r} is not the real gradient "
            f"{truth!r} ({e.numbers})")
        assert e.matches, f"{e.module} {e.label} says it does not match"
        assert abs(e.actual - truth) <= tol


def course_model(seed: int, dtype=None) -> nn.Sequential:
    tinynet.manual_seed(seed)
    return course_cnn(dtype=dtype, device="cpu")


# -- every worked entry is the real gradient ---------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_course_network_entries_are_the_real_gradients(seed):
    model = course_model(seed, dtype=tinynet.float64)
    x, y = sample_batch(2 if seed % 2 else 1, start=5 * seed, dtype=tinynet.float64,
                        device="cpu")
    ex = explain_backward(model, x, y, seed=seed)
    assert ex.all_match
    assert_entries_are_real(ex, real_gradients(model, x, y), rtol=1e-9)
    # a worked entry for every module and the loss, and both parameters of every layer
    assert {s.name for s in ex.steps} == {"loss"} | {str(i) for i in range(12)}
    assert all(s.entries for s in ex.steps)
    checked = {(e.module, e.grad_of) for e in ex.entries}
    for name, _ in model.named_parameters():
        module, what = name.split(".")
        assert (module, what) in checked


def test_float32_default_course_network():
    ex = explain_backward()  # the course network, the first image of the sample
    assert ex.all_match and ex.input_shape == (1, 1, 28, 28)
    assert [s.name for s in ex.steps] == ["loss"] + [str(i) for i in range(11, -1, -1)]
    text = ex.text()
    assert "dL/dz = (softmax(z) - one_hot(y)) / N" in text
    assert "dW = dY^T X" in text and "dX = dY W" in text
    assert "dX = col2im(W^T dY)" in text
    assert "sum over 64 output pixels (8x8) of dY[n," in text  # conv 2: 8x8 outputs
    assert "sum over 576 output pixels (24x24)" in text  # conv 1
    assert "the maximum in [brackets]" in text
    assert f"{len(ex.entries)} of {len(ex.entries)} worked entries match" in text


def _check_model(model: nn.Sequential, x: np.ndarray, y: np.ndarray, seed: int) -> Explanation:
    ex = explain_backward(model, x, y, seed=seed)
    assert_entries_are_real(ex, real_gradients(model, x, y), rtol=1e-9)
    return ex


@settings(max_examples=15)
@given(cfg=conv_configs(max_batch=2, max_hw=7), seed=seeds)
def test_conv_with_padding_and_stride(cfg, seed):
    n, c_out, ho, wo = cfg.y_shape
    model = nn.Sequential(cfg.module(dtype=tinynet.float64), nn.ReLU(), nn.Flatten(),
                          nn.Linear(c_out * ho * wo, 3, dtype=tinynet.float64))
    # kink-free input: the ReLU's [X > 0] is not decided by rounding
    x = kink_free(seed, cfg.x_shape)
    ex = _check_model(model, x, labels_for(seed, cfg.n, 3), seed)
    conv_step = ex.steps[-1]
    assert conv_step.name == "0" and {e.grad_of for e in conv_step.entries} >= {"weight",
                                                                               "input"}


def test_overlapping_and_padded_max_pool_routes_every_window():
    # stride 1 < kernel 3 and padding 1: one input can win several windows
    tinynet.manual_seed(4)
    dt = tinynet.float64
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, stride=2, dtype=dt), nn.ReLU(),
                          nn.MaxPool2d(3, stride=1, padding=1), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 4, dtype=dt))
    x = kink_free(1, (2, 1, 7, 7))
    for seed in range(4):
        ex = _check_model(model, x, np.array([1, 3]), seed)
        pool = next(s for s in ex.steps if s.name == "2")
        assert any("window of output" in line for sec in pool.sections for line in sec.lines)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_dropout_and_average_pools(train):
    tinynet.manual_seed(7)
    dt = tinynet.float64
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, dtype=dt), nn.BatchNorm2d(3, dtype=dt), nn.ReLU(),
        nn.AvgPool2d(2, stride=1, padding=1), nn.AdaptiveAvgPool2d((2, 3)),
        nn.Flatten(), nn.Linear(18, 5, dtype=dt), nn.BatchNorm1d(5, dtype=dt),
        nn.Dropout(0.3), nn.Linear(5, 4, dtype=dt),
    )
    x = kink_free(3, (4, 2, 6, 7))
    y = np.array([0, 1, 2, 3])
    model.train()
    for _ in range(2):  # running statistics that are not the initial 0 / 1
        model(x)
    model.train(train)
    for seed in range(3):
        ex = _check_model(model, x, y, seed)
        names = {e.module for e in ex.entries}
        assert {"1", "3", "4", "7", "8"} <= names  # BatchNorm2d, the pools, BatchNorm1d, Dropout
        text = ex.text()
        assert "dgamma_c = sum over the channel of dY * xhat" in text
        if train:
            assert "M * dY - dbeta_c - xhat * dgamma_c" in text
            assert "dX = dY * mask" in text
        else:
            assert "evaluation: the statistics are constants" in text
            assert "evaluation mode (or p = 0): Y = X, so dX = dY" in text


def test_nested_sequential_and_an_unknown_module():
    class Scale(nn.Module):  # not one of tinynet's modules: shapes and numbers only
        def forward(self, x):
            self.save_for_backward(None)
            return x * 2.0

        def backward(self, grad_output):
            self.saved()
            return grad_output * 2.0

    tinynet.manual_seed(2)
    dt = tinynet.float64
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 6, dtype=dt), nn.ReLU()), Scale(),
                          nn.Linear(6, 3, dtype=dt))
    x = kink_free(5, (3, 4))
    ex = _check_model(model, x, np.array([0, 2, 1]), 0)
    assert [s.name for s in ex.steps] == ["loss", "2", "1", "0.1", "0.0"]
    unknown = next(s for s in ex.steps if s.name == "1")
    assert not unknown.entries and unknown.downstream_shape == (3, 6)
    assert "shown by its shapes and numbers only" in ex.text()


# -- choosing the entry -------------------------------------------------------------------------
def test_entries_can_be_chosen_and_the_default_is_not_tiny():
    model = course_model(0)
    x, y = sample_batch(1)
    ex = explain_backward(model, x, y, entries={"0": (3, 0, 1, 2), "7": (5, 6), "loss": (0, 2),
                                                "5": (0, 1, 2, 3)})
    first = {}
    for e in ex.entries:
        first.setdefault(e.module, e)
    assert first["0"].label == "dL/dW[3, 0, 1, 2]" and first["0"].index == (3, 0, 1, 2)
    assert first["7"].index == (5, 6) and first["loss"].index == (0, 2)
    assert "window of output Y[0,1,2,3]" in ex.text()  # the max pool's chosen window
    assert_entries_are_real(ex, real_gradients(model, x, y), rtol=1e-4)
    # by default: among the entries of at least a quarter of the largest gradient
    real = real_gradients(model, x, y)
    for seed in range(3):
        for e in explain_backward(model, x, y, seed=seed).entries:
            if e.grad_of == "weight":
                grad = real[f"{e.module}.weight"]
                assert abs(e.value) >= 0.25 * np.abs(grad).max() > 0
    # the seed changes the entries (the same seed: the same ones)
    picks = [tuple(e.index for e in explain_backward(model, x, y, seed=s).entries)
             for s in (0, 1, 0)]
    assert picks[0] == picks[2] and picks[0] != picks[1]


def test_bad_choices_and_models_speak_to_the_learner():
    model = course_model(0)
    x, y = sample_batch(1)
    with pytest.raises(ValueError, match=r"does not fit its array of shape \(6, 1, 5, 5\)"):
        explain_backward(model, x, y, entries={"0": (9, 0, 0, 0)})
    with pytest.raises(ValueError, match=r"not modules with a worked entry.*'11'"):
        explain_backward(model, x, y, entries={"conv1": (0, 0, 0, 0)})
    with pytest.raises(TypeError, match="takes a Sequential"):
        explain_backward(nn.Linear(3, 2), np.zeros((1, 3), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="give the labels"):
        explain_backward(model, x)


# -- the model is left as it was ----------------------------------------------------------------
def test_the_model_is_left_unchanged():
    tinynet.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(2 * 13 * 13, 10))
    x, y = sample_batch(3)
    # gradients from an earlier backward, and evaluation mode on one module only
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    model[5].eval()
    before = {k: np.array(tinynet.to_numpy(v), copy=True) for k, v in model.state_dict().items()}
    grads = {k: np.array(p.grad, copy=True) for k, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    rng = tinynet.backend.get_rng_state()
    ex = explain_backward(model, x, y)
    assert ex.all_match
    assert rng == tinynet.backend.get_rng_state()  # a dropout mask was drawn, then put back
    for k, v in model.state_dict().items():  # weights and BatchNorm's running statistics
        np.testing.assert_array_equal(tinynet.to_numpy(v), before[k], err_msg=k)
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[k], err_msg=k)
    assert [m.training for m in model.modules()] == modes
    # the model still trains as before: forward and backward run (no cache left behind)
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())


# -- text and Markdown --------------------------------------------------------------------------
def test_markdown_is_well_formed_and_renders():
    ex = explain_backward(seed=1)
    md = ex.markdown()
    lines = md.splitlines()
    assert lines[0] == "## One backward pass, explained"
    headings = [line for line in lines if line.startswith("### ")]
    assert len(headings) == len(ex.steps) == 13
    assert headings[0].startswith("### loss") and headings[-1].startswith("### 0: Conv2d")
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    assert len(fences) % 2 == 0 and all(lines[i] == "```text" for i in fences[::2])
    assert all(lines[i] == "```" for i in fences[1::2])
    # every worked entry sits in a code block with its verdict
    assert md.count("-> matches (difference") == len(ex.entries)
    assert str(ex) == ex.text() and "```" not in ex.text()


def test_markdown_renders_to_html():
    md_it = pytest.importorskip("markdown_it")  # (markdown-it-py, when installed)
    html = md_it.MarkdownIt().render(explain_backward(seed=1).markdown())
    assert html.count("<h3>") == 13 and "<pre><code" in html


def test_a_worked_entry_that_differs_says_so():
    from tinynet.lab.explain import WorkedEntry

    def entry(value, actual, scale, itemsize_rtol):
        return WorkedEntry("0", "weight", (0,), "dL/dW[0]", "f", "n", value, actual, scale,
                           itemsize_rtol)

    assert entry(0.5, 0.5 + 4e-5, 1.0, 1e-4).matches  # float32 rounding of a sum of size 1
    bad = entry(0.5, 0.51, 1.0, 1e-4)
    assert not bad.matches and "DOES NOT MATCH" in bad.verdict()
    assert not entry(0.5, 0.5 + 1e-9, 1.0, 1e-10).matches  # float64 is held to 1e-10


def test_text_shows_upstream_numbers_and_the_max_pool_window():
    ex = explain_backward(seed=2)
    pool = next(s for s in ex.steps if s.name == "5")
    assert pool.upstream_shape == (1, 12, 4, 4) and len(pool.upstream_numbers) == 6
    window = next(sec for sec in pool.sections if sec.label == "one window and its routing")
    assert len(window.lines) == 4  # the title, two rows of the 2x2 window, where it went
    assert sum(line.count("[") for line in window.lines[1:3]) == 1  # exactly one winner
    assert "goes there, the other 3 get 0 from this window" in window.lines[3]
    text = ex.text()
    numbers = re.search(r"first numbers: \[([^\]]*)\]", text).group(1)
    assert len(numbers.split(", ")) == 7  # six numbers and "..."
    # a gradient whose first numbers are all 0 shows its first non-zero ones instead
    # (conv 2's dY: zero wherever the max pool after it did not route, so its first are 0)
    conv = next(s for s in ex.steps if s.name == "3")
    first = conv.upstream_from
    assert first is not None and all(v != 0 for v in conv.upstream_numbers)
    assert f"first non-zero numbers, from dY[{', '.join(map(str, first))}] on" in text


# -- the command line and the example -----------------------------------------------------------
def test_command_line_writes_markdown_to_a_file(tmp_path, capsys):
    out = tmp_path / "explained.md"
    assert main(["--markdown", "--seed", "3", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert out.read_text().startswith("## One backward pass, explained")


def test_example_runs(tmp_path, capsys):
    example = load_script(EXAMPLE, "example_04")
    assert example.main(["--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "== 0: Conv2d" in out and "worked entries match" in out
    target = tmp_path / "ex.md"
    assert example.main(["--markdown", "--out", str(target), "--batch-size", "2"]) == 0
    assert "### 0: Conv2d" in target.read_text()
    assert "# %%" in EXAMPLE.read_text()  # cells for Jupyter (jupytext) and VS Code


@given(seed=st.integers(0, 2**16))
@settings(max_examples=5)
def test_any_seed_explains_the_course_network(seed):
    ex = explain_backward(course_model(0), *sample_batch(1, start=seed % 100), seed=seed)
    assert ex.all_match


def test_on_every_device(device):
    """A model on a GPU: the formulas run on host copies, the checks hold the same."""
    tinynet.manual_seed(0)
    model = course_cnn(device=device)
    x, y = sample_batch(2, device=device)
    ex = explain_backward(model, x, y, seed=1)
    assert ex.device == device and ex.all_match
    assert_entries_are_real(ex, real_gradients(model, x, y), rtol=1e-4)
