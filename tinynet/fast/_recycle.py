"""Recycled buffers for the kernels (NumPy only).

Why: a training step allocates the same big arrays again and again (the columns of each
convolution, their gradients, the outputs of ReLU and pooling). On the CPU each fresh
multi-megabyte array costs page faults: the operating system hands out new memory and zeroes it,
page by page. Profiling the course network showed that this took about half of a training step.

The trick: keep each big array in a small table after use and hand it out again for the next
request of the same role, shape and dtype, but ONLY when nothing else refers to it any more (its
reference count says so), so an array that a cache, a view or the caller still holds is never
overwritten. CuPy keeps its own memory pool (and its views do not refer to their base array), so on
the GPU every request gets a fresh array.

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
# Least recently used buffers beyond this are forgotten (freed when unused). It must exceed the
# buffers of one training step (34 for the course network): with fewer, each buffer is evicted just
# before its next use and every request misses (at 32, a step was 1.6x slower).
_MAX_BUFFERS = 96


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
    buf = table.get(key)
    # 3 references = the table, `buf` and getrefcount's argument: no array or view uses it
    if buf is not None and buf.base is None and sys.getrefcount(buf) == 3:
        table.move_to_end(key)
        if zero:
            buf.fill(0)
        return buf
    buf = xp.zeros(shape, dtype=dtype)
    table[key] = buf
    table.move_to_end(key)
    while len(table) > _MAX_BUFFERS:
        table.popitem(last=False)
    return buf


def clear() -> None:
    """Forget every recycled buffer of this thread (their memory is freed once unused)."""
    _local.table = OrderedDict()
