"""Fully connected (Linear) layer: forward and backward by hand.

    y = x @ W^T + b

Shapes:
    x: (N, in_features)   W: (out_features, in_features)   b: (out_features,)
    y: (N, out_features)

Backward:
    dL/dx = dy @ W            (N, in_features)
    dL/dW = dy^T @ x          (out_features, in_features): summed over the batch by the product
    dL/db = sum_n dy[n]       (out_features,)

With ``relu=True`` a ReLU follows as the last step, ``y = max(x @ W^T + b, 0)`` (the ``Sequential``
of a Linear and a ReLU asks for it: one call instead of two), and backward starts with the
ReLU's backward, ``dy * [y > 0]``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import is_grad_enabled
from .activation import relu_in_place


class LinearCache(NamedTuple):
    x: Any
    weight: Any
    has_bias: bool
    relu_mask: Any = None  # [y > 0] (N, out_features) when a ReLU ran as the last step


def linear_forward(x: Any, weight: Any, bias: Any = None, relu: bool = False):
    """``y = x @ W^T + b`` (then ``max(y, 0)`` with ``relu``). Returns ``(y, cache)``."""
    y = x @ weight.T
    if bias is not None:
        y += bias
    mask = None
    if relu:
        relu_in_place(y)
        mask = y > 0 if is_grad_enabled() else None
    return y, LinearCache(x, weight, bias is not None, mask)


def linear_backward(dy: Any, cache: LinearCache, input_grad: bool = True):
    """Returns ``(dx, dw, db)`` (db is None without bias).

    ``input_grad=False`` skips dL/dx (dx is None): a first layer needs only dW and db.
    """
    x, weight, has_bias, mask = cache
    if mask is not None:  # a ReLU ran as the forward's last step: its backward first
        dy = dy * mask
    dx = dy @ weight if input_grad else None
    dw = dy.T @ x
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db
