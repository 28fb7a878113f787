"""Data: the Fashion-MNIST dataset and the loader that feeds batches to a network.

* :class:`FashionMNIST`: the 60,000 training / 10,000 test images of clothes, read from the
  official IDX files (found on disk or downloaded), or a small sample shipped with tinynet
  (``sample=True``).
* :class:`ArrayDataset`: any images and labels you have as arrays.
* :class:`DataLoader`: mini-batches ``(x, y)``, shuffled reproducibly, normalised, on a device.

Example::

    from tinynet.data import DataLoader, FashionMNIST

    train = FashionMNIST(train=True)                  # images (60000, 1, 28, 28) uint8
    loader = DataLoader(train, batch_size=64, shuffle=True, seed=0)
    for x, y in loader:                               # x (64, 1, 28, 28) float32, y (64,) int64
        ...
"""

from . import transforms
from .fashion_mnist import (
    CLASSES,
    DEFAULT_BASE_URL,
    DatasetNotFoundError,
    DownloadError,
    FashionMNIST,
    cache_dir,
    candidate_dirs,
    download_fashion_mnist,
    download_file,
    load_splits,
    read_idx,
    write_idx,
)
from .loader import FASHION_MNIST_MEAN, FASHION_MNIST_STD, ArrayDataset, DataLoader

__all__ = [
    "transforms",
    "load_splits",
    "CLASSES",
    "DEFAULT_BASE_URL",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "ArrayDataset",
    "DataLoader",
    "DatasetNotFoundError",
    "DownloadError",
    "FashionMNIST",
    "cache_dir",
    "candidate_dirs",
    "download_fashion_mnist",
    "download_file",
    "read_idx",
    "write_idx",
]
