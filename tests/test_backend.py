"""The backend: device names, the 'cuda' error messages, seeding, the wrappers where NumPy and
CuPy differ, and the fast engine's CUDA kernels (tinynet/fast/cuda.py) checked against the
reference kernels.

Runs everywhere. What needs a real GPU lives in tests/test_devices.py (skipped without one);
here the fused CUDA kernels' C bodies are checked on the CPU by compiling them with the C compiler.
"""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import tinynet
import tinynet.functional as F
from tinynet import backend as B
from tinynet.fast import cuda
from tinynet.optim.sgd import sgd_update


# ----------------------------------------------------------------------------------------------
# Device names and defaults
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [("cpu", "cpu"), ("CPU", "cpu"), (" cuda ", "cuda"),
                                            ("cuda:0", "cuda"), ("cuda:", "cuda")])
def test_normalize_device(name, expected):
    assert B.normalize_device(name) == expected


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:1", ""])
def test_normalize_device_rejects_unknown(name):
    with pytest.raises(B.DeviceError, match="device"):
        B.normalize_device(name)


def test_default_device_from_environment(monkeypatch):
    monkeypatch.setattr(B, "_default_device", None)
    monkeypatch.setenv("TINYNET_DEVICE", "CPU")
    assert B.get_default_device() == "cpu"
    monkeypatch.setattr(B, "_default_device", None)
    monkeypatch.setenv("TINYNET_DEVICE", "nonsense")
    with pytest.raises(B.DeviceError, match="nonsense"):
        B.get_default_device()
    monkeypatch.setattr(B, "_default_device", None)


# ----------------------------------------------------------------------------------------------
# 'cuda' without CuPy / without a GPU: a clear error that says which and what to do
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_cached_cuda(monkeypatch):
    """Forget a cached 'cuda' backend so that get_backend('cuda') looks again."""
    monkeypatch.setattr(B, "_backends", {k: v for k, v in B._backends.items() if k == "cpu"})


def test_cuda_without_cupy_says_how_to_install(monkeypatch, no_cached_cuda):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    ok, why = B.cuda_status()
    assert not ok
    assert "needs CuPy" in why and 'pip install "tinynet[gpu]"' in why and "cuda13" in why
    assert not B.cuda_is_available()
    with pytest.raises(B.DeviceError, match=r"tinynet\[gpu\]"):
        B.get_backend("cuda")
    with pytest.raises(B.DeviceError, match="needs CuPy"):
        B.set_default_device("cuda")
    with pytest.raises(B.DeviceError, match="needs CuPy"):
        tinynet.nn.Linear(2, 3).to("cuda")
    with pytest.raises(B.DeviceError, match="needs CuPy"):
        tinynet.nn.Linear(2, 3, device="cuda")
    assert B.get_default_device() != "cuda"


def _fake_cupy(get_device_count):
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(__version__="99.0", cuda=types.SimpleNamespace(runtime=runtime))


def test_cuda_with_cupy_but_no_gpu_says_so(monkeypatch, no_cached_cuda):
    def no_driver():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(no_driver))
    ok, why = B.cuda_status()
    assert not ok
    assert "CuPy 99.0 is installed but no GPU is visible" in why and "nvidia-smi" in why
    with pytest.raises(B.DeviceError, match="installed but no GPU is visible"):
        B.get_backend("cuda")

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(lambda: 0))
    ok, why = B.cuda_status()
    assert not ok and "installed but no GPU is visible" in why


def test_real_cuda_status_is_consistent():
    """With the real environment: either a usable backend, or an error that names the cause."""
    ok, why = B.cuda_status()
    try:
        import cupy  # noqa: F401

        has_cupy = True
    except Exception:
        has_cupy = False
    if ok:
        assert B.get_backend("cuda").xp.__name__ == "cupy"
        return
    expected = "installed but no GPU is visible" if has_cupy else "needs CuPy"
    assert expected in why
    with pytest.raises(B.DeviceError, match=expected):
        B.get_backend("cuda")


