"""Shared helpers of the benchmarks: data, threads, machine description, tables, JSON output.

Host-side code (it may import NumPy): nothing here is a tinynet layer.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel mean and std (as tinynet.data uses)


def set_threads(n: int) -> Any:
    """``n`` threads for tinynet's kernels, and BLAS/OpenMP pools limited to ``n`` (threadpoolctl;
    tinynet then holds BLAS at 1 thread inside its own). Returns the limiter (keep it)."""
    from threadpoolctl import threadpool_limits

    import tinynet

    tinynet.set_num_threads(n)
    return threadpool_limits(limits=n)


def torch_with_threads(n: int) -> bool:
    """PyTorch on ``n`` threads, seeded, if it is installed (else say so on stderr): whether it
    is there, for the scripts whose PyTorch columns are optional."""
    if not torch_available():
        print("PyTorch is not installed: timing tinynet alone", file=sys.stderr)
        return False
    import torch

    torch.set_num_threads(n)
    torch.manual_seed(0)
    return True


def load_fashion_mnist(train: bool, sample: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 1, 28, 28) and int64 labels (N,) of the real data (or tinynet's sample)."""
    from tinynet.data import FashionMNIST

    ds = FashionMNIST(train=train, sample=sample, download=False)
    return np.ascontiguousarray(ds.images), np.asarray(ds.labels, dtype=np.int64)


def normalise(images_u8: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 ``(x / 255 - mean) / std``, as tinynet.data.DataLoader does."""
    x = images_u8.astype(np.float32)
    x /= np.float32(255.0)
    x -= np.float32(MEAN)
    x /= np.float32(STD)
    return x


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_id() -> str:
    """"family F model M" from /proc/cpuinfo: two CPUs of one model name ("AMD EPYC" on a virtual
    machine) may be generations apart (Zen 1 is family 23 model 1, Zen 4 family 25)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
            if not line.strip():  # the first processor's block only
                break
    except OSError:
        pass
    if len(fields) < 2:
        return ""
    return f"family {fields['cpu family']} model {fields['model']}"


def machine_info(threads: int) -> dict:
    """CPU, cores, BLAS (from threadpoolctl), versions, date: what a result depends on."""
    from threadpoolctl import threadpool_info

    import tinynet

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_id": _cpu_id(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tinynet": tinynet.__version__,
        "blas": [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info()
        ],
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("OPENBLAS", "OMP_", "MKL_"))},
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table; floats are shown with 3 significant digits."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, data: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``data`` to ``<out_dir or benchmarks/results>/<name>.json`` (atomically)."""
    folder = Path(out_dir) if out_dir is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def output_arguments(parser: Any, default_name: str) -> None:
    """``--out-dir`` and ``--name``, the options of every script's JSON (see save_results)."""
    parser.add_argument("--out-dir", default=None,
                        help="folder for the JSON (default benchmarks/results)")
    parser.add_argument("--name", default=None,
                        help=f"JSON file name (default {default_name})")


def save_results(args: Any, default_name: str, data: dict) -> Path:
    """Write a script's JSON (``--name``, else ``default_name``, ``_quick`` added in quick mode;
    into ``--out-dir``) and say where."""
    name = args.name or default_name + ("_quick" if args.quick else "")
    path = write_json(name, data, args.out_dir)
    print(f"\nwritten: {path}")
    return path


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
