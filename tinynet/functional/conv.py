"""2-D convolution: forward and backward by hand.

    y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] * x_pad[n, c, i*s_h + u, j*s_w + v]

Shapes:
    x: (N, C_in, H, W)      w: (C_out, C_in, kh, kw)      b: (C_out,)
    y: (N, C_out, H_out, W_out)   with   H_out = floor((H + 2*p_h - kh) / s_h) + 1
                                         W_out = floor((W + 2*p_w - kw) / s_w) + 1

The trick that makes it fast (im2col + ONE matrix product for the whole batch):
    A convolution is many small dot products, one per output pixel. Instead of looping over them,
    we look at every kh x kw window of the padded input at once through a *strided view* (no copy)
    and copy it once into a "columns" matrix cols of shape (C_in*kh*kw, N*L): one ROW per weight
    position (c, u, v) and one COLUMN per output pixel of every image (image n owns the columns
    n*L ... n*L + L - 1), holding the input value that this weight meets at that pixel. Then the
    whole convolution is ONE matrix product (BLAS runs it at full speed):
        Y = W @ cols + b       with W reshaped to (C_out, C_in*kh*kw), Y: (C_out, N*L),
    and Y is reordered once into the (N, C_out, H_out, W_out) output (the bias is added on the way).

    Layout of the pixel axis (the long, contiguous one, so that copies and sums run in long rows):
    * stride 1 (the common case): the "flat rows" trick. Number the padded input's pixels
      row by row, p = h * W_pad + w. The input that weight (u, v) meets at output pixel (i, j) is
      pixel u*W_pad + v + (i*W_pad + j): a fixed shift u*W_pad + v plus the output position q =
      i*W_pad + j. So for one image, row (c, u, v) of cols is ONE contiguous slice of the flattened
      input, of length L = H_out*W_pad. The price: the q with j >= W_out are junk columns (windows
      that wrap around a row end); their outputs are dropped, their gradients are zero. (The padded
      input gets one spare zero row at the bottom, so the last slice stays inside its channel.)
    * any other stride: the plain layout, L = H_out*W_out, q = i*W_out + j.

Backward (dy: (N, C_out, H_out, W_out), reordered once like Y: dY of shape (C_out, N*L)):
    dL/dW = dY @ cols^T                       -> (C_out, C_in*kh*kw), reshaped to w's shape
            (ONE product: the sum over the batch and over output positions of dy (x) window)
    dL/db = sum of dy over n, i, j            -> (C_out,)
    dL/dx: dcols = W^T @ dY                   -> (C_in*kh*kw, N*L)
            and each window's gradient is added back where the window came from ("col2im").
            Windows overlap, so one input pixel receives from several windows. Rather than a scatter
            (np.add.at, slow), we loop over the kh*kw kernel offsets (u, v): for one offset, the
            input pixels it touches form one slice of dx (a shifted contiguous slice of the flat
            rows for stride 1, a strided slice x_pad[:, :, u::s_h, v::s_w] otherwise), and
            different windows never collide inside it. kh*kw vectorised adds in total.
    The first layer of a network does not need dL/dx (nothing learns below it): with
    ``input_grad=False`` the last step (the product and the col2im) is skipped.

A second way, for narrow images in training: by rows (``conv_rows.py``). When the padded image is
at most ``_ROWS_MAX_WIDTH`` kernels wide (the course network's second convolution: 12 pixels, 5x5
kernel), training copies whole input rows instead of windows and multiplies them by a banded
("Toeplitz") weight matrix: kh copies of each input number instead of kh*kw, at W_pad/kw times the
arithmetic. Its backward adds kh rows back instead of kh*kw windows; that is where it wins.

The last steps of forward: the bias is added on Y's long rows (C_out, N*L) before Y is reordered,
not through the reordered view's short rows (2-3x faster, measured). With ``relu=True`` (the
``Sequential`` of a Conv2d and a ReLU asks for it) a ReLU follows there too, while the block is in
the cache, and backward starts with the ReLU's backward (dY * [y > 0]) as it reorders dY anyway.
With ``pool=`` a max pooling follows as well: each thread pools the images it just convolved
(``pooling.maxpool2d_forward_blocks``), and backward routes each block's dy back through the
pooling first (``maxpool2d_backward_blocks``): no pass of its own, and on both threads.

Evaluation (inside ``tinynet.no_grad()``) keeps no columns for backward, so each thread convolves
its images a slice at a time through buffers for one slice: they stay small (in the core's cache).

Threads: the images of a batch are independent, so forward (pad, im2col, product, reorder) and
backward (dY, dW's share, dcols, col2im) run on one block of images per thread
(``tinynet.threads.for_batch``); the blocks' shares of dW and db are added at the end.

Memory: the columns, outputs and gradients go into recycled buffers (``_recycle.scratch``), because
on the CPU fresh multi-megabyte arrays every step cost page faults (half a step, measured).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._utils import conv_output_size, pair
from ..backend import backend_of, is_grad_enabled
from ..threads import add_blocks, for_batch, worth_splitting
from ._recycle import scratch
from .activation import relu_backward_into, relu_in_place
from .conv_rows import (
    RowsCache,
    conv2d_rows_backward,
    conv2d_rows_backward_parts,
    rows_convolver,
)

# inside no_grad, images per slice are chosen so that one slice's columns hold about this many
# numbers (2 MB in float32). Measured, the course network on 1000 images, 2 threads: 30 ms with
# 1-4 MB, 34 ms with 0.5 MB (more Python per image), 41 ms with 8 MB (out of the cache).
_EVAL_COLS_ELEMENTS = 1 << 19

# Convolve by rows (conv_rows.py) when the padded image is at most this many kernels wide: that
# method does W_pad/kw times the arithmetic of im2col but copies kh numbers per input number
# instead of kh*kw. Measured on 2 cores: 12 wide with a 5x5 kernel (2.4x the arithmetic), the
# course network's training step 10-20% faster (benchmarks/ab_conv.py); 28 wide (5.6x): no faster.
_ROWS_MAX_WIDTH = 3


# ... in training only: the method's gain is in backward (kh adds instead of kh*kw); evaluation,
# a forward alone, gains nothing clear by rows (benchmarks/ab_conv.py, case "conv2-eval": by rows
# / by im2col 1.11, 1.0 and 0.95 in three runs).
_ROWS_IN_EVAL = False


def _by_rows(kernel: tuple, padded_width: int) -> bool:
    """Convolve by rows (conv_rows.py) rather than by im2col columns?"""
    return padded_width <= _ROWS_MAX_WIDTH * kernel[1]


class ConvCache(NamedTuple):
    """What conv2d_backward needs: the columns (the windows each output pixel saw), the weights."""

    cols: Any  # (C_in*kh*kw, N*L): one row per weight position, one column per output pixel
    weight: Any  # (C_out, C_in, kh, kw)
    x_shape: tuple  # (N, C_in, H, W)
    stride: tuple  # (s_h, s_w)
    padding: tuple  # (p_h, p_w)
    has_bias: bool
    row_pitch: int  # W_pad for the flat-rows layout (stride 1), 0 for the plain layout
    relu_mask: Any = None  # [y > 0] (N, C_out, H_out, W_out) when a ReLU ran as the last step


class PooledCache(NamedTuple):
    """A convolution (with its ReLU) and the max pooling after it, run as one call
    (``conv2d_forward(..., pool=...)``): what each one's backward needs."""

    conv: Any  # ConvCache or RowsCache
    pool: Any  # MaxPoolCache


