"""The course network's training step as ``fit`` runs it, timed in rounds: to compare two versions.

Two checkouts cannot run in one process, so run this script from each in turn, round after round,
and compare the medians (the machine drifts by 25-40% within minutes)::

    git worktree add /tmp/old 18c24a8
    for i in 1 2 3 4; do
        (cd /tmp/old && python /path/to/tinynet/benchmarks/step_time.py --rounds 3)
        (cd /path/to/tinynet && python benchmarks/step_time.py --rounds 3)
    done

It imports the ``tinynet`` of the current directory (run it from the checkout's root), trains on
real Fashion-MNIST batches of 64 (forward, loss, backward, SGD with momentum), through
``tinynet.fuse(model)`` where that exists (as ``fit`` does) and the model itself in older
versions, and prints the milliseconds per step of each round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

sys.path.insert(0, os.getcwd())  # the checkout we are run from, before this one and an install


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300, help="steps per round")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample", action="store_true", help="the shipped sample, not the full data")
    args = p.parse_args(argv)
    limiter = C.set_threads(args.threads)  # noqa: F841 (kept alive for the whole run)
    import tinynet
    from tinynet import nn
    from tinynet.models import course_cnn

    tinynet.manual_seed(0)
    model = course_cnn()
    net = tinynet.fuse(model) if hasattr(tinynet, "fuse") else model
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xtr, ytr = C.load_fashion_mnist(True, args.sample)
    order = np.random.default_rng(0).permutation(len(ytr))
    bs, times = args.batch_size, []
    for rnd in range(args.rounds):
        t0 = time.perf_counter()
        for k in range(args.steps):
            start = (rnd * args.steps + k) * bs % (len(ytr) - bs)
            idx = order[start : start + bs]
            loss_fn(net(C.normalise(xtr[idx])), ytr[idx])
            opt.zero_grad()
            net.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        times.append((time.perf_counter() - t0) / args.steps * 1e3)
    where = Path(tinynet.__file__).resolve().parent.parent
    print(f"{where}: " + " ".join(f"{t:.2f}" for t in times) + " ms per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
