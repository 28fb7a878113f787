"""Look inside a network: a summary of its shapes and weights, and a trace of one training step.

Two tools for learners:

* :func:`summary` (also ``tinynet.summary``): one row per module of the model: is it a *layer*
  (it has weights) or an *operation* (activation, pooling, flatten: no weights)? What shape comes
  out? How many parameters, of which shapes? For Conv2d and MaxPool2d the output-size arithmetic
  is written out with the numbers filled in, e.g. ``H_out = (28 + 2*0 - 5) / 1 + 1 = 24``. A layer
  is grouped with the operations that follow it, as the course counts them ("layer 2: Conv2d +
  ReLU + MaxPool2d"). The shapes are computed WITHOUT running the math: every built-in module has
  an ``output_shape(input_shape)`` method. A shape mistake (say a Linear layer whose
  ``in_features`` does not match the flattened size) raises :class:`ShapeError` at the row where
  it happens, with the table so far and the number that would fit.

* :func:`trace`: runs one forward and one backward pass on a COPY of the model and reports, for
  every module, the input and output shapes (rank and the meaning of each axis), statistics of
  the output (mean, std, min, max, share of zeros: after a ReLU, the share of "dead" values), the
  gradient that flows back into it (dL/d output) and the norms of its weight gradients.

Example::

    >>> import tinynet
    >>> print(tinynet.summary(model, (1, 1, 28, 28)))        # [batch, channels, height, width]
    >>> print(tinynet.inspect.trace(model, x, labels, tinynet.nn.CrossEntropyLoss()))

No NumPy import here: statistics are computed on host copies made by ``tinynet.to_numpy``, so the
tools work the same for CuPy arrays on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import backend as B
from .nn.activation import ReLU
from .nn.avgpool import AdaptiveAvgPool2d, AvgPool2d
from .nn.batchnorm import BatchNorm1d, BatchNorm2d
from .nn.conv import Conv2d
from .nn.dropout import Dropout
from .nn.flatten import Flatten
from .nn.linear import Linear
from .nn.module import Module, Sequential
from .nn.pooling import MaxPool2d

__all__ = [
    "ShapeError",
    "Summary",
    "SummaryRow",
    "TraceReport",
    "TraceRow",
    "axis_names",
    "summary",
    "trace",
]


class ShapeError(ValueError):
    """A module cannot take the shape that the module before it produces.

    Attributes:
        summary: the :class:`Summary` up to and including the failing row (``row.error`` set).
        row: the failing :class:`SummaryRow`.
    """

    def __init__(self, message: str, summary: Summary, row: SummaryRow) -> None:
        super().__init__(message)
        self.summary = summary
        self.row = row


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def _prod(values: Any) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _fmt_shape(shape: tuple | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _is_layer(module: Module) -> bool:
    """A layer owns weights; an operation (activation, pooling, flatten) owns none."""
    return any(True for _ in module.parameters())


def _leaves(model: Module, prefix: str = "") -> list[tuple[str, Module]] | None:
    """The modules of a (nested) Sequential in the order they run, or None when the order of a
    custom container's forward cannot be known without running it."""
    if isinstance(model, Sequential):
        out: list[tuple[str, Module]] = []
        for name, child in model.named_children():
            sub = _leaves(child, f"{prefix}.{name}" if prefix else name)
            if sub is None:
                return None
            out.extend(sub)
        return out
    if any(True for _ in model.children()):
        return None
    return [(prefix or type(model).__name__, model)]


