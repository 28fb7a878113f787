"""MaxPool2d: an operation (no weights) that keeps the largest value of each window."""

from __future__ import annotations

from typing import Any

from .. import kernels
from .._utils import conv_output_size, pair
from ._checks import check_float_input, check_non_negative, check_positive
from .module import Module


class _Pool2d(Module):
    """What max and average pooling share: the window arguments, their checks and the shapes.

    Subclasses set the class attributes ``forward_fn(x, kernel, stride, padding) -> (y, cache)``
    and ``backward_fn(dy, cache) -> dx``: the functional pair that does the math.
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")
        check_positive(name, "kernel_size", self.kernel_size)
        check_positive(name, "stride", self.stride)
        check_non_negative(name, "padding", self.padding)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(
                f"{name}: padding {self.padding} must be at most half the kernel size "
                f"{self.kernel_size}"
            )

    def output_shape(self, input_shape: tuple) -> tuple:
        """(N, C, H_out, W_out) for an input (N, C, H, W); explains shape mistakes."""
        where = f"{type(self).__name__}({self.extra_repr()})"
        if len(input_shape) != 4:
            raise ValueError(
                f"{where}: expected a 4-D batch (N, C, H, W), got shape {tuple(input_shape)}"
            )
        n, c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{where}: the window {kh}x{kw} is larger than the padded input "
                f"{h + 2 * ph}x{w + 2 * pw}"
            )
        return (n, c, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw))

    def forward(self, x: Any) -> Any:
        check_float_input(f"{type(self).__name__}({self.extra_repr()})", x)
        self.output_shape(x.shape)
        y, cache = self.forward_fn(x, self.kernel_size, self.stride, self.padding)
        self.save_for_backward((cache, y.shape, y.dtype))
        return y

    def backward(self, grad_output: Any) -> Any:
        cache, y_shape, dtype = self.saved()
        self.check_grad_output(grad_output, y_shape, dtype)
        return self.backward_fn(grad_output, cache)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    r"""Max pooling: each output pixel is the maximum of a kh x kw window of its channel.

    Args:
        kernel_size: window height and width (int or pair).
        stride: step between windows (int or pair). Default: the kernel size (no overlap).
        padding: implicit -inf added on each side, at most half the kernel. Default: 0.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H_out, W_out), ``H_out = floor((H + 2*padding[0] - kernel_size[0]) /
          stride[0]) + 1`` (W likewise). Channels are unchanged.

    Backward (see :mod:`tinynet.functional.pooling`):
        the gradient of each output goes to the one input that was the maximum of its window (the
        first one on ties, as in PyTorch); every other input gets zero.

    Example::

        >>> MaxPool2d(2)(x).shape   # x: (64, 6, 24, 24)
        (64, 6, 12, 12)
    """

    forward_fn = staticmethod(kernels.maxpool2d_forward)
    backward_fn = staticmethod(kernels.maxpool2d_backward)
