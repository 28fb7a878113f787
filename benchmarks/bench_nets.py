"""Training speed beyond the course network: tinynet (NumPy) vs PyTorch (CPU), side by side.

Two networks, with the protocol of ``bench_train.py`` (same initial weights, copied key by key
from tinynet's model into PyTorch's; same batches in the same order; each run in its own
subprocess, so that its peak RSS is its own; ``--repeats R`` rounds with the frameworks' order
swapped every round; medians reported, with each round's ratios):

* ``bn``: the BatchNorm network of ``examples/train_fashion_mnist_bn.py`` (``bn_cnn``: conv 3x3
  1->32 and 32->64 with BatchNorm, ReLU and max pooling, dropout, Linear 3136->128 with
  BatchNorm1d, Linear 128->10), one epoch of the real Fashion-MNIST at batch 128 with SGD
  (Nesterov momentum 0.9, weight decay 5e-4, lr 0.05), then the evaluation of the 10,000 test
  images in batches of 1000. (No augmentation and a constant learning rate here: the example's
  whole recipe is timed by ``torch_fashion_mnist_bn.py`` against the example itself.)
* ``vgg``: a small VGG-style stack, 3 blocks of [conv3x3-BN-ReLU] x 2 + max pool 2 (32, 64, 128
  channels), then Linear 2048->10, on 32x32 images of 3 channels (random, fixed by the seed) at
  batch 128: the time of one training step (median of the steps after 3 warm-up steps).

tinynet runs the model the way ``fit`` does: ``tinynet.fuse(model)`` on the fast engine.

    python benchmarks/bench_nets.py                        # both, 1 round
    python benchmarks/bench_nets.py --repeats 3            # medians of 3 rounds
    python benchmarks/bench_nets.py --quick                # a few batches: a smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import _common as C  # noqa: E402

EVAL_BATCH = 1000
WARMUP = 3
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
VGG_CHANNELS = (32, 64, 128)


def tinynet_model(net: str, seed: int):
    """The tinynet model of ``net`` ('bn' or 'vgg'), its weights drawn from ``seed``."""
    import tinynet
    from tinynet import nn

    tinynet.manual_seed(seed)
    if net == "bn":
        from train_fashion_mnist_bn import bn_cnn

        return bn_cnn(0.1)
    layers, c_in = [], 3
    for c in VGG_CHANNELS:
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 4 * 4, 10))


def torch_model(net: str, seed: int):
    """The PyTorch twin of :func:`tinynet_model`, with tinynet's initial weights."""
    import torch

    T = torch.nn
    if net == "bn":
        from torch_fashion_mnist_bn import torch_bn_cnn

        model = torch_bn_cnn(0.1)
    else:
        layers, c_in = [], 3
        for c in VGG_CHANNELS:
            for _ in range(2):
                layers += [T.Conv2d(c_in, c, 3, padding=1, bias=False), T.BatchNorm2d(c), T.ReLU()]
                c_in = c
            layers.append(T.MaxPool2d(2))
        model = T.Sequential(*layers, T.Flatten(), T.Linear(c_in * 4 * 4, 10))
    state = {k: torch.from_numpy(np.array(v)) for k, v in tinynet_model(net, seed).state_dict()
             .items()}
    model.load_state_dict(state)
    return model


def _batches(n: int, batch_size: int, seed: int, max_batches: int | None) -> list:
    order = np.random.default_rng(seed).permutation(n)
    idx = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return idx if max_batches is None else idx[:max_batches]


def _data(args) -> tuple:
    """(train x, train y, test x, test y): Fashion-MNIST normalised (bn), or random 32x32x3."""
    if args.net == "bn":
        xtr, ytr = C.load_fashion_mnist(True, args.sample)
        xte, yte = C.load_fashion_mnist(False, args.sample)
        return C.normalise(xtr), ytr, C.normalise(xte), yte
    rng = np.random.default_rng(args.seed)
    n = args.batch_size * (args.steps + WARMUP)
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64), None, None


