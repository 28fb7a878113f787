"""Run comparisons: train every combination of some settings and compare the results.

The PyTorch course ends with a ``RunBuilder`` (every combination of hyperparameters, as named
runs) and a ``RunManager`` (trains each one and prints a table). Here they are:

* :func:`grid` ``(lr=[0.01, 0.001], batch_size=[64, 256])`` gives the four :class:`Run` s, each
  with its settings and a readable name, ``"lr=0.01,batch_size=64"``, that is also its folder.
* :func:`run_grid` trains each run with :func:`tinynet.train.fit` in ``out/<name>/``
  (``history.jsonl``, the checkpoint ``last.npz``, ``run.json``), prints a table sorted by
  validation accuracy, writes ``out/results.json`` and ``out/results.md`` and draws
  ``out/runs.png`` (every run's curves in one picture, :func:`plot_runs`).
* :class:`CourseSetup` says what one run trains: the course network, SGD and the Fashion-MNIST
  loaders, built from the run's settings. Any function ``setup(run) -> dict`` can replace it.

Calling :func:`run_grid` again with the same runs and ``out`` never trains anything twice:

* a finished run is skipped, its results read back from its ``history.jsonl``;
* an interrupted run (Ctrl-C: its ``last.npz`` says ``interrupted``, or fewer epochs are done
  than asked) resumes exactly where it stopped (``fit(..., resume=...)``);
* a run that diverged (the loss became NaN) is reported as such, not retrained;
* asking for more epochs continues the finished runs up to the new number.

Nothing is duplicated: each run has one folder, its history one line per epoch, the table one row.

Example::

    from tinynet.experiments import CourseSetup, grid, run_grid
    runs = grid(lr=[0.01, 0.001], batch_size=[64, 256])
    results = run_grid(runs, CourseSetup(data="sample"), epochs=2, out="runs")
    print(results.best.name)          # e.g. lr=0.01,batch_size=64
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import backend as B
from . import checkpoint as ckpt_io
from .train import CHECKPOINT_FILE, HISTORY_FILE, TrainingDiverged, fit

__all__ = [
    "CourseSetup",
    "Results",
    "Run",
    "grid",
    "plot_runs",
    "read_history",
    "run_grid",
]

RUN_FILE = "run.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_FILE = "runs.png"
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_.+-]+$")  # safe in a folder name on every system
_MAX_NAME = 200  # folder names may have at most 255 bytes
_SETUP_KEYS = {"model", "optimizer", "train_loader", "val_loader", "loss_fn", "scheduler",
               "scheduler_interval"}


# ----------------------------------------------------------------------------------------------
# Runs and their names
# ----------------------------------------------------------------------------------------------
def _format_value(key: str, value: Any) -> str:
    """How one setting's value appears in a run's name: ``0.01``, ``64``, ``True``, ``sgd``."""
    if value is None or isinstance(value, bool):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a NumPy scalar
        value = value.item()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"grid: {key}={value} is not a finite number")
        return repr(value)  # the shortest text that reads back as the same float: 0.01, 1e-05
    if isinstance(value, str):
        if not _SAFE_WORD.match(value):
            raise ValueError(
                f"grid: {key}={value!r} cannot be part of a folder name: use letters, digits "
                f"and . _ + - only (no spaces, slashes or commas)")
        return value
    raise TypeError(
        f"grid: {key}={value!r} is a {type(value).__name__}; a setting's values must be numbers, "
        f"booleans, None or short words (strings), so that each run gets a readable name")


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python numbers (JSON and ``fit``'s ``meta`` want plain values)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


@dataclass(frozen=True, repr=False)
class Run:
    """One combination of settings, e.g. ``lr=0.01, batch_size=64``, with a readable name.

    Made by :func:`grid`. The settings are read as attributes (``run.lr``, as the course's
    ``RunBuilder`` namedtuples), by key (``run["lr"]``) or all at once (``run.settings``).

    Attributes:
        items: the settings as ``(key, value)`` pairs, in the order given to :func:`grid`.
        name: ``"key=value,key=value"``, e.g. ``"lr=0.01,batch_size=64"``: stable (the same
            settings always give the same name) and safe as a folder name.
    """

    items: tuple[tuple[str, Any], ...]

    def __post_init__(self) -> None:
        items = tuple((str(k), _plain(v)) for k, v in self.items)
        object.__setattr__(self, "items", items)
        for key, _ in items:
            if key in ("items", "name", "settings") or not key.isidentifier():
                raise ValueError(f"grid: {key!r} cannot be a setting's name (it must be a Python "
                                 f"name other than 'items', 'name' and 'settings')")
        name = ",".join(f"{k}={_format_value(k, v)}" for k, v in items)
        if len(name.encode()) > _MAX_NAME:
            raise ValueError(f"grid: the run name {name[:60]}... is longer than {_MAX_NAME} "
                             f"characters, too long for a folder name: use fewer settings")
        object.__setattr__(self, "name", name)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings as a dict ``{key: value}`` (a new dict: changing it changes nothing)."""
        return dict(self.items)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key == "items":  # copy/pickle probe before items exist
            raise AttributeError(key)
        for k, v in self.items:
            if k == key:
                return v
        raise AttributeError(f"this run has no setting {key!r}; its settings are "
                             f"{', '.join(k for k, _ in self.items) or 'none'}")

    def __getitem__(self, key: str) -> Any:
        for k, v in self.items:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of setting ``key``, or ``default`` when this run does not set it."""
        return dict(self.items).get(key, default)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Run({', '.join(f'{k}={v!r}' for k, v in self.items)})"


def grid(**settings: Any) -> list[Run]:
    """Every combination of the given settings, as a list of named :class:`Run` s.

    ``grid(lr=[0.01, 0.001], batch_size=[64, 256])`` gives, in this order (the first setting
    changes slowest, as in nested for loops or ``itertools.product``)::

        lr=0.01,batch_size=64    lr=0.01,batch_size=256
        lr=0.001,batch_size=64   lr=0.001,batch_size=256

    Args:
        **settings: for each setting a list (or tuple, or range) of values to try; a single value
            (a number, a string) is one value to try. Values are numbers, booleans, None or short
            words such as ``"sgd"``.

    Returns:
        the runs: as many as the product of the numbers of values (2 * 2 = 4 above).

    Raises:
        ValueError: a setting has no values, a value repeats, or two runs would get the same name.
    """
    keys, choices = [], []
    for key, values in settings.items():
        if isinstance(values, (list, tuple, range)):
            values = list(values)
        else:
            values = [values]
        if not values:
            raise ValueError(f"grid: {key}=[] has no values to try; give at least one")
        keys.append(key)
        choices.append(values)
    runs = [Run(tuple(zip(keys, combo, strict=True))) for combo in itertools.product(*choices)]
    seen: dict[str, Run] = {}
    for run in runs:
        if run.name in seen:
            raise ValueError(f"grid: two runs would share the name {run.name!r} (and so one "
                             f"folder): a value is repeated, or two values print the same")
        seen[run.name] = run
    return runs


# ----------------------------------------------------------------------------------------------
# What one run trains: the course network, SGD, Fashion-MNIST
# ----------------------------------------------------------------------------------------------
class CourseSetup:
    """Builds what one run trains: the course CNN, SGD with momentum and the Fashion-MNIST loaders.

    Call it with a :class:`Run`; it returns the pieces :func:`run_grid` gives to ``fit``. Every
    run starts from the same initial weights (``tinynet.manual_seed(seed)`` right before the
    network is made), so runs differ only by their settings.

    Settings a run may give (the others keep these defaults, the recipe of
    ``examples/train_fashion_mnist.py`` with a constant learning rate)::

        lr=0.01  batch_size=64  momentum=0.9  weight_decay=0.0  seed=0

    Args:
        data: ``'sample'`` (the 2,000 + 500 images shipped with tinynet), ``'full'`` (60,000 +
            10,000, downloaded if needed) or ``'auto'`` (full when on disk, else the sample), as
            :func:`tinynet.data.load_splits`. Loaded once, on the first run.
        limit: train on the first ``limit`` training images only (quick checks).
        device: ``'cpu'`` or ``'cuda'`` (default: the default device).
        val_batch_size: images per validation batch (it changes nothing but speed and memory).

    The test split is the validation data (the course has no separate validation split).
    """

    DEFAULTS: dict[str, Any] = {"lr": 0.01, "batch_size": 64, "momentum": 0.9,
                                "weight_decay": 0.0, "seed": 0}

    def __init__(self, data: str = "auto", *, limit: int | None = None, device: str | None = None,
                 val_batch_size: int = 1000) -> None:
        if data not in ("auto", "full", "sample"):
            raise ValueError(f"CourseSetup: data must be 'auto', 'full' or 'sample', got {data!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"CourseSetup: limit must be a positive int or None, got {limit!r}")
        self.data, self.limit, self.val_batch_size = data, limit, int(val_batch_size)
        self.device = B.normalize_device(device)
        self._splits: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"CourseSetup(data={self.data!r}, limit={self.limit!r}, device={self.device!r})"

    def splits(self) -> tuple[Any, Any]:
        """The training and validation (test) datasets, loaded on the first call."""
        if self._splits is None:
            from .data import load_splits

            self._splits = load_splits(self.data, limit=self.limit)
        return self._splits

    def describe(self) -> dict[str, Any]:
        """What the runs are trained on, stored in each ``run.json``: a later call with other
        data refuses to mix its results with these."""
        train, test = self.splits()
        source = getattr(test, "source", None)  # 'sample', or where the full data was found
        return {"setup": "course_cnn + SGD",
                "data": "sample" if source == "sample" else "full",
                "train_images": len(train), "val_images": len(test)}

    def __call__(self, run: Run) -> dict[str, Any]:
        from . import nn, optim
        from .data import DataLoader
        from .models import course_cnn

        unknown = [k for k in run.settings if k not in self.DEFAULTS]
        if unknown:
            raise ValueError(
                f"CourseSetup knows the settings {', '.join(self.DEFAULTS)}; the run {run.name!r} "
                f"also sets {', '.join(map(repr, unknown))}. Check the spelling, or give "
                f"run_grid your own setup function (run -> dict(model=..., optimizer=..., "
                f"train_loader=..., val_loader=...)) for other settings")
        s = dict(self.DEFAULTS, **run.settings)
        train, test = self.splits()
        B.manual_seed(int(s["seed"]))  # the same seed -> the same initial weights in every run
        model = course_cnn(device=self.device)
        optimizer = optim.SGD(model.parameters(), lr=float(s["lr"]),
                              momentum=float(s["momentum"]),
                              weight_decay=float(s["weight_decay"]))
        return {
            "model": model,
            "loss_fn": nn.CrossEntropyLoss(),
            "optimizer": optimizer,
            "train_loader": DataLoader(train, batch_size=int(s["batch_size"]), shuffle=True,
                                       seed=int(s["seed"]), device=self.device),
            "val_loader": DataLoader(test, batch_size=self.val_batch_size, device=self.device),
        }


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
_COLUMNS = (  # (header, row key, format)
    ("run", "name", "{}"),
    ("epochs", "epochs", "{:d}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("train acc", "train_acc", "{:.4f}"),
    ("val loss", "val_loss", "{:.4f}"),
    ("val acc", "val_acc", "{:.4f}"),
    ("seconds", "seconds", "{:.1f}"),
    ("images/s", "images_per_s", "{:,.0f}"),
    ("status", "note", "{}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None or value == "" else fmt.format(value)


class Results(list):
    """What :func:`run_grid` returns: one row (a dict) per run, best validation accuracy first.

    Each row has ``name``, ``settings``, ``status`` (``'completed'``, ``'interrupted'``,
    ``'diverged'``), ``action`` (what this call did: ``'trained'``, ``'resumed'``, ``'skipped'``),
    ``epochs`` (epochs done), the last epoch's ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc`` (None before the first epoch ends), ``seconds`` (all epochs, validation included),
    ``images_per_s`` (training images per second of training time), ``folder``, ``message`` and
    ``history`` (the run's ``history.jsonl``, one dict per epoch).

    Attributes:
        status: ``'completed'`` (every run was visited) or ``'interrupted'`` (Ctrl-C).
        message: for an interrupted grid, what was kept and how to continue.
        out: the folder of the runs.
    """

    def __init__(self, rows: Iterable[dict] = (), out: Path | None = None) -> None:
        super().__init__(rows)
        self.status = "completed"
        self.message = ""
        self.out = out

    @property
    def best(self) -> dict | None:
        """The row with the highest validation accuracy (None when no run finished an epoch)."""
        return self[0] if self and self[0].get("val_acc") is not None else None

    def table(self) -> str:
        """The results as an aligned plain-text table."""
        header = [c[0] for c in _COLUMNS]
        body = [[_cell(row, key, fmt) for _, key, fmt in _COLUMNS] for row in self]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            middle = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
            return "  ".join([first, *middle, cells[-1]]).rstrip()

        return "\n".join([line(header), *(line(r) for r in body)])

    def markdown(self) -> str:
        """The results as a Markdown table (what ``results.md`` holds)."""
        header = [c[0] for c in _COLUMNS]
        lines = ["| " + " | ".join(header) + " |",
                 "| " + " | ".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + " |"]
        for row in self:
            cells = [_cell(row, key, fmt) for _, key, fmt in _COLUMNS]
            cells[0] = f"`{cells[0]}`"
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def read_history(folder: str | os.PathLike) -> list[dict]:
    """The epochs recorded in ``folder/history.jsonl`` (one dict per line; [] when absent)."""
    path = Path(folder) / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _row(run: Run, folder: Path, status: str, action: str, message: str = "") -> dict:
    """One table row, read from the run's history.jsonl (the single source of its numbers)."""
    history = read_history(folder)
    last = history[-1] if history else {}
    rates = [h["images_per_s"] for h in history if h.get("images_per_s")]
    # every epoch trains on the same N images, so total images / total training time is the
    # harmonic mean of the epochs' images/s
    images_per_s = len(rates) / sum(1.0 / r for r in rates) if rates else None
    note = {"trained": "trained", "resumed": "resumed", "skipped": "done before"}[action]
    if status != "completed":
        note = status if action == "trained" else f"{status} ({note})"
    return {
        "name": run.name, "settings": run.settings, "status": status, "action": action,
        "epochs": len(history),
        "train_loss": last.get("train_loss"), "train_acc": last.get("train_acc"),
        "val_loss": last.get("val_loss"), "val_acc": last.get("val_acc"),
        "seconds": sum(h["seconds"] for h in history) if history else None,
        "images_per_s": images_per_s, "note": note, "message": message,
        "folder": str(folder), "history": history,
    }


def _sort_key(row: dict) -> tuple:
    """Best validation accuracy first; runs without one (no epoch done, no validation) last."""
    acc = row.get("val_acc")
    return (acc is None, -acc if acc is not None else 0.0)


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a Ctrl-C never leaves half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_results(out: Path, results: Results, epochs: int) -> None:
    doc = {"status": results.status, "epochs": epochs, "sorted_by": "val_acc",
           "runs": list(results)}
    _write_text(out / RESULTS_JSON, json.dumps(doc, indent=1) + "\n")
    _write_text(out / RESULTS_MD, results.markdown() + "\n")


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _plan(run: Run, folder: Path, epochs: int, described: Any) -> tuple[str, str]:
    """What to do with a run's folder: ('new' | 'resume' | 'finished' | 'diverged', why)."""
    info = _read_json(folder / RUN_FILE)
    if info is not None:
        if info.get("settings") not in (None, run.settings):
            raise ValueError(f"run_grid: the folder {folder} holds a run with the settings "
                             f"{info['settings']}, not {run.settings}: use another out folder")
        if described is not None and info.get("setup") not in (None, described):
            raise ValueError(
                f"run_grid: {folder} was trained on {info['setup']}, but this call trains on "
                f"{described}. Results on different data do not compare: use another out "
                f"folder (--out), or delete {folder} to train it again")
        if info.get("status") == "diverged":
            return "diverged", info.get("message", "")
    ckpt_path = folder / CHECKPOINT_FILE
    if not ckpt_path.exists():
        return "new", ""
    ckpt = ckpt_io.load(ckpt_path)
    done = int(ckpt.get("epochs_completed", 0))
    if done >= epochs and ckpt.get("status") != "interrupted":
        return "finished", f"{done} epochs done"
    if ckpt.get("status") == "interrupted":
        return "resume", f"interrupted in epoch {done + 1}, after batch {ckpt.get('batch', 0)}"
    return "resume", f"{done} of {epochs} epochs done"


def _check_setup(pieces: Any, run: Run) -> dict:
    if not isinstance(pieces, Mapping):
        raise TypeError(f"run_grid: setup({run.name!r}) must return a dict with model, optimizer, "
                        f"train_loader (and optionally val_loader, loss_fn, scheduler); got a "
                        f"{type(pieces).__name__}")
    missing = {"model", "optimizer", "train_loader"} - set(pieces)
    extra = set(pieces) - _SETUP_KEYS
    if missing or extra:
        raise TypeError(f"run_grid: setup({run.name!r}) returned the keys {sorted(pieces)}; it "
                        f"needs model, optimizer, train_loader and may add "
                        f"{', '.join(sorted(_SETUP_KEYS - {'model', 'optimizer', 'train_loader'}))}"
                        + (f" (missing: {sorted(missing)})" if missing else "")
                        + (f" (unknown: {sorted(extra)})" if extra else ""))
    return dict(pieces)


def _write_run_file(folder: Path, run: Run, epochs: int, described: Any, status: str,
                    message: str = "") -> None:
    info = {"name": run.name, "settings": run.settings, "epochs": epochs, "setup": described,
            "status": status, "message": message}
    _write_text(folder / RUN_FILE, json.dumps(info, indent=1) + "\n")


def run_grid(
    runs: Iterable[Run],
    setup: Callable[[Run], Mapping[str, Any]] | None = None,
    *,
    epochs: int,
    out: str | os.PathLike = "runs",
    progress: bool = True,
    verbose: bool = True,
    plot: bool = True,
    continue_hint: str | None = None,
) -> Results:
    """Train every run (or resume it, or skip it when done), then compare them in one table.

    For each run, in order, in the folder ``out/<run.name>/``:

    * nothing there yet: ``setup(run)`` builds the model, optimizer and loaders, and
      :func:`tinynet.train.fit` trains ``epochs`` epochs (``history.jsonl``, ``last.npz``);
    * its ``last.npz`` says it was interrupted, or that fewer than ``epochs`` epochs are done:
      ``fit(..., resume=last.npz)`` continues it exactly (same batches, same weights) up to
      ``epochs``; the history is continued, never duplicated;
    * finished (``epochs`` or more done) or diverged before: skipped, its results read back from
      ``history.jsonl``.

    A run whose loss blows up (:class:`~tinynet.train.TrainingDiverged`: the learning rate was too
    high) is a result, not an error: its row says ``diverged`` and the grid goes on.

    Ctrl-C stops the grid cleanly: the run being trained saves its state (``fit`` does that),
    the table so far is printed and written, and the message says how to continue: call again
    with the same runs and ``out`` (``continue_hint``, e.g. the same command line).

    Args:
        runs: the runs to train, e.g. ``grid(lr=[0.01, 0.001], batch_size=[64, 256])``.
        setup: ``setup(run) -> dict`` with ``model``, ``optimizer``, ``train_loader`` and
            optionally ``val_loader``, ``loss_fn`` (default cross-entropy), ``scheduler`` and
            ``scheduler_interval``: what ``fit`` trains for this run's settings. Default:
            ``CourseSetup()`` (the course network on Fashion-MNIST). If it has a
            ``describe()`` method, its result (e.g. which data) is stored in each ``run.json``
            and a later call that describes itself differently refuses to mix the two.
        epochs: epochs per run (counting the epochs of earlier calls).
        out: the folder of the runs and of ``results.json``, ``results.md`` and ``runs.png``
            (these three describe the runs of this call; each run's own folder keeps its files).
        progress: tqdm progress bars (see ``fit``).
        verbose: print each run's epochs and the final table.
        plot: save ``out/runs.png``, every run's curves in one picture (needs matplotlib; when it
            is missing, a note says how to install it).
        continue_hint: what to tell the user to run to continue after a Ctrl-C.

    Returns:
        The :class:`Results`, best validation accuracy first.

    Raises:
        ValueError: two runs share a name, or ``out`` holds runs trained on other data.
    """
    runs = list(runs)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"run_grid: epochs must be a positive int, got {epochs!r}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run_grid: the runs {dup} appear more than once: each run is trained "
                         f"once, in its own folder")
    if any(not r.name for r in runs):
        raise ValueError("run_grid: a run without settings has no name (and so no folder): give "
                         "grid at least one setting, e.g. grid(lr=[0.01])")
    setup = CourseSetup() if setup is None else setup
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hint = continue_hint or f"call run_grid again with the same runs and out={str(out)!r}"
    results = Results(out=out)
    say = print if verbose else (lambda *a, **k: None)
    index = 0
    try:
        described = setup.describe() if hasattr(setup, "describe") else None
        for index, run in enumerate(runs):
            folder = out / run.name
            what, why = _plan(run, folder, epochs, described)
            head = f"[{index + 1}/{len(runs)}] {run.name}"
            if what == "finished":
                say(f"{head}: done before ({why}), skipped", flush=True)
                results.append(_row(run, folder, "completed", "skipped"))
                continue
            if what == "diverged":
                say(f"{head}: diverged before, skipped (delete {folder} to try again)",
                    flush=True)
                results.append(_row(run, folder, "diverged", "skipped", why))
                continue
            say(f"{head}: " + (f"resuming ({why})" if what == "resume" else
                               f"training {epochs} epochs"), flush=True)
            pieces = _check_setup(setup(run), run)
            folder.mkdir(parents=True, exist_ok=True)
            _write_run_file(folder, run, epochs, described, "running")
            action = "resumed" if what == "resume" else "trained"
            try:
                history = fit(
                    pieces["model"], pieces.get("loss_fn") or _cross_entropy(),
                    pieces["optimizer"], pieces["train_loader"], epochs,
                    val_loader=pieces.get("val_loader"), scheduler=pieces.get("scheduler"),
                    scheduler_interval=pieces.get("scheduler_interval", "epoch"),
                    out_dir=folder, progress=progress, verbose=verbose,
                    resume=folder / CHECKPOINT_FILE if what == "resume" else None,
                    resume_hint=hint, meta={"run": run.name, "settings": run.settings},
                )
            except TrainingDiverged as exc:
                say(f"{head}: {exc}", flush=True)
                _write_run_file(folder, run, epochs, described, "diverged", str(exc))
                results.append(_row(run, folder, "diverged", action, str(exc)))
                _write_results(out, _sorted(results), epochs)
                continue
            _write_run_file(folder, run, epochs, described, history.status, history.message)
            results.append(_row(run, folder, history.status, action, history.message))
            if history.status == "interrupted":
                raise KeyboardInterrupt  # fit saved the run; now stop the grid
            _write_results(out, _sorted(results), epochs)
    except KeyboardInterrupt:
        done = sum(1 for r in results if r["status"] != "interrupted")
        current = runs[index].name if runs else ""
        results = _sorted(results)
        results.status = "interrupted"
        results.message = (
            f"\nThe grid stopped (Ctrl-C) at run {index + 1} of {len(runs)} ({current}): "
            f"{done} done, {len(runs) - done} to go. What was trained is saved in {out} "
            f"(the interrupted run too, to the batch).\nTo continue: {hint}\n(finished runs "
            f"are skipped, an interrupted run resumes exactly where it stopped, nothing is "
            f"trained twice)")
        _write_results(out, results, epochs)
        if verbose and results:
            print("\n" + results.table(), flush=True)
        print(results.message, file=sys.stderr, flush=True)
        return results
    results = _sorted(results)
    _write_results(out, results, epochs)
    if verbose:
        print(f"\nresults ({len(results)} runs, best validation accuracy first; also in "
              f"{out / RESULTS_MD} and {out / RESULTS_JSON}):\n", flush=True)
        print(results.table(), flush=True)
    if plot and any(r["history"] for r in results):
        try:
            plot_runs(results, path=out / PLOT_FILE)
            say(f"curves of every run: {out / PLOT_FILE}", flush=True)
        except ImportError:
            say(f"(no {PLOT_FILE}: drawing needs matplotlib: pip install \"tinynet[plot]\")",
                flush=True)
    return results


