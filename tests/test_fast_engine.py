"""The fast engine (``tinynet/fast/``): every fast kernel equals its reference kernel, and the naive
loops (tests/naive.py).

The fast kernels use tricks (flat-row im2col, convolution by rows, strided slices, recycled
buffers, threads, fused epilogues); a trick that breaks for some stride, padding, kernel,
non-square shape or block boundary shows up here. Shapes are drawn by hypothesis; float64 so
that the comparison is tight. Every test runs on 1 thread and on 3.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import (
    check_conv,
    check_maxpool,
    naive_conv2d,
    naive_conv2d_backward,
    naive_maxpool,
    naive_maxpool_backward,
    pool_input,
)
from strategies import batchnorm_cases, conv_geometry, pool_geometry

import tinynet
import tinynet.functional as R  # the reference kernels
import tinynet.functional.conv as reference_conv
from tinynet import kernels
from tinynet.fast import activation, batchnorm, conv, pooling, threads, winograd

# the fast kernels, under the reference's names
F = SimpleNamespace(
    conv2d_forward=conv.conv2d_forward, conv2d_backward=conv.conv2d_backward,
    maxpool2d_forward=pooling.maxpool2d_forward, maxpool2d_backward=pooling.maxpool2d_backward,
    relu_forward=activation.relu_forward, relu_backward=activation.relu_backward,
    batchnorm_forward=batchnorm.batchnorm_forward,
    batchnorm_backward=batchnorm.batchnorm_backward,
)


@pytest.fixture(autouse=True, scope="module", params=["1 thread", "3 threads"])
def threads_mode(request):
    """Every test here runs twice: on one thread, and split over 3 threads in blocks as small as
    one image (``tinynet.fast.threads``), so that block boundaries fall inside the small drawn
    shapes."""
    saved = tinynet.get_num_threads(), threads.MIN_BLOCK_NUMBERS
    if request.param == "3 threads":
        tinynet.set_num_threads(3)
        threads.MIN_BLOCK_NUMBERS = 1
    else:
        tinynet.set_num_threads(1)
    yield request.param
    tinynet.set_num_threads(saved[0])
    threads.MIN_BLOCK_NUMBERS = saved[1]


# -- tests ---------------------------------------------------------------------------------------
def _conv_inputs(geometry, seed):
    """Random float64 x, w and b (None without bias) for a drawn geometry, and the generator."""
    x_shape, w_shape, stride, padding, has_bias = geometry
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if has_bias else None
    return x, w, b, stride, padding, rng


@pytest.fixture(params=["im2col, dW per image", "im2col, dW one product", "by rows"])
def conv_method(request, monkeypatch):
    """The convolution's ways (chosen by its shapes): each is checked on every drawn geometry."""
    by_rows = request.param == "by rows"
    monkeypatch.setattr(conv, "_ROWS_MAX_WIDTH", 1 << 30 if by_rows else 0)
    monkeypatch.setattr(conv, "_FEW_ROWS", 1 << 30 if "per image" in request.param else 0)
    return request.param


@settings(max_examples=60, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2**16))
def test_conv2d_matches_naive_loops(geometry, seed, conv_method):
    x, w, b, stride, padding, rng = _conv_inputs(geometry, seed)
    check_conv(F.conv2d_forward, F.conv2d_backward, x, w, b, stride, padding, rng)


