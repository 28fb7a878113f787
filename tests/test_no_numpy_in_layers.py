"""Guards that keep the layer code device-neutral, so that it runs unchanged on CuPy.

The rule: code that touches device arrays takes its array module from the backend
(``backend_of(x).xp``) and never calls NumPy itself. On a GPU, ``np.zeros(shape)`` makes an array in
host memory that cannot be mixed with the device arrays, ``np.asarray(gpu_array)`` fails, and
``np.random`` draws on the host. Such a slip passes every CPU test, because there xp IS numpy.
Two guards catch it without a GPU:

1. A static check (AST): modules under ``tinynet/functional``, ``tinynet/nn`` and ``tinynet/optim``
   never import NumPy; elsewhere in ``tinynet/`` only the host-side modules listed in
   ``HOST_MODULES`` (file parsing, plotting, checkpoints, ...) may.
2. A runtime check: a stand-in device, "strict", whose arrays (:class:`StrictArray`) behave like
   NumPy arrays but raise as soon as a NumPy function is called on them directly instead of through
   the backend's ``xp``, or as soon as a plain host array is mixed into their arithmetic, which is
   what CuPy does with host arrays. Every layer, the loss and SGD run forward and backward on it.

What the strict device does NOT catch: NumPy *ufuncs* called directly (``np.exp(x)``), because
the array cannot tell them apart from operators (``x * y`` calls ``np.multiply``); CuPy accepts
those too. The static check covers them inside functional/nn/optim.
"""

from __future__ import annotations

import ast
import pathlib
import threading
import types
from contextlib import contextmanager

import numpy as np
import pytest

import tinynet
import tinynet.functional as F
import tinynet.nn as nn
from tinynet import backend as B
from tinynet.optim.sgd import sgd_update

PACKAGE = pathlib.Path(tinynet.__file__).resolve().parent

# Packages whose every module handles device arrays: no NumPy import at all.
DEVICE_PACKAGES = ("functional", "nn", "optim", "fast")

# Host-side modules that may import NumPy, with the reason. Everything else must not.
HOST_MODULES = {
    "backend.py": "where NumPy and CuPy meet: host generator, dtypes, moving arrays",
    "gradcheck.py": "finite-difference bookkeeping and error reports on the host",
    "checkpoint.py": "reads and writes .npz files on the host",
    "plot.py": "matplotlib takes host arrays",
    "train.py": "host-side bookkeeping of losses and accuracies",
    "data/fashion_mnist.py": "parses the IDX files into host arrays",
    "data/loader.py": "indices, shuffling and the uint8 datasets live on the host",
    "data/__init__.py": "re-exports the data modules",
    "lab/explain.py": "the worked entries are recomputed and printed from host copies",
}


def numpy_imports(source: str) -> list[int]:
    """Line numbers of every ``import numpy...`` / ``from numpy... import`` in ``source``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(a.name == "numpy" or a.name.startswith("numpy.") for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "numpy" or node.module.startswith("numpy."):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and getattr(node.args[0], "value", None) == "numpy":
                lines.append(node.lineno)
    return lines


def test_numpy_imports_finds_every_form():
    assert numpy_imports("import numpy as np\nimport numpy.linalg\nx = 1\n") == [1, 2]
    assert numpy_imports("def f():\n    from numpy import sum\n    return sum\n") == [2]
    assert numpy_imports("np = __import__('numpy')\n") == [1]
    source = "import numpyro\nfrom .numpy_like import x\nfrom ..backend import B\n"
    assert numpy_imports(source) == []


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def test_device_packages_never_import_numpy():
    offenders = []
    for rel, path in _modules():
        if rel.split("/")[0] in DEVICE_PACKAGES:
            for line in numpy_imports(path.read_text(encoding="utf-8")):
                offenders.append(f"tinynet/{rel}:{line}")
    assert not offenders, (
        "layer/optimizer code must take its array module from the backend "
        "(xp = tinynet.backend.backend_of(x).xp), not import NumPy, or it breaks on CuPy: "
        + ", ".join(offenders)
    )


def test_only_host_modules_import_numpy():
    offenders = []
    for rel, path in _modules():
        if rel not in HOST_MODULES and numpy_imports(path.read_text(encoding="utf-8")):
            offenders.append(f"tinynet/{rel}")
    assert not offenders, (
        f"{offenders} import NumPy. Device code must use the backend's xp; a module that only "
        "handles host data (files, plots, printing) goes into HOST_MODULES with its reason"
    )


def test_the_device_packages_exist():
    """The guard above would pass vacuously if the packages moved."""
    for package in DEVICE_PACKAGES:
        assert len(list((PACKAGE / package).glob("*.py"))) >= 2, package


# ----------------------------------------------------------------------------------------------
# The strict stand-in device
# ----------------------------------------------------------------------------------------------
class StrictNumpyError(AssertionError):
    """NumPy was used on a device array directly (this would break or copy on CuPy)."""


_local = threading.local()


def _inside_xp() -> bool:
    return getattr(_local, "depth", 0) > 0


@contextmanager
def _through_xp():
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def _is_host_array(a, cls=None) -> bool:
    return isinstance(a, np.ndarray) and not isinstance(a, cls or StrictArray)


def _wrap(result, cls=None):
    """Results are device arrays, like CuPy's: reductions give 0-d arrays, not NumPy scalars."""
    cls = cls or StrictArray
    if isinstance(result, cls):
        return result
    if isinstance(result, np.ndarray):
        return result.view(cls)
    if isinstance(result, np.generic):
        return np.asarray(result).view(cls)
    if isinstance(result, tuple):
        return tuple(_wrap(r, cls) for r in result)
    return result


