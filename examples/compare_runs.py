"""Compare runs: train the course network with every combination of some settings, in one table.

    python examples/compare_runs.py --lr 0.01 0.001 --batch-size 64 256 --epochs 2 --data sample
    python examples/compare_runs.py --lr 0.1 0.03 0.01 --epochs 4      # one setting, three values

Each flag takes one or more values; every combination is one run (2 x 2 = 4 runs above), named
after its settings, e.g. ``lr=0.01,batch_size=64``. The settings you do not give keep the recipe
of ``examples/train_fashion_mnist.py`` (lr 0.01, batch 64, momentum 0.9, seed 0), with a
constant learning rate. Every run starts from the same initial weights (the seed), so the runs
differ only by the settings you vary.

Written to ``--out`` (default ``runs``): one folder per run (``history.jsonl``, ``last.npz``,
``run.json``), ``results.json`` and ``results.md`` (the table) and ``runs.png`` (every run's
curves in one picture, when matplotlib is installed).

Run the same command again and nothing is trained twice: finished runs are skipped, a run
stopped by Ctrl-C resumes exactly where it stopped, and ``--epochs`` higher than before continues
the finished runs. This file has ``# %%`` cells: VS Code and Jupyter (via jupytext) open it as a
notebook.
"""

# %% Imports
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

try:
    import tinynet  # noqa: F401  (only: is tinynet installed?)
except ImportError:  # running from a checkout without `pip install`: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinynet.data import DatasetNotFoundError
from tinynet.experiments import CourseSetup, grid, run_grid

# The settings a grid can vary: (flag's dest, type, the recipe's value). Only the flags given on
# the command line become part of the run names; the others keep these values.
SETTINGS = (("lr", float), ("batch_size", int), ("momentum", float), ("weight_decay", float),
            ("seed", int))


# %% The command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train the course CNN once per combination of settings and compare the runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = CourseSetup.DEFAULTS
    p.add_argument("--lr", type=float, nargs="+", metavar="LR",
                   help=f"learning rates to try (default {defaults['lr']})")
    p.add_argument("--batch-size", type=int, nargs="+", metavar="N",
                   help=f"batch sizes to try (default {defaults['batch_size']})")
    p.add_argument("--momentum", type=float, nargs="+", metavar="M",
                   help=f"SGD momentums to try (default {defaults['momentum']})")
    p.add_argument("--weight-decay", type=float, nargs="+", metavar="WD",
                   help=f"weight decays to try (default {defaults['weight_decay']})")
    p.add_argument("--seed", type=int, nargs="+", metavar="S",
                   help=f"seeds to try: how much do results vary by chance? (default "
                        f"{defaults['seed']})")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run")
    p.add_argument("--data", choices=("auto", "full", "sample"), default="auto",
                   help="full: the 60,000/10,000 images; sample: the 2,000/500 shipped with "
                        "tinynet; auto: full when found on disk, else sample")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first LIMIT training images only (quick checks)")
    p.add_argument("--out", default="runs", help="folder for the runs and the results")
    p.add_argument("--device", default=None,
                   help="'cpu' or 'cuda' (default: $TINYNET_DEVICE or 'cpu')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plot", action="store_true", help="do not draw runs.png")
    args = p.parse_args(argv)
    for name in ("epochs", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1")
    if args.batch_size and min(args.batch_size) < 1:
        p.error("--batch-size must be at least 1")
    for name in ("lr", "momentum", "weight_decay"):
        if getattr(args, name) and min(getattr(args, name)) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


# %% Build the grid, train every run, print the table
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    # Only the settings given on the command line vary (and name the runs); at least lr does.
    given = {name: getattr(args, name) for name, _ in SETTINGS if getattr(args, name)}
    if not given:
        given = {"lr": [CourseSetup.DEFAULTS["lr"]]}
    runs = grid(**given)
    fixed = {k: v for k, v in CourseSetup.DEFAULTS.items() if k not in given}
    setup = CourseSetup(args.data, limit=args.limit, device=args.device)
    try:
        train, test = setup.splits()
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(runs)} runs: " + " x ".join(f"{k} {v}" for k, v in given.items()) +
          f"; fixed: {', '.join(f'{k}={v}' for k, v in fixed.items())}")
    print(f"data: {len(train)} training images, {len(test)} validation (test) images; "
          f"{args.epochs} epochs per run; device {setup.device}; out {args.out}/", flush=True)

    # The same command continues the grid: finished runs are skipped, the interrupted one resumes.
    hint = " ".join(shlex.quote(a) for a in ["python", "examples/compare_runs.py", *argv])
    t0 = time.perf_counter()
    try:
        results = run_grid(runs, setup, epochs=args.epochs, out=args.out,
                           progress=not args.no_progress, plot=not args.no_plot,
                           continue_hint=f"{hint}  (the same command)")
    except ValueError as exc:  # e.g. --out holds runs trained on other data
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if results.status == "interrupted":
        return 130  # the shell's code for Ctrl-C; run_grid has said how to continue
    print(f"time: {time.perf_counter() - t0:.1f} s for {len(results)} runs")
    if results.best is not None:
        print(f"best: {results.best['name']} (validation accuracy {results.best['val_acc']:.4f})")
    return 0


# %% Run it. From a terminal, the command line decides; in a notebook (Jupyter, VS Code) the
# kernel's own command-line arguments are not this script's, so edit NOTEBOOK_ARGS instead.
NOTEBOOK_ARGS = ["--lr", "0.01", "0.001", "--batch-size", "64", "256", "--epochs", "2",
                 "--data", "sample", "--no-progress"]

if __name__ == "__main__":
    if "ipykernel" in sys.modules:  # running as a notebook cell
        main(NOTEBOOK_ARGS)
    else:
        sys.exit(main())
