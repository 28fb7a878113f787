"""The same code on device 'cuda': every piece compared with the CPU (NumPy) run.

Every test marked ``requires_cuda`` is skipped, with the reason from
``tinynet.backend.cuda_status()``
("needs CuPy ..." or "CuPy ... is installed but no GPU is visible"), where CuPy or a GPU is missing.
Run them on a GPU machine with ``python -m pytest tests/test_devices.py -rs`` (or the whole check,
``bash benchmarks/gpu_check.sh``).

The oracle is the CPU: the same weights (drawn on the host, so identical on both devices) and the
same inputs must give the same outputs and gradients, within float32 rounding (cuBLAS sums in
another order than OpenBLAS) or float64 rounding.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from script_loader import load_script

import tinynet
import tinynet.functional as F
import tinynet.nn as nn
from tinynet import backend as B
from tinynet import kernels
from tinynet.models import course_cnn

CUDA_OK, CUDA_WHY = B.cuda_status()
# Without a GPU, TINYNET_SIMULATE_CUDA=1 runs these tests against a stand-in 'cuda' device: NumPy
# arrays that tinynet takes for CuPy arrays and that raise, as CuPy does, when host arrays are
# mixed in or NumPy functions are called on them (tests/test_no_numpy_in_layers.py). It checks
# the device plumbing and these tests themselves; the fused-kernel tests still need real CuPy.
SIMULATED = not CUDA_OK and os.environ.get("TINYNET_SIMULATE_CUDA") == "1"
requires_cuda = pytest.mark.skipif(not (CUDA_OK or SIMULATED),
                                   reason=f"device 'cuda' unavailable: {CUDA_WHY}")
requires_cupy = pytest.mark.skipif(not CUDA_OK, reason=f"needs real CuPy and a GPU: {CUDA_WHY}")
pytestmark = pytest.mark.cuda  # `-m "not cuda"` deselects this file


@pytest.fixture(autouse=True, scope="module")
def simulated_cuda():
    if not SIMULATED:
        yield
        return
    strict = load_script(pathlib.Path(__file__).with_name("test_no_numpy_in_layers.py"),
                         "_strict_xp")
    with strict.simulated_cuda_device():  # (it runs the reference kernels)
        yield

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
ROOT = pathlib.Path(__file__).resolve().parents[1]

TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


def cuda(a):
    return B.to_device(a, "cuda")


def host(a):
    return None if a is None else B.to_numpy(a)


def assert_same(gpu, cpu, dtype=np.float32, what=""):
    assert B.device_of(gpu) == "cuda", f"{what}: expected a CuPy array, got {type(gpu)}"
    assert gpu.dtype == cpu.dtype and tuple(gpu.shape) == tuple(cpu.shape), what
    np.testing.assert_allclose(host(gpu), cpu, err_msg=what, **TOL[dtype])


def _randn(shape, dtype, seed=0, away_from=None):
    """Normal numbers; ``away_from=0`` keeps them at least 0.05 from 0 (no ReLU kinks)."""
    a = np.random.default_rng(seed).standard_normal(shape)
    if away_from is not None:
        a = np.where(np.abs(a - away_from) < 0.05, a + 0.1, a)
    return a.astype(dtype)


def _distinct(shape, dtype, seed=0):
    """A random order of well-separated values: no max-pool ties, so both devices pick the same
    winner."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) * 0.01).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Device-parametrised basics (the 'cuda' case skips with its reason)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_layer_lives_on_its_device(device):
    layer = nn.Linear(3, 2, device=device)
    x = B.get_backend(device).asarray(np.ones((4, 3)), dtype=np.float32)
    y = layer(x)
    assert layer.device == device and B.device_of(y) == device and y.dtype == np.float32


@pytest.mark.parametrize("device", DEVICES)
def test_manual_seed_gives_the_same_weights_on_every_device(device):
    tinynet.manual_seed(11)
    on_device = nn.Conv2d(2, 3, 3, device=device)
    tinynet.manual_seed(11)
    on_cpu = nn.Conv2d(2, 3, 3, device="cpu")
    np.testing.assert_array_equal(host(on_device.weight.data), on_cpu.weight.data)
    np.testing.assert_array_equal(host(on_device.bias.data), on_cpu.bias.data)