def _cross_entropy() -> Any:
    from .nn import CrossEntropyLoss

    return CrossEntropyLoss()


def _sorted(results: Results) -> Results:
    rows = Results(sorted(results, key=_sort_key), out=results.out)  # stable: ties keep order
    rows.status, rows.message = results.status, results.message
    return rows


# ----------------------------------------------------------------------------------------------
# One picture of every run
# ----------------------------------------------------------------------------------------------
def _rows_of(source: Any) -> list[dict]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / RESULTS_JSON
        doc = _read_json(path)
        if doc is None:
            raise FileNotFoundError(f"plot_runs: no results at {path} (run_grid writes "
                                    f"out/{RESULTS_JSON})")
        return doc["runs"]
    rows = list(source)
    if not all(isinstance(r, dict) and "history" in r and "name" in r for r in rows):
        raise TypeError("plot_runs: expected run_grid's Results, its rows (dicts with 'name' and "
                        "'history'), or the path of an out folder / results.json")
    return rows


def plot_runs(source: Any, path: str | os.PathLike | None = None) -> Any:
    """Every run's loss and accuracy per epoch in one picture: one colour per run.

    Solid lines with dots are the validation data, thin dashed lines the training data (measured
    while the weights moved).

    Args:
        source: :func:`run_grid`'s :class:`Results`, a list of its rows, or the path of the out
            folder (or of its ``results.json``).
        path: where to save the PNG (optional).

    Returns:
        the matplotlib Figure (two panels: loss, accuracy). matplotlib is imported only here.
    """
    rows = [r for r in _rows_of(source) if r["history"]]
    if not rows:
        raise ValueError("plot_runs: no run has a finished epoch yet")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_runs needs matplotlib, which is not installed. Install it with: "
                          'pip install "tinynet[plot]"  (or: pip install matplotlib)') from exc
    fig = Figure(figsize=(11.5, 3.8), dpi=80)
    FigureCanvasAgg(fig)  # PNGs without pyplot, no display needed
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(rows))]
    for row, colour in zip(rows, colours, strict=True):
        epochs = [h["epoch"] for h in row["history"]]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
            train = [h.get(f"train_{key}") for h in row["history"]]
            val = [h.get(f"val_{key}") for h in row["history"]]
            ax.plot(epochs, train, "--", color=colour, linewidth=1, alpha=0.7)
            if all(v is not None for v in val):
                ax.plot(epochs, val, "o-", color=colour,
                        label=row["name"] if ax is ax_acc else None)
    for ax, title in ((ax_loss, "loss (lower is better)"),
                      (ax_acc, "accuracy (higher is better)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize="small", title="validation\n(dashed: training)",
                  title_fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80, format="png")
    return fig

