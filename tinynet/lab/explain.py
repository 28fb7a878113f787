"""One backward pass explained, module by module, with its numbers.

"Why is this gradient what it is?" :func:`explain_backward` answers it for one real image (or a
tiny batch): it runs the modules of a :class:`~tinynet.nn.Sequential` one by one, keeping every
input and output, computes the loss, then walks backward from the loss to the first layer,
calling each module's ``backward`` itself and keeping every upstream gradient. For each module
it writes down:

* the gradient that arrives (dL/d its output): its shape and a few of its numbers;
* the module's local rule, in words and symbols (Linear: ``dW = dY^T X``, ``dX = dY W``, ...);
* one entry worked out with the numbers filled in, e.g.
  ``dL/dW[3,0,1,2] = sum over 64 output pixels of dY * x_pad = (0.012)(0.53) + ... = 0.0123``,
  computed here from the kept arrays with the textbook formula (NumPy, float64, on the host) and
  checked against the array the module's backward produced ("matches", with the difference);
* for a max pool, one window with its values, the one that won and where its gradient went.

The model is left as it was: the walk runs on a copy (parameters, their ``.grad``, buffers such
as BatchNorm's running averages, and the training/evaluation mode stay untouched) and tinynet's
random generators are restored afterwards (a Dropout draws its mask from them).

Example::

    >>> from tinynet.lab.explain import explain_backward, sample_batch
    >>> x, y = sample_batch(1)                     # one image of the embedded sample
    >>> ex = explain_backward(course_cnn(), x, y)  # any Sequential of tinynet's modules
    >>> print(ex)                                  # plain text; ex.markdown() for Markdown

From the command line: ``python -m tinynet.lab.explain --markdown`` (or
``examples/04_explain_backward.py``).

Host-only reporting code: the formulas run on NumPy copies made by ``tinynet.to_numpy``, so the
explanation works the same for a model on a GPU.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import backend as B
from ..nn import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
)

__all__ = [
    "Explanation",
    "Step",
    "WorkedEntry",
    "explain_backward",
    "main",
    "sample_batch",
]

# a float32 sum of n products is off by at most about n * 6e-8 of the sum of |products|; this
# much of that sum (or of |value|) is the tolerance of "matches" (float64: 1e-10)
_RTOL = {4: 1e-4, 8: 1e-10}


# ------------------------------------------------------------------------------------------------
# What an explanation holds
# ------------------------------------------------------------------------------------------------
@dataclass
class WorkedEntry:
    """One gradient entry computed by hand and checked against the module's backward.

    Attributes:
        module: the module's name in the model (``'3'``, ``'features.0'``; ``'loss'``).
        grad_of: what the entry is the gradient of: ``'weight'``, ``'bias'`` (the parameter of
            that name), ``'input'`` (dL/dX, what the module's backward returned) or ``'logits'``.
        index: the entry's index in that gradient array.
        label: ``'dL/dW[3, 0, 1, 2]'``.
        formula: the rule for this entry, with its indices filled in.
        numbers: the same with the numbers filled in (the first few terms of a long sum).
        value: the result of the formula (float64, computed here from the kept arrays).
        actual: the same entry of the array the module's backward produced.
        scale: the size of what was added up (sum of |terms|): the rounding error is relative to it.
        rtol: the tolerance, relative to ``scale``: float32 sums of products differ by rounding.
    """

    module: str
    grad_of: str
    index: tuple
    label: str
    formula: str
    numbers: str
    value: float
    actual: float
    scale: float
    rtol: float

    @property
    def difference(self) -> float:
        """``|value - actual|``."""
        return abs(self.value - self.actual)

    @property
    def matches(self) -> bool:
        """The hand computation and the module's backward agree up to rounding."""
        return self.difference <= self.rtol * max(self.scale, abs(self.actual)) + 1e-30

    def verdict(self) -> str:
        word = "matches" if self.matches else "DOES NOT MATCH"
        return (f"module's backward: {_num(self.actual)}  -> {word} "
                f"(difference {self.difference:.2g})")


@dataclass
class Section:
    """A labelled part of a step: ``lines`` of text, shown as code (formulas) or as prose."""

    label: str
    lines: list[str]
    code: bool = True


@dataclass
class Step:
    """What one module did in the backward pass.

    Attributes:
        name: the module's name in the model (``'loss'`` for the loss).
        title: ``'7: Linear(192 -> 120)'``.
        input_shape, output_shape: of its forward pass.
        upstream_shape: the shape of dL/d(its output) that arrived.
        upstream_numbers: the first few numbers of that gradient (the first few non-zero ones,
            from ``upstream_from`` on, when those are all 0).
        sections: the rule, the worked entries, the max-pool window, ... in order.
        entries: the worked entries (each checked against the module's backward).
        downstream_shape: the shape of dL/d(its input) that it passed on (None for the loss).
    """

    name: str
    title: str
    input_shape: tuple
    output_shape: tuple
    upstream_shape: tuple
    upstream_numbers: list[float]
    upstream_size: int
    upstream_max: float
    upstream_nonzero: int = 0
    upstream_from: tuple | None = None
    sections: list[Section] = field(default_factory=list)
    entries: list[WorkedEntry] = field(default_factory=list)
    downstream_shape: tuple | None = None


@dataclass
class Explanation:
    """What :func:`explain_backward` returns: ``print(ex)`` or ``ex.text()`` for plain text,
    ``ex.markdown()`` for Markdown; ``ex.steps`` and ``ex.entries`` hold the data.

    Attributes:
        model_type: the model's class name.
        input_shape: the batch's shape, e.g. (1, 1, 28, 28).
        labels: the batch's class labels; ``class_names`` their names (when known).
        loss: the loss L of the batch.
        steps: the loss first, then every module from the last to the first.
    """

    model_type: str
    input_shape: tuple
    labels: list[int]
    class_names: list[str] | None
    loss: float
    steps: list[Step]
    dtype: str
    device: str
    intro: list[str] = field(default_factory=list)

    @property
    def entries(self) -> list[WorkedEntry]:
        """Every worked entry of every step, the loss's first."""
        return [e for s in self.steps for e in s.entries]

    @property
    def all_match(self) -> bool:
        return all(e.matches for e in self.entries)

    def _summary_line(self) -> str:
        n = len(self.entries)
        ok = sum(e.matches for e in self.entries)
        worst = max((e.difference for e in self.entries), default=0.0)
        return (f"{ok} of {n} worked entries match the modules' own backward "
                f"(largest difference {worst:.2g})")

    def text(self) -> str:
        """The explanation as plain text."""
        out = list(self.intro) + [""]
        for s in self.steps:
            out.append(f"== {s.title} ==")
            out.append(f"   forward: {_shape(s.input_shape)} -> {_shape(s.output_shape)}")
            out.append(f"   upstream gradient dL/d(output): {_upstream(s)}")
            if s.upstream_shape:
                out.append(f"      {_numbers_line(s)}")
            for sec in s.sections:
                out.append(f"   {sec.label}:")
                out.extend(f"      {line}" for line in sec.lines)
            if s.downstream_shape is not None:
                out.append(f"   passes down dL/d(input), shape {_shape(s.downstream_shape)}")
            out.append("")
        out.append(self._summary_line())
        return "\n".join(out)

    def markdown(self) -> str:
        """The explanation as Markdown: a heading per module, formulas in code blocks."""
        out = ["## One backward pass, explained", ""]
        out += [line for line in self.intro] + [""]
        for s in self.steps:
            out.append(f"### {s.title}")
            out.append("")
            out.append(f"- forward: `{_shape(s.input_shape)}` -> `{_shape(s.output_shape)}`")
            out.append(f"- upstream gradient dL/d(output): {_upstream(s, md=True)}")
            if s.upstream_shape:
                out.append(f"  {_numbers_line(s)}")
            if s.downstream_shape is not None:
                out.append(f"- passes down dL/d(input), shape `{_shape(s.downstream_shape)}`")
            out.append("")
            for sec in s.sections:
                out.append(f"**{sec.label}**")
                out.append("")
                if sec.code:
                    out += ["```text"] + sec.lines + ["```"]
                else:
                    out += [f"- {line}" for line in sec.lines]
                out.append("")
        out.append(f"**{self._summary_line()}**")
        return "\n".join(out) + "\n"

    def __str__(self) -> str:
        return self.text()


# ------------------------------------------------------------------------------------------------
# Formatting helpers
# ------------------------------------------------------------------------------------------------
def _num(v: float) -> str:
    """A number as a learner reads it: 4 significant digits, no noise."""
    v = float(v)
    if v == 0:
        return "0"
    return f"{v:.4g}"


def _par(v: float) -> str:
    """A factor inside a product: negative numbers in parentheses."""
    s = _num(v)
    return f"({s})" if s.startswith("-") else s


def _shape(shape: tuple | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _idx(index: tuple) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _upstream(s: Step, md: bool = False) -> str:
    shape = f"`{_shape(s.upstream_shape)}`" if md else _shape(s.upstream_shape)
    if not s.upstream_shape:
        return "1 (dL/dL = 1: the start)"
    return (f"shape {shape}, {s.upstream_nonzero:,} of {s.upstream_size:,} non-zero, largest "
            f"|value| {_num(s.upstream_max)}")


def _numbers_line(s: Step) -> str:
    nums = ", ".join(_num(v) for v in s.upstream_numbers)
    if s.upstream_from is None:
        more = ", ..." if s.upstream_size > len(s.upstream_numbers) else ""
        return f"first numbers: [{nums}{more}]"
    return (f"first non-zero numbers, from dY{_idx(s.upstream_from)} on (the ones before are "
            f"0): [{nums}, ...]")


def _sum_text(products: list[tuple[float, ...]], n_total: int, shown: int, what: str) -> str:
    """``a*b + c*d + ... (k more terms)`` for the first ``shown`` non-zero products."""
    if not products:
        return f"0 (all {n_total} {what} are zero)"
    parts = ["*".join(_par(f) for f in p) for p in products[:shown]]
    text = " + ".join(parts)
    rest = len(products) - min(shown, len(products))
    if rest:
        text += f" + ... ({rest} more non-zero terms)"
    return text


def _host(a: Any) -> np.ndarray:
    """A host float64 copy (the worked entries are computed in float64)."""
    return np.array(B.to_numpy(a), dtype=np.float64, copy=True)


def _kept(a: Any) -> np.ndarray:
    """A host copy in the array's own dtype (what the module's backward produced)."""
    return np.array(B.to_numpy(a), copy=True)


# ------------------------------------------------------------------------------------------------
# Choosing the entry to work out
# ------------------------------------------------------------------------------------------------
class _Picker:
    """Chooses entries that are not tiny: among those with |value| >= 1/4 of the largest, at
    random (seeded: the same seed gives the same entries), unless the caller fixed an index."""

    def __init__(self, seed: int, chosen: dict[str, tuple] | None) -> None:
        self.seed = int(seed)
        self.chosen = {str(k): tuple(int(i) for i in v) for k, v in (chosen or {}).items()}
        self.used: set[str] = set()

    def pick(self, module: str, key: int, values: np.ndarray, allowed: np.ndarray | None = None,
             use_chosen: bool = True) -> tuple:
        if use_chosen and module in self.chosen:
            index = self.chosen[module]
            if len(index) != values.ndim or any(not 0 <= i < d for i, d in
                                                zip(index, values.shape, strict=True)):
                raise ValueError(
                    f"explain_backward: the index {index} chosen for module '{module}' does not "
                    f"fit its array of shape {tuple(values.shape)} (for a layer: its weight "
                    "gradient; a max pool: its output; other modules: their input)"
                )
            self.used.add(module)
            return index
        rng = np.random.default_rng([self.seed, key])
        mag = np.abs(values)
        ok = np.ones(values.shape, bool) if allowed is None else allowed.astype(bool)
        if not ok.any():
            ok = np.ones(values.shape, bool)
        top = float(mag[ok].max()) if ok.any() else 0.0
        big = ok & (mag >= 0.25 * top) & (mag > 0) if top > 0 else ok
        candidates = np.argwhere(big)
        row = candidates[int(rng.integers(len(candidates)))]
        return tuple(int(i) for i in row)


# ------------------------------------------------------------------------------------------------
# The walk
# ------------------------------------------------------------------------------------------------
@dataclass
class _Record:
    """What one module did: its kept input/output, the upstream gradient, what it returned."""

    name: str
    module: Module
    x: np.ndarray
    y: np.ndarray
    dy: np.ndarray | None = None
    dx: np.ndarray | None = None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    training: bool = True


def _leaves(model: Module, prefix: str = "") -> list[tuple[str, Module]]:
    """The modules of a (nested) Sequential in the order they run, with dotted names."""
    out: list[tuple[str, Module]] = []
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, Sequential):
            out.extend(_leaves(child, full))
        else:
            out.append((full, child))
    return out


def sample_batch(batch_size: int = 1, start: int = 0, train: bool = True, device: Any = None,
                 dtype: Any = None) -> tuple[Any, Any]:
    """Images ``start .. start + batch_size - 1`` of the sample that ships with tinynet
    (Fashion-MNIST, offline), normalised as for training.

    Returns:
        ``(x, y)``: x (batch_size, 1, 28, 28) float, y (batch_size,) int64, on ``device``.
    """
    from ..data import ArrayDataset, DataLoader, FashionMNIST

    data = FashionMNIST(train=train, sample=True)
    if not 1 <= batch_size or start < 0 or start + batch_size > len(data):
        raise ValueError(
            f"sample_batch: images {start}..{start + batch_size - 1} are not all in the sample "
            f"({len(data)} images); use 0 <= start and start + batch_size <= {len(data)}"
        )
    part = ArrayDataset(data.images[start:start + batch_size],
                        data.labels[start:start + batch_size], classes=data.classes)
    loader = DataLoader(part, batch_size=batch_size, device=device, dtype=dtype, seed=0)
    return next(iter(loader))


def explain_backward(model: Module | None = None, x: Any = None, y: Any = None, *,
                     seed: int = 0, entries: dict[str, tuple] | None = None,
                     numbers: int = 6, terms: int = 4,
                     class_names: list[str] | None = None) -> Explanation:
    """Explain one backward pass of ``model`` on the batch ``(x, y)``, module by module.

    Args:
        model: a :class:`~tinynet.nn.Sequential` of tinynet's modules (nested ones are walked
            into). Default: the course network (``tinynet.models.course_cnn``) with weights from
            ``seed``.
        x: the input batch, e.g. (N, 1, 28, 28) (a single image (C, H, W) gets a batch axis).
            Default: the first image of the embedded Fashion-MNIST sample.
        y: the class labels (N,) (an int for a single image). Required with ``x``.
        seed: chooses which entry of each gradient is worked out (one whose value is not tiny).
        entries: fix the entry instead, by module name: ``{'0': (3, 0, 1, 2), 'loss': (0, 9)}``.
            The index is into the weight gradient for a layer with weights, the output for a max
            pool (the window), the logits for ``'loss'``, and dL/dX for any other module.
        numbers: how many numbers of each upstream gradient to show.
        terms: how many terms of each long sum to show.
        class_names: names of the classes (default: Fashion-MNIST's with the default batch).

    Returns:
        an :class:`Explanation`: ``print()`` it, or ``.markdown()``.

    The model is not changed: the walk runs on a copy, and tinynet's random generators are put
    back as they were.

    **Shape:** any shapes the model takes; the loss is ``CrossEntropyLoss`` on logits (N, K).
    """
    rng_state = B.get_rng_state()
    try:
        if model is None:
            from ..models import course_cnn

            B.manual_seed(seed)
            model = course_cnn()
        if not isinstance(model, Sequential):
            raise TypeError(
                f"explain_backward takes a Sequential (it runs the modules one by one), got "
                f"{type(model).__name__}; wrap your modules: tinynet.nn.Sequential(m1, m2, ...)"
            )
        if x is None:
            from ..data import CLASSES

            x, y = sample_batch(1, device=model.device, dtype=model.dtype)
            class_names = CLASSES if class_names is None else class_names
        elif y is None:
            raise ValueError("explain_backward: give the labels y with the batch x (the loss "
                             "needs them)")
        backend = B.backend_of(x)
        if getattr(x, "ndim", 0) == 3:  # one image (C, H, W): a batch of one
            x = x[None]
        if isinstance(y, (int, np.integer)):
            y = [int(y)]
        if isinstance(y, (list, tuple)):
            y = backend.asarray(np.asarray(y, dtype=np.int64))
        return _explain(model, x, y, _Picker(seed, entries), numbers, terms, class_names)
    finally:
        B.set_rng_state(rng_state)


def _explain(model: Sequential, x: Any, y: Any, picker: _Picker, numbers: int, terms: int,
             class_names: list[str] | None) -> Explanation:
    work = model.copy()  # the caller's model, its gradients, buffers and mode stay as they are
    work.zero_grad()     # so that each .grad below is exactly this pass's gradient
    leaves = _leaves(work)
    if not leaves:
        raise ValueError("explain_backward: the Sequential has no modules")

    # forward, one module at a time, keeping every input and output
    records: list[_Record] = []
    h = x
    for name, m in leaves:
        inp = _kept(h)
        h = m(h)
        records.append(_Record(name, m, inp, _kept(h), training=m.training))
    loss_fn = CrossEntropyLoss()
    loss = loss_fn(h, y)

    # backward, from the loss to the first layer, calling each module's backward ourselves
    g = loss_fn.backward()
    dlogits = _kept(g)
    for r in reversed(records):
        r.dy = _kept(g)
        g = r.module.backward(g)
        r.dx = _kept(g)
        r.grads = {pname: _kept(p.grad) for pname, p in r.module.named_parameters()
                   if p.grad is not None}

    labels = [int(v) for v in B.to_numpy(y)]
    steps = [_loss_step(h, labels, dlogits, float(loss), picker, numbers, terms, class_names)]
    for key, r in enumerate(reversed(records), start=1):
        steps.append(_module_step(r, picker, key, numbers, terms))
    unused = set(picker.chosen) - picker.used
    if unused:
        raise ValueError(
            f"explain_backward: entries were chosen for {sorted(unused)}, which are not modules "
            f"with a worked entry here; the names are {['loss'] + [n for n, _ in leaves]}"
        )

    n = int(x.shape[0])
    what = "image" if n == 1 else "images"
    first = ", ".join(
        f"{lab} ({class_names[lab]})" if class_names and 0 <= lab < len(class_names) else str(lab)
        for lab in labels[:8]
    )
    intro = [
        f"One backward pass of a {type(model).__name__} of {len(leaves)} modules on {n} {what} "
        f"{_shape(tuple(x.shape))}, labels: {first}{', ...' if n > 8 else ''}.",
        f"Forward: x {_shape(tuple(x.shape))} -> logits {_shape(tuple(h.shape))}; "
        f"cross-entropy loss L = {float(loss):.4f}.",
        "Backward: from the loss to the first layer. At each module: the gradient that arrives "
        "(dL/d its output), the module's local rule, and one entry worked out by hand from the "
        "kept arrays and checked against the array that the module's backward produced.",
    ]
    return Explanation(
        model_type=type(model).__name__, input_shape=tuple(int(d) for d in x.shape),
        labels=labels, class_names=list(class_names) if class_names else None,
        loss=float(loss), steps=steps, dtype=str(x.dtype), device=B.device_of(x), intro=intro,
    )


def _new_step(name: str, title: str, x_shape: tuple, y_shape: tuple, dy: np.ndarray,
              numbers: int) -> Step:
    flat = dy.reshape(-1)
    shown, start = flat[:numbers], None
    nonzero = np.flatnonzero(flat)
    if flat.size > numbers and not shown.any() and nonzero.size:
        shown = flat[nonzero[:numbers]]
        start = tuple(int(i) for i in np.unravel_index(int(nonzero[0]), dy.shape))
    return Step(
        name=name, title=title, input_shape=tuple(x_shape), output_shape=tuple(y_shape),
        upstream_shape=tuple(dy.shape), upstream_numbers=[float(v) for v in shown],
        upstream_from=start,
        upstream_size=int(flat.size),
        upstream_max=float(np.abs(flat).max()) if flat.size else 0.0,
        upstream_nonzero=int(np.count_nonzero(flat)),
    )


def _entry(step: Step, label: str, module: str, grad_of: str, index: tuple, formula: str,
           numbers: str, value: float, actual: np.ndarray, scale: float,
           section: str = "worked entry") -> WorkedEntry:
    """Record a worked entry and show it (formula, numbers, result, the check)."""
    rtol = _RTOL.get(actual.dtype.itemsize, 1e-4)
    e = WorkedEntry(module=module, grad_of=grad_of, index=tuple(int(i) for i in index),
                    label=label, formula=formula, numbers=numbers, value=float(value),
                    actual=float(actual[tuple(index)]), scale=float(scale), rtol=rtol)
    step.entries.append(e)
    pad = " " * len(label)
    lines = [f"{label} = {formula}", f"{pad} = {numbers}"]
    if numbers != _num(value):
        lines.append(f"{pad} = {_num(value)}")
    step.sections.append(Section(section, lines + [e.verdict()]))
    return e


# -- the loss ------------------------------------------------------------------------------------
def _loss_step(logits: Any, labels: list[int], dlogits: np.ndarray, loss: float, picker: _Picker,
               numbers: int, terms: int, class_names: list[str] | None) -> Step:
    z = _host(logits)
    n, k = z.shape
    step = _new_step("loss", "loss: CrossEntropyLoss (softmax + cross-entropy)", z.shape, (),
                     np.ones(()), numbers)
    step.upstream_numbers = [1.0]
    step.sections.append(Section("rule", [
        "L = mean over n of ( log sum_k exp z[n,k] - z[n,y_n] )     (z: the logits)",
        f"dL/dz = (softmax(z) - one_hot(y)) / N                      (N = {n})",
        "in words: every class score is pushed down by its predicted probability, the true",
        "class's score is pushed up by 1; averaged over the batch",
    ]))
    p = np.exp(z - z.max(axis=1, keepdims=True))  # softmax, with the max shifted out
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), labels] = 1.0
    if "loss" in picker.chosen:
        index = picker.pick("loss", 0, dlogits)
    else:  # the true class of a seeded image: the entry that pulls its score up
        rng = np.random.default_rng([picker.seed, 0])
        i = int(rng.integers(n))
        index = (i, labels[i])
    i, c = index
    name = (f" '{class_names[labels[i]]}'" if class_names and labels[i] < len(class_names)
            else "")
    step.sections.append(Section(f"softmax of image {i} (label {labels[i]}{name})", [
        "softmax(z) = [" + ", ".join(_num(v) for v in p[i]) + "]",
        "dL/dz      = [" + ", ".join(_num(v) for v in dlogits[i]) + "]",
    ]))
    value = (p[i, c] - onehot[i, c]) / n
    _entry(step, f"dL/dz{_idx(index)}", "loss", "logits", index,
           f"(softmax(z[{i}])[{c}] - one_hot(y_{i})[{c}]) / N",
           f"({_num(p[i, c])} - {_num(onehot[i, c])}) / {n}", value, dlogits,
           scale=(abs(p[i, c]) + 1.0) / n)
    step.downstream_shape = tuple(dlogits.shape)
    return step


