"""Example 1: tensors. Rank, axes, shape, and the [batch, channels, height, width] input of a CNN.

A tensor is an n-dimensional array of numbers of ONE type. Three words describe it:

* rank:  how many indices you need to reach one number (a scalar 0, a vector 1, a matrix 2, ...);
* axes:  the dimensions themselves (a rank-2 tensor has 2 axes: rows and columns);
* shape: the length of each axis, e.g. (3, 3).

Run (offline, a few seconds)::

    python examples/01_tensors.py
    python examples/01_tensors.py --batch-size 4
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
from tinynet.data import DataLoader, FashionMNIST


# %% A helper: print a tensor's rank, shape and dtype
def describe(name: str, t: np.ndarray) -> None:
    """Print rank, shape and dtype of a tensor."""
    print(f"  {name:<28} rank {t.ndim}   shape {str(t.shape):<18} dtype {t.dtype}")


# %% The lesson, in four steps: 1. rank, 2. one image, 3. a batch [batch, channels,
# height, width], 4. reshape and flatten. Running main() prints each step.
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the shuffled order")
    args = parser.parse_args(argv)

    # -- 1. Rank: how many indices reach one number ------------------------------------------------
    print("1. Rank = number of indices = number of axes")
    scalar = np.array(3.0)  # a number            -> 0 indices
    vector = np.array([1.0, 2.0, 3.0])  # an array             -> 1 index:  vector[i]
    matrix = np.arange(9.0).reshape(3, 3)  # a 2-d array          -> 2 indices: matrix[i, j]
    cube = np.zeros((2, 3, 4))  # an n-d array         -> n indices
    for name, t in (("scalar (number)", scalar), ("vector (array)", vector),
                    ("matrix (2-d array)", matrix), ("rank-3 tensor (n-d array)", cube)):
        describe(name, t)
    print(f"  matrix[1, 2] = {matrix[1, 2]}: two indices for a rank-2 tensor")
    print("  the shape (3, 3) says: 3 indices along each of the 2 axes\n")

    # -- 2. One image from the embedded Fashion-MNIST sample ---------------------------------------
    train = FashionMNIST(train=True, sample=True)  # real images shipped with tinynet: no download
    image, label = train[0]
    print("2. One Fashion-MNIST image")
    describe("image", image)
    print(f"  axes: (channels, height, width); 1 channel because the images are grey "
          f"(a colour image has 3: red, green, blue). Label {label} = {train.classes[label]!r}")
    print(f"  pixel at channel 0, row 14, column 14: image[0, 14, 14] = {image[0, 14, 14]}\n")

    # -- 3. A batch: the input of a CNN is [batch, channels, height, width] ------------------------
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, seed=args.seed,
                        device="cpu")
    x, y = next(iter(loader))  # uint8 pixels -> float32, normalised to mean ~0, std ~1
    print("3. A batch from the DataLoader: the input of a CNN")
    describe("x (images)", x)
    describe("y (labels)", y)
    print("  axes of x: [batch, channels, height, width]; four indices reach one pixel:")
    print(f"  x[2, 0, 14, 14] = {float(x[2, 0, 14, 14]):+.4f}  (image 2, channel 0, row 14, "
          "col 14)")
    print(f"  pixels were divided by 255 and normalised: mean {float(x.mean()):+.3f}, "
          f"std {float(x.std()):.3f}")
    n, bs = len(train), args.batch_size
    note = "" if n % bs == 0 else f" (rounded up: the last batch has only {n % bs} images)"
    print(f"  iterations per epoch = N / batch_size = {n} / {bs} -> len(loader) = "
          f"{len(loader)}{note}\n")

    # -- 4. Reshape and flatten: the same numbers in another shape ---------------------------------
    print("4. Reshape and flatten (the number of elements never changes)")
    describe("x", x)
    describe("x.reshape(B, 28*28)", x.reshape(len(x), -1))
    describe("x[0].reshape(28, 28)", x[0].reshape(28, 28))
    flat = tinynet.nn.Flatten()(x)  # the module a network uses before its first Linear layer
    describe("nn.Flatten()(x)", flat)
    print(f"  x.size = {x.size} = {len(x)}*1*28*28 = flat.size = {flat.size}")
    print("  A Linear layer takes (batch, features): the image tensor must be flattened first.")
    assert np.array_equal(flat, x.reshape(len(x), -1))
    return 0


# %% Run it. From a terminal: python examples/01_tensors.py [flags]. In a notebook
# (Jupyter, VS Code), this cell calls main([]); call main(["--batch-size", "4"]) with the flags you
# want: there, the command-line arguments are the kernel's own, not this script's.
if __name__ == "__main__":
    if "ipykernel" in sys.modules:  # a notebook: the kernel's arguments are not this script's
        main([])
    else:
        raise SystemExit(main())
