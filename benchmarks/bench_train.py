"""Training speed of the course network: tinynet (NumPy) vs PyTorch (CPU), side by side.

Both frameworks train the same network (conv 1->6 k5, ReLU, maxpool 2; conv 6->12 k5, ReLU,
maxpool 2; Flatten; Linear 192->120->60->10) with SGD(lr=0.01, momentum=0.9) and cross-entropy,
on the same batches: one permutation of the real Fashion-MNIST training images, cut into batches,
normalised the same way. Each framework and batch size runs in its own subprocess, so the peak
resident memory (RSS) of each is measured honestly; both use the same number of threads.

Reported per run: epoch time, images/s, the time to evaluate the 10,000 test images (batches of
1000, no gradients), test accuracy after the epoch (a sanity check) and peak RSS.

tinynet runs one of three ways (``--frameworks``): ``tinynet``, the loop ``fit`` runs (the fused
model, ``tinynet.fuse``, on the fast engine); ``tinynet-plain``, a user's own loop on the plain
model (every module on its own, fast engine); ``tinynet-reference``, the plain model on the
reference kernels alone (``tinynet.use_reference()``): what the fast engine buys.

    python benchmarks/bench_train.py                   # full epoch at batch 16, 64, 256
    python benchmarks/bench_train.py --quick           # a few batches: a smoke test
    python benchmarks/bench_train.py --repeats 3       # each run 3 times, medians reported

The machine this was written on drifts by 25-40% within minutes, so one epoch of each framework,
one after the other, can land on either side of the other's. ``--repeats R`` runs every
(framework, batch) R times, round after round, the two frameworks' order swapped every round,
and reports the median epoch and evaluation times (and each round's ratios).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

EVAL_BATCH = 1000
WARMUP = 3  # untimed steps on a copy of the model before the timed epoch


def _batches(n: int, batch_size: int, seed: int, max_batches: int | None) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    idx = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return idx if max_batches is None else idx[:max_batches]


def run_tinynet(args) -> dict:
    import tinynet
    from tinynet import nn
    from tinynet.models import course_cnn

    if args.worker == "tinynet-reference":
        tinynet.kernels.set_mode("reference")

    xtr, ytr = C.load_fashion_mnist(True, args.sample)
    xte, yte = C.load_fashion_mnist(False, args.sample)
    tinynet.manual_seed(args.seed)
    model = course_cnn()
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _batches(len(ytr), args.batch_size, args.seed, args.max_batches)
    warm = model.copy()  # warm-up steps on a throwaway copy: first-call costs are not timed
    if args.worker == "tinynet":  # as fit runs it: the fused copy (same Parameters)
        warm, model = tinynet.fuse(warm), tinynet.fuse(model)
    for idx in batches[:WARMUP]:
        loss_fn(warm(C.normalise(xtr[idx])), ytr[idx])
        warm.backward(loss_fn.backward(), input_grad=False)
    del warm

    t0 = time.perf_counter()
    for idx in batches:
        x, y = C.normalise(xtr[idx]), ytr[idx]
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        # input_grad=False: no dL/dimages (PyTorch skips it too: the images do not require grad)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    train_s = time.perf_counter() - t0

    model.eval()
    correct = 0
    t0 = time.perf_counter()
    with tinynet.no_grad():
        for i in range(0, len(yte), EVAL_BATCH):
            logits = model(C.normalise(xte[i : i + EVAL_BATCH]))
            correct += int((logits.argmax(axis=1) == yte[i : i + EVAL_BATCH]).sum())
    eval_s = time.perf_counter() - t0
    return dict(train_s=train_s, images=sum(len(b) for b in batches), eval_s=eval_s,
                accuracy=correct / len(yte), loss=float(loss))


def run_torch(args) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    xtr, ytr = C.load_fashion_mnist(True, args.sample)
    xte, yte = C.load_fashion_mnist(False, args.sample)
    torch.manual_seed(args.seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(192, 120), nn.ReLU(), nn.Linear(120, 60), nn.ReLU(),
        nn.Linear(60, 10),
    )
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _batches(len(ytr), args.batch_size, args.seed, args.max_batches)
    warm = copy.deepcopy(model)  # warm-up steps on a throwaway copy: first-call costs not timed
    for idx in batches[:WARMUP]:
        x, y = torch.from_numpy(C.normalise(xtr[idx])), torch.from_numpy(ytr[idx])
        loss_fn(warm(x), y).backward()
    del warm

    t0 = time.perf_counter()
    for idx in batches:
        x, y = torch.from_numpy(C.normalise(xtr[idx])), torch.from_numpy(ytr[idx])
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0

    model.eval()
    correct = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(yte), EVAL_BATCH):
            logits = model(torch.from_numpy(C.normalise(xte[i : i + EVAL_BATCH])))
            correct += int((logits.argmax(dim=1).numpy() == yte[i : i + EVAL_BATCH]).sum())
    eval_s = time.perf_counter() - t0
    return dict(train_s=train_s, images=sum(len(b) for b in batches), eval_s=eval_s,
                accuracy=correct / len(yte), loss=float(loss))


def worker(args) -> int:
    limiter = C.set_threads(args.threads)  # noqa: F841 (kept alive for the whole run)
    result = run_torch(args) if args.worker == "torch" else run_tinynet(args)
    result["peak_rss_mb"] = C.peak_rss_mb()
    print(json.dumps(result))
    return 0


def _median_run(runs: list) -> dict:
    """One row for a (framework, batch) run ``repeats`` times: the median epoch and evaluation
    times, the highest peak RSS (accuracy and loss are the same in every round)."""
    row = dict(runs[0])
    for key in ("epoch_s", "eval_s", "train_s"):
        row[key] = float(np.median([r[key] for r in runs]))
    row["images_per_s"] = row["images"] / row["train_s"]
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return row


def _pairs(runs: list, bs: int, fw: str) -> list:
    """(``fw`` run, torch run) of each round at batch ``bs``."""
    by = {(r["framework"], r["round"]): r for r in runs if r["batch_size"] == bs}
    return [(by[fw, k], by["torch", k]) for k in sorted({r for _, r in by})]


TINYNET_WAYS = ["tinynet", "tinynet-plain", "tinynet-reference"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--max-batches", type=int, default=None,
                   help="train on this many batches instead of a full epoch")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for tinynet (set_num_threads), BLAS and PyTorch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every run; the table shows the medians")
    p.add_argument("--frameworks", nargs="+", default=["tinynet", "torch"],
                   choices=TINYNET_WAYS + ["torch"])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 20 batches per run, batch 64 only")
    p.add_argument("--sample", action="store_true",
                   help="use tinynet's shipped sample instead of the full data set")
    C.output_arguments(p, "bench_train[_quick]")
    p.add_argument("--worker", choices=TINYNET_WAYS + ["torch"], help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes = [64]
        args.max_batches = args.max_batches or 20
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    frameworks = [f for f in args.frameworks if f != "torch" or C.torch_available()]
    if "torch" in args.frameworks and "torch" not in frameworks:
        print("PyTorch is not installed: timing tinynet alone", file=sys.stderr)
    runs = []
    for rnd, bs in ((r, b) for r in range(args.repeats) for b in args.batch_sizes):
        for fw in (frameworks if rnd % 2 == 0 else frameworks[::-1]):
            cmd = [sys.executable, __file__, "--worker", fw, "--batch-size", str(bs),
                   "--threads", str(args.threads), "--seed", str(args.seed)]
            if args.max_batches is not None:
                cmd += ["--max-batches", str(args.max_batches)]
            if args.sample:
                cmd.append("--sample")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            r.update(framework=fw, batch_size=bs, round=rnd,
                     images_per_s=r["images"] / r["train_s"])
            # the time of a full 60,000-image epoch (measured directly when max_batches is None)
            r["epoch_s"] = r["train_s"] * 60000 / r["images"]
            runs.append(r)
            print(f"  {fw:17s} batch {bs:4d}: {r['train_s']:.2f} s for {r['images']} images, "
                  f"eval {r['eval_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)

    rows, rounds = [], []
    for bs in args.batch_sizes:
        by = {fw: _median_run([r for r in runs if r["batch_size"] == bs and r["framework"] == fw])
              for fw in frameworks}
        p = by.get("torch")
        for fw, r in by.items():
            rows.append([fw, bs, r["epoch_s"], r["images_per_s"], r["eval_s"], r["peak_rss_mb"],
                         r["accuracy"], None, None])
        for fw, t in by.items():
            if fw == "torch" or p is None:
                continue
            rounds.append(dict(framework=fw, batch_size=bs, epoch_ratios=[
                a["epoch_s"] / b["epoch_s"] for a, b in _pairs(runs, bs, fw)], eval_ratios=[
                a["eval_s"] / b["eval_s"] for a, b in _pairs(runs, bs, fw)]))
            rows.append([f"**{fw} / torch**", bs, t["epoch_s"] / p["epoch_s"], None,
                         t["eval_s"] / p["eval_s"], t["peak_rss_mb"] / p["peak_rss_mb"], None,
                         None, None])
    header = ["framework", "batch", "epoch s", "images/s", "eval 10k s", "peak RSS MB",
              "test acc", "", ""]
    table = C.markdown_table(header[:7], [r[:7] for r in rows])
    machine = C.machine_info(args.threads)
    scope = ("full epoch" if args.max_batches is None
             else f"{args.max_batches} batches, epoch extrapolated")
    print(f"\nCourse network, {scope}, {args.threads} threads, {machine['cpu']}\n")
    print(table)
    if args.repeats > 1:
        print(f"\nmedians of {args.repeats} rounds; tinynet / torch in each round:")
        for r in rounds:
            print(f"  {r['framework']}, batch {r['batch_size']}: epoch "
                  + " ".join(f"{v:.3g}" for v in r["epoch_ratios"]) + ", eval "
                  + " ".join(f"{v:.3g}" for v in r["eval_ratios"]))
    name = args.name or ("bench_train_quick" if args.quick else "bench_train")
    path = C.write_json(name, {"machine": machine, "settings": {
        "batch_sizes": args.batch_sizes, "max_batches": args.max_batches, "threads": args.threads,
        "seed": args.seed, "sample": args.sample, "eval_batch": EVAL_BATCH,
        "repeats": args.repeats}, "runs": runs, "rounds": rounds, "table": table}, args.out_dir)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
