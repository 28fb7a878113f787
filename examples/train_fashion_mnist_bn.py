"""Beyond the course network: a BatchNorm CNN with dropout and augmentation on Fashion-MNIST.

    python examples/train_fashion_mnist_bn.py                 # 18 epochs, about 93% test accuracy
    python examples/train_fashion_mnist_bn.py --data sample --epochs 1   # a quick try

The network (``bn_cnn``), 28x28 grey images in, 10 class scores out::

    (N,1,28,28) -conv3x3 p1-> (N,32,28,28) -BN-ReLU-pool2-> (N,32,14,14)
                -conv3x3 p1-> (N,64,14,14) -BN-ReLU-pool2-> (N,64,7,7) -flatten-> (N,3136)
                -dropout 0.1-> Linear -> (N,128) -BN1d-ReLU-dropout 0.1-> Linear -> (N,10)

The convolutions and the first Linear have no bias: the BatchNorm after them adds its own shift
(beta), so a bias there would be redundant.

The recipe: SGD with Nesterov momentum and weight decay 5e-4, the 1cycle learning-rate schedule
(OneCycleLR, stepped after every batch: warm-up to ``--lr`` 0.1 over the first 30% of the batches,
then a cosine down to 0.1/25/1e4; the momentum cycles 0.95 -> 0.85 -> 0.95), batches of 128, and
augmentation of the training batches: a random shift of up to 2 pixels (RandomCrop(28, padding=2),
padding with black) and a random left-right flip. The test split is the validation data printed
after every epoch.

Written to ``--out`` (default ``runs/fashion-mnist-bn``): ``history.jsonl`` (one line per epoch)
and ``last.npz`` (the checkpoint, with the BatchNorm running statistics and the optimizer state).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

try:
    import tinynet
except ImportError:  # running from a checkout without `pip install`: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tinynet
from tinynet import nn
from tinynet.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DataLoader,
    DatasetNotFoundError,
    load_splits,
)
from tinynet.data.transforms import Compose, RandomCrop, RandomHorizontalFlip
from tinynet.optim import SGD, OneCycleLR
from tinynet.train import TrainingDiverged, evaluate, fit


def bn_cnn(dropout: float = 0.1, device=None, dtype=None) -> nn.Sequential:
    """The BatchNorm CNN of this example (see the module docstring for the shapes).

    Two conv blocks (conv 3x3 with padding 1 keeps 28x28, BatchNorm, ReLU, max-pool 2x2 halves
    it), then a 128-unit hidden layer with BatchNorm1d, with dropout before each Linear.
    State-dict keys follow PyTorch's ``nn.Sequential`` numbering (``0.weight``,
    ``1.running_mean``, ...).
    """
    kw = dict(device=device, dtype=dtype)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False, **kw),  # (N,32,28,28)
        nn.BatchNorm2d(32, **kw),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N,32,14,14)
        nn.Conv2d(32, 64, 3, padding=1, bias=False, **kw),  # (N,64,14,14)
        nn.BatchNorm2d(64, **kw),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N,64,7,7)
        nn.Flatten(),  # (N,3136)
        nn.Dropout(dropout),
        nn.Linear(64 * 7 * 7, 128, bias=False, **kw),
        nn.BatchNorm1d(128, **kw),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(128, 10, **kw),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a BatchNorm CNN with dropout and augmentation on Fashion-MNIST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--epochs", type=int, default=18, help="number of epochs")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--lr", type=float, default=0.1,
                   help="peak learning rate of the 1cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (L2)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout probability")
    p.add_argument("--no-augment", action="store_true", help="no random crops and flips")
    p.add_argument("--device", default=None,
                   help="'cpu' or 'cuda' (default: $TINYNET_DEVICE or 'cpu')")
    p.add_argument("--data", choices=("auto", "full", "sample"), default="auto",
                   help="full: the 60,000/10,000 images; sample: the 2,000/500 shipped with "
                        "tinynet; auto: full when found on disk, else sample")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first LIMIT training images only (quick checks)")
    p.add_argument("--out", default="runs/fashion-mnist-bn",
                   help="folder for history.jsonl and the checkpoint last.npz")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling, dropout, "
                                                       "augmentation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        train_set, test_set = load_splits(args.data, limit=args.limit)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    tinynet.manual_seed(args.seed)  # weights, dropout masks, augmentation, shuffling
    device = tinynet.backend.normalize_device(args.device)
    model = bn_cnn(args.dropout, device=device)
    loss_fn = nn.CrossEntropyLoss()
    augment = None
    if not args.no_augment:
        black = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD  # a black pixel after normalising
        augment = Compose([RandomCrop(28, padding=2, fill=black), RandomHorizontalFlip(0.5)])
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              seed=args.seed, device=device, transform=augment)
    test_loader = DataLoader(test_set, batch_size=1000, device=device)
    optimizer = SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                    weight_decay=args.weight_decay)
    scheduler = OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                           steps_per_epoch=len(train_loader))

    n_weights = sum(p.size for p in model.parameters())
    print(f"data: {len(train_set)} training images, {len(test_set)} test images "
          f"({args.data}: {getattr(train_set, 'source', 'subset')}); device {device}")
    print(f"model: {n_weights} weights\n{model}")
    print(f"recipe: SGD nesterov momentum 0.9 (cycled 0.95-0.85), weight decay "
          f"{args.weight_decay:g}, OneCycleLR max lr {args.lr:g} over {args.epochs} epochs x "
          f"{len(train_loader)} batches of {args.batch_size}, dropout {args.dropout:g}, "
          f"augmentation {augment if augment else 'off'}, seed {args.seed}", flush=True)

    start = time.perf_counter()
    try:
        history = fit(model, loss_fn, optimizer, train_loader, args.epochs,
                      val_loader=test_loader, scheduler=scheduler, scheduler_interval="batch",
                      out_dir=out, progress=not args.no_progress, meta={"args": vars(args)})
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if history.status == "interrupted":
        return 130
    total = time.perf_counter() - start
    result = evaluate(model, test_loader, loss_fn)
    print(f"final test accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f}) on "
          f"{len(test_set)} images")
    print(f"time: {total:.1f} s for {len(history)} epochs ({total / 60:.1f} min); mean epoch "
          f"{sum(e['seconds'] for e in history) / max(len(history), 1):.1f} s")
    if not math.isfinite(result["loss"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
