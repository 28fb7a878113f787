"""The same BatchNorm CNN and recipe as examples/train_fashion_mnist_bn.py, in PyTorch (CPU).

    python benchmarks/torch_fashion_mnist_bn.py --threads 2        # the side-by-side run

Same network (built by tinynet's ``bn_cnn`` with the same seed, its initial weights copied into
the PyTorch model key by key), same data and normalisation (read by ``tinynet.data``), same
batches of 128, same augmentation (random shift of up to 2 pixels padded with black + random
left-right flip, done on the whole batch), same optimizer (SGD, Nesterov momentum, weight decay
5e-4) and OneCycleLR schedule stepped every batch. Only the random numbers differ (PyTorch's
generator for the shuffling, dropout and augmentation). PyTorch is a reference here, not a
tinynet dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from train_fashion_mnist_bn import bn_cnn  # noqa: E402

import tinynet  # noqa: E402
from tinynet.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNIST  # noqa: E402


def torch_bn_cnn(dropout: float) -> torch.nn.Sequential:
    """The PyTorch twin of ``bn_cnn`` (same layers in the same order: same state-dict keys)."""
    T = torch.nn
    return T.Sequential(
        T.Conv2d(1, 32, 3, padding=1, bias=False), T.BatchNorm2d(32), T.ReLU(), T.MaxPool2d(2),
        T.Conv2d(32, 64, 3, padding=1, bias=False), T.BatchNorm2d(64), T.ReLU(), T.MaxPool2d(2),
        T.Flatten(), T.Dropout(dropout), T.Linear(64 * 7 * 7, 128, bias=False), T.BatchNorm1d(128),
        T.ReLU(), T.Dropout(dropout), T.Linear(128, 10),
    )


def augment(x: torch.Tensor, pad: int, fill: float, gen: torch.Generator) -> torch.Tensor:
    """Random shift (pad + crop back to 28x28) and random flip of every image of a batch."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=fill)
    windows = xp.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p+1, 2p+1, h, w), a view
    top = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = windows[torch.arange(n), :, top, left]  # (N, C, h, w)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--data", choices=("full", "sample"), default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the per-epoch history as JSON lines here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sample = args.data == "sample"
    train, test = FashionMNIST(train=True, sample=sample), FashionMNIST(train=False, sample=sample)
    x_train, y_train = to_tensor(train.images), torch.from_numpy(train.labels)
    x_test, y_test = to_tensor(test.images), torch.from_numpy(test.labels)

    tinynet.manual_seed(args.seed)
    model = torch_bn_cnn(args.dropout)
    start_weights = bn_cnn(args.dropout).state_dict()  # the same initial weights as tinynet
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in start_weights.items()})
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    steps = (len(y_train) + args.batch_size - 1) // args.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    fill = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(y_train)} "
          f"training images; {args.epochs} epochs x {steps} batches", flush=True)
    history, t_all = [], time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        seen, correct, loss_sum = 0, 0, 0.0
        for b in range(steps):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x, y = augment(x_train[idx], 2, fill, gen), y_train[idx]
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(x_test[i:i + 1000]) for i in range(0, len(y_test), 1000)])
            val_acc = float((logits.argmax(1) == y_test).float().mean())
            val_loss = float(loss_fn(logits, y_test))
        entry = dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen,
                     val_loss=val_loss, val_acc=val_acc, seconds=time.perf_counter() - t0)
        history.append(entry)
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {entry['train_loss']:.4f} acc "
              f"{entry['train_acc']:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | "
              f"{entry['seconds']:.1f} s", flush=True)
    total = time.perf_counter() - t_all
    print(f"final test accuracy: {history[-1]['val_acc']:.4f}; time {total:.1f} s "
          f"({total / 60:.1f} min) for {args.epochs} epochs")
    if args.out:
        Path(args.out).write_text("".join(json.dumps(e) + "\n" for e in history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
