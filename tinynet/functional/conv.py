"""2-D convolution: forward and backward by hand.

    y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] * x_pad[n, c, i*s_h + u, j*s_w + v]

Shapes:
    x: (N, C_in, H, W)      w: (C_out, C_in, kh, kw)      b: (C_out,)
    y: (N, C_out, H_out, W_out)   with   H_out = floor((H + 2*p_h - kh) / s_h) + 1
                                         W_out = floor((W + 2*p_w - kw) / s_w) + 1

The trick that makes it fast (im2col + one matrix product per image):
    A convolution is many small dot products, one per output pixel. Instead of looping over them,
    we look at every kh x kw window of the padded input at once through a *strided view* (no copy)
    and copy it once into a "columns" array cols of shape (N, C_in*kh*kw, L): for each image, one
    ROW per weight position (c, u, v) and one COLUMN per output pixel, holding the input value that
    this weight meets at that pixel. Then the convolution of image n is ONE matrix product:
        y[n] = W @ cols[n] + b       with W reshaped to (C_out, C_in*kh*kw),
    and ``W @ cols`` does all N products in one call (BLAS runs them at full speed). The result
    (N, C_out, pixels) is already in the (N, C, H, W) order: no transpose copy is needed.

    Layout of the pixel axis (the long, contiguous one, so that copies and sums run in long rows):
    * stride 1 (the common case): the "flat rows" trick. Number the padded input's pixels
      row by row, p = h * W_pad + w. The input that weight (u, v) meets at output pixel (i, j) is
      pixel u*W_pad + v + (i*W_pad + j): a fixed shift u*W_pad + v plus the output position q =
      i*W_pad + j. So row (c, u, v) of cols is ONE contiguous slice of the flattened input, of
      length L = (H_out - 1)*W_pad + W_out. The price: the q with j >= W_out are junk columns
      (windows that wrap around a row end); their outputs are dropped, their gradients are zero.
    * any other stride: the plain layout, L = H_out*W_out, q = i*W_out + j.

Backward (dy: (N, C_out, H_out, W_out), laid out like the columns: dY[n] is (C_out, L)):
    dL/dW = sum_n dY[n] @ cols[n]^T           -> (C_out, C_in*kh*kw), reshaped to w's shape
            (sum over the batch and over output positions of dy (x) window)
    dL/db = sum of dy over n, i, j             -> (C_out,)
    dL/dx: dcols[n] = W^T @ dY[n]              -> (N, C_in*kh*kw, L)
            and each window's gradient is added back where the window came from ("col2im").
            Windows overlap, so one input pixel receives from several windows. Rather than a scatter
            (np.add.at, slow), we loop over the kh*kw kernel offsets (u, v): for one offset, the
            input pixels it touches form one slice of dx (a shifted contiguous slice of the flat
            rows for stride 1, a strided slice x_pad[:, :, u::s_h, v::s_w] otherwise), and
            different windows never collide inside it. kh*kw vectorised adds in total.

Memory: the columns, outputs and gradients go into recycled buffers (``_recycle.scratch``), because
on the CPU fresh multi-megabyte arrays every step cost page faults (half a step, measured).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._utils import conv_output_size, pair
from ..backend import backend_of
from ._recycle import scratch


class ConvCache(NamedTuple):
    """What conv2d_backward needs: the columns (the windows each output pixel saw) and the weights."""

    cols: Any  # (N, C_in*kh*kw, L): one row per weight position, one column per output pixel
    weight: Any  # (C_out, C_in, kh, kw)
    x_shape: tuple  # (N, C_in, H, W)
    stride: tuple  # (s_h, s_w)
    padding: tuple  # (p_h, p_w)
    has_bias: bool
    row_pitch: int  # W_pad for the flat-rows layout (stride 1), 0 for the plain layout


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


def im2col(x_pad: Any, kernel: tuple, stride: tuple, out_hw: tuple) -> tuple:
    """The columns of a C-contiguous padded input (N, C, H_pad, W_pad), copied once.

    Returns ``(cols, row_pitch)``: cols of shape (N, C*kh*kw, L) with
    ``cols[n, (c, u, v), q] = x_pad[n, c, i*s_h + u, j*s_w + v]`` for output pixel (i, j) at
    column q; ``row_pitch = W_pad`` and ``q = i*W_pad + j`` for stride 1 (flat rows, with junk
    columns j >= W_out), ``row_pitch = 0`` and ``q = i*W_out + j`` otherwise.
    """
    backend = backend_of(x_pad)
    N, C, hp, wp = x_pad.shape
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    s0, s1, s2, s3 = x_pad.strides
    if (sh, sw) == (1, 1):
        # flat rows: row (c, u, v) is the slice [u*W_pad + v, ... + L) of image n, channel c
        L = (ho - 1) * wp + wo
        view = backend.as_strided(x_pad, shape=(N, C, kh, kw, L), strides=(s0, s1, s2, s3, s3))
        pitch = wp
    else:
        # plain: view[n, c, u, v, i, j] = x_pad[n, c, i*s_h + u, j*s_w + v]
        L = ho * wo
        view = backend.as_strided(
            x_pad, shape=(N, C, kh, kw, ho, wo), strides=(s0, s1, s2, s3, s2 * sh, s3 * sw)
        )
        pitch = 0
    cols = scratch(backend.xp, "conv.cols", (N, C * kh * kw, L), x_pad.dtype)
    cols.reshape(view.shape)[...] = view  # the one copy of im2col
    return cols, pitch


def conv2d_forward(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0):
    """Convolve a batch of images with a bank of filters.

    ``y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] * x_pad[n, c, i*s_h + u, j*s_w + v]``

    Args:
        x: input batch (N, C_in, H, W).
        weight: filters (C_out, C_in, kh, kw).
        bias: (C_out,) or None.
        stride, padding: int or pair (height, width).

    Returns:
        ``(y, cache)`` with y of shape (N, C_out, H_out, W_out),
        ``H_out = floor((H + 2*p_h - kh) / s_h) + 1`` (W likewise), and the cache for backward.

    Backward: see :func:`conv2d_backward`.
    """
    xp = backend_of(x).xp
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    N, C, H, W = x.shape
    F, _, kh, kw = weight.shape
    ho = conv_output_size(H, kh, stride[0], padding[0])
    wo = conv_output_size(W, kw, stride[1], padding[1])

    x_pad = xp.ascontiguousarray(pad2d(x, padding))
    # im2col: the strided view of all windows, copied once into (N, C_in*kh*kw, L)
    cols, pitch = im2col(x_pad, (kh, kw), stride, (ho, wo))
    # y[n] = W @ cols[n]: every output pixel's dot products, N matrix products in one call
    y = xp.matmul(weight.reshape(F, C * kh * kw), cols,
                  out=scratch(xp, "conv.y", (N, F, cols.shape[2]), cols.dtype))  # (N, C_out, L)
    if pitch:
        # flat rows: pixel (i, j) sits at column i*W_pad + j; drop the junk columns j >= W_out
        s0, s1, _ = y.strides
        y = backend_of(y).as_strided(y, shape=(N, F, ho, wo), strides=(s0, s1, pitch * y.itemsize,
                                                                        y.itemsize))
    else:
        y = y.reshape(N, F, ho, wo)
    out = scratch(xp, "conv.out", (N, F, ho, wo), y.dtype)
    if bias is not None:
        xp.add(y, bias.reshape(F, 1, 1), out=out)  # one pass: adds the bias, y made contiguous
    else:
        out[...] = y
    y = out
    return y, ConvCache(cols, weight, x.shape, stride, padding, bias is not None, pitch)


def conv2d_backward(dy: Any, cache: ConvCache):
    """Gradients of a convolution.

    **Backward:**
        ``dW = sum_n dY[n] @ cols[n]^T``, ``db = sum of dY over n, i, j``,
        ``dX = col2im(W^T @ dY)`` (each window's gradient added back where the window came from).

    Args:
        dy: dL/dy, shape (N, C_out, H_out, W_out).
        cache: from :func:`conv2d_forward`.

    Returns:
        ``(dx, dw, db)``: shapes (N, C_in, H, W), (C_out, C_in, kh, kw), (C_out,) (None without bias).
    """
    xp = backend_of(dy).xp
    cols, weight, (N, C, H, W), (sh, sw), (ph, pw), has_bias, pitch = cache
    F, _, kh, kw = weight.shape
    ho, wo = dy.shape[2:]
    L = cols.shape[2]

    # dY laid out like the columns: (N, C_out, L)
    if pitch:
        # flat rows: dy spread to rows of length W_pad, zeros in the junk columns
        # (a recycled buffer of this role only ever had its valid columns written: junk stays 0)
        dy_rows = scratch(xp, f"conv.dy_rows.{wo}", (N, F, ho, pitch), dy.dtype)
        dy_rows[:, :, :, :wo] = dy
        dy2 = dy_rows.reshape(N, F, ho * pitch)[:, :, :L]
    else:
        dy2 = xp.ascontiguousarray(dy).reshape(N, F, L)
    # dL/dW = sum over batch and positions of dy (x) window: N products (C_out, L) @ (L, K), summed
    dw = (dy2 @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape)
    # dL/db = sum of dy over batch and positions
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    # dL/dcols[n] = W^T @ dY[n]: each window's share of the input gradient, (N, C_in*kh*kw, L)
    dcols = xp.matmul(weight.reshape(F, C * kh * kw).T, dy2,
                      out=scratch(xp, "conv.dcols", cols.shape, cols.dtype))
    dx = col2im(dcols, (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), (ho, wo), pitch)
    return dx, dw, db


def col2im(dcols: Any, x_shape: tuple, kernel: tuple, stride: tuple, padding: tuple,
           out_hw: tuple, row_pitch: int) -> Any:
    """The adjoint of :func:`im2col`: add each column entry back onto the input pixel it came from.

    ``dcols`` has the columns' layout (N, C*kh*kw, L); returns dx of shape ``x_shape`` (N, C, H, W).
    """
    xp = backend_of(dcols).xp
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    hp, wp = H + 2 * ph, W + 2 * pw
    L = dcols.shape[2]
    dcols = dcols.reshape(N, C, kh, kw, L)
    if row_pitch:
        # flat rows: offset (u, v) touches the contiguous slice [u*W_pad + v, ... + L) of each row
        dx_flat = scratch(xp, "conv.dx", (N, C, hp * wp), dcols.dtype, zero=True)
        for u in range(kh):
            for v in range(kw):
                start = u * wp + v
                dx_flat[:, :, start : start + L] += dcols[:, :, u, v]
        dx_pad = dx_flat.reshape(N, C, hp, wp)
    else:
        # plain: offset (u, v) touches the strided slice x_pad[:, :, u::s_h, v::s_w]
        dcols = dcols.reshape(N, C, kh, kw, ho, wo)
        dx_pad = scratch(xp, "conv.dx", (N, C, hp, wp), dcols.dtype, zero=True)
        for u in range(kh):
            for v in range(kw):
                dx_pad[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw] += dcols[:, :, u, v]
    if ph or pw:
        return xp.ascontiguousarray(dx_pad[:, :, ph : ph + H, pw : pw + W])
    return dx_pad