def _base(a):
    return a.view(np.ndarray) if isinstance(a, StrictArray) else a


class StrictArray(np.ndarray):
    """A NumPy array playing a device array: operators and methods work; calling a NumPy function
    on it directly (not via the backend's xp) or mixing a host array into it raises."""

    def __array_function__(self, func, types, args, kwargs):
        if not _inside_xp():
            raise StrictNumpyError(
                f"numpy.{func.__name__} was called directly on a device array; use the backend's "
                f"xp (xp = tinynet.backend.backend_of(x).xp; xp.{func.__name__}(...))"
            )
        return _wrap(super().__array_function__(func, types, args, kwargs), type(self))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        if not _inside_xp():
            host = [a for a in inputs + tuple(out) if _is_host_array(a, type(self))]
            if host:
                raise StrictNumpyError(
                    f"{ufunc.__name__}: a host NumPy array of shape {host[0].shape} was mixed "
                    "with a device array (CuPy raises TypeError here); create it with xp or move "
                    "it with backend.asarray"
                )
        inputs = tuple(_base(a) for a in inputs)
        if out:
            kwargs["out"] = tuple(_base(a) for a in out)
        with _through_xp():
            result = getattr(ufunc, method)(*inputs, **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        return _wrap(result, type(self))

    def __getitem__(self, key):
        return _wrap(super().__getitem__(key), type(self))

    def get(self) -> np.ndarray:
        """Copy to the host, as ``cupy.ndarray.get()`` does."""
        return np.array(self.view(np.ndarray))


_HOST_INPUTS_OK = {"asarray", "array", "asanyarray"}  # the ways to move host data to a device


def _check_no_host_arrays(name, args, kwargs, cls):
    if name in _HOST_INPUTS_OK:
        return
    for a in list(args) + list(kwargs.values()):
        items = a if isinstance(a, (list, tuple)) else (a,)
        for item in items:
            if _is_host_array(item, cls):
                raise StrictNumpyError(
                    f"xp.{name} got a host NumPy array of shape {item.shape} (CuPy raises here); "
                    "create it with xp or move it with backend.asarray"
                )


def _strict_call(fn, name, cls):
    def call(*args, **kwargs):
        _check_no_host_arrays(name, args, kwargs, cls)
        with _through_xp():
            return _wrap(fn(*args, **kwargs), cls)

    call.__name__ = name
    return call


class _XpProxy:
    """``xp`` of the strict device: NumPy's functions, results turned into ``cls`` arrays."""

    def __init__(self, target, cls=None) -> None:
        self._target = target
        self._cls = cls or StrictArray

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if isinstance(attr, types.ModuleType):
            return _XpProxy(attr, self._cls)
        if isinstance(attr, type):  # dtypes such as xp.float32, xp.uint8
            return attr
        if isinstance(attr, np.ufunc):
            return _UfuncProxy(attr, self._cls)
        if callable(attr):
            return _strict_call(attr, name, self._cls)
        return attr


class _UfuncProxy(_XpProxy):
    def __call__(self, *args, **kwargs):
        return _strict_call(self._target, self._target.__name__, self._cls)(*args, **kwargs)


class StrictBackend(B.Backend):
    """The 'cpu' backend with the strict xp (installed in place of the real one by a fixture).

    ``StrictBackend("cuda", SimulatedCudaArray)`` plays a GPU (see tests/test_devices.py).
    """

    def __init__(self, device: str = "cpu", cls: type | None = None) -> None:
        self.array_type = cls or StrictArray
        super().__init__(device, _XpProxy(np, self.array_type))

    def asarray(self, data, dtype=None):
        if isinstance(data, self.array_type):
            return data if dtype is None else data.astype(dtype, copy=False)
        if isinstance(data, StrictArray):  # another (simulated) device: copy through the host
            data = data.get()
        return self.xp.asarray(data, dtype=dtype)

    def make_rng(self, seed):
        return _XpProxy(np.random.default_rng(seed), self.array_type)

    def scatter_add(self, target, indices, values) -> None:
        self.xp.add.at(target, indices, values)  # cupyx.scatter_add needs real CuPy arrays

    def synchronize(self) -> None:
        pass


def _cupy_names() -> set | None:
    try:
        import cupy
    except Exception:
        return None
    return set(dir(cupy))


class SimulatedCudaArray(StrictArray):
    """A strict array that tinynet.backend takes for a CuPy array (its module starts with cupy).

    It plays CuPy, not the style rule: a NumPy function called on it works when CuPy has a
    function of that name (CuPy's ``__array_function__`` forwards such calls), as host-side
    helpers such as gradcheck may rely on; mixing in host arrays still raises.
    """

    _cupy = _cupy_names()

    def __array_function__(self, func, types, args, kwargs):
        if self._cupy is not None and func.__name__ not in self._cupy:
            raise TypeError(f"CuPy has no {func.__name__}: numpy.{func.__name__} fails on it")
        with _through_xp():
            return _wrap(np.ndarray.__array_function__(self, func, types, args, kwargs),
                         type(self))


SimulatedCudaArray.__module__ = "cupy_simulated_by_tinynet_tests"


@contextmanager
def simulated_cuda_device():
    """A stand-in 'cuda' device (NumPy arrays that tinynet takes for CuPy's and that raise as CuPy
    would), with the fast engine's CUDA kernels (which need real CuPy) set aside meanwhile."""
    from tinynet import kernels

    saved_backend = B._backends.get("cuda")
    B._backends["cuda"] = StrictBackend("cuda", SimulatedCudaArray)
    fast_cuda = {key: fn for key, fn in kernels._fast.items() if key[1] == "cuda"}
    for key in fast_cuda:
        del kernels._fast[key]
    try:
        yield "cuda"
    finally:
        kernels._fast.update(fast_cuda)
        if saved_backend is None:
            B._backends.pop("cuda", None)
        else:
            B._backends["cuda"] = saved_backend


@pytest.fixture(params=["fast", "reference"])
def strict(monkeypatch, request):
    """Every backend lookup for 'cpu' now returns the strict backend; each test runs with the
    fast engine's kernels and with the reference kernels alone."""
    from tinynet import kernels

    backend = StrictBackend()
    monkeypatch.setitem(B._backends, "cpu", backend)
    monkeypatch.setattr(kernels, "_mode", request.param)
    return backend


# -- the guard itself works ----------------------------------------------------------------------
def good_layer(x):
    xp = B.backend_of(x).xp
    return xp.maximum(x, 0).sum(axis=1) + xp.zeros(x.shape[0], dtype=x.dtype)


def bad_layer_numpy_function(x):
    return np.sum(x, axis=1)  # the injected slip


def bad_layer_host_array(x):
    return x.sum(axis=1) + np.zeros(x.shape[0], dtype=x.dtype)  # a host array mixed in


def test_strict_accepts_backend_code(strict):
    x = strict.asarray([[1.0, -2.0], [3.0, 4.0]], dtype="float32")
    y = good_layer(x)
    assert isinstance(y, StrictArray)
    np.testing.assert_array_equal(y.get(), [1.0, 7.0])
    assert isinstance(x.sum(), StrictArray) and float(x.sum()) == 6.0  # 0-d, like CuPy


@pytest.mark.parametrize("bad", [bad_layer_numpy_function, bad_layer_host_array])
def test_strict_catches_direct_numpy(strict, bad):
    x = strict.asarray(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(StrictNumpyError):
        bad(x)
    # the same functions pass silently on plain NumPy: that is why the guard is needed
    bad(np.ones((2, 3), dtype=np.float32))


def test_strict_catches_numpy_injected_into_a_real_layer(strict, monkeypatch):
    def relu_backward_with_numpy(dy, mask):
        return np.where(mask, dy, 0)  # a plausible slip in tinynet/functional/activation.py

    monkeypatch.setattr(F, "relu_backward", relu_backward_with_numpy)
    x = strict.asarray(np.random.default_rng(0).standard_normal((2, 3)), dtype="float32")
    layer = nn.ReLU()
    with tinynet.use_reference():  # (the fast engine's ReLU would not run the patched kernel)
        y = layer(x)
        with pytest.raises(StrictNumpyError, match="numpy.where"):
            layer.backward(y)


# -- every layer, the loss and SGD run clean on the strict device --------------------------------
def _course_network():
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        nn.Conv2d(6, 12, kernel_size=5, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=1, padding=1),
        nn.Flatten(),
        nn.Linear(12 * 3 * 3, 60), nn.ReLU(), nn.Linear(60, 10),
    )


def _train_steps(device_asarray, steps=2):
    """Forward, loss, backward and an SGD step (momentum, weight decay, Nesterov) on a batch."""
    tinynet.manual_seed(0)
    model = _course_network()
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3,
                            nesterov=True)
    rng = np.random.default_rng(0)
    x = device_asarray(rng.standard_normal((4, 1, 14, 14)), "float32")
    y = device_asarray(rng.integers(0, 10, size=4), "int64")
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        dx = model.backward(loss_fn.backward())
        opt.step()
        losses.append(loss)
    return model, opt, losses, dx