# -- the modules ---------------------------------------------------------------------------------
def _module_step(r: _Record, picker: _Picker, key: int, numbers: int, terms: int) -> Step:
    m = r.module
    step = _new_step(r.name, f"{r.name}: {_describe(m)}", r.x.shape, r.y.shape, r.dy, numbers)
    for cls, explain in _EXPLAINERS:
        if isinstance(m, cls):
            explain(step, r, picker, key, terms)
            break
    else:
        step.sections.append(Section("rule", [
            f"{type(m).__name__} is not one of tinynet's built-in modules: its backward is "
            "shown by its shapes and numbers only",
            "dL/dX (first numbers): [" + ", ".join(_num(v) for v in r.dx.reshape(-1)[:numbers])
            + "]",
        ]))
    step.downstream_shape = tuple(r.dx.shape) if r.dx is not None else None
    return step


def _describe(m: Module) -> str:
    if isinstance(m, Linear):
        return f"Linear({m.in_features} -> {m.out_features})"
    if isinstance(m, Conv2d):
        return (f"Conv2d({m.in_channels} -> {m.out_channels}, kernel {m.kernel_size}, "
                f"stride {m.stride}, padding {m.padding})")
    return repr(m)


def _linear(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    m = r.module
    X, dY, W = r.x.astype(np.float64), r.dy.astype(np.float64), _host(m.weight.data)
    n = X.shape[0]
    step.sections.append(Section("rule", [
        "Y = X W^T + b            X (N, in), W (out, in), Y (N, out)",
        "dW = dY^T X              dW[o,i] = sum over n of dY[n,o] * X[n,i]",
        "db = sum of dY over n    db[o]   = sum over n of dY[n,o]",
        "dX = dY W                dX[n,i] = sum over o of dY[n,o] * W[o,i]",
        "in words: a weight's gradient is (how much its output should change) times (its input)",
    ]))
    o, i = picker.pick(r.name, key, r.grads["weight"])
    prods = [(dY[k, o], X[k, i]) for k in range(n) if dY[k, o] * X[k, i] != 0]
    _entry(step, f"dL/dW{_idx((o, i))}", r.name, "weight", (o, i),
           f"sum over {n} sample{'s' if n > 1 else ''} n of dY[n,{o}] * X[n,{i}]",
           _sum_text(prods, n, terms, "products"), float(np.sum(dY[:, o] * X[:, i])),
           r.grads["weight"], float(np.sum(np.abs(dY[:, o] * X[:, i]))))
    if "bias" in r.grads:
        _entry(step, f"dL/db[{o}]", r.name, "bias", (o,), f"sum over n of dY[n,{o}]",
               _sum_text([(v,) for v in dY[:, o] if v != 0], n, terms, "values"),
               float(dY[:, o].sum()), r.grads["bias"], float(np.abs(dY[:, o]).sum()), "check")
    k, j = picker.pick(r.name, key + 1000, r.dx, use_chosen=False)
    prods = [(dY[k, q], W[q, j]) for q in range(W.shape[0]) if dY[k, q] * W[q, j] != 0]
    _entry(step, f"dL/dX{_idx((k, j))}", r.name, "input", (k, j),
           f"sum over {W.shape[0]} outputs o of dY[{k},o] * W[o,{j}]",
           _sum_text(prods, W.shape[0], terms, "products"), float(dY[k] @ W[:, j]), r.dx,
           float(np.abs(dY[k]) @ np.abs(W[:, j])), "check")


def _conv_taps(h_in: int, k: int, s: int, p: int, h_out: int, hh: int) -> list[tuple[int, int]]:
    """The (output row i, kernel row u) pairs whose window covers input row hh:
    ``i*s + u - p == hh`` with 0 <= i < h_out, 0 <= u < k."""
    out = []
    for u in range(k):
        t = hh + p - u
        if t % s == 0 and 0 <= t // s < h_out:
            out.append((t // s, u))
    return out


def _conv(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    m = r.module
    X, dY, W = r.x.astype(np.float64), r.dy.astype(np.float64), _host(m.weight.data)
    (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
    n, c_in, h, w = X.shape
    _, f_out, ho, wo = dY.shape
    pad = f"x_pad: x with {ph} row(s) and {pw} column(s) of zeros around" if (ph or pw) else \
        "x_pad = x (no padding)"
    step.sections.append(Section("rule", [
        "Y[n,f,i,j] = b[f] + sum over c,u,v of W[f,c,u,v] * x_pad[n,c,i*s+u,j*s+v]",
        f"   s = stride {m.stride}; {pad}",
        "dW[f,c,u,v] = sum over n,i,j of dY[n,f,i,j] * x_pad[n,c,i*s+u,j*s+v]",
        "   in words: each weight collects dY times the input pixel it multiplied, over every "
        "position",
        "db[f] = sum over n,i,j of dY[n,f,i,j]",
        "dX = col2im(W^T dY): each input pixel collects dY * W from every window it was in,",
        "   dX[n,c,h,w] = sum over f,u,v of dY[n,f,i,j] * W[f,c,u,v] where i*s+u-p = h, "
        "j*s+v-p = w",
    ]))
    xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    f, c, u, v = picker.pick(r.name, key, r.grads["weight"])
    # the input pixels that W[f,c,u,v] multiplied: rows u, u+s, ..., columns v, v+s, ...
    patch = xp[:, c, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw]
    prod = dY[:, f] * patch
    flat = [(dY[a, f, i, j], patch[a, i, j]) for a in range(n) for i in range(ho)
            for j in range(wo) if prod[a, i, j] != 0]
    total = n * ho * wo
    what = f"{total} output pixels" + (f" ({n} images x {ho}x{wo})" if n > 1 else f" ({ho}x{wo})")
    _entry(step, f"dL/dW{_idx((f, c, u, v))}", r.name, "weight", (f, c, u, v),
           f"sum over {what} of dY[n,{f},i,j] * x_pad[n,{c},i*{sh}+{u},j*{sw}+{v}]",
           _sum_text(flat, total, terms, "products"), float(prod.sum()), r.grads["weight"],
           float(np.abs(prod).sum()))
    zeros = total - len(flat)
    if zeros:
        pad = " " * (len(step.entries[-1].label) + 3)
        step.sections[-1].lines.insert(-1, f"{pad}({zeros} of the {total} products are 0: dY is 0 "
                                           "where a max pool did not route or a ReLU blocked)")
    if "bias" in r.grads:
        vals = dY[:, f].reshape(-1)
        _entry(step, f"dL/db[{f}]", r.name, "bias", (f,),
               f"sum over {total} output pixels of dY[n,{f},i,j]",
               _sum_text([(q,) for q in vals if q != 0], total, terms, "values"),
               float(vals.sum()), r.grads["bias"], float(np.abs(vals).sum()), "check")
    a, cc, hh, ww = picker.pick(r.name, key + 1000, r.dx, use_chosen=False)
    rows, cols = _conv_taps(h, kh, sh, ph, ho, hh), _conv_taps(w, kw, sw, pw, wo, ww)
    prods = [(dY[a, q, i, j], W[q, cc, uu, vv]) for q in range(f_out) for i, uu in rows
             for j, vv in cols]
    value = float(sum(p * q for p, q in prods))
    scale = float(sum(abs(p * q) for p, q in prods))
    _entry(step, f"dL/dX{_idx((a, cc, hh, ww))}", r.name, "input", (a, cc, hh, ww),
           f"sum over the {len(prods)} (filter, window) pairs that saw x[{a},{cc},{hh},{ww}] of "
           "dY[n,f,i,j] * W[f,c,u,v]",
           _sum_text([p for p in prods if p[0] * p[1] != 0], len(prods), terms, "products"),
           value, r.dx, scale, "check (col2im)")


def _relu(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    X, dY = r.x.astype(np.float64), r.dy.astype(np.float64)
    on = X > 0
    step.sections.append(Section("rule", [
        "Y = max(X, 0)",
        "dX = dY * [X > 0]: the gradient passes where the input was > 0, and is 0 elsewhere",
        f"here {int(on.sum()):,} of {X.size:,} inputs were > 0 "
        f"({100.0 * on.mean():.0f}%): the gradient passes only there",
    ]))
    if r.name in picker.chosen:
        index = picker.pick(r.name, key, r.dx)
    else:
        index = picker.pick(r.name, key, dY, allowed=on & (dY != 0))
    passes = bool(X[index] > 0)
    _entry(step, f"dL/dX{_idx(index)}", r.name, "input", index,
           f"dY{_idx(index)} * [X{_idx(index)} > 0]",
           f"{_par(dY[index])} * [{_num(X[index])} > 0] = {_par(dY[index])} * "
           f"{1 if passes else 0}", dY[index] * passes, r.dx, abs(dY[index]))
    blocked = (~on) & (dY != 0)
    if blocked.any():  # one the ReLU stopped: a gradient arrived, nothing goes through
        b = picker.pick(r.name, key + 1000, dY, allowed=blocked, use_chosen=False)
        _entry(step, f"dL/dX{_idx(b)}", r.name, "input", b, f"dY{_idx(b)} * [X{_idx(b)} > 0]",
               f"{_par(dY[b])} * [{_num(X[b])} > 0] = {_par(dY[b])} * 0",
               dY[b] * float(X[b] > 0), r.dx, abs(dY[b]), "check (a blocked one)")


def _maxpool(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    m = r.module
    X, dY = r.x.astype(np.float64), r.dy.astype(np.float64)
    (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
    n, c, h, w = X.shape
    ho, wo = dY.shape[2:]
    rows = f"i*{sh}" + (f"-{ph}" if ph else "")
    cols = f"j*{sw}" + (f"-{pw}" if pw else "")
    step.sections.append(Section("rule", [
        f"Y[n,c,i,j] = max of the {kh}x{kw} window of X at rows {rows} + 0..{kh - 1}, columns "
        f"{cols} + 0..{kw - 1}",
        "dX: each window's gradient dY[n,c,i,j] goes to the position of its maximum (the argmax,",
        "    the first one on ties); the other inputs of the window get 0 from it",
    ]))
    xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)

    def winner(a: int, ch: int, i: int, j: int) -> tuple[int, int]:
        win = xp[a, ch, i * sh:i * sh + kh, j * sw:j * sw + kw]
        u, v = np.unravel_index(int(np.argmax(win)), win.shape)  # first maximum, row by row
        return i * sh + int(u) - ph, j * sw + int(v) - pw

    def routed(a: int, ch: int, hh: int, ww: int) -> tuple[float, list[tuple[int, int]]]:
        """dX[a,ch,hh,ww] by the rule: the sum of dY over the windows whose argmax it is."""
        wins = [(i, j) for i in range(ho) for j in range(wo) if winner(a, ch, i, j) == (hh, ww)]
        return float(sum(dY[a, ch, i, j] for i, j in wins)), wins

    a, ch, i, j = picker.pick(r.name, key, dY, allowed=dY != 0)
    win = xp[a, ch, i * sh:i * sh + kh, j * sw:j * sw + kw]
    hh, ww = winner(a, ch, i, j)
    r0, c0 = i * sh - ph, j * sw - pw
    lines = [f"window of output Y[{a},{ch},{i},{j}] (input rows {r0}..{r0 + kh - 1}, columns "
             f"{c0}..{c0 + kw - 1}); the maximum in [brackets]:"]
    for uu in range(kh):
        cells = []
        for vv in range(kw):
            val = win[uu, vv]
            s = "pad" if not np.isfinite(val) else _num(val)
            at = (i * sh + uu - ph, j * sw + vv - pw)
            cells.append(f"[{s}]" if at == (hh, ww) else f" {s} ")
        lines.append("   " + "  ".join(f"{cell:>10}" for cell in cells))
    lines.append(f"the maximum {_num(X[a, ch, hh, ww])} is x[{a},{ch},{hh},{ww}]: its gradient "
                 f"dY[{a},{ch},{i},{j}] = {_num(dY[a, ch, i, j])} goes there, the other "
                 f"{kh * kw - 1} get 0 from this window")
    step.sections.append(Section("one window and its routing", lines))
    value, wins = routed(a, ch, hh, ww)
    sources = " + ".join(f"dY[{a},{ch},{p},{q}]" for p, q in wins)
    _entry(step, f"dL/dX{_idx((a, ch, hh, ww))}", r.name, "input", (a, ch, hh, ww),
           f"sum of dY over the windows whose maximum is x[{a},{ch},{hh},{ww}] = {sources}",
           " + ".join(_par(dY[a, ch, p, q]) for p, q in wins), value, r.dx,
           sum(abs(dY[a, ch, p, q]) for p, q in wins))
    losers = [(i * sh + uu - ph, j * sw + vv - pw) for uu in range(kh) for vv in range(kw)
              if (i * sh + uu - ph, j * sw + vv - pw) != (hh, ww)
              and 0 <= i * sh + uu - ph < h and 0 <= j * sw + vv - pw < w]
    if losers:
        lh, lw = losers[0]
        lv, lwins = routed(a, ch, lh, lw)
        note = ("it won no window: 0" if not lwins else
                "it won other windows: " + " + ".join(f"dY[{a},{ch},{p},{q}]" for p, q in lwins))
        _entry(step, f"dL/dX{_idx((a, ch, lh, lw))}", r.name, "input", (a, ch, lh, lw),
               f"sum of dY over the windows whose maximum is x[{a},{ch},{lh},{lw}]", note, lv,
               r.dx, sum(abs(dY[a, ch, p, q]) for p, q in lwins), "check (a loser of the window)")


def _avgpool_windows(m: Module, h: int, w: int, ho: int, wo: int):
    """For (Adaptive)AvgPool2d: a function (i, j) -> (rows, columns, divisor) of a window."""
    if isinstance(m, AvgPool2d):
        (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding

        def window(i: int, j: int):  # zero padding counts in the mean (count_include_pad)
            return (range(i * sh - ph, i * sh - ph + kh), range(j * sw - pw, j * sw - pw + kw),
                    kh * kw)
        return window

    def adaptive(i: int, j: int):
        r0, r1 = (i * h) // ho, -((-(i + 1) * h) // ho)
        c0, c1 = (j * w) // wo, -((-(j + 1) * w) // wo)
        return range(r0, r1), range(c0, c1), (r1 - r0) * (c1 - c0)
    return adaptive


def _avgpool(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    m = r.module
    X, dY = r.x.astype(np.float64), r.dy.astype(np.float64)
    n, c, h, w = X.shape
    ho, wo = dY.shape[2:]
    window = _avgpool_windows(m, h, w, ho, wo)
    step.sections.append(Section("rule", [
        "Y[n,c,i,j] = mean of the window (i, j) of X",
        "dX[n,c,h,w] = sum over the windows that contain (h, w) of dY[n,c,i,j] / (window size)",
        "in words: every input of a window gets an equal share of the window's gradient",
    ]))
    a, ch, hh, ww = picker.pick(r.name, key, r.dx)
    parts = []
    for i in range(ho):
        for j in range(wo):
            rows, cols, size = window(i, j)
            if hh in rows and ww in cols:
                parts.append((i, j, size))
    value = float(sum(dY[a, ch, i, j] / size for i, j, size in parts))
    _entry(step, f"dL/dX{_idx((a, ch, hh, ww))}", r.name, "input", (a, ch, hh, ww),
           f"sum over the {len(parts)} window(s) containing x[{a},{ch},{hh},{ww}] of "
           "dY[n,c,i,j] / size",
           " + ".join(f"{_par(dY[a, ch, i, j])}/{size}" for i, j, size in parts[:terms])
           + (" + ..." if len(parts) > terms else "") if parts else "0 (in no window)",
           value, r.dx, float(sum(abs(dY[a, ch, i, j]) / size for i, j, size in parts)))


def _flatten(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    step.sections.append(Section("rule", [
        f"Y = reshape(X, {_shape(r.y.shape)}): the same numbers, laid out in one row per sample",
        f"dX = reshape(dY, {_shape(r.x.shape)}): the gradient is put back in the input's shape",
    ]))
    index = picker.pick(r.name, key, r.dx)
    flat = int(np.ravel_multi_index(index, r.x.shape))  # the same position, counted row by row
    yi = tuple(int(v) for v in np.unravel_index(flat, r.y.shape))
    dims = r.x.shape
    m = r.module
    s = m.start_dim % len(dims)
    e = m.end_dim % len(dims)
    strides = [int(np.prod(dims[d + 1:e + 1])) for d in range(s, e + 1)]
    pos = " + ".join(f"{index[d]}*{st}" if st != 1 else f"{index[d]}"
                     for d, st in zip(range(s, e + 1), strides, strict=True))
    _entry(step, f"dL/dX{_idx(index)}", r.name, "input", index,
           f"dY{_idx(yi)}   (the same position, counted row by row: {pos} = {yi[s]})",
           _num(r.dy[yi]), float(r.dy[yi]), r.dx, abs(float(r.dy[yi])))


def _batchnorm(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    m = r.module
    X, dY = r.x.astype(np.float64), r.dy.astype(np.float64)
    axes = (0,) + tuple(range(2, X.ndim))
    shape = (1, -1) + (1,) * (X.ndim - 2)
    c_n = X.shape[1]
    gamma = _host(m.weight.data) if m.affine else np.ones(c_n)
    batch = r.training or m.running_mean is None
    M = int(X.size // c_n)
    if batch:
        mean, var = X.mean(axis=axes), X.var(axis=axes)
    else:
        mean, var = _host(m.running_mean), _host(m.running_var)
    inv_std = 1.0 / np.sqrt(var + m.eps)
    xhat = (X - mean.reshape(shape)) * inv_std.reshape(shape)
    dbeta, dgamma = dY.sum(axis=axes), (dY * xhat).sum(axis=axes)
    stats = "the batch's" if batch else "the running"
    rule = [
        f"xhat = (X - mean_c) / sqrt(var_c + eps), Y = gamma_c * xhat + beta_c  "
        f"({stats} mean and variance, M = {M} values per channel)",
        "dgamma_c = sum over the channel of dY * xhat      dbeta_c = sum over the channel of dY",
    ]
    if batch:
        rule += ["dX = (gamma_c / (M * sqrt(var_c + eps))) * (M * dY - dbeta_c - xhat * "
                 "dgamma_c)",
                 "   (the mean and the variance depend on every X of the channel: the two sums)"]
    else:
        rule += ["dX = dY * gamma_c / sqrt(var_c + eps)   (evaluation: the statistics are "
                 "constants)"]
    step.sections.append(Section("rule", rule))
    if m.affine:
        cidx = picker.pick(r.name, key, r.grads["weight"])
        ch = cidx[0]
        sel = (slice(None), ch) + (slice(None),) * (X.ndim - 2)
        prods = [(a, b) for a, b in zip(dY[sel].reshape(-1), xhat[sel].reshape(-1), strict=True)
                 if a * b != 0]
        _entry(step, f"dL/dgamma[{ch}]", r.name, "weight", (ch,),
               f"sum over the {M} values of channel {ch} of dY * xhat",
               _sum_text(prods, M, terms, "products"), float(dgamma[ch]), r.grads["weight"],
               float(np.abs(dY[sel] * xhat[sel]).sum()))
        _entry(step, f"dL/dbeta[{ch}]", r.name, "bias", (ch,),
               f"sum over the {M} values of channel {ch} of dY",
               _sum_text([(a,) for a in dY[sel].reshape(-1) if a != 0], M, terms, "values"),
               float(dbeta[ch]), r.grads["bias"], float(np.abs(dY[sel]).sum()), "check")
    index = picker.pick(r.name, key + 1000, r.dx, use_chosen=not m.affine)
    ch = index[1]
    g, s = gamma[ch], inv_std[ch]
    if batch:
        value = g * s / M * (M * dY[index] - dbeta[ch] - xhat[index] * dgamma[ch])
        numbers = (f"({_num(g)} * {_num(s)} / {M}) * ({M} * {_par(dY[index])} - "
                   f"{_par(dbeta[ch])} - {_par(xhat[index])} * {_par(dgamma[ch])})")
        scale = abs(g * s / M) * (M * abs(dY[index]) + abs(dbeta[ch])
                                  + abs(xhat[index] * dgamma[ch]))
        formula = "(gamma_c * inv_std_c / M) * (M * dY - dbeta_c - xhat * dgamma_c)"
    else:
        value = dY[index] * g * s
        numbers = f"{_par(dY[index])} * {_num(g)} * {_num(s)}"
        scale = abs(value)
        formula = "dY * gamma_c * inv_std_c"
    _entry(step, f"dL/dX{_idx(index)}", r.name, "input", index, formula, numbers, value, r.dx,
           scale, "check" if m.affine else "worked entry")


def _dropout(step: Step, r: _Record, picker: _Picker, key: int, terms: int) -> None:
    m = r.module
    X, Y, dY = r.x.astype(np.float64), r.y.astype(np.float64), r.dy.astype(np.float64)
    active = r.training and m.p > 0
    if not active:
        step.sections.append(Section("rule", [
            "evaluation mode (or p = 0): Y = X, so dX = dY" if not r.training else
            "p = 0: Y = X, so dX = dY"]))
        index = picker.pick(r.name, key, r.dx)
        _entry(step, f"dL/dX{_idx(index)}", r.name, "input", index, f"dY{_idx(index)}",
               _num(dY[index]), dY[index], r.dx, abs(dY[index]))
        return
    step.sections.append(Section("rule", [
        f"Y = X * mask, mask = 0 (dropped, probability p = {m.p}) or 1/(1-p) = "
        f"{_num(1 / (1 - m.p)) if m.p < 1 else 'inf'} (kept)",
        "dX = dY * mask: the gradient flows only through the values that were kept",
    ]))
    seen = X != 0  # where X is 0 the mask cannot be read off Y / X
    index = picker.pick(r.name, key, r.dx, allowed=seen & (dY != 0))
    if not seen[index]:
        step.sections.append(Section("note", [
            f"X{_idx(index)} = 0: the mask cannot be read off Y / X there (both are 0), so no "
            "entry is worked out"]))
        return
    dropped = seen & (Y == 0) & (dY != 0)
    for label, at in (("worked entry", index), ("check (a dropped one)", None)):
        if at is None:
            if not dropped.any():
                break
            at = picker.pick(r.name, key + 1000, dY, allowed=dropped, use_chosen=False)
        mask = Y[at] / X[at]  # 0 or 1/(1-p), read off the kept input and output
        _entry(step, f"dL/dX{_idx(at)}", r.name, "input", at,
               f"dY{_idx(at)} * mask{_idx(at)},  mask = Y / X = {_num(Y[at])} / {_num(X[at])}",
               f"{_par(dY[at])} * {_num(mask)}", dY[at] * mask, r.dx, abs(dY[at] * mask), label)


_EXPLAINERS: list[tuple[type, Callable[..., None]]] = [
    (Linear, _linear),
    (Conv2d, _conv),
    (ReLU, _relu),
    (MaxPool2d, _maxpool),
    (AvgPool2d, _avgpool),
    (AdaptiveAvgPool2d, _avgpool),
    (Flatten, _flatten),
    (BatchNorm1d, _batchnorm),
    (BatchNorm2d, _batchnorm),
    (Dropout, _dropout),
]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinynet.lab.explain",
        description="Explain one backward pass of the course network on one image of the "
                    "embedded Fashion-MNIST sample, module by module, with its numbers.")
    parser.add_argument("--markdown", action="store_true", help="write Markdown, not plain text")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and of the entries worked out (default 0)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images in the batch (default 1)")
    parser.add_argument("--image", type=int, default=0,
                        help="index of the first image in the sample (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the explanation to this file instead of the screen")
    return parser


def run(args: argparse.Namespace) -> Explanation:
    """What the command line does: the course network, seeded weights, a sample batch."""
    from ..data import CLASSES
    from ..models import course_cnn

    state = B.get_rng_state()
    try:
        B.manual_seed(args.seed)
        model = course_cnn()
    finally:
        B.set_rng_state(state)
    x, y = sample_batch(args.batch_size, start=args.image, device=model.device,
                        dtype=model.dtype)
    return explain_backward(model, x, y, seed=args.seed, class_names=CLASSES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ex = run(args)
    text = ex.markdown() if args.markdown else ex.text() + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out} ({len(ex.entries)} worked entries, "
              f"{'all match' if ex.all_match else 'SOME DO NOT MATCH'})")
    else:
        sys.stdout.write(text)
    return 0 if ex.all_match else 1


if __name__ == "__main__":
    raise SystemExit(main())
