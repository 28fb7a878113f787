"""tinynet.data: IDX parsing, finding and downloading Fashion-MNIST, the sample, the DataLoader.

Downloads go to a local HTTP server started by the tests (127.0.0.1, a free port), never to the
internet. Tests that need the full dataset skip when /usr/share/datasets/fashion-mnist is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import math
import re
import socket
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from script_loader import load_script

import tinynet
from tinynet import backend
from tinynet.data import (
    CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    ArrayDataset,
    DataLoader,
    DatasetNotFoundError,
    DownloadError,
    FashionMNIST,
    download_file,
    read_idx,
    write_idx,
)
from tinynet.data import fashion_mnist as fm

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL = all((REAL_DIR / name).is_file() for pair in fm.FILES.values() for name in pair)
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"full Fashion-MNIST not in {REAL_DIR}")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand from the format's definition (independent of write_idx)."""
    magic = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic + dims + array.astype(np.uint8).tobytes()


def write_split(folder: Path, split: str = "train", n: int = 4, marker: int = 7) -> None:
    """Official-looking gzip files for a tiny split whose pixels all equal ``marker``."""
    folder.mkdir(parents=True, exist_ok=True)
    images_name, labels_name = fm.FILES[split]
    images = np.full((n, 28, 28), marker, dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    (folder / images_name).write_bytes(gzip.compress(idx_bytes(images)))
    (folder / labels_name).write_bytes(gzip.compress(idx_bytes(labels)))


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every place FashionMNIST looks in, moved under tmp_path and empty; no download URL set."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(fm.DATA_ENV, raising=False)
    monkeypatch.delenv(fm.URL_ENV, raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    dirs = {
        "root": tmp_path / "root",
        "TINYNET_DATA": tmp_path / "env",
        "cache": home / ".cache" / "tinynet" / "fashion-mnist",
        "system": tmp_path / "system",
    }
    assert fm.cache_dir() == dirs["cache"]
    return dirs


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        name = self.path.lstrip("/")
        server.requests.append(name)
        data = server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        mode = server.mode
        body = bytes([data[0] ^ 0xFF]) + data[1:] if mode == "corrupt" else data
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "interrupt":  # send half, then hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server with a tiny valid train and test split; MD5SUMS patched to match."""
    source = tmp_path / "served"
    write_split(source, "train", n=6, marker=11)
    write_split(source, "test", n=3, marker=12)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    monkeypatch.setattr(fm, "MD5SUMS", {k: hashlib.md5(v).hexdigest() for k, v in files.items()})

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.mode, httpd.requests = files, "ok", []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def tiny_dataset(n: int) -> ArrayDataset:
    """n images of shape (1, 2, 2); label i for sample i: batches tell which samples they hold."""
    images = (np.arange(n * 4) % 256).astype(np.uint8).reshape(n, 1, 2, 2)
    return ArrayDataset(images, np.arange(n))


def epoch_labels(loader: DataLoader) -> list[int]:
    return [int(v) for _, y in loader for v in backend.to_numpy(y)]


# ----------------------------------------------------------------------------------------------
# IDX parsing
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_read_idx_images_and_labels(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    image_path = write_idx(tmp_path / f"im{suffix}", images)
    label_path = write_idx(tmp_path / f"lb{suffix}", labels)
    got = read_idx(image_path, "images")
    assert got.dtype == np.uint8 and got.shape == (5, 28, 28)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(read_idx(label_path, "labels"), labels)
    got[0, 0, 0] = 1  # the result is an ordinary writable array


def test_read_idx_follows_the_format(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(idx_bytes(images))
    (tmp_path / "zipped.gz").write_bytes(gzip.compress(idx_bytes(images)))
    for name in ("plain", "zipped.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), images)
    assert write_idx(tmp_path / "mine", images).read_bytes() == idx_bytes(images)


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad-magic.gz"
    data = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    data[2] = 0x0D  # float32 type code: not what Fashion-MNIST uses
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(ValueError, match="magic number 0x00000d03") as info:
        read_idx(path)
    assert "bad-magic.gz" in str(info.value)


def test_read_idx_kind_mismatch(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="0x00000801.*expected 0x00000803"):
        read_idx(path, "images")


def test_read_idx_truncated_payload(tmp_path):
    path = tmp_path / "short-images"
    path.write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8))[: -28 * 28 * 2])
    with pytest.raises(ValueError, match="short-images: truncated IDX file") as info:
        read_idx(path)
    assert "3920 bytes" in str(info.value)  # what the header promised


def test_read_idx_too_long_and_short_header(tmp_path):
    long = tmp_path / "long"
    long.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\0")
    with pytest.raises(ValueError, match="long: too long"):
        read_idx(long)
    header = tmp_path / "header"
    header.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 5]))
    with pytest.raises(ValueError, match="header: truncated IDX header"):
        read_idx(header)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty: not an IDX file"):
        read_idx(empty)