def test_training_step_runs_on_the_strict_device(strict):
    model, opt, losses, dx = _train_steps(strict.asarray)
    # nothing fell back to host arrays: weights, gradients, momentum, loss and dx stay "on device"
    for name, p in model.named_parameters():
        assert isinstance(p.data, StrictArray) and isinstance(p.grad, StrictArray), name
    for state in opt.state.values():
        assert isinstance(state["momentum_buffer"], StrictArray)
    assert all(isinstance(v, StrictArray) and v.ndim == 0 for v in losses)
    assert isinstance(dx, StrictArray) and dx.shape == (4, 1, 14, 14)
    strict_weights = {k: v.get() for k, v in model.state_dict().items()}
    strict_losses = [float(v) for v in losses]

    B._backends["cpu"] = B.Backend("cpu", np)  # the same run on plain NumPy gives the same numbers
    model, _, losses, _ = _train_steps(lambda a, dt: np.asarray(a, dtype=dt))
    assert strict_losses == [float(v) for v in losses]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(strict_weights[k], v)


def test_no_grad_evaluation_on_the_strict_device(strict):
    model, _, _, _ = _train_steps(strict.asarray, steps=1)
    x = strict.asarray(np.zeros((3, 1, 14, 14)), "float32")
    with tinynet.no_grad():
        logits = model(x)
    assert isinstance(logits, StrictArray)
    pred = logits.argmax(axis=1)
    assert isinstance(pred, StrictArray) and pred.shape == (3,)


