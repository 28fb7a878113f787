"""Example 6: break it. Ten realistic backward-pass bugs, and what catches each.

"How would I know my backward is wrong?" Put a bug in on purpose and see which check notices.
Each bug of ``tinynet.lab.bugs.CATALOGUE`` is ONE wrong line in one reference kernel
(``tinynet/functional``): a flipped sign, a missing transpose, ``=`` for ``+=``, an off-by-one, a
mean for a sum, a forgotten term. For each bug, in turn, with the bug applied:

  1. ``tinynet.gradcheck`` (float64 finite differences) on a small model that uses the kernel;
  2. the same weights through PyTorch's autograd (where torch is installed): equal gradients?
  3. a short training run on the embedded sample, from the same seed as the correct code:
     the loss on 500 test images after N steps.

Then one table. What it teaches: most bugs still LOWER the loss, so "it trains" proves little;
the gradient check catches every one of them. (One honest exception is explained under the
table: a bug in a forward, softmax without its max shift, shows only on large logits.)

The cells (``# %%``) open as a notebook in VS Code, or in Jupyter through jupytext.

Run (offline, on the embedded sample; about 7 s on a 2-core CPU)::

    python examples/06_break_it.py
    python examples/06_break_it.py --bug linear-dx-sign --bug linear-bias-mean --steps 60
    python examples/06_break_it.py --no-torch --markdown
    python examples/06_break_it.py --list
"""

# %% Imports
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import tinynet  # noqa: F401  (the package; the lab below is part of it)
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinynet.lab import bugs


# %% The command line: --steps, --bug NAME (repeatable), --no-torch, --seed, --markdown, --list
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100,
                        help="SGD steps of each training run (default 100; 0 skips training)")
    parser.add_argument("--bug", action="append", choices=bugs.NAMES, metavar="NAME",
                        help="only this bug (repeat for several); default: the whole catalogue. "
                             f"One of: {', '.join(bugs.NAMES)}")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch parity check (it is skipped anyway without torch)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the checks' inputs, of the weights and of the batches")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--list", action="store_true",
                        help="print the catalogue (each bug and its diff) and stop")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error(f"--steps must be 0 or more, got {args.steps}")
    return args


# %% Step 1: the catalogue. Each bug says what is wrong, which kernel, and the line that differs
def show_catalogue(chosen: list[bugs.Bug]) -> None:
    for bug in chosen:
        print(bug)
        print()


# %% Step 2: every bug through the three checks (the first row is the correct code: the checks
# must pass there, or they would prove nothing), then the table
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [bugs.get_bug(name) for name in args.bug] if args.bug else list(bugs.CATALOGUE)
    show_catalogue(chosen)
    if args.list:
        return 0
    start = time.perf_counter()
    reports = bugs.run_catalogue(chosen, steps=args.steps, seed=args.seed,
                                 torch=not args.no_torch)
    seconds = time.perf_counter() - start
    print(bugs.format_table(reports, markdown=args.markdown))

    # the lesson, counted from the table
    correct, broken = reports[0], reports[1:]
    missed = [r.name for r in broken if not r.gradcheck.caught]
    print()
    print(f"gradcheck caught {len(broken) - len(missed)} of {len(broken)} bugs"
          + (f" (missed: {', '.join(missed)})" if missed else ""))
    if args.steps:
        lowered = [r.name for r in broken if r.training is not None and not r.training.error
                   and r.training.after < r.training.start]
        print(f"{len(lowered)} of {len(broken)} bugs still lowered the loss in {args.steps} "
              f"steps: training alone would not have told you")
    print(f"({seconds:.1f} s)")
    false_alarm = correct.gradcheck.caught or correct.parity.caught
    return 1 if missed or false_alarm else 0


# %% Run it. From a terminal: python examples/06_break_it.py [flags]. In a notebook (Jupyter,
# VS Code) this cell runs main([]), the defaults; call main(["--bug", "linear-dx-sign"]) with the
# flags you want: there, the command-line arguments are the kernel's own, not this script's.
if __name__ == "__main__":
    if "ipykernel" in sys.modules:
        main([])
    else:
        raise SystemExit(main())
