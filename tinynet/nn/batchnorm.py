"""BatchNorm1d and BatchNorm2d: normalise each channel over the batch (a layer: it has weights).

The math (forward, backward, running averages) is in :mod:`tinynet.functional.batchnorm`.
"""

from __future__ import annotations

from typing import Any

from .. import backend as B
from .. import functional as F
from .. import kernels
from ._checks import check_int, check_layer_input, check_positive
from .module import Module, Parameter


class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d (they differ only in the accepted shapes)."""

    _ndims: tuple = ()
    _shapes: str = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype: Any = None,
                 device: Any = None) -> None:
        super().__init__()
        where = type(self).__name__
        self.num_features = check_int(where, "num_features", num_features)
        check_positive(where, "num_features", (self.num_features,))
        if not eps > 0:
            raise ValueError(f"{where}: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), "
                             f"got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{where}: momentum must be in [0, 1] or None, got {momentum}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        backend = B.get_backend(device)
        xp, dt, c = backend.xp, B.normalize_dtype(dtype), self.num_features
        if self.affine:
            self.weight = Parameter(xp.ones(c, dtype=dt))  # gamma, starts as "no scaling"
            self.bias = Parameter(xp.zeros(c, dtype=dt))  # beta, starts as "no shift"
        else:
            self.weight = None
            self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", xp.zeros(c, dtype=dt))
            self.register_buffer("running_var", xp.ones(c, dtype=dt))
            self.register_buffer("num_batches_tracked", xp.zeros((), dtype=xp.int64))
        else:
            # no buffers at all (PyTorch keeps None entries; they are never saved either)
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def _check_shape(self, x: Any) -> None:
        where = f"{type(self).__name__}({self.num_features})"
        if x.ndim not in self._ndims:
            raise ValueError(
                f"{where}: expected an input of shape {self._shapes}, got shape "
                f"{tuple(x.shape)} ({x.ndim}-D)"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{where}: expected {self.num_features} channels on axis 1, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); set num_features to the number of channels of "
                "the layer before"
            )

    def forward(self, x: Any) -> Any:
        where = f"{type(self).__name__}({self.num_features})"
        if self.affine:
            check_layer_input(where, x, self.weight.data)
        elif self.track_running_stats:
            check_layer_input(where, x, self.running_mean)
        self._check_shape(x)
        momentum = self.momentum
        m = F.batchnorm.values_per_channel(x.shape)
        if m <= 1 and (self.training or not self.track_running_stats):
            # PyTorch's rule; checked before the running statistics are touched
            raise ValueError(
                f"{where}: expected more than 1 value per channel when training, got an input of "
                f"shape {tuple(x.shape)} (N * spatial size = {m} value per channel: its variance "
                "is undefined). Use a batch of 2 or more, or call model.eval() to normalise with "
                "the running statistics"
            )
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if momentum is None:  # cumulative moving average: the mean of all batches so far
                momentum = 1.0 / float(self.num_batches_tracked)
        y, cache = kernels.batchnorm_forward(
            x,
            self.weight.data if self.affine else None,
            self.bias.data if self.affine else None,
            self.running_mean,
            self.running_var,
            training=self.training,
            momentum=0.0 if momentum is None else momentum,
            eps=self.eps,
        )
        self.save_for_backward((cache, y.shape))
        return y

    def backward(self, grad_output: Any) -> Any:
        cache, y_shape = self.saved()
        self.check_grad_output(grad_output, y_shape)
        dx, dgamma, dbeta = kernels.batchnorm_backward(grad_output, cache)
        if self.affine:
            self.weight.accumulate_grad(dgamma)
            self.bias.accumulate_grad(dbeta)
        return dx

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    r"""Batch normalisation of images: each channel is normalised over the batch and the pixels.

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, mean and variance per channel over the
    N*H*W values of that channel. Training: the batch's statistics (biased variance), and the
    running averages are updated; evaluation (``model.eval()``): the running averages.

    Args:
        num_features: C, the channels of the input (the previous conv's out_channels).
        eps: added to the variance. Default: 1e-5.
        momentum: weight of the new batch in the running averages
            (``running = (1 - momentum) * running + momentum * batch_stat``; the running variance
            uses the unbiased batch variance). None: a plain average of all batches. Default: 0.1.
        affine: learn gamma (``weight``) and beta (``bias``). Default: True.
        track_running_stats: keep running averages (else the batch's statistics are used in
            evaluation too). Default: True.
        dtype, device: of the weights and running statistics.

    Shape:
        - Input: (N, C, H, W). Output: the same shape.

    Attributes:
        weight: gamma, (C,), ones.  bias: beta, (C,), zeros.
        running_mean: (C,) zeros, running_var: (C,) ones, num_batches_tracked: int64 0-d array:
        buffers (saved in the state dict, not trained).

    Backward (see :mod:`tinynet.functional.batchnorm`):
        ``dx = (gamma * inv_std / M) * (M*dy - sum(dy) - xhat*sum(dy*xhat))``, M = N*H*W;
        ``dgamma = sum(dy*xhat)``, ``dbeta = sum(dy)``.

    Example::

        >>> bn = BatchNorm2d(32)
        >>> bn(x).shape            # x: (64, 32, 28, 28)
        (64, 32, 28, 28)
    """

    _ndims = (4,)
    _shapes = "(N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    r"""Batch normalisation of features: each feature (channel) is normalised over the batch.

    The same as :class:`BatchNorm2d` for inputs (N, C) (statistics over N values per feature, e.g.
    after a Linear layer) or (N, C, L) (over N*L values per channel).

    Args: as :class:`BatchNorm2d`.

    Shape:
        - Input: (N, C) or (N, C, L). Output: the same shape.

    Backward: as :class:`BatchNorm2d`, with M = N (or N*L) values per channel.

    Example::

        >>> BatchNorm1d(128)(h).shape      # h: (64, 128), e.g. after Linear(3136, 128)
        (64, 128)
    """

    _ndims = (2, 3)
    _shapes = "(N, C) or (N, C, L)"
