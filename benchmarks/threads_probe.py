"""What a second thread costs and gives on this machine: the limits of tinynet's threads.

Two measurements, no tinynet kernels involved:

* ``wake``: the round trip of an empty ``tinynet.threads.for_batch`` call (hand a block to the
  worker thread, wait for its report) right after the caller was busy alone for a while. A core
  left idle goes to sleep; waking it takes longer the longer it slept (in a virtual machine
  especially). In a training step the worker idles while the caller runs the serial parts.
* ``small-calls``: two threads each running 25 NumPy adds of n numbers in a loop, against one
  thread alone: how much work both get done together, per size. NumPy releases Python's lock
  (the GIL) inside each add, but every call takes it back, and a thread waiting for it sleeps; for
  small calls the hand-overs cost more than the adds.

    python benchmarks/threads_probe.py            # a few seconds
    python benchmarks/threads_probe.py --quick    # smoke test

Prints Markdown tables and writes JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def wake_latency(gaps_us: list, calls: int) -> list:
    """Median and 90th percentile round trip (us) of an empty 2-block for_batch after each gap."""
    import tinynet
    from tinynet.threads import for_batch

    tinynet.set_num_threads(2)

    def nothing(lo: int, hi: int) -> None:
        return None

    rows = []
    for gap in gaps_us:
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            while time.perf_counter() - t < gap * 1e-6:  # the caller busy alone (the worker idles)
                pass
            t = time.perf_counter()
            for_batch(np, 2, nothing)
            times.append((time.perf_counter() - t) * 1e6)
        rows.append(dict(gap_us=gap, median_us=float(np.median(times)),
                         p90_us=float(np.percentile(times, 90))))
    return rows


def small_calls(sizes: list, seconds: float) -> list:
    """Work done by two threads together, relative to one alone, for 25 adds of each size."""
    rows = []
    for n in sizes:
        arrays = [(np.ones(n, np.float32), np.ones(n, np.float32)) for _ in range(2)]

        def loop(k: int, counts: list, arrays: list = arrays) -> None:
            a, b = arrays[k]
            t, done = time.perf_counter(), 0
            while time.perf_counter() - t < seconds:
                for _ in range(25):
                    np.add(a, b, out=a)
                done += 1
            counts[k] = done

        alone = [0, 0]
        loop(0, alone)
        both = [0, 0]
        other = threading.Thread(target=loop, args=(1, both))
        other.start()
        loop(0, both)
        other.join()
        rows.append(dict(numbers_per_add=n, us_per_add_alone=seconds / alone[0] / 25 * 1e6,
                         two_threads_vs_one=sum(both) / alone[0]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: a fraction of a second")
    p.add_argument("--out-dir", default=None,
                   help="folder for the JSON (default benchmarks/results)")
    p.add_argument("--name", default=None, help="JSON file name (default threads_probe[_quick])")
    args = p.parse_args(argv)
    limiter = C.set_threads(2)  # noqa: F841 (BLAS held as tinynet holds it)
    wake = wake_latency([0, 50, 200, 500, 2000], 20 if args.quick else 300)
    calls = small_calls([1000, 18000, 72000, 300000], 0.05 if args.quick else 1.0)
    t1 = C.markdown_table(["caller busy alone before the call (us)", "round trip, median (us)",
                           "90th percentile (us)"],
                          [[r["gap_us"], r["median_us"], r["p90_us"]] for r in wake])
    t2 = C.markdown_table(["numbers per add", "one add alone (us)", "two threads / one"],
                          [[r["numbers_per_add"], r["us_per_add_alone"], r["two_threads_vs_one"]]
                           for r in calls])
    print("An empty parallel call (2 blocks), after the caller ran alone for a while:\n")
    print(t1)
    print("\nTwo threads each running 25 adds in a loop, work done together vs one thread:\n")
    print(t2)
    data = dict(machine=C.machine_info(2), settings=dict(quick=args.quick), wake=wake,
                small_calls=calls, tables=[t1, t2])
    C.save_results(args, "threads_probe", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
