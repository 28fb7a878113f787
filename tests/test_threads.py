"""tinynet.threads: the batch split over worker threads (NumPy backend).

The kernels' results with threads are checked against naive loops in test_kernels_naive.py (every
test there runs on 1 and on 3 threads); here: the split itself, errors, repeatability, the BLAS
setting, and that the workers hold no buffer that the recycling needs back.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinynet
import tinynet.fast.conv as F  # the fast kernels split their batch over the threads
from tinynet.fast import threads


@pytest.fixture
def n_threads():
    """Set the thread count for one test (tiny blocks allowed); restore it afterwards."""
    saved = tinynet.get_num_threads(), threads.MIN_BLOCK_NUMBERS
    threads.MIN_BLOCK_NUMBERS = 1

    def use(n):
        tinynet.set_num_threads(n)

    yield use
    tinynet.set_num_threads(saved[0])
    threads.MIN_BLOCK_NUMBERS = saved[1]


@given(n=st.integers(0, 50), k=st.integers(1, 5), per_item=st.integers(0, 40))
def test_blocks_cover_the_batch_once_in_order(n_threads, n, k, per_item):
    n_threads(k)
    threads.MIN_BLOCK_NUMBERS = 16
    seen = np.zeros(n, dtype=int)
    names = {}

    def block(lo, hi):
        seen[lo:hi] += 1
        names[lo] = threading.current_thread().name
        return lo, hi

    blocks = threads.for_batch(np, n, block, per_item=per_item)
    assert (seen == 1).all()
    # contiguous, in order, starting at 0 and ending at n; the first block on the caller
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    expected_parts = min(k, n) if per_item == 0 else min(k, n, n * per_item // 16)
    assert len(blocks) == max(1, expected_parts)
    sizes = [hi - lo for lo, hi in blocks]
    assert max(sizes) - min(sizes) <= 1
    assert names[0] == threading.current_thread().name
    assert len(set(names.values())) == len(blocks)  # one thread per block


def test_a_worker_error_reaches_the_caller_and_the_pool_still_works(n_threads):
    n_threads(3)

    def block(lo, hi):
        if lo > 0:
            raise ValueError(f"block {lo}")
        return lo

    with pytest.raises(ValueError, match="block"):
        threads.for_batch(np, 9, block)
    assert threads.for_batch(np, 9, lambda lo, hi: hi - lo) == [3, 3, 3]


def test_a_parallel_call_inside_a_block_runs_on_its_thread(n_threads):
    n_threads(2)
    inner = []

    def block(lo, hi):
        inner.append(len(threads.for_batch(np, 10, lambda a, b: (a, b))))

    threads.for_batch(np, 4, block)
    assert inner == [1, 1]


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                        (True, TypeError)])
def test_set_num_threads_refuses_bad_values(bad, error):
    with pytest.raises(error, match="set_num_threads"):
        tinynet.set_num_threads(bad)


def test_blas_runs_one_thread_inside_and_gets_its_own_back(n_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = [c for c in threadpoolctl.ThreadpoolController().lib_controllers
            if c.user_api == "blas"]
    if not blas:
        pytest.skip("no BLAS library that threadpoolctl can control")
    n_threads(1)
    own = [c.get_num_threads() for c in blas]
    n_threads(2)
    seen = threads.for_batch(np, 2, lambda lo, hi: [c.get_num_threads() for c in blas])
    assert seen == [[1] * len(blas)] * 2
    n_threads(1)
    assert [c.get_num_threads() for c in blas] == own
    # a call too small to split holds BLAS at one thread too (a switch later, mid-run, stalls)
    n_threads(2)
    assert threads.for_batch(np, 1, lambda lo, hi: [c.get_num_threads() for c in blas]) \
        == [[1] * len(blas)]
    n_threads(1)
    assert [c.get_num_threads() for c in blas] == own


def _conv_step(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y, cache = F.conv2d_forward(x, w, b, stride=1, padding=1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = F.conv2d_backward(dy, cache)
    return [a.copy() for a in (y, dx, dw, db)]


def test_a_run_is_repeatable_and_matches_one_thread(n_threads):
    n_threads(3)
    first, again = _conv_step(0), _conv_step(0)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)  # same thread count: bit for bit
    n_threads(1)
    for a, b in zip(first, _conv_step(0), strict=True):  # dW and db are summed in another order
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_workers_hold_no_buffer_after_a_call(n_threads):
    """The recycling hands a buffer out again only when no one holds it: a worker that kept its
    last task would hold the kernel's buffers, and every call would allocate them anew."""
    n_threads(2)
    x = np.random.default_rng(0).standard_normal((8, 2, 10, 10)).astype(np.float32)
    w = np.ones((3, 2, 3, 3), dtype=np.float32)
    y, cache = F.conv2d_forward(x, w)
    cols = weakref.ref(cache.cols.base)  # (the columns are a view of the recycled buffer)
    del y, cache
    y, cache = F.conv2d_forward(x, w)
    assert cache.cols.base is cols()


def test_ctrl_c_while_waiting_lets_the_workers_finish_first(n_threads):
    """A real SIGINT that interrupts the caller's wait must not leave a worker's report behind
    for the next call (which would then return before its own blocks were done)."""
    n_threads(2)
    main = threading.main_thread().ident
    if threading.get_ident() != main:
        pytest.skip("signals reach the main thread only")
    finished = []

    def block(lo, hi):
        if lo > 0:
            signal.pthread_kill(main, signal.SIGINT)  # the caller is waiting for this block
            time.sleep(0.2)
            finished.append(lo)

    with pytest.raises(KeyboardInterrupt):
        threads.for_batch(np, 2, block)
    assert finished == [1]  # the interrupt came out only after the worker's block was done

    def slow_block(lo, hi):
        time.sleep(0.05 * lo)
        return hi - lo

    assert threads.for_batch(np, 4, slow_block) == [2, 2]


def test_an_interrupt_right_after_a_wakeup_loses_no_report(n_threads, monkeypatch):
    """The race behind a hang once seen in the suite: Ctrl-C handled just after the caller took a
    worker's wake-up from the queue (Python checks for signals right after a call returns). The
    caller must still see that the block finished, and raise the interrupt then."""
    n_threads(2)

    class Wakeup(queue.SimpleQueue):
        fired = False

        def get(self, *args, **kwargs):
            item = super().get(*args, **kwargs)
            if not Wakeup.fired:
                Wakeup.fired = True
                raise KeyboardInterrupt  # as if SIGINT were handled right as get() returned
            return item

    class Call(threads._Call):
        def __init__(self, parts):
            super().__init__(parts)
            self.wakeup = Wakeup()

    monkeypatch.setattr(threads, "_Call", Call)
    outcome = []

    def run():
        try:
            outcome.append(threads.for_batch(np, 4, lambda lo, hi: hi - lo))
        except KeyboardInterrupt:
            outcome.append("interrupted")

    caller = threading.Thread(target=run, daemon=True)  # (a hang must not hold up pytest)
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive(), "the caller still waits for a report it already took"
    assert outcome == ["interrupted"] and Wakeup.fired