def pad2d(x: Any, padding: tuple, value: float = 0.0) -> Any:
    """Pad the last two axes of ``x`` by ``padding = (p_h, p_w)`` on each side with ``value``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend_of(x).xp
    N, C, H, W = x.shape
    out = xp.full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph : ph + H, pw : pw + W] = x
    return out


def window_view(x: Any, kernel: tuple, stride: tuple, out_hw: tuple) -> Any:
    """All kh x kw windows of ``x`` (N, C, H, W) as a strided view (N, H_out, W_out, C, kh, kw).

    ``view[n, i, j, c, u, v] = x[n, c, i*s_h + u, j*s_w + v]``; no data is copied.
    """
    kh, kw = kernel
    sh, sw = stride
    ho, wo = out_hw
    N, C = x.shape[:2]
    s0, s1, s2, s3 = x.strides
    return backend_of(x).as_strided(
        x, shape=(N, ho, wo, C, kh, kw), strides=(s0, s2 * sh, s3 * sw, s1, s2, s3)
    )


class _Columns(NamedTuple):
    """The columns of a batch, filled a block of images at a time by :func:`fill_columns`."""

    cols: Any  # (C*kh*kw, N*L); image n owns the columns n*L ... n*L + L - 1
    per_image: int  # L
    row_pitch: int  # W_pad for flat rows (stride 1), 0 for the plain layout
    x_pad: Any  # the padded input the windows are read from
    windows: Any  # strided view (C, kh, kw, N, ...) of x_pad, shaped like cols row by row
    padding: tuple


def columns_for(x: Any, kernel: tuple, stride: tuple, padding: tuple, out_hw: tuple) -> _Columns:
    """Buffers for the columns of an input batch (N, C, H, W); nothing is copied yet.

    ``cols[(c, u, v), n*L + q] = x_pad[n, c, i*s_h + u, j*s_w + v]`` for output pixel (i, j) at
    column q of image n: ``q = i*W_pad + j``, ``L = H_out*W_pad`` for stride 1 (flat rows, with
    junk columns j >= W_out), ``q = i*W_out + j``, ``L = H_out*W_out`` otherwise.
    """
    backend = backend_of(x)
    xp = backend.xp
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    hp, wp = H + 2 * ph, W + 2 * pw
    # (the role names the padding: every user of one buffer writes the same inside, so the
    # borders and the spare row of a recycled buffer are still 0)
    if (sh, sw) == (1, 1):
        # flat rows: the padded input with one spare zero row, so that the slice of the last
        # offset, [(kh-1)*W_pad + kw-1, ... + H_out*W_pad), stays inside its own channel
        x_pad = scratch(xp, f"conv.x_pad.{ph}.{pw}", (N, C, hp + 1, wp), x.dtype)
        L, pitch = ho * wp, wp
        s0, s1, s2, s3 = x_pad.strides
        # windows[c, u, v, n, q] = x_pad_flat[n, c, u*W_pad + v + q]
        windows = backend.as_strided(x_pad, shape=(C, kh, kw, N, L),
                                     strides=(s1, s2, s3, s0, s3))
    else:
        x_pad = scratch(xp, f"conv.x_pad_plain.{ph}.{pw}", (N, C, hp, wp), x.dtype)
        L, pitch = ho * wo, 0
        s0, s1, s2, s3 = x_pad.strides
        # plain: windows[c, u, v, n, i, j] = x_pad[n, c, i*s_h + u, j*s_w + v]
        windows = backend.as_strided(
            x_pad, shape=(C, kh, kw, N, ho, wo), strides=(s1, s2, s3, s0, s2 * sh, s3 * sw)
        )
    cols = scratch(xp, "conv.cols", (C * kh * kw, N * L), x.dtype)
    return _Columns(cols, L, pitch, x_pad, windows, padding)


def fill_columns(columns: _Columns, x: Any, lo: int, hi: int) -> None:
    """im2col for images lo..hi-1: pad them, then copy their windows into their columns."""
    ph, pw = columns.padding
    H, W = x.shape[2:]
    columns.x_pad[lo:hi, :, ph : ph + H, pw : pw + W] = x[lo:hi]
    # the one copy of im2col
    columns.cols.reshape(columns.windows.shape)[:, :, :, lo:hi] = columns.windows[:, :, :, lo:hi]


def _pixels(y2d: Any, n: int, out_hw: tuple, row_pitch: int) -> Any:
    """The (C_out, N*L) product as an (N, C_out, H_out, W_out) view (junk columns dropped)."""
    ho, wo = out_hw
    f = y2d.shape[0]
    if row_pitch:
        # flat rows: pixel (i, j) of image n sits at column n*L + i*W_pad + j
        return y2d.reshape(f, n, ho, row_pitch)[:, :, :, :wo].transpose(1, 0, 2, 3)
    return y2d.reshape(f, n, ho, wo).transpose(1, 0, 2, 3)


def _convolver(x: Any, w2d: Any, bias: Any, kernel: tuple, stride: tuple, padding: tuple,
               out_hw: tuple, relu: bool = False, mask: Any = None) -> tuple:
    """Buffers for convolving a batch of x's shape, and ``convolve(x_b, out_b, lo, hi)``, which
    writes ``out_b[lo:hi] = conv(x_b[lo:hi]) + b`` for such a batch x_b (pad, im2col, product,
    reorder; the whole batch by default), then ``max(., 0)`` with ``relu`` (and ``mask[lo:hi]``,
    if given, the ReLU's mask). Returns ``(convolve, columns)``.
    """
    xp = backend_of(x).xp
    n, f = x.shape[0], w2d.shape[0]
    columns = columns_for(x, kernel, stride, padding, out_hw)
    cols, L = columns.cols, columns.per_image
    y2d = scratch(xp, "conv.y", (f, cols.shape[1]), cols.dtype)
    y = _pixels(y2d, n, out_hw, columns.row_pitch)
    bias_column = None if bias is None else bias.reshape(f, 1)

    def convolve(x_b: Any, out_b: Any, lo: int = 0, hi: Any = None) -> None:
        hi = x_b.shape[0] if hi is None else hi
        fill_columns(columns, x_b, lo, hi)
        # Y = W @ cols: every output pixel's dot product, the images lo..hi-1 in one product
        c = slice(lo * L, hi * L)
        xp.matmul(w2d, cols[:, c], out=y2d[:, c])
        # the bias (and the ReLU) on Y's long rows, then one reordering copy: 2-3x faster than
        # adding the bias on the way, through the reordered view's short rows (measured)
        if bias is not None:
            xp.add(y2d[:, c], bias_column, out=y2d[:, c])
        if relu:  # while the block is still in this core's cache
            relu_in_place(y2d[:, c])
        out_b[lo:hi] = y[lo:hi]
        if mask is not None:  # the ReLU's mask [y > 0], for backward
            xp.greater(out_b[lo:hi], 0, out=mask[lo:hi])

    return convolve, columns


def conv2d_forward(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                   relu: bool = False, pool: Any = None):
    """Convolve a batch of images with a bank of filters.

    ``y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] * x_pad[n, c, i*s_h + u, j*s_w + v]``

    Args:
        x: input batch (N, C_in, H, W).
        weight: filters (C_out, C_in, kh, kw).
        bias: (C_out,) or None.
        stride, padding: int or pair (height, width).
        relu: apply a ReLU as the last step, ``y = max(y, 0)``, on each block of the output
            while it is still in the cache (and keep its mask: :func:`conv2d_backward` then takes
            dL/d(ReLU output) and applies the ReLU's backward first). Same result as
            :func:`~tinynet.functional.relu_forward` after the convolution, one pass fewer.
        pool: ``(kernel_size, stride)`` of a max pooling (no padding) that follows (after the
            ReLU, if any): the pooled output is returned, each thread pooling its block of
            images right after convolving it, while the block is in its core's cache (on the
            GPU and for a convolution by rows, after the whole convolution). Backward then
            takes dL/d(pooled output). Same result as
            :func:`~tinynet.functional.maxpool2d_forward` after the convolution.

    Returns:
        ``(y, cache)`` with y of shape (N, C_out, H_out, W_out),
        ``H_out = floor((H + 2*p_h - kh) / s_h) + 1`` (W likewise), and the cache for backward
        (None inside ``tinynet.no_grad()``: nothing is kept, there will be no backward).

    Backward: see :func:`conv2d_backward`.
    """
    xp = backend_of(x).xp
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    N, C, H, W = x.shape
    F, _, kh, kw = weight.shape
    ho = conv_output_size(H, kh, stride[0], padding[0])
    wo = conv_output_size(W, kw, stride[1], padding[1])
    w2d = weight.reshape(F, C * kh * kw)
    wp = W + 2 * padding[1]
    training = is_grad_enabled()
    # evaluation with a pooling after it: each slice is pooled at once, so the convolution's
    # output only ever lives in a buffer for one slice (no batch-sized array: less memory traffic)
    eval_pooled = pool is not None and not training
    out = None if eval_pooled else scratch(xp, "conv.out", (N, F, ho, wo), x.dtype)
    mask = scratch(xp, "conv.relu_mask", (N, F, ho, wo), xp.bool_) if relu and training else None
    by_rows = (training or _ROWS_IN_EVAL) and _by_rows((kh, kw), wp)
    geometry = ((kh, kw), stride, padding, (ho, wo))
    pool_block = pool_cache = None
    if pool is not None:  # (buffers only: each block is pooled once it is convolved)
        from .pooling import maxpool2d_forward_blocks, pool_geometry  # (pooling imports conv)

        if eval_pooled:
            pooled_hw = pool_geometry((N, F, ho, wo), pool[0], pool[1], 0)[3]
            pooled = scratch(xp, "conv.pooled", (N, F, *pooled_hw), x.dtype)
        else:
            pool_block, pooled, pool_cache = maxpool2d_forward_blocks(out, pool[0], pool[1], 0)

    def result(cache: Any) -> tuple:
        if pool is None:
            return out, cache
        return pooled, (None if cache is None else PooledCache(cache, pool_cache))

    if not training:
        # evaluation: no columns are kept, so each thread convolves its images a slice at a
        # time through buffers for one slice (small: they stay in the core's cache), made once
        # (on the GPU, whose caches are no place for slices, the whole batch is one slice)
        per_image = C * kh * ho * wp * (1 if by_rows else kw)  # numbers of its columns or rows
        on_cpu = backend_of(x).device == "cpu"
        step = max(1, _EVAL_COLS_ELEMENTS // per_image) if on_cpu else max(N, 1)

        def block(lo: int, hi: int) -> None:  # one thread's images
            slicers = {}  # slice size -> its buffers and steps (the last slice may be shorter)
            for n0 in range(lo, hi, step):
                n1 = min(n0 + step, hi)
                n = n1 - n0
                if n not in slicers:
                    convolve = (rows_convolver(x[n0:n1], weight, bias, *geometry, relu) if by_rows
                                else _convolver(x[n0:n1], w2d, bias, *geometry, relu))[0]
                    slice_out = pool_slice = pooled_slice = None
                    if eval_pooled:
                        slice_out = scratch(xp, "conv.out_slice", (n, F, ho, wo), x.dtype)
                        pool_slice, pooled_slice, _ = maxpool2d_forward_blocks(
                            slice_out, pool[0], pool[1], 0)
                    slicers[n] = convolve, slice_out, pool_slice, pooled_slice
                convolve, slice_out, pool_slice, pooled_slice = slicers[n]
                if slice_out is None:
                    convolve(x[n0:n1], out[n0:n1])
                else:  # convolved, then pooled while in the cache
                    convolve(x[n0:n1], slice_out)
                    pool_slice(0, n)
                    pooled[n0:n1] = pooled_slice

        for_batch(xp, N, block, per_item=per_image)
        return result(None)
    if by_rows:  # training by rows: R and T are kept for backward
        convolve, rows, band = rows_convolver(x, weight, bias, *geometry, relu, mask)
        convolve(x, out)  # (its threads split the output rows)
        if pool_block is not None:  # (blocks of rows are no blocks of pooling windows)
            for_batch(xp, N, pool_block, per_item=F * ho * wo)
        return result(RowsCache(rows, band, weight, x.shape, stride, padding, bias is not None,
                                mask))
    # training: the columns of the whole batch are kept for backward; each thread fills and
    # multiplies its block of images
    convolve, columns = _convolver(x, w2d, bias, *geometry, relu, mask)
    per_image = columns.cols.shape[0] * columns.per_image  # numbers of one image's columns

    def block(lo: int, hi: int) -> None:
        convolve(x, out, lo, hi)
        if pool_block is not None:  # these images' pooling, while they are in this core's cache
            pool_block(lo, hi)

    for_batch(xp, N, block, per_item=per_image)
    return result(ConvCache(columns.cols, weight, x.shape, stride, padding, bias is not None,
                            columns.row_pitch, mask))


def conv2d_backward(dy: Any, cache: ConvCache, input_grad: bool = True):
    """Gradients of a convolution.

    **Backward:**
        ``dW = dY @ cols^T`` (summed over the batch and all output positions by the product),
        ``db = sum of dY over n, i, j``,
        ``dX = col2im(W^T @ dY)`` (each window's gradient added back where the window came from).

    Args:
        dy: dL/dy, shape (N, C_out, H_out, W_out).
        cache: from :func:`conv2d_forward`.
        input_grad: compute dX. False skips it (dx is None): the first layer of a network needs
            only dW and db, and dX is the most expensive part.

    Returns:
        ``(dx, dw, db)``: shapes (N, C_in, H, W), (C_out, C_in, kh, kw), (C_out,) (db is None
        without bias, dx is None with ``input_grad=False``).
    """
    pool_block = None
    if isinstance(cache, PooledCache):  # dy is dL/d(pooled output): the pooling's backward first
        from .pooling import maxpool2d_backward, maxpool2d_backward_blocks

        if isinstance(cache.conv, RowsCache) or backend_of(dy).device != "cpu":
            return conv2d_backward(maxpool2d_backward(dy, cache.pool), cache.conv, input_grad)
        # ... on each block of images, as they come (dy becomes the buffer the blocks fill)
        pool_block, dy = maxpool2d_backward_blocks(dy, cache.pool)
        cache = cache.conv
    if isinstance(cache, RowsCache):  # convolved by rows (conv_rows.py)
        return conv2d_rows_backward(dy, cache, input_grad)
    xp = backend_of(dy).xp
    cols, weight, (N, C, H, W), (sh, sw), (ph, pw), has_bias, pitch, mask = cache
    F, _, kh, kw = weight.shape
    ho, wo = dy.shape[2:]
    L = cols.shape[1] // N if N else 0  # columns per image

    # dY laid out like the columns: (C_out, N*L); for flat rows, rows of length W_pad with zeros
    # in the junk columns (a recycled buffer of this role only ever had its valid columns written)
    dy_rows = scratch(xp, f"conv.dy_rows.{wo}", (F, N, ho, pitch or wo), dy.dtype)
    dY = dy_rows.reshape(F, cols.shape[1])
    if input_grad:
        w2d_t = weight.reshape(F, C * kh * kw).T
        dcols = scratch(xp, "conv.dcols", cols.shape, cols.dtype)
        dx_pad = col2im_buffer(xp, (N, C, H, W), (ph, pw), pitch, cols.dtype)

    K = cols.shape[0]  # C_in*kh*kw: one row of columns per weight position

    def block(lo: int, hi: int) -> tuple:
        """The images lo..hi-1 (one thread): their dx, and their share of dW and db."""
        n = hi - lo
        if pool_block is not None:  # dL/d(conv or ReLU output) of these images, from the pooling
            pool_block(lo, hi)
        # (after a ReLU that ran as the forward's last step, its backward first: dy * mask)
        relu_backward_into(dy[lo:hi].transpose(1, 0, 2, 3),
                           None if mask is None else mask[lo:hi].transpose(1, 0, 2, 3),
                           dy_rows[:, lo:hi, :, :wo])
        c = slice(lo * L, hi * L)
        # dL/dW = sum over images and positions of dy (x) window
        if K < _FEW_ROWS:  # a stack of per-image products, then their sum (see _FEW_ROWS)
            dw = xp.matmul(dY[:, c].reshape(F, n, L).transpose(1, 0, 2),
                           cols[:, c].reshape(K, n, L).transpose(1, 2, 0)).sum(axis=0)
        else:  # ONE product sums over the block's images and positions
            dw = dY[:, c] @ cols[:, c].T
        # dL/db = sum of dy over images and positions (the junk columns are zeros)
        db = dY[:, c].sum(axis=1) if has_bias else None
        if input_grad:
            # dL/dcols = W^T @ dY: each window's share of the input gradient
            xp.matmul(w2d_t, dY[:, c], out=dcols[:, c])
            col2im_block(dcols, dx_pad, (N, C, H, W), (kh, kw), (sh, sw), (ho, wo), pitch,
                         lo, hi)
        return dw, db

    # one block per thread; the blocks' shares of dW and db are added in block order
    dw, db = add_blocks(for_batch(xp, N, block, per_item=K * L))
    dw = dw.reshape(weight.shape)
    if not input_grad:
        return None, dw, db
    return dx_pad[:, :, ph : ph + H, pw : pw + W], dw, db


def conv2d_backward_parts(dy: Any, cache: Any) -> tuple | None:
    """The backward of :func:`conv2d_backward` (with dx) as two independent parts,
    ``(input_part, weight_part)``: ``input_part()`` returns dx, ``weight_part()`` returns
    ``(dw, db)``. Neither needs the other, so they may run on two threads at once: a network's
    backward computes dx (the layer below is waiting for it) while a worker computes dW and db
    (nothing needs them before the optimizer's step). Returns None where this convolution's
    backward does not come in parts (only the convolution by rows does so far), where the batch
    is too small for a second thread to pay (``threads.worth_splitting``) and on the GPU (which
    needs no host threads); then call :func:`conv2d_backward`.
    """
    conv = cache.conv if isinstance(cache, PooledCache) else cache
    if not (isinstance(conv, RowsCache) and backend_of(dy).device == "cpu"
            and worth_splitting(conv.rows.size * conv.weight.shape[3])):
        return None  # (decided first: conv2d_backward then runs the pooling's backward once)
    if isinstance(cache, PooledCache):
        from .pooling import maxpool2d_backward

        dy = maxpool2d_backward(dy, cache.pool)
    return conv2d_rows_backward_parts(dy, conv)


# dW of columns with fewer rows than this (C_in*kh*kw: a first layer on 1-3 channels) is a stack
# of per-image products. Measured (OpenBLAS, 2 cores): the ONE 2-D product with so few rows and a
# long inner dimension does not run side by side in two threads (together 0.9x the work of one
# thread, not 2x), a stack of products does (conv 1->6 5x5, batch 64, backward: about 0.6x the
# time, benchmarks/ab_conv.py).
_FEW_ROWS = 64


def col2im_buffer(xp: Any, x_shape: tuple, padding: tuple, row_pitch: int, dtype: Any) -> Any:
    """The padded input gradient that :func:`col2im_block` adds into (with the spare row for
    flat rows); each block zeroes its own images first."""
    N, C, H, W = x_shape
    ph, pw = padding
    hp, wp = H + 2 * ph, W + 2 * pw
    return scratch(xp, "conv.dx", (N, C, hp + (1 if row_pitch else 0), wp), dtype)


def col2im_block(dcols: Any, dx_pad: Any, x_shape: tuple, kernel: tuple, stride: tuple,
                 out_hw: tuple, row_pitch: int, lo: int, hi: int) -> None:
    """The adjoint of im2col for images lo..hi-1: add each column entry back onto the input pixel
    it came from.

    ``dcols`` has the columns' layout (C*kh*kw, N*L); ``dx_pad`` (from :func:`col2im_buffer`) is
    the padded input gradient (N, C, H_pad (+1), W_pad); only its images lo..hi-1 are written.
    """
    N, C = x_shape[:2]
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    wp = dx_pad.shape[3]
    dx_pad[lo:hi] = 0
    if hi <= lo:  # no images (an empty batch)
        return
    if row_pitch:
        # flat rows: offset (u, v) touches the contiguous slice [u*W_pad + v, ... + L) of every
        # (image, channel); with the spare row, as in im2col, slices of two channels never meet
        L = ho * wp
        dcols = dcols.reshape(C, kh, kw, N, L)[:, :, :, lo:hi]
        # each (image, channel) of dx_pad as one flat row, channels first like the columns' rows
        dx_rows = dx_pad[lo:hi].reshape(hi - lo, C, -1).transpose(1, 0, 2)
        for u in range(kh):
            for v in range(kw):
                start = u * wp + v
                dx_rows[:, :, start : start + L] += dcols[:, u, v]
    else:
        # plain: offset (u, v) touches the strided slice x_pad[:, :, u::s_h, v::s_w]
        dcols = dcols.reshape(C, kh, kw, N, ho, wo)[:, :, :, lo:hi]
        dx_t = dx_pad[lo:hi].transpose(1, 0, 2, 3)  # (C, n, H_pad, W_pad), like the columns' rows
        for u in range(kh):
            for v in range(kw):
                dx_t[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw] += dcols[:, u, v]