@pytest.mark.parametrize("device", DEVICES)
def test_device_random_numbers_follow_manual_seed(device):
    backend = B.get_backend(device)
    tinynet.manual_seed(5)
    a, p = host(backend.random((3, 4), "float32")), host(backend.permutation(9))
    tinynet.manual_seed(5)
    np.testing.assert_array_equal(host(backend.random((3, 4), "float32")), a)
    np.testing.assert_array_equal(host(backend.permutation(9)), p)
    assert sorted(p.tolist()) == list(range(9)) and a.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# Every layer and the loss: cuda == cpu, forward and backward
# ----------------------------------------------------------------------------------------------
LAYERS = [
    ("conv", lambda dt: nn.Conv2d(3, 4, 3, dtype=dt), (2, 3, 9, 8), None),
    ("conv stride/pad", lambda dt: nn.Conv2d(3, 5, (5, 3), stride=(2, 1), padding=(2, 1),
                                             dtype=dt), (2, 3, 11, 7), None),
    ("conv no bias", lambda dt: nn.Conv2d(1, 6, 5, bias=False, dtype=dt), (3, 1, 12, 12), None),
    ("linear", lambda dt: nn.Linear(7, 5, dtype=dt), (6, 7), None),
    ("relu", lambda dt: nn.ReLU(), (4, 3, 5, 5), 0.0),
    ("maxpool 2x2", lambda dt: nn.MaxPool2d(2), (2, 3, 8, 8), "distinct"),
    ("maxpool overlap", lambda dt: nn.MaxPool2d(3, stride=1, padding=1), (2, 2, 6, 7), "distinct"),
    ("maxpool gaps", lambda dt: nn.MaxPool2d((2, 3), stride=(3, 2)), (1, 2, 9, 9), "distinct"),
    ("flatten", lambda dt: nn.Flatten(), (2, 3, 4, 5), None),
]


@requires_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, make, shape, inputs", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_cuda_equals_cpu(name, make, shape, inputs, dtype):
    tinynet.manual_seed(0)
    layer_cpu = make(dtype)
    layer_gpu = layer_cpu.copy().to("cuda")
    x = _distinct(shape, dtype) if inputs == "distinct" else _randn(shape, dtype, away_from=inputs)
    y_cpu = layer_cpu(x)
    y_gpu = layer_gpu(cuda(x))
    assert_same(y_gpu, y_cpu, dtype, f"{name}: forward")
    dy = _randn(y_cpu.shape, dtype, seed=1)
    assert_same(layer_gpu.backward(cuda(dy)), layer_cpu.backward(dy), dtype, f"{name}: dx")
    for (pname, p_gpu), (_, p_cpu) in zip(layer_gpu.named_parameters(),
                                          layer_cpu.named_parameters(), strict=True):
        assert p_gpu.device == "cuda"
        assert_same(p_gpu.grad, p_cpu.grad, dtype, f"{name}: d{pname}")


@requires_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_cuda_equals_cpu(dtype):
    logits = _randn((8, 10), dtype) * 3
    labels = np.random.default_rng(2).integers(0, 10, size=8)
    loss_cpu, loss_gpu = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    value_cpu = loss_cpu(logits, labels)
    value_gpu = loss_gpu(cuda(logits), cuda(labels))
    assert value_gpu.shape == () and value_gpu.dtype == dtype
    np.testing.assert_allclose(float(value_gpu), float(value_cpu), **TOL[dtype])
    assert_same(loss_gpu.backward(), loss_cpu.backward(), dtype, "dL/dlogits")
    # upstream gradient given as a number and as a 0-d device array
    loss_gpu(cuda(logits), cuda(labels))
    assert_same(loss_gpu.backward(B.get_backend("cuda").asarray(2.0, dtype=dtype)),
                2 * loss_cpu(logits, labels).dtype.type(1) * _ce_grad(logits, labels), dtype)


def _ce_grad(logits, labels):
    loss = nn.CrossEntropyLoss()
    loss(logits, labels)
    return loss.backward()


@requires_cuda
def test_loss_labels_on_the_other_device_is_a_clear_error():
    with pytest.raises(B.DeviceError, match="'cpu'.*'cuda'|'cuda'.*'cpu'"):
        nn.CrossEntropyLoss()(cuda(_randn((2, 3), np.float32)), np.array([0, 1]))


# ----------------------------------------------------------------------------------------------
# The course network: a training step, SGD with momentum, module.to and Optimizer.to
# ----------------------------------------------------------------------------------------------
def course_network(dtype=np.float32, device="cpu"):
    """The network of the course notes: conv(1->6, 5) -> pool -> conv(6->12, 5) -> pool -> 3 fc."""
    return course_cnn(dtype=dtype, device=device)


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, size=n)


