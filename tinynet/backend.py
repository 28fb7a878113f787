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

    # -- hot spots: one fused GPU kernel each, the generic xp code everywhere else -------------
    # Each method below has a generic version written once against xp (the reference, and what
    # runs on the CPU) and, on 'cuda', one fused CuPy kernel doing the same math in a single
    # launch. A GPU finishes a small elementwise step in microseconds, so what the generic code
    # pays there is the number of kernel launches and temporary arrays; fusing removes both.
    # Set ``backend.fused = False`` to run the generic code on the GPU too (the tests compare).
    # Callers: optim.SGD.step and functional.maxpool2d_backward, on 'cuda' (``use_fused()``).
    fused = True

    def use_fused(self) -> bool:
        """True on 'cuda' with ``fused`` on: callers then take the one-kernel path."""
        return self.device == "cuda" and self.fused

    def sgd_update(self, param: Any, grad: Any, buf: Any, lr: float, momentum: float = 0.0,
                   dampening: float = 0.0, weight_decay: float = 0.0,
                   nesterov: bool = False) -> Any:
        """One SGD step for one parameter, in place (PyTorch's rule, as :class:`tinynet.optim.SGD`).

        Args:
            param: the weights, updated in place.
            grad: dL/dparam (not modified).
            buf: the momentum buffer from the previous step, or None at the first step.
            lr, momentum, dampening, weight_decay, nesterov: the hyperparameters (Python numbers).

        Returns:
            The momentum buffer to keep for the next step (None when ``momentum == 0``).

        On the CPU this is four or five array operations; on 'cuda' one fused kernel that reads
        param, grad and buf once and writes param and buf once.
        """
        lr, momentum, dampening, weight_decay = (float(v) for v in (lr, momentum, dampening,
                                                                     weight_decay))
        if not self.use_fused():
            return sgd_update_generic(param, grad, buf, lr, momentum, dampening, weight_decay,
                                      nesterov)
        k = _cuda_kernels()
        if momentum == 0:
            k["sgd"](grad, lr, weight_decay, param)
            return None
        first = buf is None
        if first:
            buf = self.xp.empty_like(param)
        k["sgd_momentum"](grad, lr, momentum, dampening, weight_decay, bool(nesterov), first,
                          param, buf)
        return buf

    def maxpool2d_route(self, dy: Any, argmax: Any, x_shape: tuple, kernel: tuple, stride: tuple,
                        padding: tuple) -> Any:
        """Max-pool backward: send each window's dL/dy to the input that won the window.

        Args:
            dy: dL/dy, (N, C, H_out, W_out).
            argmax: (N, C, H_out, W_out), the winner's flat index ``u*kw + v`` in its window.
            x_shape: (N, C, H, W); kernel, stride, padding: pairs (height, width).

        Returns:
            dx of shape (N, C, H, W). Overlapping windows (stride < kernel) add up.

        Generic: kh*kw strided adds. On 'cuda': one kernel, one thread per input pixel, which
        gathers from the (at most ceil(kh/sh) * ceil(kw/sw)) windows covering it.
        """
        if not self.use_fused():
            return maxpool2d_route_generic(dy, argmax, x_shape, kernel, stride, padding)
        N, C, H, W = x_shape
        ho, wo = dy.shape[2:]
        dx = self.xp.empty((N, C, H, W), dtype=dy.dtype)
        _cuda_kernels()["maxpool_route"](
            self.xp.ascontiguousarray(dy), self.xp.ascontiguousarray(argmax, dtype=np.int64),
            H, W, ho, wo, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], dx,
        )
        return dx


# ----------------------------------------------------------------------------------------------
# The generic versions of the fused kernels (the oracle for the GPU kernels; the CPU path)
# ----------------------------------------------------------------------------------------------
def sgd_update_generic(param: Any, grad: Any, buf: Any, lr: float, momentum: float = 0.0,
                       dampening: float = 0.0, weight_decay: float = 0.0,
                       nesterov: bool = False) -> Any:
    """:meth:`Backend.sgd_update` written with array operations (any backend)."""
    g = grad
    if weight_decay != 0:
        g = g + weight_decay * param  # L2 penalty: d/dw (wd/2 * |w|^2) = wd * w
    if momentum != 0:
        if buf is None:
            buf = g.copy()  # b_1 = g_1
        else:
            buf *= momentum  # b_t = momentum * b_{t-1} + (1 - dampening) * g_t
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    else:
        buf = None
    param -= lr * g  # w <- w - lr * g
    return buf


