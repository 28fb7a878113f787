"""The backend: which array library runs the math, and on which device.

tinynet's layer code never imports NumPy directly. It asks the backend for the array module
``xp`` that belongs to a device:

* ``'cpu'``  -> NumPy (always available)
* ``'cuda'`` -> CuPy  (optional: ``pip install "tinynet[gpu]"``, needs an NVIDIA GPU)

NumPy and CuPy share one API, so ``xp.matmul(a, b)`` is the same line on both devices. Where the
two libraries differ (strided views, moving arrays between devices, random numbers), this module
wraps the difference once, and everything else calls the wrapper.

The defaults: device ``'cpu'`` unless the environment variable ``TINYNET_DEVICE`` says otherwise
(explicit arguments and :func:`set_default_device` win), dtype float32 unless
:func:`set_default_dtype` says otherwise.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any

import numpy as np  # host-side only: this module is where NumPy and CuPy meet

DEVICES = ("cpu", "cuda")
float32 = np.float32
float64 = np.float64
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_default_device: str | None = None  # None: read TINYNET_DEVICE on first use
_default_dtype = np.dtype(np.float32)
_state = threading.local()


class DeviceError(RuntimeError):
    """A device is unknown or unavailable, or arrays on two devices were mixed."""


# ----------------------------------------------------------------------------------------------
# Device names
# ----------------------------------------------------------------------------------------------
def normalize_device(device: Any) -> str:
    """Turn ``'cpu'``, ``'cuda'``, ``'cuda:0'``, ``'CPU'`` into a canonical device name."""
    if device is None:
        return get_default_device()
    name = str(device).strip().lower()
    if name.startswith("cuda:"):
        if name[5:] not in ("0", ""):
            raise DeviceError(
                f"tinynet uses one GPU: got device {device!r}, use 'cuda' or 'cuda:0'"
            )
        name = "cuda"
    if name not in DEVICES:
        raise DeviceError(
            f"unknown device {device!r}: valid devices are {', '.join(repr(d) for d in DEVICES)}"
        )
    return name


def get_default_device() -> str:
    """The device new parameters and batches go to (``TINYNET_DEVICE`` or ``'cpu'``)."""
    global _default_device
    if _default_device is None:
        _default_device = normalize_device(os.environ.get("TINYNET_DEVICE", "cpu") or "cpu")
    return _default_device


def set_default_device(device: str) -> None:
    """Set the device for new parameters and batches; checks that the device is usable."""
    global _default_device
    name = normalize_device(device)
    get_backend(name)  # fail now, with the install hint, rather than at the first layer
    _default_device = name


# ----------------------------------------------------------------------------------------------
# Dtypes
# ----------------------------------------------------------------------------------------------
def normalize_dtype(dtype: Any) -> np.dtype:
    """float32 or float64 (or the strings 'float32'/'float64'); anything else: TypeError."""
    if dtype is None:
        return _default_dtype
    dt = np.dtype(dtype)
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"tinynet computes in float32 or float64, got dtype {dt}")
    return dt


def get_default_dtype() -> np.dtype:
    """The dtype of new parameters (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype: Any) -> None:
    """Set the dtype of new parameters: ``tinynet.float32`` (default) or ``tinynet.float64``."""
    global _default_dtype
    _default_dtype = normalize_dtype(dtype)


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
class Backend:
    """One device and its array module ``xp``.

    Attributes:
        device: ``'cpu'`` or ``'cuda'``.
        xp: the array module (``numpy`` or ``cupy``) that layer code calls.
    """

    def __init__(self, device: str, xp: Any) -> None:
        self.device = device
        self.xp = xp
        self._rng = None

    def __repr__(self) -> str:
        return f"Backend(device={self.device!r}, xp={self.xp.__name__})"

    # -- arrays ------------------------------------------------------------------------------
    def asarray(self, data: Any, dtype: Any = None) -> Any:
        """Put ``data`` (host or device array, list, number) on this device."""
        if self.device == "cpu":
            if _is_cupy_array(data):
                data = data.get()
            return np.asarray(data, dtype=dtype)
        return self.xp.asarray(data, dtype=dtype)

    def as_strided(self, x: Any, shape: tuple, strides: tuple) -> Any:
        """A strided view of ``x`` (no copy): the trick behind im2col and pooling windows."""
        if self.xp is np and x.flags.c_contiguous:
            # the same view through the ndarray constructor: 1 us instead of NumPy's helper's 8,
            # and it checks that the view stays inside x
            return np.ndarray(shape, x.dtype, x, 0, strides)
        return self.xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)

    def scatter_add(self, target: Any, indices: Any, values: Any) -> None:
        """``target[indices] += values`` in place, where repeated indices ADD up (a scatter).

        Plain ``target[idx] += v`` keeps only one of several writes to the same index; the
        unbuffered version is ``np.add.at`` on the CPU and ``cupyx.scatter_add`` on the GPU.
        """
        if self.device == "cuda":
            import cupyx

            cupyx.scatter_add(target, indices, values)
        else:
            self.xp.add.at(target, indices, values)

    def rng(self) -> Any:
        """This device's random generator (for dropout masks, shuffling on device, ...).

        CuPy's generator has fewer methods than NumPy's (no ``permutation``, ``choice``,
        ``shuffle``): call :meth:`random` and :meth:`permutation`, which work on both.
        """
        if self._rng is None:
            self._rng = self.make_rng(_seed_for(self.device))
        return self._rng

    def random(self, shape: Any, dtype: Any = None) -> Any:
        """Uniform numbers in [0, 1) of ``shape``, drawn on this device (e.g. dropout masks)."""
        return self.rng().random(shape, dtype=normalize_dtype(dtype))

    def permutation(self, n: int) -> Any:
        """A random order of ``0..n-1`` (int64) on this device, from this device's generator."""
        if self.device == "cpu":
            return self.rng().permutation(int(n))
        # CuPy's Generator has no permutation(): sorting n uniform keys gives a uniform shuffle
        return self.xp.argsort(self.rng().random(int(n), dtype=float64))

    def make_rng(self, seed: int | None) -> Any:
        """A new random generator on this device (NumPy's or CuPy's ``default_rng``)."""
        if self.device == "cpu":
            return np.random.default_rng(seed)
        return self.xp.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self._rng = self.make_rng(seed)

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on the CPU); needed for honest timing."""
        if self.device == "cuda":
            self.xp.cuda.get_current_stream().synchronize()


_backends: dict[str, Backend] = {}
_seed: int | None = None


def _seed_for(device: str) -> int | None:
    return None if _seed is None else _seed + (0 if device == "cpu" else 1)


def cuda_status() -> tuple[bool, str]:
    """Whether CuPy can be used, and if not, why (CuPy missing vs. no GPU visible)."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return False, (
            f"device 'cuda' needs CuPy, which could not be imported ({exc.__class__.__name__}: "
            f"{exc}). Install it with: pip install \"tinynet[gpu]\" (CUDA 12) or "
            "pip install \"tinynet[cuda13]\" (CUDA 13)"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, (
            f"CuPy {cupy.__version__} is installed but no GPU is visible ({exc}). "
            "Check the NVIDIA driver (nvidia-smi) or use device 'cpu'"
        )
    if count < 1:
        return False, (
            f"CuPy {cupy.__version__} is installed but no GPU is visible. "
            "Check the NVIDIA driver (nvidia-smi) or use device 'cpu'"
        )
    return True, f"CuPy {cupy.__version__}, {count} GPU(s)"


