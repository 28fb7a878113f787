"""Adam and AdamW, with PyTorch's exact update rules."""

from __future__ import annotations

import math
from typing import Iterable

from ..backend import backend_of
from .optimizer import Optimizer


class Adam(Optimizer):
    r"""Adam: SGD with a running average of the gradient (momentum) and a per-weight step size.

    For each parameter w with gradient g, at step t = 1, 2, ... (PyTorch's rule):

        g     = g + weight_decay * w                       (if weight_decay != 0: L2 penalty)
        m     = beta1 * m + (1 - beta1) * g                ("exp_avg": average gradient)
        v     = beta2 * v + (1 - beta2) * g^2              ("exp_avg_sq": average squared gradient)
        v_max = max(v_max, v); use v_max for v             (amsgrad only, "max_exp_avg_sq")
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)     (bias correction: m, v start at 0)
        w     = w - lr * m_hat / (sqrt(v_hat) + eps)

    Weights whose gradients are small or noisy get relatively larger or smaller steps: each weight's
    step is measured against the typical size of its own gradient.

    Args:
        params: ``model.parameters()`` or a list of parameter-group dicts.
        lr: learning rate. Default: 1e-3.
        betas: (beta1, beta2), the averaging factors. Default: (0.9, 0.999).
        eps: added to the denominator. Default: 1e-8.
        weight_decay: L2 penalty added to the gradient. Default: 0.
        amsgrad: use the running maximum of v (Reddi et al., 2018). Default: False.

    State (per parameter, in ``optimizer.state_dict()`` for checkpoints): ``'step'`` (an int),
    ``'exp_avg'`` and ``'exp_avg_sq'`` (and ``'max_exp_avg_sq'`` with amsgrad), arrays in the
    parameter's dtype on its device.
    """

    _decoupled = False  # AdamW: weight decay on the weights, not through the gradient

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        name = type(self).__name__
        if not lr >= 0.0:
            raise ValueError(f"{name}: lr must be >= 0, got {lr}")
        if not eps >= 0.0:
            raise ValueError(f"{name}: eps must be >= 0, got {eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{name}: betas must be a pair of numbers in [0, 1), got {betas!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"{name}: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                                      weight_decay=weight_decay, amsgrad=bool(amsgrad)))

    def step(self) -> None:
        """Update every parameter that has a gradient (``grad is None``: skipped)."""
        for group in self.param_groups:
            lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
            beta1, beta2 = (float(b) for b in group["betas"])
            amsgrad = group["amsgrad"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                xp = backend_of(p.data).xp
                g = p.grad
                state = self.state.setdefault(id(p), {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = xp.zeros_like(p.data)
                    state["exp_avg_sq"] = xp.zeros_like(p.data)
                    if amsgrad:
                        state["max_exp_avg_sq"] = xp.zeros_like(p.data)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if wd != 0:
                    if self._decoupled:
                        p.data *= 1.0 - lr * wd  # AdamW: w <- w * (1 - lr * wd)
                    else:
                        g = g + wd * p.data  # Adam: L2 penalty through the gradient
                # m <- beta1 * m + (1 - beta1) * g, written as m + (1 - beta1) * (g - m) (as torch)
                m += (1.0 - beta1) * (g - m)
                # v <- beta2 * v + (1 - beta2) * g^2
                v *= beta2
                v += (1.0 - beta2) * (g * g)
                if amsgrad:
                    xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]
                # bias correction folded into the step size and the denominator
                step_size = lr / (1.0 - beta1**t)
                bias2_sqrt = math.sqrt(1.0 - beta2**t)
                denom = xp.sqrt(v)
                denom /= bias2_sqrt
                denom += eps
                # w <- w - lr * m_hat / (sqrt(v_hat) + eps)
                p.data -= step_size * (m / denom)


class AdamW(Adam):
    r"""Adam with *decoupled* weight decay (Loshchilov & Hutter, 2019), PyTorch's rule.

    The same as :class:`Adam`, except that the weight decay shrinks the weights directly,
    ``w = w * (1 - lr * weight_decay)``, before the Adam step, instead of being added to the
    gradient (where Adam's per-weight scaling would weaken it for weights with large gradients).

    Args: as :class:`Adam`, with ``weight_decay`` defaulting to 1e-2.
    """

    _decoupled = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)
