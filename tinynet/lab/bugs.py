"""Break it: a catalogue of realistic backward-pass bugs, and what catches each.

"How would I know my backward is wrong?" Break it on purpose and watch. Each entry of
:data:`CATALOGUE` is one small, realistic mistake in ONE reference kernel (``tinynet/functional``),
the kind a learner makes when writing a backward pass by hand: a sign, a transpose, ``=`` for
``+=``, an off-by-one, a mean for a sum, a forgotten term. ``bug.apply()`` is a context manager:
inside it only the reference kernels run (``tinynet.use_reference()``) and the one kernel is
replaced by its broken copy; on the way out (also on an error) everything is put back::

    from tinynet.lab import bugs

    bug = bugs.get_bug("linear-dx-sign")
    print(bug.diff)                      # the one line that differs from the reference kernel
    with bug.apply():
        ...                              # every Linear now returns -dX
    report = bugs.run_catalogue(steps=100)
    print(bugs.format_table(report))

Three checks look at each bug (:func:`run_catalogue`):

1. **gradcheck** (``tinynet.gradcheck``, float64 central differences) on a small model that uses
   the broken kernel (:data:`CHECKS`): does the backward agree with the forward?
2. **PyTorch parity** (where torch is installed): the same weights and input through PyTorch's
   autograd; are the gradients the same?
3. **A short training run** on the embedded Fashion-MNIST sample, N steps of SGD from the same
   seed, against the correct code: does the loss still go down?

The lesson: many of these bugs still lower the loss (the last layers learn anyway, or the wrong
gradient still points roughly downhill), so "it trains" proves little. The gradient check finds
every one of them.

One honest limit: gradcheck differentiates the SAME forward it checks. A bug in a forward (softmax
without its max shift) changes nothing where the forward is still right, so it is caught only on
inputs where it matters: logits near 1000, where exp overflows and the loss turns inf. The check
designed for it (:data:`CHECKS` ``"large-logits"``) says so, and a non-finite loss or gradient
counts as caught (``tinynet.gradcheck`` alone would let NaN through: ``nan > tolerance`` is
False).
"""

from __future__ import annotations

import importlib
import math
import re
import textwrap
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from .. import backend as B
from .. import kernels, nn
from ..backend import backend_of
from ..functional import conv as _conv
from ..functional._geometry import offset_slice, pad2d, window_geometry, window_view
from ..functional.batchnorm import per_channel, values_per_channel
from ..functional.loss import CrossEntropyCache
from ..gradcheck import GradcheckError, gradcheck
from ..optim import SGD

FUNCTIONAL = "tinynet.functional"


# ----------------------------------------------------------------------------------------------
# What a bug is, and how it is put in and taken out
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    """Replace ``<module>.<attribute>`` (e.g. ``tinynet.functional.linear_backward``)."""

    module: str
    attribute: str
    replacement: Callable


@dataclass(frozen=True)
class Bug:
    """One realistic mistake in one reference kernel.

    Attributes:
        name: a short kebab-case name (``"linear-dx-sign"``), as the example's ``--bug`` takes it.
        wrong: what is wrong, in one sentence.
        kernel: the reference kernel the mistake is in (``"tinynet.functional.linear_backward"``).
        diff: the line(s) that differ from the reference kernel, as a diff (``-`` right,
            ``+`` wrong).
        patches: the attributes replaced while the bug is applied: the package attribute that
            the dispatcher looks up and, where it is used, the submodule's own.
        check: the name of the small model in :data:`CHECKS` that uses the broken kernel.
        forward_only: the mistake is in a forward, so gradcheck alone cannot see it (see the
            module docstring).
    """

    name: str
    wrong: str
    kernel: str
    diff: str
    patches: tuple[Patch, ...]
    check: str
    forward_only: bool = False

    def targets(self) -> list[tuple[Any, str]]:
        """``(module object, attribute name)`` of every attribute the bug replaces."""
        return [(importlib.import_module(p.module), p.attribute) for p in self.patches]

    @contextmanager
    def apply(self) -> Iterator[Bug]:
        """Run the ``with`` block on the reference kernels, with this bug in one of them.

        Every replaced attribute and the kernel mode are restored on the way out, also when
        the block raises.
        """
        with kernels.use_reference():
            saved = []  # (module, attribute, original): filled one by one, so a failure half
            try:  # way through still restores what was already replaced
                for patch in self.patches:
                    module = importlib.import_module(patch.module)
                    saved.append((module, patch.attribute, getattr(module, patch.attribute)))
                    setattr(module, patch.attribute, patch.replacement)
                yield self
            finally:
                for module, attribute, original in reversed(saved):
                    setattr(module, attribute, original)

    def __str__(self) -> str:
        return f"{self.name}: {self.wrong}\n  in {self.kernel}\n" + "\n".join(
            "  " + line for line in self.diff.splitlines())


def _kernel_patches(name: str, submodule: str, replacement: Callable) -> tuple[Patch, ...]:
    """Patch a kernel where the dispatcher finds it (the package) and in its own file."""
    return (Patch(FUNCTIONAL, name, replacement),
            Patch(f"{FUNCTIONAL}.{submodule}", name, replacement))


