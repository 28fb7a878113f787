"""Small helpers shared by functional kernels and modules."""

from __future__ import annotations

from typing import Any


def pair(value: Any, name: str = "value") -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(3, 5) -> (3, 5)``: a size given as an int or a pair (height, width)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
        a, b = value
    else:
        a = b = value
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, int) and not _is_integer(v):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


def _is_integer(v: Any) -> bool:
    try:
        return int(v) == v and not isinstance(v, float)
    except (TypeError, ValueError):
        return False


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """``floor((size + 2*padding - kernel) / stride) + 1``: the output length of a window."""
    return (size + 2 * padding - kernel) // stride + 1