def _steps(model, opt, batches, to):
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(to(x)), to(y))
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(float(loss))
    return losses


@requires_cuda
@pytest.mark.parametrize("opt_kwargs", [
    dict(lr=0.1), dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
])
def test_training_steps_cuda_equal_cpu(opt_kwargs):
    tinynet.manual_seed(0)
    model_cpu = course_network()
    model_gpu = model_cpu.copy().to("cuda")
    batches = [_batch(seed=s) for s in range(3)]
    losses_cpu = _steps(model_cpu, tinynet.optim.SGD(model_cpu.parameters(), **opt_kwargs), batches,
                        lambda a: a)
    losses_gpu = _steps(model_gpu, tinynet.optim.SGD(model_gpu.parameters(), **opt_kwargs), batches,
                        cuda)
    np.testing.assert_allclose(losses_gpu, losses_cpu, rtol=1e-4)
    for (k, w_gpu), (_, w_cpu) in zip(model_gpu.state_dict().items(),
                                      model_cpu.state_dict().items(), strict=True):
        assert B.device_of(w_gpu) == "cuda"
        np.testing.assert_allclose(host(w_gpu), w_cpu, rtol=1e-4, atol=1e-5, err_msg=k)


@requires_cuda
def test_module_and_optimizer_move_between_devices():
    """Train on CPU, move model and optimizer to the GPU mid-run, then back: the same numbers as a
    run that never moved."""
    tinynet.manual_seed(0)
    reference = course_network()
    moved = reference.copy()
    kw = dict(lr=0.05, momentum=0.9)
    opt_ref, opt_moved = (tinynet.optim.SGD(m.parameters(), **kw) for m in (reference, moved))
    batches = [_batch(seed=s) for s in range(4)]
    _steps(reference, opt_ref, batches, lambda a: a)

    _steps(moved, opt_moved, batches[:2], lambda a: a)
    moved.to("cuda")
    opt_moved.to("cuda")
    assert moved.device == "cuda"
    assert all(p.device == "cuda" for p in moved.parameters())
    assert all(p.grad is None or B.device_of(p.grad) == "cuda" for p in moved.parameters())
    assert all(B.device_of(s["momentum_buffer"]) == "cuda" for s in opt_moved.state.values())
    _steps(moved, opt_moved, batches[2:3], cuda)
    moved.to("cpu")
    opt_moved.to("cpu")
    assert all(isinstance(s["momentum_buffer"], np.ndarray) for s in opt_moved.state.values())
    _steps(moved, opt_moved, batches[3:], lambda a: a)
    pairs = zip(moved.state_dict().items(), reference.state_dict().items(), strict=True)
    for (k, a), (_, b) in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=k)


@requires_cuda
def test_mixing_devices_is_a_clear_error():
    model_gpu = course_network(device="cuda")
    x, _ = _batch(2)
    with pytest.raises(B.DeviceError) as info:
        model_gpu(x)
    assert "'cpu'" in str(info.value) and "'cuda'" in str(info.value)
    with pytest.raises(B.DeviceError) as info:
        course_network()(cuda(x))
    assert "'cpu'" in str(info.value) and "'cuda'" in str(info.value)


@requires_cuda
def test_optimizer_state_dict_between_devices():
    tinynet.manual_seed(0)
    model = course_network(device="cuda")
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _steps(model, opt, [_batch()], cuda)
    state = opt.state_dict()
    model_cpu = model.copy().to("cpu")
    opt_cpu = tinynet.optim.SGD(model_cpu.parameters(), lr=0.05, momentum=0.9)
    opt_cpu.load_state_dict(state)
    for s_cpu, s_gpu in zip(opt_cpu.state.values(), opt.state.values(), strict=True):
        assert isinstance(s_cpu["momentum_buffer"], np.ndarray)
        np.testing.assert_array_equal(s_cpu["momentum_buffer"], host(s_gpu["momentum_buffer"]))


# ----------------------------------------------------------------------------------------------
# Gradient checks in float64 on the GPU
# ----------------------------------------------------------------------------------------------
GRADCHECK_MODULES = [
    ("conv", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 5, 6), None),
    ("linear", lambda: nn.Linear(4, 3), (3, 4), None),
    ("relu", lambda: nn.ReLU(), (2, 3, 4), 0.0),
    ("maxpool", lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 6, 5), "distinct"),
    ("flatten", lambda: nn.Flatten(), (2, 3, 2, 2), None),
]