# ----------------------------------------------------------------------------------------------
# The broken kernels: each a copy of the reference kernel with ONE realistic mistake
# (the docstring names the line that differs)
# ----------------------------------------------------------------------------------------------
def linear_backward_dx_sign(dy: Any, cache: Any, input_grad: bool = True):
    """``tinynet.functional.linear_backward`` with dX = -(dY W): a minus sign that crept in.

    Differs from the reference in the ``dx = ...`` line only.
    """
    x, weight, has_bias = cache
    dx = -(dy @ weight) if input_grad else None  # BUG: the sign
    dw = dy.T @ x
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db


def linear_backward_dw_transpose(dy: Any, cache: Any, input_grad: bool = True):
    """``tinynet.functional.linear_backward`` with dW = x^T dY (the transpose), reshaped until
    the shape error went away.

    Differs from the reference in the ``dw = ...`` line only.
    """
    x, weight, has_bias = cache
    dx = dy @ weight if input_grad else None
    dw = (x.T @ dy).reshape(weight.shape)  # BUG: (in, out) reshaped to (out, in), not transposed
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db


def linear_backward_bias_mean(dy: Any, cache: Any, input_grad: bool = True):
    """``tinynet.functional.linear_backward`` with db averaged over the batch instead of summed.

    Differs from the reference in the ``db = ...`` line only.
    """
    x, weight, has_bias = cache
    dx = dy @ weight if input_grad else None
    dw = dy.T @ x
    db = dy.mean(axis=0) if has_bias else None  # BUG: mean, not sum (dL/db is a sum over n)
    return dx, dw, db


def conv2d_backward_dw_first_image(dy: Any, cache: Any, input_grad: bool = True):
    """``tinynet.functional.conv2d_backward`` with dW taken from the first image of the batch
    only (the per-image formula, never summed over the batch).

    Differs from the reference in the ``dw = ...`` line only.
    """
    cols, weight, x_shape, stride, padding, has_bias = cache
    F = weight.shape[0]
    dY = dy.transpose(0, 2, 3, 1).reshape(-1, F)  # rows (n, i, j), like cols
    P = dY.shape[0] // x_shape[0]  # H_out * W_out: the rows of ONE image
    dw = (dY[:P].T @ cols[:P]).reshape(weight.shape)  # BUG: image 0 only, no sum over n
    db = dY.sum(axis=0) if has_bias else None
    if not input_grad:
        return None, dw, db
    dcols = dY @ weight.reshape(F, -1)
    return _conv.col2im(dcols, x_shape, weight.shape[2:], stride, padding), dw, db


def col2im_assign(dcols: Any, x_shape: tuple, kernel: tuple, stride: tuple,
                  padding: tuple) -> Any:
    """``tinynet.functional.conv.col2im`` with ``=`` instead of ``+=`` in the strided adds: a
    pixel that several windows overlap keeps only the share of the last offset written.

    Differs from the reference in the ``offset_slice(...)[...] = ...`` line only.
    """
    (N, C, H, W), (kh, kw), (ph, pw) = x_shape, kernel, padding
    _, _, _, (ho, wo) = window_geometry(x_shape, kernel, stride, padding)
    d = dcols.reshape(N, ho, wo, C, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    dx_pad = backend_of(dcols).xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dcols.dtype)
    for u in range(kh):
        for v in range(kw):
            offset_slice(dx_pad, u, v, stride, (ho, wo))[...] = d[..., u, v]  # BUG: = for +=
    return dx_pad[:, :, ph : ph + H, pw : pw + W]


def col2im_drops_overlap(dcols: Any, x_shape: tuple, kernel: tuple, stride: tuple,
                         padding: tuple) -> Any:
    """``tinynet.functional.conv.col2im`` whose loop over the kernel rows stops one short: the
    share each window sends back to its last row, where it overlaps the next window, is lost.

    Differs from the reference in the ``for u in range(...)`` line only.
    """
    (N, C, H, W), (kh, kw), (ph, pw) = x_shape, kernel, padding
    _, _, _, (ho, wo) = window_geometry(x_shape, kernel, stride, padding)
    d = dcols.reshape(N, ho, wo, C, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    dx_pad = backend_of(dcols).xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dcols.dtype)
    for u in range(kh - 1):  # BUG: off by one, the last kernel row is never added back
        for v in range(kw):
            offset_slice(dx_pad, u, v, stride, (ho, wo))[...] += d[..., u, v]
    return dx_pad[:, :, ph : ph + H, pw : pw + W]


def relu_forward_mask_on_output(x: Any):
    """``tinynet.functional.relu_forward`` with the mask taken on the OUTPUT, ``y >= 0``: always
    true (``y = max(x, 0)`` is never negative), so every gradient passes, even where x < 0.

    Differs from the reference in the mask only (``y >= 0`` for ``x > 0``).
    """
    y = backend_of(x).xp.maximum(x, 0)
    return y, y >= 0  # BUG: the output's >= 0, not the input's > 0