@settings(max_examples=40, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2**16))
def test_conv2d_with_relu_matches_naive_loops(geometry, seed, conv_method):
    """``relu=True`` (the ReLU as the convolution's last step): y = max(conv, 0), and backward
    takes dL/dy of that ReLU's output, so it must equal the naive conv's backward of dy * [y > 0].
    In training, in evaluation (sliced) and without dx."""
    x, w, b, stride, padding, rng = _conv_inputs(geometry, seed)
    z = naive_conv2d(x, w, b, stride, padding)
    y, cache = F.conv2d_forward(x, w, b, stride, padding, relu=True)
    np.testing.assert_allclose(y, np.maximum(z, 0), rtol=1e-10, atol=1e-10)
    assert (y >= 0).all()
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)
    ndx, ndw, ndb = naive_conv2d_backward(dy * (y > 0), x, w, stride, padding)
    np.testing.assert_allclose(dx, ndx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, ndw, rtol=1e-10, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(db, ndb, rtol=1e-10, atol=1e-10)
    y, cache = F.conv2d_forward(x, w, b, stride, padding, relu=True)
    assert F.conv2d_backward(dy, cache, input_grad=False)[0] is None
    old = conv._EVAL_COLS_ELEMENTS
    conv._EVAL_COLS_ELEMENTS = 1  # one image per slice
    try:
        with tinynet.no_grad():
            y_eval, cache_eval = F.conv2d_forward(x, w, b, stride, padding, relu=True)
    finally:
        conv._EVAL_COLS_ELEMENTS = old
    assert cache_eval is None
    np.testing.assert_allclose(y_eval, np.maximum(z, 0), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2**16), pool=st.tuples(
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
def test_conv2d_with_relu_and_pool_matches_naive_loops(geometry, seed, pool, conv_method):
    """``relu=True, pool=(kernel, stride)``: the max pooling of the ReLU'd convolution (its many
    zeros tie: the first maximum must win), and backward from dL/d(pooled output) equals the
    naive chain pool -> ReLU -> conv; in training and in evaluation (sliced)."""
    x, w, b, stride, padding, rng = _conv_inputs(geometry, seed)
    r = np.maximum(naive_conv2d(x, w, b, stride, padding), 0)
    kernel = (min(pool[0], r.shape[2]), min(pool[1], r.shape[3]))
    p_stride = pool[2:]
    ny, where = naive_maxpool(r, kernel, p_stride, (0, 0))
    y, cache = F.conv2d_forward(x, w, b, stride, padding, relu=True, pool=(kernel, p_stride))
    np.testing.assert_allclose(y, ny, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)
    dr = naive_maxpool_backward(dy, where, r.shape)
    ndx, ndw, ndb = naive_conv2d_backward(dr * (r > 0), x, w, stride, padding)
    np.testing.assert_allclose(dx, ndx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, ndw, rtol=1e-10, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(db, ndb, rtol=1e-10, atol=1e-10)
    old = conv._EVAL_COLS_ELEMENTS
    conv._EVAL_COLS_ELEMENTS = 1  # one image per slice, each pooled on its own
    try:
        with tinynet.no_grad():
            y_eval, _ = F.conv2d_forward(x, w, b, stride, padding, relu=True,
                                         pool=(kernel, p_stride))
    finally:
        conv._EVAL_COLS_ELEMENTS = old
    np.testing.assert_allclose(y_eval, ny, rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(geometry=pool_geometry(), seed=st.integers(0, 2**16), ties=st.booleans())
def test_fast_maxpool2d_matches_naive_loops_and_the_reference(geometry, seed, ties):
    x_shape, kernel, stride, padding = geometry
    x, rng = pool_input(x_shape, seed, ties)
    y, cache, dy = check_maxpool(F.maxpool2d_forward, F.maxpool2d_backward, x, kernel, stride,
                                 padding, rng)
    ry, rcache = R.maxpool2d_forward(x, kernel, stride, padding)  # and equal to the reference
    np.testing.assert_array_equal(cache.argmax, rcache.argmax)
    with tinynet.no_grad():  # evaluation takes another path (rows, then columns; no argmax)
        np.testing.assert_array_equal(F.maxpool2d_forward(x, kernel, stride, padding)[0], y)
    np.testing.assert_array_equal(F.maxpool2d_backward(dy, cache), R.maxpool2d_backward(dy, rcache))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_keeps_nan_and_its_zeros_stay_zero(dtype):
    """max(x, 0) takes its zeros from a recycled array (faster than the scalar 0): NaN still
    propagates as in np.maximum, -0.0 and 0 give 0, and the array of zeros is never written."""
    x = np.array([[np.nan, -0.0, 0.0, -1.5, 2.0, np.inf, -np.inf]] * 3, dtype=dtype)
    for _ in range(2):  # the second call gets the recycled zeros
        y, cache = F.relu_forward(x)
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        np.testing.assert_array_equal(y, R.relu_forward(x)[0])
        np.testing.assert_array_equal(cache.mask, x > 0)
        z = x.copy()
        activation.relu_in_place(z)
        np.testing.assert_array_equal(z, np.maximum(x, 0))
        assert not activation._zeros(np, x.shape, x.dtype).any()


def test_recycled_buffers_never_overwrite_live_results(conv_method):
    """Two forwards before any backward: the first output and cache must stay intact."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    x1, x2 = (rng.standard_normal((5, 2, 8, 8)).astype(np.float32) for _ in range(2))
    y1, c1 = F.conv2d_forward(x1, w)
    y1_copy, cache1 = y1.copy(), [a.copy() for a in c1 if hasattr(a, "shape")]
    y2, c2 = F.conv2d_forward(x2, w)
    np.testing.assert_array_equal(y1, y1_copy)
    for a, a_copy in zip([a for a in c1 if hasattr(a, "shape")], cache1, strict=True):
        np.testing.assert_array_equal(a, a_copy)  # the columns (or rows, band) and the weights
    r1, m1 = F.relu_forward(y1)
    r2, m2 = F.relu_forward(y2)
    assert not np.shares_memory(r1, r2) and not np.shares_memory(m1.mask, m2.mask)
    p1, pc1 = F.maxpool2d_forward(r1, 2)
    p2, pc2 = F.maxpool2d_forward(r2, 2)
    assert not np.shares_memory(p1, p2) and not np.shares_memory(pc1.argmax, pc2.argmax)
    dy = rng.standard_normal(y1.shape).astype(np.float32)
    g1 = F.conv2d_backward(dy, c1)
    g2 = F.conv2d_backward(dy, c2)
    assert not np.shares_memory(g1[0], g2[0])
    np.testing.assert_allclose(g1[1], naive_conv2d_backward(dy, x1, w, (1, 1), (0, 0))[1],
                               rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2**16))
def test_conv2d_without_input_grad_and_under_no_grad(geometry, seed, conv_method):
    """input_grad=False gives the same dW, db and no dx; no_grad (sliced batch) gives the same y."""
    x, w, b, stride, padding, rng = _conv_inputs(geometry, seed)
    has_bias = b is not None
    y, cache = F.conv2d_forward(x, w, b, stride, padding)
    dy = rng.standard_normal(y.shape)
    dx_full, dw_full, db_full = F.conv2d_backward(dy, cache)
    y, cache = F.conv2d_forward(x, w, b, stride, padding)
    dx, dw, db = F.conv2d_backward(dy, cache, input_grad=False)
    assert dx is None
    np.testing.assert_array_equal(dw, dw_full)
    if has_bias:
        np.testing.assert_array_equal(db, db_full)
    old = conv._EVAL_COLS_ELEMENTS
    conv._EVAL_COLS_ELEMENTS = 1  # one image per slice: the slicing path is exercised
    try:
        with tinynet.no_grad():
            y_eval, cache_eval = F.conv2d_forward(x, w, b, stride, padding)
    finally:
        conv._EVAL_COLS_ELEMENTS = old
    assert cache_eval is None
    np.testing.assert_allclose(y_eval, naive_conv2d(x, w, b, stride, padding), rtol=1e-10,
                               atol=1e-10)


def test_recycled_padded_input_of_another_padding_keeps_zero_borders():
    """Two convolutions whose padded inputs have the same shape (10x10 padded by 1, 12x12 by 0)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((2, 1, 3, 3))
    x_a, x_b = rng.standard_normal((2, 1, 10, 10)), rng.standard_normal((2, 1, 12, 12))
    for _ in range(2):  # the second round gets the recycled buffers
        y_b, _ = F.conv2d_forward(x_b, w, None, 1, 0)
        np.testing.assert_allclose(y_b, naive_conv2d(x_b, w, None, (1, 1), (0, 0)), atol=1e-10)
        y_a, _ = F.conv2d_forward(x_a, w, None, 1, 1)
        np.testing.assert_allclose(y_a, naive_conv2d(x_a, w, None, (1, 1), (1, 1)), atol=1e-10)


def test_recycled_same_rows_buffer_of_another_shape_keeps_zero_padding_rows():
    """Same rows: two batches whose flat padded inputs have one length (2 channels of 4 rows of 8
    padded to 6 rows, 1 channel of 10 rows padded to 12), their padding rows in other places."""
    rng = np.random.default_rng(6)
    w_a, w_b = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 1, 3, 3))
    x_a, x_b = rng.standard_normal((1, 2, 4, 8)), rng.standard_normal((1, 1, 10, 8))
    with tinynet.no_grad():  # (im2col at any width)
        for _ in range(2):
            y_b, _ = F.conv2d_forward(x_b, w_b, None, 1, 1)
            np.testing.assert_allclose(y_b, naive_conv2d(x_b, w_b, None, (1, 1), (1, 1)),
                                       atol=1e-10)
            y_a, _ = F.conv2d_forward(x_a, w_a, None, 1, 1)
            np.testing.assert_allclose(y_a, naive_conv2d(x_a, w_a, None, (1, 1), (1, 1)),
                                       atol=1e-10)


def test_same_convolutions_take_the_same_rows_layout():
    """Stride 1 with an output of the input's size: same rows (no junk columns); else not."""
    x = np.zeros((2, 3, 6, 7))
    same = conv.columns_for(x, (3, 5), (1, 1), (1, 2), (6, 7))
    assert same.same and same.per_image == 6 * 7 and same.cols.shape == (3 * 15, 2 * 6 * 7)
    flat = conv.columns_for(x, (3, 3), (1, 1), (0, 0), (4, 5))
    assert not flat.same and flat.per_image == 4 * 7
    assert not conv.columns_for(x, (3, 3), (2, 2), (1, 1), (3, 4)).same
    # images first: (N, C*kh*kw, L), one matrix per image; only with same rows
    by_image = conv.columns_for(x, (3, 5), (1, 1), (1, 2), (6, 7), images_first=True)
    assert by_image.images_first and by_image.cols.shape == (2, 3 * 15, 6 * 7)
    assert not conv.columns_for(x, (3, 3), (1, 1), (0, 0), (4, 5), images_first=True).images_first
    # training takes it for a first layer's few rows (C_in*kh*kw < 64), not for more
    cache = F.conv2d_forward(np.zeros((2, 1, 10, 10)), np.zeros((4, 1, 3, 3)), None, 1, 1)[1]
    assert isinstance(cache, conv.ConvCache) and cache.images_first


def test_product_buffers_whose_rows_are_a_multiple_of_2kb_are_spaced_wider():
    """conv._matrix: rows of 256 float64 (2 KB) or 1024 float32 (4 KB) get a wider pitch; a
    convolution whose columns have such rows (batch 4 of 8x8 by same rows: 256 columns) still
    equals the naive loops, trained by slices and with whole-batch columns."""
    assert conv._matrix(np, "test.m", 3, 256, np.float64).strides == (264 * 8, 8)
    assert conv._matrix(np, "test.m", 3, 1024, np.float32).strides == (1040 * 4, 4)
    assert conv._matrix(np, "test.m", 3, 255, np.float64).strides == (255 * 8, 8)
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((4, 8, 8, 8)), rng.standard_normal((5, 8, 3, 3))
    b, dy = rng.standard_normal(5), rng.standard_normal((4, 5, 8, 8))
    want = naive_conv2d(x, w, b, (1, 1), (1, 1))
    nd = naive_conv2d_backward(dy, x, w, (1, 1), (1, 1))
    for sliced_ in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(conv, "_SLICED", sliced_)
            mp.setattr(conv, "_SLICED_MIN_ROWS", 0)
            mp.setattr(conv, "_EVAL_COLS_ELEMENTS", 1 << 30)
            y, cache = F.conv2d_forward(x, w, b, 1, 1)
            np.testing.assert_allclose(y, want, atol=1e-10)
            for got, ref in zip(F.conv2d_backward(dy, cache), nd, strict=True):
                np.testing.assert_allclose(got, ref, atol=1e-10)


def test_sequential_backward_without_input_grad():
    """Sequential.backward(g, input_grad=False): same weight gradients, the first skips dX."""
    from tinynet import nn

    tinynet.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    for first in (nn.Conv2d(1, 2, 3), nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())):
        model = nn.Sequential(first, nn.Flatten(), nn.Linear(72, 4))
        g = np.ones((3, 4), dtype=np.float32)
        model(x)
        dx = model.backward(g)
        assert dx.shape == x.shape
        grads = [p.grad.copy() for p in model.parameters()]
        model.zero_grad()
        model(x)
        assert model.backward(g, input_grad=False) is None
        for p, ref in zip(model.parameters(), grads, strict=True):
            np.testing.assert_allclose(p.grad, ref, rtol=1e-6)
    # a first module without the option (ReLU) still returns dX
    model = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(64, 4))
    model(x)
    assert model.backward(np.ones((3, 4), dtype=np.float32), input_grad=False).shape == x.shape


