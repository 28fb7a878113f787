"""The "break it" catalogue (tinynet.lab.bugs): every bug is caught, the correct code is not,
and the kernels are put back afterwards, also when the block raises.

Three sources of truth meet here: gradcheck catches each bug on its check model (drawn inputs,
hypothesis); PyTorch's autograd catches it too (skipped without torch); the un-patched code
passes the same checks, so a check that always fails would show.
"""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from script_loader import load_script
from strategies import seeds

import tinynet
import tinynet.nn as nn
from tinynet import kernels
from tinynet.lab import bugs

CATALOGUE = list(bugs.CATALOGUE)
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
few = settings(max_examples=5)


def ids(bug):
    return bug.name


def originals(bug):
    """The object each patched attribute holds now."""
    return [getattr(module, attribute) for module, attribute in bug.targets()]


def torch_or_skip():
    return pytest.importorskip("torch")


# ----------------------------------------------------------------------------------------------
# The catalogue itself
# ----------------------------------------------------------------------------------------------
def test_the_catalogue_holds_8_to_12_named_bugs_each_a_real_patch():
    assert 8 <= len(CATALOGUE) <= 12
    assert len(set(bugs.NAMES)) == len(CATALOGUE)
    for bug in CATALOGUE:
        assert bug.name == bug.name.lower() and " " not in bug.name
        assert bug.wrong.endswith(".") and bug.wrong.count(". ") == 0  # one sentence
        assert bug.kernel.startswith("tinynet.functional")
        signs = [line[0] for line in bug.diff.splitlines()]
        assert "-" in signs and "+" in signs and set(signs) <= {"-", "+"}
        assert bug.check in bugs.CHECKS
        for (module, attribute), patch in zip(bug.targets(), bug.patches, strict=True):
            original = getattr(module, attribute)  # the attribute exists: the patch replaces it
            assert callable(original) and original is not patch.replacement


def test_get_bug_names_the_choices():
    assert bugs.get_bug("linear-dx-sign").kernel == "tinynet.functional.linear_backward"
    with pytest.raises(ValueError, match="linear-bias-mean"):
        bugs.get_bug("no-such-bug")


# ----------------------------------------------------------------------------------------------
# Applying a bug: it takes effect, and everything is put back
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bug", CATALOGUE, ids=ids)
def test_apply_patches_then_restores_every_attribute_and_the_mode(bug):
    before, mode = originals(bug), kernels.get_mode()
    with bug.apply() as applied:
        assert applied is bug
        assert kernels.get_mode() == "reference"
        for (module, attribute), patch in zip(bug.targets(), bug.patches, strict=True):
            assert getattr(module, attribute) is patch.replacement
            if module is tinynet.functional:  # the dispatcher runs the broken kernel now
                assert kernels.reference(attribute) is patch.replacement
    assert all(now is was for now, was in zip(originals(bug), before, strict=True))
    assert kernels.get_mode() == mode


@pytest.mark.parametrize("bug", CATALOGUE, ids=ids)
def test_apply_restores_when_the_block_raises(bug):
    before, mode = originals(bug), kernels.get_mode()
    with pytest.raises(ZeroDivisionError):
        with bug.apply():
            1 / 0  # noqa: B018
    assert all(now is was for now, was in zip(originals(bug), before, strict=True))
    assert kernels.get_mode() == mode


def test_apply_inside_reference_mode_leaves_reference_mode_on():
    kernels.set_mode("reference")
    try:
        with bugs.CATALOGUE[0].apply():
            pass
        assert kernels.get_mode() == "reference"
    finally:
        kernels.set_mode("fast")
    with bugs.CATALOGUE[0].apply():
        pass
    assert kernels.get_mode() == "fast"


def test_a_patch_that_fails_half_way_restores_the_ones_before_it():
    original = tinynet.functional.linear_backward
    broken = bugs.Bug("half", "The second patch names no attribute.", "x", "-a\n+b",
                      (bugs.Patch("tinynet.functional", "linear_backward", print),
                       bugs.Patch("tinynet.functional", "no_such_kernel", print)), "mlp")
    with pytest.raises(AttributeError, match="no_such_kernel"):
        with broken.apply():
            pass
    assert tinynet.functional.linear_backward is original
    assert kernels.get_mode() == "fast"


def test_a_bug_changes_what_a_module_computes_and_only_inside_the_block():
    layer = nn.Linear(3, 2, dtype=tinynet.float64)
    x = tinynet.backend.get_backend("cpu").asarray([[1.0, -2.0, 0.5]], dtype="float64")
    dy = tinynet.backend.get_backend("cpu").asarray([[0.3, -0.7]], dtype="float64")

    def dx():
        layer(x)
        return layer.backward(dy)

    right = dx()
    with bugs.get_bug("linear-dx-sign").apply():
        assert (dx() == -right).all()
    assert (dx() == right).all()


# ----------------------------------------------------------------------------------------------
# Every bug is caught; the correct code is not
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bug", CATALOGUE, ids=ids)
def test_every_bug_is_caught_by_its_check(bug):
    found = bugs.check_bug(bug, torch=False).gradcheck
    assert found.caught is True
    if bug.forward_only:  # caught on the inputs designed for it: inf/NaN on logits ~1000
        assert found.non_finite and "inf" in found.where
    else:  # caught by gradcheck's own comparison, with its worst entry
        assert not found.non_finite
        assert "finite differences" in found.detail
        assert found.rel_error is not None and found.rel_error > 0.1
        assert "(" in found.where  # an index


@few
@given(seed=seeds)
def test_every_bug_is_caught_and_the_correct_code_passes_on_drawn_inputs(seed):
    for bug in CATALOGUE:
        assert bugs.check_bug(bug, seed=seed, torch=False).gradcheck.caught, bug.name
    for check in bugs.CHECKS:
        model, inputs = bugs.build_check(check, seed)
        with tinynet.use_reference():
            assert bugs.run_gradcheck(model, inputs, seed).caught is False, check


