"""Winograd's F(2x2, 3x3) and F(4x4, 3x3) convolutions in NumPy, part by part, against im2col.

F(4x4, 3x3) is in the fast engine since issue 16's sixth session (``tinynet/fast/winograd.py``,
the same steps); this probe keeps both methods measurable part by part, on one thread, so that a
new machine can show where their time goes (F(2x2, 3x3) was tried and dropped).

A 3x3 convolution (stride 1) computes each 2x2 block of outputs from a 4x4 tile of the padded
input with 16 multiplications per (input channel, output channel) pair instead of 36
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):

    Y_tile = A^T [ (G g G^T) * (B^T d_tile B) ] A       (* elementwise, 4x4; then summed over c)

so the products shrink 2.25x: for each of the 16 tile positions p, ONE product
``M[p] = U[p] @ V[p]``, (C_out, C_in) @ (C_in, tiles), with U = G g G^T (the weights, once per
call) and V = B^T d B (the input tiles). Backward, with dM = A dY A^T:
``dU[p] = dM[p] @ V[p]^T`` (then dW = G^T dU G) and ``dV[p] = U[p]^T @ dM[p]`` (then
dx = B dV B^T, added back onto the overlapping tiles). F(4x4, 3x3) is the same with 4x4 blocks
from 6x6 tiles: 36 multiplications per 16 outputs instead of 144, so the products shrink 4x and
the tiles overlap less (2.25x the input's numbers instead of 4x), at the price of larger
transforms and about 10x the rounding error (still about 1e-5 of the largest value in float32).

The price is the transforms: gathering the overlapping tiles, B^T d B, A^T M A, the
scatter of the blocks, and in backward the overlap-add; in NumPy each is a pass over
arrays 2-4x the size of the activations (written here as small Kronecker products,
``kron(B^T, B^T) @ tiles``, the fastest of the ways tried). This script checks each method
against the reference kernels (float64) and times it, part by part, next to the fast
engine's im2col convolution on ONE thread (BLAS on one thread too).

    python benchmarks/probe_winograd.py                  # the table, JSON in benchmarks/results/
    python benchmarks/probe_winograd.py --quick          # a smoke test

The measurements, and where the engine takes F(4x4, 3x3): docs/speed.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


class Method(NamedTuple):
    """F(m x m, 3x3): an m x m block of outputs from an (m+2) x (m+2) tile (Lavin & Gray's
    matrices; F(4x4, 3x3) with the points 0, +-1, +-2)."""

    m: int
    B_T: np.ndarray  # (m+2, m+2): V = B^T d B
    G: np.ndarray  # (m+2, 3): U = G g G^T
    A_T: np.ndarray  # (m, m+2): Y = A^T M A

    @property
    def name(self) -> str:
        return f"F({self.m}x{self.m}, 3x3)"

    @property
    def BK(self) -> np.ndarray:  # V((m+2)^2) = BK @ tile((m+2)^2), the tile read row by row
        return np.kron(self.B_T, self.B_T)

    @property
    def AK(self) -> np.ndarray:  # y(m^2) = AK @ M((m+2)^2)
        return np.kron(self.A_T, self.A_T)


F2 = Method(
    2,
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32),
    np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32))
F4 = Method(
    4,
    np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float32),
    np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float32),
    np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
              [0, 1, -1, 8, -8, 1]], np.float32))
METHODS = (F2, F4)
# the parts that are the method's products (the rest are its transforms)
PRODUCTS = ("fwd: M[p] = U[p] @ V[p]", "bwd: dU[p] += dM[p] @ V[p]^T",
            "bwd: dV[p] = U[p]^T @ dM[p]")


class _Part:
    """One timed part of a Clock (a context manager)."""

    def __init__(self, parts: dict, name: str) -> None:
        self.parts, self.name = parts, name

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.parts[self.name] = self.parts.get(self.name, 0.0) + time.perf_counter() - self.t


class Clock:
    """Seconds spent in each named part, added over calls: ``with clock("name"): ...``."""

    def __init__(self) -> None:
        self.parts: dict = {}

    def __call__(self, name: str) -> _Part:
        return _Part(self.parts, name)


def _tiles(a: np.ndarray, th: int, tw: int, size: int, step: int) -> np.ndarray:
    """View ``[r, s, c, n, i, j] = a[n, c, step*i + r, step*j + s]`` of an (n, C, H, W) array:
    the size x size tiles (m+2 for the input, m for the output blocks) at a step of m."""
    s = a.strides
    return np.lib.stride_tricks.as_strided(
        a, shape=(size, size, a.shape[1], a.shape[0], th, tw),
        strides=(s[2], s[3], s[1], s[0], step * s[2], step * s[3]))


TILES_PER_PRODUCT = 128  # tiles per slice (64-256 tried: 128 is best or equal on every shape)


def _slices(n_images: int, th: int, tw: int) -> list:
    """``(n0, n1, t0, t1)``: images n0..n1-1, tile rows t0..t1-1; about TILES_PER_PRODUCT tiles
    each (a band of tile rows of one large image, or several small images), in the order of
    the tiles (n, i, j), so that each slice's V is one contiguous piece of the batch's."""
    if th * tw >= TILES_PER_PRODUCT:
        rows = max(1, TILES_PER_PRODUCT // tw)
        return [(n, n + 1, t, min(th, t + rows)) for n in range(n_images)
                for t in range(0, th, rows)]
    per = max(1, TILES_PER_PRODUCT // (th * tw))
    return [(n, min(n_images, n + per), 0, th) for n in range(0, n_images, per)]


def winograd(x, w, dy, clock: Clock, method: Method = F2) -> tuple:
    """(y, dx, dw) of a 3x3 convolution with padding 1 (image sizes a multiple of m). Forward
    keeps V ((m+2)^2/m^2 times the input's numbers: 4x for m = 2, 2.25x for m = 4) for backward,
    as a whole-batch cache would."""
    N, Ci, H, W = x.shape
    F = w.shape[0]
    m, a = method.m, method.m + 2
    aa, G, BK, AK = a * a, method.G, method.BK, method.AK
    th, tw = H // m, W // m
    slices = _slices(N, th, tw)
    t_max = max((n1 - n0) * (t1 - t0) * tw for n0, n1, t0, t1 in slices)
    with clock("weights: U = G g G^T"):
        U = np.ascontiguousarray(
            np.einsum("ku,fcuv,lv->klfc", G, w, G, optimize=True).reshape(aa, F, Ci))
        U_t = np.ascontiguousarray(U.transpose(0, 2, 1))
    y, dx = np.empty((N, F, H, W), np.float32), np.empty_like(x)
    dU = np.zeros((aa, F, Ci), np.float32)
    V_all = np.empty(aa * Ci * N * th * tw, np.float32)
    per = max(n1 - n0 for n0, n1, _, _ in slices)
    x_pad = np.zeros((per, Ci, H + 2, W + 2), np.float32)
    dx_pad = np.zeros_like(x_pad)
    buffers = {name: np.empty(aa * c * t_max, np.float32)
               for name, c in (("D", Ci), ("M", F), ("Vt", Ci), ("dV", Ci))}
    Y = np.empty(m * m * F * t_max, np.float32)

    def pieces(n0, n1, t0, t1):
        k, rows = n1 - n0, t1 - t0
        t = k * rows * tw
        first = (n0 * th + t0) * tw  # the slice's first tile in the order (n, i, j)
        V = V_all[aa * Ci * first : aa * Ci * (first + t)].reshape(aa, Ci, t)
        D = buffers["D"][: aa * Ci * t].reshape(a, a, Ci, k, rows, tw)
        M = buffers["M"][: aa * F * t].reshape(aa, F, t)
        return k, rows, t, V, D, M

    for n0, n1, t0, t1 in slices:  # forward
        k, rows, t, V, D, M = pieces(n0, n1, t0, t1)
        if t0 == 0:
            with clock("fwd: pad"):
                x_pad[:k, :, 1 : H + 1, 1 : W + 1] = x[n0:n1]
        with clock("fwd: gather the tiles"):
            D[...] = _tiles(x_pad[:k], th, tw, a, m)[:, :, :, :, t0:t1]
        with clock("fwd: V = B^T d B"):
            np.matmul(BK, D.reshape(aa, -1), out=V.reshape(aa, -1))
        with clock("fwd: M[p] = U[p] @ V[p]"):
            np.matmul(U, V, out=M)
        with clock("fwd: Y = A^T M A"):
            blocks = Y[: m * m * F * t].reshape(m, m, F, k, rows, tw)
            np.matmul(AK, M.reshape(aa, -1), out=blocks.reshape(m * m, -1))
        with clock("fwd: scatter the blocks"):
            out = _tiles(y[n0:n1], th, tw, m, m)[:, :, :, :, t0:t1]
            for r in range(m):
                for q in range(m):
                    out[r, q] = blocks[r, q]
    for n0, n1, t0, t1 in slices:  # backward
        k, rows, t, V, D, M = pieces(n0, n1, t0, t1)
        if t0 == 0:
            dx_pad[:k] = 0
        with clock("bwd: gather dy's blocks"):
            blocks = Y[: m * m * F * t].reshape(m, m, F, k, rows, tw)
            grads = _tiles(dy[n0:n1], th, tw, m, m)[:, :, :, :, t0:t1]
            for r in range(m):
                for q in range(m):
                    blocks[r, q] = grads[r, q]
        with clock("bwd: dM = A dY A^T"):
            np.matmul(AK.T, blocks.reshape(m * m, -1), out=M.reshape(aa, -1))
        with clock("bwd: dU[p] += dM[p] @ V[p]^T"):
            V_t = buffers["Vt"][: aa * Ci * t].reshape(aa, t, Ci)
            V_t[...] = V.transpose(0, 2, 1)  # (a contiguous V^T: 1.7x faster products)
            dU += M @ V_t
        with clock("bwd: dV[p] = U[p]^T @ dM[p]"):
            dV = buffers["dV"][: aa * Ci * t].reshape(aa, Ci, t)
            np.matmul(U_t, M, out=dV)
        with clock("bwd: dd = B dV B^T"):
            np.matmul(BK.T, dV.reshape(aa, -1), out=D.reshape(aa, -1))
        with clock("bwd: overlap-add, unpad"):
            d_tiles = _tiles(dx_pad[:k], th, tw, a, m)[:, :, :, :, t0:t1]
            for r in range(a):
                for q in range(a):
                    d_tiles[r, q] += D[r, q]
            if t1 == th:
                dx[n0:n1] = dx_pad[:k, :, 1 : H + 1, 1 : W + 1]
    with clock("weights: dW = G^T dU G"):
        dw = np.einsum("ku,klfc,lv->fcuv", G, dU.reshape(a, a, F, Ci), G, optimize=True)
    return y, dx, dw


def fast_engine(x, w, dy) -> tuple:
    """The fast engine's im2col convolution (its Winograd switched off for the call)."""
    from tinynet.fast import conv

    saved, conv._WINOGRAD = conv._WINOGRAD, False
    try:
        y, cache = conv.conv2d_forward(x, w, None, 1, 1)
        dx, dw, _ = conv.conv2d_backward(dy, cache)
    finally:
        conv._WINOGRAD = saved
    return y, dx, dw


def check(x, w, dy, got: tuple) -> float:
    """The largest error of (y, dx, dw) against the reference kernels in float64, relative to
    each array's largest value."""
    from tinynet.functional.conv import conv2d_backward, conv2d_forward

    y, cache = conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, 1, 1)
    dx, dw, _ = conv2d_backward(dy.astype(np.float64), cache)
    return max(float(np.abs(a - b).max() / np.abs(b).max())
               for a, b in zip(got, (y, dx, dw), strict=True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="batch 4, 1 repeat: a smoke test")
    C.output_arguments(p, "probe_winograd[_quick]")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 4, 1
    import tinynet

    tinynet.set_num_threads(1)
    limiter = C.set_threads(1)  # noqa: F841 (BLAS on one thread, kept for the whole run)
    # (C_in, C_out, image size): the shapes of issue 16's networks
    cases = [(32, 64, 32), (32, 64, 14), (32, 32, 32), (64, 64, 16), (64, 128, 8), (128, 128, 8)]
    rng = np.random.default_rng(0)
    rows, results = [], []
    for ci, co, size in cases:
        x = rng.standard_normal((args.batch, ci, size, size), dtype=np.float32)
        w = (rng.standard_normal((co, ci, 3, 3)) * 0.1).astype(np.float32)
        dy = rng.standard_normal((args.batch, co, size, size), dtype=np.float32)
        fast = C.median_time(lambda x=x, w=w, dy=dy: fast_engine(x, w, dy), args.repeats,
                             warmup=1)
        name = f"{ci}->{co}, {size}x{size}"
        for method in METHODS:
            if size % method.m:  # (tiles of m x m outputs: sizes a multiple of m only)
                continue
            error = check(x, w, dy, winograd(x, w, dy, Clock(), method))
            times, clocks = [], []
            for _ in range(args.repeats):
                clock = Clock()
                t0 = time.perf_counter()
                winograd(x, w, dy, clock, method)
                times.append(time.perf_counter() - t0)
                clocks.append(clock.parts)
            k = int(np.argsort(times)[len(times) // 2])  # the median run, and its parts
            wino = times[k]
            parts = {part: s * 1e3 for part, s in clocks[k].items()}
            results.append(dict(layer=name, method=method.name, batch=args.batch,
                                winograd_ms=wino * 1e3, fast_engine_ms=fast * 1e3,
                                max_relative_error=error, winograd_parts_ms=parts))
            assert set(PRODUCTS) <= parts.keys(), "a product's clock name changed"
            products = sum(parts[n] for n in PRODUCTS)
            rows.append([name, method.name, fast * 1e3, wino * 1e3, wino / fast, products,
                         sum(parts.values()) - products, error])
    header = [f"layer (3x3, padding 1, batch {args.batch}; fwd + bwd, 1 thread)", "method",
              "fast engine ms", "Winograd ms", "Winograd / fast", "its 3 products ms",
              "its transforms ms", "max rel. error"]
    table = C.markdown_table(header, rows)
    print(f"\nMedians of {args.repeats} runs, 1 thread\n")
    print(table)
    C.save_results(args, "probe_winograd", dict(machine=C.machine_info(1), settings=vars(args),
                                                layers=results, table=table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
