"""Pictures of training and of what a network has learned (needs matplotlib: ``tinynet[plot]``).

* :func:`plot_history`: loss and accuracy per epoch, training and validation.
* :func:`plot_confusion_matrix` (and :func:`confusion_matrix`): which classes get mixed up.
* :func:`plot_filters`: the filters (kernels) of a convolution layer.
* :func:`plot_feature_maps`: what one image looks like after each convolution layer.
* :func:`plot_predictions`: sample images with predicted and true labels, mistakes in red.
* :func:`plot_flow`: gradient flow over training, per layer (``fit(..., monitor=True)``).

Every function returns a matplotlib ``Figure`` and, with ``path=...``, saves it as a PNG. The
figures are made without ``pyplot`` (no window, no display needed; nothing to close), so they
work on a server; in Jupyter, a returned figure shows itself. matplotlib is imported only when a
function is called, so ``import tinynet`` never needs it.

Example::

    from tinynet import plot
    plot.plot_history("runs/fashion-mnist/history.jsonl", path="history.png")
    plot.plot_filters(model[0], path="filters.png")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np  # host side: matplotlib takes host arrays

from . import backend as B
from .nn.conv import Conv2d
from .nn.module import Module

__all__ = [
    "confusion_matrix",
    "plot_confusion_matrix",
    "plot_feature_maps",
    "plot_filters",
    "plot_flow",
    "plot_history",
    "plot_predictions",
]

DPI = 80  # small PNGs for documentation


def _figure(width: float, height: float) -> Any:
    """A new Figure drawn by the Agg backend (PNG), without pyplot and without a display."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tinynet.plot needs matplotlib, which is not installed. Install it with: "
            'pip install "tinynet[plot]"  (or: pip install matplotlib)'
        ) from exc
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: savefig writes PNGs with Agg
    return fig


def _save(fig: Any, path: str | os.PathLike | None) -> Any:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    return fig


def _host(a: Any) -> np.ndarray:
    return np.asarray(B.to_numpy(a))


