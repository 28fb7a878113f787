"""Winograd's F(4x4, 3x3): the fast engine's 3x3 convolutions with 4x fewer multiplications.

The same convolution as ``tinynet/functional/conv.py`` (stride 1, padding 1, so the output is the
input's size), the same numbers up to rounding (see "The price" below), by another algorithm
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

**The math.** Cut the padded input of each channel into 6x6 tiles ``d``, one every 4 pixels (two
neighbouring tiles overlap by 2). The 4x4 block of outputs of channel f over a tile is::

    Y[f] = A^T [ sum over c of (G g[f, c] G^T) * (B^T d[c] B) ] A         (* elementwise, 6x6)

with g the 3x3 kernel and the constant matrices ``B^T`` (6x6), ``G`` (6x3), ``A^T`` (4x6) below.
An elementwise product summed over the input channels is, for each of the 36 positions p of a
6x6 tile, ONE matrix product over all the tiles at once::

    U = G g G^T        (36, C_out, C_in)     the weights, once per call
    V = B^T d B        (36, C_in, tiles)     the input's tiles
    M[p] = U[p] @ V[p] (36, C_out, tiles)
    Y = A^T M A        (16, C_out, tiles)    then each 4x4 block goes to its place in y

36 multiplications per 16 outputs and channel pair, where the direct convolution does 16 * 9 =
144: the products, most of a convolution's time, shrink 4x. Backward runs the chain in reverse,
each step's adjoint, from ``dM = A dY A^T`` (dY: dy cut into the same 4x4 blocks)::

    dU[p] = dM[p] @ V[p]^T, summed over the tiles;  dW = G^T dU G
    dV[p] = U[p]^T @ dM[p];  dd = B dV B^T, each 6x6 tile ADDED back where it came from in dx
    db = the sum of dy over images and pixels

**What makes it fast in NumPy.**

* **Each 6x6 transform of all the tiles is one product** with a Kronecker matrix: a tile read
  row by row is a vector of 36 numbers, and ``B^T d B = kron(B^T, B^T) @ d``, so the transform of
  a slice's tiles is one (36, 36) @ (36, C * tiles) product (``A^T M A``: (16, 36) @ (36, ...)).
* **Slices of about 128 tiles** (several small images, or a band of tile rows of a large one):
  a slice's tiles, V, M and blocks stay in the core's cache between the steps.
* **V is kept for backward** (2.25x the input's numbers): one contiguous piece per slice.
* **Threads**: each thread takes a block of images (``threads.for_batch``), with its own dU and
  db, added at the end in block order.

**The price: rounding.** The transforms multiply by up to 8 and add numbers of both signs, so a
few more bits are lost than in the direct sum: the largest error, relative to the largest output
or gradient, is about 1e-5 in float32 (6e-6 to 9e-6 measured by ``benchmarks/probe_winograd.py``)
where im2col's is about 1e-6, and about 1e-14 in float64. (Libraries for training, cuDNN and
oneDNN among them, use this algorithm for the same layers.)

**When the engine takes it** (``conv.py``, ``_winograd_pays``): on the CPU, for 3x3 kernels with
stride 1 and padding 1, images whose height and width are multiples of 4 (8 or more), and 32 or
more input and output channels; the measurements behind that are in ``docs/speed.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_of
from ._recycle import scratch
from .activation import relu_backward_into, relu_in_place
from .threads import add_blocks, for_batch

# Lavin & Gray's F(4x4, 3x3), interpolation points 0, +-1, +-2 (and infinity)
_B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
BLOCK, TILE = 4, 6  # 4x4 outputs from each 6x6 tile
# tiles per slice (64, 128, 256 and 512 measured in probe_winograd.py: 128 was best or equal)
TILES_PER_SLICE = 128


class WinogradCache(NamedTuple):
    """What the backward needs: the input's tiles V (kept from forward) and the weights."""

    V: Any  # flat: slice by slice, each slice's (36, C_in, tiles) in the order of the tiles
    weight: Any  # (C_out, C_in, 3, 3)
    x_shape: tuple  # (N, C_in, H, W)
    has_bias: bool
    relu_mask: Any = None  # [y > 0] (N, C_out, H, W) when a ReLU ran as the last step


def _matrices(xp: Any, dtype: Any) -> tuple:
    """``(G, kron(B^T, B^T), kron(A^T, A^T))`` in ``dtype``."""
    b_t, a_t = xp.asarray(_B_T, dtype=dtype), xp.asarray(_A_T, dtype=dtype)
    return xp.asarray(_G, dtype=dtype), xp.kron(b_t, b_t), xp.kron(a_t, a_t)


def _transformed_weights(xp: Any, G: Any, weight: Any) -> Any:
    """``U = G g G^T`` for every (f, c) of ``weight`` (C_out, C_in, 3, 3), as (36, C_out, C_in):
    position p of the 6x6 tile, then f, then c."""
    F, C = weight.shape[:2]
    return xp.ascontiguousarray((G @ weight @ G.T).transpose(2, 3, 0, 1)).reshape(
        TILE * TILE, F, C)


def _tiles(backend: Any, a: Any, tiles: tuple, size: int) -> Any:
    """The view ``[r, s, c, n, i, j] = a[n, c, 4*i + r, 4*j + s]`` of an (n, C, H, W) array:
    its size x size tiles (6 for the padded input, 4 for the output's blocks), one every 4
    pixels, ``tiles = (th, tw)`` of them down and across."""
    s = a.strides
    return backend.as_strided(a, (size, size, a.shape[1], a.shape[0]) + tuple(tiles),
                              (s[2], s[3], s[1], s[0], BLOCK * s[2], BLOCK * s[3]))


def _slices(lo: int, hi: int, th: int, tw: int) -> list:
    """``(n0, n1, t0, t1)`` for the images lo..hi-1: images n0..n1-1, tile rows t0..t1-1, about
    TILES_PER_SLICE tiles each (a band of one large image, or several small images), in the
    order of the tiles (n, i, j), so that each slice's V is one contiguous piece of the batch's."""
    if th * tw >= TILES_PER_SLICE:
        rows = max(1, TILES_PER_SLICE // tw)
        return [(n, n + 1, t, min(th, t + rows)) for n in range(lo, hi) for t in range(0, th, rows)]
    per = max(1, TILES_PER_SLICE // (th * tw))
    return [(n, min(hi, n + per), 0, th) for n in range(lo, hi, per)]


def _places(a: Any, t0: int, t1: int) -> list:
    """``(r, s, place, i, j)`` for the 16 offsets (r, s) of a 4x4 block: ``place`` the view
    ``a[:, :, 4*t + r, 4*u + s]`` (tile rows t0 <= t < t1, every tile column u) of an
    (n, C, H, W) array, where only the first i tile rows and j tile columns fall inside it (the
    last tiles hang over an image whose sides are no multiples of 4)."""
    H, W = a.shape[2:]
    top, bottom = BLOCK * t0, min(BLOCK * t1, H)
    out = []
    for r in range(BLOCK):
        for s in range(BLOCK):
            place = a[:, :, top + r : bottom : BLOCK, s::BLOCK]
            out.append((r, s, place, place.shape[2], place.shape[3]))
    return out


def _most_tiles(slices: list, tw: int) -> int:
    return max((n1 - n0) * (t1 - t0) * tw for n0, n1, t0, t1 in slices)


def conv3x3_forward(x: Any, weight: Any, bias: Any, out: Any, relu: bool = False,
                    mask: Any = None, pool_block: Any = None, keep: bool = True) -> Any:
    """Writes ``out`` (N, C_out, H, W) = conv(x, weight) + bias for x (N, C_in, H, W), 3x3
    kernels, padding 1; then ``max(., 0)`` with ``relu``, its mask ``[out > 0]`` into ``mask`` if
    given, and ``pool_block(lo, hi)`` on each thread's block of images (conv.py's epilogues).
    Returns a :class:`WinogradCache` (None without ``keep``: nothing is kept for a backward)."""
    backend = backend_of(x)
    xp = backend.xp
    N, C, H, W = x.shape
    F = weight.shape[0]
    th, tw = -(-H // BLOCK), -(-W // BLOCK)  # tiles down and across (the last may hang over)
    G, BK, AK = _matrices(xp, x.dtype)
    U = _transformed_weights(xp, G, weight)
    V_all = scratch(xp, "winograd.V", (TILE * TILE * C * N * th * tw,), x.dtype) if keep else None
    bias_column = None if bias is None else bias.reshape(F, 1)

    def block(lo: int, hi: int) -> None:  # one thread's images
        slices = _slices(lo, hi, th, tw)
        most = _most_tiles(slices, tw)
        per = max(n1 - n0 for n0, n1, _, _ in slices)
        # (the role names the image size: its users all write the inside, so the border stays 0)
        x_pad = scratch(xp, f"winograd.x_pad.{H}x{W}", (per, C, BLOCK * th + 2, BLOCK * tw + 2),
                        x.dtype)
        D = scratch(xp, "winograd.D", (TILE * TILE * C * most,), x.dtype)
        M = scratch(xp, "winograd.M", (TILE * TILE * F * most,), x.dtype)
        Y = scratch(xp, "winograd.Y", (BLOCK * BLOCK * F * most,), x.dtype)
        V_slice = None if keep else scratch(xp, "winograd.V_slice", (TILE * TILE * C * most,),
                                            x.dtype)
        for n0, n1, t0, t1 in slices:
            k, t = n1 - n0, (n1 - n0) * (t1 - t0) * tw
            if t0 == 0:
                x_pad[:k, :, 1 : H + 1, 1 : W + 1] = x[n0:n1]
            # the slice's 6x6 tiles, gathered: d[r, s, c, (n, i, j)]
            d = D[: TILE * TILE * C * t].reshape(TILE, TILE, C, k, t1 - t0, tw)
            d[...] = _tiles(backend, x_pad[:k], (th, tw), TILE)[:, :, :, :, t0:t1]
            if keep:
                first = (n0 * th + t0) * tw  # the slice's first tile, in the order (n, i, j)
                V = V_all[TILE * TILE * C * first : TILE * TILE * C * (first + t)]
            else:
                V = V_slice[: TILE * TILE * C * t]
            V = V.reshape(TILE * TILE, C, t)
            xp.matmul(BK, d.reshape(TILE * TILE, -1), out=V.reshape(TILE * TILE, -1))  # B^T d B
            m = M[: TILE * TILE * F * t].reshape(TILE * TILE, F, t)
            xp.matmul(U, V, out=m)  # M[p] = U[p] @ V[p]: the products
            blocks = Y[: BLOCK * BLOCK * F * t].reshape(BLOCK * BLOCK, F, t)
            xp.matmul(AK, m.reshape(TILE * TILE, -1), out=blocks.reshape(BLOCK * BLOCK, -1))
            if bias_column is not None:
                blocks += bias_column
            if relu:
                relu_in_place(blocks)
            # each 4x4 block to its place: y[n, f, 4*i + r, 4*j + s] = blocks[r, s, f, (n, i, j)]
            # (where the last tiles hang over the image, their outside outputs are dropped)
            by_offset = blocks.reshape(BLOCK, BLOCK, F, k, t1 - t0, tw)
            for r, s, place, i, j in _places(out[n0:n1], t0, t1):
                place[...] = by_offset[r, s, :, :, :i, :j].transpose(1, 0, 2, 3)
        if mask is not None:  # the ReLU's mask [y > 0], for backward
            xp.greater(out[lo:hi], 0, out=mask[lo:hi])
        if pool_block is not None:
            pool_block(lo, hi)

    for_batch(xp, N, block, per_item=C * 9 * H * W)
    return WinogradCache(V_all, weight, x.shape, bias is not None, mask) if keep else None


def conv3x3_backward(dy: Any, cache: WinogradCache, input_grad: bool = True,
                     pool_block: Any = None) -> tuple:
    """``(dx, dw, db)`` for a cache of :func:`conv3x3_forward`; dy is dL/dy (N, C_out, H, W), or
    the buffer that ``pool_block(lo, hi)`` fills block by block (the pooling's backward first).
    With a fused ReLU, dy * mask comes first."""
    backend = backend_of(dy)
    xp = backend.xp
    V_all, weight, (N, C, H, W), has_bias, mask = cache
    F = weight.shape[0]
    th, tw = -(-H // BLOCK), -(-W // BLOCK)
    G, BK, AK = _matrices(xp, dy.dtype)
    # U^T, as (36, C_in, C_out), from the weights as the reference's backward reads them
    U_t = xp.ascontiguousarray(_transformed_weights(xp, G, weight).transpose(0, 2, 1))
    BK_t, AK_t = xp.ascontiguousarray(BK.T), xp.ascontiguousarray(AK.T)
    dx = scratch(xp, "winograd.dx", (N, C, H, W), dy.dtype) if input_grad else None

    def block(lo: int, hi: int) -> tuple:  # one thread's images: their dx, their dU and db
        if pool_block is not None:  # dL/d(conv or ReLU output) of these images, from the pooling
            pool_block(lo, hi)
        g, first_image = dy, 0
        if mask is not None:  # (after a ReLU that ran as the forward's last step: dy * mask)
            g = scratch(xp, "winograd.dy_masked", (hi - lo, F, H, W), dy.dtype)
            relu_backward_into(dy[lo:hi], mask[lo:hi], g)
            first_image = lo
        slices = _slices(lo, hi, th, tw)
        most = _most_tiles(slices, tw)
        per = max(n1 - n0 for n0, n1, _, _ in slices)
        D = scratch(xp, "winograd.D", (TILE * TILE * C * most,), dy.dtype)
        M = scratch(xp, "winograd.M", (TILE * TILE * F * most,), dy.dtype)
        Y = scratch(xp, "winograd.Y", (BLOCK * BLOCK * F * most,), dy.dtype)
        V_t = scratch(xp, "winograd.V_t", (TILE * TILE * most * C,), dy.dtype)
        part = scratch(xp, "winograd.dU_part", (TILE * TILE, F, C), dy.dtype)
        dU = xp.zeros((TILE * TILE, F, C), dy.dtype)
        db = xp.zeros(F, dy.dtype) if has_bias else None
        if input_grad:
            dV = scratch(xp, "winograd.dV", (TILE * TILE * C * most,), dy.dtype)
            dx_pad = scratch(xp, f"winograd.dx_pad.{H}x{W}",
                             (per, C, BLOCK * th + 2, BLOCK * tw + 2), dy.dtype)
        for n0, n1, t0, t1 in slices:
            k, t = n1 - n0, (n1 - n0) * (t1 - t0) * tw
            # dy's 4x4 blocks, gathered: dY[r, s, f, (n, i, j)]
            # (zeros where the last tiles hang over the image)
            blocks = Y[: BLOCK * BLOCK * F * t].reshape(BLOCK, BLOCK, F, k, t1 - t0, tw)
            for r, s, place, i, j in _places(g[n0 - first_image : n1 - first_image], t0, t1):
                blocks[r, s, :, :, :i, :j] = place.transpose(1, 0, 2, 3)
                if i < t1 - t0:
                    blocks[r, s, :, :, i:] = 0
                if j < tw:
                    blocks[r, s, :, :, :i, j:] = 0
            blocks = blocks.reshape(BLOCK * BLOCK, F, t)
            if db is not None:
                db += blocks.sum(axis=(0, 2))
            m = M[: TILE * TILE * F * t].reshape(TILE * TILE, F, t)
            xp.matmul(AK_t, blocks.reshape(BLOCK * BLOCK, -1), out=m.reshape(TILE * TILE, -1))
            first = (n0 * th + t0) * tw
            V = V_all[TILE * TILE * C * first : TILE * TILE * C * (first + t)].reshape(
                TILE * TILE, C, t)
            v_t = V_t[: TILE * TILE * t * C].reshape(TILE * TILE, t, C)
            v_t[...] = V.transpose(0, 2, 1)  # (a contiguous V^T: its products ran 1.7x faster)
            xp.matmul(m, v_t, out=part)  # dU[p] += dM[p] @ V[p]^T
            dU += part
            if not input_grad:
                continue
            dv = dV[: TILE * TILE * C * t].reshape(TILE * TILE, C, t)
            xp.matmul(U_t, m, out=dv)  # dV[p] = U[p]^T @ dM[p]
            d = D[: TILE * TILE * C * t].reshape(TILE, TILE, C, k, t1 - t0, tw)
            xp.matmul(BK_t, dv.reshape(TILE * TILE, -1), out=d.reshape(TILE * TILE, -1))
            # each 6x6 tile of dd added back where it came from (tiles overlap: adds, in turn)
            if t0 == 0:
                dx_pad[:k] = 0
            places = _tiles(backend, dx_pad[:k], (th, tw), TILE)[:, :, :, :, t0:t1]
            for r in range(TILE):
                for s in range(TILE):
                    places[r, s] += d[r, s]
            if t1 == th:
                dx[n0:n1] = dx_pad[:k, :, 1 : H + 1, 1 : W + 1]
        return dU, db

    dU, db = add_blocks(for_batch(xp, N, block, per_item=C * 9 * H * W))
    # dW = G^T dU G for every (f, c)
    dw = G.T @ dU.reshape(TILE, TILE, F, C).transpose(2, 3, 0, 1) @ G
    return dx, xp.ascontiguousarray(dw), db