def cuda_is_available() -> bool:
    """True when CuPy is installed and sees a GPU."""
    return cuda_status()[0]


def get_backend(device: Any = None) -> Backend:
    """The backend of ``device`` (default: the default device). Raises DeviceError with a hint."""
    name = normalize_device(device)
    backend = _backends.get(name)
    if backend is None:
        if name == "cpu":
            backend = Backend("cpu", np)
        else:
            ok, why = cuda_status()
            if not ok:
                raise DeviceError(why)
            import cupy

            backend = Backend("cuda", cupy)
        _backends[name] = backend
    return backend


def _is_cupy_array(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


def device_of(x: Any) -> str:
    """``'cuda'`` for a CuPy array, ``'cpu'`` for anything else (NumPy arrays, numbers)."""
    return "cuda" if _is_cupy_array(x) else "cpu"


def backend_of(x: Any) -> Backend:
    """The backend owning array ``x``."""
    if type(x) is np.ndarray:  # the common case, asked dozens of times per step: one lookup
        backend = _backends.get("cpu")
        if backend is not None:
            return backend
    return get_backend(device_of(x))


def xp_of(x: Any) -> Any:
    """The array module (numpy or cupy) for array ``x``."""
    return backend_of(x).xp


def to_device(x: Any, device: Any) -> Any:
    """Copy array ``x`` to ``device`` (no copy when it is already there)."""
    name = normalize_device(device)
    if device_of(x) == name:
        return x
    return get_backend(name).asarray(x)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array on the host for ``x`` (copies from the GPU when needed)."""
    if _is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def check_same_device(where: str, x: Any, device: str) -> None:
    """Raise DeviceError (naming both devices) when ``x`` is not on ``device``; never copies."""
    got = device_of(x)
    if got != device:
        raise DeviceError(
            f"{where}: the input is on device '{got}' but the layer's weights are on '{device}'. "
            f"Move one of them: tinynet.to_device(x, '{device}') or model.to('{got}')"
        )


# ----------------------------------------------------------------------------------------------
# Random numbers
# ----------------------------------------------------------------------------------------------
_host_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every generator tinynet uses (initialisation, dropout, shuffling) on all devices."""
    global _host_rng, _seed
    seed = int(seed)
    _seed = seed
    _host_rng = np.random.default_rng(seed)
    for backend in _backends.values():
        backend.reseed(_seed_for(backend.device))


def host_rng() -> np.random.Generator:
    """The host generator behind parameter initialisation: the same seed gives the same weights on
    every device, because weights are drawn on the host and then moved."""
    return _host_rng


def get_rng_state() -> dict:
    """The state of every generator tinynet draws from, as JSON-friendly data (for checkpoints).

    ``{'host': ...}`` (initialisation, shuffling seeds) plus one entry per device generator in use
    (dropout masks, augmentation), so a resumed run draws exactly the numbers it would have drawn.
    """
    state = {"host": _host_rng.bit_generator.state}
    for name, backend in _backends.items():
        bit_generator = getattr(backend._rng, "bit_generator", None)
        device_state = getattr(bit_generator, "state", None)
        if isinstance(device_state, dict):
            state[name] = device_state
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`get_rng_state`."""
    if "host" not in state:  # a bare host state
        state = {"host": state}
    _host_rng.bit_generator.state = state["host"]
    for name, device_state in state.items():
        if name != "host":
            get_backend(name).rng().bit_generator.state = device_state


# ----------------------------------------------------------------------------------------------
# Gradient recording
# ----------------------------------------------------------------------------------------------
def is_grad_enabled() -> bool:
    """False inside ``with tinynet.no_grad():`` (forward passes then keep no cache for backward)."""
    return getattr(_state, "grad_enabled", True)


@contextmanager
def no_grad():
    """Run forward passes without keeping what backward needs: less memory, for evaluation."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous
