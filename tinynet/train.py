"""Training loop: :func:`fit` trains a model for some epochs, :func:`evaluate` measures it.

:func:`fit` is the course's seven steps of training, written out once::

    for epoch in range(epochs):                 # 7. repeat for as many epochs as we want
        for x, y in train_loader:               # 1. get a batch   (6. repeat until the epoch's
            logits = model(x)                   # 2. forward           data is used up)
            loss = loss_fn(logits, y)           # 3. loss
            model.backward(loss_fn.backward())  # 4. gradients, by backpropagation
            optimizer.step()                    # 5. update the weights

around which it adds what a real run needs: a progress bar, a history of every epoch
(``history.jsonl``), checkpoints (``last.npz``) to resume from, and clean stops on Ctrl-C and
when the loss blows up.

What happens when training stops early:

* **Ctrl-C** (KeyboardInterrupt): the batch being processed is finished or dropped, the current
  state is saved to ``out_dir/last.npz`` (weights, momentum, scheduler, the loader's position in
  the epoch, the epoch's running sums) and :func:`fit` *returns* its :class:`History` with
  ``status == 'interrupted'`` after printing how to resume. Resuming
  (``fit(..., resume='out_dir/last.npz')``) continues in the middle of that epoch, with the same
  batches in the same order: the result is the same as if there had been no interruption. The
  weight update (step 5) is never cut in half: a Ctrl-C arriving during it takes effect right after
  it (a second Ctrl-C during the update forces the stop, and then nothing is saved).
* **The loss becomes NaN or inf** (usually: the learning rate is too high): :func:`fit` raises
  :class:`TrainingDiverged` with a message suggesting a lower learning rate. The broken weights
  are *not* saved: ``last.npz`` stays the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import backend as B
from . import checkpoint as ckpt_io
from .fast import fuse as fuse_model
from .nn.loss import CrossEntropyLoss

HISTORY_KEYS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
)
HISTORY_FILE = "history.jsonl"
CHECKPOINT_FILE = "last.npz"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint was kept.

    Attributes:
        epoch: the epoch (1-based) in which it happened; batch: the batch (1-based) in it.
        loss: the loss value (nan or inf).
        checkpoint: the last good checkpoint (a Path), or None when none was written.
        history: the :class:`History` of the epochs completed before.
    """

    def __init__(self, message: str, *, epoch: int, batch: int, loss: float,
                 checkpoint: Path | None, history: History) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.loss = epoch, batch, loss
        self.checkpoint, self.history = checkpoint, history


class History(list):
    """What :func:`fit` returns: a list with one dict per epoch, plus how the run ended.

    Each entry has the keys :data:`HISTORY_KEYS`: ``epoch`` (1-based), ``train_loss`` and
    ``train_acc`` (averaged over the epoch's training batches, measured while the weights moved),
    ``val_loss`` and ``val_acc`` (:func:`evaluate` on ``val_loader`` after the epoch, or None),
    ``lr`` (the first parameter group's learning rate at the start of the epoch), ``seconds``
    (wall time of the whole epoch, validation included) and ``images_per_s`` (training images per
    second of training time).

    Attributes:
        status: ``'completed'`` or ``'interrupted'`` (Ctrl-C).
        checkpoint: the last checkpoint written (a Path), or None.
        message: for an interrupted run, what was saved and how to resume.
    """

    def __init__(self, entries: Iterable[dict] = ()) -> None:
        super().__init__(entries)
        self.status = "completed"
        self.checkpoint: Path | None = None
        self.message = ""


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def evaluate(model: Any, loader: Iterable, loss_fn: Any = None) -> dict:
    """Mean loss and accuracy of ``model`` over every batch of ``loader``, without training.

    ``accuracy = (number of images whose highest score is the true class) / (number of images)``.

    Args:
        model: the network; it is put in evaluation mode (``model.eval()``) for the pass and given
            back its previous mode afterwards.
        loader: batches ``(x, y)`` (a :class:`~tinynet.data.DataLoader`). Only one batch is in
            memory at a time. (Avoid a shuffling training loader here: iterating it draws a new
            order and so changes which batches the next training epoch sees.)
        loss_fn: the loss (default: ``CrossEntropyLoss()``).

    Returns:
        ``{'loss': mean over images, 'accuracy': fraction in [0, 1]}`` (Python floats).

    Runs inside ``tinynet.no_grad()``: no module keeps a backward cache.
    """
    loss_fn = CrossEntropyLoss() if loss_fn is None else loss_fn
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    try:
        with B.no_grad():
            for x, y in loader:
                logits = model(x)
                n = int(y.shape[0])
                total_loss += float(loss_fn(logits, y)) * n  # the loss is a batch mean
                correct += int((logits.argmax(axis=1) == y).sum())
                seen += n
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the loader gave no batches (is the dataset empty?)")
    return {"loss": total_loss / seen, "accuracy": correct / seen}


