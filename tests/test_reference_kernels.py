"""The reference kernels (``tinynet/functional/``) against naive loops written from the formulas.

The reference is what a learner reads and what every other test trusts (the fast engine is
checked against it in test_fast_engine.py), so it is checked here against loops with no tricks at
all, on drawn shapes, strides and paddings, in float64 so that the comparison is tight.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import check_conv, check_maxpool, pool_input
from strategies import batchnorm_cases, conv_geometry, pool_geometry

import tinynet.functional as F


@settings(max_examples=60, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2**16))
def test_reference_conv2d_matches_naive_loops(geometry, seed):
    x_shape, w_shape, stride, padding, has_bias = geometry
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if has_bias else None
    _, cache, dy = check_conv(F.conv2d_forward, F.conv2d_backward, x, w, b, stride, padding, rng)
    dw = F.conv2d_backward(dy, cache)[1]
    dx_none, dw2, _ = F.conv2d_backward(dy, cache, input_grad=False)
    assert dx_none is None
    np.testing.assert_array_equal(dw2, dw)


@settings(max_examples=60, deadline=None)
@given(geometry=pool_geometry(), seed=st.integers(0, 2**16), ties=st.booleans())
def test_reference_maxpool2d_matches_naive_loops(geometry, seed, ties):
    x_shape, kernel, stride, padding = geometry
    x, rng = pool_input(x_shape, seed, ties)
    check_maxpool(F.maxpool2d_forward, F.maxpool2d_backward, x, kernel, stride, padding, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_relu_and_linear_match_their_formulas(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5)).astype(dtype)
    x[0, :3] = [np.nan, -0.0, 0.0]
    y, mask = F.relu_forward(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(F.relu_backward(dy, mask), np.where(x > 0, dy, 0))
    x = x[1:]
    w, b = rng.standard_normal((3, 5)).astype(dtype), rng.standard_normal(3).astype(dtype)
    y, cache = F.linear_forward(x, w, b)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = F.linear_backward(g, cache)
    np.testing.assert_allclose(dx, g @ w, rtol=1e-5)
    np.testing.assert_allclose(dw, g.T @ x, rtol=1e-5)
    np.testing.assert_allclose(db, g.sum(0), rtol=1e-5)
    assert F.linear_backward(g, cache, input_grad=False)[0] is None


@settings(max_examples=30, deadline=None)
@given(case=batchnorm_cases(), seed=st.integers(0, 2**16))
def test_reference_batchnorm_matches_the_textbook_per_channel_loop(case, seed):
    """Each channel normalised on its own, written as a loop over channels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape)
    if case.constant_channel is not None:  # a variance of 0: eps keeps it finite
        x[:, case.constant_channel] = 0.5
    C = x.shape[1]
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    y, cache = F.batchnorm_forward(x, gamma, beta, rm, rv, training=True, momentum=0.1)
    dy = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = F.batchnorm_backward(dy, cache)
    m = x.size // C
    for c in range(C):
        xc, g = x[:, c], dy[:, c]
        mean, var = xc.mean(), xc.var()
        xhat = (xc - mean) / np.sqrt(var + 1e-5)
        np.testing.assert_allclose(y[:, c], gamma[c] * xhat + beta[c], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(rm[c], 0.1 * mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(rv[c], 0.9 + 0.1 * var * m / (m - 1), rtol=1e-9)
        np.testing.assert_allclose(dbeta[c], g.sum(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(dgamma[c], (g * xhat).sum(), rtol=1e-9, atol=1e-9)
        dxhat = g * gamma[c]
        ndx = (dxhat - dxhat.mean() - xhat * (dxhat * xhat).mean()) / np.sqrt(var + 1e-5)
        np.testing.assert_allclose(dx[:, c], ndx, rtol=1e-7, atol=1e-9)


def test_no_reference_kernel_imports_the_fast_engine_or_another_kernel():
    """The reference files stand alone: only the backend, the shared geometry and _utils."""
    import ast
    import pathlib

    folder = pathlib.Path(F.__file__).parent
    for path in folder.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                name = "." * node.level + node.module
                assert "fast" not in name and "threads" not in name, (path.name, name)
                if node.level == 1:  # a sibling in functional/
                    assert node.module == "_geometry", (path.name, name)
