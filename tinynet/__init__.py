"""tinynet: a neural-network framework written from scratch to show how networks work.

Every layer's forward and backward pass is written by hand against an array module that is NumPy
on the CPU and CuPy on a GPU. Start with ``tinynet.nn`` (layers and operations),
``tinynet.functional`` (their math: the reference kernels), ``tinynet.optim`` (SGD) and
``tinynet.gradcheck``. ``tinynet.kernels`` chooses between the reference kernels and the fast
engine's twins (``tinynet.fast``); ``tinynet.use_reference()`` runs only the reference.
"""

from . import (  # noqa: E402  (training: fit/evaluate, checkpoints)
    backend,
    checkpoint,
    data,
    experiments,
    fast,  # (registers the fast engine's kernels with the dispatcher)
    functional,
    inspect,  # noqa: E402  (summary and trace: tinynet.inspect, not the stdlib's)
    kernels,
    lab,
    models,
    nn,
    optim,
    train,
)
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
from .checkpoint import CheckpointError, load, load_into, save  # noqa: E402
from .fast import fuse
from .fast.threads import get_num_threads, set_num_threads
from .gradcheck import GradcheckError, gradcheck
from .inspect import summary  # noqa: E402
from .kernels import use_reference
from .lab import explain_backward

explain = explain_backward  # tinynet.explain(model, x, y): one backward pass with its numbers

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
    "inspect",
    "summary",
    "fast",
    "fuse",
    "kernels",
    "use_reference",
    "lab",
    "experiments",
    "explain",
    "explain_backward",
    "CheckpointError",
    "get_num_threads",
    "set_num_threads",
    "checkpoint",
    "models",
    "train",
    "load",
    "load_into",
    "save",
]
