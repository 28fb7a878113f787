"""Dropout: an operation (no weights) that randomly zeroes values during training."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ._checks import check_float_input
from .module import Module


class Dropout(Module):
    r"""Zero each value with probability ``p`` during training and scale the others by 1/(1-p).

    ``y = x * mask``, ``mask = [u >= p] / (1 - p)``, ``u ~ U[0, 1)``: a fresh random mask for
    every batch, from the device's generator (``tinynet.manual_seed`` makes it reproducible).
    In evaluation mode (``model.eval()``) it is the identity. It keeps the network from relying on
    any single feature: a regulariser.

    Args:
        p: probability of zeroing a value, in [0, 1]. Default: 0.5.

    Shape:
        - Input: any shape. Output: the same shape.

    Backward (see :mod:`tinynet.functional.dropout`):
        ``dX = dY * mask`` (evaluation: ``dX = dY``).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(
                f"Dropout: p is the probability of dropping a value and must be in [0, 1], got "
                f"{p!r}"
            )
        self.p = float(p)

    def forward(self, x: Any) -> Any:
        check_float_input(f"Dropout(p={self.p})", x)
        y, mask = kernels.dropout_forward(x, self.p, self.training)
        self.save_for_backward((mask, y.shape))
        return y

    def backward(self, grad_output: Any) -> Any:
        mask, y_shape = self.saved()
        self.check_grad_output(grad_output, y_shape)
        return kernels.dropout_backward(grad_output, mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"
