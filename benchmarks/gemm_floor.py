"""How close can an im2col convolution on NumPy's BLAS get to PyTorch? Its matrix products alone.

A convolution by im2col (``tinynet/functional/conv.py``, ``tinynet/fast/conv.py``) is three
matrix products per training step, for each image's columns ``cols`` (C_in*kh*kw, H_out*W_out):

    forward   Y  = W @ cols          (C_out, C_in*kh*kw) @ (C_in*kh*kw, H_out*W_out)
    backward  dW = dY @ cols^T       and    dcols = W^T @ dY

Everything else (the columns' copies, col2im's adds, the bias, the reorderings) is extra. This
script times the three products ALONE, on random matrices of exactly those shapes, split over
the threads the way the fast engine splits a batch (``threads.for_batch``: a block of images per
thread, BLAS on one thread, the products a slice of ``conv._EVAL_COLS_ELEMENTS`` column numbers
at a time, in buffers laid out as its own: ``conv._matrix`` spaces rows that are a multiple of
2 KB long, without which a 32x32 layer's products alone ran 1.3x PyTorch's layer instead of
0.93x), and puts them next to tinynet's whole layer and PyTorch's (oneDNN), forward +
backward with dx, in one run. ``floor / torch`` above 1 means that no rearrangement of the
copies can bring that layer's im2col to PyTorch's time: only less arithmetic or a faster
matrix product could. (tinynet's layer is the fast engine's as it runs: since issue 16's sixth
session, Winograd's F(4x4, 3x3) with 4x fewer multiplications for most of these layers, which
can run below this floor; see docs/speed.md.)

    python benchmarks/gemm_floor.py              # the table, JSON in benchmarks/results/
    python benchmarks/gemm_floor.py --quick      # a few repeats at batch 4: a smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_layers import time_tinynet, time_torch  # noqa: E402


def cases(quick: bool) -> list[tuple[str, int, int, int, int]]:
    """(name, batch, C_in, C_out, image size): 3x3 convolutions with padding 1."""
    b64, b128 = (4, 4) if quick else (64, 128)
    return [
        ("larger conv (bench_layers)", b64, 32, 64, 32),
        ("BN network conv2", b128, 32, 64, 14),
        ("VGG 32->32", b128, 32, 32, 32),
        ("VGG 32->64", b128, 32, 64, 16),
        ("VGG 64->64", b128, 64, 64, 16),
        ("VGG 64->128", b128, 64, 128, 8),
        ("VGG 128->128", b128, 128, 128, 8),
    ]


def time_products(batch: int, c_in: int, c_out: int, size: int, repeats: int) -> tuple:
    """(forward, backward) seconds of the layer's products alone, split as the fast engine
    splits a batch."""
    from tinynet.fast.conv import (
        _EVAL_COLS_ELEMENTS,  # the fast engine's column numbers per slice
        _matrix,  # its buffers for the products' operands
    )
    from tinynet.fast.threads import for_batch

    k, pixels = c_in * 9, size * size
    per_slice = max(1, _EVAL_COLS_ELEMENTS // (k * pixels))  # images per product
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c_out, k), dtype=np.float32)
    # one set of matrices per block (a thread's), as a thread's slice buffers would be
    blocks: dict = {}

    def buffers(lo: int) -> tuple:
        if lo not in blocks:  # laid out as the fast engine lays them out (conv._matrix: rows
            # a multiple of 2 KB long are spaced wider, or the products run 10-25% slower)
            n = per_slice * pixels
            cols, dy = (_matrix(np, f"floor.{role}.{lo}", rows, n, np.float32)
                        for role, rows in (("cols", k), ("dy", c_out)))
            cols[...] = rng.standard_normal((k, n), dtype=np.float32)
            dy[...] = rng.standard_normal((c_out, n), dtype=np.float32)
            blocks[lo] = (cols, dy, _matrix(np, f"floor.y.{lo}", c_out, n, np.float32),
                          _matrix(np, f"floor.dcols.{lo}", k, n, np.float32))
        return blocks[lo]

    def forward_block(lo: int, hi: int) -> None:
        cols, _, y, _ = buffers(lo)
        for n0 in range(lo, hi, per_slice):
            m = min(per_slice, hi - n0) * pixels
            np.matmul(w, cols[:, :m], out=y[:, :m])

    def backward_block(lo: int, hi: int) -> None:
        cols, dy, _, dcols = buffers(lo)
        dw = np.zeros((k, c_out), np.float32)
        for n0 in range(lo, hi, per_slice):
            m = min(per_slice, hi - n0) * pixels
            dw += cols[:, :m] @ dy[:, :m].T
            np.matmul(w.T, dy[:, :m], out=dcols[:, :m])

    per_item = k * pixels
    fwd = C.median_time(lambda: for_batch(np, batch, forward_block, per_item=per_item), repeats)
    bwd = C.median_time(lambda: for_batch(np, batch, backward_block, per_item=per_item), repeats)
    return fwd, bwd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 repeats, batch 4: a smoke test")
    C.output_arguments(p, "gemm_floor[_quick]")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 3
    limiter = C.set_threads(args.threads)  # noqa: F841
    have_torch = C.torch_with_threads(args.threads)
    rng = np.random.default_rng(0)
    rows, results = [], []
    for name, batch, c_in, c_out, size in cases(args.quick):
        spec = dict(kind="conv", args=(c_in, c_out, 3), kwargs=dict(padding=1))
        x = rng.standard_normal((batch, c_in, size, size)).astype(np.float32)
        floor = sum(time_products(batch, c_in, c_out, size, args.repeats))
        layer = sum(time_tinynet(spec, x, args.repeats))
        r = dict(layer=name, batch=batch, c_in=c_in, c_out=c_out, size=size,
                 products_ms=floor * 1e3, tinynet_ms=layer * 1e3)
        if have_torch:
            r["torch_ms"] = sum(time_torch(spec, x, args.repeats)) * 1e3
            r["products_over_torch"] = r["products_ms"] / r["torch_ms"]
            r["tinynet_over_torch"] = r["tinynet_ms"] / r["torch_ms"]
        results.append(r)
        rows.append([f"{name}: {c_in}->{c_out}, {size}x{size}, batch {batch}", r["products_ms"],
                     r["tinynet_ms"], r.get("torch_ms"), r.get("products_over_torch"),
                     r.get("tinynet_over_torch")])
    header = ["layer (3x3, padding 1; fwd + bwd with dx)", "products alone ms",
              "tinynet layer ms", "torch layer ms", "products / torch", "tinynet / torch"]
    table = C.markdown_table(header, rows)
    machine = C.machine_info(args.threads)
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})"
                     for b in machine["blas"] if b.get("architecture"))
    print(f"\nMedians of {args.repeats} runs, {args.threads} threads, {machine['cpu']}, {blas}\n")
    print(table)
    C.save_results(args, "gemm_floor", {"machine": machine, "settings": vars(args),
                                        "layers": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
