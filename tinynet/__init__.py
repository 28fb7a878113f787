"""tinynet: a neural-network framework written from scratch to show how networks work.

Every layer's forward and backward pass is written by hand against an array module that is NumPy
on the CPU and CuPy on a GPU. Start with ``tinynet.nn`` (layers and operations),
``tinynet.functional`` (their math), ``tinynet.optim`` (SGD) and ``tinynet.gradcheck``.
"""

from . import backend, data, functional, nn, optim
from .backend import (
    DeviceError,
    float32,
    float64,
    get_default_device,
    get_default_dtype,
    manual_seed,
    no_grad,
    set_default_device,
    set_default_dtype,
    to_device,
    to_numpy,
)
from .gradcheck import GradcheckError, gradcheck

__version__ = "0.1.0"

__all__ = [
    "backend",
    "data",
    "functional",
    "nn",
    "optim",
    "DeviceError",
    "float32",
    "float64",
    "get_default_device",
    "get_default_dtype",
    "manual_seed",
    "no_grad",
    "set_default_device",
    "set_default_dtype",
    "to_device",
    "to_numpy",
    "GradcheckError",
    "gradcheck",
]
