"""Forward and backward time of each layer: tinynet (NumPy) vs PyTorch (CPU), side by side.

The layers of the course network at its shapes (batch 64: conv 1->6 k5 on 28x28, ReLU, maxpool 2,
conv 6->12 k5 on 12x12, ReLU, maxpool 2, Linear 192->120->60->10) and a larger convolution
(32->64 channels, 3x3, padding 1, on 32x32 images). Median of repeated runs, same threads for both.
Backward = gradients for the input and the weights from a given dL/dy.

    python benchmarks/bench_layers.py            # the table, JSON in benchmarks/results/
    python benchmarks/bench_layers.py --quick    # few repeats: a smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def cases(batch: int) -> list[tuple[str, tuple, dict]]:
    """(name, input shape, layer spec) for every benchmarked layer."""
    return [
        ("conv1 1->6 k5", (batch, 1, 28, 28), dict(kind="conv", args=(1, 6, 5))),
        ("relu1", (batch, 6, 24, 24), dict(kind="relu")),
        ("maxpool1 2", (batch, 6, 24, 24), dict(kind="pool", args=(2,))),
        ("conv2 6->12 k5", (batch, 6, 12, 12), dict(kind="conv", args=(6, 12, 5))),
        ("relu2", (batch, 12, 8, 8), dict(kind="relu")),
        ("maxpool2 2", (batch, 12, 8, 8), dict(kind="pool", args=(2,))),
        ("linear 192->120", (batch, 192), dict(kind="linear", args=(192, 120))),
        ("linear 120->60", (batch, 120), dict(kind="linear", args=(120, 60))),
        ("linear 60->10", (batch, 60), dict(kind="linear", args=(60, 10))),
        ("conv 32->64 k3 p1, 32x32", (batch, 32, 32, 32),
         dict(kind="conv", args=(32, 64, 3), kwargs=dict(padding=1))),
    ]


def _tinynet_layer(spec):
    from tinynet import nn

    make = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d, "linear": nn.Linear}
    return make[spec["kind"]](*spec.get("args", ()), **spec.get("kwargs", {}))


def _torch_layer(spec):
    from torch import nn

    make = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d, "linear": nn.Linear}
    return make[spec["kind"]](*spec.get("args", ()), **spec.get("kwargs", {}))


def time_tinynet(spec, x: np.ndarray, repeats: int) -> tuple[float, float]:
    layer = _tinynet_layer(spec)
    # keep no output alive between runs: a held output would block the recycling of its buffer
    y_shape = layer(x).shape
    layer.saved()
    dy = np.random.default_rng(1).standard_normal(y_shape).astype(np.float32)

    def fwd():
        layer(x)
        layer.saved()  # drop the cache, as a backward would

    def fwd_bwd():
        layer.zero_grad()
        layer(x)
        layer.backward(dy)

    t_f = C.median_time(fwd, repeats)
    return t_f, C.median_time(fwd_bwd, repeats) - t_f


def time_torch(spec, x: np.ndarray, repeats: int) -> tuple[float, float]:
    import torch

    layer = _torch_layer(spec)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt)
    dy = np.random.default_rng(1).standard_normal(tuple(y.shape)).astype(np.float32)
    dy = torch.from_numpy(dy)
    inputs = [xt] + list(layer.parameters())

    def fwd():
        with torch.no_grad():
            layer(xt)

    def fwd_graph():
        layer(xt)

    y = layer(xt)

    def bwd():
        torch.autograd.grad(y, inputs, dy, retain_graph=True)

    C.median_time(fwd, repeats)
    t_graph = C.median_time(fwd_graph, repeats)  # forward that records the graph, as training does
    return t_graph, C.median_time(bwd, repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 repeats, batch 8: a smoke test")
    C.output_arguments(p, "bench_layers[_quick]")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch = 3, 8
    limiter = C.set_threads(args.threads)  # noqa: F841
    have_torch = C.torch_with_threads(args.threads)

    rng = np.random.default_rng(0)
    rows, results = [], []
    for name, shape, spec in cases(args.batch):
        x = rng.standard_normal(shape).astype(np.float32)
        tf, tb = time_tinynet(spec, x, args.repeats)
        r = dict(layer=name, input_shape=list(shape), tinynet_fwd_ms=tf * 1e3,
                 tinynet_bwd_ms=tb * 1e3)
        if have_torch:
            pf, pb = time_torch(spec, x, args.repeats)
            r.update(torch_fwd_ms=pf * 1e3, torch_bwd_ms=pb * 1e3,
                     ratio_fwd_bwd=(tf + tb) / (pf + pb))
        results.append(r)
        rows.append([name, r["tinynet_fwd_ms"], r["tinynet_bwd_ms"], r.get("torch_fwd_ms"),
                     r.get("torch_bwd_ms"), r.get("ratio_fwd_bwd")])
    header = ["layer (batch %d)" % args.batch, "tinynet fwd ms", "tinynet bwd ms", "torch fwd ms",
              "torch bwd ms", "tinynet/torch fwd+bwd"]
    table = C.markdown_table(header, rows)
    machine = C.machine_info(args.threads)
    print(f"\nMedian of {args.repeats} runs, {args.threads} threads, {machine['cpu']}\n")
    print(table)
    name = args.name or ("bench_layers_quick" if args.quick else "bench_layers")
    path = C.write_json(name, {"machine": machine, "settings": vars(args), "layers": results,
                               "table": table}, args.out_dir)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