class EveryTieCache(NamedTuple):
    """The broken max pool's cache: a mask of EVERY maximum of each window (the reference keeps
    one argmax)."""

    winners: Any  # (N, C, H_out, W_out, kh*kw) booleans
    x_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple


def maxpool2d_forward_every_tie(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """``tinynet.functional.maxpool2d_forward`` that marks every cell equal to the window's
    maximum as a winner, so a tie sends the whole gradient to EACH tied input.

    Differs from the reference in the ``argmax = ...`` line (a mask ``flat == max`` instead);
    :func:`maxpool2d_backward_every_tie` routes through that mask.
    """
    kernel, stride, padding, out_hw = window_geometry(x.shape, kernel_size, stride, padding)
    windows = window_view(pad2d(x, padding, value=-float("inf")), kernel, stride, out_hw)
    flat = windows.reshape(windows.shape[:4] + (-1,))  # (N, C, ho, wo, kh*kw)
    y = flat.max(axis=4)
    winners = flat == y[..., None]  # BUG: every maximum wins, not the first one
    return y, EveryTieCache(winners, x.shape, kernel, stride, padding)


def maxpool2d_backward_every_tie(dy: Any, cache: EveryTieCache):
    """The max-pool backward routing through the mask of :func:`maxpool2d_forward_every_tie`."""
    winners, (N, C, H, W), (kh, kw), stride, (ph, pw) = cache
    dx_pad = backend_of(dy).xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for u in range(kh):
        for v in range(kw):
            offset_slice(dx_pad, u, v, stride, dy.shape[2:])[...] += dy * winners[..., u * kw + v]
    return dx_pad[:, :, ph : ph + H, pw : pw + W]


def cross_entropy_forward_no_shift(logits: Any, labels: Any):
    """``tinynet.functional.cross_entropy_forward`` without the max shift: ``exp(z)`` overflows
    to inf once a logit passes ~709 (float64; ~88 in float32), and inf / inf is NaN.

    Differs from the reference in the ``shifted = ...`` line only. Where nothing overflows the
    math is exactly the same: no gradient check can see it there.
    """
    xp = backend_of(logits).xp
    n = logits.shape[0]
    shifted = logits  # BUG: no "- logits.max(axis=1, keepdims=True)"
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_sum_exp = xp.log(sum_exp)
    rows = xp.arange(n)
    loss = (log_sum_exp[:, 0] - shifted[rows, labels]).mean()
    probs = exp / sum_exp
    return loss, CrossEntropyCache(probs, labels)


def batchnorm_backward_no_mean_term(dy: Any, cache: Any):
    """``tinynet.functional.batchnorm_backward`` without the ``- sum(dxhat)`` term: the path
    through the batch MEAN (every x moves the mean, the mean moves every xhat) is forgotten.

    Differs from the reference in the ``dxhat = (m * dxhat - ...)`` line only.
    """
    xhat, inv_std, gamma, batch_stats = cache
    axes = (0,) + tuple(range(2, dy.ndim))
    dbeta, dgamma = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    dxhat = dy if gamma is None else dy * per_channel(gamma, dy.ndim)
    if batch_stats:
        m = values_per_channel(dy.shape)
        dxhat = (m * dxhat - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)) / m  # BUG
    dx = dxhat * per_channel(inv_std, dy.ndim)
    if gamma is None:
        return dx, None, None
    return dx, dgamma, dbeta


