"""Fashion-MNIST: 70,000 grayscale 28x28 images of clothes in 10 classes (Zalando, MIT licence).

The data comes as four files in the *IDX* format (the format of the original MNIST digits)::

    train-images-idx3-ubyte.gz   60,000 training images     train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz    10,000 test images         t10k-labels-idx1-ubyte.gz

An IDX file is a tiny header followed by raw numbers:

* 4 bytes *magic number* ``0x000008DD``: two zero bytes, the type code ``0x08`` (unsigned byte)
  and the number of dimensions ``DD`` (``0x03`` for images ``(N, 28, 28)``, ``0x01`` for labels
  ``(N,)``);
* one 4-byte big-endian integer per dimension (``N``, then ``28``, ``28`` for images);
* the ``N * 28 * 28`` pixel bytes (row by row) or the ``N`` label bytes (0..9).

:class:`FashionMNIST` finds the files (see :func:`candidate_dirs` for where it looks), downloads
them when they are nowhere to be found (checking the MD5 checksums published by the authors), and
parses them with :func:`read_idx`. ``FashionMNIST(sample=True)`` loads instead a small balanced
sample (2,000 training and 500 test images) shipped inside tinynet, for when there is no network.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import lzma
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np  # host side only: the files are parsed on the host, batches move later

from .loader import FASHION_MNIST_MEAN, FASHION_MNIST_STD, ArrayDataset

__all__ = [
    "CLASSES",
    "DEFAULT_BASE_URL",
    "FILES",
    "MD5SUMS",
    "SAMPLE_DIR",
    "SYSTEM_DIR",
    "DatasetNotFoundError",
    "DownloadError",
    "FashionMNIST",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "cache_dir",
    "candidate_dirs",
    "download_fashion_mnist",
    "download_file",
    "read_idx",
    "write_idx",
]

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# (images file, labels file) of each split, as published.
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# MD5 checksums of the .gz files, as published in Fashion-MNIST's README. They check downloads.
# (Files found on disk are checked by parsing instead: Debian's package dataset-fashion-mnist
# recompresses the same data, so its .gz files have other checksums.)
MD5SUMS = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# Where the authors publish the files; $TINYNET_FASHION_MNIST_URL or base_url=... override it.
DEFAULT_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
URL_ENV = "TINYNET_FASHION_MNIST_URL"
DATA_ENV = "TINYNET_DATA"
# Where the Debian/Ubuntu package dataset-fashion-mnist installs the files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# The small sample shipped with tinynet (built by scripts/make_fashion_mnist_sample.py).
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_FILES = {
    "train": ("train-images-idx3-ubyte.xz", "train-labels-idx1-ubyte.xz"),
    "test": ("t10k-images-idx3-ubyte.xz", "t10k-labels-idx1-ubyte.xz"),
}

IMAGE_SIZE = 28
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, columns)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


class DatasetNotFoundError(RuntimeError):
    """The dataset is in none of the places searched and could not be downloaded."""


class DownloadError(RuntimeError):
    """A download failed: no connection, an HTTP error, an interrupted transfer, a wrong MD5."""


# ----------------------------------------------------------------------------------------------
# The IDX format
# ----------------------------------------------------------------------------------------------
def _what_bytes(head: bytes) -> str:
    """What a file seems to hold, from its first bytes (for error messages)."""
    text = head.decode("utf-8", errors="replace")
    if head and text.count("\ufffd") <= 1 and all(c.isprintable() or c in "\t\r\n\ufffd"
                                                  for c in text):
        kind = "an HTML page" if text.lstrip().startswith("<") else "text"
        return f"{kind} (it starts with {text[:30]!r})"
    return f"data starting with the bytes {head[:8].hex(' ') or '(none: it is empty)'}"


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (``.gz``) or xz (``.xz``) compressed."""
    with open(path, "rb") as f:
        head = f.read(32)
    try:
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        if head[:6] == b"\xfd7zXZ\x00":
            with lzma.open(path, "rb") as f:
                return f.read()
    # a file cut short (EOFError), a wrong checksum (BadGzipFile, an OSError), damaged
    # compressed data (zlib.error, lzma.LZMAError)
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ValueError(
            f"{path}: the compressed file is damaged or truncated ({exc}). It may come from an "
            f"interrupted download: delete it and get it again"
        ) from exc
    compression = {".gz": "gzip", ".xz": "xz"}.get(path.suffix)
    if compression and not head.startswith(b"\x00\x00\x08"):  # a plain IDX file is fine too
        raise ValueError(
            f"{path}: the name says {compression}-compressed, but the file is not {compression} "
            f"data, nor an uncompressed IDX file: it holds {_what_bytes(head)}. A failed "
            f"download can save a server's error page under the file's name: delete it and get "
            f"it again"
        )
    with open(path, "rb") as f:
        return f.read()


