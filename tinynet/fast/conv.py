"""The fast engine's 2-D convolution: the same numbers as ``tinynet/functional/conv.py``.

The math and the shapes are in the reference kernel's docstring; here is only what makes it fast.

* **Columns with the long axis last** (C_in*kh*kw, N*L): one ROW per weight position, so that the
  copies and the sums run along long contiguous rows, and ``Y = W @ cols`` is one product.
* **Flat rows** (stride 1): number the padded input's pixels row by row, p = h*W_pad + w. Weight
  (u, v) meets output pixel (i, j) at pixel u*W_pad + v + (i*W_pad + j), so for one image each row
  of cols is ONE contiguous slice of the flat input, L = H_out*W_pad long. The price: the columns
  with j >= W_out are junk (windows that wrap around a row end); their outputs are dropped, their
  gradients are zero. (The padded input has one spare zero row, so the last slice stays inside.)
  Any other stride: the plain layout, L = H_out*W_out.
* **Same rows** (stride 1 and a "same" padding, 2*p = k - 1, so the output is the input's size:
  every 3x3 convolution with padding 1): flat rows WITHOUT the padding columns. The rows are W
  wide, only the padding rows are stored, so L = H*W and there are no junk columns (flat rows
  compute W_pad columns per row for W: 12.5% more arithmetic on 14x14, 20% on 8x8). A window
  that hangs over the left or right edge then reads the last pixels of the row above (or the
  first of the row below) instead of the padding's zeros: those column entries, known by their
  position (j < p - v or j >= W - (v - p)), are set to 0 after the copy, and in backward their
  gradients are dropped before col2im's adds. The copies run over whole images (H*W numbers),
  and col2im adds straight into dx (what falls on the padding rows is cut off).
* **Images first** for a first layer's few columns rows (C_in*kh*kw < 64, same rows, training):
  the columns are (N, C_in*kh*kw, H*W), one matrix per image, so that ``W @ cols`` is a stack of
  products that writes straight into y (N, C_out, H, W), and backward reads dy as it is: no
  (C_out, N*H*W) copies of y and dy (12.8 MB each for the BN network's conv1) are written.
* **col2im by kh*kw slice adds**: for one offset (u, v) the pixels touched form one shifted
  contiguous slice (flat rows) or one strided slice (plain): no scatter (np.add.at is slow).
* **col2im by offset** (same rows, training by slices: ``col2im_by_offset``): dcols's rows are
  ordered (u, v, c), so each offset's block is one contiguous (C_in, n*H*W) array; with the
  entries whose window lies off the image zeroed, every other entry lands inside its own image
  and channel, and each offset is ONE flat 1-D add of the whole block. NumPy runs an add of
  many strided rows about 4x slower than the same numbers as one flat array.
* **By rows** for narrow images in training (``conv_rows.py``): copies whole input rows and
  multiplies them by a banded weight matrix: kh copies per input number instead of kh*kw.
* **The bias (and a fused ReLU) on Y's long rows** before one reordering copy: 2-3x faster than
  through the reordered view's short rows.
* **Epilogues** for ``tinynet.fuse``: ``relu=True`` applies a ReLU to each block while it is in
  the cache (backward starts with dY * mask as it reorders dY anyway); ``pool=`` max-pools each
  thread's block of images right after convolving them.
* **Threads**: the images of a batch are independent, so forward and backward run one block of
  images per thread (``threads.for_batch``); the blocks' shares of dW and db are added at the end.
* **Evaluation** (``tinynet.no_grad()``) keeps no columns, so each thread convolves its images a
  slice at a time through small buffers that stay in its core's cache.
* **Training by slices** (``SlicedCache``, columns of 64+ rows): forward runs as evaluation does
  and keeps only the input; backward makes each slice's columns again, in the cache, and adds
  that slice's dW, db and dx at once. For a stride-1 layer with C_out <= C_in, dx is the
  convolution of dy with the flipped kernel (no col2im); where flat rows would be more than 15%
  junk columns (8x8 images, and no same rows), the plain layout.
* **Winograd's F(4x4, 3x3)** for 3x3 convolutions with stride 1 and padding 1, 32+ channels in
  and out, on images of 8+ pixels a side that 4x4 blocks cover with at most 35% to spare
  (``winograd.py``; ``_winograd_pays``): 4x fewer multiplications, in training and evaluation.
* **Recycled buffers** (``_recycle.scratch``): fresh multi-megabyte arrays cost page faults.
* **Product buffers off 2 KB** (``_matrix``): an operand whose rows are a multiple of 2 KB long
  (1024 float32: every 32x32 image) gets rows 64 bytes wider; OpenBLAS ran such products 10-25%
  slower (cache sets).

Measurements behind each choice: ``docs/speed.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._utils import conv_output_size, pair
from ..backend import backend_of, is_grad_enabled
from ._recycle import scratch
from .activation import relu_backward_into, relu_in_place
from .conv_rows import RowsCache, conv2d_rows_backward, rows_convolver
from .pooling import maxpool2d_backward, maxpool2d_backward_blocks, maxpool2d_forward_blocks
from .threads import add_blocks, for_batch
from .winograd import WinogradCache, conv3x3_backward, conv3x3_forward

# inside no_grad, images per slice: one slice's columns hold about this many numbers (2 MB in
# float32: small enough to stay in a core's cache)
_EVAL_COLS_ELEMENTS = 1 << 19

# Convolve by rows (conv_rows.py), in training, when the padded image is at most this many kernels
# wide: that method does W_pad/kw times the arithmetic of im2col but copies kh numbers per input
# number instead of kh*kw (a gain at 12 wide with a 5x5 kernel, none at 28 wide).
_ROWS_MAX_WIDTH = 3


# Training by slices (see SlicedCache) for columns of at least this many rows (C_in*kh*kw); a first
# layer on 1-3 channels keeps its whole-batch columns and its dW per image (see _FEW_ROWS).
_SLICED_MIN_ROWS = 64
_SLICED = True  # (a switch for benchmarks/ab_nets.py)
_DX_BY_CONV = True  # (a switch for benchmarks/ab_nets.py: see _sliced_backward)
_SAME_ROWS = True  # (a switch for benchmarks/ab_nets.py: see columns_for)
_SPACED_ROWS = True  # (a switch for benchmarks/ab_nets.py: see _matrix)
_IMAGES_FIRST = True  # (a switch for benchmarks/ab_nets.py: see columns_for)
_COL2IM_BY_OFFSET = True  # (a switch for benchmarks/ab_nets.py: see col2im_by_offset)
_WINOGRAD = True  # (a switch for benchmarks/ab_nets.py: see _winograd_pays)
# Winograd's F(4x4, 3x3) (winograd.py) for 3x3 convolutions with at least this many input and
# output channels (see _winograd_pays)
_WINOGRAD_MIN_CHANNELS = 32
# ... and images whose 4x4 blocks cover at most this many times their pixels (14x14: 16x16 =
# 1.31 times)
_WINOGRAD_COVER = 1.35


# Training by slices takes the plain layout (no junk columns, strided copies) when more than this
# share of the flat rows' columns would be junk (W_pad - W_out of every W_pad). Forward + backward
# at batch 128, plain / flat: 0.92 for 128->128 on 8x8 (20% junk), 0.95 for 64->128 on 8x8, but
# 1.05 on 16x16 (11%), 1.07 on 14x14 (12.5%), 1.27 on 32x32 (6%). Evaluation too: the course
# network's conv2 (5x5 on 12x12, 33% junk) with its ReLU and pooling at batch 1000, plain / flat
# 0.884 and 0.907 on the sixth issue-16 session's Zen 1 (in-process A/B, one-off)
_PLAIN_JUNK = 0.15


def _matrix(xp: Any, role: str, rows: int, cols: int, dtype: Any) -> Any:
    """A (rows, cols) buffer for an operand of a matrix product (``_recycle.scratch``), its rows
    spaced a little wider than ``cols`` when their length is a multiple of 2 KB: rows 2 KB apart
    meet in the same sets of the cache, and OpenBLAS's products then run 10-25% slower (1 thread,
    (64, 288) @ (288, 1024): 79 GFLOP/s, 92 with the rows 1040 numbers apart; W^T @ dY: 71 vs
    96). Only the first ``cols`` numbers of each row are handed out (a view)."""
    return scratch(xp, role, (rows, _pitch(xp, cols, dtype)), dtype)[:, :cols]


def _pitch(xp: Any, cols: int, dtype: Any) -> int:
    """The row length of a :func:`_matrix` buffer of ``cols`` columns."""
    itemsize = xp.dtype(dtype).itemsize
    spaced = _SPACED_ROWS and cols and (cols * itemsize) % 2048 == 0
    return cols + 64 // itemsize if spaced else cols


def _flat_pays(out_width: int, padded_width: int) -> bool:
    """Flat rows (junk columns, contiguous copies) rather than the plain layout, by slices?"""
    return (padded_width - out_width) <= _PLAIN_JUNK * padded_width


def _winograd_pays(x: Any, weight: Any, stride: tuple, padding: tuple) -> bool:
    """Convolve by Winograd's F(4x4, 3x3) (winograd.py) rather than by im2col columns?

    On the CPU, for 3x3 kernels, stride 1, padding 1, 32+ channels in and out, and images of 8+
    pixels a side that 4x4 blocks cover with at most 35% to spare (8x8, 16x16, 32x32, 14x14): the
    layers where ``benchmarks/probe_winograd.py`` and ``benchmarks/ab_nets.py`` measured it
    faster, forward + backward, than this file's im2col (docs/speed.md)."""
    N, C, H, W = x.shape
    F, _, kh, kw = weight.shape
    return (_WINOGRAD and (kh, kw) == (3, 3) and stride == (1, 1) and padding == (1, 1)
            and N > 0 and min(H, W) >= 8 and _covered(H) * _covered(W) <= _WINOGRAD_COVER * H * W
            and min(C, F) >= _WINOGRAD_MIN_CHANNELS and backend_of(x).device == "cpu")