def axis_names(shape: tuple, after_conv: bool = False) -> tuple[str, ...]:
    """What each axis of a tensor means, by its rank.

    ``(N, C, H, W)`` -> ``('batch', 'channels', 'height', 'width')``; after a convolution the
    channels are the feature maps (one per filter): ``after_conv=True`` names axis 1
    ``'feature maps'``. ``(N, F)`` -> ``('batch', 'features')``; a 0-d tensor is a scalar.
    """
    rank = len(shape)
    if rank == 0:
        return ()
    if rank == 1:
        return ("batch",)
    if rank == 2:
        return ("batch", "features")
    if rank == 3:
        return ("batch", "channels", "length")
    if rank == 4:
        return ("batch", "feature maps" if after_conv else "channels", "height", "width")
    return ("batch",) + tuple(f"axis {i}" for i in range(1, rank))


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Align columns: text left, numbers (column indices in ``right``) right."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    return [line(headers), "-" * len(line(headers))] + [line(r) for r in rows]


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------
@dataclass
class SummaryRow:
    """One module of the model, as :func:`summary` sees it.

    Attributes:
        index: position in the order the modules run (0, 1, ...).
        name: the module's name in the model (``'0'``, ``'3'``, ``'features.0'``, ...).
        type: the class name (``'Conv2d'``).
        kind: ``'layer'`` (has weights) or ``'operation'`` (no weights).
        input_shape, output_shape: shapes including the batch axis (``output_shape`` is None on
            the row of a shape error).
        num_params: number of trainable values in this module.
        param_shapes: ``{'weight': (6, 1, 5, 5), 'bias': (6,)}``.
        arithmetic: the worked-out formulas, e.g. ``'H_out = (28 + 2*0 - 5) / 1 + 1 = 24'``.
        group: the layer this row belongs to (1, 2, ...; 0 for operations before the first layer).
        error: on a shape mistake, what went wrong and the fix; else None.
    """

    index: int
    name: str
    type: str
    kind: str
    input_shape: tuple
    output_shape: tuple | None
    num_params: int
    param_shapes: dict[str, tuple]
    arithmetic: list[str] = field(default_factory=list)
    group: int = 0
    error: str | None = None


def _size_formula(axis: str, size: int, kernel: int, stride: int, padding: int) -> str:
    """``H_out = (28 + 2*0 - 5) / 1 + 1 = 24``; with ``floor`` when the division is not exact."""
    top = size + 2 * padding - kernel
    out = top // stride + 1
    inner = f"({size} + 2*{padding} - {kernel}) / {stride}"
    if top % stride:
        return f"{axis}_out = floor({inner}) + 1 = {out}"
    return f"{axis}_out = {inner} + 1 = {out}"


