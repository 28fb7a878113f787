"""Batch normalisation: forward and backward by hand (the reference kernel).

For each channel c, over the M = N * (spatial size) values of that channel in the batch:

    mean_c = (1/M) * sum x            var_c = (1/M) * sum (x - mean_c)^2     (biased variance)
    xhat   = (x - mean_c) / sqrt(var_c + eps)
    y      = gamma_c * xhat + beta_c

In training mode the batch's own mean and variance normalise, and the running averages are
updated (PyTorch's convention, with the UNBIASED variance var_c * M / (M - 1) for ``running_var``):

    running_mean = (1 - momentum) * running_mean + momentum * mean_c
    running_var  = (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)

In evaluation mode the running averages normalise instead.

Shapes:
    x: (N, C), (N, C, L) or (N, C, H, W) -> y: the same shape.  gamma, beta, running stats: (C,).
    The statistics reduce over every axis except axis 1 (the channels).

Backward (training mode), with dxhat = dy * gamma and sums over the M values of a channel:
    dbeta  = sum dy                    dgamma = sum dy * xhat
    dx     = (inv_std / M) * (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))
    (the mean and the variance depend on every x of the channel: that gives the two sums.)
Backward (evaluation mode): the statistics are constants, so dx = dxhat * inv_std.

The fast engine's version (``tinynet/fast/batchnorm.py``) counts passes over memory; it is tested
equal to this one.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class BatchNormCache(NamedTuple):
    """What batchnorm_backward needs."""

    xhat: Any  # the normalised input, the shape of x
    inv_std: Any  # 1 / sqrt(var + eps), shape (C,)
    gamma: Any  # (C,) or None (affine=False)
    batch_stats: bool  # the batch's statistics (True) or the running ones (False) normalised x


def per_channel(a: Any, ndim: int) -> Any:
    """A (C,) vector shaped (1, C, 1, ...) so that it broadcasts along axis 1 of an ndim array."""
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def values_per_channel(shape: tuple) -> int:
    """M = N * (spatial size): how many values each channel's statistics average over."""
    m = shape[0]
    for d in shape[2:]:
        m *= d
    return int(m)


def check_batch_statistics(shape: tuple) -> int:
    """M for batch statistics; a ValueError when M = 1 (a variance of one number)."""
    m = values_per_channel(shape)
    if m <= 1:
        raise ValueError(
            f"BatchNorm: expected more than 1 value per channel when training, got input of "
            f"shape {tuple(shape)} (M = N * spatial size = {m}). Use a batch of 2 or more, "
            "or call model.eval() to normalise with the running statistics"
        )
    return m


def batchnorm_forward(x: Any, gamma: Any = None, beta: Any = None, running_mean: Any = None,
                      running_var: Any = None, training: bool = True, momentum: float = 0.1,
                      eps: float = 1e-5):
    """Normalise each channel, then scale and shift it: ``y = gamma * xhat + beta``.

    Args:
        x: (N, C), (N, C, L) or (N, C, H, W). gamma, beta: (C,) or None (no affine transform).
        running_mean, running_var: (C,) or None; UPDATED IN PLACE in training mode, used to
            normalise in evaluation mode (without them evaluation uses the batch's, as PyTorch).
        training: the batch's statistics (True) or the running ones (False).
        momentum: weight of the new batch in the running averages. eps: added to the variance.

    Returns:
        ``(y, cache)``, y of the shape of x.
    """
    axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channels
    use_batch = training or running_mean is None
    if use_batch:
        m = check_batch_statistics(x.shape)
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        if training and running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean.astype(running_mean.dtype)
            running_var *= 1.0 - momentum
            running_var += momentum * (var * (m / (m - 1))).astype(running_var.dtype)
    else:
        mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
    inv_std = 1.0 / (var + eps) ** 0.5
    xhat = (x - per_channel(mean, x.ndim)) * per_channel(inv_std, x.ndim)
    y = xhat if gamma is None else xhat * per_channel(gamma, x.ndim) + per_channel(beta, x.ndim)
    return y, BatchNormCache(xhat, inv_std, gamma, bool(use_batch))


def batchnorm_backward(dy: Any, cache: BatchNormCache):
    """Gradients of batch normalisation: ``(dx, dgamma, dbeta)`` (the last two None without
    affine). See the module docstring for the formulas."""
    xhat, inv_std, gamma, batch_stats = cache
    axes = (0,) + tuple(range(2, dy.ndim))
    dbeta, dgamma = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    dxhat = dy if gamma is None else dy * per_channel(gamma, dy.ndim)
    if batch_stats:
        m = values_per_channel(dy.shape)
        dxhat = (m * dxhat - dxhat.sum(axis=axes, keepdims=True)
                 - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)) / m
    dx = dxhat * per_channel(inv_std, dy.ndim)
    if gamma is None:
        return dx, None, None
    return dx, dgamma, dbeta