def test_check_same_device_names_both_devices():
    fake_gpu_array = type("ndarray", (), {"__module__": "cupy"})()
    with pytest.raises(B.DeviceError) as info:
        B.check_same_device("Linear(2, 3)", fake_gpu_array, "cpu")
    msg = str(info.value)
    assert "Linear(2, 3)" in msg and "'cuda'" in msg and "'cpu'" in msg and "model.to" in msg
    B.check_same_device("Linear(2, 3)", np.zeros(2), "cpu")  # same device: no error


# ----------------------------------------------------------------------------------------------
# Seeding and random numbers
# ----------------------------------------------------------------------------------------------
def test_manual_seed_reseeds_every_backend(monkeypatch):
    """manual_seed re-seeds the host generator and every backend already created (also 'cuda')."""
    fake_cuda = B.Backend("cuda", np)
    fake_cuda.make_rng = lambda seed: np.random.default_rng(seed)
    monkeypatch.setitem(B._backends, "cuda", fake_cuda)
    tinynet.manual_seed(123)
    first = (B.host_rng().random(3), B.get_backend("cpu").random(3), fake_cuda.rng().random(3))
    tinynet.manual_seed(123)
    second = (B.host_rng().random(3), B.get_backend("cpu").random(3), fake_cuda.rng().random(3))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # the devices draw from different streams (seed + device offset)
    assert not np.array_equal(first[1], first[2])


def test_same_seed_same_weights():
    tinynet.manual_seed(7)
    a = tinynet.nn.Conv2d(1, 2, 3).weight.data
    tinynet.manual_seed(7)
    b = tinynet.nn.Conv2d(1, 2, 3).weight.data
    np.testing.assert_array_equal(a, b)


def test_random_and_permutation():
    backend = B.get_backend("cpu")
    tinynet.manual_seed(0)
    u = backend.random((4, 5), dtype="float32")
    assert u.shape == (4, 5) and u.dtype == np.float32 and (u >= 0).all() and (u < 1).all()
    perm = backend.permutation(10)
    assert sorted(perm.tolist()) == list(range(10))
    tinynet.manual_seed(0)
    backend.random((4, 5), dtype="float32")
    np.testing.assert_array_equal(backend.permutation(10), perm)


def test_rng_state_roundtrip():
    tinynet.manual_seed(3)
    state = B.get_rng_state()
    a = B.host_rng().random(4)
    B.set_rng_state(state)
    np.testing.assert_array_equal(B.host_rng().random(4), a)


# ----------------------------------------------------------------------------------------------
# Wrappers where NumPy and CuPy differ
# ----------------------------------------------------------------------------------------------
def test_scatter_add_adds_repeated_indices():
    backend = B.get_backend("cpu")
    target = np.zeros(4, dtype=np.float32)
    backend.scatter_add(target, np.array([0, 2, 2, 2]), np.array([1, 1, 2, 3], dtype=np.float32))
    np.testing.assert_array_equal(target, [1, 0, 6, 0])


def test_as_strided_is_a_view():
    backend = B.get_backend("cpu")
    x = np.arange(6, dtype=np.float32)
    s = x.strides[0]
    view = backend.as_strided(x, shape=(4, 3), strides=(s, s))  # sliding windows of length 3
    np.testing.assert_array_equal(view[1], [1, 2, 3])
    x[2] = 100
    assert view[0, 2] == 100 and view[2, 0] == 100


def test_to_device_and_to_numpy_on_cpu():
    x = np.arange(3.0)
    assert B.to_device(x, "cpu") is x
    assert isinstance(B.to_numpy(x), np.ndarray)
    np.testing.assert_array_equal(B.to_numpy([1, 2]), [1, 2])
    assert B.get_backend("cpu").asarray([1, 2], dtype=np.float32).dtype == np.float32


def test_synchronize_is_a_noop_on_cpu():
    assert B.get_backend("cpu").synchronize() is None


# ----------------------------------------------------------------------------------------------
# The reference SGD rule and max-pool routing against the hand-written math
# ----------------------------------------------------------------------------------------------
SGD_SETTINGS = [
    dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.0, dampening=0.0, weight_decay=0.01, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True),
]