@pytest.mark.parametrize("check", list(bugs.CHECKS))
def test_the_correct_code_passes_every_check(check):
    model, inputs = bugs.build_check(check)
    with tinynet.use_reference():
        found = bugs.run_gradcheck(model, inputs)
    assert found.caught is False and found.cell() == "passes"


def test_the_runners_first_row_is_the_correct_code_passing_every_check():
    report = bugs.check_correct_code(torch=False)
    assert report.bug is None and report.name == "(correct code)"
    assert report.gradcheck.caught is False and report.parity.caught is None


@pytest.mark.parametrize("check", list(bugs.CHECKS))
def test_the_correct_code_agrees_with_pytorch(check):
    torch = torch_or_skip()
    model, inputs = bugs.build_check(check)
    with tinynet.use_reference():
        assert bugs.run_parity(model, inputs, torch=torch).caught is False


@pytest.mark.parametrize("bug", CATALOGUE, ids=ids)
def test_pytorch_parity_catches_every_bug(bug):
    torch = torch_or_skip()
    model, inputs = bugs.build_check(bug.check)
    with bug.apply():
        found = bugs.run_parity(model, inputs, torch=torch)
    assert found.caught is True
    assert found.non_finite == bug.forward_only


def test_the_forward_bug_is_invisible_where_nothing_overflows():
    """Why softmax-no-shift needs its own check: on ordinary logits it computes the same
    numbers, so gradcheck (finite differences of the same forward) passes."""
    bug = bugs.get_bug("softmax-no-shift")
    rng = tinynet.backend.get_backend("cpu").make_rng(0)
    logits = tinynet.backend.get_backend("cpu").asarray(rng.standard_normal((4, 5)))
    labels = tinynet.backend.get_backend("cpu").asarray([0, 3, 1, 4])
    loss = nn.CrossEntropyLoss()
    right = float(loss(logits, labels))
    with bug.apply():
        assert bugs.run_gradcheck(loss, (logits, labels)).caught is False
        assert float(loss(logits, labels)) == pytest.approx(right, rel=1e-12)


def test_relative_error():
    assert bugs.relative_error(1.0, -1.0) == 2.0  # a flipped sign
    assert bugs.relative_error(0.5, 0.0) == 1.0
    assert bugs.relative_error(0.0, 0.0) == 0.0
    assert bugs.relative_error(2.0, 1.0) == 0.5


def test_maxpool_ties_are_made_by_the_model_and_routed_once():
    """The ties check: RepeatColumns makes each window's columns equal; the correct max pool
    sends each window's gradient to one of them, the broken one to both (twice the sum)."""
    model, (x,) = bugs.build_check("ties")
    g = tinynet.backend.get_backend("cpu").asarray([[[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]] * 2] * 2)
    with tinynet.use_reference():
        model(x)
        right = model.backward(g)
    with bugs.get_bug("maxpool-every-tie").apply():
        model(x)
        wrong = model.backward(g)
    assert float(right.sum()) == g.size and float(wrong.sum()) == 2 * g.size


# ----------------------------------------------------------------------------------------------
# Training runs and the table
# ----------------------------------------------------------------------------------------------
def test_training_is_reproducible_and_some_bugs_still_lower_the_loss():
    with tinynet.use_reference():
        first, again = bugs.train_loss(8), bugs.train_loss(8)
    assert first == again and first.after < first.start and not first.error
    with bugs.get_bug("linear-bias-mean").apply():
        buggy = bugs.train_loss(8)
    assert buggy.start == first.start  # same seed: same weights, same test images
    assert buggy.after < buggy.start  # the bug still lowers the loss


def test_the_table_has_one_row_per_report_and_explains_the_forward_bug():
    reports = bugs.run_catalogue(["linear-dx-sign", "softmax-no-shift"], steps=2, torch=False)
    assert [r.name for r in reports] == ["(correct code)", "linear-dx-sign", "softmax-no-shift"]
    text = bugs.format_table(reports)
    lines = text.splitlines()
    assert lines[0].startswith("bug") and "test loss after 2 steps" in lines[0]
    assert lines[2].startswith("(correct code)") and "passes" in lines[2]
    assert lines[3].startswith("linear-dx-sign") and "CAUGHT" in lines[3]
    assert "CAUGHT  loss inf" in lines[4] and "logits ~1000" in lines[4]
    assert "FORWARD bug" in text
    markdown = bugs.format_table(reports, markdown=True)
    assert markdown.splitlines()[1] == "|---|---|---|---|"
    assert markdown.count("\n| ") == 3


# ----------------------------------------------------------------------------------------------
# The example
# ----------------------------------------------------------------------------------------------
def load_example(name: str):
    return load_script(EXAMPLES / f"{name}.py", f"example_{name}")


def test_example_06_runs_and_reports_what_it_caught(capsys):
    example = load_example("06_break_it")
    argv = ["--steps", "3", "--bug", "linear-dx-sign", "--bug", "softmax-no-shift", "--no-torch"]
    assert example.main(argv) == 0
    out = capsys.readouterr().out
    assert "+    dx = -(dy @ weight) if input_grad else None" in out  # the diff is shown
    assert "gradcheck caught 2 of 2 bugs" in out
    assert "still lowered the loss in 3 steps" in out
    assert kernels.get_mode() == "fast"


def test_example_06_lists_the_catalogue_and_refuses_unknown_bugs(capsys):
    example = load_example("06_break_it")
    assert example.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in bugs.NAMES) and "gradcheck caught" not in out
    with pytest.raises(SystemExit):
        example.main(["--bug", "no-such-bug"])