@requires_cuda
@pytest.mark.parametrize("name, make, shape, inputs", GRADCHECK_MODULES,
                         ids=[c[0] for c in GRADCHECK_MODULES])
def test_gradcheck_float64_on_gpu(name, make, shape, inputs):
    tinynet.manual_seed(0)
    module = make().to("cuda")
    x = _distinct(shape, np.float64) if inputs == "distinct" else _randn(shape, np.float64,
                                                                          away_from=inputs)
    assert tinynet.gradcheck(module, cuda(x))


@requires_cuda
def test_gradcheck_loss_and_functional_pair_on_gpu():
    logits = cuda(_randn((4, 5), np.float64))
    labels = cuda(np.array([0, 4, 2, 2]))
    assert tinynet.gradcheck(nn.CrossEntropyLoss(), (logits, labels))
    assert tinynet.gradcheck((F.linear_forward, F.linear_backward),
                             (cuda(_randn((3, 4), np.float64)), cuda(_randn((2, 4), np.float64)),
                              cuda(_randn((2,), np.float64))))


# ----------------------------------------------------------------------------------------------
# The fast engine's CUDA kernels (tinynet/fast/cuda.py) == the reference kernels, on the GPU
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def gpu():
    return B.get_backend("cuda")


@requires_cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("settings", [
    dict(momentum=0.0), dict(momentum=0.0, weight_decay=0.01),
    dict(momentum=0.9), dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
    dict(momentum=0.9, weight_decay=0.01, nesterov=True),
])
def test_fused_sgd_equals_the_reference(gpu, settings, dtype):
    from tinynet.fast import cuda as fast_cuda
    from tinynet.optim.sgd import sgd_update

    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((33, 17)).astype(dtype)
    grads = [rng.standard_normal(w0.shape).astype(dtype) for _ in range(3)]
    results = {}
    for name, update in (("fused", fast_cuda.sgd_update), ("reference", sgd_update)):
        w, buf = cuda(w0.copy()), None
        for g in grads:
            buf = update(w, cuda(g), buf, 0.1, **settings)
        results[name] = (w, buf)
    w_cpu, buf_cpu = w0.copy(), None
    for g in grads:
        buf_cpu = sgd_update(w_cpu, g, buf_cpu, 0.1, **settings)
    assert kernels.implementation("sgd_update", "cuda") is fast_cuda.sgd_update
    assert_same(results["fused"][0], host(results["reference"][0]), dtype, "fused vs ref: w")
    assert_same(results["fused"][0], w_cpu, dtype, "fused vs cpu: w")
    if settings["momentum"]:
        assert_same(results["fused"][1], host(results["reference"][1]), dtype, "fused vs ref: buf")
    else:
        assert results["fused"][1] is None and results["reference"][1] is None


POOLS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 0)),
         ((2, 2), (3, 3), (0, 0)), ((5, 5), (2, 2), (2, 2))]


@requires_cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel, stride, padding", POOLS)
def test_fused_maxpool_route_equals_the_reference(gpu, kernel, stride, padding, dtype):
    from tinynet.fast import cuda as fast_cuda

    x = _distinct((3, 4, 13, 11), dtype)
    y, cache = fast_cuda.maxpool2d_forward(cuda(x), kernel, stride, padding)
    dy = cuda(_randn(y.shape, dtype, seed=1))
    fused = fast_cuda.maxpool2d_backward(dy, cache)
    reference = F.maxpool2d_backward(dy, cache.pool)
    np.testing.assert_array_equal(host(fused), host(reference))  # same terms, same order
    assert kernels.implementation("maxpool2d_forward", "cuda") is fast_cuda.maxpool2d_forward


@requires_cuda
def test_scatter_add_and_strided_views_on_gpu(gpu):
    target = gpu.xp.zeros(4, dtype=np.float32)
    gpu.scatter_add(target, cuda(np.array([0, 2, 2, 2])), cuda(np.array([1, 1, 2, 3], np.float32)))
    np.testing.assert_array_equal(host(target), [1, 0, 6, 0])
    x = gpu.xp.arange(6, dtype=np.float32)
    view = gpu.as_strided(x, (4, 3), (4, 4))
    np.testing.assert_array_equal(host(view[1]), [1, 2, 3])


