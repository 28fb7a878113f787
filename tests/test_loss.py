"""CrossEntropyLoss: value, gradient, the upstream scalar, stability, label dtypes, call order."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import labels_for, loss_configs, normal, numeric_grad, seeds

import tinynet
import tinynet.nn as nn


def reference(z, labels):
    z = np.asarray(z, dtype=np.float64)
    lse = np.logaddexp.reduce(z, axis=1)
    loss = float(np.mean(lse - z[np.arange(len(labels)), labels]))
    p = np.exp(z - lse[:, None])
    p[np.arange(len(labels)), labels] -= 1
    return loss, p / len(labels)


@given(cfg=loss_configs(), seed=seeds)
def test_value_and_gradient(cfg, seed):
    z = normal(seed, cfg.logits_shape, cfg.scale)
    labels = labels_for(seed + 1, cfg.n, cfg.classes, cfg.label_dtype)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(z, labels)
    assert np.ndim(loss) == 0 and hasattr(loss, "dtype")
    want_loss, want_grad = reference(z, labels)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12, atol=1e-13)
    dz = loss_fn.backward()
    assert dz.shape == z.shape
    np.testing.assert_allclose(dz, want_grad, rtol=1e-10, atol=1e-13)
    numeric = numeric_grad(lambda: nn.CrossEntropyLoss()(z, labels), z)
    np.testing.assert_allclose(dz, numeric, rtol=1e-5, atol=1e-8)


@given(seed=seeds, g=st.floats(-5, 5, allow_nan=False))
def test_upstream_gradient_scales(seed, g):
    z = normal(seed, (4, 3))
    labels = labels_for(seed, 4, 3)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(z, labels)
    base = loss_fn.backward()
    loss_fn(z, labels)
    np.testing.assert_allclose(loss_fn.backward(g), g * base, rtol=1e-12, atol=1e-15)
    loss_fn(z, labels)
    np.testing.assert_allclose(loss_fn.backward(np.asarray(g)), g * base, rtol=1e-12, atol=1e-15)


def test_mean_over_the_batch():
    z = normal(0, (3, 5))
    labels = np.array([0, 4, 2])
    one = nn.CrossEntropyLoss()(z, labels)
    twice = nn.CrossEntropyLoss()(np.concatenate([z, z]), np.concatenate([labels, labels]))
    np.testing.assert_allclose(float(twice), float(one), rtol=1e-12)
    per_sample = [float(nn.CrossEntropyLoss()(z[i:i + 1], labels[i:i + 1])) for i in range(3)]
    np.testing.assert_allclose(float(one), np.mean(per_sample), rtol=1e-12)


def test_shift_invariance():
    """Adding a constant to every logit of a sample changes neither the loss nor the gradient."""
    z = normal(1, (4, 6))
    labels = np.array([5, 0, 3, 3])
    shift = np.array([[1000.0], [-700.0], [3.0], [0.0]])
    a, b = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    np.testing.assert_allclose(float(a(z + shift, labels)), float(b(z, labels)), rtol=1e-9)
    np.testing.assert_allclose(a.backward(), b.backward(), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", [1e4, 1e5, 3e4])
def test_huge_logits_give_finite_loss_and_gradient(dtype, magnitude):
    z = np.array([[magnitude, 0.0, -magnitude], [0.0, magnitude, 0.0], [-magnitude, magnitude, 0]],
                 dtype=dtype)
    labels = np.array([0, 0, 2])
    loss_fn = nn.CrossEntropyLoss()
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # no overflow, no log(0)
        loss = loss_fn(z, labels)
        dz = loss_fn.backward()
    assert np.isfinite(float(loss)) and np.all(np.isfinite(dz))
    # sample 0 is right with certainty (0), samples 1 and 2 are off by `magnitude`
    np.testing.assert_allclose(float(loss), 2 * magnitude / 3, rtol=1e-6)
    expected = np.array([[0, 0, 0], [-1, 1, 0], [0, 1, -1]]) / 3
    np.testing.assert_allclose(dz, expected, atol=1e-6)


@pytest.mark.parametrize("label_dtype", ["int8", "int16", "int32", "int64", "uint8", "uint64"])
def test_any_integer_label_dtype(label_dtype):
    z = normal(0, (3, 4))
    labels = np.array([3, 0, 1], dtype=label_dtype)
    np.testing.assert_allclose(float(nn.CrossEntropyLoss()(z, labels)),
                               reference(z, labels.astype(np.int64))[0], rtol=1e-12)


def test_single_class_and_single_sample():
    loss_fn = nn.CrossEntropyLoss()
    assert float(loss_fn(np.array([[3.7]]), np.array([0]))) == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_allclose(loss_fn.backward(), [[0.0]], atol=1e-15)


def test_loss_does_not_modify_logits():
    z = normal(0, (3, 4))
    z_copy = z.copy()
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(z, np.array([0, 1, 2]))
    loss_fn.backward()
    np.testing.assert_array_equal(z, z_copy)


def test_backward_twice_or_before_forward_is_an_error():
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError):
        loss_fn.backward()
    loss_fn(normal(0, (2, 3)), np.array([0, 2]))
    loss_fn.backward()
    with pytest.raises(RuntimeError):
        loss_fn.backward()


def test_no_grad_loss_keeps_no_cache():
    loss_fn = nn.CrossEntropyLoss()
    z, labels = normal(0, (2, 3)), np.array([0, 2])
    with tinynet.no_grad():
        loss = loss_fn(z, labels)
    assert float(loss) == pytest.approx(reference(z, labels)[0], rel=1e-12)
    with pytest.raises(RuntimeError):
        loss_fn.backward()


def test_loss_grad_starts_backpropagation():
    """The README's training step: loss -> backward -> model.backward; gradients are finite."""
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    loss_fn = nn.CrossEntropyLoss()
    x = normal(0, (4, 3, 2, 2), dtype=np.float32)
    labels = np.array([0, 4, 1, 1])
    loss = loss_fn(model(x), labels)
    dx = model.backward(loss_fn.backward())
    assert dx.shape == x.shape
    assert math.isfinite(float(loss))
    for p in model.parameters():
        assert p.grad is not None and np.all(np.isfinite(p.grad))
