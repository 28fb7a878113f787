"""Default initialisation, as in PyTorch.

For a layer with ``fan_in`` inputs per output (in_features for Linear, C_in*kh*kw for Conv2d):

    weight ~ U(-bound, bound),  bound = gain * sqrt(3 / fan_in),
    gain = sqrt(2 / (1 + a^2)),  a = sqrt(5)
           = U(-1/sqrt(fan_in), 1/sqrt(fan_in))            ("Kaiming uniform with a = sqrt(5)")
    bias   ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))

Numbers are drawn on the host from the generator that ``tinynet.manual_seed`` seeds, in float64,
then cast and moved: the same seed gives the same weights on every device and in every dtype.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend as B


def uniform(shape: tuple, bound: float, dtype: Any = None, device: Any = None) -> Any:
    """An array of ``shape`` drawn from U(-bound, bound) on ``device`` in ``dtype``."""
    host = B.host_rng().uniform(-bound, bound, size=shape)
    return B.get_backend(device).asarray(host, dtype=B.normalize_dtype(dtype))


def kaiming_uniform(shape: tuple, fan_in: int, a: float = math.sqrt(5), dtype=None, device=None):
    """PyTorch's default weight initialisation (see the module docstring)."""
    gain = math.sqrt(2.0 / (1 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return uniform(shape, bound, dtype, device)


def bias_uniform(shape: tuple, fan_in: int, dtype=None, device=None):
    """PyTorch's default bias initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform(shape, bound, dtype, device)
