"""Where the time of one training step goes: forward and backward time of every module.

Trains a network on random images for a number of steps (forward, loss, backward, SGD update)
calling its modules one by one, and times each module's forward and backward pass, plus the loss
and the update; prints a Markdown table (sorted by the network's order) with each module's share
of the step, then the time of the same steps through ``tinynet.fuse(model)``, as
``tinynet.train.fit`` runs them (each Conv2d+ReLU(+MaxPool2d) and Linear+ReLU as one call), and
writes JSON under ``benchmarks/results/``.

    python benchmarks/profile_step.py                           # the course network, batch 64
    python benchmarks/profile_step.py --net bn --batch-size 128 # the BatchNorm example network
    python benchmarks/profile_step.py --net vgg --batch-size 128  # bench_nets.py's VGG-style stack
    python benchmarks/profile_step.py --net bn --fused          # the same, as fit() trains it
    python benchmarks/profile_step.py --quick                   # a smoke test

``--fused`` times the steps of ``tinynet.fuse(model)`` instead, as ``fit`` trains it: each fused
group (Conv2d+ReLU(+MaxPool2d), Linear+ReLU) is one row, and a Conv2d+BatchNorm2d group's modules
are timed one by one in the order the group runs them in training (its pooling before its ReLU).

This is the profile behind the kernels' speed notes: the timers sit between modules, so the
numbers add up to the step (the remainder is the loop itself).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def build(net: str):
    """The network and its SGD settings (as bench_train.py and the BN example use them)."""
    from tinynet.models import course_cnn

    if net == "course":
        return course_cnn(), dict(momentum=0.9)
    if net == "vgg":  # the VGG-style stack of bench_nets.py (32x32 images of 3 channels)
        from bench_nets import tinynet_model

        return tinynet_model("vgg", 0), dict(momentum=0.9, nesterov=True, weight_decay=5e-4)
    sys.path.insert(0, str(C.ROOT / "examples"))
    from train_fashion_mnist_bn import bn_cnn

    return bn_cnn(), dict(momentum=0.9, nesterov=True, weight_decay=5e-4)


def fused_steps(model) -> list:
    """The modules that ``tinynet.fuse(model)`` runs in training, in order: each fused group as
    one, a ConvBN group's modules one by one (as it runs them)."""
    import tinynet
    from tinynet.fast.fuse import ConvBN

    steps = []
    for m in tinynet.fuse(model):
        steps.extend(m._in_turn() if isinstance(m, ConvBN) else [m])
    return steps


def profile(net: str, batch_size: int, steps: int, warmup: int, seed: int,
            fused: bool = False) -> dict:
    import tinynet
    from tinynet import nn

    tinynet.manual_seed(seed)
    model, sgd = build(net)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, **sgd)
    rng = np.random.default_rng(seed)
    shape = (3, 32, 32) if net == "vgg" else (1, 28, 28)
    x = rng.standard_normal((batch_size,) + shape).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    modules = fused_steps(model) if fused else list(model)
    fwd = np.zeros(len(modules))
    bwd = np.zeros(len(modules))
    loss_s = update_s = 0.0
    for step in range(warmup + steps):
        if step == warmup:  # the first steps allocate buffers: not timed
            fwd[:] = bwd[:] = 0.0
            loss_s = update_s = 0.0
            t_start = time.perf_counter()
        a = x
        for i, m in enumerate(modules):
            t = time.perf_counter()
            a = m(a)
            fwd[i] += time.perf_counter() - t
        t = time.perf_counter()
        loss_fn(a, y)
        g = loss_fn.backward()
        loss_s += time.perf_counter() - t
        for i in range(len(modules) - 1, -1, -1):
            t = time.perf_counter()
            # no dL/dimages for the first module, as fit() does
            g = modules[i].backward(g, input_grad=False) if i == 0 else modules[i].backward(g)
            bwd[i] += time.perf_counter() - t
        t = time.perf_counter()
        opt.step()
        opt.zero_grad()
        update_s += time.perf_counter() - t
    step_ms = (time.perf_counter() - t_start) / steps * 1e3
    # the same steps as fit runs them: the fused copy (the same Parameters), whole
    fused = tinynet.fuse(model)
    for step in range(warmup + steps):
        if step == warmup:
            t_start = time.perf_counter()
        loss_fn(fused(x), y)
        fused.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        opt.zero_grad()
    fused_ms = (time.perf_counter() - t_start) / steps * 1e3
    rows = [dict(index=i, module=repr(m).split("\n")[0], fwd_ms=fwd[i] / steps * 1e3,
                 bwd_ms=bwd[i] / steps * 1e3) for i, m in enumerate(modules)]
    return dict(step_ms=step_ms, fused_step_ms=fused_ms, loss_ms=loss_s / steps * 1e3,
                update_ms=update_s / steps * 1e3, modules=rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", choices=("course", "bn", "vgg"), default="course",
                   help="course: the course network; bn: examples/train_fashion_mnist_bn.py's")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 (course), 128 (bn)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 300 / 40)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads (tinynet.set_num_threads; BLAS is limited to as many)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fused", action="store_true",
                   help="time the steps of tinynet.fuse(model), as fit() trains it")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 steps")
    C.output_arguments(p, "profile_step_<net>[_fused]")
    args = p.parse_args(argv)
    batch = args.batch_size or (64 if args.net == "course" else 128)
    steps = 3 if args.quick else (args.steps or (300 if args.net == "course" else 40))
    limiter = C.set_threads(args.threads)  # noqa: F841 (kept alive for the whole run)
    result = profile(args.net, batch, steps, warmup=2 if args.quick else 10, seed=args.seed,
                     fused=args.fused)
    step = result["step_ms"]
    rows = [[r["index"], r["module"], r["fwd_ms"], r["bwd_ms"],
             f"{100 * (r['fwd_ms'] + r['bwd_ms']) / step:.1f}%"] for r in result["modules"]]
    rows.append(["", "loss (forward + backward)", result["loss_ms"], None,
                 f"{100 * result['loss_ms'] / step:.1f}%"])
    rows.append(["", "SGD step + zero_grad", result["update_ms"], None,
                 f"{100 * result['update_ms'] / step:.1f}%"])
    table = C.markdown_table(["#", "module", "forward ms", "backward ms", "share of step"], rows)
    print(f"{args.net} network, batch {batch}, {args.threads} threads: "
          f"{step:.2f} ms per step ({steps} steps), "
          f"{step * 60000 / batch / 1e3:.1f} s per 60,000 images\n")
    print(table)
    what = "the fused model's steps" if args.fused else "the modules"
    print(f"\nThe table calls {what} one by one. Through tinynet.fuse(model) whole, as fit() "
          f"trains (Conv2d+ReLU(+MaxPool2d) and Linear+ReLU as one call each): "
          f"{result['fused_step_ms']:.2f} ms per step.")
    data = dict(machine=C.machine_info(args.threads), settings=dict(
        net=args.net, batch_size=batch, steps=steps, threads=args.threads, seed=args.seed,
        fused=args.fused), table=table, **result)
    C.save_results(args, f"profile_step_{args.net}" + ("_fused" if args.fused else ""), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
