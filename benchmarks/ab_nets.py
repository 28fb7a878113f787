"""A/B of the fast engine's tricks for the BatchNorm and VGG-style networks, inside ONE process.

The sibling of ``ab_conv.py`` (same protocol: both ways warmed up, then alternated round after
round in the same process, medians reported), for the tricks of issue 16:

* ``sliced``: a training step of the BN network (batch 128), convolutions with 64+ column rows
  trained by slices (``conv.SlicedCache``) vs with whole-batch columns kept for backward;
* ``sliced-vgg``: the same switch on the VGG-style network's training step (batch 128, 32x32);
* ``dx-conv``: the VGG-style network's training step, dx of a sliced convolution with
  C_out <= C_in as a convolution of dy with the flipped kernel vs W^T @ dY and col2im;
* ``plain``: the VGG-style network's training step, sliced convolutions in the plain layout
  where flat rows would be more than 15% junk columns (its 8x8 layers) vs flat rows always;
* ``pool-first`` / ``pool-first-vgg``: a training step of the BN (VGG-style) network, each
  Conv+BN+ReLU+MaxPool group max-pooling before its ReLU vs the modules in the plain order;
* ``big-conv``: bench_layers.py's larger convolution alone (32->64, 3x3, padding 1, 32x32,
  batch 64, forward + backward with dx), by slices vs whole-batch columns;
* ``same-rows`` / ``same-rows-vgg`` / ``same-rows-big``: the BN network's step, the VGG-style
  network's step, the larger convolution alone: "same" convolutions (3x3, padding 1) in the
  same-rows layout (no padding columns, no junk) vs flat rows (and the plain layout at 15%+ junk);
* ``images-first`` / ``images-first-vgg``: the BN (VGG-style) network's step, the first layer's
  few rows of columns (C_in*kh*kw < 64) laid out images first, (N, C_in*kh*kw, H*W), vs
  (C_in*kh*kw, N*H*W) with the reordering copies of y and dy;
* ``spaced-rows-big``: the larger convolution alone, product buffers whose rows are a multiple
  of 2 KB long spaced 64 bytes wider (``conv._matrix``) vs not;
* ``offset`` / ``offset-vgg`` / ``offset-big``: the BN network's step, the VGG-style network's
  step, the larger convolution alone: col2im of a sliced "same" convolution by offset
  (``conv.col2im_by_offset``: one flat add per weight position) vs by rows
  (``conv.col2im_block``: the same adds as strided rows);
* ``winograd`` / ``winograd-vgg`` / ``winograd-big``: the BN network's step, the VGG-style
  network's step, the larger convolution alone: 3x3 convolutions of 32+ channels by Winograd's
  F(4x4, 3x3) (``tinynet/fast/winograd.py``) vs by im2col columns;
* ``fold-eval``: evaluation of 1000 images by the fused BN network (Conv+BN+ReLU+pool folded
  into one convolution) vs the plain model.

Every case but ``winograd-*`` runs with Winograd off, so that it measures the im2col trick it
names on every layer.

    python benchmarks/ab_nets.py                  # every case, 8 rounds
    python benchmarks/ab_nets.py --what sliced --rounds 12
    python benchmarks/ab_nets.py --quick          # smoke test
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from ab_conv import _alternate  # noqa: E402
from bench_nets import tinynet_model  # noqa: E402

CASES = ["sliced", "sliced-vgg", "dx-conv", "plain", "pool-first", "pool-first-vgg", "big-conv",
         "fold-eval", "same-rows", "same-rows-vgg", "same-rows-big", "spaced-rows-big",
         "images-first", "images-first-vgg", "offset", "offset-vgg", "offset-big",
         "winograd", "winograd-vgg", "winograd-big"]
VGG_CASES = ("sliced-vgg", "dx-conv", "plain", "pool-first-vgg", "same-rows-vgg",
             "images-first-vgg", "offset-vgg", "winograd-vgg")  # (the others:
# the BN network)


def _switch(what: str) -> tuple:
    """(way A, way B, set(a: bool)) for a case."""
    from tinynet.fast import conv

    fuse = importlib.import_module("tinynet.fast.fuse")  # (the module: tinynet.fast.fuse is also
    # the name of its function)
    if what.startswith("pool-first"):
        return ("pool, then ReLU", "ReLU, then pool",
                lambda a: setattr(fuse, "_POOL_FIRST", a))
    if what.startswith("winograd"):
        return ("Winograd F(4x4, 3x3)", "im2col columns",
                lambda a: setattr(conv, "_WINOGRAD", a))
    if what.startswith("images-first"):
        return ("images first", "weight positions first",
                lambda a: setattr(conv, "_IMAGES_FIRST", a))
    if what.startswith("offset"):
        return ("col2im by offset", "col2im by rows",
                lambda a: setattr(conv, "_COL2IM_BY_OFFSET", a))
    if what == "spaced-rows-big":
        return ("rows spaced off 2 KB", "rows as long as the matrix",
                lambda a: setattr(conv, "_SPACED_ROWS", a))
    if what.startswith("same-rows"):
        return ("same rows", "flat rows (plain at 15%+ junk)",
                lambda a: setattr(conv, "_SAME_ROWS", a))
    if what == "plain":
        default = conv._PLAIN_JUNK
        return ("plain layout at 15%+ junk", "flat rows always",
                lambda a: setattr(conv, "_PLAIN_JUNK", default if a else 1.0))
    if what == "dx-conv":
        return ("dx by a convolution of dy", "dx by col2im",
                lambda a: setattr(conv, "_DX_BY_CONV", a))
    return "by slices", "whole-batch columns", lambda a: setattr(conv, "_SLICED", a)


def ab_steps(what: str, batch_size: int, steps: int, rounds: int, seed: int) -> dict:
    import tinynet
    from tinynet import nn
    from tinynet.fast import conv

    fuse = importlib.import_module("tinynet.fast.fuse")
    net_name = "vgg" if what in VGG_CASES else "bn"
    model = tinynet.fuse(tinynet_model(net_name, seed))
    rng = np.random.default_rng(seed)
    shape = (3, 32, 32) if net_name == "vgg" else (1, 28, 28)
    xs = rng.standard_normal((4, batch_size) + shape).astype(np.float32)
    ys = rng.integers(0, 10, (4, batch_size))
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    way_a, way_b, set_way = _switch(what)
    defaults = (conv._SLICED, conv._DX_BY_CONV, conv._PLAIN_JUNK, conv._SAME_ROWS,
                conv._IMAGES_FIRST, fuse._POOL_FIRST, conv._COL2IM_BY_OFFSET, conv._WINOGRAD)

    if not what.startswith("winograd"):
        conv._WINOGRAD = False

    def run_once(a: bool) -> float:
        set_way(a)
        t0 = 0.0
        for k in range(steps + 2):  # 2 untimed steps after each switch
            if k == 2:
                t0 = time.perf_counter()
            loss_fn(model(xs[k % 4]), ys[k % 4])
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        return (time.perf_counter() - t0) / steps

    try:
        return _alternate({way_a: True, way_b: False}, rounds, run_once)
    finally:
        (conv._SLICED, conv._DX_BY_CONV, conv._PLAIN_JUNK, conv._SAME_ROWS, conv._IMAGES_FIRST,
         fuse._POOL_FIRST, conv._COL2IM_BY_OFFSET, conv._WINOGRAD) = defaults


def ab_big_conv(calls: int, rounds: int, seed: int, what: str = "big-conv") -> dict:
    from tinynet.fast import conv

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 32, 32, 32)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 3, 3)) * 0.1).astype(np.float32)
    dy = rng.standard_normal((64, 64, 32, 32)).astype(np.float32)
    way_a, way_b, set_way = _switch("sliced" if what == "big-conv" else what)
    defaults = (conv._SLICED, conv._SAME_ROWS, conv._SPACED_ROWS, conv._COL2IM_BY_OFFSET,
                conv._WINOGRAD)

    if not what.startswith("winograd"):
        conv._WINOGRAD = False

    def run(a: bool) -> float:
        set_way(a)
        t0 = time.perf_counter()
        for _ in range(calls):
            cache = conv.conv2d_forward(x, w, None, 1, 1)[1]
            conv.conv2d_backward(dy, cache)
        return (time.perf_counter() - t0) / calls

    try:
        return _alternate({way_a: True, way_b: False}, rounds, run)
    finally:
        (conv._SLICED, conv._SAME_ROWS, conv._SPACED_ROWS, conv._COL2IM_BY_OFFSET,
         conv._WINOGRAD) = defaults


def ab_fold_eval(calls: int, rounds: int, seed: int) -> dict:
    import tinynet

    model = tinynet_model("bn", seed)
    x = np.random.default_rng(seed).standard_normal((1000, 1, 28, 28)).astype(np.float32)
    model.eval()
    fused = tinynet.fuse(model)

    def run(net: Any) -> float:
        with tinynet.no_grad():
            t0 = time.perf_counter()
            for _ in range(calls):
                net(x)
        return (time.perf_counter() - t0) / calls

    return _alternate({"BN folded into the conv": fused, "plain model": model}, rounds, run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", nargs="+", default=CASES, choices=CASES)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds, few steps")
    C.output_arguments(p, "ab_nets[_quick]")
    args = p.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    bs = 8 if args.quick else args.batch_size
    limiter = C.set_threads(args.threads)  # noqa: F841 (kept alive for the whole run)
    results, rows = [], []
    for what in args.what:
        if what in ("big-conv", "same-rows-big", "spaced-rows-big", "offset-big", "winograd-big"):
            label = f"{what}: 32->64 3x3 p1, 32x32, batch 64, forward + backward"
            r = ab_big_conv(1 if args.quick else 5, rounds, args.seed, what)
        elif what == "fold-eval":
            label = "fold-eval: 1000 images, BN network"
            r = ab_fold_eval(1 if args.quick else 3, rounds, args.seed)
        else:
            net = "VGG-style" if what in VGG_CASES else "BN"
            label = f"{what}: training step, {net} network, batch {bs}"
            r = ab_steps(what, bs, 1 if args.quick else 8, rounds, args.seed)
        (a, ra), (b, rb) = r.items()
        rows.append([label, a, ra["median_ms"], b, rb["median_ms"],
                     ra["median_ms"] / rb["median_ms"]])
        results.append(dict(case=label, ways=r))
        print(f"  {label}: {ra['median_ms']:.3g} vs {rb['median_ms']:.3g} ms", file=sys.stderr)
    table = C.markdown_table(["case", "way A", "A ms (median)", "way B", "B ms (median)",
                              "A / B"], rows)
    print(f"{args.threads} threads, {rounds} rounds alternating A and B in one process\n")
    print(table)
    data = dict(machine=C.machine_info(args.threads),
                settings=dict(rounds=rounds, threads=args.threads, seed=args.seed,
                              batch_size=bs, quick=args.quick),
                table=table, results=results)
    C.save_results(args, "ab_nets", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