def _plan(args, n: int) -> list:
    if args.net == "bn":
        return _batches(n, args.batch_size, args.seed, args.max_batches)
    return [np.arange(i * args.batch_size, (i + 1) * args.batch_size)
            for i in range(args.steps + WARMUP)]


def run_tinynet(args) -> dict:
    import tinynet
    from tinynet import nn

    xtr, ytr, xte, yte = _data(args)
    model = tinynet_model(args.net, args.seed)
    net = tinynet.fuse(model)
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                            weight_decay=WEIGHT_DECAY)
    batches = _plan(args, len(ytr))
    if args.net == "bn":  # warm-up steps on a throwaway copy: first-call costs are not timed
        warm = tinynet.fuse(model.copy())
        for idx in batches[:WARMUP]:
            loss_fn(warm(xtr[idx]), ytr[idx])
            warm.backward(loss_fn.backward(), input_grad=False)
        del warm
    steps = []
    for idx in batches:
        t0 = time.perf_counter()
        loss = loss_fn(net(xtr[idx]), ytr[idx])
        opt.zero_grad()
        net.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        steps.append(time.perf_counter() - t0)
    result = _result(args, steps, float(loss), batches)
    if xte is not None:
        net.eval()
        correct = 0
        t0 = time.perf_counter()
        with tinynet.no_grad():
            for i in range(0, len(yte), EVAL_BATCH):
                logits = net(xte[i : i + EVAL_BATCH])
                correct += int((logits.argmax(axis=1) == yte[i : i + EVAL_BATCH]).sum())
        result.update(eval_s=time.perf_counter() - t0, accuracy=correct / len(yte))
    return result


