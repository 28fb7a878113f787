"""Augmentation: shapes, dtypes and devices kept, labels untouched, reproducible from the seed,
each output image is a flip or a shifted window of its input, the flip rate."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinynet
from tinynet.data import ArrayDataset, DataLoader
from tinynet.data.transforms import Compose, RandomCrop, RandomHorizontalFlip


def _batch(n=16, c=1, h=6, w=5, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, c, h, w)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_shape_dtype_and_device(device, dtype):
    x = tinynet.to_device(_batch(dtype=dtype), device)
    for t in (RandomHorizontalFlip(), RandomCrop((6, 5), padding=2),
              Compose([RandomCrop((6, 5), 1), RandomHorizontalFlip(0.3)])):
        y = t(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert tinynet.backend.device_of(y) == device


def test_flip_each_image_is_itself_or_its_mirror_at_rate_p():
    x = _batch(n=2000, h=3, w=4)
    y = RandomHorizontalFlip(0.3, seed=1)(x)
    same = (y == x).all(axis=(1, 2, 3))
    mirrored = (y == x[:, :, :, ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all()
    assert abs(mirrored.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 2000)
    assert (RandomHorizontalFlip(0.0)(x) == x).all()
    assert (RandomHorizontalFlip(1.0)(x) == x[..., ::-1]).all()


def test_crop_each_image_is_a_shifted_window_of_the_padded_image():
    x = _batch(n=200, c=2)
    pad, fill = 2, -9.0
    y = RandomCrop((6, 5), padding=pad, fill=fill, seed=4)(x)
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    offsets = set()
    for n in range(len(x)):
        found = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
                 if (x_pad[n, :, i : i + 6, j : j + 5] == y[n]).all()]
        assert found, f"image {n} is not a window of its padded input"
        offsets.add(found[0])
    assert len(offsets) == (2 * pad + 1) ** 2  # every shift occurs
    # a smaller crop without padding: a window of the image itself
    z = RandomCrop(3, seed=0)(x)
    assert z.shape == (200, 2, 3, 3)


def test_reproducible_from_manual_seed_or_seed():
    x = _batch(n=64)

    def run():
        t = Compose([RandomCrop((6, 5), padding=2), RandomHorizontalFlip()])
        return t(x), t(x)

    tinynet.manual_seed(5)
    a1, a2 = run()
    tinynet.manual_seed(5)
    b1, b2 = run()
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert (a1 != a2).any()  # fresh randomness each batch
    np.testing.assert_array_equal(RandomHorizontalFlip(seed=3)(x), RandomHorizontalFlip(seed=3)(x))


def test_state_dict_continues_the_same_draws():
    x = _batch(n=32)

    def make(seed):
        return Compose([RandomCrop((6, 5), padding=2, seed=seed),
                        RandomHorizontalFlip(seed=seed + 1)])

    a = make(1)
    a(x)
    state = json.loads(json.dumps(a.state_dict()))  # it survives JSON (checkpoints store JSON)
    expected = [a(x) for _ in range(3)]
    b = make(99)  # other seeds: everything comes from the state
    b.load_state_dict(state)
    for e in expected:
        np.testing.assert_array_equal(b(x), e)
    with pytest.raises(ValueError, match="Compose: the saved state has 2 transforms"):
        Compose([RandomHorizontalFlip()]).load_state_dict(state)
    with pytest.raises(KeyError, match="not a transform state"):
        RandomHorizontalFlip().load_state_dict({})


def test_loader_resumed_mid_epoch_gives_the_same_augmented_batches():
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.integers(0, 256, size=(50, 1, 8, 8)).astype(np.uint8),
                        rng.integers(0, 10, size=50))

    def loader(seed):
        tinynet.manual_seed(seed)  # the transforms' seeds come from tinynet's host generator
        return DataLoader(data, batch_size=8, shuffle=True, seed=seed,
                          transform=Compose([RandomCrop(8, padding=1), RandomHorizontalFlip()]))

    a = loader(0)
    batches = iter(a)
    for _ in range(3):
        next(batches)
    state = json.loads(json.dumps(a.state_dict()))  # in the middle of epoch 1
    assert state["batch"] == 3 and "transform" in state
    expected = list(batches) + list(a)  # the rest of epoch 1, then epoch 2
    b = loader(5)
    b.load_state_dict(state)
    again = list(b) + list(b)
    assert len(again) == len(expected) == 4 + 7
    for (x0, y0), (x1, y1) in zip(expected, again, strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_in_a_dataloader_labels_untouched():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 1, 8, 8)).astype(np.uint8)
    labels = rng.integers(0, 10, size=50)
    plain = DataLoader(ArrayDataset(images, labels), batch_size=16, seed=0)
    aug = DataLoader(ArrayDataset(images, labels), batch_size=16, seed=0,
                     transform=Compose([RandomCrop(8, padding=1), RandomHorizontalFlip()]))
    for (x0, y0), (x1, y1) in zip(plain, aug, strict=True):
        np.testing.assert_array_equal(y0, y1)
        assert x1.shape == x0.shape and x1.dtype == x0.dtype == np.float32
        assert not np.array_equal(x0, x1)


def test_errors():
    with pytest.raises(ValueError, match="RandomCrop: the crop"):
        RandomCrop(10, padding=1)(_batch())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RandomHorizontalFlip()(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match="callable"):
        Compose([3])
