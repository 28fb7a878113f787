"""Flatten: an operation (no weights) that lays the image axes end to end for a Linear layer."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ._checks import check_float_input, check_int
from .module import Module


class Flatten(Module):
    r"""Merge axes ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C*H*W) by default.

    A Linear layer takes (batch, features), so a conv layer's output must be flattened before the
    first Linear layer. The numbers stay the same; only the shape changes.

    Shape:
        - Input: (N, *dims). Output: (N, prod(dims)) with the defaults.

    Backward:
        ``dX = reshape(dY, shape of X)``.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = check_int("Flatten", "start_dim", start_dim)
        self.end_dim = check_int("Flatten", "end_dim", end_dim)

    def output_shape(self, input_shape: tuple) -> tuple:
        nd = len(input_shape)
        s, e = self.start_dim % max(nd, 1), self.end_dim % max(nd, 1)
        if nd == 0 or not (-nd <= self.start_dim < nd and -nd <= self.end_dim < nd) or s > e:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}): cannot flatten an "
                f"input of shape {tuple(input_shape)}"
            )
        merged = 1
        for d in input_shape[s : e + 1]:
            merged *= d
        return tuple(input_shape[:s]) + (merged,) + tuple(input_shape[e + 1 :])

    def forward(self, x: Any) -> Any:
        check_float_input("Flatten", x)
        self.output_shape(x.shape)
        y, x_shape = kernels.flatten_forward(x, self.start_dim, self.end_dim)
        self.save_for_backward((x_shape, y.shape, y.dtype))
        return y

    def backward(self, grad_output: Any) -> Any:
        x_shape, y_shape, dtype = self.saved()
        self.check_grad_output(grad_output, y_shape, dtype)
        return kernels.flatten_backward(grad_output, x_shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
