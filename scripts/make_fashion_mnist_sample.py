"""Build the small Fashion-MNIST sample shipped in ``tinynet/data/sample/``.

The sample lets ``FashionMNIST(sample=True)`` work with no download and no installed dataset:
2,000 training images (200 per class) and 500 test images (50 per class), picked at random with a
fixed seed from the official files, so running this script again gives the same images.

The images stay in the IDX format of the official files, compressed with xz (LZMA), which packs
these images about 15% smaller than gzip: the four files take about 0.95 MB. The original order
is kept (the chosen indices are sorted), so classes are mixed as in the full dataset.

Usage::

    python scripts/make_fashion_mnist_sample.py [--source DIR] [--out DIR] [--seed N]

``--source`` defaults to wherever ``FashionMNIST`` finds the full data (e.g. the Debian package's
``/usr/share/datasets/fashion-mnist``); downloads are not attempted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinynet.data import fashion_mnist as fm  # noqa: E402

SEED = 20170825  # Fashion-MNIST's release date; any fixed number makes the sample reproducible
PER_CLASS = {"train": 200, "test": 50}

LICENSE_TEXT = """\
The files in this folder are a sample of Fashion-MNIST
(https://github.com/zalandoresearch/fashion-mnist): 2,000 training images (200 per class) and
500 test images (50 per class), chosen with a fixed seed by scripts/make_fashion_mnist_sample.py
and stored in the original IDX format, xz-compressed. Fashion-MNIST is distributed under the
MIT licence below.

The MIT License (MIT) Copyright © 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software \
and associated documentation files (the “Software”), to deal in the Software without \
restriction, including without limitation the rights to use, copy, modify, merge, publish, \
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the \
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or \
substantial portions of the Software.

THE SOFTWARE IS PROVIDED “AS IS”, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING \
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND \
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, \
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT \
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def select_balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` random samples of each class 0..9 (no repeats)."""
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in range(len(fm.CLASSES))
    ]
    return np.sort(np.concatenate(chosen))


def sample_indices(train_labels: np.ndarray, test_labels: np.ndarray, seed: int = SEED) -> dict:
    """The sample's indices in the full splits: ``{'train': (2000,) array, 'test': (500,)}``.

    One generator, used for the training split first, then the test split.
    """
    rng = np.random.default_rng(seed)
    return {
        "train": select_balanced(train_labels, PER_CLASS["train"], rng),
        "test": select_balanced(test_labels, PER_CLASS["test"], rng),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="folder with the four official .gz files")
    parser.add_argument("--out", default=str(fm.SAMPLE_DIR), help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    train = fm.FashionMNIST(root=args.source, train=True, download=False)
    test = fm.FashionMNIST(root=args.source, train=False, download=False)
    print(f"source: {train.root} ({train.source})")
    indices = sample_indices(train.labels, test.labels, args.seed)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in (("train", train), ("test", test)):
        index = indices[split]
        images_name, labels_name = fm.SAMPLE_FILES[split]
        fm.write_idx(out / images_name, dataset.images[index, 0])  # IDX stores (N, 28, 28)
        fm.write_idx(out / labels_name, dataset.labels[index].astype(np.uint8))
        counts = np.bincount(dataset.labels[index], minlength=len(fm.CLASSES))
        print(f"{split}: {len(index)} images, per class {counts.tolist()}")
    (out / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")

    total = 0
    for path in sorted(out.iterdir()):
        total += path.stat().st_size
        print(f"  {path.name:32s} {path.stat().st_size:>9,d} bytes")
    print(f"  {'total':32s} {total:>9,d} bytes")


if __name__ == "__main__":
    main()
