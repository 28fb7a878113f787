"""tinynet.plot: every function returns a Figure and writes a valid, non-empty PNG (Agg)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from script_loader import load_script

pytest.importorskip("matplotlib")

import tinynet  # noqa: E402
from tinynet import nn, plot  # noqa: E402
from tinynet.data import DataLoader, FashionMNIST  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 1000, f"{path} is suspiciously small ({len(data)} bytes)"
    # width and height from the IHDR chunk (big-endian, right after the signature and header)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 50 and height > 50
    return width, height


@pytest.fixture(scope="module")
def model():
    tinynet.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(192, 10),
    )


@pytest.fixture(scope="module")
def test_data():
    return FashionMNIST(train=False, sample=True)


HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "train_acc": 0.55, "val_loss": 0.9, "val_acc": 0.66,
     "lr": 0.05, "seconds": 1.0, "images_per_s": 2000.0},
    {"epoch": 2, "train_loss": 0.8, "train_acc": 0.70, "val_loss": 0.7, "val_acc": 0.73,
     "lr": 0.05, "seconds": 1.0, "images_per_s": 2000.0},
]


def test_plot_history_from_a_list_and_from_a_jsonl_file(tmp_path):
    fig = plot.plot_history(HISTORY, path=tmp_path / "h.png")
    assert_png(tmp_path / "h.png")
    loss_ax, acc_ax = fig.axes
    lines = {line.get_label(): list(line.get_ydata()) for line in loss_ax.get_lines()}
    assert lines == {"training": [1.2, 0.8], "validation": [0.9, 0.7]}
    assert [list(line.get_ydata()) for line in acc_ax.get_lines()] == [[0.55, 0.70], [0.66, 0.73]]
    # the format fit() writes: one JSON object per line in out_dir/history.jsonl
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in HISTORY))
    for source in (tmp_path / "history.jsonl", str(tmp_path)):
        fig = plot.plot_history(source, path=tmp_path / "h2.png")
        assert list(fig.axes[0].get_lines()[0].get_ydata()) == [1.2, 0.8]
    assert_png(tmp_path / "h2.png")
    with pytest.raises(FileNotFoundError, match="history"):
        plot.plot_history(tmp_path / "missing.jsonl")


def test_plot_history_without_validation(tmp_path):
    fig = plot.plot_history([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}])
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["training"]


def test_confusion_matrix_counts():
    preds = np.array([0, 1, 1, 2, 2, 2])
    labels = np.array([0, 1, 2, 2, 2, 0])
    cm = plot.confusion_matrix(preds, labels, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 1, 0], [0, 1, 2]])
    assert cm.sum() == 6 and np.trace(cm) == 4
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        plot.confusion_matrix(np.array([3]), np.array([0]), 3)


def test_plot_confusion_matrix_from_predictions_and_from_a_model(tmp_path, model, test_data):
    names = test_data.classes
    fig = plot.plot_confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]),
                                     names[:3], path=tmp_path / "cm1.png")
    assert "accuracy 75.0%" in fig.axes[0].get_title()
    assert_png(tmp_path / "cm1.png")
    loader = DataLoader(test_data, batch_size=250)
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    fig = plot.plot_confusion_matrix(model, loader, names, path=tmp_path / "cm2.png")
    assert "500 images" in fig.axes[0].get_title()
    assert_png(tmp_path / "cm2.png")
    assert model.training  # evaluated on a copy in eval mode
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, weights[k])


def test_plot_filters(tmp_path, model):
    fig = plot.plot_filters(model[0], path=tmp_path / "f.png")
    assert_png(tmp_path / "f.png")
    images = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    assert len(images) == 6  # one 5x5 kernel per filter of Conv2d(1, 6, 5)
    np.testing.assert_allclose(images[2], model[0].weight.data[2, 0])
    fig = plot.plot_filters(model[3])  # Conv2d(6, 12): 6 input channels x 12 filters
    assert sum(1 for ax in fig.axes if ax.get_images()) == 6 * 12
    fig2 = plot.plot_filters(model)  # a model: its first Conv2d
    assert sum(1 for ax in fig2.axes if ax.get_images()) == 6
    with pytest.raises(TypeError, match="Conv2d"):
        plot.plot_filters(nn.Linear(2, 2))


def test_plot_feature_maps(tmp_path, model, test_data):
    fig = plot.plot_feature_maps(model, test_data.images[0], path=tmp_path / "fm.png")
    assert_png(tmp_path / "fm.png")
    shapes = [ax.get_images()[0].get_array().shape for ax in fig.axes if ax.get_images()]
    assert shapes == [(28, 28)] + [(24, 24)] * 6 + [(8, 8)] * 12
    with pytest.raises(ValueError, match="ONE image"):
        plot.plot_feature_maps(model, test_data.images[:2])


def test_plot_predictions_marks_mistakes(tmp_path, model, test_data):
    images, labels = test_data.images[:8], test_data.labels[:8]
    fig = plot.plot_predictions(model, images, labels, test_data.classes,
                                path=tmp_path / "p.png", cols=4)
    assert_png(tmp_path / "p.png")
    with tinynet.no_grad():
        x = (images.astype(np.float32) / 255 - 0.2860) / 0.3530
        pred = model.copy().eval()(x).argmax(axis=1)
    wrong = int((pred != labels).sum())
    assert f"{8 - wrong} right, {wrong} wrong" in fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes[:8]]
    for k in range(8):
        assert titles[k].startswith(test_data.classes[pred[k]])


def test_clear_error_without_matplotlib(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"tinynet\[plot\]"):
        plot.plot_history(HISTORY)


def test_plots_of_a_model_on_a_simulated_gpu(tmp_path, monkeypatch, test_data):
    """A model on 'cuda' (a stand-in device that rejects host arrays, as CuPy does)."""
    import pathlib

    from tinynet import backend as B

    strict = load_script(pathlib.Path(__file__).with_name("test_no_numpy_in_layers.py"),
                         "_strict_xp_plot")
    backend = strict.StrictBackend("cuda", strict.SimulatedCudaArray)
    monkeypatch.setitem(B._backends, "cuda", backend)
    tinynet.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(288, 10)).to("cuda")
    plot.plot_filters(model, path=tmp_path / "f.png")
    plot.plot_feature_maps(model, test_data.images[3], path=tmp_path / "fm.png")
    plot.plot_predictions(model, test_data.images[:4], test_data.labels[:4], test_data.classes,
                          path=tmp_path / "p.png")
    loader = DataLoader(test_data, batch_size=100, device="cuda")
    plot.plot_confusion_matrix(model, loader, test_data.classes, path=tmp_path / "cm.png")
    for name in ("f", "fm", "p", "cm"):
        assert_png(tmp_path / f"{name}.png")
