"""Does NumPy's OpenBLAS pick its fastest kernels on this CPU? tinynet under the kernels OpenBLAS
picks for itself and under ``OPENBLAS_CORETYPE=<core>``, in alternating subprocesses.

NumPy's wheels ship OpenBLAS built for many CPUs at once (DYNAMIC_ARCH): when NumPy loads it,
OpenBLAS reads the CPU's features and picks one set of kernels, or the set that the environment
variable ``OPENBLAS_CORETYPE`` names. That happens once per process, so the two ways cannot
alternate in one process as ``ab_nets.py`` alternates its switches: each measurement here is a
subprocess of its own, and the order of the two ways swaps every round. Three measurements,
tinynet only (2 threads, the fast engine, the model fused as ``fit`` runs it):

* ``vgg``: the VGG-style training step at batch 128 (``bench_nets.py``'s worker);
* ``bn``: the BatchNorm network's training step at batch 128, the mean over its first batches of
  the real Fashion-MNIST (``bench_nets.py``'s worker, ``--max-batches``);
* ``conv``: the larger convolution, 32->64 3x3 padding 1 on 32x32 at batch 64, forward +
  backward (``bench_layers.py``'s timing).

The table names the kernels OpenBLAS runs each way (threadpoolctl's ``architecture``, asked in
a fresh process of each), so it shows that the variable took effect. tinynet itself never sets
the variable: it would have to be set before NumPy is first imported, and it changes every
NumPy user in the process.

    python benchmarks/ab_blas_core.py                        # Haswell vs the default, 6 rounds
    python benchmarks/ab_blas_core.py --core SkylakeX --rounds 4
    python benchmarks/ab_blas_core.py --quick                # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

WHAT = ("vgg", "bn", "conv")


def _architecture() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(str(p.get("architecture")) for p in threadpool_info()
                     if p.get("internal_api") == "openblas") or "no OpenBLAS"


def conv_worker(args) -> dict:
    """The larger convolution's forward + backward ms in this process (bench_layers' timing)."""
    from bench_layers import time_tinynet

    limiter = C.set_threads(args.threads)  # noqa: F841 (kept alive while timing)
    batch, size = (4, 8) if args.quick else (64, 32)
    spec = dict(kind="conv", args=(32, 64, 3), kwargs=dict(padding=1))
    x = np.random.default_rng(0).standard_normal((batch, 32, size, size)).astype(np.float32)
    fwd, bwd = time_tinynet(spec, x, 3 if args.quick else 15)
    return dict(ms=(fwd + bwd) * 1e3, forward_ms=fwd * 1e3, backward_ms=bwd * 1e3)


def _env(core: str | None) -> dict:
    """This process's environment with ``OPENBLAS_CORETYPE`` set to ``core`` (None: unset)."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if core:
        env["OPENBLAS_CORETYPE"] = core
    return env


def architecture_with(core: str | None) -> str:
    """The kernels OpenBLAS runs in a fresh process with ``OPENBLAS_CORETYPE=core``."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import ab_blas_core as A; " \
           "print(A._architecture())"
    return subprocess.run([sys.executable, "-c", code], env=_env(core), check=True,
                          capture_output=True, text=True).stdout.strip()


def measure(what: str, core: str | None, args) -> dict:
    """One measurement in a fresh process, with ``OPENBLAS_CORETYPE`` set to ``core`` (None:
    unset, OpenBLAS picks)."""
    env = _env(core)
    if what == "conv":
        cmd = [sys.executable, __file__, "--worker", "--threads", str(args.threads)]
        cmd += ["--quick"] if args.quick else []
    else:
        cmd = [sys.executable, str(HERE / "bench_nets.py"), "--worker", "tinynet", "--net", what,
               "--threads", str(args.threads), "--steps", str(args.steps),
               "--batch-size", "8" if args.quick and what == "vgg" else "128"]
        if what == "bn":
            cmd += ["--max-batches", str(args.bn_batches)]
        cmd += ["--sample"] if args.quick else []
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    if what == "vgg":
        r["ms"] = r["step_ms"]
    elif what == "bn":
        r["ms"] = r["train_s"] * 1e3 * 128 / r["images"]  # (per 128 images: the batches it ran)
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--core", default="Haswell",
                   help="the OPENBLAS_CORETYPE to try against OpenBLAS's own pick")
    p.add_argument("--what", nargs="+", choices=WHAT, default=list(WHAT))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=15, help="vgg: timed steps per run")
    p.add_argument("--bn-batches", type=int, default=200, help="bn: batches per run")
    p.add_argument("--quick", action="store_true", help="2 rounds of tiny sizes: a smoke test")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    C.output_arguments(p, "ab_blas_core")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.bn_batches = 2, 2, 3
    if args.worker:
        print(json.dumps(conv_worker(args)))
        return 0
    ways = {"default": None, args.core: args.core}
    kernels = {way: architecture_with(core) for way, core in ways.items()}
    if kernels["default"] == kernels[args.core]:
        print(f"note: OpenBLAS runs its {kernels['default']} kernels both ways (its own pick "
              f"here, or a name it does not know)", file=sys.stderr)
    runs: dict = {(w, way): [] for w in args.what for way in ways}
    for rnd in range(args.rounds):
        order = list(ways) if rnd % 2 == 0 else list(ways)[::-1]
        for way in order:
            for w in args.what:
                r = measure(w, ways[way], args)
                runs[(w, way)].append(r)
                print(f"  round {rnd} {way:>9s} {w}: {r['ms']:.4g} ms", file=sys.stderr)
    rows, results = [], []
    for w in args.what:
        a = [r["ms"] for r in runs[(w, "default")]]
        b = [r["ms"] for r in runs[(w, args.core)]]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        med_a, med_b = statistics.median(a), statistics.median(b)
        results.append(dict(what=w, default_ms=a, core_ms=b, ratios=ratios))
        rows.append([w, med_a, med_b, med_b / med_a, " ".join(f"{v:.3g}" for v in ratios)])
    header = ["what (ms)", f"default ({kernels['default']} kernels)",
              f"OPENBLAS_CORETYPE={args.core} ({kernels[args.core]} kernels)",
              "core / default (medians)", "each round"]
    table = C.markdown_table(header, rows)
    machine = C.machine_info(args.threads)
    print(f"\n{args.threads} threads, {machine['cpu']}, medians of {args.rounds} rounds\n")
    print(table)
    C.save_results(args, "ab_blas_core", {"machine": machine, "settings": vars(args),
                                          "kernels": kernels, "results": results,
                                          "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