@pytest.mark.parametrize("kernel, stride, padding",
                         [(2, 2, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 0))])
def test_pooling_and_conv_kernels_on_the_strict_device(strict, kernel, stride, padding):
    rng = np.random.default_rng(1)
    x = strict.asarray(rng.standard_normal((2, 3, 7, 8)), "float64")
    w = strict.asarray(rng.standard_normal((4, 3, 3, 3)), "float64")
    y, cache = F.maxpool2d_forward(x, kernel, stride, padding)
    dx = F.maxpool2d_backward(strict.asarray(rng.standard_normal(y.shape)), cache)
    assert isinstance(y, StrictArray) and isinstance(dx, StrictArray)
    y, cache = F.conv2d_forward(x, w, strict.asarray(np.zeros(4)), stride, padding)
    dx, dw, db = F.conv2d_backward(strict.asarray(rng.standard_normal(y.shape)), cache)
    assert all(isinstance(a, StrictArray) for a in (y, dx, dw, db))


def test_backend_kernels_on_the_strict_device(strict):
    rng = np.random.default_rng(2)
    w = strict.asarray(rng.standard_normal(5), "float32")
    g = strict.asarray(rng.standard_normal(5), "float32")
    buf = sgd_update(w, g, None, 0.1, momentum=0.9, weight_decay=0.1)
    buf = sgd_update(w, g, buf, 0.1, momentum=0.9, dampening=0.5, nesterov=False)
    assert isinstance(buf, StrictArray) and isinstance(w, StrictArray)
    target = strict.asarray(np.zeros(3), "float32")
    strict.scatter_add(target, strict.asarray([0, 0, 2]), strict.asarray([1, 2, 3], "float32"))
    np.testing.assert_array_equal(target.get(), [3, 0, 3])
    assert isinstance(strict.permutation(6), StrictArray)
    assert isinstance(strict.random((2, 2), "float32"), StrictArray)


def test_module_state_dict_roundtrip_on_the_strict_device(strict):
    tinynet.manual_seed(0)
    model = _course_network()
    other = _course_network()
    other.load_state_dict(model.state_dict())
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert isinstance(b, StrictArray), k
        np.testing.assert_array_equal(a.get(), b.get())


def test_gradcheck_on_the_strict_device(strict):
    x = strict.asarray(np.random.default_rng(0).standard_normal((2, 3)), "float64")
    assert tinynet.gradcheck(nn.Linear(3, 2, dtype="float64"), x)
