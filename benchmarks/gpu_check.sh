#!/usr/bin/env bash
# The GPU proof, in one go (about 5 minutes at most): run it on a machine with an NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh              # the real check, device 'cuda'
#   DRY_RUN=1 bash benchmarks/gpu_check.sh    # the same steps on device 'cpu' with tiny sizes
#                                             # (checks this script anywhere, proves nothing
#                                             # about GPUs)
#
# Steps: 1. the GPU (nvidia-smi), CuPy and tinynet's view of them; 2. the whole test suite, with
# the cuda cases (tests/test_devices.py) running instead of skipping; 3. the course network, one
# epoch on the full Fashion-MNIST, --device cuda, with examples/train_fashion_mnist.py; 4. every
# layer, the loss and a training step against PyTorch CUDA at batch 64 and 1024 (synchronised
# timings), plus the fused CUDA kernels against the generic code.
# Results: benchmarks/results/gpu_check.log, gpu_bench.json, gpu_epoch.json, gpu_env.txt
# (dry run: the same names with dryrun_ instead of gpu_).
#
# Fashion-MNIST: looked for in $TINYNET_DATA, data/fashion-mnist (git-ignored: copy the four
# *-ubyte.gz files there, e.g. from /usr/share/datasets/fashion-mnist, when the GPU machine has no
# internet), /usr/share/datasets/fashion-mnist and ~/.cache/tinynet/fashion-mnist.
# Needs only numpy, cupy, pytest, hypothesis (and torch for the comparison); not tqdm or matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

DRY_RUN="${DRY_RUN:-0}"
if [[ "$DRY_RUN" == "1" ]]; then
    DEVICE=cpu PREFIX=dryrun BATCHES="8 32" REPEATS=2 WARMUP=1
else
    DEVICE=cuda PREFIX=gpu BATCHES="64 1024" REPEATS=20 WARMUP=3
fi
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
LOG="$RESULTS/${PREFIX}_check.log"
exec > >(tee "$LOG") 2>&1
START=$SECONDS
step() { echo; echo "=== [$((SECONDS - START)) s] $* ==="; }

step "1/4 the machine"
date -u +"%Y-%m-%dT%H:%M:%SZ"
git rev-parse --short HEAD 2>/dev/null || true
if [[ "$DRY_RUN" != "1" ]]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || {
        echo "gpu_check: nvidia-smi failed: no NVIDIA GPU/driver here (DRY_RUN=1 checks the script)"
        exit 2
    }
fi
python - <<'EOF' | tee "$RESULTS/${PREFIX}_env.txt"
import platform, numpy
from tinynet import backend as B
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__)
except Exception as exc:
    print("cupy: not importable:", exc)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except Exception as exc:
    print("torch: not importable:", exc)
ok, why = B.cuda_status()
print("tinynet cuda_status:", ok, "-", why)
EOF
if [[ "$DRY_RUN" != "1" ]]; then
    python -c "from tinynet import backend as B; ok, why = B.cuda_status(); ok or exit('gpu_check: ' + why)"
fi

# Fashion-MNIST: the first folder holding the training images wins
DATA=""
for d in "${TINYNET_DATA:-}" data/fashion-mnist data /usr/share/datasets/fashion-mnist \
         "$HOME/.cache/tinynet/fashion-mnist"; do
    if [[ -n "$d" && ( -f "$d/train-images-idx3-ubyte.gz" || -f "$d/train-images-idx3-ubyte" ) ]]; then
        DATA="$d"
        break
    fi
done
if [[ -n "$DATA" ]]; then
    export TINYNET_DATA="$DATA"
    echo "Fashion-MNIST: $DATA"
elif [[ "$DRY_RUN" == "1" ]]; then
    echo "Fashion-MNIST: not found; the dry run uses the sample shipped with tinynet"
else
    echo "gpu_check: Fashion-MNIST not found. Copy the four *-ubyte.gz files into data/fashion-mnist/"
    echo "           (e.g. cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/) or set TINYNET_DATA"
    exit 2
fi

step "2/4 tests"
if [[ "$DRY_RUN" == "1" ]]; then
    # the device tests against the simulated 'cuda' device, and the backend tests
    TINYNET_SIMULATE_CUDA=1 timeout 240 python -m pytest -q -p no:cacheprovider -rs \
        tests/test_backend.py tests/test_devices.py tests/test_no_numpy_in_layers.py
else
    timeout 200 python -m pytest -q -p no:cacheprovider -rs -x
fi

step "3/4 the course network, one epoch of Fashion-MNIST on '$DEVICE'"
EXAMPLE=examples/train_fashion_mnist.py
if [[ -f "$EXAMPLE" ]]; then
    HELP="$(python "$EXAMPLE" --help)"
    ARGS=(--device "$DEVICE" --epochs 1)
    if [[ "$DRY_RUN" == "1" ]]; then
        [[ -z "$DATA" && "$HELP" == *--sample* ]] && ARGS+=(--sample)
        [[ "$HELP" == *--limit* ]] && ARGS+=(--limit 512)
    fi
    [[ "$HELP" == *--no-progress* ]] && ARGS+=(--no-progress)
    [[ "$HELP" == *--out* ]] && ARGS+=(--out "runs/${PREFIX}_check")
    echo "python $EXAMPLE ${ARGS[*]}"
    timeout 150 python "$EXAMPLE" "${ARGS[@]}"
else
    echo "gpu_check: $EXAMPLE is missing"
    exit 2
fi
# the same epoch timed without the example's extras (evaluation each epoch, printing, saving)
EPOCH_ARGS=(--device "$DEVICE" --epoch --batch-sizes 64 --out "$RESULTS/${PREFIX}_epoch.json")
if [[ "$DRY_RUN" == "1" ]]; then
    if [[ -z "$DATA" ]]; then EPOCH_ARGS+=(--sample); else EPOCH_ARGS+=(--limit 512); fi
fi
timeout 120 python benchmarks/gpu_bench.py "${EPOCH_ARGS[@]}"

step "4/4 layers, loss and a training step: tinynet vs PyTorch on '$DEVICE'"
# shellcheck disable=SC2086
timeout 150 python benchmarks/gpu_bench.py --device "$DEVICE" --batch-sizes $BATCHES \
    --warmup "$WARMUP" --repeats "$REPEATS" --out "$RESULTS/${PREFIX}_bench.json"

step "done in $((SECONDS - START)) s; results in $RESULTS/${PREFIX}_*"
