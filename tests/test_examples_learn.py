"""Smoke tests of the guided examples (examples/01, 02, 03, 05), in-process, tiny settings."""

from __future__ import annotations

import pathlib

import pytest
from script_loader import load_script

import tinynet

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example(name: str):
    """Import examples/<name>.py as a module (its file name starts with a digit)."""
    return load_script(EXAMPLES / f"{name}.py", f"example_{name}")


def test_01_tensors(capsys):
    assert load_example("01_tensors").main(["--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "rank 4   shape (4, 1, 28, 28)" in out
    assert "[batch, channels, height, width]" in out
    assert "2000 / 4 -> len(loader) = 500" in out  # iterations per epoch = N / batch_size
    assert "shape (4, 784)" in out


def test_02_forward_pass(capsys):
    assert load_example("02_forward_pass").main(["--batch-size", "2", "--show-mistake"]) == 0
    out = capsys.readouterr().out
    assert "layer 2 (hidden layer): Conv2d + ReLU + MaxPool2d" in out
    assert "H_out = (28 + 2*0 - 5) / 1 + 1 = 24" in out
    assert "(2, 12, 4, 4)" in out and "(2, 192)" in out and "(2, 10)" in out
    assert "12 * 4 * 4 = 192 features" in out
    assert "use Linear(192, 120)" in out  # the shape mistake and its fix


def test_03_backward_pass(capsys):
    assert load_example("03_backward_pass").main(["--batch-size", "2", "--entries", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("0.weight", "3.bias", "7.weight", "11.bias"):
        assert name in out
    assert "-> True" in out
    # the downhill step lowered the loss, the uphill step raised it
    lines = [line for line in out.splitlines() if "after one step" in line]
    now = float(out.split("loss now ")[1].split()[0])
    down, up = (float(line.rsplit("loss", 1)[1]) for line in lines)
    assert down < now < up


def test_05_look_inside_trains_and_saves_pictures(tmp_path, capsys):
    args = ["--out-dir", str(tmp_path), "--epochs", "1", "--train-size", "128",
            "--batch-size", "32"]
    assert load_example("05_look_inside").main(args) == 0
    out = capsys.readouterr().out
    assert "4 iterations per epoch" in out  # 128 / 32
    assert "FORWARD" in out and "BACKWARD" in out
    names = ["confusion_matrix.png", "feature_maps.png", "filters.png", "history.png",
             "predictions.png"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == names
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


def test_05_look_inside_loads_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from tinynet.models import course_cnn

    tinynet.manual_seed(3)
    model = course_cnn()
    tinynet.save(tmp_path / "ckpt.npz", model=model)
    out_dir = tmp_path / "pics"
    assert load_example("05_look_inside").main(
        ["--out-dir", str(out_dir), "--checkpoint", str(tmp_path / "ckpt.npz")]) == 0
    out = capsys.readouterr().out
    assert "loaded the weights" in out and "epoch 1" not in out
    assert not (out_dir / "history.png").exists()  # nothing was trained
    assert (out_dir / "filters.png").exists()
