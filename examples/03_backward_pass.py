"""Example 3: the backward pass. Every gradient by hand, checked with finite differences.

Training repeats seven steps (the course notes):
  1. take a batch from the training set      2. pass it through the network (forward)
  3. compute the loss                        4. compute the gradient of the loss (backward)
  5. update the weights with the gradient    6. repeat 1-5 until the epoch ends
  7. repeat 1-6 for as many epochs as needed
This example does steps 1-4 once, by hand, and shows that the gradient is right and what it means:
it points the way in which the loss grows fastest, so a small step the OTHER way lowers the loss.

The check: for one weight w, the gradient dL/dw should match the slope measured by nudging w,
    dL/dw ~ (L(w + eps) - L(w - eps)) / (2 * eps)        (central finite difference)
computed in float64 (in float32 the rounding errors would swamp the tiny change eps).

Run (offline, a few seconds)::

    python examples/03_backward_pass.py
    python examples/03_backward_pass.py --entries 10 --batch-size 8
"""

# %% Imports
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import tinynet
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tinynet
from tinynet import nn
from tinynet.data import DataLoader, FashionMNIST
from tinynet.models import course_cnn


# %% A helper: the loss at the current weights (forward and loss only)
def loss_at(model: nn.Module, loss_fn: nn.Module, x, y) -> float:
    """Steps 2 and 3 only (forward and loss), without keeping anything for a backward pass."""
    with tinynet.no_grad():
        return float(loss_fn(model(x), y))


# %% The lesson: one forward and backward pass by hand (steps 1-4), every weight gradient
# checked against finite differences, then one step downhill and one uphill.
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument("--entries", type=int, default=5,
                        help="entries of each weight tensor to check (default 5)")
    parser.add_argument("--eps", type=float, default=1e-6, help="finite-difference step")
    parser.add_argument("--lr", type=float, default=0.1, help="step size for the last part")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, batch and entries")
    args = parser.parse_args(argv)

    tinynet.manual_seed(args.seed)
    model = course_cnn(dtype=tinynet.float64, device="cpu")  # float64 for the comparison
    loss_fn = nn.CrossEntropyLoss()

    # Step 1: a batch of real images
    data = FashionMNIST(train=True, sample=True)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, seed=args.seed,
                        dtype=tinynet.float64, device="cpu")
    x, y = next(iter(loader))
    # Steps 2 and 3: forward pass and loss
    logits = model(x)
    loss = loss_fn(logits, y)
    print(f"forward: x {tuple(x.shape)} -> logits {tuple(logits.shape)}; loss = {float(loss):.6f}")

    # Step 4: backward pass. It starts at the loss: dL/dlogits = (softmax(logits) - one_hot) / N
    model.zero_grad()
    dlogits = loss_fn.backward()
    print(f"backward starts with dL/dlogits, shape {tuple(dlogits.shape)} (the logits' shape)")
    dx = model.backward(dlogits)  # every module's backward, last module first
    print(f"... and ends with dL/dx, shape {tuple(dx.shape)} (the shape of the input batch)\n")

    # The check, parameter by parameter, on a few random entries each
    rng = np.random.default_rng(args.seed)
    print(f"gradient check: analytic dL/dw (backward) vs central differences, eps={args.eps:g}, "
          f"{args.entries} random entries per tensor")
    header = (f"{'parameter':<11} {'shape':<16} {'entries':>7} {'max |dL/dw|':>12} "
              f"{'max abs err':>12} {'max rel err':>12}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)  # a view: changing flat[j] changes the weight
        ids = rng.choice(flat.size, size=min(args.entries, flat.size), replace=False)
        analytic = p.grad.reshape(-1)[ids]
        numeric = np.empty(len(ids))
        for k, j in enumerate(ids):
            original = float(flat[j])
            flat[j] = original + args.eps
            plus = loss_at(model, loss_fn, x, y)
            flat[j] = original - args.eps
            minus = loss_at(model, loss_fn, x, y)
            flat[j] = original  # put the weight back
            numeric[k] = (plus - minus) / (2 * args.eps)
        abs_err = np.abs(analytic - numeric)
        rel_err = abs_err / np.maximum(np.abs(numeric) + np.abs(analytic), 1e-12)
        worst = max(worst, float(abs_err.max()))
        print(f"{name:<11} {str(p.shape):<16} {len(ids):>7} {np.abs(analytic).max():>12.3e} "
              f"{abs_err.max():>12.3e} {rel_err.max():>12.3e}")
    print(f"largest absolute error: {worst:.2e} (float64 finite differences are good to ~1e-8)\n")

    # The library does the same check, for every entry of a (small) module's tensors:
    small_x = x[:2, :, :12, :12]
    ok = tinynet.gradcheck(model[0], small_x)  # raises tinynet.GradcheckError on a mismatch
    print(f"tinynet.gradcheck(first Conv2d, x of shape {tuple(small_x.shape)}) -> {ok}\n")

    # What the gradient means: step 5 moves every weight a little AGAINST its gradient
    params = list(model.parameters())
    saved = [p.data.copy() for p in params]
    losses = {}
    for direction, sign in (("w - lr * grad (downhill)", -1.0), ("w + lr * grad (uphill)", +1.0)):
        for p, w in zip(params, saved, strict=True):
            p.data[...] = w + sign * args.lr * p.grad
        losses[direction] = loss_at(model, loss_fn, x, y)
    for p, w in zip(params, saved, strict=True):
        p.data[...] = w
    print(f"the gradient points uphill: loss now {float(loss):.4f}")
    for direction, value in losses.items():
        print(f"  after one step w <- {direction:<26} loss {value:.4f}")
    return 0 if worst < 1e-6 else 1


# %% Run it. From a terminal: python examples/03_backward_pass.py [flags]. In a notebook
# (Jupyter, VS Code), this cell calls main([]); call main(["--entries", "2"]) with the flags you
# want: there, the command-line arguments are the kernel's own, not this script's.
if __name__ == "__main__":
    if "ipykernel" in sys.modules:  # a notebook: the kernel's arguments are not this script's
        main([])
    else:
        raise SystemExit(main())