CATALOGUE: tuple[Bug, ...] = (
    Bug("linear-dx-sign", "Linear's dL/dx has its sign flipped.",
        f"{FUNCTIONAL}.linear_backward",
        "-    dx = dy @ weight if input_grad else None\n"
        "+    dx = -(dy @ weight) if input_grad else None",
        _kernel_patches("linear_backward", "linear", linear_backward_dx_sign), "mlp"),
    Bug("linear-dw-transpose",
        "Linear's dW is x^T dY (the transpose), reshaped to the weight's shape to silence the "
        "shape error.",
        f"{FUNCTIONAL}.linear_backward",
        "-    dw = dy.T @ x\n"
        "+    dw = (x.T @ dy).reshape(weight.shape)",
        _kernel_patches("linear_backward", "linear", linear_backward_dw_transpose), "mlp"),
    Bug("col2im-assign",
        "col2im writes each window's share with = instead of +=, so overlapping windows "
        "overwrite each other.",
        f"{FUNCTIONAL}.conv.col2im",
        "-            offset_slice(dx_pad, u, v, stride, (ho, wo))[...] += d[..., u, v]\n"
        "+            offset_slice(dx_pad, u, v, stride, (ho, wo))[...] = d[..., u, v]",
        (Patch(f"{FUNCTIONAL}.conv", "col2im", col2im_assign),), "conv"),
    Bug("relu-mask-on-output",
        "ReLU's mask is taken on the output, y >= 0, which is always true: every gradient "
        "passes.",
        f"{FUNCTIONAL}.relu_forward",
        "-    return backend_of(x).xp.maximum(x, 0), x > 0\n"
        "+    y = backend_of(x).xp.maximum(x, 0); return y, y >= 0",
        _kernel_patches("relu_forward", "activation", relu_forward_mask_on_output), "mlp"),
    Bug("maxpool-every-tie",
        "Max pool sends a window's gradient to every input that ties for the maximum, not "
        "to the first one.",
        f"{FUNCTIONAL}.maxpool2d_forward / maxpool2d_backward",
        "-    argmax = flat.argmax(axis=4)  # the first maximum wins ties\n"
        "+    winners = flat == flat.max(axis=4, keepdims=True)  # every maximum wins",
        _kernel_patches("maxpool2d_forward", "pooling", maxpool2d_forward_every_tie)
        + _kernel_patches("maxpool2d_backward", "pooling", maxpool2d_backward_every_tie),
        "ties"),
    Bug("col2im-drops-overlap",
        "col2im's loop over kernel rows stops one short, so the share each window sends to its "
        "last row (the overlap with the next window) is dropped.",
        f"{FUNCTIONAL}.conv.col2im",
        "-    for u in range(kh):\n"
        "+    for u in range(kh - 1):",
        (Patch(f"{FUNCTIONAL}.conv", "col2im", col2im_drops_overlap),), "conv"),
    Bug("softmax-no-shift",
        "Softmax skips the max shift, so exp(z) overflows for large logits (a FORWARD bug).",
        f"{FUNCTIONAL}.cross_entropy_forward",
        "-    shifted = logits - logits.max(axis=1, keepdims=True)\n"
        "+    shifted = logits",
        _kernel_patches("cross_entropy_forward", "loss", cross_entropy_forward_no_shift),
        "large-logits", forward_only=True),
    Bug("batchnorm-no-mean-term",
        "BatchNorm's backward forgets the - sum(dxhat) term, the gradient through the batch "
        "mean.",
        f"{FUNCTIONAL}.batchnorm_backward",
        "-        dxhat = (m * dxhat - dxhat.sum(axis=axes, keepdims=True) - xhat * (...)) / m\n"
        "+        dxhat = (m * dxhat - xhat * (...)) / m",
        _kernel_patches("batchnorm_backward", "batchnorm", batchnorm_backward_no_mean_term),
        "batchnorm"),
    Bug("conv-dw-first-image",
        "Conv's dW comes from the first image of the batch only: never summed over the batch.",
        f"{FUNCTIONAL}.conv2d_backward",
        "-    dw = (dY.T @ cols).reshape(weight.shape)\n"
        "+    dw = (dY[:P].T @ cols[:P]).reshape(weight.shape)  # P = H_out*W_out: image 0",
        _kernel_patches("conv2d_backward", "conv", conv2d_backward_dw_first_image), "conv"),
    Bug("linear-bias-mean",
        "Linear's bias gradient is averaged over the batch instead of summed.",
        f"{FUNCTIONAL}.linear_backward",
        "-    db = dy.sum(axis=0) if has_bias else None\n"
        "+    db = dy.mean(axis=0) if has_bias else None",
        _kernel_patches("linear_backward", "linear", linear_backward_bias_mean), "mlp"),
)

NAMES = tuple(bug.name for bug in CATALOGUE)


def get_bug(name: str) -> Bug:
    """The catalogued bug called ``name`` (a ValueError listing the names otherwise)."""
    for bug in CATALOGUE:
        if bug.name == name:
            return bug
    raise ValueError(f"no bug called {name!r} in the catalogue; the bugs are: {', '.join(NAMES)}")


# ----------------------------------------------------------------------------------------------
# The small float64 models the checks run (each uses the kernels its bugs break)
# ----------------------------------------------------------------------------------------------
class RepeatColumns(nn.Module):
    """Nearest-neighbour upsampling along the width: every column twice.

    ``(N, C, H, W) -> (N, C, H, 2W)``, ``y[..., 2j] = y[..., 2j + 1] = x[..., j]``.

    **Backward:** ``dx[..., j] = dy[..., 2j] + dy[..., 2j + 1]`` (each input was used twice).

    Why it is here: a max pool's derivative is undefined at a tie, and finite differences of
    one tied entry measure half the gradient, so a gradient check can say nothing about ties
    placed in its input. Ties MADE by the model are another matter: after this module, the two
    columns of every 2x2 window are equal and move together, the pooled function of x stays
    smooth, and gradcheck sees whether the tie is routed once (right) or twice (wrong).
    """

    def forward(self, x: Any) -> Any:
        self.save_for_backward(x.shape)
        return backend_of(x).xp.repeat(x, 2, axis=3)

    def backward(self, grad_output: Any) -> Any:
        n, c, h, w = self.saved()
        return grad_output.reshape(n, c, h, w, 2).sum(axis=4)


@dataclass(frozen=True)
class Check:
    """A small float64 model, its inputs, and what it is for."""

    name: str
    description: str
    build: Callable[[Any], tuple[nn.Module, tuple]]  # rng -> (model, inputs)
    inputs: str = ""  # what is special about the inputs, said in the table ("logits ~1000")


def _normal(rng: Any, shape: tuple, scale: float = 1.0, shift: float = 0.0) -> Any:
    return B.get_backend("cpu").asarray(shift + scale * rng.standard_normal(shape),
                                        dtype=B.float64)