def maxpool2d_route_generic(dy: Any, argmax: Any, x_shape: tuple, kernel: tuple, stride: tuple,
                            padding: tuple) -> Any:
    """:meth:`Backend.maxpool2d_route` written with array operations (any backend)."""
    xp = backend_of(dy).xp
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = dy.shape[2:]
    dx_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for u in range(kh):
        for v in range(kw):
            # the inputs at kernel offset (u, v) of every window form one strided slice
            dx_pad[:, :, u : u + sh * ho : sh, v : v + sw * wo : sw] += dy * (argmax == u * kw + v)
    dx = dx_pad[:, :, ph : ph + H, pw : pw + W]
    return xp.ascontiguousarray(dx) if (ph or pw) else dx


# ----------------------------------------------------------------------------------------------
# The fused CuPy kernels (compiled on first use; the C body is the same math as the generic code)
# ----------------------------------------------------------------------------------------------
# For the pixel at padded row hp, the windows covering it are those rows i with
# i*s <= hp < i*s + k, i.e. i from (hp < k ? 0 : (hp - k) / s + 1) to min(hp / s, H_out - 1).
# Looping u = hp - i*s upward and v likewise adds the terms in the generic code's order.
_GATHER_WINDOWS = """
    const ptrdiff_t w = i % W;
    const ptrdiff_t h = (i / W) % H;
    const int hp = (int)h + ph, wp = (int)w + pw;      // position in the padded input
    const int i_lo = hp < kh ? 0 : (hp - kh) / sh + 1;
    const int i_hi = min(hp / sh, Ho - 1);
    const int j_lo = wp < kw ? 0 : (wp - kw) / sw + 1;
    const int j_hi = min(wp / sw, Wo - 1);
    T acc = 0;
    for (int oi = i_hi; oi >= i_lo; --oi) {
        const int u = hp - oi * sh;
        for (int oj = j_hi; oj >= j_lo; --oj) {
            const int v = wp - oj * sw;
            ADD_TERM
        }
    }
    dx = acc;
"""

_KERNEL_SOURCES = {
    # name: (in_params, out_params, body)
    "sgd": (
        "T grad, float64 lr, float64 wd",
        "T w",
        """
        T g = grad;
        if (wd != 0) g = g + (T)wd * w;
        w = w - (T)lr * g;
        """,
    ),
    "sgd_momentum": (
        "T grad, float64 lr, float64 momentum, float64 dampening, float64 wd, bool nesterov, "
        "bool first",
        "T w, T buf",
        """
        T g = grad;
        if (wd != 0) g = g + (T)wd * w;
        T b = first ? g : (T)momentum * buf + (T)(1.0 - dampening) * g;
        buf = b;
        g = nesterov ? g + (T)momentum * b : b;
        w = w - (T)lr * g;
        """,
    ),
    "maxpool_route": (
        "raw T dy, raw int64 argmax, int32 H, int32 W, int32 Ho, int32 Wo, int32 kh, int32 kw, "
        "int32 sh, int32 sw, int32 ph, int32 pw",
        "T dx",
        "const ptrdiff_t nc = i / ((ptrdiff_t)W * H);"
        + _GATHER_WINDOWS.replace(
            "ADD_TERM",
            """const ptrdiff_t o = (nc * Ho + oi) * Wo + oj;
            if (argmax[o] == u * kw + v) acc += dy[o];""",
        ),
    ),
}

_cuda_kernel_cache: dict[str, Any] = {}


def _cuda_kernels() -> dict[str, Any]:
    """The fused kernels as ``cupy.ElementwiseKernel`` objects (built once, compiled lazily)."""
    if not _cuda_kernel_cache:
        import cupy

        for name, (in_params, out_params, body) in _KERNEL_SOURCES.items():
            _cuda_kernel_cache[name] = cupy.ElementwiseKernel(
                in_params, out_params, body, f"tinynet_{name}"
            )
    return _cuda_kernel_cache


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
