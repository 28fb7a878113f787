"""Naive loops written straight from each operation's formula (slow, no tricks): the third source
of truth, shared by tests/test_reference_kernels.py and tests/test_fast_engine.py."""

from __future__ import annotations

import numpy as np


def naive_conv2d(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    Fo, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, Fo, ho, wo))
    for n in range(N):
        for f in range(Fo):
            for i in range(ho):
                for j in range(wo):
                    window = xp[n, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    y[n, f, i, j] = (w[f] * window).sum()
            if b is not None:
                y[n, f] += b[f]
    return y


def naive_conv2d_backward(dy, x, w, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    Fo, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for n in range(N):
        for f in range(Fo):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    win = (n, slice(None), slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))
                    dw[f] += dy[n, f, i, j] * xp[win]
                    dxp[win] += dy[n, f, i, j] * w[f]
    return dxp[:, :, ph : ph + H, pw : pw + W], dw, dy.sum(axis=(0, 2, 3))


def naive_maxpool(x, kernel, stride, padding):
    """y and the backward routing, first maximum in row-major window order on ties."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    ho, wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, C, ho, wo))
    where = np.zeros((N, C, ho, wo, 2), dtype=int)
    for n in range(N):
        for c in range(C):
            for i in range(ho):
                for j in range(wo):
                    best = None
                    for u in range(kh):
                        for v in range(kw):
                            val = xp[n, c, i * sh + u, j * sw + v]
                            if best is None or val > best:
                                best, at = val, (i * sh + u - ph, j * sw + v - pw)
                    y[n, c, i, j], where[n, c, i, j] = best, at
    return y, where


def naive_maxpool_backward(dy, where, x_shape):
    dx = np.zeros(x_shape)
    N, C, ho, wo = dy.shape
    for n in range(N):
        for c in range(C):
            for i in range(ho):
                for j in range(wo):
                    h, w = where[n, c, i, j]
                    dx[n, c, h, w] += dy[n, c, i, j]
    return dx


def pool_input(x_shape, seed, ties):
    """A drawn max-pool input: ties=True draws few distinct values, so windows often hold several
    maxima (the first must win). Returns (x, its generator)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, x_shape).astype(np.float64) if ties else rng.standard_normal(x_shape)
    return x, rng


def check_maxpool(forward, backward, x, kernel, stride, padding, rng):
    """``forward``/``backward`` (a max-pool pair) against the naive loop, forward and backward.
    Returns (y, cache, dy) for further checks."""
    y, cache = forward(x, kernel, stride, padding)
    ny, where = naive_maxpool(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, ny)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(backward(dy, cache), naive_maxpool_backward(dy, where, x.shape),
                               rtol=1e-12, atol=1e-12)
    return y, cache, dy


def check_conv(forward, backward, x, w, b, stride, padding, rng):
    """``forward``/``backward`` (a convolution pair) against the naive loops: y (float64,
    contiguous), dx, dw and db (None without bias). Returns (y, cache, dy)."""
    y, cache = forward(x, w, b, stride, padding)
    np.testing.assert_allclose(y, naive_conv2d(x, w, b, stride, padding), rtol=1e-10, atol=1e-10)
    assert y.dtype == np.float64 and y.flags.c_contiguous
    dy = rng.standard_normal(y.shape)
    dx, dw, db = backward(dy, cache)
    ndx, ndw, ndb = naive_conv2d_backward(dy, x, w, stride, padding)
    np.testing.assert_allclose(dx, ndx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, ndw, rtol=1e-10, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(db, ndb, rtol=1e-10, atol=1e-10)
    else:
        assert db is None
    return y, cache, dy
