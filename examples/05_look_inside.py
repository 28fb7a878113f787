"""Example 5: look inside a trained network: filters, feature maps, predictions, mistakes.

Trains the course network for a few epochs on the Fashion-MNIST sample shipped with tinynet (or
loads a checkpoint written by examples/train_fashion_mnist.py), then saves pictures:

* history.png           loss and accuracy per epoch (training and validation)
* filters.png           the 6 filters of the first convolution layer (its weights)
* feature_maps.png      one image after each convolution layer: one map per filter
* predictions.png       test images with the predicted and the true class (mistakes in red)
* confusion_matrix.png  which classes the network mixes up

and prints the trace of one training step (shapes, values and gradients of every module).

Run (offline; about ten seconds on a CPU)::

    python examples/05_look_inside.py                        # pictures in runs/look_inside/
    python examples/05_look_inside.py --out-dir docs/images  # the pictures of the README
    python examples/05_look_inside.py --checkpoint runs/fashion-mnist/last.npz
"""

# %% Imports
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import tinynet
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tinynet
from tinynet import nn, plot
from tinynet.data import ArrayDataset, DataLoader, FashionMNIST
from tinynet.models import course_cnn


# %% One epoch of training (with an optimizer) or of evaluation (without): steps 1-6
def run_epoch(model, loader, loss_fn, optimizer=None) -> tuple[float, float]:
    """One pass over ``loader``, training when an optimizer is given: (mean loss, accuracy)."""
    total_loss, correct, seen = 0.0, 0, 0
    model.train(optimizer is not None)
    for x, y in loader:  # step 1: a batch from the data set
        if optimizer is None:
            with tinynet.no_grad():
                logits = model(x)  # step 2: forward pass
                loss = loss_fn(logits, y)  # step 3: loss
        else:
            logits = model(x)  # step 2: forward pass
            loss = loss_fn(logits, y)  # step 3: loss
            optimizer.zero_grad()  # gradients accumulate: clear last step's
            model.backward(loss_fn.backward())  # step 4: gradients (backward pass)
            optimizer.step()  # step 5: w <- w - lr * gradient (with momentum)
        total_loss += float(loss) * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
        seen += len(y)
    return total_loss / seen, correct / seen


# %% The lesson: train briefly (or load --checkpoint), save the five pictures, then trace
# one training step module by module. Running main() does it all.
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/look_inside", help="where to save the PNGs")
    parser.add_argument("--checkpoint", default=None,
                        help="load weights from this tinynet checkpoint instead of training")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--train-size", type=int, default=None,
                        help="use only the first N training images of the sample (default all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling")
    parser.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: tinynet's)")
    args = parser.parse_args(argv)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tinynet.manual_seed(args.seed)
    model = course_cnn(device=args.device)
    loss_fn = nn.CrossEntropyLoss()

    train = FashionMNIST(train=True, sample=True)  # 2,000 real images, 200 per class
    test = FashionMNIST(train=False, sample=True)  # 500 other images, 50 per class
    if args.train_size is not None:
        train = ArrayDataset(train.images[: args.train_size], train.labels[: args.train_size],
                             classes=train.classes)
    train_loader = DataLoader(train, args.batch_size, shuffle=True, seed=args.seed,
                              device=args.device)
    test_loader = DataLoader(test, 250, device=args.device)

    if args.checkpoint:
        tinynet.checkpoint.load(args.checkpoint, model=model)
        print(f"loaded the weights from {args.checkpoint}")
    else:
        optimizer = tinynet.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        print(f"training on {len(train)} images: {len(train_loader)} iterations per epoch "
              f"(= {len(train)} / {args.batch_size}, rounded up)")
        history = []
        for epoch in range(1, args.epochs + 1):  # step 7: repeat for several epochs
            start = time.perf_counter()
            train_loss, train_acc = run_epoch(model, train_loader, loss_fn, optimizer)  # step 6
            val_loss, val_acc = run_epoch(model, test_loader, loss_fn)
            history.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                                val_loss=val_loss, val_acc=val_acc, lr=args.lr,
                                seconds=time.perf_counter() - start))
            print(f"epoch {epoch}: train loss {train_loss:.3f} acc {100 * train_acc:.1f}% | "
                  f"test loss {val_loss:.3f} acc {100 * val_acc:.1f}%")
        plot.plot_history(history, path=out / "history.png")

    # -- the pictures ------------------------------------------------------------------------------
    model.eval()
    plot.plot_filters(model[0], path=out / "filters.png")
    plot.plot_feature_maps(model, test.images[0], path=out / "feature_maps.png")
    pick = np.arange(0, len(test), len(test) // 12)[:12]  # 12 test images of different classes
    plot.plot_predictions(model, test.images[pick], test.labels[pick], test.classes,
                          path=out / "predictions.png")
    plot.plot_confusion_matrix(model, test_loader, test.classes,
                               path=out / "confusion_matrix.png")
    print(f"saved {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}/\n")

    # -- one training step, traced module by module (on a copy: the model is not changed) ---------
    x, y = next(iter(DataLoader(test, batch_size=8, device=args.device)))
    print(tinynet.inspect.trace(model, x, y, loss_fn))
    return 0


# %% Run it. From a terminal: python examples/05_look_inside.py [flags]. In a notebook
# (Jupyter, VS Code), this cell calls main([]); call main(["--epochs", "1"]) with the flags you
# want: there, the command-line arguments are the kernel's own, not this script's.
if __name__ == "__main__":
    if "ipykernel" in sys.modules:  # a notebook: the kernel's arguments are not this script's
        main([])
    else:
        raise SystemExit(main())