def test_relu_and_maxpool_keep_no_cache_under_no_grad():
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    with tinynet.no_grad():
        y, mask = F.relu_forward(x)
        p, cache = F.maxpool2d_forward(x, 2)
    assert mask is None and cache is None
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(p, naive_maxpool(x, (2, 2), (2, 2), (0, 0))[0])


@pytest.mark.parametrize("stride", [1, 2])
def test_an_empty_batch_goes_through_every_kernel(stride):
    x = np.zeros((0, 2, 6, 6))
    w = np.ones((3, 2, 3, 3))
    y, cache = F.conv2d_forward(x, w, np.ones(3), stride=stride)
    dx, dw, db = F.conv2d_backward(y, cache)
    assert y.shape == (0, 3, 4 // stride, 4 // stride) and dx.shape == x.shape
    np.testing.assert_array_equal(dw, np.zeros_like(w))
    np.testing.assert_array_equal(db, np.zeros(3))
    p, pool_cache = F.maxpool2d_forward(x, 2, stride)
    assert F.maxpool2d_backward(p, pool_cache).shape == x.shape
    r, mask = F.relu_forward(x)
    assert F.relu_backward(r, mask).shape == x.shape
    with tinynet.no_grad():
        assert F.conv2d_forward(x, w, stride=stride)[0].shape == y.shape
        assert F.maxpool2d_forward(x, 2, stride)[0].shape == p.shape


def test_recycled_band_of_another_kernel_width_keeps_zeros_off_its_band(monkeypatch):
    """By rows, a 1x5 kernel (stride 1) and a 1x1 kernel (stride 2) on 9-wide images have banded
    weights of one shape, (C_out, 5, C_in, 1, 9), with the weights in different places."""
    monkeypatch.setattr(conv, "_ROWS_MAX_WIDTH", 1 << 30)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 3, 9))
    for kw, sw in ((5, 1), (1, 2), (5, 1)):
        w = rng.standard_normal((3, 2, 1, kw))
        y = F.conv2d_forward(x, w, None, (1, sw), 0)[0]  # (the cache goes: its band is free)
        np.testing.assert_allclose(y, naive_conv2d(x, w, None, (1, sw), (0, 0)), atol=1e-10)


