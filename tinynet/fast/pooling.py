"""The fast engine's max pooling: the same numbers as ``tinynet/functional/pooling.py``.

Tricks (kh*kw whole-array steps, and only one slice of the windows copied at a time):
    * y is the running maximum of the kh*kw offset slices x_pad[:, :, u::s_h, v::s_w], and the
      winner's index moves to offset k only where offset k is STRICTLY greater than the maximum
      so far: the first maximum in row-major order wins ties, as in the reference. Each slice is
      copied into a contiguous buffer first: NumPy compares contiguous arrays several times
      faster than strided slices (and no masked copy: ``argmax = max(argmax, won * k)``).
    * Evaluation (``tinynet.no_grad()``) needs no argmax: the maximum over each window's rows,
      then over its columns (kh + kw passes instead of kh*kw).
    * Backward routes dy through the same slices; when windows do not overlap, each slice is
      assigned instead of added (no read-back, no zero-fill when the windows tile the input).
    * Threads: one block of images per thread; recycled buffers (``_recycle.py``).
    * ``*_blocks`` versions let a convolution pool (and un-pool) each of its blocks of images while
      they are in the core's cache (the fused modules of ``tinynet.fuse``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_of, is_grad_enabled
from ..functional._geometry import offset_slice, pad2d, window_geometry
from ._recycle import scratch
from .threads import for_batch


class MaxPoolCache(NamedTuple):
    """What maxpool2d_backward needs: which cell of each window won (its flat index u*kw + v)."""

    argmax: Any  # (N, C, H_out, W_out) integers in [0, kh*kw) (int8, or int32 for huge windows)
    x_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple


def maxpool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """Max pooling over kh x kw windows; ``stride`` defaults to the kernel size.

    ``y[n, c, i, j] = max_{u, v} x_pad[n, c, i*s_h + u, j*s_w + v]``

    Args:
        x: input batch (N, C, H, W).
        kernel_size: window (int or pair). stride: int or pair (default: the kernel size).
        padding: int or pair, at most half the kernel (padded cells are -inf).

    Returns:
        ``(y, cache)`` with y of shape (N, C, H_out, W_out),
        ``H_out = floor((H + 2*p_h - kh) / s_h) + 1`` (W likewise); the cache keeps the argmax
        (the cache is None inside ``tinynet.no_grad()``: no argmax is needed without a backward).

    Backward: see :func:`maxpool2d_backward`.
    """
    block, y, cache = maxpool2d_forward_blocks(x, kernel_size, stride, padding)
    N, C, H, W = x.shape
    for_batch(backend_of(x).xp, N, block, per_item=C * H * W)
    return y, cache


def maxpool2d_forward_blocks(x: Any, kernel_size: Any, stride: Any = None,
                             padding: Any = 0) -> tuple:
    """:func:`maxpool2d_forward` before it runs: ``(block, y, cache)``, where ``block(lo, hi)``
    pools the images lo..hi-1 of x into y (and the cache's argmax). A convolution that a max
    pooling follows calls it on each of its blocks of images right after writing them (see
    ``conv2d_forward(pool=...)``); x must be filled before a block runs, not before this call
    (unless it is padded: the padded copy is made here).
    """
    xp = backend_of(x).xp
    kernel, stride, padding, (ho, wo) = window_geometry(x.shape, kernel_size, stride, padding)
    N, C, H, W = x.shape
    kh, kw = kernel

    x_pad = pad2d(x, padding, value=-float("inf"))
    if not is_grad_enabled():
        rows_block, y = _maxpool_rows_then_columns(x_pad, kernel, stride, (ho, wo))
        return rows_block, y, None
    offsets = [(u, v) for u in range(kh) for v in range(kw)]
    # y = running maximum over the kh*kw offset slices of x_pad. Each slice is first copied into
    # one contiguous buffer ("cell"): NumPy copies a strided slice quickly, but its comparisons
    # on strided slices run several times slower than on contiguous arrays (measured).
    y = scratch(xp, "maxpool.y", (N, C, ho, wo), x.dtype)
    dtype = xp.int8 if kh * kw <= 127 else xp.int32
    argmax = scratch(xp, "maxpool.argmax", y.shape, dtype)
    won = scratch(xp, "maxpool.won", y.shape, xp.bool_)
    k_won = scratch(xp, "maxpool.k_won", y.shape, dtype)
    cell = scratch(xp, "maxpool.cell", y.shape, x.dtype)

    def block(lo: int, hi: int) -> None:  # the images lo..hi-1 (one thread)
        b = slice(lo, hi)
        y[b] = offset_slice(x_pad[b], 0, 0, stride, (ho, wo))
        # argmax = the first offset (row-major) that holds the maximum: offset k takes over only
        # where its cell is STRICTLY greater than the maximum so far, so earlier offsets win ties
        # (as in PyTorch). Since k grows, "argmax = k where won" is max(argmax, won * k).
        argmax[b] = 0
        for k in range(1, kh * kw):
            u, v = offsets[k]
            cell[b] = offset_slice(x_pad[b], u, v, stride, (ho, wo))
            xp.greater(cell[b], y[b], out=won[b])
            xp.multiply(won[b], dtype(k), out=k_won[b])
            xp.maximum(argmax[b], k_won[b], out=argmax[b])
            xp.maximum(y[b], cell[b], out=y[b])

    return block, y, MaxPoolCache(argmax, x.shape, kernel, stride, padding)


def _running_max(xp: Any, out: Any, slices: list) -> None:
    """``out[...] = max(slices)``, elementwise."""
    if len(slices) == 1:
        out[...] = slices[0]
        return
    xp.maximum(slices[0], slices[1], out=out)
    for s in slices[2:]:
        xp.maximum(out, s, out=out)


def _maxpool_rows_then_columns(x_pad: Any, kernel: tuple, stride: tuple, out_hw: tuple) -> tuple:
    """Max pooling without the argmax (evaluation): the window's maximum is the maximum over its
    kh rows of each row's maximum over kw columns, so it takes kh + kw passes instead of kh*kw.
    Rows first: ``rows[n, c, i, w] = max_u x_pad[n, c, i*s_h + u, w]`` keeps whole image rows
    contiguous; then ``y[n, c, i, j] = max_v rows[n, c, i, j*s_w + v]``. (Training needs the
    first maximum in row-major window order, which this order of passes does not give on ties.)
    """
    xp = backend_of(x_pad).xp
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    N, C, _, wp = x_pad.shape
    rows = scratch(xp, "maxpool.rows", (N, C, ho, wp), x_pad.dtype)
    y = scratch(xp, "maxpool.y", (N, C, ho, wo), x_pad.dtype)

    def block(lo: int, hi: int) -> None:  # the images lo..hi-1 (one thread)
        b = slice(lo, hi)
        # offset u of every window's rows (whole rows), then offset v of every window's columns
        _running_max(xp, rows[b], [offset_slice(x_pad[b], u, 0, (sh, 1), (ho, wp))
                                   for u in range(kh)])
        _running_max(xp, y[b], [offset_slice(rows[b], 0, v, (1, sw), (ho, wo))
                                for v in range(kw)])

    return block, y


def maxpool2d_backward(dy: Any, cache: MaxPoolCache):
    """Route dL/dy to the winning input of each window.

    **Backward:** ``dx[n, c, i*s_h + u - p_h, j*s_w + v - p_w] += dy[n, c, i, j]`` for the winning
    offset ``u*kw + v = argmax[n, c, i, j]``; every other input gets zero.

    Returns:
        dx of shape (N, C, H, W).
    """
    block, dx = maxpool2d_backward_blocks(dy, cache)
    N, C, H, W = cache.x_shape
    for_batch(backend_of(dy).xp, N, block, per_item=C * H * W)
    return dx() if callable(dx) else dx


def maxpool2d_backward_blocks(dy: Any, cache: MaxPoolCache) -> tuple:
    """:func:`maxpool2d_backward` before it runs: ``(block, dx)``, where ``block(lo, hi)``
    routes dy of the images lo..hi-1 into dx (a convolution's backward calls it on each of its
    blocks first: see ``conv2d_backward``). With padding, dx is a function that returns the
    unpadded gradient once every block has run."""
    xp = backend_of(dy).xp
    argmax, (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = cache
    ho, wo = dy.shape[2:]
    hp, wp = H + 2 * ph, W + 2 * pw
    overlap = sh < kh or sw < kw
    # windows that tile the input exactly write every cell once: no zero-fill needed
    tiles = (sh, sw) == (kh, kw) and (hp, wp) == (ho * kh, wo * kw)
    dx_pad = scratch(xp, "maxpool.dx", (N, C, hp, wp), dy.dtype)
    won = scratch(xp, "maxpool.won", dy.shape, xp.bool_)
    routed = scratch(xp, "maxpool.routed", dy.shape, dy.dtype) if overlap else None

    def block(lo: int, hi: int) -> None:  # the images lo..hi-1 (one thread)
        b = slice(lo, hi)
        if not tiles:
            dx_pad[b] = 0
        for u in range(kh):
            for v in range(kw):
                # inputs at kernel offset (u, v) of every window: one strided slice, like dy
                xp.equal(argmax[b], u * kw + v, out=won[b])
                target = offset_slice(dx_pad[b], u, v, (sh, sw), (ho, wo))
                if overlap:
                    xp.multiply(dy[b], won[b], out=routed[b])
                    target += routed[b]  # a cell in several windows collects from each
                else:
                    xp.multiply(dy[b], won[b], out=target)  # written straight into its slice

    if ph or pw:
        return block, lambda: xp.ascontiguousarray(dx_pad[:, :, ph : ph + H, pw : pw + W])
    return block, dx_pad
