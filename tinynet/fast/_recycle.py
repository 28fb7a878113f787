"""Recycled buffers for the kernels (NumPy only).

Why: a training step allocates the same big arrays again and again (the columns of each
convolution, their gradients, the outputs of ReLU and pooling). On the CPU each fresh
multi-megabyte array costs page faults: the operating system hands out new memory and zeroes it,
page by page. Profiling the course network showed that this took about half of a training step.

The trick: keep each big array in a small table after use and hand it out again for the next
request of the same role, shape and dtype, but ONLY when nothing else refers to it any more (its
reference count says so), so an array that a cache, a view or the caller still holds is never
overwritten. A role may have several buffers of one shape: two layers of the same shape in one
network (a VGG block's two convolutions, their BatchNorms) each hold theirs until backward, and
with one buffer per role the second layer made a fresh one at every step (650 MB of fresh zeroed
memory per step of the VGG-style network, measured). CuPy keeps its own memory pool (and its views
do not refer to their base array), so on the GPU every request gets a fresh array.

Training and evaluation never share the table: when a thread's requests switch between
``tinynet.no_grad()`` and gradient mode, the buffers of the other mode are forgotten. Without
that, the buffers of both stayed alive at once (evaluation batches of 1000 make big ones: 290 MB
for the BN network), and the peak memory of a run was their sum. The switch costs a few page
faults per epoch (the buffers are made again once).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any

from ..backend import is_grad_enabled

_local = threading.local()  # one table per thread: two threads never share a buffer
# Buffers beyond this many (per thread) are forgotten, the least recently used first (freed when
# unused). It must exceed the buffers of one training step: with fewer, each buffer is evicted just
# before its next use and every request misses (the course network has 34: at a limit of 32, a step
# was 1.6x slower; the VGG-style network of benchmarks/bench_nets.py, 2 threads, has about 110 on
# its main thread, and the old limit of 96 evicted its first ReLU's buffers at every step).
_MAX_BUFFERS = 256


def scratch(xp: Any, role: str, shape: tuple, dtype: Any, zero: bool = False) -> Any:
    """An array of ``shape`` and ``dtype`` for ``role``: a recycled one if no one else holds it.

    A new buffer is all zeros; a recycled one keeps what the last user of the same ``role`` wrote
    there, unless ``zero=True`` asks for zeros again.
    """
    if getattr(xp, "__name__", "") != "numpy":
        return xp.zeros(shape, dtype=dtype)
    try:
        table = _local.table
    except AttributeError:
        table = _local.table = OrderedDict()
    grad = is_grad_enabled()
    if getattr(_local, "grad", grad) != grad:  # training <-> evaluation: forget the other's
        table.clear()
    _local.grad = grad
    # id(xp): one table per array module; dtype as the caller names it (x.dtype, xp.bool_, ...)
    key = (id(xp), role, tuple(shape), dtype)
    buffers = table.get(key)
    if buffers is None:
        buffers = table[key] = []
    table.move_to_end(key)
    for buf in buffers:
        # 3 references = the list, `buf` and getrefcount's argument: no array or view uses it
        if buf.base is None and sys.getrefcount(buf) == 3:
            if zero:
                buf.fill(0)
            return buf
    buf = xp.zeros(shape, dtype=dtype)
    buffers.append(buf)
    _forget_beyond(table, _MAX_BUFFERS)
    return buf


def _forget_beyond(table: OrderedDict, limit: int) -> None:
    """Drop the least recently used buffers until the table holds at most ``limit``."""
    count = sum(len(buffers) for buffers in table.values())
    while count > limit:
        key, buffers = next(iter(table.items()))
        buffers.pop(0)
        count -= 1
        if not buffers:
            del table[key]


def clear() -> None:
    """Forget every recycled buffer of this thread (their memory is freed once unused)."""
    _local.table = OrderedDict()