# -- every fast kernel equals its reference --------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2**16))
def test_fast_conv2d_equals_the_reference(geometry, seed, conv_method):
    x, w, b, stride, padding, rng = _conv_inputs(geometry, seed)
    y, cache = F.conv2d_forward(x, w, b, stride, padding)
    ry, rcache = R.conv2d_forward(x, w, b, stride, padding)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(F.conv2d_backward(dy, cache), R.conv2d_backward(dy, rcache), strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with tinynet.no_grad():
        np.testing.assert_allclose(F.conv2d_forward(x, w, b, stride, padding)[0], ry,
                                   rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(case=batchnorm_cases(), seed=st.integers(0, 2**16), training=st.booleans(),
       affine=st.booleans())
def test_fast_batchnorm_equals_the_reference(case, seed, training, affine):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape)
    C = x.shape[1]
    gamma, beta = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    stats = [rng.standard_normal(C), rng.random(C) + 0.5]
    fast_stats, ref_stats = [a.copy() for a in stats], [a.copy() for a in stats]
    y, cache = F.batchnorm_forward(x, gamma, beta, *fast_stats, training=training)
    ry, rcache = R.batchnorm_forward(x, gamma, beta, *ref_stats, training=training)
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-10)
    for a, b in zip(fast_stats, ref_stats, strict=True):  # the running statistics too
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    for got, want in zip(F.batchnorm_backward(dy, cache), R.batchnorm_backward(dy, rcache),
                         strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


# -- the dispatcher ----------------------------------------------------------------------------
def test_the_dispatcher_picks_fast_or_reference_and_backward_follows_the_cache():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 1, 6, 6)), rng.standard_normal((3, 1, 3, 3)), np.ones(3)
    assert kernels.get_mode() == "fast"
    _, fast_cache = kernels.conv2d_forward(x, w, b)
    assert isinstance(fast_cache, (conv.ConvCache, conv.RowsCache))
    with tinynet.use_reference():
        assert kernels.get_mode() == "reference"
        assert kernels.implementation("conv2d_forward", "cpu") is R.conv2d_forward
        y, ref_cache = kernels.conv2d_forward(x, w, b)
        assert isinstance(ref_cache, R.conv.ConvCache)
        # a cache made by the fast forward still goes to the fast backward, and back
        dy = rng.standard_normal(y.shape)
        fast_grads = kernels.conv2d_backward(dy, fast_cache)
    ref_grads = kernels.conv2d_backward(dy, ref_cache)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert kernels.get_mode() == "fast"
    with pytest.raises(ValueError, match="'fast' or 'reference'"):
        kernels.set_mode("quick")