def read_idx(path: str | os.PathLike, kind: str | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-, xz-compressed or plain) into a uint8 array.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.
        kind: ``'images'`` to require magic ``0x00000803`` (shape ``(N, rows, columns)``),
            ``'labels'`` to require ``0x00000801`` (shape ``(N,)``), None to accept both.

    Returns:
        A writable uint8 array with the shape stored in the header.

    Raises:
        ValueError naming the file when the magic number is wrong, the header is cut short, or the
        data is shorter or longer than the header's dimensions say.
    """
    path = Path(path)
    expected = {
        "images": (IMAGES_MAGIC,),
        "labels": (LABELS_MAGIC,),
        None: (IMAGES_MAGIC, LABELS_MAGIC),
    }
    if kind not in expected:
        raise ValueError(f"kind must be 'images', 'labels' or None, got {kind!r}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"{path}: not an IDX file: {len(data)} bytes, too short for the 4-byte magic number. "
            f"The file is truncated or empty: delete it and get it again"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic not in expected[kind]:
        wanted = " or ".join(f"0x{m:08x}" for m in expected[kind])
        raise ValueError(
            f"{path}: not an IDX {kind or 'images/labels'} file of unsigned bytes: magic number "
            f"0x{magic:08x}, expected {wanted} (0x00000803 for images, 0x00000801 for labels). "
            f"Check that this is the right file and that it is not damaged"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_size} header bytes, "
            f"the file has {len(data)}. Delete it and get it again"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_size = int(np.prod(shape, dtype=np.int64))
    got = len(data) - header_size
    if got != expected_size:
        what = "truncated" if got < expected_size else "too long"
        raise ValueError(
            f"{path}: {what} IDX file: the header says shape {shape}, i.e. {expected_size} bytes "
            f"of data, but the file has {got}. It may come from an interrupted download: delete "
            f"it and get it again"
        )
    # bytearray: np.frombuffer on it gives a writable array without a second copy
    return np.frombuffer(bytearray(data[header_size:]), dtype=np.uint8).reshape(shape)


def write_idx(path: str | os.PathLike, array: Any) -> Path:
    """Write a uint8 array of 1 dimension (labels) or 3 (images) as an IDX file.

    The file is gzip-compressed when ``path`` ends in ``.gz``, xz-compressed (smaller, slower) when
    it ends in ``.xz``, plain otherwise. Compressed output is reproducible (no timestamps).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(
            f"write_idx writes uint8 arrays of shape (N,) or (N, rows, columns), got "
            f"{array.dtype} of shape {array.shape}"
        )
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    elif path.suffix == ".xz":
        data = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    path.write_bytes(data)
    return path


def _load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split: images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64."""
    images = read_idx(images_path, "images")
    labels = read_idx(labels_path, "labels")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{images_path}: Fashion-MNIST images are {IMAGE_SIZE}x{IMAGE_SIZE}, this file holds "
            f"images of {images.shape[1]}x{images.shape[2]}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            f"labels: they must match. Are both files complete and from the same split?"
        )
    if len(labels) and labels.max() >= len(CLASSES):
        raise ValueError(
            f"{labels_path}: labels must be class numbers 0..{len(CLASSES) - 1}, found "
            f"{int(labels.max())}"
        )
    # Add the channel axis: layers take images as (N, channels, height, width).
    return images[:, None, :, :], labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Where the files are
# ----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where downloads go: ``~/.cache/tinynet/fashion-mnist``."""
    return Path.home() / ".cache" / "tinynet" / "fashion-mnist"


