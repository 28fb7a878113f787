"""examples/train_fashion_mnist.py: runs, resumes exactly in a new process, stops cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script

import tinynet
from tinynet.data import DatasetNotFoundError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_fashion_mnist.py"


@pytest.fixture(scope="module")
def example():
    return load_script(SCRIPT, "train_fashion_mnist_example")


def _quick(out, *extra):
    return ["--data", "sample", "--limit", "256", "--batch-size", "32", "--no-progress",
            "--out", str(out), *extra]


def test_example_runs_one_epoch_on_the_sample(example, tmp_path, capsys):
    assert example.main(["--data", "sample", "--epochs", "1", "--out", str(tmp_path),
                         "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "iterations per epoch: ceil(2000 / 64) = 32" in out
    assert "epoch 1/1" in out
    accuracy = float(out.split("final test accuracy: ")[1].split()[0])
    assert 0.15 < accuracy <= 1.0  # above chance (0.1) after one epoch
    history = [json.loads(s) for s in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["val_acc"] == accuracy
    ckpt = tinynet.load(tmp_path / "last.npz")
    assert ckpt["meta"]["args"]["epochs"] == 1 and ckpt["epochs_completed"] == 1


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TINYNET_PROGRESS="0")
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=240, cwd=cwd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_resume_in_a_new_process_gives_identical_weights(tmp_path):
    # 2 epochs straight vs. 1 epoch, then a NEW process resuming for the 2nd (with a decay
    # after epoch 1, so the scheduler's state must be restored too)
    _run(_quick(tmp_path / "straight", "--epochs", "2", "--lr-decay-every", "1"), tmp_path)
    _run(_quick(tmp_path / "resumed", "--epochs", "1", "--lr-decay-every", "1"), tmp_path)
    out = _run(_quick(tmp_path / "resumed", "--epochs", "2", "--lr-decay-every", "1", "--resume"),
               tmp_path)
    assert "resumed from" in out
    a = tinynet.load(tmp_path / "straight" / "last.npz")
    b = tinynet.load(tmp_path / "resumed" / "last.npz")
    assert list(a["model"]) == list(b["model"])
    for key in a["model"]:
        assert a["model"][key].dtype == np.float32
        np.testing.assert_array_equal(a["model"][key], b["model"][key], err_msg=key)
    for i, state in a["optimizer"]["state"].items():
        np.testing.assert_array_equal(state["momentum_buffer"],
                                      b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["train_loader"] == b["train_loader"] and a["scheduler"] == b["scheduler"]
    ha = [json.loads(s) for s in (tmp_path / "straight" / "history.jsonl").read_text().splitlines()]
    hb = [json.loads(s) for s in (tmp_path / "resumed" / "history.jsonl").read_text().splitlines()]
    for ea, eb in zip(ha, hb, strict=True):
        for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert ea[key] == eb[key], key
    assert [e["lr"] for e in ha] == [0.01, 0.001]


def test_ctrl_c_exits_130_with_the_resume_command(example, tmp_path, monkeypatch, capsys):
    real = example.DataLoader

    class Interrupting(real):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                if self.shuffle and self.epoch == 2 and i == 4:  # Ctrl-C in epoch 2
                    raise KeyboardInterrupt
                yield batch

    args = _quick(tmp_path, "--epochs", "2")
    monkeypatch.setattr(example, "DataLoader", Interrupting)
    assert example.main(args) == 130
    err = capsys.readouterr().err
    assert "epoch 2, after batch 4/8" in err
    expected = "python examples/train_fashion_mnist.py " + " ".join(args) + " --resume"
    assert f"To resume: {expected}" in err
    monkeypatch.setattr(example, "DataLoader", real)
    assert example.main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "continuing at epoch 2, batch 5" in out and "final test accuracy" in out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflows on the way to NaN
def test_divergence_exits_1_with_advice(example, tmp_path, capsys):
    assert example.main(_quick(tmp_path, "--epochs", "1", "--lr", "10000")) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "try a lower one" in err


def test_auto_falls_back_to_the_sample_with_a_notice(monkeypatch, capsys):
    from tinynet.data import fashion_mnist

    real = fashion_mnist.FashionMNIST
    downloads = []

    def no_full_data(train=True, sample=False, download=True, **kw):
        if not sample:
            downloads.append(download)
            raise DatasetNotFoundError("not here")
        return real(train=train, sample=True)

    monkeypatch.setattr(fashion_mnist, "FashionMNIST", no_full_data)
    train, test = fashion_mnist.load_splits("auto")
    assert (len(train), len(test)) == (2000, 500)
    assert "NOTICE" in capsys.readouterr().err
    assert downloads == [False]  # auto never goes to the network
    with pytest.raises(DatasetNotFoundError):
        fashion_mnist.load_splits("full")  # full: an error, no silent fallback
    assert downloads == [False, True]


def test_load_splits_limit_keeps_the_first_training_images():
    from tinynet.data import fashion_mnist

    full_train, full_test = fashion_mnist.load_splits("sample")
    train, test = fashion_mnist.load_splits("sample", limit=300)
    assert (len(train), len(test)) == (300, len(full_test))
    np.testing.assert_array_equal(train.images, full_train.images[:300])
    np.testing.assert_array_equal(train.labels, full_train.labels[:300])
    assert train.classes == full_train.classes


def test_resume_without_a_checkpoint_is_an_error(example, tmp_path, capsys):
    assert example.main(_quick(tmp_path, "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_plot_flag_saves_three_pngs(example, tmp_path):
    pytest.importorskip("matplotlib")
    assert example.main(_quick(tmp_path, "--epochs", "1", "--plot")) == 0
    for name in ("history.png", "confusion_matrix.png", "predictions.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name


def test_bn_example_runs_on_a_limited_sample(tmp_path, capsys):
    """examples/train_fashion_mnist_bn.py: --limit reaches the loader; one epoch trains and
    saves a checkpoint with the BatchNorm buffers."""
    bn_example = load_script(ROOT / "examples" / "train_fashion_mnist_bn.py",
                             "train_fashion_mnist_bn_example")
    assert bn_example.main(["--data", "sample", "--limit", "256", "--epochs", "1",
                            "--batch-size", "64", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "data: 256 training images, 500 test images" in out
    assert "1 epochs x 4 batches of 64" in out and "final test accuracy" in out
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    state = tinynet.load(tmp_path / "last.npz")["model"]
    assert "1.running_mean" in state and "1.num_batches_tracked" in state


def test_threads_flag_sets_the_threads_and_refuses_zero(example, tmp_path, capsys):
    saved = tinynet.get_num_threads()
    try:
        assert example.main(_quick(tmp_path, "--epochs", "1", "--threads", "1")) == 0
        assert tinynet.get_num_threads() == 1
    finally:
        tinynet.set_num_threads(saved)
    with pytest.raises(SystemExit):
        example.main(_quick(tmp_path, "--threads", "0"))
    assert "--threads must be at least 1" in capsys.readouterr().err
