"""Average pooling: forward and backward by hand.

    y[n, c, i, j] = (1 / (kh*kw)) * sum_{u < kh, v < kw} x_pad[n, c, i*s_h + u, j*s_w + v]

The padded zeros count in the average (PyTorch's default ``count_include_pad=True``), so every
window divides by kh*kw.

Shapes:
    x: (N, C, H, W) -> y: (N, C, H_out, W_out),  H_out = floor((H + 2*p_h - kh) / s_h) + 1
    (W likewise; padding at most half the kernel, as in PyTorch).

Backward:
    Each input in a window received 1/(kh*kw) of it, so dL/dx gets dL/dy / (kh*kw) from every
    window it lies in (overlapping windows add up).

Trick (kh*kw whole-array steps instead of a loop over the H_out*W_out windows): for one kernel
offset (u, v), the cells that offset picks from every window form one strided slice of the
padded input, x_pad[:, :, u::s_h, v::s_w], shaped like y. Forward sums kh*kw such slices;
backward adds dy / (kh*kw) into the same kh*kw slices of dx ("summing shifted slices").

Adaptive average pooling picks the windows from the wanted output size instead: output cell i
averages rows floor(i*H/H_out) .. ceil((i+1)*H/H_out) - 1 (PyTorch's rule). When H_out divides H
these are plain non-overlapping windows of size H/H_out, i.e. average pooling with
kernel = stride = H/H_out; (1, 1) is the global average over each channel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._utils import pair
from ..backend import backend_of
from ._geometry import offset_slice, pad2d, window_geometry


class AvgPoolCache(NamedTuple):
    """What avgpool2d_backward needs: only shapes and window sizes (averaging has no switch)."""

    x_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple


def avgpool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """Average of each kh x kw window (zero padding counts); ``stride`` defaults to the kernel.

    ``y[n, c, i, j] = (1/(kh*kw)) * sum_{u, v} x_pad[n, c, i*s_h + u, j*s_w + v]``

    Args:
        x: input batch (N, C, H, W).
        kernel_size: window (int or pair). stride: int or pair (default: the kernel size).
        padding: zeros added on each side (int or pair).

    Returns:
        ``(y, cache)`` with y of shape (N, C, H_out, W_out),
        ``H_out = floor((H + 2*p_h - kh) / s_h) + 1`` (W likewise).

    Backward: see :func:`avgpool2d_backward`.
    """
    xp = backend_of(x).xp
    kernel, stride, padding, (ho, wo) = window_geometry(x.shape, kernel_size, stride, padding)
    N, C, H, W = x.shape
    kh, kw = kernel
    x_pad = pad2d(x, padding)
    # y = sum over the kh*kw offsets of one strided slice each (views, nothing copied) ...
    y = xp.empty((N, C, ho, wo), dtype=x.dtype)
    y[...] = offset_slice(x_pad, 0, 0, stride, (ho, wo))
    for u in range(kh):
        for v in range(kw):
            if u or v:
                y += offset_slice(x_pad, u, v, stride, (ho, wo))
    # ... divided by the window size (padded zeros included)
    y *= x.dtype.type(1.0 / (kh * kw))
    return y, AvgPoolCache(tuple(x.shape), kernel, stride, padding)


def avgpool2d_backward(dy: Any, cache: AvgPoolCache):
    """Spread each window's gradient evenly over the window.

    **Backward:** ``dx[n, c, i*s_h + u - p_h, j*s_w + v - p_w] += dy[n, c, i, j] / (kh*kw)`` for
    every offset (u, v) of every window (i, j).

    Returns:
        dx of shape (N, C, H, W).
    """
    xp = backend_of(dy).xp
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = cache
    ho, wo = dy.shape[2:]
    share = dy * dy.dtype.type(1.0 / (kh * kw))  # what each input of a window receives
    dx_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for u in range(kh):
        for v in range(kw):
            # the inputs at offset (u, v) of every window: one strided slice; windows may overlap
            offset_slice(dx_pad, u, v, (sh, sw), (ho, wo))[...] += share
    dx = dx_pad[:, :, ph : ph + H, pw : pw + W]
    return xp.ascontiguousarray(dx) if (ph or pw) else dx


class AdaptiveAvgPoolCache(NamedTuple):
    """What adaptive_avgpool2d_backward needs: the input shape and the row/column ranges."""

    x_shape: tuple
    rows: tuple  # ((start, end), ...) for each output row
    cols: tuple  # ((start, end), ...) for each output column
    pool: Any  # an AvgPoolCache when the windows tile the input evenly, else None


def adaptive_ranges(size: int, out: int) -> tuple:
    """PyTorch's windows: output i covers ``floor(i*size/out) .. ceil((i+1)*size/out) - 1``."""
    return tuple((i * size // out, -(-(i + 1) * size // out)) for i in range(out))


def adaptive_avgpool2d_forward(x: Any, output_size: Any):
    """Average pooling to a fixed output size (H_out, W_out), whatever the input size.

    ``y[n, c, i, j]`` = mean of ``x[n, c, rows_i, cols_j]`` with
    ``rows_i = floor(i*H/H_out) .. ceil((i+1)*H/H_out) - 1`` (columns likewise).

    Args:
        x: (N, C, H, W).
        output_size: int or pair (H_out, W_out); ``1`` is the global average of each channel.

    Returns:
        ``(y, cache)`` with y of shape (N, C, H_out, W_out).

    When H_out divides H and W_out divides W this is :func:`avgpool2d_forward` with
    kernel = stride = (H/H_out, W/W_out); otherwise windows may differ in size (and overlap), and
    each output cell is averaged separately (a loop over the H_out*W_out cells, each vectorised
    over the batch and the channels).
    """
    xp = backend_of(x).xp
    oh, ow = pair(output_size, "output_size")
    N, C, H, W = x.shape
    rows, cols = adaptive_ranges(H, oh), adaptive_ranges(W, ow)
    if H % oh == 0 and W % ow == 0:
        if (oh, ow) == (1, 1):  # the global average: one reduction
            y = x.mean(axis=(2, 3), keepdims=True)
            return y, AdaptiveAvgPoolCache(tuple(x.shape), rows, cols, None)
        y, pool = avgpool2d_forward(x, (H // oh, W // ow))
        return y, AdaptiveAvgPoolCache(tuple(x.shape), rows, cols, pool)
    y = xp.empty((N, C, oh, ow), dtype=x.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y, AdaptiveAvgPoolCache(tuple(x.shape), rows, cols, None)


def adaptive_avgpool2d_backward(dy: Any, cache: AdaptiveAvgPoolCache):
    """**Backward:** each input of output cell (i, j)'s window gets ``dy[n, c, i, j] / (window
    size)``; inputs in several (overlapping) windows add up.

    Returns:
        dx of shape (N, C, H, W).
    """
    xp = backend_of(dy).xp
    (N, C, H, W), rows, cols, pool = cache
    if pool is not None:
        return avgpool2d_backward(dy, pool)
    if len(rows) == 1 and len(cols) == 1 and rows[0] == (0, H) and cols[0] == (0, W):
        # global average: every pixel of a channel gets dy / (H*W)
        share = dy * dy.dtype.type(1.0 / (H * W))
        return xp.broadcast_to(share, (N, C, H, W)).copy()
    dx = xp.zeros((N, C, H, W), dtype=dy.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            size = (r1 - r0) * (c1 - c0)
            dx[:, :, r0:r1, c0:c1] += (dy[:, :, i : i + 1, j : j + 1]
                                       * dy.dtype.type(1.0 / size))
    return dx
