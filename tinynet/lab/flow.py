"""Gradient flow during training: is every layer learning?

``fit(..., monitor=True)`` (or ``monitor=FlowMonitor(every=K)``) records, every ``K`` weight
updates, one line of numbers per step in ``out_dir/flow.jsonl``:

* per parameter (names as in ``model.named_parameters()``: ``0.weight``, ``0.bias``, ...):

  - ``grad_norm`` = ||dL/dW||, the gradient's L2 norm after backward;
  - ``weight_norm`` = ||W||, before the update;
  - ``update_ratio`` = ||W_after - W_before|| / ||W_before||: how much this step *really* changed
    the weights (measured around ``optimizer.step()``, so momentum and weight decay are in it).
    The "1e-3 rule" of thumb: about 1e-3 is healthy; 1e-5 and below, the layer barely learns
    (learning rate too low); 1e-1 and above, it is thrown around (learning rate too high);

* per module (names as in ``model.named_modules()``: ``0``, ``1``, ...): the ``mean`` and ``std``
  of its output on the step's batch, and for a ReLU the share of ``dead`` units: units whose
  output was 0 for every image of the batch (a unit is a feature of a Linear's output, a
  channel, all positions, of a convolution's). A dead unit passes no gradient back, so the
  weights that feed it stop learning.

It warns once (a :class:`FlowWarning`) when a layer's gradient norm is 1e3 times smaller
(vanishing) or larger (exploding) than the next layer's, and when more than half the units after
a ReLU are dead, saying what to try. :func:`tinynet.plot.plot_flow` draws the file.

How the activations are measured: fit may run the network in a faster form in which a ReLU does
not run on its own, so on a monitored step the monitor runs the plain model's modules one by one
itself, on the same batch, inside ``tinynet.no_grad()``, in the model's current mode. That extra
forward pass changes nothing about training: BatchNorm uses the batch's statistics (as the
training forward did) and its running averages are put back afterwards; Dropout is switched off
for it (no random mask is drawn, so the random numbers of training stay the same; the numbers
after a Dropout are those without dropping, whose mean is the same). Training with the monitor
gives the same weights, bit for bit, as training without it. A network that is not a
:class:`~tinynet.nn.Sequential` is run as one module (only its output is measured); nested
Sequentials are walked into.

Cost: nothing on the other steps (``fit`` asks ``monitor.due(...)`` and moves on); on a
monitored step, one forward pass without gradients and a copy of the weights.

Example::

    from tinynet.lab.flow import FlowMonitor
    fit(model, loss_fn, optimizer, loader, epochs=2, out_dir="runs/a", monitor=FlowMonitor(10))
    tinynet.plot.plot_flow("runs/a/flow.jsonl", path="runs/a/flow.png")
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from itertools import pairwise
from pathlib import Path
from typing import Any

from .. import backend as B
from ..nn.activation import ReLU
from ..nn.dropout import Dropout
from ..nn.module import Module, Sequential

FLOW_FILE = "flow.jsonl"
GAP = 1e3  # a gradient norm this many times smaller/larger than the next layer's: a warning
DEAD_SHARE = 0.5  # more than this share of dead units after a ReLU: a warning

__all__ = ["DEAD_SHARE", "FLOW_FILE", "GAP", "FlowMonitor", "FlowWarning", "flow_problems",
           "read_flow"]


class FlowWarning(UserWarning):
    """Gradients vanish or explode between two layers, or most of a ReLU's units are dead."""


# ----------------------------------------------------------------------------------------------
# The numbers
# ----------------------------------------------------------------------------------------------
def _norm(a: Any) -> float:
    """||a||, the L2 (Frobenius) norm of every entry, summed in float64 on a's device."""
    xp = B.backend_of(a).xp
    a64 = a.astype(xp.float64)
    return float(xp.sqrt((a64 * a64).sum()))


def _mean_std(a: Any) -> tuple[float, float]:
    xp = B.backend_of(a).xp
    a64 = a.astype(xp.float64)
    return float(a64.mean()), float(a64.std())


