"""Check hand-written backward passes against finite differences.

For a function f with output y and a random upstream gradient g, define the scalar
``L = sum(y * g)``. The backward pass claims dL/dx for every input and parameter x. Finite
differences measure the same thing without any calculus:

    dL/dx[i] ~ (L(x + eps*e_i) - L(x - eps*e_i)) / (2*eps)        (central difference)

Both are compared in float64 (float32 rounding would swamp eps): an entry passes when
``|analytic - numeric| <= atol + rtol * |numeric|``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np  # host-side: index bookkeeping and error reports

from . import backend as B
from .nn.module import Module


class GradcheckError(AssertionError):
    """A backward pass disagrees with finite differences (the message says where, by how much)."""


def _as_float64(x: Any) -> Any:
    if hasattr(x, "dtype") and x.dtype.kind == "f":
        return x.astype(B.float64)
    return x


def gradcheck(
    fn: Module | tuple[Callable, Callable],
    inputs: Sequence[Any] | Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    n_samples: int | None = None,
    seed: int = 0,
    check_params: bool = True,
) -> bool:
    """Compare the analytic gradients of ``fn`` with central finite differences, in float64.

    Args:
        fn: a Module (``fn(*inputs)`` runs forward, ``fn.backward(g)`` returns the input gradient,
            or a tuple of them), or a functional pair ``(forward, backward)`` with
            ``forward(*inputs) -> (y, cache)`` and ``backward(dy, cache) -> grad or tuple``
            (None for inputs without a gradient, such as labels).
        inputs: an array or a sequence of arrays and other arguments. Floating arrays are checked;
            integer arrays (labels) and non-arrays (strides, ...) are passed through.
        eps: finite-difference step. atol, rtol: tolerances (see the module docstring).
        n_samples: check only this many random entries per tensor (for large tensors); None = all.
        seed: seed for the upstream gradient and the sampled entries.
        check_params: also check every parameter of a Module.

    Returns:
        True when every checked entry agrees.

    Raises:
        GradcheckError naming the tensor, the worst index, and the analytic and numeric values.
    """
    if not isinstance(inputs, (list, tuple)):
        inputs = (inputs,)
    inputs = [_as_float64(x) for x in inputs]
    rng = np.random.default_rng(seed)
    is_module = isinstance(fn, Module)
    if is_module:
        module = fn.copy().double()  # never touch the caller's model
        module.zero_grad()

        def run_forward():
            return module(*inputs)

        def run_backward(y, g):
            return module.backward(g)
    else:
        forward, backward = fn
        state = {}

        def run_forward():
            y, state["cache"] = forward(*inputs)
            return y

        def run_backward(y, g):
            return backward(g, state["cache"])

    y = run_forward()
    xp = B.xp_of(y)
    g = B.backend_of(y).asarray(rng.standard_normal(tuple(y.shape)), dtype=B.float64)
    grads = run_backward(y, g)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)

    def loss() -> float:
        with B.no_grad():
            out = run_forward()
        return float((out * g).sum())

    checks = []  # (name, array to perturb, analytic gradient)
    for i, x in enumerate(inputs):
        if hasattr(x, "dtype") and x.dtype.kind == "f":
            analytic = grads[i] if i < len(grads) else None
            if analytic is None:
                raise GradcheckError(f"input {i}: backward returned no gradient for a float input")
            checks.append((f"input {i}", x, analytic))
    if is_module and check_params:
        for name, p in module.named_parameters():
            if p.grad is None:
                raise GradcheckError(f"parameter '{name}': backward left its gradient empty (None)")
            checks.append((f"parameter '{name}'", p.data, p.grad))

    for name, x, analytic in checks:
        if tuple(analytic.shape) != tuple(x.shape):
            raise GradcheckError(
                f"{name}: gradient shape {tuple(analytic.shape)} != tensor shape {tuple(x.shape)}"
            )
        analytic = B.to_numpy(analytic)
        size = int(x.size)
        if n_samples is not None and n_samples < size:
            flat_ids = rng.choice(size, size=n_samples, replace=False)
        else:
            flat_ids = np.arange(size)
        numeric = np.empty(len(flat_ids))
        flat = x.reshape(-1)  # a view: perturbing it perturbs x
        for k, j in enumerate(flat_ids):
            j = int(j)
            orig = float(flat[j])
            flat[j] = orig + eps
            plus = loss()
            flat[j] = orig - eps
            minus = loss()
            flat[j] = orig
            numeric[k] = (plus - minus) / (2 * eps)
        got = analytic.reshape(-1)[flat_ids]
        bad = ~(np.isfinite(got) & np.isfinite(numeric))
        if bad.any():  # (a comparison with NaN is False: it would pass unnoticed)
            k = int(np.argmax(bad))
            index = np.unravel_index(int(flat_ids[k]), x.shape)
            raise GradcheckError(
                f"{name}: not a finite number at index {tuple(int(i) for i in index)}: analytic "
                f"{got[k]:.8g}, numeric {numeric[k]:.8g} (an overflow, a division by zero, or a "
                "NaN in the forward pass: the gradients cannot be compared)"
            )
        err = np.abs(got - numeric) - (atol + rtol * np.abs(numeric))
        worst = int(np.argmax(err)) if len(err) else 0
        if len(err) and err[worst] > 0:
            index = np.unravel_index(int(flat_ids[worst]), x.shape)
            raise GradcheckError(
                f"{name}: backward disagrees with finite differences at index "
                f"{tuple(int(i) for i in index)}: analytic {got[worst]:.8g}, numeric "
                f"{numeric[worst]:.8g} (|diff| {abs(got[worst] - numeric[worst]):.3g} > "
                f"atol {atol} + rtol {rtol} * |numeric|)"
            )
    del xp
    return True
