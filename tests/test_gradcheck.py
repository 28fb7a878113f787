"""tinynet.gradcheck itself: it passes correct gradients, catches wrong ones (naming the tensor, the
worst index and both values), works in float64 on a copy, and honours n_samples and seed."""

from __future__ import annotations

import re

import numpy as np
import pytest
from strategies import kink_free, normal, tie_free

import tinynet
import tinynet.functional as F
import tinynet.nn as nn


class Scale(nn.Module):
    """y = x * w (elementwise, w of shape x.shape[1:]); backward optionally wrong on purpose."""

    def __init__(self, n, wrong_input_at=None, wrong_weight_at=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(
            normal(7, (n,), dtype=np.dtype(dtype or tinynet.get_default_dtype())) + 2)
        self.wrong_input_at = wrong_input_at
        self.wrong_weight_at = wrong_weight_at
        self.forward_calls = 0
        self.seen_dtypes = set()

    def forward(self, x):
        self.forward_calls += 1
        self.seen_dtypes.add(np.dtype(x.dtype))
        self.save_for_backward(x)
        return x * self.weight.data

    def backward(self, g):
        x = self.saved()
        dw = (g * x).sum(axis=0)
        dx = g * self.weight.data
        if self.wrong_input_at is not None:
            dx = dx.copy()
            dx[self.wrong_input_at] += 0.5
        if self.wrong_weight_at is not None:
            dw = dw.copy()
            dw[self.wrong_weight_at] *= 3.0
        self.weight.accumulate_grad(dw)
        return dx


def floats_in(message):
    return [float(m) for m in re.findall(r"-?\d+\.\d*(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+", message)]


def test_passes_a_correct_module():
    assert tinynet.gradcheck(Scale(4, dtype=np.float64), normal(0, (3, 4))) is True


def test_names_the_input_the_worst_index_and_both_values():
    module = Scale(4, wrong_input_at=(2, 1), dtype=np.float64)
    x = normal(0, (3, 4))
    with pytest.raises(tinynet.GradcheckError) as e:
        tinynet.gradcheck(module, x)
    assert isinstance(e.value, AssertionError)
    msg = str(e.value)
    assert re.search("input", msg, re.I), msg
    assert re.search(r"\(\s*2,\s*1\s*\)", msg), msg  # the index
    # the analytic and numeric values for that entry, as they were: dL/dx = g * w (+0.5 by mistake)
    # gradcheck draws g itself, so recover it from the numbers: analytic - numeric == 0.5
    values = floats_in(msg)
    assert any(abs((a - n) - 0.5) < 1e-4 for a in values for n in values), msg


def test_names_the_wrong_parameter():
    module = Scale(5, wrong_weight_at=3, dtype=np.float64)
    with pytest.raises(tinynet.GradcheckError) as e:
        tinynet.gradcheck(module, normal(0, (4, 5)))
    msg = str(e.value)
    assert "weight" in msg and re.search(r"\(\s*3\s*,?\s*\)", msg), msg


def test_check_params_off_skips_parameters():
    module = Scale(5, wrong_weight_at=3, dtype=np.float64)
    assert tinynet.gradcheck(module, normal(0, (4, 5)), check_params=False) is True


def test_float32_module_is_checked_in_float64_on_a_copy():
    module = Scale(4, dtype=np.float32)
    w = module.weight.data.copy()
    x = normal(0, (3, 4), dtype=np.float32)
    assert tinynet.gradcheck(module, x) is True
    # the caller's module is untouched: same weights, same dtype, no gradient, not called
    assert module.weight.data.dtype == np.float32
    np.testing.assert_array_equal(module.weight.data, w)
    assert module.weight.grad is None
    assert module.forward_calls == 0
    assert x.dtype == np.float32


def test_float32_module_with_a_wrong_gradient_is_caught():
    with pytest.raises(tinynet.GradcheckError):
        tinynet.gradcheck(Scale(4, wrong_input_at=(0, 0), dtype=np.float32),
                          normal(0, (2, 4), dtype=np.float32))


def test_real_module_with_existing_gradients_is_not_modified():
    tinynet.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    x = normal(0, (1, 2, 5, 5), dtype=np.float32)
    y = conv(x)
    conv.backward(np.ones_like(y))
    grad = conv.weight.grad.copy()
    assert tinynet.gradcheck(conv, x) is True
    np.testing.assert_array_equal(conv.weight.grad, grad)
    assert conv.weight.data.dtype == np.float32


def test_functional_pair_with_labels_and_extra_arguments():
    z, labels = normal(0, (4, 3)), np.array([2, 0, 1, 1])
    pair = (F.cross_entropy_forward, lambda g, c: (F.cross_entropy_backward(c, g), None))
    assert tinynet.gradcheck(pair, (z, labels)) is True
    x, w, b = normal(1, (2, 2, 6, 5)), normal(2, (3, 2, 3, 2)), normal(3, (3,))
    assert tinynet.gradcheck((F.conv2d_forward, F.conv2d_backward), (x, w, b, (2, 1), 1)) is True
    assert tinynet.gradcheck((F.maxpool2d_forward, F.maxpool2d_backward),
                             (tie_free(0, (1, 2, 5, 5)), 3, 2, 1)) is True


@pytest.mark.parametrize("bad_pair, inputs", [
    # ReLU that forgets the mask
    ((F.relu_forward, lambda g, c: g), (kink_free(0, (3, 4)),)),
    # linear backward that returns dw transposed-ish (wrong scale)
    ((F.linear_forward, lambda g, c: tuple(2 * a if a is not None else None
                                           for a in F.linear_backward(g, c))),
     (normal(0, (3, 4)), normal(1, (2, 4)), normal(2, (2,)))),
    # cross-entropy without the 1/N
    ((F.cross_entropy_forward, lambda g, c: (F.cross_entropy_backward(c, g) * 4, None)),
     (normal(0, (4, 3)), np.array([0, 1, 2, 0]))),
])
def test_catches_broken_functional_pairs(bad_pair, inputs):
    with pytest.raises(tinynet.GradcheckError):
        tinynet.gradcheck(bad_pair, inputs)


def test_wrong_gradient_only_in_the_second_input_names_it():
    def fwd(a, b):
        return a * b, (a, b)

    def bwd(g, cache):
        a, b = cache
        return g * b, g * a * 1.01  # the second is off by 1 %

    a, b = normal(0, (3, 2)) + 3, normal(1, (3, 2)) + 3
    with pytest.raises(tinynet.GradcheckError) as e:
        tinynet.gradcheck((fwd, bwd), (a, b))
    msg = str(e.value)
    assert re.search(r"input\s*1", msg) and not re.search(r"input\s*0", msg), msg


def test_missing_gradient_for_a_float_input_is_an_error():
    with pytest.raises(tinynet.GradcheckError):
        tinynet.gradcheck((lambda a, b: (a * b, (a, b)), lambda g, c: (g * c[1], None)),
                          (normal(0, (2, 2)), normal(1, (2, 2))))


def test_wrong_gradient_shape_is_an_error():
    with pytest.raises(tinynet.GradcheckError):
        tinynet.gradcheck((lambda a: (a.sum(axis=1), a), lambda g, a: np.ones(a.shape[0])),
                          (normal(0, (3, 4)),))


@pytest.mark.parametrize("where", ["both", "analytic", "numeric"])
def test_nan_or_inf_never_passes(where):
    """NaN compares False with everything, so a check of 'error > tolerance' alone lets an
    all-NaN backward (or forward) pass: it must fail, naming the entry."""
    nan = float("nan")
    forward_scale = nan if where in ("both", "numeric") else 1.0
    backward_scale = nan if where in ("both", "analytic") else 1.0
    pair = (lambda x: (x * forward_scale, None), lambda g, c: g * backward_scale)
    with pytest.raises(tinynet.GradcheckError, match="not a finite number at index"):
        tinynet.gradcheck(pair, np.ones(3))


def test_n_samples_checks_fewer_entries():
    module = Scale(50, dtype=np.float64)
    x = normal(0, (4, 50))  # 200 input entries, 50 weights
    assert tinynet.gradcheck(module, x, n_samples=3) is True
    # count the forward passes on the copy gradcheck makes: patch the class
    calls = []
    original = Scale.forward

    def counting(self, x):
        calls.append(1)
        return original(self, x)

    Scale.forward = counting
    try:
        tinynet.gradcheck(module, x, n_samples=3)
        few = len(calls)
        calls.clear()
        tinynet.gradcheck(module, x)
        everything = len(calls)
    finally:
        Scale.forward = original
    assert few <= 1 + 2 * (3 + 3) + 2  # one forward, two per sampled entry of x and of weight
    assert everything >= 2 * (200 + 50)


def test_n_samples_larger_than_the_tensor_is_fine():
    assert tinynet.gradcheck(Scale(3, dtype=np.float64), normal(0, (2, 3)), n_samples=1000)


def _finds_wrong_entry(x, **kw):
    try:
        tinynet.gradcheck(Scale(50, wrong_input_at=(1, 7), dtype=np.float64), x,
                          check_params=False, **kw)
    except tinynet.GradcheckError:
        return True
    return False


def test_sampled_entries_depend_on_the_seed():
    """One wrong entry among 200, n_samples=40: each seed finds it with chance 20 %."""
    x = normal(0, (4, 50))
    found = [_finds_wrong_entry(x, n_samples=40, seed=seed) for seed in range(30)]
    # all 30 missing (chance 0.1 %) or all hitting (~0) would mean seed or n_samples is ignored
    assert any(found) and not all(found), found
    # the same seed gives the same verdict
    for seed in range(5):
        assert _finds_wrong_entry(x, n_samples=40, seed=seed) == found[seed]
    assert _finds_wrong_entry(x)  # checking everything always finds it


def test_module_with_two_inputs_returns_a_tuple():
    class Mul(nn.Module):
        def __init__(self, wrong=False):
            super().__init__()
            self.wrong = wrong

        def forward(self, a, b):
            self.save_for_backward((a, b))
            return a * b

        def backward(self, g):
            a, b = self.saved()
            return g * b, g * a * (1.5 if self.wrong else 1.0)

    a, b = normal(0, (2, 3)), normal(1, (2, 3))
    assert tinynet.gradcheck(Mul(), (a, b)) is True
    with pytest.raises(tinynet.GradcheckError) as e:
        tinynet.gradcheck(Mul(wrong=True), (a, b))
    assert re.search(r"input\s*1", str(e.value)), str(e.value)


def test_loss_module_with_integer_labels():
    assert tinynet.gradcheck(nn.CrossEntropyLoss(), (normal(0, (5, 4)), np.array([0, 3, 1, 1, 2])))


def test_default_tolerances_are_as_documented():
    """eps=1e-6, atol=1e-5, rtol=1e-3: an error of 1e-4 relative passes, 1e-2 relative fails."""
    def make(rel):
        return (lambda a: (a * 3.0, None), lambda g, c: g * 3.0 * (1 + rel))

    x = normal(0, (3, 3)) + 5
    assert tinynet.gradcheck(make(1e-4), (x,)) is True
    with pytest.raises(tinynet.GradcheckError):
        tinynet.gradcheck(make(1e-2), (x,))
    assert tinynet.gradcheck(make(1e-2), (x,), rtol=0.05) is True


def test_backward_that_ignores_the_upstream_gradient_is_caught():
    """With an upstream gradient of ones this bug would pass; gradcheck draws a random one."""
    fwd = lambda a: (a * 2.0, None)  # noqa: E731
    assert tinynet.gradcheck((fwd, lambda g, c: g * 2.0), (normal(0, (3, 4)),)) is True
    with pytest.raises(tinynet.GradcheckError):
        tinynet.gradcheck((fwd, lambda g, c: np.full(g.shape, 2.0)), (normal(0, (3, 4)),))


def test_inputs_are_left_as_they_were():
    x64, x32 = normal(0, (2, 3)), normal(1, (2, 3), dtype=np.float32)
    copies = x64.copy(), x32.copy()
    tinynet.gradcheck(Scale(3, dtype=np.float64), x64)
    tinynet.gradcheck((lambda a, b: (a * b, (a, b)), lambda g, c: (g * c[1], g * c[0])),
                      (x64, x32))
    np.testing.assert_array_equal(x64, copies[0])
    np.testing.assert_array_equal(x32, copies[1])
    assert x32.dtype == np.float32