def test_a_patched_reference_kernel_takes_effect_under_use_reference(monkeypatch):
    calls = []
    original = R.relu_forward
    monkeypatch.setattr(R, "relu_forward", lambda x: calls.append(1) or original(x))
    x = np.ones((2, 3))
    kernels.relu_forward(x)
    assert calls == []  # the fast twin ran
    with tinynet.use_reference():
        kernels.relu_forward(x)
    assert calls == [1]


def test_tinynet_kernels_environment_variable_selects_the_mode():
    import subprocess
    import sys

    code = "import tinynet; print(tinynet.kernels.get_mode())"
    for value, want in (("reference", "reference"), ("fast", "fast"), ("", "fast")):
        env = dict(__import__("os").environ, TINYNET_KERNELS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == want
    env = dict(__import__("os").environ, TINYNET_KERNELS="quick")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "TINYNET_KERNELS must be 'fast' or 'reference'" in out.stderr


# -- training by slices (conv.SlicedCache) -------------------------------------------------------
@pytest.fixture(params=["whole slices", "one image per slice", "one image per slice, col2im",
                        "whole slices, col2im", "one image per slice, col2im by rows",
                        "one image per slice, plain layout"])
def sliced(request, monkeypatch):
    """Training by slices for every drawn geometry (not only for 64+ column rows), with slices
    of one image or of the whole batch; dx by a convolution of dy (stride 1) or by col2im (for
    "same" convolutions by offset, conv.col2im_by_offset, or by rows, conv.col2im_block); the
    flat-rows layout where the stride is 1, or always the plain one."""
    monkeypatch.setattr(conv, "_SLICED_MIN_ROWS", 0)
    monkeypatch.setattr(conv, "_ROWS_MAX_WIDTH", 0)
    monkeypatch.setattr(conv, "_DX_BY_CONV", "col2im" not in request.param)
    monkeypatch.setattr(conv, "_COL2IM_BY_OFFSET", "by rows" not in request.param)
    monkeypatch.setattr(conv, "_PLAIN_JUNK", -1.0 if "plain" in request.param else 1.0)
    if request.param.startswith("one image per slice"):
        monkeypatch.setattr(conv, "_EVAL_COLS_ELEMENTS", 1)
    else:
        monkeypatch.setattr(conv, "_EVAL_COLS_ELEMENTS", 1 << 30)
    return request.param


@settings(max_examples=40, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2**16), epilogue=st.sampled_from(
    ["none", "relu", "relu+pool"]), pool=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_conv2d_trained_by_slices_matches_naive_loops_and_the_reference(geometry, seed, epilogue,
                                                                        pool, sliced):
    """Forward keeps only the input; backward makes each slice's columns again: y, dx, dW, db
    (with the ReLU and pooling epilogues, and without dx) equal the naive loops, and the
    reference kernel."""
    x, w, b, stride, padding, rng = _conv_inputs(geometry, seed)
    pool_arg = None
    if epilogue == "relu+pool":
        out_hw = naive_conv2d(x, w, b, stride, padding).shape[2:]
        pool_arg = ((min(pool[0], out_hw[0]), min(pool[1], out_hw[1])), pool[1])
    _check_conv_with_epilogues(x, w, b, stride, padding, rng, epilogue != "none", pool_arg,
                               conv.SlicedCache, 1e-12)


def _check_conv_with_epilogues(x, w, b, stride, padding, rng, relu, pool_arg, cache_type,
                               reference_tol):
    """The fast convolution with its epilogues (``relu``; ``pool_arg`` = (kernel, stride) of a
    max pooling, the stride an int or a pair, or None) makes a cache of ``cache_type``, and its
    y, dx, dW and db equal the naive chain conv -> ReLU -> pool (rtol 1e-10); without dx, dW is
    the same; with no epilogue, y, dx, dW and db equal the reference kernel's (to
    ``reference_tol``). Returns the expected output."""
    z = naive_conv2d(x, w, b, stride, padding)
    r = np.maximum(z, 0) if relu else z
    want, where = r, None
    if pool_arg is not None:
        p_stride = pool_arg[1] if isinstance(pool_arg[1], tuple) else (pool_arg[1],) * 2
        want, where = naive_maxpool(r, pool_arg[0], p_stride, (0, 0))
    y, cache = F.conv2d_forward(x, w, b, stride, padding, relu=relu, pool=pool_arg)
    assert isinstance(cache.conv if pool_arg is not None else cache, cache_type)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)
    dr = dy if where is None else naive_maxpool_backward(dy, where, r.shape)
    ndx, ndw, ndb = naive_conv2d_backward(dr * (r > 0) if relu else dr, x, w, stride, padding)
    np.testing.assert_allclose(dx, ndx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, ndw, rtol=1e-10, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(db, ndb, rtol=1e-10, atol=1e-10)
    else:
        assert db is None
    y, cache = F.conv2d_forward(x, w, b, stride, padding, relu=relu, pool=pool_arg)
    dx2, dw2, _ = F.conv2d_backward(dy, cache, input_grad=False)
    assert dx2 is None
    np.testing.assert_array_equal(dw2, dw)
    if not relu and pool_arg is None:
        ry, rcache = R.conv2d_forward(x, w, b, stride, padding)
        np.testing.assert_allclose(y, ry, rtol=reference_tol, atol=reference_tol)
        for got, ref in zip((dx, dw, db), R.conv2d_backward(dy, rcache), strict=True):
            if ref is not None:
                np.testing.assert_allclose(got, ref, rtol=reference_tol, atol=reference_tol)
    return want


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       kernel=st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([1, 3, 5])),
       seed=st.integers(0, 2**16))
