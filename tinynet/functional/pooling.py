"""Max pooling: forward and backward by hand.

    y[n, c, i, j] = max_{u < kh, v < kw} x_pad[n, c, i*s_h + u, j*s_w + v]

Shapes:
    x: (N, C, H, W) -> y: (N, C, H_out, W_out),  H_out = floor((H + 2*p_h - kh) / s_h) + 1
    (padding adds -inf, so a padded cell never wins; at most half the kernel, as in PyTorch)

Backward:
    The maximum is a switch: dL/dx = dL/dy at the ONE input that won each window (the first
    maximum in row-major window order when several tie, as PyTorch does), zero elsewhere.
    Windows may overlap (stride < kernel), so an input that wins several windows collects the sum.

Tricks:
    * The windows are a strided view of the input (no copy), reshaped to (N, C, H_out, W_out, kh*kw)
      so one ``argmax`` over the last axis finds every window's winner at once.
    * For the backward pass we keep only that argmax (the "routing" index). For each of the kh*kw
      kernel offsets, the inputs that offset touches form one strided slice of dx; adding
      ``dy * (argmax == offset)`` to it routes the gradient without a scatter (np.add.at).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._utils import conv_output_size, pair
from ..backend import backend_of
from .conv import pad2d, window_view


class MaxPoolCache(NamedTuple):
    """What maxpool2d_backward needs: which cell of each window won (its flat index u*kw + v)."""

    argmax: Any  # (N, C, H_out, W_out) integers in [0, kh*kw)
    x_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple


def maxpool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """Max pooling over kh x kw windows; ``stride`` defaults to the kernel size.

    Returns ``(y, cache)`` with y of shape (N, C, H_out, W_out).
    """
    xp = backend_of(x).xp
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    N, C, H, W = x.shape
    ho = conv_output_size(H, kernel[0], stride[0], padding[0])
    wo = conv_output_size(W, kernel[1], stride[1], padding[1])

    x_pad = xp.ascontiguousarray(pad2d(x, padding, value=-xp.inf))
    # (N, H_out, W_out, C, kh, kw) view -> (N, C, H_out, W_out, kh*kw) with one copy
    windows = window_view(x_pad, kernel, stride, (ho, wo)).transpose(0, 3, 1, 2, 4, 5)
    windows = windows.reshape(N, C, ho, wo, kernel[0] * kernel[1])
    argmax = windows.argmax(axis=-1)  # first maximum on ties
    y = xp.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
    return y, MaxPoolCache(argmax, x.shape, kernel, stride, padding)


def maxpool2d_backward(dy: Any, cache: MaxPoolCache):
    """Route dL/dy to the winning input of each window. Returns dx of shape (N, C, H, W)."""
    xp = backend_of(dy).xp
    argmax, (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = cache
    ho, wo = dy.shape[2:]
    dx_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for u in range(kh):
        for v in range(kw):
            # inputs at kernel offset (u, v) of every window: one strided slice
            dx_pad[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw] += dy * (argmax == u * kw + v)
    dx = dx_pad[:, :, ph : ph + H, pw : pw + W]
    return xp.ascontiguousarray(dx) if (ph or pw) else dx