def _build_mlp(rng: Any):
    model = nn.Sequential(nn.Linear(6, 5, dtype=B.float64), nn.ReLU(),
                          nn.Linear(5, 4, dtype=B.float64))
    return model, (_normal(rng, (3, 6)),)


def _build_conv(rng: Any):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=B.float64))
    return model, (_normal(rng, (2, 2, 5, 5)),)


def _build_ties(rng: Any):
    return nn.Sequential(RepeatColumns(), nn.MaxPool2d(2)), (_normal(rng, (2, 2, 4, 3)),)


def _build_batchnorm(rng: Any):
    model = nn.Sequential(nn.BatchNorm2d(3, dtype=B.float64))
    return model, (_normal(rng, (4, 3, 2, 2), scale=2.0, shift=0.5),)


def _build_large_logits(rng: Any):
    logits = _normal(rng, (4, 5), scale=3.0, shift=1000.0)
    labels = B.get_backend("cpu").asarray(rng.integers(0, 5, size=4), dtype="int64")
    return nn.CrossEntropyLoss(), (logits, labels)


CHECKS: dict[str, Check] = {
    "mlp": Check("mlp", "Linear(6,5) - ReLU - Linear(5,4) on a batch of 3",
                 _build_mlp),
    "conv": Check("conv", "Conv2d(2,3,3, padding=1) on (2,2,5,5): overlapping windows, 2 images",
                  _build_conv),
    "ties": Check("ties", "RepeatColumns - MaxPool2d(2) on (2,2,4,3): every window holds a tie",
                  _build_ties),
    "batchnorm": Check("batchnorm", "BatchNorm2d(3), training mode, on (4,3,2,2)",
                       _build_batchnorm),
    "large-logits": Check("large-logits",
                          "CrossEntropyLoss on logits 1000 + 3 z, shape (4,5): where exp "
                          "overflows without the max shift", _build_large_logits,
                          inputs="logits ~1000"),
}


def build_check(check: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    """The model and inputs of the check ``check`` (a key of :data:`CHECKS`), drawn from
    ``seed``."""
    if check not in CHECKS:
        raise ValueError(f"no check called {check!r}; the checks are: {', '.join(CHECKS)}")
    return CHECKS[check].build(B.get_backend("cpu").make_rng(seed))


# ----------------------------------------------------------------------------------------------
# Check 1: gradcheck (and, for every bug, a look for inf/NaN first)
# ----------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """What one check found.

    Attributes:
        caught: True (the check saw something wrong), False (it saw nothing), None (not run).
        where: the worst entry (``"parameter '0.weight' (2, 1)"``) or what was non-finite.
        rel_error: ``|analytic - reference| / max(|analytic|, |reference|)`` at that entry
            (between 0 and 2; 2 is a flipped sign), or None.
        detail: the check's own words (gradcheck's message, the largest difference, why it
            was not run).
        non_finite: caught because the output or a gradient was inf or NaN.
    """

    caught: bool | None
    where: str = ""
    rel_error: float | None = None
    detail: str = ""
    non_finite: bool = False  # caught because something was inf or NaN

    def cell(self) -> str:
        """The table cell: ``CAUGHT  input 0 (1, 4)  rel 2``, ``CAUGHT  loss inf, ...`` or
        ``passes``."""
        if self.caught is None:
            return self.detail or "not run"
        if not self.caught:
            return "passes"
        parts = ["CAUGHT", self.where]
        if self.rel_error is not None:
            parts.append(f"rel {self.rel_error:.2g}")
        return "  ".join(p for p in parts if p)


_GRADCHECK_MESSAGE = re.compile(
    r"^(?P<name>.+?): backward disagrees with finite differences at index (?P<index>\([^)]*\)): "
    r"analytic (?P<analytic>\S+), numeric (?P<numeric>\S+) ")


def relative_error(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)``: 0 when equal, 1 when one is 0, 2 when the sign flipped."""
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def _analytic_gradients(model: nn.Module, inputs: Sequence[Any], seed: int) -> tuple:
    """One forward and backward of a float64 copy of ``model`` with a random upstream gradient.

    Returns ``(output, {name: gradient}, upstream)``: the gradients of the float inputs
    (``"input 0"``, ...) and of every parameter (``"parameter '0.weight'"``), as host arrays.
    """
    module = model.copy().double()
    module.zero_grad()
    y = module(*inputs)
    upstream = _normal(B.get_backend("cpu").make_rng(seed + 1), tuple(y.shape))
    grads = module.backward(upstream)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    out = {}
    float_inputs = [i for i, x in enumerate(inputs) if getattr(x, "dtype", None) is not None
                    and x.dtype.kind == "f"]
    for i in float_inputs:
        out[f"input {i}"] = B.to_numpy(grads[i])
    for name, p in module.named_parameters():
        out[f"parameter '{name}'"] = None if p.grad is None else B.to_numpy(p.grad)
    return B.to_numpy(y), out, upstream


def _finite(a: Any) -> bool:
    return bool((abs(a) < math.inf).all())  # False for inf and for NaN


