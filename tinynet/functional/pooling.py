"""Max pooling: forward and backward by hand (the reference kernel).

    y[n, c, i, j] = max_{u < kh, v < kw} x_pad[n, c, i*s_h + u, j*s_w + v]

Shapes:
    x: (N, C, H, W) -> y: (N, C, H_out, W_out),  H_out = floor((H + 2*p_h - kh) / s_h) + 1
    (padding adds -inf, so a padded cell never wins; at most half the kernel, as in PyTorch)

Backward: the maximum is a switch. dL/dx = dL/dy at the ONE input that won each window (the
first maximum in row-major window order when several tie, as PyTorch does), zero elsewhere.
Windows may overlap (stride < kernel): an input that wins several windows collects the sum.

The trick: every window at once through a strided view (no loop over windows), its argmax kept
for backward; backward routes dy through kh*kw strided slices, one per kernel offset (u, v).
The fast engine's version (``tinynet/fast/pooling.py``) is tested equal to this one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_of
from ._geometry import offset_slice, pad2d, window_geometry, window_view


class MaxPoolCache(NamedTuple):
    """What maxpool2d_backward needs: which cell of each window won (its flat index u*kw + v)."""

    argmax: Any  # (N, C, H_out, W_out) integers in [0, kh*kw)
    x_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple


def maxpool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """Max pooling over kh x kw windows; ``stride`` defaults to the kernel size.

    Returns:
        ``(y, cache)``: y of shape (N, C, H_out, W_out); the cache keeps each window's argmax.
    """
    kernel, stride, padding, out_hw = window_geometry(x.shape, kernel_size, stride, padding)
    windows = window_view(pad2d(x, padding, value=-float("inf")), kernel, stride, out_hw)
    flat = windows.reshape(windows.shape[:4] + (-1,))  # (N, C, ho, wo, kh*kw): one copy
    argmax = flat.argmax(axis=4)  # the first maximum wins ties, as in PyTorch
    y = backend_of(x).xp.take_along_axis(flat, argmax[..., None], axis=4)[..., 0]
    return y, MaxPoolCache(argmax, x.shape, kernel, stride, padding)


def maxpool2d_backward(dy: Any, cache: MaxPoolCache):
    """Route dL/dy to the winning input of each window.

    **Backward:** ``dx[n, c, i*s_h + u - p_h, j*s_w + v - p_w] += dy[n, c, i, j]`` for the winning
    offset ``u*kw + v = argmax[n, c, i, j]``; every other input gets zero.

    Returns:
        dx of shape (N, C, H, W).
    """
    argmax, (N, C, H, W), (kh, kw), stride, (ph, pw) = cache
    dx_pad = backend_of(dy).xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for u in range(kh):
        for v in range(kw):
            # the inputs at offset (u, v) of every window: one strided slice, shaped like dy
            offset_slice(dx_pad, u, v, stride, dy.shape[2:])[...] += dy * (argmax == u * kw + v)
    return dx_pad[:, :, ph : ph + H, pw : pw + W]
