"""Example 2: the forward pass. One batch goes through the course network, one module at a time.

Forward propagation turns the input tensor into the output tensor: here a batch of images
[batch, 1, 28, 28] into 10 class scores per image [batch, 10]. On the way:

* layers (Conv2d, Linear) have weights; operations (ReLU, MaxPool2d, Flatten) have none;
* the second layer is a convolution layer whose weights take part in three operations:
  convolution, ReLU and max pooling;
* convolution changes height, width AND channels (out_channels = the number of filters; its
  output channels are called feature maps);
* the tensor is flattened before the first Linear layer;
* the output layer has out_features = 10, the number of classes.

Run (offline, a few seconds)::

    python examples/02_forward_pass.py
    python examples/02_forward_pass.py --batch-size 2 --show-mistake
"""

# %% Imports
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import tinynet
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tinynet
from tinynet import nn
from tinynet.data import DataLoader, FashionMNIST
from tinynet.inspect import ShapeError, axis_names
from tinynet.models import course_cnn


# %% The lesson, in four steps: 1. print(model), 2. its summary, 3. one batch module by
# module, 4. (--show-mistake) a shape error and its fix. Running main() prints each step.
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the order")
    parser.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: tinynet's)")
    parser.add_argument("--show-mistake", action="store_true",
                        help="also show the error for a network whose Linear layer does not fit")
    args = parser.parse_args(argv)

    tinynet.manual_seed(args.seed)
    model = course_cnn(device=args.device)

    # -- 1. The network, as PyTorch would print it -------------------------------------------------
    print("1. The course network (print(model))\n")
    print(model, "\n")

    # -- 2. Its summary: shapes and weights, computed without running the math ---------------------
    print("2. tinynet.summary(model, (1, 1, 28, 28)): one grey 28x28 image\n")
    print(tinynet.summary(model, (1, 1, 28, 28)), "\n")

    # -- 3. One real batch, module by module -------------------------------------------------------
    data = FashionMNIST(train=True, sample=True)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, seed=args.seed,
                        device=args.device)
    x, y = next(iter(loader))
    print(f"3. One batch of {len(x)} images through the network, module by module\n")
    print(f"   input                   {str(tuple(x.shape)):<16} rank {x.ndim}  "
          f"({', '.join(axis_names(x.shape))})")
    layer = 0
    after_conv = False
    with tinynet.no_grad():  # no backward pass here: do not keep caches
        for module in model:  # a Sequential iterates over its modules in order
            before = tuple(x.shape)
            x = module(x)  # the forward pass of one module
            after_conv = after_conv or isinstance(module, nn.Conv2d)
            has_weights = any(True for _ in module.parameters())
            if has_weights:
                layer += 1
            what = f"layer {layer}" if has_weights else "operation"
            change = ""
            if isinstance(module, nn.Conv2d):
                change = (f"channels {before[1]} -> {x.shape[1]} (filters), "
                          f"height {before[2]} -> {x.shape[2]}, width {before[3]} -> {x.shape[3]}")
            elif isinstance(module, nn.MaxPool2d):
                change = f"height and width halved, channels kept ({x.shape[1]})"
            elif isinstance(module, nn.Flatten):
                change = f"{' * '.join(str(d) for d in before[1:])} = {x.shape[1]} features"
            elif isinstance(module, nn.ReLU):
                change = "shape kept, negatives -> 0"
            elif isinstance(module, nn.Linear):
                change = f"{before[1]} features -> {x.shape[1]}"
            print(f"   {what:<10} {type(module).__name__:<12} {str(tuple(x.shape)):<16} rank "
                  f"{x.ndim}  ({', '.join(axis_names(x.shape, after_conv))})  {change}")

    scores = tinynet.to_numpy(x)
    pred = scores.argmax(axis=1)
    print(f"\n   output: {tuple(scores.shape)} = (batch, classes): one score per class, "
          f"{scores.shape[1]} = out_features of the output layer = the number of classes")
    print("   untrained guesses:", [data.classes[int(p)] for p in pred])
    print("   true labels:      ", [data.classes[int(t)] for t in tinynet.to_numpy(y)])

    # -- 4. What a shape mistake looks like --------------------------------------------------------
    if args.show_mistake:
        print("\n4. A mistake: Linear(100, 120) after Flatten, where 192 features arrive\n")
        wrong = nn.Sequential(*list(model)[:7], nn.Linear(100, 120), nn.ReLU(),
                              nn.Linear(120, 10))
        try:
            tinynet.summary(wrong, (1, 1, 28, 28))
        except ShapeError as err:
            print(err)
    return 0


# %% Run it. From a terminal: python examples/02_forward_pass.py [flags]. In a notebook
# (Jupyter, VS Code), this cell calls main([]); call main(["--show-mistake"]) with the flags you
# want: there, the command-line arguments are the kernel's own, not this script's.
if __name__ == "__main__":
    if "ipykernel" in sys.modules:  # a notebook: the kernel's arguments are not this script's
        main([])
    else:
        raise SystemExit(main())
