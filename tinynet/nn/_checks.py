"""Input checks shared by the modules: errors that tell a learner what went wrong and what to do."""

from __future__ import annotations

import numbers
from typing import Any

from .. import backend as B


def check_float_input(where: str, x: Any) -> None:
    """An array of floats (images must be converted and normalised before they enter a layer)."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(
            f"{where}: expected an array (NumPy or CuPy), got {type(x).__name__}. "
            "Convert it with tinynet.to_device(numpy.asarray(x, dtype='float32'), device)"
        )
    kind = x.dtype.kind
    if kind in "biu":
        raise TypeError(
            f"{where}: got an array of {x.dtype} values; layers compute in floating point. "
            "Convert images to float and normalise them first, e.g. x.astype('float32') / 255 "
            "(tinynet.data.DataLoader does this for you)"
        )
    if kind != "f":
        raise TypeError(f"{where}: expected a float32 or float64 array, got dtype {x.dtype}")


def check_layer_input(where: str, x: Any, weight: Any) -> None:
    """Float input on the weights' device and in the weights' dtype (no silent copies or casts)."""
    check_float_input(where, x)
    B.check_same_device(where, x, B.device_of(weight))
    if x.dtype != weight.dtype:
        raise TypeError(
            f"{where}: the input is {x.dtype} but the layer's weights are {weight.dtype}; "
            f"convert the input with x.astype('{weight.dtype}') or the model with "
            f"model.to(dtype='{x.dtype}')"
        )


def check_positive(where: str, name: str, values: tuple) -> None:
    """Sizes such as kernel, stride and channel counts must be >= 1."""
    if any(v <= 0 for v in values):
        shown = values[0] if len(values) == 1 else values
        raise ValueError(f"{where}: {name} must be positive, got {shown}")


def check_non_negative(where: str, name: str, values: tuple) -> None:
    if any(v < 0 for v in values):
        raise ValueError(f"{where}: {name} must be >= 0, got {values}")


def check_int(where: str, name: str, value: Any) -> int:
    """An integer (not a bool or a float), returned as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    return int(value)