def _dead_share(h: Any) -> float | None:
    """Share of units of a ReLU output ``h`` that are 0 for every image of the batch.

    ``h``: (N, F) -> F units (features); (N, C, ...) -> C units (channels, over all positions).
    """
    if h.ndim < 2 or h.shape[0] == 0:
        return None
    axes = (0,) + tuple(range(2, h.ndim))
    alive = (h > 0).any(axis=axes)  # (F,) or (C,): fired at least once
    return (int(alive.size) - int(alive.sum())) / int(alive.size)


def _leaves(module: Module, prefix: str = "") -> list[tuple[str, Module]]:
    """``(name, module)`` in the order a Sequential runs them, nested Sequentials walked into."""
    if isinstance(module, Sequential):
        out = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or type(module).__name__, module)]


class _Parked:
    """A forward pass that leaves no trace: Dropout off, every buffer restored afterwards.

    Buffers (BatchNorm's running averages, its batch count) are copied and written back *into
    the same arrays*, so any other holder of those arrays sees them unchanged too.
    """

    def __init__(self, model: Module) -> None:
        self.model = model

    def __enter__(self) -> _Parked:
        self.dropouts = [m for m in self.model.modules() if isinstance(m, Dropout) and m.training]
        for m in self.dropouts:
            m.train(False)
        self.buffers = []
        for m in self.model.modules():
            for name, b in m.named_buffers():
                if "." not in name and b is not None:  # the module's own buffers
                    self.buffers.append((m, name, b, B.backend_of(b).xp.array(b, copy=True)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in self.dropouts:
            m.train(True)
        for m, name, original, saved in self.buffers:
            if getattr(m, name) is not original:
                setattr(m, name, original)
            original[...] = saved


def activation_stats(model: Module, x: Any) -> dict[str, dict]:
    """Run ``x`` through ``model``'s modules one by one (no gradients, no trace left behind).

    Returns:
        ``{module name: {'type', 'mean', 'std'[, 'dead']}}`` in the order the modules ran;
        ``dead`` (ReLUs only) is the share of units that were 0 for the whole batch.
    """
    stats: dict[str, dict] = {}
    with _Parked(model), B.no_grad():
        h = x
        for name, m in _leaves(model):
            h = m(h)
            mean, std = _mean_std(h)
            entry: dict[str, Any] = {"type": type(m).__name__, "mean": mean, "std": std}
            if isinstance(m, ReLU):
                entry["dead"] = _dead_share(h)
            stats[name] = entry
    return stats


# ----------------------------------------------------------------------------------------------
# What is wrong, and what to try
# ----------------------------------------------------------------------------------------------
def _layers(record: dict) -> list[tuple[str, float]]:
    """The record's layers, first to last: ``(name, grad_norm)`` of every weight with >= 2 axes."""
    return [(name, p["grad_norm"]) for name, p in record["params"].items()
            if p.get("ndim", 0) >= 2 and p.get("grad_norm") is not None
            and math.isfinite(p["grad_norm"])]


def _module_type(record: dict, param_name: str) -> str:
    entry = record.get("modules", {}).get(param_name.rpartition(".")[0])
    return f" ({entry['type']})" if entry else ""


def flow_problems(record: dict, gap: float = GAP, dead_share: float = DEAD_SHARE
                  ) -> list[tuple[str, str]]:
    """What looks wrong in one record: ``[(kind, message), ...]``, kind in ``'vanishing'``,
    ``'exploding'``, ``'dead'``.

    Two neighbouring layers ``a`` (earlier) and ``b`` (later) compare gradient norms: the
    gradient reaches ``a`` *through* ``b`` (backpropagation runs from the loss backwards), so
    ``||dL/dW_a|| * gap < ||dL/dW_b||`` means it vanished on the way (layer ``a`` and those before
    it barely learn), ``||dL/dW_a|| > gap * ||dL/dW_b||`` that it exploded.
    """
    found = []
    step = record.get("step")
    layers = _layers(record)
    for (a, ga), (b, gb) in pairwise(layers):
        what = (f"at step {step}, layer {a}{_module_type(record, a)} has a gradient norm "
                f"||dL/dW|| = {ga:.3g}, ")
        if ga * gap < gb:
            times = f"{gb / ga:.3g} times" if ga > 0 else "infinitely"
            found.append(("vanishing", (
                f"gradient flow: vanishing gradients: {what}{times} smaller than the next layer "
                f"{b}{_module_type(record, b)} ({gb:.3g}; more than {gap:g} times is a warning). "
                f"{a} and the layers before it barely learn. Try: He (Kaiming) initialisation "
                f"for layers followed by a ReLU (tinynet.nn.init.kaiming_uniform(shape, fan_in, "
                f"a=0)); BatchNorm after the layers; fewer layers; inputs normalised to mean 0, "
                f"std 1; and look for dead ReLUs ('dead' in flow.jsonl).")))
        elif ga > gap * gb:
            times = f"{ga / gb:.3g} times" if gb > 0 else "infinitely"
            found.append(("exploding", (
                f"gradient flow: exploding gradients: {what}{times} larger than the next layer "
                f"{b}{_module_type(record, b)} ({gb:.3g}; more than {gap:g} times is a warning). "
                f"Its updates are huge and training may diverge. Try: a lower learning rate "
                f"(e.g. a tenth); inputs normalised to mean 0, std 1; BatchNorm after the "
                f"layers; a smaller initialisation of the layers after {a}.")))
    for name, m in record.get("modules", {}).items():
        share = m.get("dead")
        if share is not None and share > dead_share:
            found.append(("dead", (
                f"gradient flow: dead ReLUs: at step {step}, {100 * share:.0f}% of the units "
                f"after ReLU {name} were 0 for every image of the batch (more than "
                f"{100 * dead_share:.0f}% is a warning). A dead unit passes no gradient, so the "
                f"weights feeding it stop learning, often for good. Try: a lower learning rate "
                f"(one large step can push a unit's bias so low that it never fires again); He "
                f"(Kaiming) initialisation (tinynet.nn.init.kaiming_uniform(shape, fan_in, "
                f"a=0)); BatchNorm before the ReLU; inputs normalised to mean 0, std 1.")))
    return found


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside tinynet (the user's fit call) for warnings."""
    root = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(root):
        frame, level = frame.f_back, level + 1
    return level


def read_flow(path: str | os.PathLike) -> list[dict]:
    """The records of a ``flow.jsonl`` file (or of the folder holding it), one dict per line."""
    path = Path(path)
    if path.is_dir():
        path = path / FLOW_FILE
    if not path.exists():
        raise FileNotFoundError(f"no gradient-flow file at {path} (fit(..., monitor=True, "
                                f"out_dir=...) writes out_dir/{FLOW_FILE})")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# ----------------------------------------------------------------------------------------------
# The monitor
# ----------------------------------------------------------------------------------------------
class FlowMonitor:
    """Records gradient flow every ``every`` weight updates; pass it to ``fit(monitor=...)``.

    Args:
        every: record the updates number 1, 1 + every, 1 + 2 * every, ... (counted from the
            start of training, across epochs and resumed runs).
        out_dir: folder for ``flow.jsonl`` (default: fit's ``out_dir``; None and no out_dir:
            the records are kept in :attr:`records` only).
        warn: issue the :class:`FlowWarning` s (each kind once per monitor).

    Attributes:
        records: every record of this run (those already in ``flow.jsonl`` when resuming
            included), one dict per monitored step::

                {"step": 41, "epoch": 2, "batch": 9, "lr": 0.01,
                 "params": {"0.weight": {"ndim": 4, "grad_norm": ..., "weight_norm": ...,
                                         "update_ratio": ...}, ...},
                 "modules": {"0": {"type": "Conv2d", "mean": ..., "std": ...},
                             "1": {"type": "ReLU", "mean": ..., "std": ..., "dead": 0.0}, ...}}

            ``step`` is the update's number since training began (``(epoch - 1) *
            len(train_loader) + batch``; for a loader without a length, counted from the start of
            this call of fit), ``batch`` its number in the epoch (both 1-based).
        path: the ``flow.jsonl`` being written, or None.
        warned: ``{kind: message}`` of the warnings given (kinds: ``'vanishing'``,
            ``'exploding'``, ``'dead'``).

    fit calls, in this order: ``start`` once, then per update ``due``, and when it says True
    ``before_step`` (after backward) and ``after_step`` (after ``optimizer.step()``).
    """

    def __init__(self, every: int = 10, out_dir: str | os.PathLike | None = None,
                 warn: bool = True) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"FlowMonitor: every must be an int >= 1 (record every that many "
                             f"weight updates), got {every!r}")
        self.every = every
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.warn = bool(warn)
        self.records: list[dict] = []
        self.path: Path | None = None
        self.warned: dict[str, str] = {}
        self._last: tuple[int, int] | None = None
        self._steps_per_epoch: int | None = None
        self._count = 0
        self._pending: dict | None = None

    def __repr__(self) -> str:
        return f"FlowMonitor(every={self.every}, path={str(self.path) if self.path else None!r})"

    # -- fit's hooks ------------------------------------------------------------------------
    def start(self, model: Module, out_dir: str | os.PathLike | None = None,
              append: bool = False, steps_per_epoch: int | None = None) -> None:
        """A run begins. ``append``: it continues an earlier one (``resume``), so the records
        already in ``flow.jsonl`` are kept and their steps are not recorded again; otherwise the
        file is started afresh (as ``history.jsonl`` is)."""
        folder = self.out_dir if self.out_dir is not None else (
            Path(out_dir) if out_dir is not None else None)
        self.path = folder / FLOW_FILE if folder is not None else None
        self._steps_per_epoch = steps_per_epoch
        self._count, self._pending, self._last = 0, None, None
        if not append:
            self.records = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if append and self.path.exists():
                self.records = read_flow(self.path)
            else:
                self.path.write_text("", encoding="utf-8")
        if self.records:
            self._last = (self.records[-1]["epoch"], self.records[-1]["batch"])

    def due(self, epoch: int, batch: int) -> bool:
        """Is update number ``batch`` (1-based) of epoch ``epoch`` (0-based) one to record?"""
        self._count += 1
        if self._steps_per_epoch:
            step = epoch * self._steps_per_epoch + batch
        else:
            step = self._count
        key = (epoch + 1, batch)
        if (step - 1) % self.every or (self._last is not None and key <= self._last):
            return False  # not this step, or already in flow.jsonl (a resumed run)
        self._pending = {"step": step, "epoch": epoch + 1, "batch": batch}
        return True

    def before_step(self, model: Module, x: Any) -> None:
        """After backward, before the update: gradient and weight norms, a copy of the weights,
        and the activations of ``x`` (the step's batch)."""
        pending = self._pending
        if pending is None:
            raise RuntimeError("FlowMonitor.before_step: call due(epoch, batch) first (fit does)")
        params = {}
        pending["before"] = {}
        for name, p in model.named_parameters():
            params[name] = {"ndim": int(p.data.ndim),
                            "grad_norm": _norm(p.grad) if p.grad is not None else None,
                            "weight_norm": _norm(p.data)}
            pending["before"][name] = B.backend_of(p.data).xp.array(p.data, copy=True)
        pending["params"] = params
        pending["modules"] = activation_stats(model, x)

    def after_step(self, model: Module, optimizer: Any = None) -> dict:
        """After ``optimizer.step()``: the real change of every weight; the record is written out
        (one JSON line) and checked; returns it."""
        pending, self._pending = self._pending, None
        if pending is None or "before" not in pending:
            raise RuntimeError("FlowMonitor.after_step: call before_step first (fit does)")
        before = pending.pop("before")
        for name, p in model.named_parameters():
            w0 = before[name]
            w_norm = pending["params"][name]["weight_norm"]
            # the update the optimizer really made: ||W_after - W_before|| / ||W_before||
            pending["params"][name]["update_ratio"] = (
                _norm(p.data - w0) / w_norm if w_norm > 0 else None)
        groups = getattr(optimizer, "param_groups", None)
        record = {"step": pending["step"], "epoch": pending["epoch"], "batch": pending["batch"],
                  "lr": float(groups[0]["lr"]) if groups else None,
                  "params": pending["params"], "modules": pending["modules"]}
        self.records.append(record)
        self._last = (record["epoch"], record["batch"])
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()  # in the OS's hands: a Ctrl-C or a crash right after keeps it
        if self.warn:
            for kind, message in flow_problems(record):
                if kind not in self.warned:
                    self.warned[kind] = message
                    warnings.warn(message, FlowWarning, stacklevel=_caller_stacklevel())
        return record