def _non_finite(y: Any, grads: dict) -> str:
    """What is inf or NaN among the output and the gradients ('' when all is finite):
    ``"loss inf, inf/NaN gradient of input 0"``."""
    bad = []
    if not _finite(y):
        bad.append(f"loss {float(y):g}" if y.ndim == 0 else "output inf/NaN")
    names = [name for name, g in grads.items() if g is not None and not _finite(g)]
    if names:
        bad.append("inf/NaN gradient of " + ", ".join(names))
    return ", ".join(bad)


@contextmanager
def _quiet() -> Iterator[None]:
    """No RuntimeWarning for overflow in exp: showing it is the point of one bug."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def run_gradcheck(model: nn.Module, inputs: Sequence[Any], seed: int = 0) -> CheckResult:
    """``tinynet.gradcheck`` on ``model`` (float64), after a look for inf/NaN.

    A non-finite output or gradient is caught (gradcheck itself would compare NaN with NaN and
    let it through). Otherwise the worst entry gradcheck reports, with its relative error.
    """
    with _quiet():
        return _run_gradcheck(model, inputs, seed)


def _run_gradcheck(model: nn.Module, inputs: Sequence[Any], seed: int) -> CheckResult:
    y, grads, _ = _analytic_gradients(model, inputs, seed)
    bad = _non_finite(y, grads)
    if bad:
        return CheckResult(True, bad, None,
                           "the forward or backward produced inf/NaN on these inputs",
                           non_finite=True)
    try:
        gradcheck(model, tuple(inputs), seed=seed)
    except GradcheckError as error:
        message = str(error)
        found = _GRADCHECK_MESSAGE.match(message)
        if not found:
            return CheckResult(True, message.split(":")[0], None, message)
        rel = relative_error(float(found["analytic"]), float(found["numeric"]))
        return CheckResult(True, f"{found['name']} {found['index']}", rel, message)
    return CheckResult(False, detail="every entry agrees with finite differences")


# ----------------------------------------------------------------------------------------------
# Check 2: PyTorch parity (the same weights through PyTorch's autograd)
# ----------------------------------------------------------------------------------------------
def _torch_forward(torch: Any, module: nn.Module, x: Any, params: dict, prefix: str = "") -> Any:
    """Run ``module`` (tinynet) as PyTorch would, with the leaf tensors in ``params``."""
    F = torch.nn.functional

    def param(name: str) -> Any:
        return params.get(f"{prefix}{name}")

    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = _torch_forward(torch, child, x, params, f"{prefix}{name}.")
        return x
    if isinstance(module, nn.Linear):
        return F.linear(x, param("weight"), param("bias"))
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, param("weight"), param("bias"), module.stride, module.padding)
    if isinstance(module, nn.ReLU):
        return F.relu(x)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(x, module.kernel_size, module.stride, module.padding)
    if isinstance(module, nn.Flatten):
        return torch.flatten(x, module.start_dim, module.end_dim)
    if isinstance(module, nn.BatchNorm2d):
        return F.batch_norm(x, None, None, param("weight"), param("bias"), training=True,
                            eps=module.eps)
    if isinstance(module, RepeatColumns):
        return x.repeat_interleave(2, dim=3)
    raise TypeError(f"no PyTorch twin for {type(module).__name__}")


def run_parity(model: nn.Module, inputs: Sequence[Any], seed: int = 0, torch: Any = None,
               rtol: float = 1e-7, atol: float = 1e-9) -> CheckResult:
    """Compare every gradient of ``model`` with PyTorch's autograd on the same weights, inputs
    and upstream gradient (float64). ``caught=None`` when torch is not installed."""
    if torch is None:
        try:
            import torch
        except ImportError:
            return CheckResult(None, detail="no torch")
    with _quiet():
        return _run_parity(model, inputs, seed, torch, rtol, atol)


def _run_parity(model: nn.Module, inputs: Sequence[Any], seed: int, torch: Any, rtol: float,
                atol: float) -> CheckResult:
    _, grads, upstream = _analytic_gradients(model, inputs, seed)

    def leaf(a: Any) -> Any:
        return torch.tensor(B.to_numpy(a), dtype=torch.float64, requires_grad=True)

    module = model.copy().double()
    params = {name: leaf(p.data) for name, p in module.named_parameters()}
    if isinstance(module, nn.CrossEntropyLoss):
        logits = leaf(inputs[0])
        xs = [logits]
        y_torch = torch.nn.functional.cross_entropy(logits, torch.as_tensor(
            B.to_numpy(inputs[1])))
    else:
        xs = [leaf(inputs[0])]
        y_torch = _torch_forward(torch, module, xs[0], params)
    (y_torch * torch.as_tensor(B.to_numpy(upstream))).sum().backward()
    expected = {"input 0": xs[0].grad}
    expected.update({f"parameter '{name}'": t.grad for name, t in params.items()})
    worst = (0.0, "", 0.0)  # (excess over the tolerance, where, relative error)
    for name, want in expected.items():
        want = want.numpy()
        got = grads.get(name)
        if got is None or got.shape != want.shape:
            return CheckResult(True, name, None, f"{name}: no gradient of the right shape")
        diff = abs(got - want)
        excess = diff - (atol + rtol * abs(want))
        excess[~(abs(got) < math.inf)] = math.inf  # NaN or inf never agrees
        k = int(excess.argmax())
        if excess.flat[k] > worst[0]:
            index = tuple(int(i) for i in _unravel(k, want.shape))
            value = float(got.flat[k])
            if math.isfinite(value):
                worst = (float(excess.flat[k]), f"{name} {index}",
                         relative_error(value, float(want.flat[k])))
            else:
                worst = (math.inf, f"{name} {index} is {value:g}", None)
                break  # nothing is worse
    if worst[0] > 0:
        return CheckResult(True, worst[1], worst[2], "differs from PyTorch",
                           non_finite=worst[0] == math.inf)
    return CheckResult(False, detail="every gradient equals PyTorch's")


def _unravel(flat: int, shape: tuple) -> tuple:
    """The index into an array of ``shape`` of its ``flat``-th entry (row-major)."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


