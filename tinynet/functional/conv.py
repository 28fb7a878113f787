"""2-D convolution: forward and backward by hand (the reference kernel).

    y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] * x_pad[n, c, i*s_h + u, j*s_w + v]

Shapes:
    x: (N, C_in, H, W)      w: (C_out, C_in, kh, kw)      b: (C_out,)
    y: (N, C_out, H_out, W_out)   with   H_out = floor((H + 2*p_h - kh) / s_h) + 1   (W likewise)

The trick, im2col: a convolution is one small dot product per output pixel. Copy every window
once into a matrix ``cols`` with one ROW per output pixel (n, i, j) and one COLUMN per weight
position (c, u, v); then all the dot products are ONE matrix product, ``Y = cols @ W^T``.
Backward runs the same product the other way, and ``col2im`` adds each window's gradient back
onto the pixels it came from: kh*kw strided slice adds, one per kernel offset (u, v).

The fast engine (``tinynet/fast/conv.py``) computes the same numbers with threads, recycled
buffers and other layouts, and 3x3 convolutions of 32+ channels by Winograd's algorithm
(``tinynet/fast/winograd.py``: 4x fewer multiplications, equal to rounding); it is tested equal
to this file.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._utils import pair
from ..backend import backend_of
from ._geometry import offset_slice, pad2d, window_geometry, window_view


class ConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs: the columns (the window each output pixel saw)."""

    cols: Any  # (N*H_out*W_out, C_in*kh*kw)
    weight: Any  # (C_out, C_in, kh, kw)
    x_shape: tuple  # (N, C_in, H, W)
    stride: tuple
    padding: tuple
    has_bias: bool


def im2col(x: Any, kernel: tuple, stride: tuple, padding: tuple) -> tuple:
    """Every window of x (N, C, H, W) as one row: ``cols`` of shape (N*H_out*W_out, C*kh*kw).

    ``cols[(n, i, j), (c, u, v)] = x_pad[n, c, i*s_h + u, j*s_w + v]``.
    Returns ``(cols, (H_out, W_out))``.
    """
    _, _, _, out_hw = window_geometry(x.shape, kernel, stride, padding)
    windows = window_view(pad2d(x, padding), kernel, stride, out_hw)  # (N, C, ho, wo, kh, kw)
    N, C, ho, wo, kh, kw = windows.shape
    # the one copy: the strided view laid out as rows (n, i, j) of columns (c, u, v)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(N * ho * wo, C * kh * kw), out_hw


def col2im(dcols: Any, x_shape: tuple, kernel: tuple, stride: tuple, padding: tuple) -> Any:
    """The adjoint of :func:`im2col`: add every entry of dcols back onto the pixel it was copied
    from. Windows overlap, so a pixel collects from several; one strided add per offset (u, v)."""
    (N, C, H, W), (kh, kw), (ph, pw) = x_shape, kernel, padding
    _, _, _, (ho, wo) = window_geometry(x_shape, kernel, stride, padding)
    d = dcols.reshape(N, ho, wo, C, kh, kw).transpose(0, 3, 1, 2, 4, 5)  # like window_view
    dx_pad = backend_of(dcols).xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dcols.dtype)
    for u in range(kh):
        for v in range(kw):
            offset_slice(dx_pad, u, v, stride, (ho, wo))[...] += d[..., u, v]
    return dx_pad[:, :, ph : ph + H, pw : pw + W]


def conv2d_forward(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0):
    """Convolve a batch of images with a bank of filters: ``y = W (*) x + b``.

    Args:
        x: input batch (N, C_in, H, W). weight: filters (C_out, C_in, kh, kw).
        bias: (C_out,) or None. stride, padding: int or pair (height, width).

    Returns:
        ``(y, cache)``: y of shape (N, C_out, H_out, W_out) and the cache for backward.
    """
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    F, C, kh, kw = weight.shape
    cols, (ho, wo) = im2col(x, (kh, kw), stride, padding)
    y = cols @ weight.reshape(F, C * kh * kw).T  # (N*ho*wo, C_out): every dot product at once
    if bias is not None:
        y += bias
    y = y.reshape(x.shape[0], ho, wo, F).transpose(0, 3, 1, 2)  # rows (n, i, j) -> (N, F, i, j)
    cache = ConvCache(cols, weight, x.shape, stride, padding, bias is not None)
    return backend_of(x).xp.ascontiguousarray(y), cache


def conv2d_backward(dy: Any, cache: ConvCache, input_grad: bool = True):
    """Gradients of a convolution.

    **Backward**, with dY = dy laid out like the forward's product, (N*H_out*W_out, C_out):
        ``dW = dY^T @ cols``  (the sum over the batch and every position of dy (x) window),
        ``db = sum of dY``  over n, i, j,
        ``dX = col2im(dY @ W)``  (each window's gradient added back where the window came from).

    Args:
        dy: dL/dy (N, C_out, H_out, W_out). cache: from :func:`conv2d_forward`.
        input_grad: compute dX; False skips it (a first layer needs only dW and db).

    Returns:
        ``(dx, dw, db)``: shapes (N, C_in, H, W), (C_out, C_in, kh, kw), (C_out,); db is None
        without bias, dx None with ``input_grad=False``.
    """
    cols, weight, x_shape, stride, padding, has_bias = cache
    F = weight.shape[0]
    dY = dy.transpose(0, 2, 3, 1).reshape(-1, F)  # rows (n, i, j), like cols
    dw = (dY.T @ cols).reshape(weight.shape)
    db = dY.sum(axis=0) if has_bias else None
    if not input_grad:
        return None, dw, db
    dcols = dY @ weight.reshape(F, -1)  # dL/dcols: each window's share of the input gradient
    return col2im(dcols, x_shape, weight.shape[2:], stride, padding), dw, db
