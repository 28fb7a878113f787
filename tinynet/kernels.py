"""The dispatcher: which implementation of each operation runs.

Every module in :mod:`tinynet.nn` (and the SGD optimizer) calls its math through this module:
``kernels.conv2d_forward(x, w, b, stride, padding)`` runs

* the **reference kernel** ``tinynet.functional.conv2d_forward``: short textbook code, the one a
  learner reads, the oracle of every test; or
* the **fast engine's** twin (:mod:`tinynet.fast`), when it registered one for the array's device
  and the fast kernels are on (the default). Each fast kernel computes the same numbers (to
  rounding: sums in another order, or for 3x3 convolutions of 32+ channels Winograd's algorithm)
  and is tested equal to its reference.

Switch the whole framework to the reference kernels with the environment variable
``TINYNET_KERNELS=reference`` (``fast`` is the default), for a block of code with
``with tinynet.use_reference(): ...``, or for good with ``tinynet.kernels.set_mode("reference")``.

A backward always runs the implementation whose forward made the cache: it is chosen by the
cache's type, not by the mode. So a forward run with the fast kernels and a backward run inside
``use_reference()`` (or the other way round) still fit together.

The reference kernel is looked up by name at each call, so a patched
``tinynet.functional.<name>`` (as :mod:`tinynet.lab.bugs` does) takes effect at once.
"""

from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from typing import Any, Callable

from .backend import device_of

MODES = ("fast", "reference")

# (name, device) -> the fast forward; cache type -> the fast backward that reads it
_fast: dict[tuple[str, str], Callable] = {}
_fast_backward: dict[type, Callable] = {}
# where a reference kernel lives, when it is not tinynet.functional
_HOME = {"sgd_update": "tinynet.optim.sgd"}


def _mode_from_environment() -> str:
    mode = (os.environ.get("TINYNET_KERNELS") or "fast").strip().lower()
    if mode not in MODES:
        raise ValueError(f"TINYNET_KERNELS must be 'fast' or 'reference', got {mode!r}")
    return mode


_mode = _mode_from_environment()


def get_mode() -> str:
    """``'fast'`` (the fast engine where it has a kernel) or ``'reference'`` (reference only)."""
    return _mode


def set_mode(mode: str) -> None:
    """Run the fast engine's kernels (``'fast'``) or only the reference kernels."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"kernels.set_mode: mode must be 'fast' or 'reference', got {mode!r}")
    _mode = mode


@contextmanager
def use_reference():
    """Run only the reference kernels (``tinynet/functional/``) inside the ``with`` block."""
    previous = _mode
    set_mode("reference")
    try:
        yield
    finally:
        set_mode(previous)


def register(name: str, device: str, forward: Callable, backward: Callable | None = None,
             cache_types: tuple = ()) -> None:
    """The fast engine's implementation of the operation ``name`` on ``device``; its
    ``backward`` reads the caches of ``cache_types`` (types of its own, so that they never reach
    the reference backward, nor a reference cache the fast backward)."""
    _fast[(name, device)] = forward
    for cache_type in cache_types:
        _fast_backward[cache_type] = backward


_homes: dict[str, Any] = {}  # module name -> the imported module (imported once)


def reference(name: str) -> Callable:
    """The reference kernel ``name`` (its attribute looked up now: a patch takes effect)."""
    home = _HOME.get(name, "tinynet.functional")
    module = _homes.get(home)
    if module is None:
        module = _homes[home] = importlib.import_module(home)
    return getattr(module, name)


def implementation(name: str, device: str) -> Callable:
    """What a call of ``name`` on an array of ``device`` runs now."""
    fast = _fast.get((name, device)) if _mode == "fast" else None
    return fast or reference(name)


def _forward(name: str) -> Callable:
    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        return implementation(name, device_of(x))(x, *args, **kwargs)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"``tinynet.functional.{name}``, or its fast twin (see tinynet.kernels)."
    return run


def _backward(name: str, cache_at: int = 1) -> Callable:
    def run(*args: Any, **kwargs: Any) -> Any:
        fast = _fast_backward.get(type(args[cache_at]))
        return (fast or reference(name))(*args, **kwargs)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = (f"``tinynet.functional.{name}``, or the fast backward that belongs to the "
                   "cache (see tinynet.kernels).")
    return run


conv2d_forward, conv2d_backward = _forward("conv2d_forward"), _backward("conv2d_backward")
linear_forward, linear_backward = _forward("linear_forward"), _backward("linear_backward")
relu_forward, relu_backward = _forward("relu_forward"), _backward("relu_backward")
maxpool2d_forward = _forward("maxpool2d_forward")
maxpool2d_backward = _backward("maxpool2d_backward")
avgpool2d_forward = _forward("avgpool2d_forward")
avgpool2d_backward = _backward("avgpool2d_backward")
adaptive_avgpool2d_forward = _forward("adaptive_avgpool2d_forward")
adaptive_avgpool2d_backward = _backward("adaptive_avgpool2d_backward")
batchnorm_forward = _forward("batchnorm_forward")
batchnorm_backward = _backward("batchnorm_backward")
dropout_forward, dropout_backward = _forward("dropout_forward"), _backward("dropout_backward")
flatten_forward, flatten_backward = _forward("flatten_forward"), _backward("flatten_backward")
cross_entropy_forward = _forward("cross_entropy_forward")
cross_entropy_backward = _backward("cross_entropy_backward", cache_at=0)
sgd_update = _forward("sgd_update")  # (param, grad, buf, ...) -> buf: no cache
