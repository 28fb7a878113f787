"""Conv2d: the convolution layer (it has weights: a bank of filters)."""

from __future__ import annotations

from typing import Any

from .. import kernels
from .._utils import conv_output_size, pair
from ._checks import check_int, check_layer_input, check_non_negative, check_positive
from .init import bias_uniform, kaiming_uniform
from .module import Module, Parameter


class Conv2d(Module):
    r"""2-D convolution over a batch of images.

    ``y[n, f] = b[f] + sum_c w[f, c] (*) x[n, c]``: each of the ``out_channels`` filters looks at
    every input channel and produces one output channel (a *feature map*).

    Args:
        in_channels: channels of the input (1 for grey images, 3 for colour; for a later conv, the
            previous conv's out_channels). Data-dependent for the first layer.
        out_channels: number of filters = channels of the output. A hyperparameter you choose.
        kernel_size: filter height and width (int or pair).
        stride: step between windows (int or pair). Default: 1.
        padding: zeros added on each side of height and width (int or pair). Default: 0.
        bias: learn a bias per output channel. Default: True.
        dtype: float32 (default) or float64. device: 'cpu' or 'cuda' (default: the default device).

    Shape:
        - Input: (N, C_in, H, W)
        - Output: (N, C_out, H_out, W_out) with
          ``H_out = floor((H + 2*padding[0] - kernel_size[0]) / stride[0]) + 1`` (W likewise)

    Attributes:
        weight: (out_channels, in_channels, kh, kw), Kaiming-uniform (a=sqrt(5)) as in PyTorch.
        bias: (out_channels,), U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels*kh*kw.

    Backward (see :mod:`tinynet.functional.conv`):
        dX = col2im(dY @ W),  dW = dY^T @ cols,  db = sum of dY over batch, height and width.
        ``backward(dy, input_grad=False)`` skips dX (returns None): the first layer of a network
        needs only its weight gradients (``Sequential.backward`` asks for this).

    Example::

        >>> conv = Conv2d(1, 6, kernel_size=5)
        >>> conv(x).shape          # x: (64, 1, 28, 28)
        (64, 6, 24, 24)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        bias: bool = True,
        dtype: Any = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        where = "Conv2d"
        self.in_channels = check_int(where, "in_channels", in_channels)
        self.out_channels = check_int(where, "out_channels", out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        check_positive(where, "in_channels", (self.in_channels,))
        check_positive(where, "out_channels", (self.out_channels,))
        check_positive(where, "kernel_size", self.kernel_size)
        check_positive(where, "stride", self.stride)
        check_non_negative(where, "padding", self.padding)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.weight = Parameter(
            kaiming_uniform((self.out_channels, self.in_channels, kh, kw), fan_in, dtype=dtype,
                            device=device)
        )
        self.bias = (
            Parameter(bias_uniform((self.out_channels,), fan_in, dtype=dtype, device=device))
            if bias
            else None
        )

    def output_shape(self, input_shape: tuple) -> tuple:
        """(N, C_out, H_out, W_out) for an input of shape (N, C_in, H, W); checks the sizes."""
        where = f"Conv2d({self.extra_repr()})"
        if len(input_shape) != 4:
            hint = (
                " A single image needs a batch axis: x[None] turns (C, H, W) into (1, C, H, W)."
                if len(input_shape) == 3
                else ""
            )
            raise ValueError(
                f"{where}: expected a 4-D batch (N, C_in, H, W), got shape {tuple(input_shape)} "
                f"({len(input_shape)}-D).{hint}"
            )
        n, c, h, w = input_shape
        if c != self.in_channels:
            raise ValueError(
                f"{where}: expected {self.in_channels} input channels (axis 1 of (N, C, H, W)), "
                f"got {c} in an input of shape {tuple(input_shape)}"
            )
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{where}: the kernel {kh}x{kw} is larger than the padded input "
                f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph},{pw}); use a smaller "
                "kernel, more padding, or a larger image"
            )
        return (n, self.out_channels, conv_output_size(h, kh, sh, ph),
                conv_output_size(w, kw, sw, pw))

    accepts_input_grad = True  # backward(dy, input_grad=False) skips dL/dx (see Sequential)

    def forward(self, x: Any) -> Any:
        """The convolution of a batch x (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        check_layer_input(f"Conv2d({self.extra_repr()})", x, self.weight.data)
        self.output_shape(x.shape)  # explains a wrong shape before the math starts
        bias = self.bias.data if self.bias is not None else None
        # the math: tinynet/functional/conv.py (kernels.py may run the fast engine's twin)
        y, cache = kernels.conv2d_forward(x, self.weight.data, bias, self.stride, self.padding)
        self.save_for_backward((cache, y.shape))
        return y

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        """Add dL/dW and dL/db into the parameters' ``.grad``; return dL/dx (None if not
        ``input_grad``: then the input gradient is not computed at all)."""
        cache, y_shape = self.saved()
        self.check_grad_output(grad_output, y_shape)
        dx, dw, db = kernels.conv2d_backward(grad_output, cache, input_grad=input_grad)
        self.weight.accumulate_grad(dw)
        if self.bias is not None:
            self.bias.accumulate_grad(db)
        return dx

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        return s
