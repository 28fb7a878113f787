"""2-D convolution by whole input rows and a banded ("Toeplitz") weight matrix.

The same convolution as :mod:`tinynet.functional.conv` (same arguments, same results), computed
another way, which is faster in training when the images are narrow compared with the kernel
(the course network's second convolution: 12 pixels wide, 5x5 kernel). The fast engine's
``conv2d_forward`` picks it (see ``conv._by_rows``).

The trick: im2col copies every kh x kw window: C*kh*kw numbers per output PIXEL (25 copies of each
input number for a 5x5 kernel). Here we copy whole input ROWS instead: for output row i of image
n, the kh input rows it reads, ``x_pad[n, c, i*s_h + u, :]`` for every channel c and kernel row u,
full width: C*kh*W_pad numbers per output ROW (kh = 5 copies of each input number). One matrix of
weights then gives every pixel of that output row at once:

    y[n, f, i, j] = sum over (c, u, w) of T[(f, j), (c, u, w)] * x_pad[n, c, i*s_h + u, w]

    T[(f, j), (c, u, j*s_w + v)] = w[f, c, u, v], and 0 elsewhere

(output pixel j sees the kernel shifted by j*s_w: each row of T is a row of the kernel placed at
its pixel, the same numbers along every diagonal, a "Toeplitz" band). With R the copied rows:

    Y = T @ R     T: (C_out*W_out, C_in*kh*W_pad),  R: (C_in*kh*W_pad, H_out*N),
                  Y: (C_out*W_out, H_out*N), one column per output row (i, n)

T is mostly zeros (kw numbers of each W_pad are weights), so this product does W_pad/kw times
the arithmetic of im2col's (2.4x for the course network's conv2). In exchange R is 5x smaller than
im2col's columns (less copying, less memory traffic, 5 adds instead of 25 in backward) and the
product has a shape BLAS runs fast. For a wide image (W_pad of 28 for a 5x5 kernel: 5.6x the
arithmetic) im2col is as fast.

Backward, with dY = dy laid out like Y:
    dL/dW: dT = dY @ R^T, then dW[f, c, u, v] = sum over j of dT[(f, j), (c, u, j*s_w + v)]
           (the weights were copied along T's diagonals, so their gradients are summed back
           along the same diagonals, read through a strided view)
    dL/db = sum of dY
    dL/dx: dR = T^T @ dY, and each copied row is added back onto the input row it came from:
           kh adds, one per kernel row u (rows of different output rows i overlap, so they add)

Layout: the padded input is kept transposed, xt[c, w, h, n], images last, so that the copied rows
(and the adds of backward) run over the whole batch with unit stride:
R[(c, u, w), (i, n)] = xt[c, w, i*s_h + u, n]. Y and dY are stored transposed, (H_out*N,
C_out*W_out), so that each output row's W_out pixels lie side by side, as in y. Threads split the
OUTPUT ROWS i (each block: its columns of R and rows of Y^T and dY^T); the adds of backward come
after the blocks, since the input rows that neighbouring output rows read overlap.

"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_of
from ._recycle import scratch
from .activation import relu_backward_into, relu_in_place
from .threads import add_blocks, for_batch


class RowsCache(NamedTuple):
    """What :func:`conv2d_rows_backward` needs."""

    rows: Any  # R: (C_in*kh*W_pad, H_out*N), the copied input rows
    band: Any  # T: (C_out*W_out, C_in*kh*W_pad), the banded weights
    weight: Any  # (C_out, C_in, kh, kw)
    x_shape: tuple  # (N, C_in, H, W)
    stride: tuple
    padding: tuple
    has_bias: bool
    relu_mask: Any = None  # [y > 0] (N, C_out, H_out, W_out) when a ReLU ran as the last step


def _diagonals(band5: Any, kw: int, sw: int) -> Any:
    """The view ``V[f, j, c, u, v] = band5[f, j, c, u, j*s_w + v]`` of a
    (C_out, W_out, C, kh, W_pad) array: where T holds w[f, c, u, v] for output pixel j."""
    F, wo, C, kh, _ = band5.shape
    sf, sj, sc, su, sx = band5.strides
    return backend_of(band5).as_strided(band5, shape=(F, wo, C, kh, kw),
                                        strides=(sf, sj + sw * sx, sc, su, sx))


def banded_weights(weight: Any, wp: int, wo: int, sw: int) -> Any:
    """T of shape (C_out*W_out, C_in*kh*W_pad): ``T[(f, j), (c, u, j*s_w + v)] = w[f, c, u, v]``.

    A recycled buffer of this role and shape only ever has the same band written (the role names
    kw and s_w, which place it), so it stays 0 off the band.
    """
    xp = backend_of(weight).xp
    F, C, kh, kw = weight.shape
    band5 = scratch(xp, f"conv_rows.band.{kw}.{sw}", (F, wo, C, kh, wp), weight.dtype)
    _diagonals(band5, kw, sw)[...] = weight[:, None]  # the same kernel for every pixel j
    return band5.reshape(F * wo, C * kh * wp)


def rows_work(rows: Any, ho: int, kw: int) -> int:
    """Numbers per output row for ``for_batch``'s split: kw times R's (the work is about that of
    im2col's columns, which are that size: R is small, its product is not)."""
    return rows.size // ho * kw if ho else 0


def rows_convolver(x: Any, weight: Any, bias: Any, kernel: tuple, stride: tuple,
                   padding: tuple, out_hw: tuple, relu: bool = False, mask: Any = None) -> tuple:
    """Buffers for convolving a batch of x's shape by rows, and ``convolve(x_b, out_b)``, which
    writes ``out_b = conv(x_b) + b`` for such a batch (its threads split the output rows), then
    ``max(., 0)`` with ``relu`` (and the ReLU's ``mask``, if given).
    Returns ``(convolve, R, T)``.
    """
    backend = backend_of(x)
    xp = backend.xp
    N, C, H, W = x.shape
    F = weight.shape[0]
    kh, (sh, sw), (ph, pw), (ho, wo) = kernel[0], stride, padding, out_hw
    hp, wp = H + 2 * ph, W + 2 * pw
    # the padded input, transposed: xt[c, w, h, n] (the role names the padding: the borders of a
    # recycled buffer are still 0)
    xt = scratch(xp, f"conv_rows.xt.{ph}.{pw}", (C, wp, hp, N), x.dtype)
    s_c, s_w, s_h, s_n = xt.strides
    # windows[c, u, w, i, n] = xt[c, w, i*s_h + u, n]: the kh input rows of output row i
    windows = backend.as_strided(xt, shape=(C, kh, wp, ho, N),
                                 strides=(s_c, s_h, s_w, s_h * sh, s_n))
    rows = scratch(xp, "conv_rows.R", (C * kh * wp, ho * N), x.dtype)
    rows5 = rows.reshape(windows.shape)
    band = banded_weights(weight, wp, wo, sw)
    # Y transposed, (H_out*N, C_out*W_out): each output pixel row j = 0..W_out-1 is contiguous
    y_t = scratch(xp, "conv_rows.Yt", (ho * N, F * wo), x.dtype)
    y_pixels = y_t.reshape(ho, N, F, wo).transpose(1, 2, 0, 3)  # (N, C_out, H_out, W_out) view
    bias_row = None if bias is None else xp.repeat(bias, wo)  # b[f] for each column (f, j)

    def convolve(x_b: Any, out_b: Any) -> None:
        xt[:, pw : pw + W, ph : ph + H] = x_b.transpose(1, 3, 2, 0)

        def block(i0: int, i1: int) -> None:  # the output rows i0..i1-1 (one thread)
            rows5[:, :, :, i0:i1] = windows[:, :, :, i0:i1]  # the one copy: kh rows per row
            c = slice(i0 * N, i1 * N)
            xp.matmul(rows[:, c].T, band.T, out=y_t[c])  # Y^T = R^T @ T^T: every output row
            # the bias (and the ReLU) on Y^T's long rows, then one reordering copy to
            # (N, C_out, H_out, W_out): 2x faster than adding the bias on the way (measured)
            if bias is not None:
                xp.add(y_t[c], bias_row, out=y_t[c])
            if relu:  # while the block is still in this core's cache
                relu_in_place(y_t[c])
            out_b[:, :, i0:i1] = y_pixels[:, :, i0:i1]
            if mask is not None:  # the ReLU's mask [y > 0], for backward
                xp.greater(out_b[:, :, i0:i1], 0, out=mask[:, :, i0:i1])

        for_batch(xp, ho, block, per_item=rows_work(rows, ho, weight.shape[3]))

    return convolve, rows, band


def conv2d_rows_backward(dy: Any, cache: RowsCache, input_grad: bool = True) -> tuple:
    """Gradients ``(dx, dw, db)`` of a convolution done by rows (see the module docstring)."""
    xp = backend_of(dy).xp
    rows, band, weight, (N, C, H, W), (sh, sw), (ph, pw), has_bias, mask = cache
    F, _, kh, kw = weight.shape
    ho, wo = dy.shape[2:]
    hp, wp = H + 2 * ph, W + 2 * pw
    # dY laid out like Y^T: (H_out*N, C_out*W_out)
    dy4 = scratch(xp, "conv_rows.dYt", (ho, N, F, wo), dy.dtype)
    dy_t = dy4.reshape(ho * N, F * wo)
    d_rows = scratch(xp, "conv_rows.dR", rows.shape, rows.dtype) if input_grad else None

    def block(i0: int, i1: int) -> tuple:
        """The output rows i0..i1-1 (one thread): their dR, and their share of dW and db."""
        # (after a ReLU that ran as the forward's last step, its backward first: dy * mask)
        relu_backward_into(dy[:, :, i0:i1].transpose(2, 0, 1, 3),
                           None if mask is None else mask[:, :, i0:i1].transpose(2, 0, 1, 3),
                           dy4[i0:i1])
        c = slice(i0 * N, i1 * N)
        # dL/dT = dY @ R^T (here its transpose, R @ dY^T); the weights sit on T's diagonals,
        # so dW sums them back from there
        d_band_t = rows[:, c] @ dy_t[c]  # (C_in*kh*W_pad, C_out*W_out)
        d_band5 = d_band_t.reshape(C, kh, wp, F, wo).transpose(3, 4, 0, 1, 2)  # like T's
        dw = _diagonals(d_band5, kw, sw).sum(axis=1)
        db = dy_t[c].sum(axis=0).reshape(F, wo).sum(axis=1) if has_bias else None
        if input_grad:
            xp.matmul(band.T, dy_t[c].T, out=d_rows[:, c])  # dL/dR = T^T @ dY
        return dw, db

    # the blocks' shares of dW and db, added in block order
    dw, db = add_blocks(for_batch(xp, ho, block, per_item=rows_work(rows, ho, kw)))
    if not input_grad:
        return None, dw, db
    # each copied row back onto its input row: one add per kernel row u (output rows i and i + 1
    # read overlapping input rows, so this runs after every row's dR, on whole planes)
    dxt = scratch(xp, "conv_rows.dxt", (C, wp, hp, N), dy.dtype, zero=True)  # like xt
    d_rows5 = d_rows.reshape(C, kh, wp, ho, N)
    for u in range(kh):
        dxt[:, :, u : u + sh * (ho - 1) + 1 : sh] += d_rows5[:, u]
    dx = scratch(xp, "conv_rows.dx", (N, C, H, W), dy.dtype)
    dx[...] = dxt[:, pw : pw + W, ph : ph + H].transpose(3, 0, 2, 1)
    return dx, dw, db