def test_col2im_by_offset_is_the_adjoint_of_same_rows_im2col(n, c, h, w, kernel, seed):
    """<im2col(x), dcols> = <x, col2im(dcols)> for any dcols, junk in every entry that lies off
    the image included (they must be dropped, not spilled onto a neighbour's pixels), and the
    same dx as col2im_block's."""
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    padding = ((kh - 1) // 2, (kw - 1) // 2)
    x = rng.standard_normal((n, c, h, w))
    columns = conv.columns_for(x, kernel, (1, 1), padding, (h, w))
    assert columns.same
    conv.fill_columns(columns, x, 0, n)
    cols = columns.cols  # (c*kh*kw, n*h*w), rows (c, u, v)
    g = rng.standard_normal(cols.shape)  # dL/dcols, rows (c, u, v)
    dcols, rows = conv.offset_buffers(np, (n, c, h, w), kernel, g.dtype)
    dcols[:, : n * h * w] = g.reshape(c, kh, kw, -1).transpose(1, 2, 0, 3).reshape(g.shape)
    dx = np.full(x.shape, np.nan)
    conv.col2im_by_offset(dcols, rows, dx, kernel)
    np.testing.assert_allclose((x * dx).sum(), (cols * g).sum(), rtol=1e-10, atol=1e-10)
    by_rows = np.full(x.shape, np.nan)
    conv.col2im_block(g.copy(), by_rows, x.shape, kernel, (1, 1), (h, w), w, 0, n, True)
    np.testing.assert_allclose(dx, by_rows, rtol=1e-12, atol=1e-12)


def test_col2im_by_offset_buffers_of_one_shape_for_two_geometries():
    """Two layers whose dcols buffers have the same shape, one with spare columns (32x32: rows
    spaced to 1040 numbers) and one without (5 images of 16x13 = 1040 columns): the second must
    not leave numbers in the first's spare columns (the role names the columns)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in ((1, 2, 32, 32), (5, 2, 16, 13)))
    assert conv._pitch(np, 1024, np.float32) == 1040
    for x in (a, b, a):
        dy = rng.standard_normal((x.shape[0], 4) + x.shape[2:]).astype(np.float32)
        cache = conv.SlicedCache(x, w, (1, 1), (1, 1), False, None)
        dx = conv.conv2d_backward(dy, cache)[0]
        ref = R.conv2d_backward(dy, R.conv2d_forward(x, w, None, 1, 1)[1])[0]
        np.testing.assert_allclose(dx, ref, rtol=1e-4, atol=1e-4)


def test_conv2d_by_slices_keeps_the_input_and_takes_an_empty_batch(sliced):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3))
    x = rng.standard_normal((4, 2, 5, 5))
    y1, c1 = F.conv2d_forward(x, w, None, 1, 1)
    assert c1.x is x  # the input itself, not a copy (nothing batch-sized is written)
    y1 = y1.copy()
    F.conv2d_forward(rng.standard_normal((4, 2, 5, 5)), w, None, 1, 1)  # recycles buffers
    dy = rng.standard_normal(y1.shape)
    np.testing.assert_allclose(F.conv2d_backward(dy, c1)[1],
                               naive_conv2d_backward(dy, x, w, (1, 1), (1, 1))[1], atol=1e-10)
    y0, c0 = F.conv2d_forward(np.zeros((0, 2, 5, 5)), w, None, 1, 1)
    dx0, dw0, db0 = F.conv2d_backward(np.zeros(y0.shape), c0)
    assert dx0.shape == (0, 2, 5, 5) and (dw0 == 0).all() and dw0.shape == w.shape and db0 is None


# -- Winograd's F(4x4, 3x3) (tinynet/fast/winograd.py) ---------------------------------------------
@pytest.fixture(params=["slices of 128 tiles", "slices of 3 tiles"])
def winograd_everywhere(request, monkeypatch):
    """Winograd for every 3x3 "same" convolution of sides 8 or more (not only for 32+ channels
    and sides that 4x4 blocks nearly cover), in its slices of about 128 tiles, or of 3: then a
    slice is a band of tile rows of one image, and the tiles of two bands overlap."""
    monkeypatch.setattr(conv, "_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "_WINOGRAD_COVER", 4.0)
    if request.param == "slices of 3 tiles":
        monkeypatch.setattr(winograd, "TILES_PER_SLICE", 3)
    return request.param


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), c_in=st.integers(1, 5), c_out=st.integers(1, 5),
       hw=st.tuples(st.sampled_from([8, 9, 12, 14, 16, 23]), st.sampled_from([8, 10, 12, 15, 20])),
       has_bias=st.booleans(), seed=st.integers(0, 2**16),
       epilogue=st.sampled_from(["none", "relu", "relu+pool"]))
def test_winograd_conv2d_matches_naive_loops_and_the_reference(n, c_in, c_out, hw, has_bias,
                                                               seed, epilogue,
                                                               winograd_everywhere):
    """y, dx, dW, db by F(4x4, 3x3) equal the naive loops and the reference kernel (float64),
    with the ReLU and pooling epilogues, without dx, and under no_grad; on sides that are
    multiples of 4 and on sides where the last 4x4 blocks hang over the image."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in) + hw)
    w = rng.standard_normal((c_out, c_in, 3, 3))
    b = rng.standard_normal(c_out) if has_bias else None
    relu = epilogue != "none"
    pool_arg = ((2, 2), (2, 2)) if epilogue == "relu+pool" else None
    want = _check_conv_with_epilogues(x, w, b, (1, 1), (1, 1), rng, relu, pool_arg,
                                      winograd.WinogradCache, 1e-10)
    with tinynet.no_grad():
        y_eval, cache_eval = F.conv2d_forward(x, w, b, 1, 1, relu=relu, pool=pool_arg)
    assert cache_eval is None
    np.testing.assert_allclose(y_eval, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(8, 32, 64, 32, 32), (16, 32, 64, 14, 14),
                                   (16, 64, 64, 16, 16), (16, 128, 128, 8, 8)])
