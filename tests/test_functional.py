"""tinynet.functional: every forward against a plain-loop reference written here, every backward
against central finite differences computed here (not with tinynet.gradcheck), for drawn
configurations; and each forward/backward pair through tinynet.gradcheck's functional form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    assert_grad_close,
    conv_configs,
    flatten_cases,
    kink_free,
    labels_for,
    linear_configs,
    loss_configs,
    normal,
    numeric_grad,
    pool_configs,
    seeds,
    tie_free,
)

import tinynet
import tinynet.functional as F


# ----------------------------------------------------------------------------------------------
# Plain-loop references (slow and obvious)
# ----------------------------------------------------------------------------------------------
def conv2d_loops(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # (n, c, kh, kw)
            y[:, :, i, j] = np.einsum("ncuv,fcuv->nf", window, w)
    if b is not None:
        y += b[None, :, None, None]
    return y


def maxpool2d_loops(x, kernel, stride, padding):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            y[:, :, i, j] = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].max(axis=(2, 3))
    return y


def cross_entropy_reference(z, labels):
    z = z.astype(np.float64)
    lse = np.logaddexp.reduce(z, axis=1)
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


# ----------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------
@given(cfg=conv_configs(), seed=seeds)
def test_conv2d_forward_matches_loops(cfg, seed):
    x, w = normal(seed, cfg.x_shape), normal(seed + 1, cfg.w_shape)
    b = normal(seed + 2, (cfg.c_out,)) if cfg.bias else None
    y, _ = F.conv2d_forward(x, w, b, cfg.stride_arg, cfg.padding_arg)
    assert y.shape == cfg.y_shape
    np.testing.assert_allclose(y, conv2d_loops(x, w, b, cfg.stride, cfg.padding),
                               rtol=1e-10, atol=1e-10)


@given(cfg=conv_configs(), seed=seeds)
def test_conv2d_backward_matches_finite_differences(cfg, seed):
    x, w = normal(seed, cfg.x_shape), normal(seed + 1, cfg.w_shape)
    b = normal(seed + 2, (cfg.c_out,)) if cfg.bias else None
    y, cache = F.conv2d_forward(x, w, b, cfg.stride_arg, cfg.padding_arg)
    dy = normal(seed + 3, y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert (db is None) == (b is None)

    def loss():
        return (F.conv2d_forward(x, w, b, cfg.stride_arg, cfg.padding_arg)[0] * dy).sum()

    assert_grad_close(dx, numeric_grad(loss, x), "dx")
    assert_grad_close(dw, numeric_grad(loss, w), "dw")
    if b is not None:
        assert db.shape == b.shape
        assert_grad_close(db, numeric_grad(loss, b), "db")


def test_conv2d_int_and_pair_arguments_agree():
    x, w, b = normal(0, (2, 2, 7, 6)), normal(1, (3, 2, 3, 3)), normal(2, (3,))
    y_int, _ = F.conv2d_forward(x, w, b, stride=2, padding=1)
    y_pair, _ = F.conv2d_forward(x, w, b, stride=(2, 2), padding=(1, 1))
    np.testing.assert_array_equal(y_int, y_pair)
    y_def, _ = F.conv2d_forward(x, w, b)  # stride 1, no padding by default
    np.testing.assert_allclose(y_def, conv2d_loops(x, w, b, (1, 1), (0, 0)), rtol=1e-12, atol=1e-12)


def test_conv2d_does_not_modify_its_inputs():
    x, w, b = normal(0, (2, 2, 6, 5)), normal(1, (3, 2, 3, 2)), normal(2, (3,))
    copies = [a.copy() for a in (x, w, b)]
    y, cache = F.conv2d_forward(x, w, b, stride=(1, 2), padding=(2, 1))
    dy = normal(3, y.shape)
    dy_copy = dy.copy()
    F.conv2d_backward(dy, cache)
    for a, c in zip((x, w, b), copies, strict=True):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dy, dy_copy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_keeps_the_dtype(dtype):
    x, w, b = (normal(i, s, dtype=dtype) for i, s in enumerate([(2, 3, 8, 7), (4, 3, 3, 2), (4,)]))
    y, cache = F.conv2d_forward(x, w, b, stride=1, padding=1)
    dx, dw, db = F.conv2d_backward(np.ones_like(y), cache)
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(dtype)}


# ----------------------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------------------
@given(cfg=linear_configs(), seed=seeds)
def test_linear_forward_and_backward(cfg, seed):
    x, w = normal(seed, cfg.x_shape), normal(seed + 1, cfg.w_shape)
    b = normal(seed + 2, (cfg.out_features,)) if cfg.bias else None
    y, cache = F.linear_forward(x, w, b)
    expected = x @ w.T + (b if b is not None else 0)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    dy = normal(seed + 3, y.shape)
    dx, dw, db = F.linear_backward(dy, cache)
    assert (db is None) == (b is None)

    def loss():
        return (F.linear_forward(x, w, b)[0] * dy).sum()

    assert_grad_close(dx, numeric_grad(loss, x), "dx")
    assert_grad_close(dw, numeric_grad(loss, w), "dw")
    if b is not None:
        assert_grad_close(db, numeric_grad(loss, b), "db")


def test_linear_forward_does_not_modify_the_bias():
    x, w, b = normal(0, (3, 4)), normal(1, (2, 4)), normal(2, (2,))
    b_copy = b.copy()
    F.linear_forward(x, w, b)
    F.linear_forward(x, w, b)
    np.testing.assert_array_equal(b, b_copy)


# ----------------------------------------------------------------------------------------------
# relu
# ----------------------------------------------------------------------------------------------
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple), seed=seeds)
def test_relu_forward_and_backward(shape, seed):
    x = kink_free(seed, shape)
    x_copy = x.copy()
    y, cache = F.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(x, x_copy)  # forward does not clip its input in place
    dy = normal(seed + 1, shape)
    dx = F.relu_backward(dy, cache)
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))
    assert_grad_close(dx, numeric_grad(lambda: (F.relu_forward(x)[0] * dy).sum(), x), "dx")


# ----------------------------------------------------------------------------------------------
# maxpool2d
# ----------------------------------------------------------------------------------------------
@given(cfg=pool_configs(), seed=seeds)
def test_maxpool2d_forward_matches_loops(cfg, seed):
    x = normal(seed, cfg.x_shape)
    y, _ = F.maxpool2d_forward(x, cfg.kernel_arg, cfg.stride_arg, cfg.padding_arg)
    assert y.shape == cfg.y_shape
    np.testing.assert_array_equal(
        y, maxpool2d_loops(x, cfg.kernel, cfg.effective_stride, cfg.padding))


@given(cfg=pool_configs(), seed=seeds)
def test_maxpool2d_backward_matches_finite_differences(cfg, seed):
    x = tie_free(seed, cfg.x_shape)
    y, cache = F.maxpool2d_forward(x, cfg.kernel_arg, cfg.stride_arg, cfg.padding_arg)
    dy = normal(seed + 1, y.shape)
    dx = F.maxpool2d_backward(dy, cache)
    assert dx.shape == x.shape

    def loss():
        return (F.maxpool2d_forward(x, cfg.kernel_arg, cfg.stride_arg, cfg.padding_arg)[0]
                * dy).sum()

    assert_grad_close(dx, numeric_grad(loss, x), "dx")
    # the total gradient is conserved: every output sends its gradient to exactly one input
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-10, atol=1e-10)


def test_maxpool2d_stride_defaults_to_kernel():
    x = normal(0, (2, 3, 9, 7))
    y_default, _ = F.maxpool2d_forward(x, (3, 2))
    y_explicit, _ = F.maxpool2d_forward(x, (3, 2), (3, 2))
    assert y_default.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(y_default, y_explicit)


# ----------------------------------------------------------------------------------------------
# flatten
# ----------------------------------------------------------------------------------------------
@given(case=flatten_cases(), seed=seeds)
def test_flatten_forward_and_backward(case, seed):
    shape, start, end = case
    x = normal(seed, shape)
    y, cache = F.flatten_forward(x, start, end)
    s, e = start % len(shape), end % len(shape)
    expected_shape = shape[:s] + (int(np.prod(shape[s:e + 1])),) + shape[e + 1:]
    assert y.shape == expected_shape
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))  # the same numbers, same order
    dy = normal(seed + 1, y.shape)
    dx = F.flatten_backward(dy, cache)
    assert dx.shape == shape
    np.testing.assert_array_equal(dx.reshape(-1), dy.reshape(-1))


def test_flatten_defaults_merge_everything_but_the_batch():
    x = normal(0, (4, 3, 2, 5))
    y, _ = F.flatten_forward(x)
    assert y.shape == (4, 30)


# ----------------------------------------------------------------------------------------------
# cross entropy
# ----------------------------------------------------------------------------------------------
@given(cfg=loss_configs(), seed=seeds)
def test_cross_entropy_forward_and_backward(cfg, seed):
    z = normal(seed, cfg.logits_shape, cfg.scale)
    labels = labels_for(seed + 1, cfg.n, cfg.classes, cfg.label_dtype)
    loss, cache = F.cross_entropy_forward(z, labels)
    assert np.shape(loss) == ()
    np.testing.assert_allclose(float(loss), cross_entropy_reference(z, labels),
                               rtol=1e-12, atol=1e-12)
    dz = F.cross_entropy_backward(cache)
    assert dz.shape == z.shape
    numeric = numeric_grad(lambda: F.cross_entropy_forward(z, labels)[0], z)
    assert_grad_close(dz, numeric, "dlogits")
    # the upstream gradient scales it
    np.testing.assert_allclose(F.cross_entropy_backward(cache, 2.5), 2.5 * dz, rtol=1e-12,
                               atol=1e-15)
    # each row of (softmax - one_hot) sums to 0
    np.testing.assert_allclose(dz.sum(axis=1), 0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# every pair through tinynet.gradcheck's functional form
# ----------------------------------------------------------------------------------------------
@settings(max_examples=10)
@given(cfg=conv_configs(), seed=seeds)
def test_gradcheck_conv2d_pair(cfg, seed):
    x, w = normal(seed, cfg.x_shape), normal(seed + 1, cfg.w_shape)
    b = normal(seed + 2, (cfg.c_out,)) if cfg.bias else None
    assert tinynet.gradcheck((F.conv2d_forward, F.conv2d_backward),
                             (x, w, b, cfg.stride_arg, cfg.padding_arg)) is True


@settings(max_examples=10)
@given(cfg=linear_configs(), seed=seeds)
def test_gradcheck_linear_pair(cfg, seed):
    x, w = normal(seed, cfg.x_shape), normal(seed + 1, cfg.w_shape)
    b = normal(seed + 2, (cfg.out_features,)) if cfg.bias else None
    assert tinynet.gradcheck((F.linear_forward, F.linear_backward), (x, w, b)) is True


@settings(max_examples=10)
@given(cfg=pool_configs(), seed=seeds)
def test_gradcheck_maxpool2d_and_relu_pairs(cfg, seed):
    x = tie_free(seed, cfg.x_shape)
    assert tinynet.gradcheck((F.maxpool2d_forward, F.maxpool2d_backward),
                             (x, cfg.kernel_arg, cfg.stride_arg, cfg.padding_arg)) is True
    assert tinynet.gradcheck((F.relu_forward, F.relu_backward), (kink_free(seed, cfg.x_shape),))


@settings(max_examples=10)
@given(case=flatten_cases(), seed=seeds)
def test_gradcheck_flatten_pair(case, seed):
    shape, start, end = case
    assert tinynet.gradcheck((F.flatten_forward, F.flatten_backward),
                             (normal(seed, shape), start, end))


@settings(max_examples=10)
@given(cfg=loss_configs(), seed=seeds)
def test_gradcheck_cross_entropy_pair(cfg, seed):
    z = normal(seed, cfg.logits_shape, cfg.scale)
    labels = labels_for(seed + 1, cfg.n, cfg.classes, cfg.label_dtype)
    pair = (F.cross_entropy_forward, lambda g, cache: (F.cross_entropy_backward(cache, g), None))
    assert tinynet.gradcheck(pair, (z, labels)) is True


# ----------------------------------------------------------------------------------------------
# Any memory layout: non-contiguous, Fortran-ordered, reversed and read-only inputs
# ----------------------------------------------------------------------------------------------
def _layouts(x):
    """The same values as ``x`` in other memory layouts."""
    big = np.zeros(tuple(2 * d for d in x.shape))
    strided = big[tuple(slice(None, None, 2) for _ in x.shape)]
    strided[...] = x
    reversed_ = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    readonly = x.copy()
    readonly.flags.writeable = False
    return {"fortran": np.asfortranarray(x), "strided": strided, "reversed": reversed_,
            "readonly": readonly}


@settings(max_examples=10)
@given(cfg=conv_configs(), seed=seeds)
def test_conv2d_any_input_layout(cfg, seed):
    x, w = normal(seed, cfg.x_shape), normal(seed + 1, cfg.w_shape)
    b = normal(seed + 2, (cfg.c_out,)) if cfg.bias else None
    y, cache = F.conv2d_forward(x, w, b, cfg.stride_arg, cfg.padding_arg)
    y = y.copy()
    dy = normal(seed + 3, y.shape)
    dx, dw, _ = (a.copy() if a is not None else None for a in F.conv2d_backward(dy, cache))
    for name, xl in _layouts(x).items():
        for wname, wl in (("w contiguous", w), ("w " + name, _layouts(w)[name])):
            y2, cache2 = F.conv2d_forward(xl, wl, b, cfg.stride_arg, cfg.padding_arg)
            np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12, err_msg=f"{name}, {wname}")
            dx2, dw2, _ = F.conv2d_backward(_layouts(dy)[name], cache2)
            np.testing.assert_allclose(dx2, dx, rtol=1e-12, atol=1e-12, err_msg=f"{name}, {wname}")
            np.testing.assert_allclose(dw2, dw, rtol=1e-12, atol=1e-12, err_msg=f"{name}, {wname}")


@settings(max_examples=10)
@given(cfg=pool_configs(), seed=seeds)
def test_maxpool2d_and_relu_any_input_layout(cfg, seed):
    x = tie_free(seed, cfg.x_shape)
    y, cache = F.maxpool2d_forward(x, cfg.kernel_arg, cfg.stride_arg, cfg.padding_arg)
    y = y.copy()
    dy = normal(seed + 1, y.shape)
    dx = F.maxpool2d_backward(dy, cache).copy()
    r, mask = F.relu_forward(x)
    r = r.copy()
    rdx = F.relu_backward(normal(seed + 2, x.shape), mask).copy()
    for name, xl in _layouts(x).items():
        y2, cache2 = F.maxpool2d_forward(xl, cfg.kernel_arg, cfg.stride_arg, cfg.padding_arg)
        np.testing.assert_array_equal(y2, y, err_msg=name)
        np.testing.assert_array_equal(F.maxpool2d_backward(_layouts(dy)[name], cache2), dx,
                                      err_msg=name)
        r2, mask2 = F.relu_forward(xl)
        np.testing.assert_array_equal(r2, r, err_msg=name)
        np.testing.assert_array_equal(
            F.relu_backward(_layouts(normal(seed + 2, x.shape))[name], mask2), rdx, err_msg=name)


def test_linear_flatten_and_loss_any_input_layout():
    x, w, b = normal(0, (4, 6)), normal(1, (3, 6)), normal(2, (3,))
    y, cache = F.linear_forward(x, w, b)
    y = y.copy()
    dx, dw, db = (a.copy() for a in F.linear_backward(np.ones((4, 3)), cache))
    labels = np.array([0, 2, 1, 2])
    loss, lcache = F.cross_entropy_forward(x[:, :3].copy(), labels)
    dz = F.cross_entropy_backward(lcache).copy()
    x4 = normal(3, (2, 3, 2, 2))
    flat, fcache = F.flatten_forward(x4)
    flat = flat.copy()
    for name, xl in _layouts(x).items():
        y2, cache2 = F.linear_forward(xl, _layouts(w)[name], b)
        np.testing.assert_allclose(y2, y, rtol=1e-12, err_msg=name)
        grads = F.linear_backward(_layouts(np.ones((4, 3)))[name], cache2)
        for a, e in zip(grads, (dx, dw, db), strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-12, err_msg=name)
        z = _layouts(x[:, :3].copy())[name]
        loss2, lcache2 = F.cross_entropy_forward(z, labels)
        np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(F.cross_entropy_backward(lcache2), dz, rtol=1e-12,
                                   err_msg=name)
        np.testing.assert_array_equal(F.flatten_forward(_layouts(x4)[name])[0], flat,
                                      err_msg=name)
