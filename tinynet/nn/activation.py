"""ReLU: an operation (no weights)."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ._checks import check_float_input
from .module import Module


class ReLU(Module):
    r"""``y = max(x, 0)`` elementwise. An operation: it has no weights.

    Shape:
        - Input: any shape. Output: the same shape.

    Backward:
        ``dX = dY * [X > 0]`` (the cache is that boolean mask).
    """

    def forward(self, x: Any) -> Any:
        check_float_input("ReLU", x)
        y, mask = kernels.relu_forward(x)
        self.save_for_backward((mask, y.shape, y.dtype))
        return y

    def backward(self, grad_output: Any) -> Any:
        mask, y_shape, dtype = self.saved()
        self.check_grad_output(grad_output, y_shape, dtype)
        return kernels.relu_backward(grad_output, mask)