# ----------------------------------------------------------------------------------------------
# Helpers: progress bar, history file, Ctrl-C during the weight update
# ----------------------------------------------------------------------------------------------
def _progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on stderr, or None when off, when stderr is not a terminal or tqdm is absent."""
    if not enabled or os.environ.get("TINYNET_PROGRESS", "1") == "0":
        return None
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is None or not isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is the optional extra 'progress'
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", file=sys.stderr,
                leave=True, dynamic_ncols=True)


def _write_history(path: Path, entries: list[dict]) -> None:
    """Replace ``path`` with ``entries`` as JSON lines (atomically)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for entry in entries:
                f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append_history(path: Path, entry: dict) -> None:
    """Add one epoch's line to ``history.jsonl`` and push it to disk right away."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _DeferCtrlC:
    """Inside this block a first Ctrl-C waits until the block ends (a second one stops at once).

    The weight update changes the parameters one after the other; stopping half-way would leave a
    network that is neither the old one nor the new one. Only the main thread receives signals,
    so elsewhere this block does nothing.
    """

    def __enter__(self) -> _DeferCtrlC:
        self.pending = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):
                self._old = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.pending:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.pending = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        if self.pending and exc_type is None:
            raise KeyboardInterrupt


def _current_lr(optimizer: Any) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


def _all_finite(model: Any) -> bool:
    for p in model.parameters():
        if not bool(B.backend_of(p.data).xp.isfinite(p.data).all()):
            return False
    return True


def _format_epoch(entry: dict, epochs: int) -> str:
    text = (f"epoch {entry['epoch']}/{epochs}  train loss {entry['train_loss']:.4f} "
            f"acc {entry['train_acc']:.4f}")
    if entry["val_loss"] is not None:
        text += f" | val loss {entry['val_loss']:.4f} acc {entry['val_acc']:.4f}"
    if entry["lr"] is not None:
        text += f" | lr {entry['lr']:.3g}"
    return text + f" | {entry['seconds']:.1f} s, {entry['images_per_s']:.0f} images/s"


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------
def fit(
    model: Any,
    loss_fn: Any,
    optimizer: Any,
    train_loader: Iterable,
    epochs: int,
    val_loader: Iterable | None = None,
    scheduler: Any = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    checkpoint_every: int = 1,
    start_epoch: int = 0,
    *,
    scheduler_interval: str = "epoch",
    resume: str | os.PathLike | None = None,
    verbose: bool = True,
    resume_hint: str | None = None,
    meta: dict | None = None,
    monitor: Any = None,
    fuse: bool = True,
) -> History:
    """Train ``model`` until ``epochs`` epochs are done; return the :class:`History`.

    Args:
        model: the network (a :class:`tinynet.nn.Module`).
        loss_fn: e.g. ``tinynet.nn.CrossEntropyLoss()``; ``loss_fn.backward()`` starts backprop.
        optimizer: e.g. ``tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)``.
        train_loader: batches ``(x, y)``, one pass = one epoch. A
            :class:`~tinynet.data.DataLoader` (it has ``state_dict``) resumes mid-epoch exactly.
            ``len(train_loader)`` is the number of iterations per epoch, ``ceil(N / batch_size)``.
        epochs: train until this many epochs are done in total (counting resumed ones).
        val_loader: optional batches to :func:`evaluate` on after every epoch.
        scheduler: optional learning-rate schedule: any object with ``step()``, ``state_dict()``
            and ``load_state_dict()``; stepped once per epoch (after validation), or after every
            weight update with ``scheduler_interval='batch'``.
        out_dir: folder for ``history.jsonl`` (one JSON line per epoch, written as each epoch
            ends) and the checkpoint ``last.npz``. None: nothing is written.
        progress: show a tqdm bar per epoch on stderr (loss, accuracy, images/s). It is off
            anyway when stderr is not a terminal, when tqdm is not installed, or when the
            environment variable ``TINYNET_PROGRESS=0``.
        checkpoint_every: write ``last.npz`` every this many epochs (and always after the last
            one); 0: only after the last one.
        start_epoch: the first epoch's index (0-based) when you restore the state yourself;
            ``history.jsonl`` is then appended to rather than started afresh.
        scheduler_interval: ``'epoch'`` (default) or ``'batch'``.
        resume: a checkpoint written by ``fit`` (``out_dir/last.npz``): restores the weights,
            the optimizer, the scheduler, the loader's position, the random generator and the
            history, then continues where that run stopped (``start_epoch`` is ignored).
        verbose: print one line per epoch (loss, accuracy, lr, time) on stdout.
        resume_hint: the command to print after a Ctrl-C to continue (e.g. the example script's
            ``--resume`` command line).
        meta: extra JSON-friendly data stored in every checkpoint (e.g. the run's settings).
        fuse: train and evaluate a fused copy of the model (:func:`tinynet.fuse`: each
            Conv2d+ReLU(+MaxPool2d) and Linear+ReLU as one call, sharing the model's
            Parameters, buffers and mode): the same numbers bit for bit, except that a
            Conv2d+BatchNorm2d group evaluates as one folded convolution (equal to rounding);
            False runs the model's modules one by one.
        monitor: watch the gradient flow: True for a :class:`tinynet.lab.flow.FlowMonitor` with
            its defaults, or a monitor object (``FlowMonitor(every=K)``). Every K updates it
            records each layer's gradient and weight norms, its update/weight ratio, the
            activations and dead ReLUs, in ``out_dir/flow.jsonl`` (appended to on resume), and
            warns on vanishing or exploding gradients and on dead ReLUs. None (default): nothing
            is measured and nothing costs extra.

    Returns:
        The :class:`History` (a list of per-epoch dicts) with ``status`` ``'completed'`` or
        ``'interrupted'``.

    Raises:
        TrainingDiverged: the loss became NaN or inf (the last good checkpoint is kept).
    """
    if scheduler_interval not in ("epoch", "batch"):
        raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'batch', "
                         f"got {scheduler_interval!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"fit: checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    if scheduler is not None and not all(
        hasattr(scheduler, name) for name in ("step", "state_dict", "load_state_dict")
    ):
        raise TypeError(f"fit: a scheduler needs step(), state_dict() and load_state_dict(); "
                        f"got {type(scheduler).__name__}")
    if monitor is True or monitor is False:
        from .lab.flow import FlowMonitor

        monitor = FlowMonitor() if monitor else None
    if monitor is not None and not all(
        hasattr(monitor, name) for name in ("start", "due", "before_step", "after_step")
    ):
        raise TypeError(f"fit: monitor must be True or an object with start(), due(), "
                        f"before_step() and after_step() (a tinynet.lab.flow.FlowMonitor); "
                        f"got {type(monitor).__name__}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    history_path = out / HISTORY_FILE if out is not None else None
    stateful = hasattr(train_loader, "state_dict") and hasattr(train_loader, "load_state_dict")
    history = History()

    # Where to start: epoch index, batches of it already done, and that epoch's running sums.
    epoch, skip, partial = int(start_epoch), 0, None
    if resume is not None:
        saved = ckpt_io.load_into(resume, model, optimizer, scheduler=scheduler,
                                  loader=train_loader if stateful else None, restore_rng=True,
                                  require=("epochs_completed", "batch", "partial"))
        epoch, skip, partial = saved["epochs_completed"], saved["batch"], saved["partial"]
        history.extend(saved.get("history", []))
        if stateful:
            skip = 0  # the loader itself starts after the batches already done
        if verbose:
            where = f"epoch {epoch + 1}, batch {saved['batch'] + 1}" if saved["batch"] else \
                f"the start of epoch {epoch + 1}"
            print(f"resumed from {resume}: continuing at {where}", flush=True)
    if history_path is not None:
        if resume is not None or start_epoch == 0:
            _write_history(history_path, list(history))  # a fresh file, or the resumed history
    history.checkpoint = ckpt_path if ckpt_path is not None and ckpt_path.exists() else None

    def save_checkpoint(epochs_completed: int, batch: int, partial_sums: dict | None,
                        loader_state: dict | None, status: str) -> Path | None:
        if ckpt_path is None:
            return None
        ckpt_io.save(
            ckpt_path, model=model, optimizer=optimizer,
            epochs_completed=epochs_completed, batch=batch, partial=partial_sums,
            status=status, epochs=int(epochs), history=list(history),
            train_loader=loader_state,
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            scheduler_interval=scheduler_interval,
            rng=B.get_rng_state(), meta=meta,
        )
        history.checkpoint = ckpt_path
        return ckpt_path

    if epoch >= epochs:
        if verbose:
            print(f"nothing to do: {epoch} epochs already done (epochs={epochs})", flush=True)
        return history

    # what runs the batches: the model, or its fused copy (same Parameters, same numbers)
    net = fuse_model(model) if fuse else model
    n_batches = len(train_loader) if hasattr(train_loader, "__len__") else None
    if monitor is not None:  # flow.jsonl: afresh, or appended to as history.jsonl is
        monitor.start(model, out_dir=out, append=resume is not None or start_epoch > 0,
                      steps_per_epoch=n_batches)
    # The state of the run at the last consistent point, for a Ctrl-C at any moment:
    stage = "start"  # 'train': inside epoch `epoch`; 'closed': epoch `epoch` fully finished
    t_epoch = time.perf_counter()
    sums: dict = {}
    loader_start: dict | None = None
    updating = False
    bar = None
    try:
        while epoch < epochs:  # 7. repeat for the epochs
            t_epoch = time.perf_counter()
            net.train()
            lr = _current_lr(optimizer)
            # The loader's state before this epoch's shuffle: with `batch` set to the batches
            # done, it is the loader's exact position at any point of the epoch.
            # (A loader restored in the middle of an epoch also reports that epoch's start here.)
            loader_start = train_loader.state_dict() if stateful else None
            sums = dict(partial) if partial is not None else dict(
                loss_sum=0.0, correct=0, seen=0, batches=0, train_seconds=0.0, seconds=0.0)
            partial = None
            stage = "train"
            bar = _progress_bar(progress, n_batches or 0, sums["batches"],
                                f"epoch {epoch + 1}/{epochs}")
            batches = iter(train_loader)
            for _ in range(skip):  # resuming a loader without state: drop the batches done
                next(batches)
            skip = 0
            t_train = time.perf_counter()
            t_done = t_train
            for x, y in batches:  # 1. get a batch (6. repeat until the epoch's data is used up)
                logits = net(x)  # 2. forward propagation: the class scores (N, 10)
                try:
                    loss = loss_fn(logits, y)  # 3. the loss: how wrong the scores are
                except ValueError:
                    if bool(B.backend_of(logits).xp.isfinite(logits).all()):
                        raise  # a genuine mistake (wrong labels, shapes), not a divergence
                    loss = float("nan")
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise _diverged(loss_value, epoch, sums["batches"], optimizer, ckpt_path,
                                    history)
                correct = int((logits.argmax(axis=1) == y).sum())
                optimizer.zero_grad()
                # 4. gradients dL/dw by backpropagation; the images learn nothing, so a model that
                #    can (Sequential, Conv2d, Linear) skips the costly gradient for its input
                if getattr(type(net), "accepts_input_grad", False):
                    net.backward(loss_fn.backward(), input_grad=False)
                else:
                    net.backward(loss_fn.backward())
                watch = monitor is not None and monitor.due(epoch, sums["batches"] + 1)
                if watch:  # gradient flow: the norms, the activations, the weights before
                    monitor.before_step(model, x)
                with _DeferCtrlC():  # Ctrl-C waits: an update is all or nothing
                    updating = True
                    optimizer.step()  # 5. update the weights: w <- w - lr * (smoothed) gradient
                    if watch:  # ... and how much the update changed them
                        monitor.after_step(model, optimizer)
                    if scheduler is not None and scheduler_interval == "batch":
                        scheduler.step()
                    n = int(y.shape[0])
                    sums["loss_sum"] += loss_value * n
                    sums["correct"] += correct
                    sums["seen"] += n
                    sums["batches"] += 1
                    now = time.perf_counter()
                    sums["train_seconds"] += now - t_done
                    t_done = now
                    updating = False
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{sums['loss_sum'] / sums['seen']:.4f}",
                        acc=f"{sums['correct'] / sums['seen']:.4f}",
                        img_s=f"{sums['seen'] / max(sums['train_seconds'], 1e-9):.0f}",
                        refresh=False)
            if bar is not None:
                bar.close()
                bar = None
            if sums["seen"] == 0:
                raise ValueError("fit: the training loader gave no batches (empty dataset?)")

            # The epoch's training is done; measure on the validation data.
            val = evaluate(net, val_loader, loss_fn) if val_loader is not None else None
            with _DeferCtrlC():  # closing the epoch: schedule, history, all or nothing
                updating = True
                if scheduler is not None and scheduler_interval == "epoch":
                    scheduler.step()
                seconds = sums["seconds"] + time.perf_counter() - t_epoch
                entry = {
                    "epoch": epoch + 1,
                    "train_loss": sums["loss_sum"] / sums["seen"],
                    "train_acc": sums["correct"] / sums["seen"],
                    "val_loss": val["loss"] if val else None,
                    "val_acc": val["accuracy"] if val else None,
                    "lr": lr,
                    "seconds": seconds,
                    "images_per_s": sums["seen"] / max(sums["train_seconds"], 1e-9),
                }
                history.append(entry)
                stage = "closed"
                updating = False
            if history_path is not None:
                _append_history(history_path, entry)
            if verbose:
                print(_format_epoch(entry, epochs), flush=True)
            last = epoch + 1 == epochs
            if ckpt_path is not None and (last or (checkpoint_every and
                                                   (epoch + 1) % checkpoint_every == 0)):
                if not _all_finite(model):
                    raise _diverged(float("nan"), epoch, sums["batches"] - 1, optimizer,
                                    ckpt_path, history, weights=True)
                save_checkpoint(epoch + 1, 0, None,
                                train_loader.state_dict() if stateful else None, "epoch_end")
            stage = "start"
            epoch += 1
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if stage == "train":
            sums = dict(sums, seconds=sums["seconds"] + time.perf_counter() - t_epoch)
        history.status = "interrupted"
        history.message = _interrupted(
            stage, updating, epoch, sums, loader_start,
            train_loader.state_dict() if stateful and stage == "closed" else None,
            n_batches, save_checkpoint, resume_hint, history)
        print(history.message, file=sys.stderr, flush=True)
        return history
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    return history


def _interrupted(stage: str, updating: bool, epoch: int, sums: dict, loader_start: dict | None,
                 loader_now: dict | None, n_batches: int | None, save_checkpoint: Any,
                 resume_hint: str | None, history: History) -> str:
    """Save what can be saved after a Ctrl-C; return the message for the user."""
    if updating:
        saved, where = None, "a forced stop in the middle of a weight update"
    elif stage == "train":
        batch = sums["batches"]
        loader_state = None if loader_start is None else dict(loader_start, batch=batch)
        saved = save_checkpoint(epoch, batch, sums, loader_state, "interrupted")
        total = f"/{n_batches}" if n_batches else ""
        where = f"epoch {epoch + 1}, after batch {batch}{total}"
    elif stage == "closed":
        # the epoch is complete (history written); the checkpoint may not be
        saved = save_checkpoint(epoch + 1, 0, None, loader_now, "epoch_end")
        where = f"the end of epoch {epoch + 1}"
    else:
        saved, where = None, f"the start of epoch {epoch + 1}"
    lines = [f"\nTraining interrupted (Ctrl-C) at {where}."]
    if saved is not None:
        lines.append(f"The state is saved in {saved}: resuming continues exactly from there.")
    elif history.checkpoint is not None:
        lines.append(f"Nothing new was saved; the last checkpoint is {history.checkpoint}.")
    else:
        lines.append("Nothing was saved (no out_dir given).")
    if history.checkpoint is not None:
        lines.append("To resume: " + (resume_hint or
                                      f"fit(..., resume='{history.checkpoint}')"))
    return "\n".join(lines)


def _diverged(loss: float, epoch: int, batch: int, optimizer: Any, ckpt_path: Path | None,
              history: History, weights: bool = False) -> TrainingDiverged:
    lr = _current_lr(optimizer)
    what = "the weights are no longer finite numbers" if weights else f"the loss is {loss}"
    lines = [f"Training diverged in epoch {epoch + 1}, batch {batch + 1}: {what}."]
    if lr is not None:
        lines.append(f"The learning rate {lr:g} is probably too high: try a lower one, "
                     f"e.g. {lr / 10:g} (and check that the inputs are normalised).")
    if ckpt_path is not None and ckpt_path.exists():
        lines.append(f"The last good checkpoint is kept, unchanged: {ckpt_path}.")
    else:
        lines.append("No checkpoint had been written yet.")
    return TrainingDiverged(" ".join(lines), epoch=epoch + 1, batch=batch + 1, loss=loss,
                            checkpoint=ckpt_path if ckpt_path and ckpt_path.exists() else None,
                            history=history)


__all__ = ["HISTORY_KEYS", "History", "TrainingDiverged", "evaluate", "fit"]