def _arithmetic(module: Module, in_shape: tuple, out_shape: tuple) -> list[str]:
    """The numbers behind a row: output-size formulas and the parameter count."""
    lines: list[str] = []
    window = [getattr(module, a, None) for a in ("kernel_size", "stride", "padding")]
    if (all(isinstance(v, tuple) and len(v) == 2 for v in window) and len(in_shape) == 4
            and len(out_shape) == 4):
        # a sliding window (Conv2d, MaxPool2d, AvgPool2d): show the formula when it is the one used
        (kh, kw), (sh, sw), (ph, pw) = window
        if out_shape[2:] == ((in_shape[2] + 2 * ph - kh) // sh + 1,
                             (in_shape[3] + 2 * pw - kw) // sw + 1):
            lines.append(_size_formula("H", in_shape[2], kh, sh, ph))
            lines.append(_size_formula("W", in_shape[3], kw, sw, pw))
    if isinstance(module, Conv2d):
        kh, kw = module.kernel_size
        lines.append(
            f"channels: in_channels = {module.in_channels}, out_channels = {module.out_channels} "
            f"(= number of filters = number of feature maps out)"
        )
        bias = f" + {module.out_channels}" if module.bias is not None else ""
        lines.append(
            f"params = {module.out_channels}*{module.in_channels}*{kh}*{kw}{bias} = "
            f"{sum(p.size for p in module.parameters()):,}  (weight out*in*kh*kw, bias out)"
        )
    elif isinstance(module, MaxPool2d) or type(module).__name__ == "AvgPool2d":
        lines.append(f"channels unchanged ({in_shape[1]}); no weights")
    elif isinstance(module, Flatten) and len(in_shape) >= 2:
        s, e = module.start_dim % len(in_shape), module.end_dim % len(in_shape)
        dims = in_shape[s : e + 1]
        lines.append(
            f"features = {'*'.join(str(d) for d in dims)} = {_prod(dims)}  (the same numbers, "
            "laid out in one row per sample)"
        )
    elif isinstance(module, Linear):
        bias = f" + {module.out_features}" if module.bias is not None else ""
        lines.append(
            f"params = {module.out_features}*{module.in_features}{bias} = "
            f"{sum(p.size for p in module.parameters()):,}  (weight out*in, bias out)"
        )
    return lines


def _shape_by_forward(module: Module, in_shape: tuple, dtype: Any, device: str) -> tuple:
    """Fallback for modules without ``output_shape``: run a copy on zeros, without gradients."""
    xp = B.get_backend(device).xp
    with B.no_grad():  # eval mode: Dropout passes through, BatchNorm uses its running stats
        y = module.copy().eval()(xp.zeros(in_shape, dtype=dtype))
    return tuple(int(d) for d in y.shape)


def _fix_for(module: Module, in_shape: tuple) -> str:
    """What to change so that ``module`` takes ``in_shape`` (the number that would fit)."""
    if isinstance(module, Linear):
        if len(in_shape) > 2:
            return (
                f"add Flatten() before this layer: it turns {_fmt_shape(in_shape)} into "
                f"({in_shape[0]}, {_prod(in_shape[1:])}); then use Linear({_prod(in_shape[1:])}, "
                f"{module.out_features})"
            )
        if len(in_shape) == 2:
            return (
                f"use Linear({in_shape[1]}, {module.out_features}): in_features must equal the "
                f"{in_shape[1]} features that arrive (or change the layers before it)"
            )
    if isinstance(module, Conv2d) and len(in_shape) == 4 and in_shape[1] != module.in_channels:
        return (
            f"use Conv2d({in_shape[1]}, {module.out_channels}, ...): in_channels must equal the "
            f"{in_shape[1]} channels that arrive (1 for grey images, 3 for colour, else the "
            "previous conv layer's out_channels)"
        )
    if isinstance(module, (Conv2d, MaxPool2d)) and len(in_shape) == 3:
        return "add the batch axis: x[None] turns (C, H, W) into (1, C, H, W)"
    if isinstance(module, (Conv2d, MaxPool2d)) and len(in_shape) == 4:
        return "use a smaller kernel, more padding, or a larger input image"
    return "change this module or the ones before it so that the shapes agree"


@dataclass
class Summary:
    """What :func:`summary` returns: ``print(s)`` shows the table; ``s.rows`` holds the data.

    Attributes:
        model_type: the model's class name.
        input_shape: the shape given, batch axis included.
        dtype: the dtype used for the memory figures.
        rows: one :class:`SummaryRow` per module, in the order they run.
        total_params: trainable values in the whole model.
        activation_values_per_sample: numbers produced by all modules for one sample.
        activation_bytes_per_sample: the same in bytes (times the dtype's size).
        complete: False for the partial summary carried by a :class:`ShapeError`.
        batch_axis_added: the shape was given without its batch axis (``(1, 28, 28)``, the
            torchsummary habit) and a batch of one was put in front: ``input_shape`` is then
            ``(1, 1, 28, 28)``.
    """

    model_type: str
    input_shape: tuple
    dtype: Any
    rows: list[SummaryRow]
    total_params: int
    activation_values_per_sample: int
    activation_bytes_per_sample: int
    complete: bool = True
    batch_axis_added: bool = False

    @property
    def output_shape(self) -> tuple | None:
        return self.rows[-1].output_shape if self.rows else tuple(self.input_shape)

    @property
    def groups(self) -> list[tuple[str, list[SummaryRow]]]:
        """``[('layer 1: Conv2d + ReLU + MaxPool2d', [rows...]), ...]``."""
        n_layers = max((r.group for r in self.rows), default=0)
        out = []
        for g in sorted({r.group for r in self.rows}):
            members = [r for r in self.rows if r.group == g]
            names = " + ".join(r.type for r in members)
            if g == 0:
                title = f"before the first layer: {names}"
            elif not self.complete:
                title = f"layer {g}: {names}"
            else:
                role = "output layer" if g == n_layers else "hidden layer"
                title = f"layer {g} ({role}): {names}"
            out.append((title, members))
        return out

    def table(self, mark_error: bool = True) -> str:
        """The table as text (what ``str(summary)`` returns)."""
        axes = ", ".join(axis_names(self.input_shape))
        head = [
            f"{self.model_type} summary for an input of shape {_fmt_shape(self.input_shape)} "
            f"[{axes}]",
            "kind: 'layer' = has weights (learned); 'operation' = no weights (activation, "
            "pooling, flatten)",
            "",
        ]
        if self.batch_axis_added:
            given = _fmt_shape(self.input_shape[1:])
            head.insert(1, f"batch axis added: {given} has no batch axis, so the table is for a "
                           f"batch of one, {_fmt_shape(self.input_shape)}")
        headers = ["#", "name", "type", "kind", "output shape", "params", "parameter shapes"]
        cells, owners = [], []
        for r in self.rows:
            shapes = ", ".join(f"{k} {_fmt_shape(v)}" for k, v in r.param_shapes.items())
            cells.append([str(r.index), r.name, r.type, r.kind,
                          "ERROR" if r.error else _fmt_shape(r.output_shape),
                          f"{r.num_params:,}", shapes])
            owners.append(r)
        lines = _table(headers, cells, right={0, 5})
        body = lines[2:]
        out = head + lines[:2]
        titles = {members[0].index: title for title, members in self.groups}
        indent = " " * (len(str(max((r.index for r in self.rows), default=0))) + 2)
        for r, text in zip(owners, body, strict=True):
            if r.index in titles:
                out.append(titles[r.index])
            out.append(text)
            for a in r.arithmetic:
                out.append(f"{indent}    {a}")
            if r.error and mark_error:
                for i, msg in enumerate(r.error.splitlines()):
                    out.append(f"{indent}>>> {msg}" if i == 0 else f"{indent}    {msg}")
        out.append("-" * len(lines[1]))
        n_layers = sum(r.kind == "layer" for r in self.rows)
        itemsize = _itemsize(self.dtype)
        so_far = "" if self.complete else " so far"
        out.append(
            f"total parameters{so_far}: {self.total_params:,} ({self.total_params * itemsize:,} "
            f"bytes in {_dtype_name(self.dtype)}) in {n_layers} layers with weights; "
            f"{len(self.rows) - n_layers} operations have none"
        )
        kb = self.activation_bytes_per_sample / 1024
        out.append(
            f"activations per sample (outputs of every module): "
            f"{self.activation_values_per_sample:,} values = "
            f"{self.activation_bytes_per_sample:,} bytes ({kb:.1f} KB) in {_dtype_name(self.dtype)}"
        )
        if self.rows and self.rows[-1].output_shape is not None:
            out.append(f"output shape: {_fmt_shape(self.rows[-1].output_shape)}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _itemsize(dtype: Any) -> int:
    return int(B.normalize_dtype(dtype).itemsize)


def _dtype_name(dtype: Any) -> str:
    return str(B.normalize_dtype(dtype))


def summary(model: Module, input_shape: tuple, device: Any = None, dtype: Any = None) -> Summary:
    """A table of the model: one row per module, with kinds, shapes, parameters and arithmetic.

    Args:
        model: a Module (a Sequential, possibly nested, is read without running any math; another
            container is run once on zeros, on a copy, to learn the order of its modules).
        input_shape: the input's shape with the batch axis, e.g. ``(1, 1, 28, 28)`` for one grey
            28x28 image: [batch, channels, height, width]. Without it, as torchsummary takes it
            (``(1, 28, 28)``: [channels, height, width]), a batch axis of 1 is added and the
            table says "batch axis added". How the two are told apart: the first module that
            fixes the rank of its input (Conv2d, pooling and BatchNorm2d take 4-D, Linear 2-D,
            BatchNorm1d 2-D or 3-D) wants one axis more than was given; when no module fixes it
            before a Flatten or a custom module, the shape is tried as given first and with the
            batch axis only when that is a shape mistake.
        device: where to run the fallback forward on zeros (default: the model's device).
        dtype: dtype for the memory figures and the fallback (default: the model's dtype).

    Returns:
        a :class:`Summary`; ``print()`` it.

    Raises:
        ShapeError (a ValueError) at the first module that cannot take the shape that arrives,
        with the table up to that row and the fix (e.g. "use Linear(192, 120)").

    **Shape:** each row applies its module's ``output_shape``: Conv2d ``(N, C_in, H, W) -> (N,
    C_out, H_out, W_out)``, ``H_out = floor((H + 2*padding - kernel) / stride) + 1``; MaxPool2d
    the same formula, channels unchanged; ReLU keeps the shape; Flatten ``(N, C, H, W) -> (N,
    C*H*W)``; Linear ``(N, in_features) -> (N, out_features)``.
    """
    given = tuple(int(d) for d in input_shape)
    if dtype is None:
        dtype = model.dtype or B.get_default_dtype()
    dtype = B.normalize_dtype(dtype)
    device = B.normalize_device(device if device is not None else (model.device or
                                                                   B.get_default_device()))
    leaves = _leaves(model)
    ranks = _first_input_ranks(leaves)
    if ranks is not None:  # a module says which rank it takes: add the batch axis it lacks
        if len(given) not in ranks and len(given) + 1 in ranks:
            return _summary_of(model, (1,) + given, dtype, device, leaves, batch_axis_added=True)
        return _summary_of(model, given, dtype, device, leaves)
    try:  # no module says: as given, else with a batch axis in front
        return _summary_of(model, given, dtype, device, leaves)
    except ValueError:  # a ShapeError, or a custom container's forward refusing the shape
        with_batch = _summary_or_none(model, (1,) + given, dtype, device, leaves) if given else None
        if with_batch is None:
            raise  # the mistake is not a missing batch axis: report the shape as given
        return with_batch


# the ranks (batch axis included) each module with a fixed input rank takes
_INPUT_RANKS: tuple[tuple[type, tuple[int, ...]], ...] = (
    (Conv2d, (4,)), (MaxPool2d, (4,)), (AvgPool2d, (4,)), (AdaptiveAvgPool2d, (4,)),
    (BatchNorm2d, (4,)), (Linear, (2,)), (BatchNorm1d, (2, 3)),
)


def _first_input_ranks(leaves: list[tuple[str, Module]] | None) -> tuple[int, ...] | None:
    """The input ranks that the model's first rank-fixing module accepts, when only elementwise
    operations (ReLU, Dropout) come before it; None when that is unknown (a Flatten, a custom
    module or container comes first)."""
    for _, module in leaves or ():
        if type(module) in (ReLU, Dropout):  # elementwise: any rank passes through
            continue
        for cls, ranks in _INPUT_RANKS:
            if isinstance(module, cls):
                return ranks
        return None
    return None


def _summary_or_none(model: Module, in_shape: tuple, dtype: Any, device: str,
                     leaves: list[tuple[str, Module]] | None) -> Summary | None:
    """The summary with a batch axis added, or None when that shape does not fit either."""
    try:
        return _summary_of(model, in_shape, dtype, device, leaves, batch_axis_added=True)
    except (ValueError, TypeError, RuntimeError):
        return None


def _summary_of(model: Module, in_shape: tuple, dtype: Any, device: str,
                leaves: list[tuple[str, Module]] | None,
                batch_axis_added: bool = False) -> Summary:
    """The summary for ``in_shape`` (batch axis included); see :func:`summary`."""
    if leaves is None:
        steps = _recorded_shapes(model, in_shape, dtype, device)
    else:
        steps = [(name, m, None) for name, m in leaves]

    rows: list[SummaryRow] = []
    shape = in_shape
    for i, (name, module, recorded) in enumerate(steps):
        params = {pname: tuple(p.shape) for pname, p in module.named_parameters()}
        row = SummaryRow(
            index=i, name=name, type=type(module).__name__,
            kind="layer" if _is_layer(module) else "operation",
            input_shape=shape if recorded is None else recorded[0], output_shape=None,
            num_params=sum(p.size for p in module.parameters()), param_shapes=params,
        )
        rows.append(row)
        try:
            if recorded is not None:
                out = recorded[1]
            elif isinstance(module, ReLU):
                out = shape  # elementwise: the shape is kept
            elif hasattr(module, "output_shape"):
                out = tuple(int(d) for d in module.output_shape(shape))
            else:
                out = _shape_by_forward(module, shape, dtype, device)
        except (ValueError, TypeError, RuntimeError) as exc:
            row.error = f"{exc}\nfix: {_fix_for(module, row.input_shape)}"
            _assign_groups(rows)
            partial = _make_summary(model, in_shape, dtype, rows, complete=False,
                                    batch_axis_added=batch_axis_added)
            raise ShapeError(
                f"shape mistake at row {i} ({name}: {row.type}) for the input shape "
                f"{_fmt_shape(row.input_shape)}:\n{exc}\nfix: {_fix_for(module, row.input_shape)}"
                f"\n\nThe model so far:\n{partial.table()}",
                partial, row,
            ) from exc
        row.output_shape = out
        row.arithmetic = _arithmetic(module, row.input_shape, out)
        shape = out
    _assign_groups(rows)
    return _make_summary(model, in_shape, dtype, rows, batch_axis_added=batch_axis_added)


def _assign_groups(rows: list[SummaryRow]) -> None:
    """A layer and the operations after it form one group. A Flatten (and anything between it
    and the next layer) joins the NEXT layer: it prepares that Linear layer's input. A
    normalisation (BatchNorm) right after a layer stays in that layer's group."""
    current, joining_next = 0, False
    for j, r in enumerate(rows):
        if r.kind == "layer" and "Norm" in r.type and current > 0 and not joining_next:
            r.group = current  # BatchNorm has weights but belongs to the layer it normalises
        elif r.kind == "layer":
            current += 1
            joining_next = False
            r.group = current
        elif r.type == "Flatten" or joining_next:
            later_layer = any(x.kind == "layer" for x in rows[j + 1 :])
            joining_next = later_layer
            r.group = current + 1 if later_layer else current
        else:
            r.group = current


def _make_summary(model: Module, in_shape: tuple, dtype: Any, rows: list[SummaryRow],
                  complete: bool = True, batch_axis_added: bool = False) -> Summary:
    values = sum(_prod(r.output_shape[1:]) for r in rows if r.output_shape is not None)
    total = (sum(p.size for p in model.parameters()) if complete
             else sum(r.num_params for r in rows))
    return Summary(
        model_type=type(model).__name__, input_shape=in_shape, dtype=dtype, rows=rows,
        total_params=total, activation_values_per_sample=values,
        activation_bytes_per_sample=values * _itemsize(dtype), complete=complete,
        batch_axis_added=batch_axis_added,
    )


# ------------------------------------------------------------------------------------------------
# Recording what each module does (on a copy of the model)
# ------------------------------------------------------------------------------------------------
@dataclass
class _Call:
    name: str
    module: Module
    input: Any
    output: Any
    grad_output: Any = None


def _instrument(model: Module, calls: list[_Call], keep_arrays: bool = True) -> None:
    """Replace each leaf module's forward/backward by a recording wrapper (on this object only:
    call it on a copy). Records go to ``calls`` in the order the modules run."""
    pending: dict[int, list[_Call]] = {}
    for name, m in model.named_modules():
        if any(True for _ in m.children()):
            continue
        orig_forward, orig_backward = m.forward, m.backward
        label = name or type(m).__name__

        def forward(*args: Any, _f=orig_forward, _m=m, _name=label, **kwargs: Any) -> Any:
            y = _f(*args, **kwargs)
            x = args[0] if args else None
            call = _Call(_name, _m, x if keep_arrays else tuple(x.shape),
                         y if keep_arrays else tuple(y.shape))
            calls.append(call)
            pending.setdefault(id(_m), []).append(call)
            return y

        def backward(grad_output: Any, _b=orig_backward, _m=m) -> Any:
            stack = pending.get(id(_m))
            if stack:
                stack.pop().grad_output = grad_output
            return _b(grad_output)

        object.__setattr__(m, "forward", forward)
        object.__setattr__(m, "backward", backward)


def _recorded_shapes(model: Module, in_shape: tuple, dtype: Any, device: str) -> list:
    """For a custom container: run a copy on zeros and note each leaf's input and output shape."""
    work = model.copy().eval()
    calls: list[_Call] = []
    _instrument(work, calls, keep_arrays=False)
    xp = B.get_backend(device).xp
    with B.no_grad():
        work(xp.zeros(in_shape, dtype=dtype))
    return [(c.name, c.module, (c.input, c.output)) for c in calls]


def record_forward(model: Module, x: Any) -> list[tuple[str, Module, Any, Any]]:
    """Run ``x`` through a copy of ``model`` without gradients; return ``(name, module, input,
    output)`` for every leaf module in the order they ran (the caller's model is untouched)."""
    work = model.copy()
    calls: list[_Call] = []
    _instrument(work, calls)
    with B.no_grad():
        work(x)
    return [(c.name, c.module, c.input, c.output) for c in calls]


# ------------------------------------------------------------------------------------------------
# Trace
# ------------------------------------------------------------------------------------------------
def _host(a: Any) -> Any:
    return B.to_numpy(a).astype("float64")


def _stats(a: Any) -> dict[str, float]:
    h = _host(a)
    return {"mean": float(h.mean()), "std": float(h.std()), "min": float(h.min()),
            "max": float(h.max()), "zeros": float((h == 0).mean())}


def _grad_stats(g: Any) -> dict[str, float]:
    h = _host(g)
    return {"mean_abs": float(abs(h).mean()), "std": float(h.std()),
            "max_abs": float(abs(h).max())}


def _norm(a: Any) -> float:
    h = _host(a)
    return math.sqrt(float((h * h).sum()))


@dataclass
class TraceRow:
    """One module in :func:`trace`.

    Attributes:
        index, name, type, kind: as in :class:`SummaryRow`.
        input_shape, output_shape: real shapes of this batch.
        input_axes, output_axes: the meaning of each axis (see :func:`axis_names`).
        output_stats: ``mean``, ``std``, ``min``, ``max`` of the output and ``zeros``, the share
            of exact zeros in [0, 1] (after a ReLU: the values it cut off).
        grad_stats: of dL/d(output) on the way back: ``mean_abs``, ``std``, ``max_abs``.
        param_grad_norms: ``{'weight': ||dL/dW||, 'bias': ||dL/db||}`` (L2 norms).
        param_norms: ``{'weight': ||W||, ...}`` for comparison.
    """

    index: int
    name: str
    type: str
    kind: str
    input_shape: tuple
    output_shape: tuple
    input_axes: tuple
    output_axes: tuple
    output_stats: dict[str, float]
    grad_stats: dict[str, float] | None
    param_grad_norms: dict[str, float]
    param_norms: dict[str, float]

    @property
    def label(self) -> str:
        """``'Conv2d'``, or ``'features.0 Conv2d'`` when the name is not just the position."""
        return self.type if self.name == str(self.index) else f"{self.name} {self.type}"

    @property
    def input_rank(self) -> int:
        return len(self.input_shape)

    @property
    def output_rank(self) -> int:
        return len(self.output_shape)


@dataclass
class TraceReport:
    """What :func:`trace` returns: ``print(report)`` shows the forward and backward tables.

    Attributes:
        rows: one :class:`TraceRow` per module call, in forward order.
        loss: the loss of the batch (a float).
        loss_type: the loss function's class name.
        logits_grad_stats: statistics of dL/d(model output), where backpropagation starts.
        input_grad_stats: statistics of dL/d(input batch), where it ends.
    """

    rows: list[TraceRow]
    loss: float
    loss_type: str
    logits_grad_stats: dict[str, float]
    input_grad_stats: dict[str, float] | None

    def __str__(self) -> str:
        n = self.rows[0].input_shape[0] if self.rows and self.rows[0].input_shape else "?"
        out = [f"FORWARD: one batch of {n}, module by module (the input first)", ""]
        fw = []
        if self.rows:
            first = self.rows[0]
            fw.append(["", "input", "", "", _fmt_shape(first.input_shape),
                       str(first.input_rank), "(" + ", ".join(first.input_axes) + ")",
                       "", "", "", "", ""])
        for r in self.rows:
            s = r.output_stats
            fw.append([str(r.index), r.label, r.kind, _fmt_shape(r.input_shape),
                       _fmt_shape(r.output_shape), str(r.output_rank),
                       "(" + ", ".join(r.output_axes) + ")",
                       f"{s['mean']:+.3f}", f"{s['std']:.3f}", f"{s['min']:+.3f}",
                       f"{s['max']:+.3f}", f"{100 * s['zeros']:.0f}%"])
        headers = ["#", "module", "kind", "input", "output", "rank", "axes of the output",
                   "mean", "std", "min", "max", "zeros"]
        for i, row in enumerate(fw):
            if i == 0 and row[1] == "input":  # the input row shows its shape in 'output'
                row[3] = ""
        out += _table(headers, fw, right={0, 5, 7, 8, 9, 10, 11})
        out += ["", f"loss: {self.loss_type} = {self.loss:.4f}", ""]
        out.append("BACKWARD: the gradient dL/d(output) that flows into each module, last "
                   "module first; and dL/d(weights) of the layers")
        out.append("(it points where the loss grows fastest: the optimizer steps the other way)")
        out.append("")
        bw = []
        g = self.logits_grad_stats
        bw.append(["", "dL/d(logits)", _fmt_shape(self.rows[-1].output_shape) if self.rows else "",
                   f"{g['mean_abs']:.2e}", f"{g['std']:.2e}", f"{g['max_abs']:.2e}", ""])
        for r in reversed(self.rows):
            gs = r.grad_stats
            params = "  ".join(
                f"|dL/d{k}| {v:.2e} (|{k}| {r.param_norms[k]:.2e})"
                for k, v in r.param_grad_norms.items()
            )
            if gs is None:
                bw.append([str(r.index), r.label, _fmt_shape(r.output_shape), "-", "-", "-",
                           params])
            else:
                bw.append([str(r.index), r.label, _fmt_shape(r.output_shape),
                           f"{gs['mean_abs']:.2e}", f"{gs['std']:.2e}", f"{gs['max_abs']:.2e}",
                           params])
        if self.input_grad_stats is not None:
            g = self.input_grad_stats
            bw.append(["", "dL/d(input)", _fmt_shape(self.rows[0].input_shape),
                       f"{g['mean_abs']:.2e}", f"{g['std']:.2e}", f"{g['max_abs']:.2e}", ""])
        headers = ["#", "module", "dL/d(output) shape", "mean|g|", "std", "max|g|",
                   "weight gradients (L2 norms)"]
        out += _table(headers, bw, right={0, 3, 4, 5})
        return "\n".join(out)


def trace(model: Module, x: Any, labels: Any, loss_fn: Module) -> TraceReport:
    """One forward and one backward pass on a COPY of ``model``, reported module by module.

    Args:
        model: any Module (its leaf modules are reported in the order they run).
        x: a batch on the model's device, e.g. ``(N, 1, 28, 28)`` float32.
        labels: ``(N,)`` integer class numbers on the same device.
        loss_fn: e.g. ``tinynet.nn.CrossEntropyLoss()`` (a copy is used too).

    Returns:
        a :class:`TraceReport`; ``print()`` it.

    The caller's model keeps its weights, gradients, caches and train/eval mode: all the work
    happens on ``model.copy()``.

    **Shape:** every row shows input and output shapes with their rank and axes, e.g.
    ``(N, 6, 24, 24)`` rank 4 (batch, feature maps, height, width).

    **Backward:** the rows of the second table are dL/d(output of the module), the ``grad_output``
    its ``backward`` receives; a layer's row also shows ||dL/dW|| and ||dL/db||.
    """
    work = model.copy()
    work.zero_grad()
    calls: list[_Call] = []
    _instrument(work, calls)
    lf = loss_fn.copy()
    logits = work(x)
    loss = lf(logits, labels)
    dlogits = lf.backward()
    dx = work.backward(dlogits)

    rows: list[TraceRow] = []
    seen_conv = False
    for i, c in enumerate(calls):
        in_axes = axis_names(tuple(c.input.shape), after_conv=seen_conv)
        if isinstance(c.module, Conv2d):
            seen_conv = True
        out_axes = axis_names(tuple(c.output.shape), after_conv=seen_conv)
        grads = {k: _norm(p.grad) for k, p in c.module.named_parameters() if p.grad is not None}
        norms = {k: _norm(p.data) for k, p in c.module.named_parameters()}
        rows.append(TraceRow(
            index=i, name=c.name, type=type(c.module).__name__,
            kind="layer" if _is_layer(c.module) else "operation",
            input_shape=tuple(int(d) for d in c.input.shape),
            output_shape=tuple(int(d) for d in c.output.shape),
            input_axes=in_axes, output_axes=out_axes,
            output_stats=_stats(c.output),
            grad_stats=_grad_stats(c.grad_output) if c.grad_output is not None else None,
            param_grad_norms=grads, param_norms=norms,
        ))
    return TraceReport(
        rows=rows, loss=float(B.to_numpy(loss)), loss_type=type(loss_fn).__name__,
        logits_grad_stats=_grad_stats(dlogits),
        input_grad_stats=_grad_stats(dx) if hasattr(dx, "shape") else None,
    )
