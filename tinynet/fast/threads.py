"""Threads: how the fast engine uses every CPU core (NumPy backend only).

Why: NumPy runs each elementwise operation and each copy on ONE core, and its BLAS splits only large
matrix products well. The course network's products are small (a batch of 64 images of 28 x 28), so
on a 2-core machine nearly all of a training step ran on one core. PyTorch splits such work over
its threads; tinynet does the same, by hand, where it is simplest to see.

The trick: the images of a batch are independent in forward and in backward (only the weight
gradient sums over them). So a kernel splits the batch axis into one contiguous block per thread
and runs the SAME code on each block (``for_batch``): block 0 on the calling thread, the others on
worker threads, each writing into its own slice of one shared output. NumPy releases Python's GIL
inside its loops and inside BLAS, so the blocks really run at the same time. A sum over the batch
(such as dL/dW) is computed per block and the partial sums are added in block order afterwards, so
a run is exactly repeatable for a given number of threads.

While tinynet runs more than one thread, NumPy's BLAS runs ONE (set through threadpoolctl at the
first kernel call, split or not: switching it later, mid-run, stalls the next products): two
teams of threads on the same cores fight (measured: slower than no threads at all), and BLAS
threads that spin-wait after a product slow tinynet's next call even outside it. The BLAS
setting is process-wide; ``set_num_threads(1)`` gives BLAS its own back.

Usage::

    tinynet.set_num_threads(2)   # default: the cores this process may use
    tinynet.set_num_threads(1)   # every kernel on the calling thread; BLAS threads as before

On CuPy arrays ``for_batch`` runs the whole batch at once: the GPU has its own parallelism.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable

_MAX_DEFAULT_THREADS = 8  # a cap on the default (measured on 2 cores only)
# a block of a parallel call gets at least this many numbers (see for_batch). Measured on the
# course network, 2 cores: batch 16 ran 12% slower split in two; batch 64 gains about 10%
MIN_BLOCK_NUMBERS = 1 << 18


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


_state = threading.local()  # .inside: this thread runs a block of a parallel call
_lock = threading.Lock()  # one parallel call at a time; a second caller runs its batch alone
_num_threads = min(_cores(), _MAX_DEFAULT_THREADS)
_workers: list = []  # [(task queue, thread)] started on first use
_blas = None  # [(threadpoolctl BLAS controller, its own thread count)] while BLAS is held at 1


def set_num_threads(n: int) -> None:
    """Use ``n`` threads per kernel call (NumPy backend). 1 runs everything on the calling thread.

    The default is the number of cores this process may use (at most 8).
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    with _lock:
        _num_threads = n
        if n == 1:
            _restore_blas()


def get_num_threads() -> int:
    """The number of threads a kernel call splits its batch over (NumPy backend)."""
    return _num_threads


class _Call:
    """One parallel call's blocks: their results, errors and whether each is finished.

    Each call has its own, so a late block can never report to the next call. The caller reads
    ``finished`` (the state), and ``wakeup`` only tells it to look again: a wake-up lost to a
    Ctrl-C loses nothing.
    """

    def __init__(self, parts: int) -> None:
        self.out: list = [None] * parts
        self.errors: list = [None] * parts
        self.finished = [False] * parts
        self.wakeup: queue.SimpleQueue = queue.SimpleQueue()


def _worker(tasks: queue.SimpleQueue) -> None:
    _state.inside = True
    while True:
        fn, lo, hi, k, call = tasks.get()
        try:
            call.out[k] = fn(lo, hi)
        except BaseException as error:  # handed to the caller, which raises it
            call.errors[k] = error
        # drop the task before reporting: it refers to the kernel's buffers, which
        # _recycle.scratch hands out again only once no one else holds them (an error's
        # traceback refers to them too: the caller raises it, this thread lets it go)
        del fn
        call.finished[k] = True
        call.wakeup.put(None)
        del call


def _single_thread_blas() -> None:
    """BLAS to one thread, remembering its own setting (once)."""
    global _blas
    if _blas is not None:
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # without it, BLAS keeps its own threads (correct, a bit slower)
        _blas = ()
        return
    _blas = tuple((c, c.get_num_threads()) for c in ThreadpoolController().lib_controllers
                  if c.user_api == "blas")
    for c, _ in _blas:
        c.set_num_threads(1)


