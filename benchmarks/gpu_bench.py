"""tinynet on a device vs PyTorch on the same device: every layer of the course network, the loss,
a whole training step, and the fast engine's CUDA kernels vs the reference kernels.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/gpu_bench.py --device cuda --batch-sizes 64 1024 \\
        --out benchmarks/results/gpu_bench.json

Timing: every measurement runs ``--warmup`` times untimed (CUDA compiles kernels and fills its
memory pool on first use), then ``--repeats`` times; each run is closed by a device synchronize
(GPU work is asynchronous: without it we would time the launch, not the work). The median is
reported in milliseconds. PyTorch is optional (its columns are left out without it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

import tinynet
import tinynet.functional as F
import tinynet.nn as nn
from tinynet import backend as B

# The course network's layers with their input shapes (batch axis first, filled in later).
LAYERS = [
    ("conv1 5x5 1->6", lambda: nn.Conv2d(1, 6, 5), (1, 28, 28)),
    ("relu1", lambda: nn.ReLU(), (6, 24, 24)),
    ("pool1 2x2", lambda: nn.MaxPool2d(2, stride=2), (6, 24, 24)),
    ("conv2 5x5 6->12", lambda: nn.Conv2d(6, 12, 5), (6, 12, 12)),
    ("pool2 2x2", lambda: nn.MaxPool2d(2, stride=2), (12, 8, 8)),
    ("flatten", lambda: nn.Flatten(), (12, 4, 4)),
    ("fc1 192->120", lambda: nn.Linear(192, 120), (192,)),
    ("fc2 120->60", lambda: nn.Linear(120, 60), (120,)),
    ("out 60->10", lambda: nn.Linear(60, 10), (60,)),
]


def course_network(device: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, device=device), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        nn.Conv2d(6, 12, 5, device=device), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        nn.Flatten(),
        nn.Linear(192, 120, device=device), nn.ReLU(),
        nn.Linear(120, 60, device=device), nn.ReLU(),
        nn.Linear(60, 10, device=device),
    )


def median_ms(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()  # wait for the device: we time the work, not the kernel launches
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


# ----------------------------------------------------------------------------------------------
# tinynet
# ----------------------------------------------------------------------------------------------
def tinynet_layer(make, shape, batch, device):
    backend = B.get_backend(device)
    layer = make().to(device)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((batch,) + shape), dtype=np.float32)
    y = layer(x)
    dy = backend.asarray(rng.standard_normal(y.shape), dtype=np.float32)

    def step():
        layer(x)
        layer.backward(dy)
        layer.zero_grad()

    return step, backend.synchronize


def tinynet_loss(batch, device):
    backend = B.get_backend(device)
    rng = np.random.default_rng(0)
    logits = backend.asarray(rng.standard_normal((batch, 10)), dtype=np.float32)
    labels = backend.asarray(rng.integers(0, 10, size=batch))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        loss_fn(logits, labels)
        loss_fn.backward()

    return step, backend.synchronize


def tinynet_train_step(batch, device):
    backend = B.get_backend(device)
    tinynet.manual_seed(0)
    model = course_network(device)
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((batch, 1, 28, 28)), dtype=np.float32)
    y = backend.asarray(rng.integers(0, 10, size=batch))

    def step():
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    return step, backend.synchronize


# ----------------------------------------------------------------------------------------------
# PyTorch with the same layers
# ----------------------------------------------------------------------------------------------
def torch_modules(torch):
    tnn = torch.nn
    return {
        "conv1 5x5 1->6": lambda: tnn.Conv2d(1, 6, 5),
        "relu1": lambda: tnn.ReLU(),
        "pool1 2x2": lambda: tnn.MaxPool2d(2, stride=2),
        "conv2 5x5 6->12": lambda: tnn.Conv2d(6, 12, 5),
        "pool2 2x2": lambda: tnn.MaxPool2d(2, stride=2),
        "flatten": lambda: tnn.Flatten(),
        "fc1 192->120": lambda: tnn.Linear(192, 120),
        "fc2 120->60": lambda: tnn.Linear(120, 60),
        "out 60->10": lambda: tnn.Linear(60, 10),
    }


def torch_sync(torch, device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def torch_layer(torch, make, shape, batch, device):
    layer = make().to(device)
    x = torch.randn((batch,) + shape, device=device, requires_grad=True)
    dy = torch.randn(layer(x).shape, device=device)

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(dy)

    return step, torch_sync(torch, device)


def torch_loss(torch, batch, device):
    logits = torch.randn((batch, 10), device=device, requires_grad=True)
    labels = torch.randint(0, 10, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        logits.grad = None
        loss_fn(logits, labels).backward()

    return step, torch_sync(torch, device)


def torch_train_step(torch, batch, device):
    tnn = torch.nn
    torch.manual_seed(0)
    model = tnn.Sequential(
        tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2, 2), tnn.Conv2d(6, 12, 5), tnn.ReLU(),
        tnn.MaxPool2d(2, 2), tnn.Flatten(), tnn.Linear(192, 120), tnn.ReLU(), tnn.Linear(120, 60),
        tnn.ReLU(), tnn.Linear(60, 10),
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = tnn.CrossEntropyLoss()
    x = torch.randn((batch, 1, 28, 28), device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step, torch_sync(torch, device)


# ----------------------------------------------------------------------------------------------
# The fast engine's kernels (on CUDA: tinynet/fast/cuda.py) vs the reference, on the same device
# ----------------------------------------------------------------------------------------------
def fused_cases(batch, device):
    """name -> (fast way, reference way): each a function of no arguments."""
    from tinynet import kernels

    backend = B.get_backend(device)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((batch, 6, 24, 24)), dtype=np.float32)
    y, fast_cache = kernels.maxpool2d_forward(x, 2, 2)  # (its backward follows the cache)
    with tinynet.use_reference():
        _, ref_cache = kernels.maxpool2d_forward(x, 2, 2)
    dy = backend.asarray(rng.standard_normal(y.shape), dtype=np.float32)
    tinynet.manual_seed(0)
    params = [p.data for p in course_network(device).parameters()]
    grads = [backend.xp.ones_like(p) * 1e-3 for p in params]
    bufs = [backend.xp.zeros_like(p) for p in params]

    def sgd(update):
        def run():
            for p, g, b in zip(params, grads, bufs, strict=True):
                update(p, g, b, 0.01, momentum=0.9)
        return run

    return {
        "maxpool2d backward (pool1)": (lambda: kernels.maxpool2d_backward(dy, fast_cache),
                                       lambda: F.maxpool2d_backward(dy, ref_cache)),
        "sgd_update momentum (all 10 params)": (sgd(kernels.implementation("sgd_update", device)),
                                                sgd(kernels.reference("sgd_update"))),
    }


def run(device: str, batch_sizes: list[int], warmup: int, repeats: int, with_torch: bool) -> dict:
    torch = None
    if with_torch:
        try:
            import torch  # noqa: F811
        except ImportError:
            torch = None
    backend = B.get_backend(device)
    results: dict[str, Any] = {"device": device, "batch_sizes": batch_sizes, "warmup": warmup,
                               "repeats": repeats, "unit": "ms per forward+backward (median)",
                               "layers": [], "train_step": [], "fused_vs_generic": []}
    tmods = torch_modules(torch) if torch else {}

    def both(name, ours, theirs, batch, table):
        t_ours = median_ms(*ours, warmup, repeats)
        t_torch = median_ms(*theirs, warmup, repeats) if theirs else None
        row = {"name": name, "batch": batch, "tinynet_ms": round(t_ours, 4),
               "torch_ms": None if t_torch is None else round(t_torch, 4),
               "tinynet_over_torch": None if not t_torch else round(t_ours / t_torch, 2)}
        results[table].append(row)
        print(f"  {name:<34} batch {batch:>5}: tinynet {t_ours:9.3f} ms"
              + (f"   torch {t_torch:9.3f} ms   ratio {t_ours / t_torch:6.2f}" if t_torch else ""),
              flush=True)

    for batch in batch_sizes:
        print(f"[{device}] layers, batch {batch}", flush=True)
        for name, make, shape in LAYERS:
            theirs = torch_layer(torch, tmods[name], shape, batch, device) if torch else None
            both(name, tinynet_layer(make, shape, batch, device), theirs, batch, "layers")
        theirs = torch_loss(torch, batch, device) if torch else None
        both("cross-entropy loss", tinynet_loss(batch, device), theirs, batch, "layers")
        print(f"[{device}] training step (forward, loss, backward, SGD momentum), batch {batch}",
              flush=True)
        theirs = torch_train_step(torch, batch, device) if torch else None
        both("course network train step", tinynet_train_step(batch, device), theirs, batch,
             "train_step")
        # on the CPU the fast column is the fast engine's CPU kernel (the SGD has none)
        print(f"[{device}] the fast engine's kernels vs the reference, batch {batch}", flush=True)
        for name, ways in fused_cases(batch, device).items():
            times = {fused: median_ms(fn, backend.synchronize, warmup, repeats)
                     for fused, fn in zip((True, False), ways, strict=True)}
            results["fused_vs_generic"].append({
                "name": name, "batch": batch, "fused_ms": round(times[True], 4),
                "generic_ms": round(times[False], 4),
                "speedup": round(times[False] / times[True], 2)})
            print(f"  {name:<38}: fused {times[True]:8.3f} ms  generic {times[False]:8.3f} ms"
                  f"  x{times[False] / times[True]:.1f}", flush=True)
    return results


def train_one_epoch(device: str, batch: int, sample: bool, limit: int | None) -> dict:
    """The course network, one epoch of Fashion-MNIST on ``device``: time, images/s, accuracy."""
    from tinynet.data import DataLoader, FashionMNIST

    train_set = FashionMNIST(train=True, sample=sample, download=False)
    test_set = FashionMNIST(train=False, sample=sample, download=False)
    if limit:
        from tinynet.data import ArrayDataset

        train_set = ArrayDataset(train_set.images[:limit], train_set.labels[:limit])
    tinynet.manual_seed(0)
    model = course_network(device)
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, seed=0, device=device)
    backend = B.get_backend(device)
    backend.synchronize()
    t0 = time.perf_counter()
    total = 0.0
    for x, y in loader:  # the seven steps: batch, forward, loss, zero grads, backward, step
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        total += float(loss)  # one sync per batch, as a progress bar would
    backend.synchronize()
    seconds = time.perf_counter() - t0
    correct = 0
    with tinynet.no_grad():
        for x, y in DataLoader(test_set, batch_size=1000, device=device):
            correct += int((model(x).argmax(axis=1) == y).sum())
    row = {"device": device, "batch": batch, "train_images": len(train_set.labels),
           "source": getattr(train_set, "source", "subset"), "seconds": round(seconds, 3),
           "images_per_s": round(len(train_set.labels) / seconds, 1),
           "mean_loss": round(total / len(loader), 4),
           "test_accuracy": round(correct / len(test_set.labels), 4)}
    print(f"[{device}] one epoch, batch {batch}: {row['train_images']} images in {seconds:.2f} s "
          f"({row['images_per_s']:.0f} images/s), mean loss {row['mean_loss']}, test accuracy "
          f"{row['test_accuracy']:.4f}", flush=True)
    return row


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "numpy": np.__version__,
           "tinynet": tinynet.__version__, "machine": platform.machine()}
    if device == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        env.update(cupy=cupy.__version__, gpu=props["name"].decode(),
                   cuda_runtime=cupy.cuda.runtime.runtimeGetVersion())
    try:
        import torch

        env["torch"] = torch.__version__
        if device == "cuda":
            env["torch_cuda"] = torch.version.cuda
    except ImportError:
        env["torch"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="'cuda' (default) or 'cpu'")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-torch", action="store_true", help="time tinynet only")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--epoch", action="store_true",
                        help="instead: train the course network one epoch (first batch size)")
    parser.add_argument("--sample", action="store_true",
                        help="with --epoch: the small Fashion-MNIST sample shipped with tinynet")
    parser.add_argument("--limit", type=int, default=None,
                        help="with --epoch: only the first LIMIT training images")
    args = parser.parse_args(argv)
    try:
        device = B.get_backend(args.device).device
    except B.DeviceError as exc:
        print(f"gpu_bench: {exc}", file=sys.stderr)
        return 2
    if args.epoch:
        results = train_one_epoch(device, args.batch_sizes[0], args.sample, args.limit)
    else:
        results = run(device, args.batch_sizes, args.warmup, args.repeats, not args.no_torch)
    results["environment"] = environment(device)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