def _sgd_by_hand(w, grads, lr, momentum, dampening, weight_decay, nesterov):
    """PyTorch's SGD rule in float64, one line per formula of tinynet.optim.SGD's docstring."""
    w = w.astype(np.float64)
    b = None
    for g in grads:
        g = g.astype(np.float64) + weight_decay * w
        if momentum:
            b = g.copy() if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        w = w - lr * g
    return w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("settings", SGD_SETTINGS)
def test_sgd_update_matches_the_formula(settings, dtype):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4)).astype(dtype)
    grads = [rng.standard_normal((3, 4)).astype(dtype) for _ in range(3)]
    w, buf = w0.copy(), None
    for g in grads:
        g_before = g.copy()
        buf = sgd_update(w, g, buf, lr=0.1, **settings)
        np.testing.assert_array_equal(g, g_before)  # the gradient is not modified
        assert w.dtype == dtype and (buf is None or buf.dtype == dtype)
    assert (buf is None) == (settings["momentum"] == 0)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(w, _sgd_by_hand(w0, grads, 0.1, **settings), rtol=tol, atol=tol)


@pytest.mark.parametrize("settings", SGD_SETTINGS)
def test_sgd_update_equals_optim_sgd(settings):
    """The reference update rule is exactly what tinynet.optim.SGD.step computes."""
    tinynet.manual_seed(0)
    layer = tinynet.nn.Linear(4, 3)
    w, b = layer.weight.data.copy(), layer.bias.data.copy()
    opt = tinynet.optim.SGD(layer.parameters(), lr=0.05, **settings)
    bufs = [None, None]
    rng = np.random.default_rng(1)
    for _ in range(3):
        gw, gb = (rng.standard_normal(a.shape).astype(np.float32) for a in (w, b))
        layer.weight.grad, layer.bias.grad = gw.copy(), gb.copy()
        opt.step()
        bufs[0] = sgd_update(w, gw, bufs[0], 0.05, **settings)
        bufs[1] = sgd_update(b, gb, bufs[1], 0.05, **settings)
    np.testing.assert_array_equal(layer.weight.data, w)
    np.testing.assert_array_equal(layer.bias.data, b)


POOL_CASES = [  # kernel, stride, padding, (H, W)
    ((2, 2), (2, 2), (0, 0), (8, 8)),
    ((3, 3), (1, 1), (1, 1), (6, 7)),  # overlapping windows: gradients add up
    ((3, 2), (2, 1), (1, 0), (9, 5)),
    ((2, 2), (3, 3), (0, 0), (8, 8)),  # gaps between windows
]