def _restore_blas() -> None:
    global _blas
    for c, threads in _blas or ():
        c.set_num_threads(threads)
    _blas = None


def _split(n: int, parts: int) -> list:
    """``parts`` contiguous blocks ``(lo, hi)`` of range(n), sizes differing by at most one."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def for_batch(xp: Any, n: int, fn: Callable[[int, int], Any], per_item: int = 0) -> list:
    """Run ``fn(lo, hi)`` over contiguous blocks of the batch range(n), one block per thread.

    ``fn`` must only write its own block of the outputs (the caller allocates them). ``per_item``
    is the numbers one item costs (its elements, say): a block gets at least
    ``MIN_BLOCK_NUMBERS`` of them, so small batches use fewer threads (below that, waking a
    thread and holding BLAS at one thread cost more than the split saves). Returns the blocks'
    return values in block order (for partial sums). Runs ``fn(0, n)`` alone on CuPy, with 1
    thread, inside another parallel call, or while another thread holds the pool.
    """
    if _blas is None and _num_threads > 1 and getattr(xp, "__name__", "") == "numpy":
        # BLAS to one thread from tinynet's first kernel call on, not only from its first split
        # one: switching BLAS's threads later, in the middle of a run, cost the next products
        # about 40 ms (measured: the first evaluation after an epoch at batch 16, which never
        # splits, took 84 ms for 1000 images instead of 52)
        _single_thread_blas()
    parts = min(_num_threads, n)
    if per_item:
        parts = min(parts, n * per_item // MIN_BLOCK_NUMBERS)
    if (parts <= 1 or getattr(xp, "__name__", "") != "numpy" or getattr(_state, "inside", False)
            or not _lock.acquire(blocking=False)):
        return [fn(0, n)]
    try:
        _start_workers(parts - 1)  # (BLAS is held at one thread already: see above)
        blocks = _split(n, parts)
        call = _Call(parts)
        for k, (lo, hi) in enumerate(blocks[1:], start=1):
            _workers[k - 1][0].put((fn, lo, hi, k, call))
        _state.inside = True  # a kernel called inside a block runs on its thread alone
        try:
            call.out[0] = fn(*blocks[0])
        except BaseException as e:  # still wait for the workers before raising
            call.errors[0] = e
        finally:
            _state.inside = False
        interrupted = _wait_for_workers(call)  # every worker, even after an error here
        error = next((e for e in call.errors if e is not None), interrupted)
        if error is not None:
            raise error
        return call.out
    finally:
        _lock.release()


def _start_workers(count: int) -> None:
    """At least ``count`` worker threads (started on first use; the caller holds _lock)."""
    while len(_workers) < count:
        tasks: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(target=_worker, args=(tasks,), daemon=True,
                                  name=f"tinynet-worker-{len(_workers)}")
        thread.start()
        _workers.append((tasks, thread))


def add_blocks(parts: list) -> tuple:
    """The blocks' partial sums from ``for_batch``, each a tuple of arrays (or None), added in
    block order (so a run is repeatable for a given number of threads). The first block's arrays
    receive the sums."""
    total = parts[0]
    for part in parts[1:]:
        for a, b in zip(total, part, strict=True):
            if a is not None:
                a += b
    return total


def _after_fork_in_child() -> None:
    """A forked child has no worker threads (only the forking thread survives a fork)."""
    global _lock
    _workers.clear()
    _lock = threading.Lock()
    _state.inside = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _wait_for_workers(call: _Call) -> BaseException | None:
    """Wait until every worker block of ``call`` is finished; returns a KeyboardInterrupt that
    came meanwhile (or None).

    Ctrl-C while waiting does not stop the wait: a worker still running its block would go on
    writing into the kernel's outputs after the caller had moved on. The wait is short (one
    block); the interrupt is raised once every worker has finished. The loop reads the blocks'
    ``finished`` flags, so an interrupt that lands anywhere in it (even just after a wake-up was
    taken from the queue) loses nothing.
    """
    interrupted = None
    while True:
        try:
            while not all(call.finished[1:]):
                try:
                    call.wakeup.get(timeout=0.05)  # (the timeout: in case a wake-up was lost)
                except queue.Empty:
                    pass
            return interrupted
        except KeyboardInterrupt as e:
            interrupted = e
