"""Window geometry shared by the convolution and the poolings: padding, window views, output sizes.

A leaf module: it imports no other kernel, so the kernel files that use it never import each other.
"""

from __future__ import annotations

from typing import Any

from .._utils import conv_output_size, pair
from ..backend import backend_of


def pad2d(x: Any, padding: tuple, value: float = 0.0) -> Any:
    """Pad the last two axes of ``x`` (N, C, H, W) by ``padding = (p_h, p_w)`` on each side.

    Returns ``x`` itself when there is nothing to pad, else a new (N, C, H + 2*p_h, W + 2*p_w)
    array filled with ``value`` around a copy of x.
    """
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    out = backend_of(x).xp.full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph : ph + H, pw : pw + W] = x
    return out


def window_geometry(x_shape: tuple, kernel_size: Any, stride: Any, padding: Any) -> tuple:
    """The window arguments as pairs, and the output size they give.

    Returns ``(kernel, stride, padding, (H_out, W_out))``; ``stride=None`` means the kernel size,
    ``H_out = floor((H + 2*p_h - kh) / s_h) + 1`` (W likewise).
    """
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    H, W = x_shape[2:]
    out_hw = (conv_output_size(H, kernel[0], stride[0], padding[0]),
              conv_output_size(W, kernel[1], stride[1], padding[1]))
    return kernel, stride, padding, out_hw


def window_view(x_pad: Any, kernel: tuple, stride: tuple, out_hw: tuple) -> Any:
    """Every kh x kw window of ``x_pad`` (N, C, H, W) at once, as a strided VIEW (nothing copied).

    ``view[n, c, i, j, u, v] = x_pad[n, c, i*s_h + u, j*s_w + v]``: shape (N, C, H_out, W_out,
    kh, kw). Moving one output pixel to the right moves s_w input pixels, moving one kernel
    cell moves one, so both are just strides over the same memory.
    """
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    N, C = x_pad.shape[:2]
    s0, s1, s2, s3 = x_pad.strides
    return backend_of(x_pad).as_strided(
        x_pad, shape=(N, C, ho, wo, kh, kw), strides=(s0, s1, s2 * sh, s3 * sw, s2, s3)
    )


def offset_slice(a: Any, u: int, v: int, stride: tuple, out_hw: tuple) -> Any:
    """``a[:, :, i*s_h + u, j*s_w + v]`` for every output pixel (i, j): the cells that kernel
    offset (u, v) picks from all windows, one strided view of shape (N, C, H_out, W_out)."""
    (sh, sw), (ho, wo) = stride, out_hw
    return a[:, :, u : u + sh * (ho - 1) + 1 : sh, v : v + sw * (wo - 1) + 1 : sw]