def run_torch(args) -> dict:
    import copy

    import torch

    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = _data(args)
    model = torch_model(args.net, args.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                          weight_decay=WEIGHT_DECAY)
    batches = _plan(args, len(ytr))
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    if args.net == "bn":
        warm = copy.deepcopy(model)
        for idx in batches[:WARMUP]:
            i = torch.from_numpy(idx)
            loss_fn(warm(xtr_t[i]), ytr_t[i]).backward()
        del warm
    steps = []
    for idx in batches:
        t0 = time.perf_counter()
        i = torch.from_numpy(idx)
        loss = loss_fn(model(xtr_t[i]), ytr_t[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
    result = _result(args, steps, float(loss), batches)
    if xte is not None:
        model.eval()
        correct = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(yte), EVAL_BATCH):
                logits = model(torch.from_numpy(xte[i : i + EVAL_BATCH]))
                correct += int((logits.argmax(dim=1).numpy() == yte[i : i + EVAL_BATCH]).sum())
        result.update(eval_s=time.perf_counter() - t0, accuracy=correct / len(yte))
    return result


def _result(args, steps: list, loss: float, batches: list) -> dict:
    if args.net == "bn":  # the whole epoch (its first steps included)
        return dict(train_s=float(sum(steps)), images=sum(len(b) for b in batches), loss=loss)
    timed = steps[WARMUP:]  # vgg: the steps after the warm-up
    return dict(step_ms=float(np.median(timed) * 1e3), steps=len(timed), loss=loss)


def worker(args) -> int:
    limiter = C.set_threads(args.threads)  # noqa: F841 (kept alive for the whole run)
    result = run_torch(args) if args.worker == "torch" else run_tinynet(args)
    result["peak_rss_mb"] = C.peak_rss_mb()
    print(json.dumps(result))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", nargs="+", default=["bn", "vgg"], choices=["bn", "vgg"])
    p.add_argument("--max-batches", type=int, default=None,
                   help="bn: train on this many batches instead of a full epoch")
    p.add_argument("--steps", type=int, default=20, help="vgg: timed training steps per run")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for tinynet (set_num_threads), BLAS and PyTorch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every run; the table shows the medians")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 5 bn batches on the sample, 2 vgg steps at batch 8")
    p.add_argument("--sample", action="store_true",
                   help="use tinynet's shipped sample instead of the full data set")
    C.output_arguments(p, "bench_nets[_quick]")
    p.add_argument("--worker", choices=["tinynet", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--net", choices=["bn", "vgg"], help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.max_batches = args.max_batches or 5
        args.steps, args.sample = 2, True
    return args


def _key(r: dict) -> str:
    return "train_s" if r["net"] == "bn" else "step_ms"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    frameworks = ["tinynet"] + (["torch"] if C.torch_available() else [])
    if len(frameworks) == 1:
        print("PyTorch is not installed: timing tinynet alone", file=sys.stderr)
    runs = []
    for rnd, net in ((r, n) for r in range(args.repeats) for n in args.nets):
        bs = 8 if args.quick and net == "vgg" else 128
        for fw in (frameworks if rnd % 2 == 0 else frameworks[::-1]):
            cmd = [sys.executable, __file__, "--worker", fw, "--net", net, "--batch-size",
                   str(bs), "--threads", str(args.threads), "--seed", str(args.seed),
                   "--steps", str(args.steps)]
            if args.max_batches is not None:
                cmd += ["--max-batches", str(args.max_batches)]
            if args.sample:
                cmd.append("--sample")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            r.update(framework=fw, net=net, batch_size=bs, round=rnd)
            if net == "bn":
                r["epoch_s"] = r["train_s"] * 60000 / r["images"]
            runs.append(r)
            print(f"  round {rnd} {fw:8s} {net}: " + ", ".join(
                f"{k} {r[k]:.4g}" for k in ("epoch_s", "eval_s", "step_ms", "peak_rss_mb")
                if k in r), file=sys.stderr)

    rows, ratios = [], []
    for net in args.nets:
        of = {fw: [r for r in runs if r["net"] == net and r["framework"] == fw]
              for fw in frameworks}
        keys = ["epoch_s", "eval_s"] if net == "bn" else ["step_ms"]
        med = {fw: {k: float(np.median([r[k] for r in rs])) for k in keys}
               for fw, rs in of.items()}
        for fw in frameworks:
            rss = max(r["peak_rss_mb"] for r in of[fw])
            acc = of[fw][0].get("accuracy")
            rows.append([net, fw] + [med[fw].get(k) for k in ("epoch_s", "eval_s", "step_ms")]
                        + [rss, acc])
        if "torch" in med:
            t, p = med["tinynet"], med["torch"]
            rows.append([net, "**tinynet / torch**"] + [
                (t[k] / p[k] if k in t else None) for k in ("epoch_s", "eval_s", "step_ms")]
                + [None, None])
            pairs = list(zip(of["tinynet"], of["torch"], strict=True))
            ratios.append(dict(net=net, **{k: [a[k] / b[k] for a, b in pairs] for k in keys}))
    header = ["net", "framework", "epoch s", "eval 10k s", "step ms", "peak RSS MB", "test acc"]
    table = C.markdown_table(header, rows)
    machine = C.machine_info(args.threads)
    print(f"\n{args.threads} threads, {machine['cpu']}, medians of {args.repeats} round(s)\n")
    print(table)
    for r in ratios:
        print(f"  {r['net']}: tinynet / torch per round: " + "; ".join(
            f"{k} " + " ".join(f"{v:.3g}" for v in r[k]) for k in r if k != "net"))
    name = args.name or ("bench_nets_quick" if args.quick else "bench_nets")
    path = C.write_json(name, {"machine": machine, "settings": {
        "nets": args.nets, "max_batches": args.max_batches, "steps": args.steps,
        "threads": args.threads, "seed": args.seed, "sample": args.sample,
        "repeats": args.repeats, "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
        "eval_batch": EVAL_BATCH}, "runs": runs, "ratios": ratios, "table": table}, args.out_dir)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
