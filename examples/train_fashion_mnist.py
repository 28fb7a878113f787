"""Train the course network on Fashion-MNIST with tinynet.

    python examples/train_fashion_mnist.py                     # the default recipe, 10 epochs
    python examples/train_fashion_mnist.py --epochs 1 --data sample   # a quick try, no files needed
    python examples/train_fashion_mnist.py --resume            # continue after Ctrl-C
    python examples/train_fashion_mnist.py --data sample --epochs 2 --monitor   # gradient flow

The data: ``--data auto`` (default) uses the full 60,000 + 10,000 images when they are on disk
(``sudo apt-get install dataset-fashion-mnist``, ``$TINYNET_DATA``, or the download cache) and
otherwise the 2,000 + 500 image sample shipped with tinynet, saying so. ``--data full`` insists on
the full data (downloading it if needed).

The recipe: SGD with momentum 0.9, learning rate 0.01, batches of 64, and the learning rate
multiplied by 0.1 after epoch 6 (``--lr-decay 0.1 --lr-decay-every 6``; ``--lr-decay 1`` keeps it
constant). The test split doubles as the validation data printed after every epoch (the course
has no separate validation split), so read those numbers as test accuracy.

Written to ``--out`` (default ``runs/fashion-mnist``): ``history.jsonl`` (one line per epoch) and
``last.npz`` (the checkpoint to resume from, and the trained weights); with ``--monitor`` also
``flow.jsonl`` (the gradient flow, every ``--monitor-every`` updates) and its picture ``flow.png``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

try:
    import tinynet
except ImportError:  # running from a checkout without `pip install`: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tinynet
from tinynet import nn
from tinynet.data import DataLoader, DatasetNotFoundError, load_splits
from tinynet.lab.flow import FlowMonitor
from tinynet.models import course_cnn
from tinynet.optim.lr_scheduler import StepLR
from tinynet.train import TrainingDiverged, evaluate, fit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train the course CNN on Fashion-MNIST (SGD with momentum).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--epochs", type=int, default=10, help="total number of epochs")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--lr-decay", type=float, default=0.1,
                   help="multiply the learning rate by this every --lr-decay-every epochs "
                        "(1: constant learning rate)")
    p.add_argument("--lr-decay-every", type=int, default=6,
                   help="epochs between learning-rate decays (0: constant learning rate)")
    p.add_argument("--device", default=None,
                   help="'cpu' or 'cuda' (default: $TINYNET_DEVICE or 'cpu')")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads that share each batch (default: every core; 1: one core)")
    p.add_argument("--data", choices=("auto", "full", "sample"), default="auto",
                   help="full: the 60,000/10,000 images; sample: the 2,000/500 shipped with "
                        "tinynet; auto: full when found on disk, else sample")
    p.add_argument("--sample", action="store_const", const="sample", dest="data",
                   help="same as --data sample")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first LIMIT training images only (quick checks)")
    p.add_argument("--out", default="runs/fashion-mnist",
                   help="folder for history.jsonl and the checkpoint last.npz")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint (default: OUT/last.npz); give the same "
                        "settings as the interrupted run")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the shuffling")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plot", action="store_true",
                   help="save history.png, confusion_matrix.png and predictions.png in --out "
                        "(needs matplotlib: pip install \"tinynet[plot]\")")
    p.add_argument("--monitor", action="store_true",
                   help="watch the gradient flow: every --monitor-every updates, each layer's "
                        "gradient and weight norms, update ratio, activations and dead ReLUs "
                        "go to OUT/flow.jsonl, drawn in OUT/flow.png (needs matplotlib)")
    p.add_argument("--monitor-every", type=int, default=10, metavar="K",
                   help="with --monitor: record every K-th weight update")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "monitor_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("limit", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)

    try:
        train_set, test_set = load_splits(args.data, limit=args.limit)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    tinynet.manual_seed(args.seed)  # the same seed -> the same initial weights
    if args.threads is not None:
        tinynet.set_num_threads(args.threads)  # a batch's images are split over the threads
    device = tinynet.backend.normalize_device(args.device)
    model = course_cnn(device=device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = tinynet.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    scheduler = None
    if args.lr_decay_every > 0 and args.lr_decay != 1:
        # lr = lr * lr_decay ** floor(epoch / lr_decay_every), stepped once per epoch by fit
        scheduler = StepLR(optimizer, step_size=args.lr_decay_every, gamma=args.lr_decay)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              seed=args.seed, device=device)
    test_loader = DataLoader(test_set, batch_size=1000, device=device)

    n = len(train_set)
    source = getattr(train_set, "source", "subset" if args.limit else "?")
    print(f"data: {n} training images, {len(test_set)} test images ({args.data}: {source}); "
          f"device {device}")
    # One iteration = one batch = one weight update. An epoch is one pass over all N images, so
    # it takes N / batch_size iterations, rounded up: the last batch holds the remainder.
    print(f"iterations per epoch: ceil({n} / {args.batch_size}) = {math.ceil(n / args.batch_size)}"
          f" (one weight update per batch of {args.batch_size}; len(train_loader) = "
          f"{len(train_loader)})")
    schedule = (f", lr x{args.lr_decay:g} every {args.lr_decay_every} epochs" if scheduler
                else ", constant lr")
    print(f"recipe: SGD lr {args.lr:g} momentum {args.momentum:g}, batch {args.batch_size}"
          f"{schedule}, {args.epochs} epochs, seed {args.seed}", flush=True)

    resume = None
    if args.resume is not None:
        resume = out / "last.npz" if args.resume == "auto" else Path(args.resume)
        if not resume.exists():
            print(f"error: --resume: no checkpoint at {resume}", file=sys.stderr)
            return 2
    # The command that continues this run after a Ctrl-C: the same flags, plus --resume.
    kept, i = [], 0
    while i < len(argv):
        if argv[i] == "--resume":
            i += 2 if args.resume not in (None, "auto") else 1  # drop --resume and its path
            continue
        if not argv[i].startswith("--resume="):
            kept.append(argv[i])
        i += 1
    hint = " ".join(shlex.quote(a) for a in
                    ["python", "examples/train_fashion_mnist.py", *kept, "--resume"])

    try:
        history = fit(
            model, loss_fn, optimizer, train_loader, args.epochs, val_loader=test_loader,
            scheduler=scheduler, out_dir=out, progress=not args.no_progress, resume=resume,
            resume_hint=hint, meta={"args": vars(args)},
            monitor=FlowMonitor(every=args.monitor_every) if args.monitor else None,
        )
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if history.status == "interrupted":
        return 130  # the shell's code for Ctrl-C; fit has printed how to resume

    result = evaluate(model, test_loader, loss_fn)
    print(f"final test accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f}) on "
          f"{len(test_set)} images")
    if history:
        total = sum(entry["seconds"] for entry in history)
        print(f"time: {total:.1f} s for {len(history)} epochs; checkpoint {out / 'last.npz'}, "
              f"history {out / 'history.jsonl'}")
    if args.plot:
        save_plots(model, out, test_set, test_loader)
    if args.monitor:
        save_flow_plot(out)
    return 0


def save_flow_plot(out: Path) -> None:
    """The gradient flow recorded in OUT/flow.jsonl, drawn as OUT/flow.png."""
    try:
        from tinynet import plot

        plot.plot_flow(out / "flow.jsonl", path=out / "flow.png")
    except ImportError as exc:  # matplotlib missing: the numbers are in flow.jsonl anyway
        print(f"gradient flow: {out / 'flow.jsonl'} (no picture: {exc})")
        return
    print(f"gradient flow: {out / 'flow.jsonl'}, picture {out / 'flow.png'}")


def save_plots(model, out: Path, test_set, test_loader) -> None:
    """The learning curves, the test confusion matrix and a grid of predictions, as PNG files."""
    from tinynet import plot

    plot.plot_history(out / "history.jsonl", path=out / "history.png")
    plot.plot_confusion_matrix(model, test_loader, test_set.classes,
                               path=out / "confusion_matrix.png")
    plot.plot_predictions(model, test_set.images[:12], test_set.labels[:12], test_set.classes,
                          path=out / "predictions.png")
    print(f"plots: {out / 'history.png'}, {out / 'confusion_matrix.png'}, "
          f"{out / 'predictions.png'}")


if __name__ == "__main__":
    sys.exit(main())