def test_read_idx_truncated_gzip(tmp_path):
    whole = gzip.compress(idx_bytes(np.ones((3, 28, 28), np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.gz: the compressed file is damaged or truncated"):
        read_idx(path)


def test_count_mismatch_between_images_and_labels(places):
    folder = places["root"]
    folder.mkdir()
    images_name, labels_name = fm.FILES["train"]
    write_idx(folder / images_name, np.zeros((5, 28, 28), np.uint8))
    write_idx(folder / labels_name, np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="5 images but .* 4 labels") as info:
        FashionMNIST(root=folder, download=False)
    assert images_name in str(info.value) and labels_name in str(info.value)


def test_labels_out_of_range(places):
    folder = places["root"]
    folder.mkdir()
    images_name, labels_name = fm.FILES["test"]
    write_idx(folder / images_name, np.zeros((2, 28, 28), np.uint8))
    write_idx(folder / labels_name, np.array([3, 10], np.uint8))
    with pytest.raises(ValueError, match="class numbers 0..9, found 10"):
        FashionMNIST(root=folder, train=False, download=False)


def _flip(data: bytes, at: int, mask: int = 0xFF) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1:]


def test_read_idx_corrupted_gzip_and_not_gzip(tmp_path):
    whole = gzip.compress(idx_bytes(np.arange(3 * 28 * 28).reshape(3, 28, 28) % 251))
    path = tmp_path / "flipped.gz"
    path.write_bytes(_flip(whole, len(whole) // 2))  # the deflate data or its CRC no longer fit
    with pytest.raises(ValueError, match="flipped.gz: the compressed file is damaged"):
        read_idx(path)
    page = tmp_path / "page.gz"
    page.write_bytes(b"<html><body>404 Not Found</body></html>")
    with pytest.raises(ValueError, match=r"page\.gz: the name says gzip-compressed, but the file "
                       r"is not gzip data.*an HTML page \(it starts with '<html><body>404"):
        read_idx(page)
    empty = tmp_path / "empty.xz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.xz: the name says xz-compressed.*it is empty"):
        read_idx(empty)
    plain = tmp_path / "plain-but-named.gz"  # an uncompressed IDX file under a .gz name is fine
    plain.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    np.testing.assert_array_equal(read_idx(plain, "labels"), np.zeros(3, np.uint8))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_read_idx_any_cut_or_flipped_byte(data):
    """Any damage to a gzip IDX file: a ValueError naming the file, or the very same array."""
    import tempfile

    images = (np.arange(2 * 28 * 28) % 253).astype(np.uint8).reshape(2, 28, 28)
    whole = gzip.compress(idx_bytes(images), mtime=0)
    if data.draw(st.booleans(), label="cut"):
        damaged = whole[: data.draw(st.integers(0, len(whole) - 1), label="length")]
    else:
        at = data.draw(st.integers(0, len(whole) - 1), label="position")
        damaged = _flip(whole, at, 1 << data.draw(st.integers(0, 7), label="bit"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train-images-idx3-ubyte.gz"
        path.write_bytes(damaged)
        try:
            got = read_idx(path, "images")
        except ValueError as exc:
            assert str(path) in str(exc)
        else:  # the flip hit the header's time stamp or flags: the data is the same
            np.testing.assert_array_equal(got, images)


def _good_images_file() -> bytes:
    images = (np.arange(4 * 28 * 28) % 251).astype(np.uint8).reshape(4, 28, 28)
    return gzip.compress(idx_bytes(images), mtime=0)


# what is wrong with the images file found: (the file's bytes, what the message says)
DAMAGED_FILES = {
    "gzip cut short": (lambda: _good_images_file()[:200], r"damaged or truncated"),
    "gzip corrupted": (lambda: _flip(_good_images_file(), 200), r"damaged or truncated"),
    "an HTML page": (lambda: b"<!DOCTYPE html><title>Error</title>", r"not gzip data.*HTML"),
    "empty": (lambda: b"", r"not gzip data.*it is empty"),
    "wrong magic": (lambda: gzip.compress(idx_bytes(np.zeros(4, np.uint8))),
                    r"magic number 0x00000801, expected 0x00000803"),
    "data cut short": (lambda: gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100]),
                       r"truncated IDX file"),
    "wrong image size": (lambda: gzip.compress(idx_bytes(np.zeros((4, 32, 32), np.uint8))),
                         r"images of 32x32"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_FILES))
@pytest.mark.parametrize("source", ["root", "TINYNET_DATA", "cache", "system"])
def test_a_damaged_file_on_the_search_path_names_file_and_place(places, monkeypatch, source,
                                                                  damage):
    make, pattern = DAMAGED_FILES[damage]
    folder = places[source]
    write_split(folder, "train")
    images_file = folder / fm.FILES["train"][0]
    images_file.write_bytes(make())
    if source != "system":
        write_split(places["system"], "train")  # a good copy further down is not used silently
    if source == "TINYNET_DATA":
        monkeypatch.setenv(fm.DATA_ENV, str(folder))
    kw = {"root": folder} if source == "root" else {}
    with pytest.raises(ValueError) as info:
        FashionMNIST(train=True, download=False, **kw)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert str(images_file) in message  # the file
    where = {"root": "place 1 of the search order, the root argument",
             "TINYNET_DATA": "place 1 of the search order, $TINYNET_DATA",
             "cache": "place 1 of the search order, tinynet's download cache",
             "system": "place 2 of the search order, Debian/Ubuntu package"}[source]
    assert f"It was found in {folder} ({where}" in message, message  # the place
    if source != "system":
        assert f". {places['system']}  (Debian/Ubuntu package" in message  # not tried
        assert "were not tried" in message
    fix = {"root": "delete or replace the damaged file", "TINYNET_DATA": "point $TINYNET_DATA",
           "cache": "FashionMNIST(download=True) then downloads it again",
           "system": "apt-get install --reinstall dataset-fashion-mnist"}[source]
    assert "What to do:" in message and fix in message
    assert isinstance(info.value.__cause__, ValueError)


def test_a_damaged_sample_says_reinstall(tmp_path, monkeypatch):
    sample = tmp_path / "sample"
    sample.mkdir()
    images_name, labels_name = fm.SAMPLE_FILES["test"]
    (sample / images_name).write_bytes(b"\xfd7zXZ\x00" + b"\x00" * 10)  # xz, cut short
    write_idx(sample / labels_name, np.zeros(2, np.uint8))
    monkeypatch.setattr(fm, "SAMPLE_DIR", sample)
    with pytest.raises(ValueError, match=r"(?s)damaged or truncated.*sample shipped inside "
                       r"tinynet.*reinstall tinynet") as info:
        FashionMNIST(train=False, sample=True)
    assert str(sample / images_name) in str(info.value)


# ----------------------------------------------------------------------------------------------
# Finding the files
# ----------------------------------------------------------------------------------------------
def test_search_order(places, monkeypatch):
    markers = {"root": 1, "TINYNET_DATA": 2, "cache": 3, "system": 4}
    for source, folder in places.items():
        write_split(folder, "train", marker=markers[source])
    monkeypatch.setenv(fm.DATA_ENV, str(places["TINYNET_DATA"]))

    def load(**kw):
        ds = FashionMNIST(train=True, download=False, **kw)
        assert int(ds.images[0, 0, 0, 0]) == markers[ds.source]
        return ds.source, ds.root

    assert load(root=places["root"]) == ("root", places["root"])
    assert load() == ("TINYNET_DATA", places["TINYNET_DATA"])
    monkeypatch.delenv(fm.DATA_ENV)
    assert load() == ("cache", places["cache"])
    for name in fm.FILES["train"]:
        (places["cache"] / name).unlink()
    assert load() == ("system", places["system"])


def test_search_accepts_subfolder_and_uncompressed_files(places, monkeypatch):
    base = places["TINYNET_DATA"]
    folder = base / "fashion-mnist"
    folder.mkdir(parents=True)
    images_name, labels_name = fm.FILES["test"]
    write_idx(folder / images_name.removesuffix(".gz"), np.full((2, 28, 28), 5, np.uint8))
    write_idx(folder / labels_name.removesuffix(".gz"), np.array([1, 2], np.uint8))
    monkeypatch.setenv(fm.DATA_ENV, str(base))
    ds = FashionMNIST(train=False, download=False)
    assert (ds.source, ds.root, len(ds)) == ("TINYNET_DATA", folder, 2)


def test_split_needs_both_of_its_files(places):
    write_split(places["system"], "train")
    (places["system"] / fm.FILES["train"][1]).unlink()  # images without labels
    with pytest.raises(DatasetNotFoundError):
        FashionMNIST(download=False)
    write_split(places["cache"], "train")
    with pytest.raises(DatasetNotFoundError):  # the train files don't make a test split
        FashionMNIST(train=False, download=False)


def test_dataset_attributes(places):
    write_split(places["system"], "train", n=12)
    ds = FashionMNIST(download=False)
    assert ds.images.dtype == np.uint8 and ds.images.shape == (12, 1, 28, 28)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (12,)
    assert ds.classes == list(CLASSES) and len(CLASSES) == 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert len(ds) == 12 and ds.train
    image, label = ds[11]
    assert image.shape == (1, 28, 28) and label == 1 and isinstance(label, int)
    images, labels = ds[2:5]
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [2, 3, 4]
    assert "FashionMNIST(train, 12 images" in repr(ds)


def test_offline_error_lists_places_and_ways(places):
    with pytest.raises(DatasetNotFoundError) as info:
        FashionMNIST(root=places["root"], train=True, download=False)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    for folder in (places["root"], places["cache"], places["system"]):
        assert str(folder) in message
    for way in (
        "apt-get install dataset-fashion-mnist",
        "TINYNET_DATA",
        "download=True",
        "sample=True",
        "download=False",
        "train-images-idx3-ubyte.gz",
    ):
        assert way in message, way


def test_offline_download_fails_with_one_clear_error(places):
    with socket.socket() as s:  # a port where nothing listens: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DatasetNotFoundError) as info:
        FashionMNIST(train=False, base_url=url)
    message = str(info.value)
    assert f"Downloading from {url} failed" in message and "sample=True" in message
    assert isinstance(info.value.__cause__, DownloadError)
    assert not any(name.endswith(".part") for name in leftovers(places["cache"]))


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------
def test_download_good(places, server, monkeypatch):
    monkeypatch.setenv(fm.URL_ENV, server.url)
    ds = FashionMNIST(train=True)
    assert (ds.source, ds.root, len(ds)) == ("download", places["cache"], 6)
    assert int(ds.images.max()) == 11
    assert leftovers(places["cache"]) == sorted(fm.FILES["train"])  # no temporary files
    for name in fm.FILES["train"]:
        assert hashlib.md5((places["cache"] / name).read_bytes()).hexdigest() == fm.MD5SUMS[name]
    assert sorted(server.requests) == sorted(fm.FILES["train"])

    again = FashionMNIST(train=True)  # now found in the cache: no new request
    assert again.source == "cache" and len(server.requests) == 2


def test_download_url_argument_beats_environment(places, server, monkeypatch):
    monkeypatch.setenv(fm.URL_ENV, "http://127.0.0.1:9/nothing-here/")
    ds = FashionMNIST(train=False, base_url=server.url.rstrip("/"))
    assert ds.source == "download" and len(ds) == 3


def test_download_corrupted_file_leaves_nothing(places, server):
    server.mode = "corrupt"
    with pytest.raises(DatasetNotFoundError, match="MD5 checksum mismatch"):
        FashionMNIST(train=True, base_url=server.url)
    assert leftovers(places["cache"]) == []


def test_download_interrupted_leaves_nothing(places, server):
    server.mode = "interrupt"
    with pytest.raises(DatasetNotFoundError, match="interrupted"):
        FashionMNIST(train=True, base_url=server.url)
    assert leftovers(places["cache"]) == []


def test_download_file_errors_keep_existing_destination(tmp_path, server):
    dest = tmp_path / "dl" / "train-labels-idx1-ubyte.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError, match="HTTP error 404"):
        download_file(server.url + "missing.gz", dest, "0" * 32)
    server.mode = "corrupt"
    with pytest.raises(DownloadError, match="MD5"):
        download_file(server.url + dest.name, dest, fm.MD5SUMS[dest.name])
    assert dest.read_bytes() == b"old" and leftovers(dest.parent) == [dest.name]
    server.mode = "ok"
    download_file(server.url + dest.name, dest, fm.MD5SUMS[dest.name])
    assert hashlib.md5(dest.read_bytes()).hexdigest() == fm.MD5SUMS[dest.name]


def test_published_checksums():
    assert fm.MD5SUMS == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    assert fm.DEFAULT_BASE_URL.startswith("http://fashion-mnist.s3-website.eu-central-1")


# ----------------------------------------------------------------------------------------------
# The embedded sample
# ----------------------------------------------------------------------------------------------
def test_sample_loads_without_files_or_network(places, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the sample must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    for train, n in ((True, 2000), (False, 500)):
        ds = FashionMNIST(train=train, sample=True)
        assert ds.source == "sample" and ds.root == fm.SAMPLE_DIR
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
        assert np.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
        assert ds.classes == list(CLASSES)
        assert 0 < ds.images.mean() < 255  # real pictures, not blanks


def test_sample_size_and_licence():
    files = sorted(p.name for p in fm.SAMPLE_DIR.iterdir())
    expected = sorted(["LICENSE", *fm.SAMPLE_FILES["train"], *fm.SAMPLE_FILES["test"]])
    assert files == expected
    total = sum(p.stat().st_size for p in fm.SAMPLE_DIR.iterdir())
    assert total <= 1_100_000, f"the sample takes {total:,} bytes"
    licence = (fm.SAMPLE_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "Copyright © 2017 Zalando SE" in licence and "The MIT License" in licence
    assert "THE SOFTWARE IS PROVIDED “AS IS”" in licence


# ----------------------------------------------------------------------------------------------
# The full dataset (skipped without the Debian package)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    return {
        "train": FashionMNIST(root=REAL_DIR, train=True, download=False),
        "test": FashionMNIST(root=REAL_DIR, train=False, download=False),
    }


@needs_real
def test_real_data(real):
    assert real["train"].images.shape == (60000, 1, 28, 28)
    assert real["test"].images.shape == (10000, 1, 28, 28)
    assert np.bincount(real["train"].labels).tolist() == [6000] * 10
    assert np.bincount(real["test"].labels).tolist() == [1000] * 10


@needs_real
def test_normalisation_constants_match_the_training_images(real):
    counts = np.bincount(real["train"].images.ravel(), minlength=256)  # exact, and fast
    values = np.arange(256) / 255
    mean = (counts * values).sum() / counts.sum()
    std = math.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert abs(mean - FASHION_MNIST_MEAN) < 1e-4 and abs(std - FASHION_MNIST_STD) < 1e-4


@needs_real
def test_sample_is_the_scripts_selection(real):
    script = load_script(REPO / "scripts" / "make_fashion_mnist_sample.py", "make_sample")
    indices = script.sample_indices(real["train"].labels, real["test"].labels)
    for split, train in (("train", True), ("test", False)):
        sample = FashionMNIST(train=train, sample=True)
        np.testing.assert_array_equal(sample.images, real[split].images[indices[split]])
        np.testing.assert_array_equal(sample.labels, real[split].labels[indices[split]])


# ----------------------------------------------------------------------------------------------
# ArrayDataset
# ----------------------------------------------------------------------------------------------
def test_array_dataset_validation():
    ds = ArrayDataset(np.zeros((3, 4), np.float32), [0, 1, 2], classes=("a", "b", "c"))
    assert len(ds) == 3 and ds.labels.dtype == np.int64 and ds.classes == ["a", "b", "c"]
    with pytest.raises(ValueError, match="3 images and 2 labels"):
        ArrayDataset(np.zeros((3, 4)), [0, 1])
    with pytest.raises(ValueError, match="one-hot"):
        ArrayDataset(np.zeros((3, 4)), np.eye(3, dtype=int))
    with pytest.raises(TypeError, match="labels must be integers"):
        ArrayDataset(np.zeros((3, 4)), [0.0, 1.0, 2.0])
    with pytest.raises(TypeError, match="uint8 pixels .* or floats"):
        ArrayDataset(np.zeros((3, 4), np.int32), [0, 1, 2])


# ----------------------------------------------------------------------------------------------
# DataLoader
# ----------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 120),
    batch_size=st.integers(1, 50),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_loader_length_and_coverage(n, batch_size, drop_last, shuffle, seed):
    loader = DataLoader(
        tiny_dataset(n), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed
    )
    expected = n // batch_size if drop_last else math.ceil(n / batch_size)
    assert len(loader) == expected
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == expected
        sizes = [len(y) for _, y in batches]
        assert all(size == batch_size for size in sizes[:-1])
        if drop_last and sizes:
            assert sizes[-1] == batch_size
        seen = [int(v) for _, y in batches for v in y]
        assert len(set(seen)) == len(seen)  # no sample twice in an epoch
        if not drop_last:
            assert sorted(seen) == list(range(n))  # every sample exactly once
        if not shuffle:
            assert seen == list(range(len(seen)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_shapes_and_dtypes(dtype):
    ds = FashionMNIST(train=False, sample=True)
    loader = DataLoader(ds, 64, dtype=dtype)
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 28, 28) and x.dtype == dtype
    assert y.shape == (64,) and y.dtype == np.int64
    assert ds.images.dtype == np.uint8  # the dataset itself is never converted
    *_, (x_last, y_last) = loader
    assert x_last.shape == (500 - 7 * 64, 1, 28, 28) and len(y_last) == 500 - 7 * 64


def test_default_dtype_and_no_float64_promotion():
    ds = tiny_dataset(10)
    # NumPy float64 scalars as constants must not turn a float32 batch into float64
    x, _ = next(iter(DataLoader(ds, 4, mean=np.float64(0.5), std=np.float64(0.25))))
    assert x.dtype == np.float32
    previous = backend.get_default_dtype()
    try:
        tinynet.set_default_dtype(tinynet.float64)
        assert next(iter(DataLoader(ds, 4)))[0].dtype == np.float64
    finally:
        tinynet.set_default_dtype(previous)
    with pytest.raises(TypeError, match="float32 or float64"):
        DataLoader(ds, 4, dtype=np.int32)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_normalisation_values(dtype, tol):
    pixels = np.array([0, 1, 128, 254, 255] * 2, dtype=np.uint8).reshape(10, 1, 1, 1)
    ds = ArrayDataset(pixels, np.zeros(10, np.int64))
    x, _ = next(iter(DataLoader(ds, 10, dtype=dtype)))
    expected = (pixels.astype(np.float64) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(x, expected, rtol=tol, atol=tol)
    raw, _ = next(iter(DataLoader(ds, 10, dtype=dtype, normalize=False)))
    np.testing.assert_allclose(raw, pixels / 255, rtol=tol, atol=tol)
    assert raw.min() == 0 and raw.max() == 1


def test_normalised_sample_is_roughly_standard():
    x, _ = next(iter(DataLoader(FashionMNIST(sample=True), 2000)))
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_float_images_are_not_divided_by_255():
    images = np.linspace(0, 1, 8).reshape(8, 1, 1, 1)  # float64 data, already in [0, 1]
    ds = ArrayDataset(images, np.zeros(8, np.int64))
    x, _ = next(iter(DataLoader(ds, 8, normalize=False)))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, images, rtol=1e-6)
    x, _ = next(iter(DataLoader(ds, 8, mean=0.5, std=0.5)))
    np.testing.assert_allclose(x, (images - 0.5) / 0.5, rtol=1e-6, atol=1e-6)
    assert images[3, 0, 0, 0] == 3 / 7  # the dataset was not modified in place


def test_transform_is_applied_to_the_device_batch():
    calls = []

    def flip(x):
        calls.append(x.shape)
        return x[..., ::-1]

    ds = tiny_dataset(6)
    plain = [x for x, _ in DataLoader(ds, 4)]
    flipped = [x for x, _ in DataLoader(ds, 4, transform=flip)]
    assert calls == [(4, 1, 2, 2), (2, 1, 2, 2)]
    for a, b in zip(plain, flipped, strict=True):
        np.testing.assert_array_equal(a[..., ::-1], b)


@pytest.mark.parametrize("bad", [0, -3, 2.5, 8.0, True, "8", None])
def test_batch_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        DataLoader(tiny_dataset(4), bad)


def test_loader_needs_images_and_labels():
    with pytest.raises(TypeError, match="ArrayDataset"):
        DataLoader([1, 2, 3], 2)


def test_shuffling_is_reproducible_from_a_seed():
    ds = tiny_dataset(50)
    a = DataLoader(ds, 8, shuffle=True, seed=123)
    b = DataLoader(ds, 8, shuffle=True, seed=123)
    epochs_a = [epoch_labels(a) for _ in range(3)]
    assert epochs_a == [epoch_labels(b) for _ in range(3)]
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]  # a new order every epoch
    assert epochs_a[0] != list(range(50))
    assert epoch_labels(DataLoader(ds, 8, shuffle=True, seed=124)) != epochs_a[0]


def test_seed_none_follows_manual_seed():
    ds = tiny_dataset(40)
    tinynet.manual_seed(7)
    first = DataLoader(ds, 8, shuffle=True)
    tinynet.manual_seed(7)
    second = DataLoader(ds, 8, shuffle=True)
    assert first.seed == second.seed
    assert epoch_labels(first) == epoch_labels(second)


def test_state_round_trip_between_epochs():
    ds = tiny_dataset(30)
    a = DataLoader(ds, 4, shuffle=True, seed=5)
    epoch_labels(a)
    epoch_labels(a)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-able
    assert state["epoch"] == 2 and state["batch"] == 0 and state["seed"] == 5
    b = DataLoader(ds, 4, shuffle=True, seed=999)
    b.load_state_dict(state)
    assert [epoch_labels(b) for _ in range(2)] == [epoch_labels(a) for _ in range(2)]
    assert a.epoch == b.epoch == 4


@pytest.mark.parametrize("stop_after", [0, 3, 8])  # 30 samples / 4 = 8 batches: 8 is the last
def test_state_round_trip_mid_epoch(stop_after):
    ds = tiny_dataset(30)
    a = DataLoader(ds, 4, shuffle=True, seed=11)
    epoch_labels(a)  # epoch 0
    it = iter(a)  # epoch 1, interrupted after `stop_after` batches
    for _ in range(stop_after):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))
    rest_a = [int(v) for _, y in it for v in y] + epoch_labels(a)  # rest of epoch 1, epoch 2

    b = DataLoader(ds, 4, shuffle=True, seed=0)
    b.load_state_dict(state)
    if stop_after == len(a):  # epoch 1 was complete: the state is "before epoch 2"
        assert (state["epoch"], state["batch"]) == (2, 0)
        resumed = epoch_labels(b)
    else:
        assert (state["epoch"], state["batch"]) == (1, stop_after)
        resumed = epoch_labels(b) + epoch_labels(b)
    assert resumed == rest_a
    assert b.epoch == a.epoch == 3


@pytest.mark.parametrize("stop_after", [0, 3])
def test_a_restored_loader_reports_the_restored_position_before_it_is_iterated(stop_after):
    """state_dict() right after load_state_dict() (a checkpoint saved before the first batch of
    a resumed run) is the state that was loaded: no batch is replayed or skipped."""
    ds = tiny_dataset(30)
    a = DataLoader(ds, 4, shuffle=True, seed=11)
    it = iter(a)
    for _ in range(stop_after):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))
    rest_a = [int(v) for _, y in it for v in y]
    b = DataLoader(ds, 4, shuffle=True, seed=0)
    b.load_state_dict(state)
    again = json.loads(json.dumps(b.state_dict()))
    assert again == state
    c = DataLoader(ds, 4, shuffle=True, seed=0)
    c.load_state_dict(again)
    assert epoch_labels(c) == rest_a


def test_load_state_rejects_a_different_loader():
    state = DataLoader(tiny_dataset(30), 4, shuffle=True, seed=1).state_dict()
    with pytest.raises(ValueError, match="batch_size=4 but this loader has batch_size=5"):
        DataLoader(tiny_dataset(30), 5, shuffle=True).load_state_dict(state)
    with pytest.raises(KeyError, match="missing keys"):
        DataLoader(tiny_dataset(30), 4).load_state_dict({"epoch": 1})


@pytest.mark.cuda
@pytest.mark.skipif(not backend.cuda_is_available(), reason="needs CuPy and a GPU")
def test_loader_on_cuda():
    import cupy

    loader = DataLoader(FashionMNIST(train=False, sample=True), 100, device="cuda")
    cpu = DataLoader(FashionMNIST(train=False, sample=True), 100, device="cpu")
    for (x, y), (xc, yc) in zip(loader, cpu, strict=True):
        assert isinstance(x, cupy.ndarray) and isinstance(y, cupy.ndarray)
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_allclose(backend.to_numpy(x), xc, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(backend.to_numpy(y), yc)
