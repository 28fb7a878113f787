"""2-D convolution: forward and backward by hand.

    y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] * x_pad[n, c, i*s_h + u, j*s_w + v]

Shapes:
    x: (N, C_in, H, W)      w: (C_out, C_in, kh, kw)      b: (C_out,)
    y: (N, C_out, H_out, W_out)   with   H_out = floor((H + 2*p_h - kh) / s_h) + 1
                                         W_out = floor((W + 2*p_w - kw) / s_w) + 1

The trick that makes it fast (im2col + one matrix product):
    A convolution is many small dot products, one per output pixel. Instead of looping over them,
    we look at every kh x kw window of the padded input at once through a *strided view* (no copy):
    a 6-D array windows[n, i, j, c, u, v] = x_pad[n, c, i*s_h + u, j*s_w + v]. Reshaping it gives the
    "columns" matrix cols of shape (N*H_out*W_out, C_in*kh*kw): one row per output pixel, holding the
    window it sees. Then the whole convolution is ONE matrix product:  y = cols @ W^T + b,
    with W reshaped to (C_out, C_in*kh*kw). BLAS runs that product at full speed on every core.

Backward (dy: (N, C_out, H_out, W_out), rows of dY are output pixels like the rows of cols):
    dL/dW = dY^T @ cols                        -> (C_out, C_in*kh*kw), reshaped to w's shape
            (sum over the batch and over output positions of dy (x) window)
    dL/db = sum of dy over n, i, j             -> (C_out,)
    dL/dx: dcols = dY @ W                      -> (N*H_out*W_out, C_in*kh*kw)
            and each window's gradient is added back where the window came from ("col2im").
            Windows overlap, so one input pixel receives from several windows. Rather than a scatter
            (np.add.at, slow), we loop over the kh*kw kernel offsets (u, v): for a fixed offset, the
            pixels that offset touches form one strided slice x_pad[:, :, u::s_h, v::s_w], and the
            slices of different windows never collide there. kh*kw vectorised adds in total.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._utils import conv_output_size, pair
from ..backend import backend_of


class ConvCache(NamedTuple):
    """What conv2d_backward needs: the columns (the windows each output pixel saw) and the weights."""

    cols: Any  # (N*H_out*W_out, C_in*kh*kw)
    weight: Any  # (C_out, C_in, kh, kw)
    x_shape: tuple  # (N, C_in, H, W)
    stride: tuple  # (s_h, s_w)
    padding: tuple  # (p_h, p_w)
    has_bias: bool


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


def conv2d_forward(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0):
    """Convolve a batch of images with a bank of filters.

    Args:
        x: input batch (N, C_in, H, W).
        weight: filters (C_out, C_in, kh, kw).
        bias: (C_out,) or None.
        stride, padding: int or pair (height, width).

    Returns:
        ``(y, cache)`` with y of shape (N, C_out, H_out, W_out) and the cache for backward.
    """
    xp = backend_of(x).xp
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    N, C, H, W = x.shape
    F, _, kh, kw = weight.shape
    ho = conv_output_size(H, kh, stride[0], padding[0])
    wo = conv_output_size(W, kw, stride[1], padding[1])

    x_pad = xp.ascontiguousarray(pad2d(x, padding))
    # im2col: the strided view of all windows, copied once into a (pixels x window) matrix
    cols = window_view(x_pad, (kh, kw), stride, (ho, wo)).reshape(N * ho * wo, C * kh * kw)
    w2 = weight.reshape(F, C * kh * kw)
    y = cols @ w2.T  # (N*H_out*W_out, C_out): every output pixel's dot products at once
    if bias is not None:
        y += bias
    # rows are (n, i, j); move the channel axis forward to get NCHW
    y = xp.ascontiguousarray(y.reshape(N, ho, wo, F).transpose(0, 3, 1, 2))
    return y, ConvCache(cols, weight, x.shape, stride, padding, bias is not None)


def conv2d_backward(dy: Any, cache: ConvCache):
    """Gradients of a convolution.

    Args:
        dy: dL/dy, shape (N, C_out, H_out, W_out).
        cache: from :func:`conv2d_forward`.

    Returns:
        ``(dx, dw, db)``: shapes (N, C_in, H, W), (C_out, C_in, kh, kw), (C_out,) (None without bias).
    """
    xp = backend_of(dy).xp
    cols, weight, (N, C, H, W), (sh, sw), (ph, pw), has_bias = cache
    F, _, kh, kw = weight.shape
    ho, wo = dy.shape[2:]

    dy2 = dy.transpose(0, 2, 3, 1).reshape(N * ho * wo, F)  # rows = output pixels, like cols
    # dL/dW = sum over batch and positions of dy (x) window
    dw = (dy2.T @ cols).reshape(weight.shape)
    # dL/db = sum of dy over batch and positions
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    # dL/dcols = dY @ W: each window's share of the input gradient
    dcols = (dy2 @ weight.reshape(F, C * kh * kw)).reshape(N, ho, wo, C, kh, kw)

    # col2im: add every window's gradient back where it came from, one kernel offset at a time
    dx_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for u in range(kh):
        for v in range(kw):
            dx_pad[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw] += dcols[
                :, :, :, :, u, v
            ].transpose(0, 3, 1, 2)
    dx = dx_pad[:, :, ph : ph + H, pw : pw + W]
    if ph or pw:
        dx = xp.ascontiguousarray(dx)
    return dx, dw, db
