"""ReLU: forward and backward by hand.

    y = max(x, 0)                       (any shape; y has the shape of x)
    dL/dx = dL/dy * [x > 0]             (the gradient passes where the input was positive)

The cache is the boolean mask [x > 0], one byte per element (not made inside ``tinynet.no_grad()``,
where no backward will follow).

Speed: the output, the mask and the gradient are written into recycled buffers (``out=``) rather
than fresh arrays: on the CPU a fresh multi-megabyte array costs page faults (see ``_recycle.py``),
and a large batch is split into one block of items per thread (``tinynet/threads.py``).
"""

from __future__ import annotations

from typing import Any

from ..backend import backend_of, is_grad_enabled
from ..threads import for_batch
from ._recycle import scratch


def _items(*arrays: Any) -> tuple:
    """The arrays with a batch axis to split (a 0-d array becomes one item, None stays None);
    numbers per item."""
    arrays = tuple(a.reshape(1) if a is not None and a.ndim == 0 else a for a in arrays)
    n = arrays[0].shape[0]
    return arrays, (arrays[0].size // n if n else 0)


def relu_forward(x: Any):
    """``y = max(x, 0)`` elementwise (any shape). Returns ``(y, mask)`` with ``mask = [x > 0]``
    (mask is None inside ``tinynet.no_grad()``: there will be no backward).

    **Backward:** :func:`relu_backward`, ``dL/dx = dL/dy * mask``.
    """
    xp = backend_of(x).xp
    mask = scratch(xp, "relu.mask", x.shape, xp.bool_) if is_grad_enabled() else None
    y = scratch(xp, "relu.y", x.shape, x.dtype)
    (xs, ys, masks), per_item = _items(x, y, mask)

    def block(lo: int, hi: int) -> None:  # the items lo..hi-1 of the batch (one thread)
        if masks is not None:
            xp.greater(xs[lo:hi], 0, out=masks[lo:hi])
        xp.maximum(xs[lo:hi], 0, out=ys[lo:hi])

    for_batch(xp, xs.shape[0], block, per_item=per_item)
    return y, mask


def relu_backward(dy: Any, mask: Any):
    """``dL/dx = dL/dy * mask``: zero where the input was not positive."""
    xp = backend_of(dy).xp
    dx = scratch(xp, "relu.dx", dy.shape, dy.dtype)
    (dys, masks, dxs), per_item = _items(dy, mask, dx)

    def block(lo: int, hi: int) -> None:
        xp.multiply(dys[lo:hi], masks[lo:hi], out=dxs[lo:hi])

    for_batch(xp, dys.shape[0], block, per_item=per_item)
    return dx
