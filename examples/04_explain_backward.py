"""Example 4: one backward pass explained, module by module, with its numbers.

Example 3 checked the gradients with finite differences. This one says WHY each gradient is what it
is. One real image goes through the course network; the loss is computed; then the backward pass
walks from the loss to the first layer, and at every module we print:

  * the gradient that arrives (dL/d its output): its shape and a few of its numbers;
  * the module's local rule (Linear: dW = dY^T X, dX = dY W; ReLU: passes where x > 0; ...);
  * one entry worked out by hand from the kept arrays, e.g.
        dL/dW[1, 5, 1, 3] = sum over 64 output pixels of dY * x_pad = 0.0004*0.84 + ... = 0.0195
    and checked against the array the module's backward produced ("matches", with the difference);
  * for a max pool: one window, which of its 4 values won, and where its gradient went.

The cells (``# %%``) open as a notebook in VS Code, or in Jupyter through jupytext.

Run (offline, on the embedded sample, about a second)::

    python examples/04_explain_backward.py
    python examples/04_explain_backward.py --seed 3 --markdown --out explained.md
"""

# %% Imports
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import tinynet
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tinynet
from tinynet.data import CLASSES
from tinynet.lab.explain import explain_backward, sample_batch
from tinynet.models import course_cnn


# %% The command line: --seed, --image, --batch-size, --markdown, --out
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and of the entries worked out (default 0)")
    parser.add_argument("--image", type=int, default=0,
                        help="which image of the embedded sample (default 0)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images in the batch (default 1: one image)")
    parser.add_argument("--markdown", action="store_true", help="write Markdown, not plain text")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the explanation to this file instead of the screen")
    return parser.parse_args(argv)


# %% Step 1: one real image of the embedded sample, and the course network with freshly
# initialised weights (the explanation never changes the model: it works on a copy)
def build(args: argparse.Namespace):
    tinynet.manual_seed(args.seed)
    model = course_cnn()
    x, y = sample_batch(args.batch_size, start=args.image)  # normalised, (N, 1, 28, 28)
    return model, x, y


# %% Step 2: forward module by module, the loss, then backward from the loss to the first
# layer, each module's backward called by hand, every gradient kept and explained
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    model, x, y = build(args)
    explanation = explain_backward(model, x, y, seed=args.seed, class_names=CLASSES)
    text = explanation.markdown() if args.markdown else explanation.text() + "\n"
    seconds = time.perf_counter() - start
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    print(f"({len(explanation.entries)} worked entries, "
          f"{'all match' if explanation.all_match else 'SOME DO NOT MATCH'}; {seconds:.2f} s)")
    return 0 if explanation.all_match else 1


# %% Run it. From a terminal: python examples/04_explain_backward.py [flags]. In a notebook
# (Jupyter, VS Code) this cell runs main([]), the defaults; call main(["--seed", "3"]) with the
# flags you want: there, the command-line arguments are the kernel's own, not this script's.
if __name__ == "__main__":
    if "ipykernel" in sys.modules:
        main([])
    else:
        raise SystemExit(main())
