"""AvgPool2d and AdaptiveAvgPool2d: operations (no weights) that average windows."""

from __future__ import annotations

from typing import Any

from .. import kernels
from .._utils import pair
from ._checks import check_float_input, check_positive
from .module import Module
from .pooling import _Pool2d


class AvgPool2d(_Pool2d):
    r"""Average pooling: each output pixel is the mean of a kh x kw window of its channel.

    Zero padding counts in the mean (PyTorch's default ``count_include_pad=True``).

    Args:
        kernel_size: window height and width (int or pair).
        stride: step between windows (int or pair). Default: the kernel size.
        padding: zeros added on each side, at most half the kernel. Default: 0.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H_out, W_out), ``H_out = floor((H + 2*padding[0] - kernel_size[0]) /
          stride[0]) + 1`` (W likewise).

    Backward (see :mod:`tinynet.functional.avgpool`):
        every input of a window receives ``dy / (kh*kw)`` from it (overlaps add up).
    """

    forward_fn = staticmethod(kernels.avgpool2d_forward)
    backward_fn = staticmethod(kernels.avgpool2d_backward)


class AdaptiveAvgPool2d(Module):
    r"""Average pooling to a fixed output size, whatever the input's height and width.

    ``AdaptiveAvgPool2d(1)`` is the *global average pooling* of modern CNNs: one number per
    channel, (N, C, H, W) -> (N, C, 1, 1). Output cell i averages input rows
    ``floor(i*H/H_out) .. ceil((i+1)*H/H_out) - 1`` (columns likewise), as in PyTorch.

    Args:
        output_size: int or pair (H_out, W_out), each at most the input size.

    Shape:
        - Input: (N, C, H, W). Output: (N, C, H_out, W_out).

    Backward (see :mod:`tinynet.functional.avgpool`):
        each input receives ``dy / (window size)`` from every output window containing it.
    """

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        check_positive("AdaptiveAvgPool2d", "output_size", self.output_size)

    def forward(self, x: Any) -> Any:
        where = f"AdaptiveAvgPool2d({self.extra_repr()})"
        check_float_input(where, x)
        if x.ndim != 4:
            raise ValueError(f"{where}: expected a 4-D batch (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        if x.shape[2] < self.output_size[0] or x.shape[3] < self.output_size[1]:
            raise ValueError(
                f"{where}: the input {x.shape[2]}x{x.shape[3]} is smaller than the output size "
                f"{self.output_size[0]}x{self.output_size[1]}"
            )
        y, cache = kernels.adaptive_avgpool2d_forward(x, self.output_size)
        self.save_for_backward((cache, y.shape))
        return y

    def backward(self, grad_output: Any) -> Any:
        cache, y_shape = self.saved()
        self.check_grad_output(grad_output, y_shape)
        return kernels.adaptive_avgpool2d_backward(grad_output, cache)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
