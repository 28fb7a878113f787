"""Two ways of one convolution kernel, timed side by side in ONE process, alternating.

The development machine drifts by +-25% between runs (other tenants, CPU clocks), so a change
worth 10% cannot be seen by timing "before" and "after" one after the other. This script switches
between the two ways inside one process, round after round, and reports the median of the rounds:

* ``step``: training steps of the course network on real Fashion-MNIST batches (forward, loss,
  backward, SGD, as ``fit`` does: the fused model), conv2 by rows vs by im2col
  (``tinynet.fast.conv._ROWS_MAX_WIDTH``), at each batch size.
* ``fuse``: the same training steps on the fused model (``tinynet.fuse``: Conv2d+ReLU+MaxPool2d
  and Linear+ReLU as one call each) vs the plain model (every module alone); ``fuse-eval``: the
  course network on 1000 images under ``no_grad``, the same two ways.
* ``engine``: the same training steps on the plain model with the fast engine vs with the
  reference kernels alone (``tinynet.use_reference()``): what the fast engine buys.
* ``conv1-dw``: the backward pass of conv1 (1->6, 5x5, batch 64, no dL/dx) with dW as a stack of
  per-image products vs one product (``tinynet.fast.conv._FEW_ROWS``).

    python benchmarks/ab_conv.py                 # all cases, 2 threads, 8 rounds
    python benchmarks/ab_conv.py --quick         # smoke test

Prints a Markdown table and writes JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _alternate(ways: dict, rounds: int, run_once) -> dict:
    """``run_once(setting)`` -> seconds per unit; the median and min over rounds, in ms."""
    times: dict = {name: [] for name in ways}
    for setting in ways.values():  # warm-up: buffers of both ways exist before timing
        run_once(setting)
    for _ in range(rounds):
        for name, setting in ways.items():
            times[name].append(run_once(setting) * 1e3)
    return {name: dict(median_ms=float(np.median(t)), min_ms=float(np.min(t)))
            for name, t in times.items()}


# the switches of the training-step cases: (way A, way B, pick(a) -> the model to run that way)
def _switch(what: str, model: Any) -> tuple:
    import tinynet
    from tinynet.fast import conv

    fused = tinynet.fuse(model)
    default = conv._ROWS_MAX_WIDTH
    if what == "step":
        def pick(a: bool) -> Any:
            conv._ROWS_MAX_WIDTH = default if a else 0
            return fused

        return "conv2 by rows", "conv2 by im2col", pick
    if what == "fuse":
        return "fused model", "plain model", lambda a: fused if a else model

    def pick_engine(a: bool) -> Any:
        tinynet.kernels.set_mode("fast" if a else "reference")
        return model

    return "fast engine", "reference kernels", pick_engine


def ab_steps(what: str, batch_size: int, steps: int, rounds: int, sample: bool,
             seed: int) -> dict:
    import tinynet
    from tinynet import nn
    from tinynet.fast import conv
    from tinynet.models import course_cnn

    xtr, ytr = C.load_fashion_mnist(True, sample)
    tinynet.manual_seed(seed)
    model = course_cnn()
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = np.random.default_rng(seed).permutation(len(ytr))
    position = [0]

    way_a, way_b, pick = _switch(what, model)

    def run_once(a: bool) -> float:
        net = pick(a)
        t0 = 0.0
        for k in range(steps + 3):  # 3 untimed steps after each switch
            if k == 3:
                t0 = time.perf_counter()
            start = position[0] % (len(ytr) - batch_size)
            position[0] += batch_size
            idx = order[start : start + batch_size]
            loss_fn(net(C.normalise(xtr[idx])), ytr[idx])
            opt.zero_grad()
            net.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        return (time.perf_counter() - t0) / steps

    default = conv._ROWS_MAX_WIDTH
    try:
        return _alternate({way_a: True, way_b: False}, rounds, run_once)
    finally:
        conv._ROWS_MAX_WIDTH = default
        tinynet.kernels.set_mode("fast")


def ab_kernel(what: str, calls: int, rounds: int, seed: int) -> dict:
    from tinynet.fast import conv

    rng = np.random.default_rng(seed)
    if what == "fuse-eval":
        import tinynet
        from tinynet.models import course_cnn

        x = rng.standard_normal((1000, 1, 28, 28)).astype(np.float32)
        model = course_cnn()
        model.eval()
        fused = tinynet.fuse(model)

        def run(net: Any) -> float:
            with tinynet.no_grad():
                net(x)
                t0 = time.perf_counter()
                for _ in range(calls):
                    net(x)
            return (time.perf_counter() - t0) / calls

        return _alternate({"fused model": fused, "plain model": model}, rounds, run)
    # conv1-dw
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    dy = rng.standard_normal((64, 6, 24, 24)).astype(np.float32)
    attr, ways = "_FEW_ROWS", {"dW per image": 1 << 30, "dW one product": 0}
    cache = conv.conv2d_forward(x, w, b)[1]

    def work() -> None:
        conv.conv2d_backward(dy, cache, input_grad=False)

    default = getattr(conv, attr)

    def run_once(value: Any) -> float:
        setattr(conv, attr, value)
        work()
        t0 = time.perf_counter()
        for _ in range(calls):
            work()
        return (time.perf_counter() - t0) / calls

    try:
        return _alternate(ways, rounds, run_once)
    finally:
        setattr(conv, attr, default)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", nargs="+",
                   default=["step", "fuse", "engine", "fuse-eval", "conv1-dw"],
                   choices=["step", "fuse", "engine", "fuse-eval", "conv1-dw"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2,
                   help="threads (tinynet.set_num_threads; BLAS is limited to as many)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", action="store_true",
                   help="the shipped sample, not the full data")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds, few steps")
    C.output_arguments(p, "ab_conv[_quick]")
    args = p.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    limiter = C.set_threads(args.threads)  # noqa: F841 (kept alive for the whole run)
    results, rows = [], []
    for what in args.what:
        stepping = what in ("step", "fuse", "engine")
        name = "training step" if what == "step" else f"{what}: training step"
        cases = [(bs, f"{name}, batch {bs}") for bs in args.batch_sizes] \
            if stepping else [(None, what)]
        for bs, label in cases:
            if stepping:
                steps = 2 if args.quick else max(10, 3000 // bs)
                r = ab_steps(what, bs, steps, rounds, args.sample, args.seed)
            else:
                r = ab_kernel(what, 2 if args.quick else 20, rounds, args.seed)
            (a, ra), (b, rb) = r.items()
            rows.append([label, a, ra["median_ms"], b, rb["median_ms"],
                         ra["median_ms"] / rb["median_ms"]])
            results.append(dict(case=label, ways=r))
    table = C.markdown_table(["case", "way A", "A ms (median)", "way B", "B ms (median)",
                              "A / B"], rows)
    print(f"{args.threads} threads, {rounds} rounds alternating A and B in one process\n")
    print(table)
    data = dict(machine=C.machine_info(args.threads),
                settings=dict(rounds=rounds, threads=args.threads, seed=args.seed,
                              sample=args.sample, quick=args.quick),
                table=table, results=results)
    C.save_results(args, "ab_conv", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