# ----------------------------------------------------------------------------------------------
# Check 3: a short training run on the embedded sample
# ----------------------------------------------------------------------------------------------
def training_model() -> nn.Sequential:
    """The small network trained by :func:`train_loss`: every kernel a bug can break is in it.

    ``(N,1,28,28) -conv3-> (N,4,26,26) -bn,relu,pool2-> (N,4,13,13) -conv3-> (N,8,11,11)
    -relu,pool2-> (N,8,5,5) -flatten-> (N,200) -> (N,32) -> (N,10)``
    """
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(200, 32), nn.ReLU(), nn.Linear(32, 10),
    )


_SAMPLE: dict[str, Any] = {}


def _sample() -> tuple[Any, Any]:
    """The embedded sample's training and test images (read once)."""
    if not _SAMPLE:
        from ..data import FashionMNIST

        _SAMPLE["train"] = FashionMNIST(train=True, sample=True)
        _SAMPLE["test"] = FashionMNIST(train=False, sample=True)
    return _SAMPLE["train"], _SAMPLE["test"]


@dataclass
class TrainResult:
    """Losses of one training run: on the 500 test images of the sample before and after."""

    start: float
    after: float
    steps: int
    error: str = ""  # what went wrong, when the run crashed or the loss turned inf/NaN


def train_loss(steps: int = 100, seed: int = 0, batch_size: int = 32, lr: float = 0.05,
               momentum: float = 0.9) -> TrainResult:
    """Train :func:`training_model` for ``steps`` SGD steps on the embedded sample with the
    kernels as they are now (call it inside ``bug.apply()``); the loss on the sample's 500
    test images before and after. The same seed gives the same weights and batches."""
    from ..data import DataLoader

    train, test = _sample()
    B.manual_seed(seed)
    model = training_model()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = SGD(model.parameters(), lr=lr, momentum=momentum)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True)
    x_test, y_test = next(iter(DataLoader(test, batch_size=len(test))))

    def test_loss() -> float:
        model.eval()
        with B.no_grad():
            value = float(loss_fn(model(x_test), y_test))
        model.train()
        return value

    start, step = test_loss(), 0
    try:
        while step < steps:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                if not math.isfinite(float(loss)):
                    return TrainResult(start, float(loss), step, "diverged")
                model.zero_grad()
                model.backward(loss_fn.backward(), input_grad=False)
                optimizer.step()
                step += 1
                if step == steps:
                    break
        return TrainResult(start, test_loss(), steps)
    except ValueError as error:  # CrossEntropyLoss refuses inf/NaN logits: diverged
        what = "diverged" if "NaN or inf" in str(error) else f"ValueError: {error}"
        return TrainResult(start, math.nan, step, what)


# ----------------------------------------------------------------------------------------------
# The runner and its table
# ----------------------------------------------------------------------------------------------
@dataclass
class BugReport:
    """The three checks' findings for one bug (``bug`` None: the correct code)."""

    bug: Bug | None
    gradcheck: CheckResult
    parity: CheckResult
    training: TrainResult | None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.bug.name if self.bug is not None else "(correct code)"


@contextmanager
def _correct_code() -> Iterator[None]:
    with kernels.use_reference():
        yield


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the block (its products here are tiny: BLAS threads that wait
    for work cost more than they save, up to 20 times on a busy machine). Without threadpoolctl,
    BLAS keeps its threads: the same numbers, more slowly."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def check_bug(bug: Bug | None, seed: int = 0, torch: bool = True, steps: int = 0,
              **train_args: Any) -> BugReport:
    """Run the checks on one bug (``None``: on the correct reference code).

    Args:
        bug: a :class:`Bug` of :data:`CATALOGUE`, or None for the un-patched code.
        seed: seed of the check's inputs and weights, and of the training run.
        torch: run the PyTorch parity check (when torch is installed).
        steps: SGD steps of the training run (0: no training run).
        train_args: passed on to :func:`train_loss` (``batch_size``, ``lr``, ``momentum``).
    """
    started = time.perf_counter()
    check = bug.check if bug is not None else "mlp"
    with _quiet(), _one_blas_thread():
        B.manual_seed(seed)
        model, inputs = build_check(check, seed)
        with bug.apply() if bug is not None else _correct_code():
            found = run_gradcheck(model, inputs, seed)
            parity = (run_parity(model, inputs, seed) if torch
                      else CheckResult(None, detail="not run"))
            training = train_loss(steps, seed, **train_args) if steps else None
    return BugReport(bug, found, parity, training, time.perf_counter() - started)


