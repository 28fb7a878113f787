"""The fast engine on the GPU: fused CuPy kernels for the steps where launches cost the most.

A GPU finishes a small elementwise step in microseconds, so what plain array code pays there is
the number of kernel launches and temporary arrays. Each kernel here does one reference
function's math in a single launch (``cupy.ElementwiseKernel``, compiled on first use):

* ``sgd_update``: the SGD rule of ``tinynet/optim/sgd.py`` (4-5 array operations) reading param,
  grad and the momentum buffer once and writing param and buffer once.
* max-pool backward: one thread per input pixel gathers from the (at most
  ceil(kh/sh) * ceil(kw/sw)) windows covering it, instead of kh*kw strided adds; the forward is
  the reference one (its cache wrapped, so that its backward comes here).

Everything else on the GPU runs the reference kernels. Tested equal to them (tests/test_devices.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import functional as F
from ..backend import backend_of


class RoutedPoolCache(NamedTuple):
    """The reference max pooling's cache, for the fused GPU backward."""

    pool: Any  # functional.pooling.MaxPoolCache


def maxpool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """The reference max pooling, its cache marked for :func:`maxpool2d_backward`."""
    y, cache = F.maxpool2d_forward(x, kernel_size, stride, padding)
    return y, RoutedPoolCache(cache)


def maxpool2d_backward(dy: Any, cache: RoutedPoolCache):
    """``tinynet.functional.maxpool2d_backward`` as one kernel, one thread per input pixel."""
    argmax, (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = cache.pool
    xp = backend_of(dy).xp
    ho, wo = dy.shape[2:]
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    _kernels()["maxpool_route"](xp.ascontiguousarray(dy),
                                xp.ascontiguousarray(argmax, dtype="int64"),
                                H, W, ho, wo, kh, kw, sh, sw, ph, pw, dx)
    return dx


def sgd_update(param: Any, grad: Any, buf: Any, lr: float, momentum: float = 0.0,
               dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> Any:
    """``tinynet.optim.sgd.sgd_update`` as one kernel: param updated in place; returns the
    momentum buffer to keep (None without momentum)."""
    k = _kernels()
    lr, momentum, dampening, weight_decay = (float(v) for v in (lr, momentum, dampening,
                                                                 weight_decay))
    if momentum == 0:
        k["sgd"](grad, lr, weight_decay, param)
        return None
    first = buf is None
    if first:
        buf = backend_of(param).xp.empty_like(param)
    k["sgd_momentum"](grad, lr, momentum, dampening, weight_decay, bool(nesterov), first,
                      param, buf)
    return buf


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

_kernel_cache: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """The fused kernels as ``cupy.ElementwiseKernel`` objects (built once, compiled lazily)."""
    if not _kernel_cache:
        import cupy

        for name, (in_params, out_params, body) in _KERNEL_SOURCES.items():
            _kernel_cache[name] = cupy.ElementwiseKernel(in_params, out_params, body,
                                                         f"tinynet_{name}")
    return _kernel_cache
