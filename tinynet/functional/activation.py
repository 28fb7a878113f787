"""ReLU: forward and backward by hand.

    y = max(x, 0)                       (any shape; y has the shape of x)
    dL/dx = dL/dy * [x > 0]             (the gradient passes where the input was positive)

The cache is the boolean mask [x > 0], one byte per element.
"""

from __future__ import annotations

from typing import Any

from ..backend import backend_of


def relu_forward(x: Any):
    """``max(x, 0)`` elementwise. Returns ``(y, mask)``."""
    xp = backend_of(x).xp
    mask = x > 0
    return xp.maximum(x, 0), mask


def relu_backward(dy: Any, mask: Any):
    """``dL/dx = dL/dy * mask``: zero where the input was not positive."""
    return dy * mask