# ----------------------------------------------------------------------------------------------
# DataLoader, fit/evaluate, checkpoints, the example script
# ----------------------------------------------------------------------------------------------
def _sample_dataset(n=200):
    from tinynet.data import ArrayDataset

    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, size=n))


@requires_cuda
def test_dataloader_on_cuda_equals_cpu():
    from tinynet.data import DataLoader

    data = _sample_dataset(100)
    gpu_loader = DataLoader(data, batch_size=32, shuffle=True, seed=3, device="cuda")
    cpu_loader = DataLoader(data, batch_size=32, shuffle=True, seed=3, device="cpu")
    assert len(gpu_loader) == len(cpu_loader) == 4
    for (xg, yg), (xc, yc) in zip(gpu_loader, cpu_loader, strict=True):
        assert B.device_of(xg) == B.device_of(yg) == "cuda"
        assert xg.dtype == np.float32 and xg.flags.c_contiguous and yg.dtype == np.int64
        assert_same(xg, xc, np.float32, "batch x")
        np.testing.assert_array_equal(host(yg), yc)


def _module_or_skip(name):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not written yet")
    return importlib.import_module(name)


@requires_cuda
def test_fit_and_evaluate_on_cuda():
    train = _module_or_skip("tinynet.train")
    from tinynet.data import DataLoader

    data = _sample_dataset(128)
    results = {}
    for device in ("cpu", "cuda"):
        tinynet.manual_seed(0)
        model = course_network(device=device)
        loader = DataLoader(data, batch_size=32, shuffle=True, seed=1, device=device)
        opt = tinynet.optim.SGD(model.parameters(), lr=0.01)
        train.fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False,
                  verbose=False)
        results[device] = train.evaluate(model, loader, nn.CrossEntropyLoss())
        assert model.device == device
    _assert_close_results(results["cuda"], results["cpu"])


def _assert_close_results(a, b):
    if isinstance(a, dict):
        for k in b:
            _assert_close_results(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        for x, y in zip(a, b, strict=True):
            _assert_close_results(x, y)
    elif isinstance(a, (int, float, np.floating)) or hasattr(a, "shape"):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-3, atol=1e-4)


@requires_cuda
@pytest.mark.parametrize("save_from, load_to", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_between_devices(tmp_path, save_from, load_to):
    _module_or_skip("tinynet.checkpoint")
    tinynet.manual_seed(0)
    model = course_network(device=save_from)
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _steps(model, opt, [_batch()], lambda a: B.to_device(a, save_from))
    path = tmp_path / "ckpt.npz"
    tinynet.save(path, model=model, optimizer=opt)

    tinynet.manual_seed(1)
    restored = course_network(device=load_to)
    opt2 = tinynet.optim.SGD(restored.parameters(), lr=0.05, momentum=0.9)
    tinynet.load(path, model=restored, optimizer=opt2)
    assert restored.device == load_to
    pairs = zip(restored.state_dict().items(), model.state_dict().items(), strict=True)
    for (k, a), (_, b) in pairs:
        assert B.device_of(a) == load_to, k
        np.testing.assert_array_equal(host(a), host(b), err_msg=k)
    for s in opt2.state.values():
        assert B.device_of(s["momentum_buffer"]) == load_to
    # training continues identically on the new device
    batches = [_batch(seed=9)]
    l1 = _steps(model, opt, batches, lambda a: B.to_device(a, save_from))
    l2 = _steps(restored, opt2, batches, lambda a: B.to_device(a, load_to))
    np.testing.assert_allclose(l2, l1, rtol=1e-4)


@requires_cuda
@pytest.mark.skipif(SIMULATED, reason="the example runs in a subprocess, which cannot see the "
                    "simulated device")
@pytest.mark.slow
def test_example_script_with_device_cuda(tmp_path):
    script = ROOT / "examples" / "train_fashion_mnist.py"
    if not script.exists():
        pytest.skip("examples/train_fashion_mnist.py is not written yet")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TINYNET_PROGRESS="0")
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, env=env, timeout=60).stdout
    args = [sys.executable, str(script), "--device", "cuda", "--epochs", "1"]
    if "--sample" in help_text:
        args.append("--sample")  # the small sample shipped with tinynet: no files needed
    if "--out" in help_text:
        args += ["--out", str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cuda" in (done.stdout + done.stderr).lower()