def candidate_dirs(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched for the files, first match wins, as ``(source, folder)`` pairs.

    1. ``root`` (the argument), then its subfolder ``fashion-mnist``;
    2. ``$TINYNET_DATA``, then ``$TINYNET_DATA/fashion-mnist``;
    3. the download cache ``~/.cache/tinynet/fashion-mnist``;
    4. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``).
    """
    dirs: list[tuple[str, Path]] = []
    if root is not None:
        root = Path(root).expanduser()
        dirs += [("root", root), ("root", root / "fashion-mnist")]
    env = os.environ.get(DATA_ENV)
    if env:
        base = Path(env).expanduser()
        dirs += [("TINYNET_DATA", base), ("TINYNET_DATA", base / "fashion-mnist")]
    dirs += [("cache", cache_dir()), ("system", SYSTEM_DIR)]
    return dirs


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name`` (``.gz``) or its uncompressed twin, whichever exists."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    images, labels = (_find(folder, name) for name in FILES[split])
    return (images, labels) if images and labels else None


# ----------------------------------------------------------------------------------------------
# Downloads
# ----------------------------------------------------------------------------------------------
def _base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def download_file(url: str, dest: str | os.PathLike, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, checking the MD5 checksum; all or nothing.

    The bytes go to a temporary file in ``dest``'s folder, which replaces ``dest`` (atomically,
    with ``os.replace``) only once the transfer is complete and the checksum matches. If anything
    goes wrong (no connection, HTTP error, connection closed mid-file, wrong checksum, Ctrl-C)
    the temporary file is deleted and ``dest`` is left as it was.

    Raises:
        DownloadError saying what went wrong.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        received = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                expected = int(length) if length is not None else None
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP error {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # no network, connection refused or reset, timeout, broken transfer, disk full
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"{url}: download failed ({reason})") from exc
        if expected is not None and received != expected:
            raise DownloadError(
                f"{url}: download interrupted: received {received} of {expected} bytes "
                f"(the connection closed early). Try again"
            )
        if digest.hexdigest() != md5:
            raise DownloadError(
                f"{url}: MD5 checksum mismatch: expected {md5}, got {digest.hexdigest()} "
                f"({received} bytes). The file is damaged or not the published one; the download "
                f"was discarded"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # still there only if something failed
    return dest


def download_fashion_mnist(
    directory: str | os.PathLike | None = None,
    *,
    train: bool | None = None,
    base_url: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download the Fashion-MNIST files missing from ``directory`` (default: the cache).

    Args:
        directory: where to put the files (created if needed); default ``cache_dir()``.
        train: True: only the training split, False: only the test split, None: both.
        base_url: the folder URL holding the files; default ``$TINYNET_FASHION_MNIST_URL`` or
            :data:`DEFAULT_BASE_URL`.
        timeout: seconds to wait for the server before giving up.

    Returns:
        The directory. Every file is checked against :data:`MD5SUMS`.

    Raises:
        DownloadError on any failure (files downloaded before it stay: they were verified).
    """
    folder = Path(directory).expanduser() if directory is not None else cache_dir()
    url = _base_url(base_url)
    splits = ["train", "test"] if train is None else ["train" if train else "test"]
    for split in splits:
        for name in FILES[split]:
            if _find(folder, name) is None:
                print(f"tinynet: downloading {url}{name} -> {folder}", file=sys.stderr)
                download_file(url + name, folder / name, MD5SUMS[name], timeout=timeout)
    return folder


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
class FashionMNIST(ArrayDataset):
    """Fashion-MNIST's training (60,000 images) or test split (10,000 images), in memory.

    Attributes:
        images: uint8 array ``(N, 1, 28, 28)``: pixels 0 (black) .. 255 (white), one channel.
        labels: int64 array ``(N,)``: class numbers 0..9.
        classes: the ten class names; ``classes[labels[i]]`` names image ``i``.
        train: which split this is.
        root: the folder the files were read from.
        source: how they were found: ``'root'``, ``'TINYNET_DATA'``, ``'cache'``, ``'system'``
            (the Debian package), ``'download'`` (just downloaded into the cache) or ``'sample'``.

    Args:
        root: a folder to look in first (see :func:`candidate_dirs` for the search order).
        train: True for the training split, False for the test split.
        sample: load the small balanced sample shipped with tinynet instead (2,000 training /
            500 test images, 200 / 50 per class): no files or network needed.
        download: when the files are nowhere, download them into ``~/.cache/tinynet/fashion-mnist``.
        base_url: where to download from (default ``$TINYNET_FASHION_MNIST_URL`` or the official
            location).

    Raises:
        DatasetNotFoundError (a RuntimeError) listing every place looked at and the ways to get
        the data; ValueError when a file is found but damaged or foreign (truncated, not gzip,
        a wrong magic number or sizes), naming the file, the folder it was found in with its
        place in the search order (and the places after it, not tried), and what to do.

    Example::

        train = FashionMNIST(train=True)
        image, label = train[0]          # (1, 28, 28) uint8, int
        print(train.classes[label])
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train: bool = True,
        sample: bool = False,
        download: bool = True,
        base_url: str | None = None,
    ) -> None:
        self.train = bool(train)
        split = "train" if self.train else "test"
        if sample:
            names = SAMPLE_FILES[split]
            found: tuple[str, Path, tuple[Path, Path]] = (
                "sample",
                SAMPLE_DIR,
                (SAMPLE_DIR / names[0], SAMPLE_DIR / names[1]),
            )
        else:
            found = self._locate(root, split, download, base_url)
        self.source, self.root, self.files = found
        try:
            images, labels = _load_pair(*self.files)
        except ValueError as exc:  # a damaged or foreign file: say where it was found
            searched = [] if sample else candidate_dirs(root)
            raise ValueError(_unusable_message(exc, split, self.source, self.root, searched)) \
                from exc
        super().__init__(images, labels, classes=CLASSES)

    @staticmethod
    def _locate(
        root: Any, split: str, download: bool, base_url: str | None
    ) -> tuple[str, Path, tuple[Path, Path]]:
        searched = candidate_dirs(root)
        for source, folder in searched:
            files = _split_files(folder, split)
            if files is not None:
                return source, folder, files

        url = _base_url(base_url)
        if download:
            try:
                folder = download_fashion_mnist(train=(split == "train"), base_url=url)
            except DownloadError as exc:
                problem = f"Downloading from {url} failed: {exc}"
                cause: Exception | None = exc
            else:
                files = _split_files(folder, split)
                assert files is not None
                return "download", folder, files
        else:
            problem, cause = "Download was not tried (download=False).", None
        raise DatasetNotFoundError(_not_found_message(split, searched, problem, url)) from cause

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (
            f"FashionMNIST({split}, {len(self)} images {tuple(self.images.shape[1:])}, "
            f"source={self.source!r}, root='{self.root}')"
        )



def load_splits(data: str = "auto", limit: int | None = None) -> tuple[ArrayDataset, FashionMNIST]:
    """The training and test splits, as an example script's ``--data auto|full|sample`` asks.

    * ``'full'``: the 60,000 + 10,000 images, downloading them when no folder holds them.
    * ``'sample'``: the 2,000 + 500 images shipped inside tinynet.
    * ``'auto'``: the full data when it is on disk (never the network), else the sample, with a
      notice on stderr saying how to get the full data.

    ``limit`` (an example's ``--limit``): keep only the first ``limit`` training images, as an
    :class:`ArrayDataset` with the same class names (the test split stays whole).
    """
    train, test = _splits(data)
    if limit is not None:
        train = ArrayDataset(train.images[:limit], train.labels[:limit], classes=train.classes)
    return train, test


def _splits(data: str) -> tuple[FashionMNIST, FashionMNIST]:
    """:func:`load_splits` without the limit."""
    if data not in ("auto", "full", "sample"):
        raise ValueError(f"data must be 'auto', 'full' or 'sample', got {data!r}")
    if data != "sample":
        try:
            download = data == "full"  # auto never touches the network
            return (FashionMNIST(train=True, download=download),
                    FashionMNIST(train=False, download=download))
        except DatasetNotFoundError:
            if data == "full":
                raise
        print("NOTICE: the full Fashion-MNIST was not found, so this run uses the small sample "
              "shipped with tinynet (2,000 training / 500 test images): expect a lower accuracy.\n"
              "        For the full data: sudo apt-get install dataset-fashion-mnist, or set "
              "TINYNET_DATA to a folder with the four .gz files, or use --data full to download.",
              file=sys.stderr, flush=True)
    return FashionMNIST(train=True, sample=True), FashionMNIST(train=False, sample=True)


# The places of candidate_dirs, in words.
_PLACES = {
    "root": "the root argument",
    "TINYNET_DATA": "$TINYNET_DATA",
    "cache": "tinynet's download cache",
    "system": "Debian/Ubuntu package dataset-fashion-mnist",
    "download": "tinynet's download cache, downloaded just now",
    "sample": "the sample shipped inside tinynet",
}


def _unusable_message(
    exc: ValueError, split: str, source: str, folder: Path, searched: Sequence[tuple[str, Path]]
) -> str:
    """A file of a split is damaged or foreign: which file, where it was found, what to do."""
    head = f"Fashion-MNIST ({split} split): a file found at {folder} cannot be used:\n  {exc}\n"
    if source == "sample":
        return head + (
            f"It is part of {_PLACES['sample']}, so tinynet's installation is damaged: reinstall "
            f"tinynet (pip install --force-reinstall tinynet, or pip install -e . in a checkout)"
        )
    if source == "download":
        where = f"It was found in {folder} ({_PLACES['download']})."
        later: list[tuple[int, str, Path]] = []
    else:
        number = next((i for i, (s, f) in enumerate(searched, 1) if (s, f) == (source, folder)),
                      None)
        place = f"place {number} of the search order, " if number else ""
        where = f"It was found in {folder} ({place}{_PLACES[source]})."
        later = [(i, s, f) for i, (s, f) in enumerate(searched, 1) if number and i > number]
    if later:
        where += (" The first folder holding both files of the split is used, so the places "
                  "after it were not tried:\n" + "\n".join(
                      f"  {i}. {f}  ({_PLACES[s]})" for i, s, f in later))
    if source == "system":
        fix = "reinstall the package (sudo apt-get install --reinstall dataset-fashion-mnist)"
    elif source in ("cache", "download"):
        fix = ("delete the damaged file; FashionMNIST(download=True) then downloads it again "
               "(checking its MD5 checksum)")
    else:
        fix = (f"delete or replace the damaged file (or point {_PLACES[source]} at a folder "
               f"with good files); the search then goes on to the next place")
    return (head + where + f"\nWhat to do: {fix}. Or check that these are the files you meant; "
            f"FashionMNIST(sample=True) needs no files at all")


def _not_found_message(
    split: str, searched: Sequence[tuple[str, Path]], problem: str, url: str
) -> str:
    images, labels = FILES[split]
    what = _PLACES
    places = "\n".join(
        f"  {i}. {folder}  ({what[source]})" for i, (source, folder) in enumerate(searched, 1)
    )
    notes = []
    if not any(source == "root" for source, _ in searched):
        notes.append("no root argument given")
    if not os.environ.get(DATA_ENV):
        notes.append("$TINYNET_DATA is not set")
    if notes:
        places += f"\n  ({'; '.join(notes)})"
    return (
        f"Fashion-MNIST ({split} split) not found: no folder holds both {images} and {labels}.\n"
        f"Looked in:\n{places}\n"
        f"{problem}\n"
        f"Ways to get the data:\n"
        f"  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
        f"(installs the files in {SYSTEM_DIR})\n"
        f"  - copy the four .gz files into a folder and set TINYNET_DATA=/that/folder "
        f"(or pass root='/that/folder')\n"
        f"  - download: FashionMNIST(download=True) fetches them from {url} into {cache_dir()} "
        f"(set {URL_ENV} to use a mirror)\n"
        f"  - no data at hand: FashionMNIST(sample=True) loads the 2,000 + 500 image sample "
        f"shipped with tinynet"
    )
