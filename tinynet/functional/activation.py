"""ReLU: forward and backward by hand.

    y = max(x, 0)                       (any shape; y has the shape of x)
    dL/dx = dL/dy * [x > 0]             (the gradient passes where the input was positive)

The cache is the boolean mask [x > 0], one byte per element (not made inside ``tinynet.no_grad()``,
where no backward will follow).

Speed: the output, the mask and the gradient are written into recycled buffers (``out=``) rather
than fresh arrays: on the CPU a fresh multi-megabyte array costs page faults (see ``_recycle.py``).
"""

from __future__ import annotations

from typing import Any

from ..backend import backend_of, is_grad_enabled
from ._recycle import scratch


def relu_forward(x: Any):
    """``y = max(x, 0)`` elementwise (any shape). Returns ``(y, mask)`` with ``mask = [x > 0]``
    (mask is None inside ``tinynet.no_grad()``: there will be no backward).

    **Backward:** :func:`relu_backward`, ``dL/dx = dL/dy * mask``.
    """
    xp = backend_of(x).xp
    mask = None
    if is_grad_enabled():
        mask = xp.greater(x, 0, out=scratch(xp, "relu.mask", x.shape, xp.bool_))
    y = xp.maximum(x, 0, out=scratch(xp, "relu.y", x.shape, x.dtype))
    return y, mask


def relu_backward(dy: Any, mask: Any):
    """``dL/dx = dL/dy * mask``: zero where the input was not positive."""
    xp = backend_of(dy).xp
    return xp.multiply(dy, mask, out=scratch(xp, "relu.dx", dy.shape, dy.dtype))