def run_catalogue(bugs: Sequence[Bug | str] | None = None, steps: int = 100, seed: int = 0,
                  torch: bool = True, **train_args: Any) -> list[BugReport]:
    """Every bug (or those named) through gradcheck, PyTorch parity and ``steps`` training steps.

    The first report is the correct code on every check the bugs use (so a check that fails on
    correct code would show); then one report per bug. Print them with :func:`format_table`.
    """
    chosen = [get_bug(b) if isinstance(b, str) else b for b in (bugs or CATALOGUE)]
    reports = [check_correct_code(seed, torch, steps, {b.check for b in chosen}, **train_args)]
    reports += [check_bug(bug, seed, torch, steps, **train_args) for bug in chosen]
    return reports


def check_correct_code(seed: int = 0, torch: bool = True, steps: int = 0,
                       checks: Sequence[str] | None = None, **train_args: Any) -> BugReport:
    """The un-patched reference code on every check in ``checks`` (default: all of
    :data:`CHECKS`): the report holds the worst of them (any catch would be a false alarm)."""
    started = time.perf_counter()
    found = parity = None
    with _one_blas_thread(), kernels.use_reference():
        for check in sorted(checks or CHECKS):
            B.manual_seed(seed)
            model, inputs = build_check(check, seed)
            g = run_gradcheck(model, inputs, seed)
            p = run_parity(model, inputs, seed) if torch else CheckResult(None, detail="not run")
            found = g if found is None or g.caught else found
            parity = p if parity is None or p.caught else parity
        training = train_loss(steps, seed, **train_args) if steps else None
    return BugReport(None, found, parity, training, time.perf_counter() - started)


def _loss_cell(report: BugReport, correct: TrainResult | None) -> str:
    t = report.training
    if t is None:
        return "not run"
    if t.error:
        return f"{t.error} (inf/NaN) at step {t.steps + 1}" if t.error == "diverged" \
            else f"{t.error} at step {t.steps + 1}"
    if report.bug is None or correct is None:
        return f"{t.after:.3f} (from {t.start:.3f})"
    trend = "still lowers it" if t.after < t.start else "does not lower it"
    return f"{t.after:.3f} ({t.after - correct.after:+.3f}; {trend})"


def format_table(reports: Sequence[BugReport], markdown: bool = False) -> str:
    """The catalogue's table: bug | gradcheck | PyTorch parity | loss after N steps.

    The loss is on the sample's 500 test images; for a bug, its difference from the correct
    code's loss after the same steps, and whether the bug still lowered the loss.
    """
    correct = next((r.training for r in reports if r.bug is None), None)
    steps = next((r.training.steps for r in reports if r.training is not None
                  and not r.training.error), None)
    head = ["bug", "gradcheck (worst entry, rel. error)", "PyTorch parity",
            f"test loss after {steps} steps" if steps else "test loss"]
    rows = []
    for r in reports:
        grad = r.gradcheck.cell()
        if r.bug is not None and r.bug.forward_only and r.gradcheck.caught:
            grad += f" (on {CHECKS[r.bug.check].inputs})"
        rows.append([r.name, grad, r.parity.cell(), _loss_cell(r, correct)])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    else:
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
    notes = [NOTES[r.bug.name] for r in reports if r.bug is not None and r.bug.name in NOTES]
    if any(r.training is not None for r in reports):
        notes.append(NOTES["noise"])
    if notes:
        lines.append("")
        lines += (["* " + n for n in notes] if markdown else
                  [textwrap.fill(n, 100, initial_indent="note: ", subsequent_indent="      ")
                   for n in notes])
    return "\n".join(lines)


NOTES = {
    "softmax-no-shift": (
        "softmax-no-shift is a FORWARD bug: where nothing overflows it computes the same "
        "numbers, and gradcheck (which differentiates the same forward) passes. Its check uses "
        "logits ~1000, where exp overflows: the loss is inf and the gradient NaN, which the "
        "check looks for before gradcheck (gradcheck alone compares NaN with NaN and passes)."),
    "noise": (
        "The test loss of a short run is chaotic: float32 rounding alone moves it by up to a "
        "few hundredths after a few dozen steps (softmax-no-shift computes the same math and still "
        "ends apart from the correct code). Only large gaps, or no progress, tell."),
}


__all__ = [
    "CATALOGUE",
    "CHECKS",
    "NAMES",
    "Bug",
    "BugReport",
    "Check",
    "CheckResult",
    "Patch",
    "RepeatColumns",
    "TrainResult",
    "build_check",
    "check_bug",
    "check_correct_code",
    "format_table",
    "get_bug",
    "run_catalogue",
    "run_gradcheck",
    "run_parity",
    "train_loss",
]
