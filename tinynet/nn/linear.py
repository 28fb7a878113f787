"""Linear: the fully connected layer (it has weights: a matrix and a bias)."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ._checks import check_int, check_layer_input, check_positive
from .init import bias_uniform, kaiming_uniform
from .module import Module, Parameter


class Linear(Module):
    r"""``y = x @ W^T + b``: every output feature is a weighted sum of all input features.

    Args:
        in_features: features per sample in the input (after a conv: C*H*W of its flattened output).
        out_features: features per sample in the output (for the last layer: the number of classes,
            a data-dependent hyperparameter; 10 for Fashion-MNIST).
        bias: learn a bias. Default: True.
        dtype: float32 (default) or float64. device: 'cpu' or 'cuda'.

    Shape:
        - Input: (N, in_features). A conv output (N, C, H, W) must go through Flatten first.
        - Output: (N, out_features)

    Attributes:
        weight: (out_features, in_features), U(-1/sqrt(in_features), 1/sqrt(in_features)).
        bias: (out_features,), same distribution.

    Backward (see :mod:`tinynet.functional.linear`):
        dX = dY @ W,  dW = dY^T @ X,  db = sum of dY over the batch.
        ``backward(dy, input_grad=False)`` skips dX (returns None), for a first layer.

    Example::

        >>> fc = Linear(192, 120)
        >>> fc(x).shape            # x: (64, 192)
        (64, 120)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        self.in_features = check_int("Linear", "in_features", in_features)
        self.out_features = check_int("Linear", "out_features", out_features)
        check_positive("Linear", "in_features", (self.in_features,))
        check_positive("Linear", "out_features", (self.out_features,))
        shape = (self.out_features, self.in_features)
        kw = dict(dtype=dtype, device=device)
        self.weight = Parameter(kaiming_uniform(shape, self.in_features, **kw))
        self.bias = (
            Parameter(bias_uniform((self.out_features,), self.in_features, **kw))
            if bias
            else None
        )

    def output_shape(self, input_shape: tuple) -> tuple:
        """(N, out_features) for an input (N, in_features); explains shape mistakes."""
        where = f"Linear({self.extra_repr()})"
        if len(input_shape) != 2:
            flat = 1
            for d in input_shape[1:]:
                flat *= d
            hint = (
                f" Flatten it first (tinynet.nn.Flatten() before this layer turns it into "
                f"(N, {flat})): a Linear layer takes (batch, features)."
                if len(input_shape) > 2
                else " A Linear layer takes (batch, features); for one sample use x[None]."
            )
            raise ValueError(
                f"{where}: expected a 2-D input (N, {self.in_features}), got shape "
                f"{tuple(input_shape)}.{hint}"
            )
        if input_shape[1] != self.in_features:
            raise ValueError(
                f"{where}: expected {self.in_features} input features, got {input_shape[1]} "
                f"(input shape {tuple(input_shape)}); set in_features={input_shape[1]} or fix the "
                "layer before it"
            )
        return (input_shape[0], self.out_features)

    accepts_input_grad = True  # backward(dy, input_grad=False) skips dL/dx (see Sequential)

    def forward(self, x: Any) -> Any:
        """``y = x @ W^T + b`` for a batch x (N, in_features) -> (N, out_features)."""
        check_layer_input(f"Linear({self.extra_repr()})", x, self.weight.data)
        self.output_shape(x.shape)
        bias = self.bias.data if self.bias is not None else None
        # the math: tinynet/functional/linear.py (through the dispatcher, tinynet/kernels.py)
        y, cache = kernels.linear_forward(x, self.weight.data, bias)
        self.save_for_backward((cache, y.shape))
        return y

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        """Add dL/dW and dL/db into the parameters' ``.grad``; return dL/dx (None if not
        ``input_grad``: then the input gradient is not computed at all)."""
        cache, y_shape = self.saved()
        self.check_grad_output(grad_output, y_shape)
        dx, dw, db = kernels.linear_backward(grad_output, cache, input_grad=input_grad)
        self.weight.accumulate_grad(dw)
        if self.bias is not None:
            self.bias.accumulate_grad(db)
        return dx

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