def _covered(side: int) -> int:
    """The pixels that Winograd's 4x4 blocks cover along a side (the last may hang over)."""
    return -(-side // 4) * 4


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
    row_pitch: int  # W_pad for the flat-rows layout (stride 1), W for same rows, 0 for plain
    same: bool  # the same-rows layout (see columns_for)
    images_first: bool  # cols is (N, C_in*kh*kw, L) (see columns_for)
    relu_mask: Any = None  # [y > 0] (N, C_out, H_out, W_out) when a ReLU ran as the last step


class SlicedCache(NamedTuple):
    """Training by slices: forward convolves a slice of images at a time through cache-sized
    columns, as evaluation does, and keeps only the INPUT; backward makes each slice's columns
    again (one copy, in the cache) and computes its share of dW, db and dx right away. No
    batch-sized columns are written, kept or read back from memory (for the BN network's conv2,
    33 MB of them)."""

    x: Any  # the input (N, C_in, H, W), as it was given (not copied)
    weight: Any  # (C_out, C_in, kh, kw)
    stride: tuple
    padding: tuple
    has_bias: bool
    relu_mask: Any = None  # [y > 0] (N, C_out, H_out, W_out) when a ReLU ran as the last step


class PooledCache(NamedTuple):
    """A convolution (with its ReLU) and the max pooling after it, run as one call
    (``conv2d_forward(..., pool=...)``): what each one's backward needs."""

    conv: Any  # ConvCache or RowsCache
    pool: Any  # MaxPoolCache


class _Columns(NamedTuple):
    """The columns of a batch, filled a block of images at a time by :func:`fill_columns`."""

    cols: Any  # (C*kh*kw, N*L); image n owns the columns n*L ... n*L + L - 1 (or (N, C*kh*kw, L))
    per_image: int  # L
    row_pitch: int  # W_pad for flat rows (stride 1), 0 for the plain layout
    x_pad: Any  # the padded input the windows are read from
    windows: Any  # strided view (C, kh, kw, N, ...) of x_pad, shaped like cols row by row
    padding: tuple
    same: bool  # same rows: no padding columns, the wrapped entries zeroed (see columns_for)
    by_weight: Any  # cols viewed as (C, kh, kw, N, L) (plain: (C, kh, kw, N, H_out, W_out))
    images_first: bool  # cols is (N, C*kh*kw, L): one matrix per image


def columns_for(x: Any, kernel: tuple, stride: tuple, padding: tuple, out_hw: tuple,
                tag: str = "", flat: bool = True, images_first: bool = False) -> _Columns:
    """Buffers for the columns of an input batch (N, C, H, W); nothing is copied yet.

    ``cols[(c, u, v), n*L + q] = x_pad[n, c, i*s_h + u, j*s_w + v]`` for output pixel (i, j) at
    column q of image n: ``q = i*W_pad + j``, ``L = H_out*W_pad`` for stride 1 (flat rows, with
    junk columns j >= W_out), ``q = i*W_out + j``, ``L = H_out*W_out`` otherwise. With stride 1
    and an output of the input's size, same rows (whatever ``flat`` says): ``q = i*W + j``,
    ``L = H*W``, no junk columns; with ``images_first`` too (same rows only), cols is
    (N, C*kh*kw, L): ``cols[n, (c, u, v), q]``. ``tag`` names buffers of another role (a second
    set of columns alive at the same time).
    """
    backend = backend_of(x)
    xp = backend.xp
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    hp, wp = H + 2 * ph, W + 2 * pw
    # (the role names the padding: every user of one buffer writes the same inside, so the
    # borders and the spare row of a recycled buffer are still 0)
    if (sh, sw) == (1, 1) and (ho, wo) == (H, W) and _SAME_ROWS:
        # same rows: each channel is H_pad rows of W (the padding rows only), and the whole
        # batch one flat buffer with p_w spare zeros at each end. Weight (u, v) meets output
        # pixel q = i*W + j at flat pixel u*W + (v - p_w) + q of its channel: one contiguous
        # slice of L = H*W per (image, channel), which starts p_w - v numbers early or ends
        # v - p_w numbers late; the entries it reads across a row end are zeroed by
        # fill_columns (the first/last p_w - v ... entries of each row: see _zero_wrapped)
        per_channel = hp * W
        # (the role names the geometry too: two batches of other shapes may need flat buffers of
        # one length, with their padding rows in other places)
        flat_buf = scratch(xp, f"conv.x_same{tag}.{ph}.{pw}.{C}x{hp}x{W}",
                           (N * C * per_channel + 2 * pw,), x.dtype)
        x_pad = flat_buf[pw : pw + N * C * per_channel].reshape(N, C, hp, W)
        L, pitch = H * W, W
        item = flat_buf.itemsize
        # windows[c, u, v, n, q] = flat_buf[n*C*P + c*P + u*W + v + q] (P = H_pad*W), that is
        # x_pad_flat[n, c, u*W + v - p_w + q]
        windows = backend.as_strided(
            flat_buf, shape=(C, kh, kw, N, L),
            strides=(per_channel * item, W * item, item, C * per_channel * item, item))
        if images_first and _IMAGES_FIRST:
            cols = scratch(xp, f"conv.cols_by_image{tag}", (N, C * kh * kw, L), x.dtype)
        else:
            images_first = False
            cols = _matrix(xp, f"conv.cols{tag}", C * kh * kw, N * L, x.dtype)
        return _Columns(cols, L, pitch, x_pad, windows, padding, True,
                        _by_weight(cols, windows.shape, images_first), images_first)
    if (sh, sw) == (1, 1) and flat:
        # flat rows: the padded input with one spare zero row, so that the slice of the last
        # offset, [(kh-1)*W_pad + kw-1, ... + H_out*W_pad), stays inside its own channel
        x_pad = scratch(xp, f"conv.x_pad{tag}.{ph}.{pw}", (N, C, hp + 1, wp), x.dtype)
        L, pitch = ho * wp, wp
        s0, s1, s2, s3 = x_pad.strides
        # windows[c, u, v, n, q] = x_pad_flat[n, c, u*W_pad + v + q]
        windows = backend.as_strided(x_pad, shape=(C, kh, kw, N, L),
                                     strides=(s1, s2, s3, s0, s3))
    else:
        x_pad = scratch(xp, f"conv.x_pad_plain{tag}.{ph}.{pw}", (N, C, hp, wp), x.dtype)
        L, pitch = ho * wo, 0
        s0, s1, s2, s3 = x_pad.strides
        # plain: windows[c, u, v, n, i, j] = x_pad[n, c, i*s_h + u, j*s_w + v]
        windows = backend.as_strided(
            x_pad, shape=(C, kh, kw, N, ho, wo), strides=(s1, s2, s3, s0, s2 * sh, s3 * sw)
        )
    cols = _matrix(xp, f"conv.cols{tag}", C * kh * kw, N * L, x.dtype)
    return _Columns(cols, L, pitch, x_pad, windows, padding, False,
                    _by_weight(cols, windows.shape, False), False)


def _by_weight(cols: Any, shape: tuple, images_first: bool) -> Any:
    """Columns (C*kh*kw, N*L), or (N, C*kh*kw, L) images first, viewed as ``shape`` =
    (C, kh, kw, N, ...): one axis per weight position, then the image, then its pixels."""
    if not images_first:
        return cols.reshape(shape)
    C, kh, kw, N = shape[:4]
    pixel_axes = tuple(range(4, len(shape)))
    return cols.reshape((N, C, kh, kw) + shape[4:]).transpose((1, 2, 3, 0) + pixel_axes)


def fill_columns(columns: _Columns, x: Any, lo: int, hi: int) -> None:
    """im2col for images lo..hi-1: pad them, then copy their windows into their columns."""
    ph, pw = columns.padding
    H, W = x.shape[2:]
    if columns.same:  # (whole rows: one contiguous run per image and channel)
        columns.x_pad[lo:hi, :, ph : ph + H] = x[lo:hi]
    else:
        columns.x_pad[lo:hi, :, ph : ph + H, pw : pw + W] = x[lo:hi]
    # the one copy of im2col
    columns.by_weight[:, :, :, lo:hi] = columns.windows[:, :, :, lo:hi]
    if columns.same:  # the entries read across a row end are the padding's zeros
        _zero_wrapped(columns.by_weight, W, pw, lo, hi)


def _zero_wrapped(by_weight: Any, width: int, pw: int, lo: int, hi: int) -> None:
    """Same rows: set to 0 the entries of images lo..hi-1 whose window hangs over the left or
    right edge at that weight position (``by_weight``: columns viewed as (C, kh, kw, N, H*W)).

    Weight column v reads pixel column j + v - p_w: left of the image for j < p_w - v, right of
    it for j >= W - (v - p_w). In forward these entries hold the row above's or below's pixels
    instead of zeros; in backward (dcols) their gradients belong to no pixel.
    """
    C, kh, kw, N, L = by_weight.shape
    by_pixel = by_weight.reshape(C, kh, kw, N, L // width, width)  # (a view: the last axis split)
    for v in range(kw):
        if v < pw:
            by_pixel[:, :, v, lo:hi, :, : pw - v] = 0
        elif v > pw:
            by_pixel[:, :, v, lo:hi, :, max(0, width - (v - pw)) :] = 0


def _pixels(y2d: Any, n: int, out_hw: tuple, row_pitch: int) -> Any:
    """The (C_out, N*L) product as an (N, C_out, H_out, W_out) view (junk columns dropped)."""
    ho, wo = out_hw
    f = y2d.shape[0]
    if row_pitch:
        # flat rows: pixel (i, j) of image n sits at column n*L + i*W_pad + j
        return y2d.reshape(f, n, ho, row_pitch)[:, :, :, :wo].transpose(1, 0, 2, 3)
    return y2d.reshape(f, n, ho, wo).transpose(1, 0, 2, 3)


def _convolver(x: Any, w2d: Any, bias: Any, kernel: tuple, stride: tuple, padding: tuple,
               out_hw: tuple, relu: bool = False, mask: Any = None, tag: str = "",
               flat: bool = True, images_first: bool = False) -> tuple:
    """Buffers for convolving a batch of x's shape, and ``convolve(x_b, out_b, lo, hi)``, which
    writes ``out_b[lo:hi] = conv(x_b[lo:hi]) + b`` for such a batch x_b (pad, im2col, product,
    reorder; the whole batch by default), then ``max(., 0)`` with ``relu`` (and ``mask[lo:hi]``,
    if given, the ReLU's mask). Returns ``(convolve, columns)``. With ``images_first`` (same rows
    only, see columns_for) out_b must be C-contiguous: the products write into it.
    """
    xp = backend_of(x).xp
    n, f = x.shape[0], w2d.shape[0]
    columns = columns_for(x, kernel, stride, padding, out_hw, tag, flat, images_first)
    cols, L = columns.cols, columns.per_image
    bias_column = None if bias is None else bias.reshape(f, 1)
    if columns.images_first:
        def convolve(x_b: Any, out_b: Any, lo: int = 0, hi: Any = None) -> None:
            hi = x_b.shape[0] if hi is None else hi
            fill_columns(columns, x_b, lo, hi)
            # Y = W @ cols, one product per image, straight into y (no junk: L = H_out*W_out)
            y_b = out_b[lo:hi].reshape(hi - lo, f, L)
            xp.matmul(w2d, cols[lo:hi], out=y_b)
            if bias is not None:
                y_b += bias_column
            if relu:
                relu_in_place(y_b)
            if mask is not None:  # the ReLU's mask [y > 0], for backward
                xp.greater(out_b[lo:hi], 0, out=mask[lo:hi])

        return convolve, columns
    y2d = _matrix(xp, f"conv.y{tag}", f, cols.shape[1], cols.dtype)
    y = _pixels(y2d, n, out_hw, columns.row_pitch)

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
    """``tinynet.functional.conv2d_forward``, fast; the same ``(y, cache)`` contract.

    ``relu=True`` returns ``max(conv(x), 0)``; ``pool=(kernel, stride)`` then max-pools that
    (no padding) and returns the pooled output: the epilogues that ``tinynet.fuse`` uses. The
    cache is None inside ``tinynet.no_grad()`` (nothing is kept for a backward).
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
    out = scratch(xp, "conv.out", (N, F, ho, wo), x.dtype)
    mask = scratch(xp, "conv.relu_mask", (N, F, ho, wo), xp.bool_) if relu and training else None
    by_rows = training and _by_rows((kh, kw), wp)
    geometry = ((kh, kw), stride, padding, (ho, wo))
    pool_block = None
    if pool is not None:  # (buffers only: each block is pooled once it is convolved)
        pool_block, pooled, pool_cache = maxpool2d_forward_blocks(out, pool[0], pool[1], 0)

    if _winograd_pays(x, weight, stride, padding):
        cache = conv3x3_forward(x, weight, bias, out, relu, mask, pool_block, keep=training)
        if pool is None:
            return out, cache
        return pooled, (None if cache is None else PooledCache(cache, pool_cache))
    per_image = C * kh * kw * ho * wp
    sliced = training and not by_rows and _SLICED and C * kh * kw >= _SLICED_MIN_ROWS \
        and backend_of(x).device == "cpu"
    if not training or sliced:
        # evaluation (and training by slices): no columns are kept, so each thread convolves its
        # images a slice at a time through buffers for one slice (on the GPU the whole batch is
        # one slice)
        step = max(1, _EVAL_COLS_ELEMENTS // per_image) if backend_of(x).device == "cpu" \
            else max(N, 1)

        def block(lo: int, hi: int) -> None:  # one thread's images
            convolvers = {}  # slice size -> its convolver (the last slice may be shorter)
            for n0 in range(lo, hi, step):
                n1 = min(n0 + step, hi)
                if n1 - n0 not in convolvers:
                    # (the plain layout where flat rows would be mostly junk)
                    convolvers[n1 - n0] = _convolver(x[n0:n1], w2d, bias, *geometry, relu,
                                                     flat=_flat_pays(wo, wp))[0]
                convolvers[n1 - n0](x[n0:n1], out[n0:n1])
                if mask is not None:  # the ReLU's mask [y > 0], for backward
                    xp.greater(out[n0:n1], 0, out=mask[n0:n1])
            if pool_block is not None:
                pool_block(lo, hi)

        for_batch(xp, N, block, per_item=per_image)
        cache = SlicedCache(x, weight, stride, padding, bias is not None, mask) if sliced \
            else None
        if pool is None:
            return out, cache
        return pooled, (None if cache is None else PooledCache(cache, pool_cache))
    if by_rows:  # training by rows: R and T are kept for backward
        convolve, rows, band = rows_convolver(x, weight, bias, *geometry, relu, mask)
        convolve(x, out)  # (its threads split the output rows)
        cache = RowsCache(rows, band, weight, x.shape, stride, padding, bias is not None, mask)
        if pool_block is not None:  # (blocks of rows are no blocks of pooling windows)
            for_batch(xp, N, pool_block, per_item=F * ho * wo)
    else:
        # training: the columns of the whole batch are kept for backward; each thread fills and
        # multiplies its block of images, then pools it while it is in its core's cache
        # (few rows of columns: images first, where the layout allows it; see columns_for)
        convolve, columns = _convolver(x, w2d, bias, *geometry, relu, mask,
                                       images_first=C * kh * kw < _FEW_ROWS)

        def block(lo: int, hi: int) -> None:
            convolve(x, out, lo, hi)
            if pool_block is not None:
                pool_block(lo, hi)

        for_batch(xp, N, block, per_item=C * kh * kw * columns.per_image)
        cache = ConvCache(columns.cols, weight, x.shape, stride, padding, bias is not None,
                          columns.row_pitch, columns.same, columns.images_first, mask)
    if pool is None:
        return out, cache
    return pooled, PooledCache(cache, pool_cache)


def conv2d_backward(dy: Any, cache: Any, input_grad: bool = True):
    """``tinynet.functional.conv2d_backward``, fast: ``(dx, dw, db)`` for a cache of
    :func:`conv2d_forward` (a ConvCache, a RowsCache, or a PooledCache whose dy is dL/d(pooled
    output)). With a fused ReLU, dy is dL/d(the ReLU's output) and dy * mask comes first.
    """
    pool_block = None
    if isinstance(cache, PooledCache):  # dy is dL/d(pooled output): the pooling's backward first
        if isinstance(cache.conv, RowsCache) or backend_of(dy).device != "cpu":
            return conv2d_backward(maxpool2d_backward(dy, cache.pool), cache.conv, input_grad)
        # ... on each block of images, as they come (dy becomes the buffer the blocks fill)
        pool_block, dy = maxpool2d_backward_blocks(dy, cache.pool)
        cache = cache.conv
    if isinstance(cache, RowsCache):  # convolved by rows (conv_rows.py)
        return conv2d_rows_backward(dy, cache, input_grad)
    if isinstance(cache, WinogradCache):  # by Winograd's F(4x4, 3x3) (winograd.py)
        return conv3x3_backward(dy, cache, input_grad, pool_block)
    if isinstance(cache, SlicedCache):
        return _sliced_backward(dy, cache, input_grad, pool_block)
    if cache.images_first:
        return _images_first_backward(dy, cache, input_grad, pool_block)
    xp = backend_of(dy).xp
    cols, weight, (N, C, H, W), (sh, sw), (ph, pw), has_bias, pitch, same, _, mask = cache
    F, _, kh, kw = weight.shape
    ho, wo = dy.shape[2:]
    L = cols.shape[1] // N if N else 0  # columns per image

    # dY laid out like the columns: (C_out, N*L); for flat rows, rows of length W_pad with zeros
    # in the junk columns (a recycled buffer of this role only ever had its valid columns written)
    dY = _matrix(xp, f"conv.dy_rows.{wo}.{pitch}", F, cols.shape[1], dy.dtype)
    dy_rows = dY.reshape(F, N, ho, pitch or wo)
    if input_grad:
        w2d_t = weight.reshape(F, C * kh * kw).T
        dcols = _matrix(xp, "conv.dcols", *cols.shape, cols.dtype)
        dx_pad = col2im_buffer(xp, (N, C, H, W), (ph, pw), pitch, cols.dtype, same)

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
                         lo, hi, same)
        return dw, db

    # one block per thread; the blocks' shares of dW and db are added in block order
    dw, db = add_blocks(for_batch(xp, N, block, per_item=K * L))
    dw = dw.reshape(weight.shape)
    if not input_grad:
        return None, dw, db
    return _inside(dx_pad, (ph, pw), (H, W), same), dw, db


def _images_first_backward(dy: Any, cache: ConvCache, input_grad: bool, pool_block: Any) -> tuple:
    """Backward of a convolution whose columns are images first, (N, C_in*kh*kw, L) (same rows,
    no junk: L = H*W): each image's dy (C_out, L) is a matrix as it is, so the products read dy
    (or dy * mask) without a reordering copy."""
    xp = backend_of(dy).xp
    cols, weight, (N, C, H, W), stride, padding, has_bias, pitch, _, _, mask = cache
    F, _, kh, kw = weight.shape
    K, L = cols.shape[1], cols.shape[2]
    as_it_is = mask is None and dy.flags.c_contiguous  # (a pooling's backward fills dy itself)
    if as_it_is:
        dY = dy.reshape(N, F, L)  # (a view)
    else:  # dy * mask, or the pooling's backward, into a buffer
        dY = scratch(xp, "conv.dy_by_image", (N, F, L), dy.dtype)
    if input_grad:
        w2d_t = weight.reshape(F, K).T
        dcols = scratch(xp, "conv.dcols_by_image", cols.shape, cols.dtype)
        dx_pad = col2im_buffer(xp, (N, C, H, W), padding, pitch, cols.dtype, True)

    def block(lo: int, hi: int) -> tuple:
        """The images lo..hi-1 (one thread): their dx, and their share of dW and db."""
        if pool_block is not None:  # dL/d(conv or ReLU output) of these images, from the pooling
            pool_block(lo, hi)
        if not as_it_is:  # (after a ReLU that ran as the forward's last step: dy * mask)
            relu_backward_into(dy[lo:hi], None if mask is None else mask[lo:hi],
                               dY[lo:hi].reshape(dy[lo:hi].shape))
        d = dY[lo:hi]
        # dL/dW: one product per image, (C_out, L) @ (L, K), then their sum
        dw = xp.matmul(d, cols[lo:hi].transpose(0, 2, 1)).sum(axis=0)
        db = d.sum(axis=(0, 2)) if has_bias else None
        if input_grad:  # dL/dcols = W^T @ dY per image, then col2im
            xp.matmul(w2d_t, d, out=dcols[lo:hi])
            col2im_block(dcols, dx_pad, (N, C, H, W), (kh, kw), stride, (H, W), pitch, lo, hi,
                         True, True)
        return dw, db

    dw, db = add_blocks(for_batch(xp, N, block, per_item=K * L))
    dw = dw.reshape(weight.shape)
    if not input_grad:
        return None, dw, db
    return _inside(dx_pad, padding, (H, W), True), dw, db


def _sliced_backward(dy: Any, cache: SlicedCache, input_grad: bool, pool_block: Any) -> tuple:
    """Backward of a convolution trained by slices (see :class:`SlicedCache`): each thread
    makes the columns of its images a slice at a time, in the cache, and adds that slice's share
    of dW and db, and writes its dx, while the columns are there."""
    xp = backend_of(dy).xp
    x, weight, stride, padding, has_bias, mask = cache
    N, C, H, W = x.shape
    F, _, kh, kw = weight.shape
    (ph, pw), (ho, wo) = padding, dy.shape[2:]
    K = C * kh * kw
    w2d_t = weight.reshape(F, K).T
    per_image = K * ho * (W + 2 * pw)
    step = max(1, _EVAL_COLS_ELEMENTS // per_image)  # (2^18..2^22 tried: 2^19 is best)
    dx = scratch(xp, "conv.sliced_dx", x.shape, dy.dtype) if input_grad else None

    # stride 1, padding <= kernel - 1 and C_out <= C_in: dx is the convolution of dy, padded by
    # kernel-1-padding, with the flipped kernel, in and out channels swapped (im2col of dy and
    # one product instead of W^T @ dY and col2im's kh*kw adds). Backward at batch 128, 2 threads:
    # 0.78x the time for 32->32 on 32x32, 0.90x for 64->64 on 16x16, 0.94x for 128->128 on 8x8,
    # but 1.02-1.03x for 32->64 (dy's columns are then twice the input's): hence C_out <= C_in
    w_flipped = None
    if (input_grad and _DX_BY_CONV and stride == (1, 1) and ph <= kh - 1 and pw <= kw - 1
            and F <= C):
        w_flipped = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        w_flipped = w_flipped.reshape(C, F * kh * kw)
    # otherwise, for a "same" convolution: col2im by offset, W^T's rows ordered (u, v, c), so
    # that dcols holds one (C_in, n*L) block per weight position
    w_by_offset_t = None
    if (input_grad and w_flipped is None and _COL2IM_BY_OFFSET and stride == (1, 1)
            and (ho, wo) == (H, W)):
        w_by_offset_t = xp.ascontiguousarray(weight.transpose(2, 3, 1, 0))
        w_by_offset_t = w_by_offset_t.reshape(kh * kw * C, F)

    def block(lo: int, hi: int) -> tuple:
        if pool_block is not None:  # dL/d(conv or ReLU output) of these images, from the pooling
            pool_block(lo, hi)
        dw = db = None
        buffers = {}  # slice size -> its buffers (made once per call: a buffer still held when
        # the next slice asks for one of its role would be a fresh array, page faults and all)
        for n0 in range(lo, hi, step):
            n1 = min(n0 + step, hi)
            n = n1 - n0
            if n not in buffers:
                columns = columns_for(x[n0:n1], (kh, kw), stride, padding, (ho, wo),
                                      flat=_flat_pays(wo, W + 2 * pw))
                pitch = columns.row_pitch
                # dY laid out like the columns (zeros in the junk columns: only the valid ones
                # of a buffer of this role are ever written)
                dY = _matrix(xp, f"conv.dy_rows.{wo}.{pitch}", F, columns.cols.shape[1], dy.dtype)
                if not input_grad:
                    extra = None
                elif w_flipped is not None:  # dx by a convolution of dy (buffers of its own)
                    g = scratch(xp, "conv.sliced_g", (n, F, ho, wo), dy.dtype) \
                        if mask is not None else None
                    extra = (g, _convolver(dy[n0:n1], w_flipped, None, (kh, kw), (1, 1),
                                           (kh - 1 - ph, kw - 1 - pw), (H, W), tag=".t",
                                           flat=_flat_pays(W, wo + 2 * (kw - 1 - pw)))[0])
                elif columns.same and w_by_offset_t is not None:  # dcols by weight position
                    extra = offset_buffers(xp, (n, C, H, W), (kh, kw), dy.dtype)
                else:  # dcols, and the padded dx that col2im adds into (same rows: dx itself)
                    extra = (_matrix(xp, "conv.dcols", *columns.cols.shape, dy.dtype),
                             None if columns.same else
                             col2im_buffer(xp, (n, C, H, W), (ph, pw), pitch, dy.dtype))
                buffers[n] = columns, dY, dY.reshape(F, n, ho, pitch or wo), extra
            columns, dY, dy_rows, extra = buffers[n]
            fill_columns(columns, x[n0:n1], 0, n)
            cols, pitch = columns.cols, columns.row_pitch
            # (after a ReLU that ran as the forward's last step, its backward first: dy * mask)
            relu_backward_into(dy[n0:n1].transpose(1, 0, 2, 3),
                               None if mask is None else mask[n0:n1].transpose(1, 0, 2, 3),
                               dy_rows[:, :, :, :wo])
            # this slice's share of dL/dW, as (C_in*kh*kw, C_out): cols @ dY^T ran 1.2x faster
            # than dY @ cols^T (0.72 vs 0.88 ms for 8 images of the BN network's conv2)
            part = cols @ dY.T
            dw = part if dw is None else xp.add(dw, part, out=dw)
            if has_bias:
                part = dY.sum(axis=1)
                db = part if db is None else xp.add(db, part, out=db)
            if extra is None:
                continue
            if w_flipped is not None:  # dx = conv(dy * mask, flipped kernel)
                g, convolve_t = extra
                if g is None:
                    convolve_t(dy[n0:n1], dx[n0:n1])
                else:
                    xp.multiply(dy[n0:n1], mask[n0:n1], out=g)
                    convolve_t(g, dx[n0:n1])
            elif columns.same and w_by_offset_t is not None:  # dL/dcols = W^T @ dY, its rows
                dcols, rows = extra  # (u, v, c); col2im by offset
                xp.matmul(w_by_offset_t, dY, out=dcols[:, : dY.shape[1]])
                col2im_by_offset(dcols, rows, dx[n0:n1], (kh, kw))
            else:  # dL/dcols = W^T @ dY, then col2im into this slice's dx
                dcols, dx_pad = extra
                xp.matmul(w2d_t, dY, out=dcols)
                if dx_pad is None:  # same rows: col2im writes this slice's dx itself
                    col2im_block(dcols, dx[n0:n1], (n, C, H, W), (kh, kw), stride, (ho, wo),
                                 pitch, 0, n, True)
                else:
                    col2im_block(dcols, dx_pad, (n, C, H, W), (kh, kw), stride, (ho, wo), pitch,
                                 0, n)
                    dx[n0:n1] = _inside(dx_pad, (ph, pw), (H, W), False)
        return dw, db

    dw, db = add_blocks(for_batch(xp, N, block, per_item=per_image))
    if dw is None:  # an empty batch
        dw, db = xp.zeros((K, F), weight.dtype), (xp.zeros(F, weight.dtype) if has_bias else None)
    return dx, xp.ascontiguousarray(dw.T).reshape(weight.shape), db


# dW of columns with fewer rows than this (C_in*kh*kw: a first layer on 1-3 channels) is a stack
# of per-image products: the ONE 2-D product with so few rows and a long inner dimension does not
# run side by side in two threads, a stack of products does.
_FEW_ROWS = 64


def col2im_buffer(xp: Any, x_shape: tuple, padding: tuple, row_pitch: int, dtype: Any,
                  same: bool = False) -> Any:
    """The padded input gradient that :func:`col2im_block` adds into (with the spare row for
    flat rows; for same rows dx itself, no padding); each block writes its own images."""
    N, C, H, W = x_shape
    ph, pw = padding
    hp, wp = H + 2 * ph, W + 2 * pw
    if same:
        return scratch(xp, "conv.dx_same", (N, C, H, W), dtype)
    return scratch(xp, "conv.dx", (N, C, hp + (1 if row_pitch else 0), wp), dtype)


def offset_buffers(xp: Any, x_shape: tuple, kernel: tuple, dtype: Any) -> tuple:
    """``(dcols, rows)`` for :func:`col2im_by_offset` on a slice of ``x_shape`` (n, C, H, W):
    dcols (kh*kw*C, P) for dL/dcols in its first n*H*W columns, rows ordered (u, v, c), and
    ``rows`` (C, P), which col2im adds into. P: n*H*W, or a little more (see :func:`_matrix`);
    the spare columns stay zeros (nothing writes them)."""
    n, C, H, W = x_shape
    kh, kw = kernel
    nl = n * H * W
    pitch = _pitch(xp, nl, dtype)
    # (n*H*W in the role: a buffer of this shape for another n*H*W would have written columns
    # that are spare here)
    dcols = scratch(xp, f"conv.dcols_by_offset.{nl}", (kh * kw * C, pitch), dtype)
    return dcols, scratch(xp, "conv.dx_by_offset", (C, pitch), dtype)


def col2im_by_offset(dcols: Any, rows: Any, dx: Any, kernel: tuple) -> None:
    """col2im of a "same" convolution (stride 1, same rows) by whole-buffer adds: writes ``dx``
    (n, C, H, W) from ``dcols`` (kh*kw*C, P: rows ordered (u, v, c), dL/dcols in the first
    n*H*W columns; from :func:`offset_buffers`), through ``rows`` (C, P).

    Offset (u, v) sends entry (c, q) of its block to ``q + (u - p_h)*W + (v - p_w)`` of channel c.
    The entries whose window position lies off the image (wrapped across a row end, or above the
    first row / below the last) are zeroed first; every other entry lands inside its own image
    and channel, and the buffers' spare columns are zeros. So each offset is ONE add of the whole
    (C, P) block, read as a flat array, shifted: NumPy runs a 1-D add of 32k numbers about 4x
    faster than the same add as 32 strided rows (1023 numbers each: 3.5 vs 13.7 us, 1 thread;
    col2im of a 32->64 layer's 32x32 image: about 80 vs 200 us). The adds run in the order of
    :func:`col2im_block`'s.
    """
    n, C, H, W = dx.shape
    kh, kw = kernel
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    L, pitch = H * W, dcols.shape[1]
    valid = dcols[:, : n * L]
    # the off-image entries: wrapped (left/right of the image), then above/below it
    _zero_wrapped(valid.reshape(kh, kw, C, n, L).transpose(2, 0, 1, 3, 4), W, pw, 0, n)
    by_pixel = valid.reshape(kh, kw, C, n, H, W)
    for u in range(kh):
        if u < ph:
            by_pixel[u, :, :, :, : ph - u] = 0
        elif u > ph:
            by_pixel[u, :, :, :, max(0, H - (u - ph)) :] = 0
    # the whole buffer, flat: block (u, v) is [(u*kw + v)*C*P, ... + C*P)
    flat = dcols.reshape(-1)
    span = C * pitch
    out = rows.reshape(-1)
    centre = (ph * kw + pw) * span
    out[...] = flat[centre : centre + span]  # (the centre offset covers the image exactly)
    for u in range(kh):
        for v in range(kw):
            shift = (u - ph) * W + v - pw
            if (u, v) == (ph, pw) or abs(shift) >= span:  # (tiny images: all of it is off them)
                continue
            block = flat[(u * kw + v) * span : (u * kw + v + 1) * span]
            if shift >= 0:
                out[shift:] += block[: span - shift]
            else:
                out[: span + shift] += block[-shift:]
    dx[...] = rows[:, : n * L].reshape(C, n, H, W).transpose(1, 0, 2, 3)


def _inside(dx_pad: Any, padding: tuple, hw: tuple, same: bool) -> Any:
    """The input's pixels of a buffer from :func:`col2im_buffer`: (N, C, H, W), a view."""
    (ph, pw), (H, W) = padding, hw
    if same:
        return dx_pad
    return dx_pad[:, :, ph : ph + H, pw : pw + W]


def col2im_block(dcols: Any, dx_pad: Any, x_shape: tuple, kernel: tuple, stride: tuple,
                 out_hw: tuple, row_pitch: int, lo: int, hi: int, same: bool = False,
                 images_first: bool = False) -> None:
    """The adjoint of im2col for images lo..hi-1: add each column entry back onto the input pixel
    it came from.

    ``dcols`` has the columns' layout (C*kh*kw, N*L) (or (N, C*kh*kw, L) with
    ``images_first``); ``dx_pad`` (from :func:`col2im_buffer`) is the padded input gradient
    (N, C, H_pad (+1), W_pad), or for same rows dx itself, (N, C, H, W) (any C-contiguous
    array); only its images lo..hi-1 are written (and, for same rows, dcols's wrapped entries
    zeroed).
    """
    N, C = x_shape[:2]
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    wp = dx_pad.shape[3]
    if same and hi > lo:
        # same rows, straight into dx: offset (u, v) touches the slice [(u - p_h)*W + v - p_w,
        # ... + L) of every (image, channel), cut to the image (what is cut off fell on the
        # padding); the wrapped entries inside it would land on the row above's or below's
        # pixels, so they are zeroed first. The centre offset covers the image exactly: written
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        L = ho * wp
        by_weight = _by_weight(dcols, (C, kh, kw, N, L), images_first)
        _zero_wrapped(by_weight, wp, pw, lo, hi)
        dcols = by_weight[:, :, :, lo:hi]
        dx_rows = dx_pad[lo:hi].reshape(hi - lo, C, L).transpose(1, 0, 2)
        dx_rows[...] = dcols[:, ph, pw]
        for u in range(kh):
            for v in range(kw):
                start = (u - ph) * wp + v - pw
                a, b = max(0, -start), min(L, L - start)  # the part inside the image
                if (u, v) != (ph, pw) and a < b:  # (a narrow image: a slice may lie outside)
                    dx_rows[:, :, start + a : start + b] += dcols[:, u, v, :, a:b]
        return
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