def test_winograd_rounding_in_float32_stays_near_1e_5(shape):
    """The price of F(4x4, 3x3) is rounding (its transforms multiply by up to 8): in float32 the
    largest error of y, dx and dW, relative to each array's largest value, stays below 5e-5
    (measured 6e-6 to 9e-6) against the reference in float64, at the shapes of issue 16's
    networks (the engine's own rule picks Winograd there)."""
    n, c_in, c_out, h, w_ = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c_in, h, w_), dtype=np.float32)
    w = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    y, cache = F.conv2d_forward(x, w, b, 1, 1)
    assert isinstance(cache, winograd.WinogradCache)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    got = (y,) + F.conv2d_backward(dy, cache)
    assert all(a.dtype == np.float32 for a in got)
    ry, rcache = R.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                  b.astype(np.float64), 1, 1)
    want = (ry,) + R.conv2d_backward(dy.astype(np.float64), rcache)
    for a, ref in zip(got, want, strict=True):
        assert np.abs(a - ref).max() / np.abs(ref).max() < 5e-5


def test_winograd_runs_where_the_rule_says_and_nowhere_else():
    """3x3, stride 1, padding 1, sides of 8+ that 4x4 blocks cover with at most 35% to spare,
    32+ channels in and out: Winograd; any other geometry keeps im2col (or rows); the reference
    mode runs the reference."""
    rng = np.random.default_rng(0)

    def cache_of(x_shape, w_shape, stride=1, padding=1):
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = rng.standard_normal(w_shape, dtype=np.float32)
        return F.conv2d_forward(x, w, None, stride, padding)[1]

    assert isinstance(cache_of((2, 32, 16, 16), (32, 32, 3, 3)), winograd.WinogradCache)
    assert isinstance(cache_of((2, 32, 8, 12), (40, 32, 3, 3)), winograd.WinogradCache)
    assert isinstance(cache_of((2, 32, 14, 14), (64, 32, 3, 3)), winograd.WinogradCache)
    for x_shape, w_shape, stride, padding in [
            ((2, 32, 10, 10), (64, 32, 3, 3), 1, 1),  # 12x12 blocks: 1.44 times the pixels
            ((2, 32, 4, 4), (32, 32, 3, 3), 1, 1),  # smaller than 8
            ((2, 16, 16, 16), (32, 16, 3, 3), 1, 1),  # 16 input channels
            ((2, 32, 16, 16), (16, 32, 3, 3), 1, 1),  # 16 output channels
            ((2, 32, 16, 16), (32, 32, 3, 3), 2, 1),  # stride 2
            ((2, 32, 16, 16), (32, 32, 3, 3), 1, 0),  # padding 0
            ((2, 32, 16, 16), (32, 32, 5, 5), 1, 2)]:  # 5x5
        assert not isinstance(cache_of(x_shape, w_shape, stride, padding),
                              winograd.WinogradCache)
    x = rng.standard_normal((2, 32, 16, 16), dtype=np.float32)
    w = rng.standard_normal((32, 32, 3, 3), dtype=np.float32)
    with tinynet.use_reference():
        _, cache = kernels.conv2d_forward(x, w, None, 1, 1)
    assert type(cache) is reference_conv.ConvCache
