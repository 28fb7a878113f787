"""Checkpoints: round trips, no pickle, other processes, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinynet
from tinynet import backend as B
from tinynet import nn
from tinynet.checkpoint import CheckpointError
from tinynet.data import ArrayDataset, DataLoader
from tinynet.models import course_cnn

ROOT = Path(__file__).resolve().parents[1]


def _batch(n=8, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, size=n)


def _train_steps(model, opt, batches):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()


def _trained(seed=0, dtype=None, steps=2):
    tinynet.manual_seed(seed)
    model = course_cnn(dtype=dtype)
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    dt = np.float32 if dtype is None else dtype
    _train_steps(model, opt, [_batch(seed=s, dtype=dt) for s in range(steps)])
    return model, opt


def _assert_same_state(model_a, model_b):
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        np.testing.assert_array_equal(B.to_numpy(sa[key]), B.to_numpy(sb[key]), err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_weights_momentum_rng_loader(tmp_path, dtype):
    model, opt = _trained(dtype=dtype)
    data = ArrayDataset(np.zeros((50, 1, 28, 28), np.uint8), np.arange(50) % 10)
    loader = DataLoader(data, batch_size=8, shuffle=True, seed=5)
    it = iter(loader)
    next(it), next(it)  # in the middle of an epoch
    loader_state = loader.state_dict()
    tinynet.manual_seed(123)
    B.host_rng().random(7)  # move the generator away from the seeded state
    rng_state = B.get_rng_state()
    path = tinynet.save(tmp_path / "c.npz", model=model, optimizer=opt, epoch=3, note="hi",
                        rng=rng_state, train_loader=loader_state, scores=np.arange(4.0))
    expected_draw = B.host_rng().random(3)

    tinynet.manual_seed(99)  # different weights, empty optimizer, other RNG
    model2 = course_cnn(dtype=dtype)
    opt2 = tinynet.optim.SGD(model2.parameters(), lr=1.0)
    loader2 = DataLoader(data, batch_size=8, shuffle=True, seed=0)
    ckpt = tinynet.load_into(path, model2, opt2, loader=loader2)

    _assert_same_state(model, model2)
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["weight_decay"] == 1e-4
    assert len(opt2.state) == len(opt.state) == 10
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        buf, buf2 = opt.state[id(p)]["momentum_buffer"], opt2.state[id(p2)]["momentum_buffer"]
        assert buf2.dtype == dtype
        np.testing.assert_array_equal(buf2, buf)
    np.testing.assert_array_equal(B.host_rng().random(3), expected_draw)  # RNG restored
    assert ckpt["epoch"] == 3 and ckpt["note"] == "hi"
    np.testing.assert_array_equal(ckpt["scores"], np.arange(4.0))
    assert ckpt["train_loader"] == json.loads(json.dumps(loader_state))
    # the restored loader continues with the same batches as the original one
    for (_, ya), (_, yb) in zip(it, loader2, strict=True):
        np.testing.assert_array_equal(ya, yb)
    # and the next training step is the same as continuing the original run
    batch = [_batch(seed=7, dtype=dtype)]
    _train_steps(model, opt, batch)
    _train_steps(model2, opt2, batch)
    _assert_same_state(model, model2)


def test_file_is_plain_npz_without_pickle(tmp_path):
    model, opt = _trained()
    path = tinynet.save(tmp_path / "c.npz", model=model, optimizer=opt, epoch=1)
    with np.load(path, allow_pickle=False) as data:  # would raise on any pickled entry
        assert "model/0.weight" in data.files and "optimizer/0/momentum_buffer" in data.files
        for key in data.files:
            assert data[key].dtype != object, key
        info = json.loads(bytes(data["__json__"]).decode("utf-8"))
    assert info["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert info["epoch"] == 1


def test_pickled_entries_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __json__=np.frombuffer(b'{"format": "tinynet-checkpoint", "version": 1, '
                                          b'"model": ["w"], "optimizer": null}', np.uint8),
             **{"model/w": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="'model/w' holds Python objects") as info:
        tinynet.load(path)
    assert "allow_pickle" not in str(info.value)  # NumPy's message would advise unpickling
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not one written by tinynet.save: it has no "
                       "__json__ entry"):
        tinynet.load(tmp_path / "x.npz")


def test_meta_that_needs_pickle_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="cannot store a object"):
        tinynet.save(tmp_path / "c.npz", thing=object())
    with pytest.raises(CheckpointError, match="reserved"):
        tinynet.save(tmp_path / "c.npz", model=None, format="x")
    assert not list(tmp_path.iterdir())


def test_checkpoint_loads_in_another_process(tmp_path):
    model, opt = _trained()
    path = tinynet.save(tmp_path / "c.npz", model=model, optimizer=opt, epoch=2)
    code = (
        "import sys, json, numpy as np, tinynet\n"
        "from tinynet.models import course_cnn\n"
        "m = course_cnn(); o = tinynet.optim.SGD(m.parameters(), lr=1.0, momentum=0.5)\n"
        "c = tinynet.load_into(sys.argv[1], m, o)\n"
        "w = {k: float(np.asarray(v, np.float64).sum()) for k, v in m.state_dict().items()}\n"
        "b = [float(o.state[id(p)]['momentum_buffer'].astype(np.float64).sum())\n"
        "     for p in m.parameters()]\n"
        "print(json.dumps({'w': w, 'b': b, 'epoch': c['epoch'], 'lr': o.param_groups[0]['lr']}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["epoch"] == 2 and got["lr"] == 0.05
    for key, value in model.state_dict().items():
        assert got["w"][key] == float(value.astype(np.float64).sum()), key
    bufs = [float(opt.state[id(p)]["momentum_buffer"].astype(np.float64).sum())
            for p in model.parameters()]
    assert got["b"] == bufs


def _no_temp_files(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fail_in", ["savez", "replace"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, fail_in):
    model, opt = _trained()
    path = tinynet.save(tmp_path / "last.npz", model=model, optimizer=opt, epoch=1)
    before = path.read_bytes()
    _train_steps(model, opt, [_batch(seed=5)])  # the weights change

    if fail_in == "savez":
        real = np.savez

        def broken_savez(file, **arrays):  # writes part of the file, then the disk is "full"
            real(file, **dict(list(arrays.items())[:3]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(np, "savez", broken_savez)
        expected = OSError
    else:
        def broken_replace(src, dst):
            raise KeyboardInterrupt  # Ctrl-C right before the rename

        monkeypatch.setattr(os, "replace", broken_replace)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        tinynet.save(path, model=model, optimizer=opt, epoch=2)
    monkeypatch.undo()

    assert path.read_bytes() == before  # untouched
    assert _no_temp_files(tmp_path) == []
    assert tinynet.load(path)["epoch"] == 1
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


def test_load_with_model_and_optimizer_arguments(tmp_path):
    model, opt = _trained()
    path = tinynet.save(tmp_path / "c.npz", model=model, optimizer=opt)
    model2 = course_cnn()
    opt2 = tinynet.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    ckpt = tinynet.load(path, model=model2, optimizer=opt2)
    _assert_same_state(model, model2)
    assert set(ckpt) >= {"model", "optimizer"}
    assert isinstance(ckpt["model"]["0.weight"], np.ndarray)
    assert ckpt["optimizer"]["state"][0]["momentum_buffer"].shape == (6, 1, 5, 5)


def test_loading_into_a_different_network_says_which_keys(tmp_path):
    model, _ = _trained()
    path = tinynet.save(tmp_path / "c.npz", model=model)
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(CheckpointError, match=r"missing keys \(in the model, not in the file\): "
                       r"1\.weight, 1\.bias\n  - unexpected keys \(in the file, not in the "
                       r"model\): 0\.weight, 0\.bias, 3\.weight"):
        tinynet.load(path, model=other)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        tinynet.load(path, optimizer=tinynet.optim.SGD(other.parameters(), lr=0.1))
