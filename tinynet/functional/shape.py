"""Flatten: reshape a batch so that a Linear layer can take it.

    (N, C, H, W) -> (N, C*H*W)        with start_dim=1, end_dim=-1 (the default)

A Linear layer multiplies a matrix by one feature vector per sample, so the image axes of a
convolution's output must be laid end to end first. Nothing is computed: the same numbers, another
shape. Backward is the reverse reshape: dL/dx = reshape(dL/dy, shape of x).
"""

from __future__ import annotations

from typing import Any


def flatten_forward(x: Any, start_dim: int = 1, end_dim: int = -1):
    """Merge axes ``start_dim..end_dim`` into one. Returns ``(y, x_shape)``."""
    nd = x.ndim
    s = start_dim % nd if nd else 0
    e = end_dim % nd if nd else 0
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for a "
                         f"{nd}-D input")
    merged = 1
    for d in x.shape[s : e + 1]:
        merged *= d
    y = x.reshape(x.shape[:s] + (merged,) + x.shape[e + 1 :])
    return y, x.shape


def flatten_backward(dy: Any, x_shape: tuple):
    """Undo the reshape: ``dL/dx`` has the input's shape."""
    return dy.reshape(x_shape)