@pytest.mark.parametrize("kernel, stride, padding, hw", POOL_CASES)
def test_maxpool2d_route_matches_a_scatter(kernel, stride, padding, hw):
    """The reference routing by strided slices equals the obvious scatter ``dx[winner] += dy``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3) + hw)
    y, cache = F.maxpool2d_forward(x, kernel, stride, padding)
    dy = rng.standard_normal(y.shape)
    dx = F.maxpool2d_backward(dy, cache)
    # reference: find each window's winner in the padded input, scatter with np.add.at
    (_, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, i, j = np.indices(y.shape)
    u, v = np.divmod(cache.argmax, kw)
    rows, cols = i * sh + u - ph, j * sw + v - pw
    expected = np.zeros_like(x)
    np.add.at(expected, (n, c, rows, cols), dy)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# The CUDA kernels' C bodies, compiled for the CPU: same index math, same result as generic
# ----------------------------------------------------------------------------------------------
_C_TYPES = {"T": "double", "float64": "double", "int64": "long long", "int32": "int", "bool": "int"}


def _c_function(name: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """Wrap an ElementwiseKernel body in a C loop over i: raw params are pointers, per-element
    params are read from / written back to pointer[i], scalars are values."""
    in_params, out_params, body = cuda._KERNEL_SOURCES[name]
    params, pre, post = [], [], []
    specs = []
    for spec, is_out in [(p, False) for p in in_params.split(",")] + [
        (p, True) for p in out_params.split(",")
    ]:
        words = spec.split()
        raw, ctype, pname = "raw" in words, _C_TYPES[words[-2]], words[-1]
        elementwise = not raw and words[-2] == "T"
        specs.append((pname, words[-2], raw or elementwise))
        if raw:
            params.append(f"const {ctype} *{pname}")
        elif elementwise:
            params.append(f"{ctype} *_p_{pname}")
            pre.append(f"{ctype} {pname} = _p_{pname}[i];")
            if is_out:
                post.append(f"_p_{pname}[i] = {pname};")
        else:
            params.append(f"{ctype} {pname}")
    src = (
        f"void {name}({', '.join(params)}, long long _size) {{\n"
        "  for (ptrdiff_t i = 0; i < _size; ++i) {\n"
        f"    {' '.join(pre)}\n    {{ {body} }}\n    {' '.join(post)}\n  }}\n}}\n"
    )
    return src, specs


@pytest.fixture(scope="module")
def c_kernels(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to check the CUDA kernel bodies on the CPU")
    src = "#include <stddef.h>\n#define min(a, b) ((a) < (b) ? (a) : (b))\ntypedef double T;\n"
    specs = {}
    for name in cuda._KERNEL_SOURCES:
        body, specs[name] = _c_function(name)
        src += body
    folder = tmp_path_factory.mktemp("kernels")
    (folder / "k.c").write_text(src)
    lib_path = folder / "k.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(lib_path), str(folder / "k.c")],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))

    def call(name, *args, size):
        converted = []
        for (pname, kind, is_array), a in zip(specs[name], args, strict=True):
            if is_array:
                assert a.flags.c_contiguous and a.dtype in (np.float64, np.int64), pname
                converted.append(a.ctypes.data_as(ctypes.c_void_p))
            elif kind in ("float64", "T"):
                converted.append(ctypes.c_double(a))
            elif kind == "int64":
                converted.append(ctypes.c_longlong(a))
            else:
                converted.append(ctypes.c_int(int(a)))
        getattr(lib, name)(*converted, ctypes.c_longlong(size))

    return call


def test_c_kernel_maxpool_route(c_kernels):
    rng = np.random.default_rng(0)
    checked = 0
    for kernel, stride, padding, hw in itertools.product(
        [(1, 1), (2, 2), (3, 2), (5, 5)], [(1, 1), (2, 2), (1, 3), (3, 2)],
        [(0, 0), (1, 0), (1, 1)], [(7, 8), (12, 12)],
    ):
        (kh, kw), (ph, pw), (H, W) = kernel, padding, hw
        if 2 * ph > kh or 2 * pw > kw:
            continue
        x = rng.standard_normal((2, 3, H, W))
        y, cache = F.maxpool2d_forward(x, kernel, stride, padding)
        ho, wo = y.shape[2:]
        geometry = (ho, wo, kh, kw, stride[0], stride[1], ph, pw)
        dy = rng.standard_normal(y.shape)
        out = np.empty_like(x)
        c_kernels("maxpool_route", dy, np.ascontiguousarray(cache.argmax, dtype=np.int64), H, W,
                  *geometry, out, size=out.size)
        expected = F.maxpool2d_backward(dy, cache)  # the reference
        np.testing.assert_array_equal(out, expected)  # same terms added in the same order
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("settings", SGD_SETTINGS)
def test_c_kernel_sgd(c_kernels, settings):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(3)]
    w_ref, buf_ref = w0.copy(), None
    w, buf = w0.copy(), np.empty(50)
    for t, g in enumerate(grads):
        buf_ref = sgd_update(w_ref, g, buf_ref, 0.1, **settings)
        if settings["momentum"] == 0:
            c_kernels("sgd", g, 0.1, settings["weight_decay"], w, size=50)
        else:
            c_kernels("sgd_momentum", g, 0.1, settings["momentum"], settings["dampening"],
                      settings["weight_decay"], settings["nesterov"], t == 0, w, buf, size=50)
            np.testing.assert_allclose(buf, buf_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(w, w_ref, rtol=1e-14, atol=1e-15)
