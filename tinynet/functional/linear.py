"""Fully connected (Linear) layer: forward and backward by hand (the reference kernel).

    y = x @ W^T + b

Shapes:
    x: (N, in_features)   W: (out_features, in_features)   b: (out_features,)
    y: (N, out_features)

Backward:
    dL/dx = dy @ W            (N, in_features)
    dL/dW = dy^T @ x          (out_features, in_features): summed over the batch by the product
    dL/db = sum_n dy[n]       (out_features,)
"""

from __future__ import annotations

from typing import Any, NamedTuple


class LinearCache(NamedTuple):
    x: Any
    weight: Any
    has_bias: bool


def linear_forward(x: Any, weight: Any, bias: Any = None):
    """``y = x @ W^T + b``. Returns ``(y, cache)``."""
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, LinearCache(x, weight, bias is not None)


def linear_backward(dy: Any, cache: LinearCache, input_grad: bool = True):
    """Returns ``(dx, dw, db)`` (db is None without bias).

    ``input_grad=False`` skips dL/dx (dx is None): a first layer needs only dW and db.
    """
    x, weight, has_bias = cache
    dx = dy @ weight if input_grad else None
    dw = dy.T @ x
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db
