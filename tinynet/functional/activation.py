"""ReLU: forward and backward by hand (the reference kernel).

    y = max(x, 0)                       (any shape; y has the shape of x)
    dL/dx = dL/dy * [x > 0]             (the gradient passes where the input was positive)

The cache is the boolean mask [x > 0], one byte per element.
"""

from __future__ import annotations

from typing import Any

from ..backend import backend_of


def relu_forward(x: Any):
    """``y = max(x, 0)`` elementwise (any shape). Returns ``(y, mask)`` with ``mask = [x > 0]``.

    **Backward:** :func:`relu_backward`, ``dL/dx = dL/dy * mask``.
    """
    return backend_of(x).xp.maximum(x, 0), x > 0


def relu_backward(dy: Any, mask: Any):
    """``dL/dx = dL/dy * mask``: zero where the input was not positive."""
    return dy * mask
