"""Datasets held in memory, and the loader that turns them into batches on a device.

A *dataset* here is just two arrays on the host (in ordinary RAM):

* ``images``: shape ``(N, ...)``, e.g. ``(N, 1, 28, 28)`` uint8 pixels 0..255,
* ``labels``: shape ``(N,)``, int64 class numbers.

A :class:`DataLoader` walks through a dataset in *mini-batches*: each step it picks ``batch_size``
samples (in a fresh random order each epoch when ``shuffle=True``), copies just those images to
the device, and converts them there to floating point, normalised so that the pixels have mean
about 0 and standard deviation about 1 (networks train much better on such inputs than on raw
0..255 values).

Why convert batch by batch instead of converting the whole dataset once? Memory: the 60,000
training images take 47 MB as uint8 but 188 MB as float32 (376 MB as float64), and on a GPU only
the current batch needs to be there. Copying uint8 to the GPU also moves 4x fewer bytes.

Reproducibility: the order of the samples comes from a NumPy random generator created from
``seed``. ``loader.state_dict()`` saves that generator (and how far the current epoch got), so a
training run restarted from a checkpoint sees exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np  # host side only: indices, shuffling and the uint8 datasets live on the host

from .. import backend as _backend

# Mean and standard deviation of Fashion-MNIST's 60,000 training images, pixels scaled to [0, 1].
# (Computed from the official files: mean 0.28604, std 0.35302; tests/test_data.py checks them.)
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def _is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools and floats (``32.0`` is not a size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class ArrayDataset:
    """A dataset made of two arrays: ``images`` ``(N, ...)`` and integer ``labels`` ``(N,)``.

    Use it to feed a :class:`DataLoader` with any data: your own images, a subset of
    Fashion-MNIST, random test data. The arrays stay on the host as given (uint8 images stay
    uint8); the loader converts each batch when it is needed.

    Args:
        images: array of shape ``(N, ...)``: uint8 pixels 0..255 or floats.
        labels: integer array of shape ``(N,)`` (stored as int64).
        classes: optional names of the classes; ``classes[k]`` is the name of label ``k``.

    Indexing: ``dataset[i]`` is the pair ``(image, label)`` with ``label`` a Python int;
    ``dataset[a:b]`` or ``dataset[index_array]`` gives ``(images, labels)`` arrays.
    """

    def __init__(self, images: Any, labels: Any, classes: Sequence[str] | None = None) -> None:
        images = _backend.to_numpy(images)
        labels = _backend.to_numpy(labels)
        if images.ndim < 1:
            raise ValueError(
                f"images must have shape (N, ...) with one entry per sample, got a scalar "
                f"of shape {images.shape}"
            )
        if labels.ndim != 1:
            raise ValueError(
                f"labels must have shape (N,) (one class number per sample), got shape "
                f"{labels.shape}. If they are one-hot, use labels.argmax(axis=1)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(
                f"labels must be integers (class numbers 0, 1, 2, ...), got dtype {labels.dtype}"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"images and labels must have the same length N: got {len(images)} images and "
                f"{len(labels)} labels"
            )
        if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
            raise TypeError(
                f"images must be uint8 pixels (0..255) or floats, got dtype {images.dtype}"
            )
        self.images: np.ndarray = images
        self.labels: np.ndarray = labels.astype(np.int64, copy=False)
        self.classes: list[str] | None = None if classes is None else list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        if _is_int(index):
            return self.images[index], int(self.labels[index])
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} samples, images {self.images.dtype} "
            f"{tuple(self.images.shape)})"
        )


class DataLoader:
    """Iterate over a dataset in mini-batches ``(x, y)`` on a device.

    Each batch:

    * ``x``: shape ``(B, ...)`` (``(B, 1, 28, 28)`` for Fashion-MNIST), dtype ``dtype``, on
      ``device``. uint8 pixels are divided by 255 (to ``[0, 1]``); then, when ``normalize`` is
      true, ``x = (x - mean) / std``. Float images are not divided by 255.
    * ``y``: shape ``(B,)``, int64 labels, on the same device.

    ``B`` is ``batch_size``, except for the last batch of an epoch, which is smaller when
    ``batch_size`` does not divide ``N`` (unless ``drop_last=True``, which skips it).

    Args:
        dataset: anything with host arrays ``.images`` ``(N, ...)`` and ``.labels`` ``(N,)``
            (:class:`ArrayDataset`, :class:`~tinynet.data.FashionMNIST`, ...).
        batch_size: samples per batch, a positive int.
        shuffle: visit the samples in a new random order every epoch (do this for training).
        drop_last: skip the last, smaller batch of each epoch.
        seed: seed of the shuffling generator. ``None``: drawn from tinynet's host generator,
            so ``tinynet.manual_seed(n)`` before creating the loader makes the order
            reproducible too.
        device: ``'cpu'`` or ``'cuda'`` (default: the default device).
        dtype: float32 or float64 (default: ``tinynet.get_default_dtype()`` at creation time).
        transform: optional function ``transform(x) -> x`` applied to each device batch ``x``
            after normalisation (data augmentation).
        normalize: subtract ``mean`` and divide by ``std`` (default True).
        mean, std: the normalisation constants, by default Fashion-MNIST's.

    ``len(loader)`` is the number of batches per epoch: ``ceil(N / batch_size)``, or
    ``floor(N / batch_size)`` with ``drop_last=True``.

    Every ``for x, y in loader:`` is one epoch. Run one epoch at a time: the loader tracks the
    epoch in progress so that :meth:`state_dict` can record it.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        device: str | None = None,
        dtype: Any = None,
        transform: Callable[[Any], Any] | None = None,
        *,
        normalize: bool = True,
        mean: float = FASHION_MNIST_MEAN,
        std: float = FASHION_MNIST_STD,
    ) -> None:
        if not _is_int(batch_size) or batch_size <= 0:
            raise ValueError(
                f"batch_size must be a positive int (samples per batch, e.g. 64), "
                f"got {batch_size!r}"
            )
        if not (hasattr(dataset, "images") and hasattr(dataset, "labels")):
            raise TypeError(
                f"DataLoader needs a dataset with .images (N, ...) and .labels (N,) arrays, got "
                f"{type(dataset).__name__}. Wrap plain arrays: "
                f"tinynet.data.ArrayDataset(images, labels)"
            )
        n_images, n_labels = len(dataset.images), len(dataset.labels)
        if n_images != n_labels:
            raise ValueError(
                f"the dataset has {n_images} images but {n_labels} labels: they must match"
            )
        if seed is not None and not _is_int(seed):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be a function transform(x) -> x, got {transform!r}")
        if normalize and not std > 0:
            raise ValueError(f"std must be positive to divide by it, got {std!r}")

        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.backend = _backend.get_backend(device)  # fails now if e.g. CuPy is missing
        self.device: str = self.backend.device
        self.dtype: np.dtype = _backend.normalize_dtype(dtype)
        self.transform = transform
        self.normalize = bool(normalize)
        self.mean = float(mean)
        self.std = float(std)

        if seed is None:  # derive one from tinynet's host generator (seeded by manual_seed)
            seed = int(_backend.host_rng().integers(2**63))
        self.seed: int = int(seed)
        self._rng = np.random.default_rng(self.seed)

        self._epoch = 0  # epochs started so far
        self._in_progress = False  # an epoch has started and not finished
        self._batches_done = 0  # batches handed out in the epoch in progress
        self._epoch_start_state: dict | None = None  # generator state before this epoch's shuffle
        self._epoch_start_transform: dict | None = None  # the transform's, at the same moment
        self._resume_batch = 0  # set by load_state_dict: batches to skip in the next epoch

    # -- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.dataset.labels)
        if self.drop_last:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    @property
    def epoch(self) -> int:
        """How many epochs have been started (the first ``for`` loop over the loader is epoch 0)."""
        return self._epoch

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        n = len(self.dataset.labels)
        n_batches = len(self)
        skip, self._resume_batch = self._resume_batch, 0

        # Remember the generator as it is *before* drawing this epoch's order: saving it lets a
        # resumed run draw the very same permutation.
        self._epoch_start_state = copy.deepcopy(self._rng.bit_generator.state)
        self._epoch_start_transform = self._transform_state()
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        self._epoch += 1
        self._in_progress = True
        self._batches_done = skip

        # Resuming inside an epoch: the batches already done are made again and dropped when a
        # random transform is attached, so that its generators advance exactly as they did.
        if self._epoch_start_transform is not None:
            for b in range(skip):
                self._make_batch(order[b * self.batch_size : (b + 1) * self.batch_size])
        for b in range(skip, n_batches):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            batch = self._make_batch(index)
            self._batches_done = b + 1  # counted before yield: the caller now holds this batch
            yield batch
        self._in_progress = False

    def _make_batch(self, index: np.ndarray) -> tuple[Any, Any]:
        """Gather samples ``index`` on the host, move them to the device, convert them there."""
        images = self.dataset.images[index]  # fancy indexing: a new host array (B, ...)
        labels = self.dataset.labels[index]
        xp = self.backend.xp
        dtype = self.dtype

        x = self.backend.asarray(images)  # still uint8 (or the dataset's float type)
        is_pixels = x.dtype == xp.uint8
        x = x.astype(dtype)  # a new array on the device, so the in-place ops below are safe
        # The constants are cast to `dtype` first: a float64 NumPy scalar would otherwise turn a
        # float32 batch into float64 (NumPy's promotion rules), doubling memory and time.
        if is_pixels:
            x /= dtype.type(255.0)
        if self.normalize:
            x -= dtype.type(self.mean)
            x /= dtype.type(self.std)
        if self.transform is not None:
            x = self.transform(x)
        y = self.backend.asarray(labels, dtype=np.int64)
        return x, y

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the loader is in its sequence of batches, as JSON-friendly data.

        Returns a dict with ``epoch`` (epochs completed, or the index of the epoch in progress),
        ``batch`` (batches of that epoch already handed out, 0 between epochs), ``seed``,
        ``bit_generator_state`` (the NumPy generator state from which that epoch's order is
        drawn), and ``batch_size``/``num_samples``/``shuffle``/``drop_last`` to check that a
        resumed loader matches; plus ``transform``, the augmentation's generator states at the
        same point (the start of the epoch in progress, whose done batches are replayed on
        resume), when the transform has a ``state_dict`` (those of :mod:`tinynet.data.transforms`
        do).
        Save it in a checkpoint (e.g. with ``json.dump``).
        """
        if self._in_progress and self._batches_done < len(self):
            epoch, batch, state = self._epoch - 1, self._batches_done, self._epoch_start_state
            transform_state = self._epoch_start_transform  # the batches done are replayed
        elif self._resume_batch:  # restored mid-epoch and not iterated since: that same point
            epoch, batch, state = self._epoch, self._resume_batch, self._rng.bit_generator.state
            transform_state = self._transform_state()
        else:
            epoch, batch, state = self._epoch, 0, self._rng.bit_generator.state
            transform_state = self._transform_state()
        saved = {
            "epoch": int(epoch),
            "batch": int(batch),
            "seed": self.seed,
            "bit_generator_state": copy.deepcopy(state),
            "batch_size": self.batch_size,
            "num_samples": len(self.dataset.labels),
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }
        if transform_state is not None:
            saved["transform"] = transform_state
        return saved

    def _transform_state(self) -> dict | None:
        """The transform's generator states, if it has any (see :mod:`tinynet.data.transforms`)."""
        if hasattr(self.transform, "state_dict"):
            return copy.deepcopy(self.transform.state_dict())
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s data: the next ``for`` loop continues exactly there.

        If the state was saved in the middle of an epoch, the next loop redraws that epoch's order
        and starts after the batches already done; otherwise it starts the next epoch.
        """
        missing = {"epoch", "batch", "seed", "bit_generator_state"} - set(state)
        if missing:
            raise KeyError(
                f"not a DataLoader state: missing keys {sorted(missing)} "
                f"(expected what DataLoader.state_dict() returns)"
            )
        for key, mine in (
            ("batch_size", self.batch_size),
            ("num_samples", len(self.dataset.labels)),
            ("shuffle", self.shuffle),
            ("drop_last", self.drop_last),
        ):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"the saved loader state has {key}={state[key]!r} but this loader has "
                    f"{key}={mine!r}: the batches would not line up. Create the loader with the "
                    f"same dataset and settings as the saved one"
                )
        self.seed = int(state["seed"])
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = copy.deepcopy(state["bit_generator_state"])
        if state.get("transform") is not None and hasattr(self.transform, "load_state_dict"):
            self.transform.load_state_dict(state["transform"])
        self._epoch = int(state["epoch"])
        self._resume_batch = int(state["batch"])
        self._in_progress = False
        self._batches_done = 0
        self._epoch_start_state = None

    def __repr__(self) -> str:
        return (
            f"DataLoader({len(self.dataset.labels)} samples, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, device={self.device!r}, "
            f"dtype={self.dtype.name}, {len(self)} batches per epoch)"
        )
