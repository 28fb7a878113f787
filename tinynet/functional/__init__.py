"""The reference kernels: pure forward/backward pairs, arrays in, arrays out, no state.

Each operation comes as a pair named alike: ``*_forward(...) -> (y, cache)`` and
``*_backward(dy, cache) -> gradients``, side by side in one file per operation, written as short
textbook code against the backend's ``xp`` (so it runs on NumPy and CuPy alike). The modules in
:mod:`tinynet.nn` own the weights and call these through :mod:`tinynet.kernels`, which runs this
code or, where it has one, the fast engine's twin (:mod:`tinynet.fast`), tested equal to it.
Under ``tinynet.use_reference()`` (or ``TINYNET_KERNELS=reference``) exactly this code runs.
"""

from .activation import relu_backward, relu_forward
from .avgpool import (
    adaptive_avgpool2d_backward,
    adaptive_avgpool2d_forward,
    avgpool2d_backward,
    avgpool2d_forward,
)
from .batchnorm import batchnorm_backward, batchnorm_forward
from .conv import conv2d_backward, conv2d_forward
from .dropout import dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .pooling import maxpool2d_backward, maxpool2d_forward
from .shape import flatten_backward, flatten_forward

__all__ = [
    # the course network
    "conv2d_forward",
    "conv2d_backward",
    "linear_forward",
    "linear_backward",
    "relu_forward",
    "relu_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "flatten_forward",
    "flatten_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    # beyond it: batch normalisation, dropout, average pooling
    "batchnorm_forward",
    "batchnorm_backward",
    "dropout_forward",
    "dropout_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "adaptive_avgpool2d_forward",
    "adaptive_avgpool2d_backward",
]