def _model_input(model: Module, images: Any) -> Any:
    """uint8 pixels -> floats normalised as the DataLoader does, on the model's device/dtype."""
    from .data.loader import FASHION_MNIST_MEAN, FASHION_MNIST_STD

    x = _host(images)
    dtype = model.dtype or B.get_default_dtype()
    if x.dtype == np.uint8:
        x = (x.astype(np.float64) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    x = x.astype(dtype)
    return B.to_device(x, model.device or B.get_default_device())


def _as_batch(image: Any) -> np.ndarray:
    """(H, W) or (C, H, W) or (1, C, H, W) -> (1, C, H, W)."""
    x = _host(image)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(
            f"expected ONE image of shape (H, W), (C, H, W) or (1, C, H, W), got shape {x.shape}"
        )
    return x


def _predict(model: Module, x: Any) -> np.ndarray:
    """Class numbers predicted for batch ``x``: eval mode, on a copy (caches stay untouched)."""
    work = model.copy().eval()
    with B.no_grad():
        return _host(work(x)).argmax(axis=1)


# ------------------------------------------------------------------------------------------------
def _read_history(history_or_path: Any) -> list[dict]:
    if isinstance(history_or_path, (str, os.PathLike)):
        path = Path(history_or_path)
        if path.is_dir():
            path = path / "history.jsonl"
        if not path.exists():
            raise FileNotFoundError(
                f"plot_history: no history file at {path} (fit(...) writes out_dir/history.jsonl)"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    history = list(history_or_path)
    if not all(isinstance(h, dict) for h in history):
        raise TypeError("plot_history: expected a list of dicts (one per epoch) or a file path")
    return history


def plot_history(history_or_path: Any, path: str | os.PathLike | None = None) -> Any:
    """Loss and accuracy per epoch, for the training and the validation set.

    Args:
        history_or_path: a list of dicts, one per epoch, with keys ``epoch``, ``train_loss``,
            ``train_acc`` and optionally ``val_loss``, ``val_acc`` (accuracies in [0, 1]), or the
            path of a ``history.jsonl`` file (or of the folder holding it) written by ``fit``.
        path: where to save the PNG (optional).

    Returns:
        the Figure (two panels: loss, accuracy).
    """
    history = _read_history(history_or_path)
    fig = _figure(8, 3.2)
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("plot_history: the history is empty (no epoch finished yet?)")
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, title in ((ax_loss, "loss", "loss (lower is better)"),
                           (ax_acc, "acc", "accuracy (higher is better)")):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [h.get(f"{split}_{key}") for h in history]
            pairs = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if pairs:
                ax.plot([p[0] for p in pairs], [p[1] for p in pairs], style,
                        label="training" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------
def confusion_matrix(preds: Any, labels: Any, n: int) -> np.ndarray:
    """``cm[t, p]`` = how many samples of true class ``t`` were predicted as class ``p``.

    Args:
        preds, labels: integer arrays of shape (N,). n: the number of classes.

    Returns:
        an int64 array (n, n): the diagonal holds the correct predictions.
    """
    p = _host(preds).astype(np.int64).ravel()
    t = _host(labels).astype(np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"confusion_matrix: {p.size} predictions but {t.size} labels")
    for name, a in (("predictions", p), ("labels", t)):
        if a.size and (a.min() < 0 or a.max() >= n):
            raise ValueError(f"confusion_matrix: {name} must lie in [0, {n - 1}], got {a.max()}")
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (t, p), 1)  # one count per (true, predicted) pair
    return cm


def plot_confusion_matrix(model_or_preds: Any, loader_or_labels: Any, class_names: Sequence[str],
                          path: str | os.PathLike | None = None) -> Any:
    """The confusion matrix of a model on a data set (or of given predictions), with class names.

    Args:
        model_or_preds: a Module (run on every batch of ``loader_or_labels``, in eval mode, on a
            copy) or an array of predicted class numbers (N,).
        loader_or_labels: a DataLoader yielding ``(x, y)`` or the true labels (N,).
        class_names: one name per class (e.g. ``FashionMNIST.classes``).
        path: where to save the PNG (optional).

    Returns:
        the Figure; rows are the true classes, columns the predicted ones.
    """
    if isinstance(model_or_preds, Module):
        work = model_or_preds.copy().eval()
        preds, labels = [], []
        with B.no_grad():
            for x, y in loader_or_labels:
                preds.append(_host(work(x)).argmax(axis=1))
                labels.append(_host(y))
        preds, labels = np.concatenate(preds), np.concatenate(labels)
    else:
        preds, labels = _host(model_or_preds), _host(loader_or_labels)
    n = len(class_names)
    cm = confusion_matrix(preds, labels, n)
    acc = np.trace(cm) / max(cm.sum(), 1)
    fig = _figure(6.4, 5.6)
    ax = fig.subplots()
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # colour: share of each true class
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for t in range(n):
        for p in range(n):
            if cm[t, p]:
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if share[t, p] > 0.5 else "black")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix: {cm.sum()} images, accuracy {100 * acc:.1f}%")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------
def _first_conv(obj: Any) -> Conv2d:
    if isinstance(obj, Conv2d):
        return obj
    if isinstance(obj, Module):
        for m in obj.modules():
            if isinstance(m, Conv2d):
                return m
    raise TypeError(f"plot_filters: expected a Conv2d layer (or a model with one), got "
                    f"{type(obj).__name__}")


def plot_filters(conv_layer: Any, path: str | os.PathLike | None = None) -> Any:
    """The filters of a convolution layer: one small image per (filter, input channel).

    Args:
        conv_layer: a :class:`~tinynet.nn.Conv2d` (or a model: its first Conv2d is used). Its
            weight has shape (out_channels, in_channels, kh, kw): out_channels filters, each with
            one kh x kw kernel per input channel.
        path: where to save the PNG (optional).

    Returns:
        the Figure: one column per filter (out_channels) and one row per input channel (at
        most 8 rows). Red = positive weight, blue = negative, white = zero.
    """
    conv = _first_conv(conv_layer)
    w = _host(conv.weight.data).astype(np.float64)
    c_out, c_in = w.shape[:2]
    rows = min(c_in, 8)
    lim = float(np.abs(w).max()) or 1.0
    fig = _figure(max(1.1 * c_out, 3.0), 1.1 * rows + 0.5)
    axes = np.atleast_2d(fig.subplots(rows, c_out, squeeze=False))
    for r in range(rows):
        for f in range(c_out):
            ax = axes[r, f]
            ax.imshow(w[f, r], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"filter {f}", fontsize=8)
            if f == 0 and c_in > 1:
                ax.set_ylabel(f"in {r}", fontsize=8)
    fig.suptitle(f"{c_out} filters of Conv2d({c_in}, {c_out}), kernel "
                 f"{w.shape[2]}x{w.shape[3]} (red +, blue -)", fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.04, top=1 - 0.5 / (1.1 * rows + 0.5),
                        wspace=0.15, hspace=0.15)
    return _save(fig, path)


def plot_feature_maps(model: Module, image: Any, path: str | os.PathLike | None = None,
                      max_maps: int = 12) -> Any:
    """One image and its feature maps after each convolution layer (after its ReLU).

    Args:
        model: a network with Conv2d layers (run on a copy, without gradients).
        image: one image, (H, W), (C, H, W) or (1, C, H, W); uint8 pixels are normalised like the
            DataLoader does, floats are used as they are.
        path: where to save the PNG (optional).
        max_maps: at most this many maps per row.

    Returns:
        the Figure: the input, then one row per conv layer with its out_channels feature maps.
    """
    from .inspect import record_forward
    from .nn.activation import ReLU

    raw = _as_batch(image)
    x = _model_input(model, raw)
    calls = record_forward(model, x)
    stages = []  # (title, maps (C, H, W))
    for i, (name, module, _, out) in enumerate(calls):
        if isinstance(module, Conv2d):
            after = out
            label = f"{name}: Conv2d"
            if i + 1 < len(calls) and isinstance(calls[i + 1][1], ReLU):
                after = calls[i + 1][3]
                label += " + ReLU"
            stages.append((f"{label} -> {tuple(after.shape[1:])}", _host(after)[0]))
    if not stages:
        raise ValueError("plot_feature_maps: the model has no Conv2d layer")
    cols = min(max(s[1].shape[0] for s in stages), max_maps)
    fig = _figure(0.95 * cols + 0.3, 1.25 * (len(stages) + 1) + 0.3)
    axes = fig.subplots(len(stages) + 1, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(raw[0, 0], cmap="gray")
    axes[0, 0].set_title(f"input {tuple(raw.shape[1:])}", fontsize=7)
    for row, (title, maps) in enumerate(stages, start=1):
        for c in range(min(maps.shape[0], cols)):
            m = maps[c]  # each map on its own colour scale, from 0 (dark) to its maximum
            axes[row, c].imshow(m, cmap="viridis", vmin=min(float(m.min()), 0.0),
                                vmax=max(float(m.max()), 1e-12))
            axes[row, c].set_title(f"map {c}", fontsize=7)
        axes[row, 0].text(-0.1, 1.35, title, transform=axes[row, 0].transAxes, fontsize=8,
                          ha="left")
    fig.suptitle("feature maps: one per filter (bright = strong response, dark = 0; all dark = "
                 "the filter did not respond)", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86, wspace=0.1, hspace=0.55)
    return _save(fig, path)


def plot_predictions(model: Module, images: Any, labels: Any, class_names: Sequence[str],
                     path: str | os.PathLike | None = None, cols: int = 6) -> Any:
    """A grid of images with the predicted and the true class; wrong predictions in red.

    Args:
        model: a classifier giving (N, classes) scores (run on a copy, in eval mode).
        images: (N, C, H, W) uint8 pixels (normalised like the DataLoader does) or floats.
        labels: (N,) true class numbers.
        class_names: one name per class.
        path: where to save the PNG (optional). cols: images per row.

    Returns:
        the Figure.
    """
    raw = _host(images)
    if raw.ndim == 3:
        raw = raw[:, None]
    y = _host(labels).astype(np.int64)
    if raw.ndim != 4 or len(raw) != len(y):
        raise ValueError(f"plot_predictions: expected images (N, C, H, W) and labels (N,), got "
                         f"{raw.shape} and {y.shape}")
    pred = _predict(model, _model_input(model, raw))
    n = len(raw)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig = _figure(1.5 * cols, 1.75 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        ok = pred[k] == y[k]
        ax.imshow(raw[k, 0] if raw.shape[1] == 1 else raw[k].transpose(1, 2, 0), cmap="gray")
        color = "tab:green" if ok else "tab:red"
        ax.set_title(f"{class_names[pred[k]]}\n(true: {class_names[y[k]]})", fontsize=7,
                     color=color)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if ok else 3)
    wrong = int((pred != y).sum())
    fig.suptitle(f"predicted (true): {n - wrong} right, {wrong} wrong in red", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------
def plot_flow(records_or_path: Any, path: str | os.PathLike | None = None) -> Any:
    """Gradient flow over training, one line per layer: is every layer learning?

    Args:
        records_or_path: the records of a :class:`tinynet.lab.flow.FlowMonitor` (a list of
            dicts, or the monitor itself), or the path of the ``flow.jsonl`` that
            ``fit(..., monitor=True, out_dir=...)`` writes (or of the folder holding it).
        path: where to save the PNG (optional).

    Returns:
        the Figure, six panels over the training steps: the gradient norm ||dL/dW|| (log
        scale) and the weight norm ||W|| of each layer; the update ratio ||dW|| / ||W|| of a step
        with the "1e-3 rule" line; the share of dead units after each ReLU; the mean and the std
        of each layer's output (solid) and of its ReLU's (dashed). A layer and its ReLU have
        one colour in every panel.
    """
    from .lab.flow import read_flow

    if isinstance(records_or_path, (str, os.PathLike)):
        records = read_flow(records_or_path)
    else:
        records = list(getattr(records_or_path, "records", records_or_path))
        if not all(isinstance(r, dict) and "params" in r for r in records):
            raise TypeError("plot_flow: expected the records of a FlowMonitor (dicts with "
                            "'params' and 'modules'), a FlowMonitor, or a flow.jsonl path")
    if not records:
        raise ValueError("plot_flow: no records (did fit run with monitor=... for a few steps?)")
    steps = [r["step"] for r in records]
    # the layers: weights with >= 2 axes (a conv's kernel, a Linear's matrix), first to last
    layers = [n for n, p in records[0]["params"].items() if p.get("ndim", 0) >= 2]
    modules = list(records[0].get("modules", {}))
    types = {n: m["type"] for n, m in records[0].get("modules", {}).items()}
    owner = {}  # module name -> the layer it belongs to (a layer, and the ReLU after it)
    current = None
    for name in modules:
        if f"{name}.weight" in layers:
            current = f"{name}.weight"
        if current is not None and (f"{name}.weight" == current or types[name] == "ReLU"):
            owner[name] = current
    fig = _figure(12, 6.6)
    colors = {n: f"C{i % 10}" for i, n in enumerate(layers)}
    axes = fig.subplots(2, 3).ravel()

    def series(get: Any) -> list:
        values = [get(r) for r in records]
        return [np.nan if v is None else float(v) for v in values]

    panels = ((axes[0], "grad_norm", "gradient norm ||dL/dW|| (log)"),
              (axes[1], "weight_norm", "weight norm ||W||"),
              (axes[2], "update_ratio", "update ratio ||dW|| / ||W|| per step (log)"))
    for ax, key, title in panels:
        for n in layers:
            y = series(lambda r, n=n, key=key: r["params"].get(n, {}).get(key))
            ax.plot(steps, y, "o-", ms=3, color=colors[n],
                    label=f"{n.rpartition('.')[0]} {types.get(n.rpartition('.')[0], '')}")
        if key != "weight_norm":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
    axes[2].axhline(1e-3, color="grey", ls="--", lw=1, label='"1e-3 rule"')
    axes[0].legend(fontsize=7, title="layer", title_fontsize=7)
    axes[2].legend(fontsize=7)
    relus = [n for n in modules if types[n] == "ReLU"]
    for n in relus:
        y = series(lambda r, n=n: r["modules"].get(n, {}).get("dead"))
        axes[3].plot(steps, y, "o--", ms=3, color=colors.get(owner.get(n), "black"),
                     label=f"ReLU {n}")
    axes[3].axhline(0.5, color="grey", ls=":", lw=1, label="half: a warning")
    axes[3].set_ylim(-0.03, 1.03)
    axes[3].set_title("dead ReLU units (0 for the whole batch)", fontsize=9)
    axes[3].legend(fontsize=7)
    for ax, key in ((axes[4], "mean"), (axes[5], "std")):
        for n in modules:
            if n not in owner:
                continue
            y = series(lambda r, n=n, key=key: r["modules"].get(n, {}).get(key))
            ax.plot(steps, y, "-" if types[n] != "ReLU" else "--", color=colors[owner[n]],
                    label=f"{n} {types[n]}")
        ax.set_title(f"activation {key} (solid: layer, dashed: its ReLU)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step (weight update)")
        ax.grid(alpha=0.3)
    epochs = sorted({r["epoch"] for r in records})
    fig.suptitle(f"gradient flow: {len(records)} records, steps {steps[0]}-{steps[-1]}, "
                 f"epoch{'s' if len(epochs) > 1 else ''} {epochs[0]}"
                 f"{f'-{epochs[-1]}' if len(epochs) > 1 else ''}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
