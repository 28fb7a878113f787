"""Stochastic gradient descent, with PyTorch's exact update rule."""

from __future__ import annotations

from typing import Any, Iterable

from .. import kernels
from .optimizer import Optimizer


def sgd_update(param: Any, grad: Any, buf: Any, lr: float, momentum: float = 0.0,
               dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> Any:
    """One SGD step for one parameter, in place (the reference kernel of :class:`SGD`).

    Args:
        param: the weights, updated in place. grad: dL/dparam (not modified).
        buf: the momentum buffer from the previous step, or None at the first step.
        lr, momentum, dampening, weight_decay, nesterov: the hyperparameters (Python numbers).

    Returns:
        The momentum buffer to keep for the next step (None when ``momentum == 0``).
    """
    g = grad
    if weight_decay != 0:
        g = g + weight_decay * param  # L2 penalty: d/dw (wd/2 * |w|^2) = wd * w
    if momentum != 0:
        if buf is None:
            buf = g.copy()  # b_1 = g_1
        else:
            buf *= momentum  # b_t = momentum * b_{t-1} + (1 - dampening) * g_t
            buf += (1 - dampening) * g if dampening else g
        g = g + momentum * buf if nesterov else buf
    else:
        buf = None
    param -= lr * g  # w <- w - lr * g
    return buf


class SGD(Optimizer):
    r"""Step every weight against its gradient: the gradient points uphill, so we go the other way.

    For each parameter w with gradient g (PyTorch's rule, step t):

        g = g + weight_decay * w                             (if weight_decay != 0)
        b = g                              at t = 1          (momentum buffer)
        b = momentum * b + (1 - dampening) * g  after that
        g = g + momentum * b  if nesterov else  b            (if momentum != 0)
        w = w - lr * g

    Args:
        params: ``model.parameters()`` (or a list of dicts for parameter groups).
        lr: learning rate (step size).
        momentum: momentum factor. Default: 0.
        dampening: dampening of the momentum. Default: 0.
        weight_decay: L2 penalty. Default: 0.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0). Default: False.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"SGD: {name} must be >= 0, got {value}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=bool(nesterov)))

    def step(self) -> None:
        """Update every parameter that has a gradient (skipping those whose ``grad`` is None)."""
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(id(p), {})
                # w <- w - lr * g (with momentum: g smoothed into the buffer b), in place
                buf = kernels.sgd_update(p.data, p.grad, state.get("momentum_buffer"), lr,
                                         momentum, dampening, weight_decay, nesterov)
                if buf is not None:
                    self.state.setdefault(id(p), {})["momentum_buffer"] = buf

