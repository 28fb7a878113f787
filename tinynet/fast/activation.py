"""The fast engine's ReLU: the same numbers as ``tinynet/functional/activation.py``.

* The output, the mask and the gradient go into recycled buffers (``out=``): on the CPU a fresh
  multi-megabyte array costs page faults (see ``_recycle.py``).
* ``max(x, zeros)`` against a never-written array of zeros: NumPy vectorises only the
  all-contiguous loop, so this runs about 3x faster than ``max(x, 0)`` (see :func:`_zeros`).
* A large batch is split into one block of items per thread (``threads.py``).
* :func:`relu_in_place` and :func:`relu_backward_into` are the ReLU as another kernel's last (or
  first) step, for the fused modules of ``tinynet.fuse``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_of, is_grad_enabled
from ._recycle import scratch
from .threads import for_batch


class ReluCache(NamedTuple):
    """The fast ReLU's cache: the mask [x > 0] (in a recycled buffer)."""

    mask: Any


def _items(*arrays: Any) -> tuple:
    """The arrays with a batch axis to split (a 0-d array becomes one item, None stays None);
    numbers per item."""
    arrays = tuple(a.reshape(1) if a is not None and a.ndim == 0 else a for a in arrays)
    n = arrays[0].shape[0]
    return arrays, (arrays[0].size // n if n else 0)


def _zeros(xp: Any, shape: tuple, dtype: Any) -> Any:
    """Zeros to take the maximum with. On NumPy an array, not the number 0: ``max(x, 0)`` with a
    scalar (or any broadcast operand) runs about 3x slower than with a contiguous array of zeros
    (measured, NumPy 2.4 on 2 cores: 160 vs 50 us for the course network's first ReLU at batch
    64; only the all-contiguous loop is vectorised). The array is never written, so its memory
    pages all stay the operating system's one shared zero page: it costs no memory."""
    if getattr(xp, "__name__", "") != "numpy":  # (the GPU: a broadcast 0, no memory either)
        return xp.broadcast_to(xp.zeros((), dtype=dtype), shape)
    return scratch(xp, "relu.zeros", shape, dtype)


def relu_forward(x: Any):
    """``tinynet.functional.relu_forward``, fast: ``(y, ReluCache(mask))``, the cache None
    inside ``tinynet.no_grad()`` (there will be no backward)."""
    xp = backend_of(x).xp
    mask = scratch(xp, "relu.mask", x.shape, xp.bool_) if is_grad_enabled() else None
    y = scratch(xp, "relu.y", x.shape, x.dtype)
    (xs, ys, masks), per_item = _items(x, y, mask)
    zeros = _zeros(xp, xs.shape, x.dtype)

    def block(lo: int, hi: int) -> None:  # the items lo..hi-1 of the batch (one thread)
        if masks is not None:
            xp.greater(xs[lo:hi], 0, out=masks[lo:hi])
        xp.maximum(xs[lo:hi], zeros[lo:hi], out=ys[lo:hi])

    for_batch(xp, xs.shape[0], block, per_item=per_item)
    return y, (None if mask is None else ReluCache(mask))


def relu_backward(dy: Any, cache: ReluCache):
    """``dL/dx = dL/dy * mask``, fast."""
    mask = cache.mask
    xp = backend_of(dy).xp
    dx = scratch(xp, "relu.dx", dy.shape, dy.dtype)
    (dys, masks, dxs), per_item = _items(dy, mask, dx)

    def block(lo: int, hi: int) -> None:
        xp.multiply(dys[lo:hi], masks[lo:hi], out=dxs[lo:hi])

    for_batch(xp, dys.shape[0], block, per_item=per_item)
    return dx


def relu_in_place(y: Any) -> None:
    """The ReLU as the last step of another kernel (its "epilogue"): ``y = max(y, 0)`` in place
    (the kernel keeps the mask ``[y > 0]`` for backward in the layout it wants).

    A convolution that a ReLU follows (in a model from ``tinynet.fuse``) calls this on each block
    of its output right after writing it, while the block is still in the core's cache and on the
    block's own thread: the separate pass of :func:`relu_forward` goes away.
    """
    xp = backend_of(y).xp
    xp.maximum(y, _zeros(xp, y.shape, y.dtype), out=y)


def relu_backward_into(dy: Any, mask: Any, out: Any) -> None:
    """``out[...] = dy * mask``: :func:`relu_backward` written straight into the layout another
    kernel wants (a convolution's backward reorders dy anyway: the product costs that copy no
    extra pass). With ``mask=None`` it is a plain copy (no ReLU)."""
    if mask is None:
        out[...] = dy
    else:
        backend_of(dy).xp.multiply(dy, mask, out=out)
