"""The fast engine's batch normalisation: the same numbers as ``tinynet/functional/batchnorm.py``.

The formulas and shapes are in the reference kernel's docstring.

Speed (each pass over a big activation costs about as much as copying it, so count passes):
    * The cache keeps xc = x - mean, not xhat = xc * inv_std: xhat is never written. Every formula
      takes xhat = xc * inv_std with inv_std folded into a per-channel (C,) factor:
          y  = xc * scale + beta                      with scale = gamma * inv_std
          dgamma = inv_std * sum dy * xc
          dx = scale * dy - (scale * inv_std * dgamma / M) * xc - scale * dbeta / M
      Forward: 3 writes (xc, y, y + beta); backward: 4 (the three terms of dx and their sum).
    * The sums over a channel are matrix products: (N, C, S) @ ones(S) for sum x, and
      sum xc * xc, sum dy * xc as one einsum each, which multiplies and adds in one pass
      without writing the products anywhere.
    * xc, y and dx live in recycled buffers (``_recycle.scratch``): no page faults.
    * Threads (NumPy, inputs with spatial axes): every pass runs one block of images per thread
      (``threads.for_batch``); the per-channel sums are added in block order. BatchNorm2d(32) at
      batch 128 (28x28) went from about 12 to 7.5 ms forward + backward (2 cores).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_of, is_grad_enabled
from ..functional.batchnorm import check_batch_statistics, values_per_channel
from ..functional.batchnorm import per_channel as _channel_view
from ._recycle import scratch
from .threads import add_blocks, for_batch


class BatchNormCache(NamedTuple):
    """The fast backward's cache: the centred input and the per-channel scale."""

    xc: Any  # x - mean, the shape of x (xhat = xc * inv_std is never written out)
    inv_std: Any  # 1 / sqrt(var + eps), shape (C,)
    gamma: Any  # (C,) or None (affine=False)
    batch_stats: bool  # the batch's statistics (True) or the running ones (False) normalised x


def channel_sum(a: Any) -> Any:
    """Sum over every axis but the channels, (N, C, ...) -> (C,).

    For (N, C, S...) the spatial sum is a matrix product with a vector of ones, (N, C, S) @ (S,):
    BLAS runs it along memory, several times faster than a reduction over axes (0, 2, 3).
    """
    if a.ndim == 2:
        return a.sum(axis=0)
    a3 = a.reshape(a.shape[0], a.shape[1], -1)
    ones = backend_of(a).xp.ones(a3.shape[2], dtype=a.dtype)
    return (a3 @ ones).sum(axis=0)


def channel_dot(a: Any, b: Any) -> Any:
    """``sum a * b`` over every axis but the channels, (N, C, ...) x2 -> (C,), in one pass."""
    xp = backend_of(a).xp
    if a.ndim == 2:
        return xp.einsum("nc,nc->c", a, b)
    return xp.einsum("ncs,ncs->c", a.reshape(a.shape[0], a.shape[1], -1),
                     b.reshape(b.shape[0], b.shape[1], -1))


def _centred(x: Any, mean: Any) -> Any:
    """``x - mean`` per channel, written into a recycled buffer."""
    xp = backend_of(x).xp
    return xp.subtract(x, _channel_view(mean, x.ndim), out=scratch(xp, "bn.xc", x.shape, x.dtype))


def _per_item(x: Any) -> int:
    return x.size // x.shape[0] if x.shape[0] else 0


def _in_blocks(xp: Any, n: int, per_item: int, work: Any) -> list:
    """``work(lo, hi)`` over the items range(n), one block per thread (``threads.for_batch``);
    the blocks' partial sums (tuples of (C,) arrays, or None) added in block order (repeatable
    for a given thread count). (Working each block in cache-sized chunks of images instead was
    1.11x SLOWER in a BN-network training step: ``benchmarks/ab_nets.py``, docs/speed.md.)"""
    parts = [p for p in for_batch(xp, n, work, per_item=per_item) if p is not None]
    return list(add_blocks(parts)) if parts else []


def batchnorm_forward(x: Any, gamma: Any = None, beta: Any = None, running_mean: Any = None,
                      running_var: Any = None, training: bool = True, momentum: float = 0.1,
                      eps: float = 1e-5):
    """``tinynet.functional.batchnorm_forward``, fast (same arguments, same results).

    Args:
        x: (N, C), (N, C, L) or (N, C, H, W).
        gamma, beta: (C,) scale and shift, or None (no affine transform: gamma = 1, beta = 0).
        running_mean, running_var: (C,) running averages or None. In training mode they are
            UPDATED IN PLACE (see the module docstring); in evaluation mode they normalise x.
        training: normalise with the batch's statistics (True) or the running ones (False).
            Evaluation without running statistics (None) uses the batch's, as PyTorch does.
        momentum: weight of the new batch in the running averages (a Python float).
        eps: added to the variance before the square root (keeps constant channels finite).

    Returns:
        ``(y, cache)``, y of the shape of x.

    Raises:
        ValueError: batch statistics with M = 1 value per channel (a variance of one number).
    """
    xp = backend_of(x).xp
    nd = x.ndim
    use_batch = training or running_mean is None
    eps = float(eps)
    threaded = _threaded(xp, x)
    xc = None
    if use_batch:
        m = check_batch_statistics(x.shape)
        # step 1: the batch statistics of each channel (biased variance normalises)
        if threaded:
            mean = _in_blocks(xp, x.shape[0], _per_item(x),
                              lambda a, b: (channel_sum(x[a:b]),))[0] / m
            xc = scratch(xp, "bn.xc", x.shape, x.dtype)
            mean_c = _channel_view(mean, nd)

            def centre(a: int, b: int) -> tuple:  # xc = x - mean, and its squares' sum
                xp.subtract(x[a:b], mean_c, out=xc[a:b])
                return (channel_dot(xc[a:b], xc[a:b]),)

            var = _in_blocks(xp, x.shape[0], _per_item(x), centre)[0] / m
        else:
            mean = channel_sum(x) / m
            xc = _centred(x, mean)
            var = channel_dot(xc, xc) / m
        if training and running_mean is not None:
            # step 1b: running averages, with the UNBIASED variance (PyTorch's convention)
            mom = float(momentum)
            unbiased = var * (m / (m - 1))
            running_mean *= 1.0 - mom
            running_mean += mom * mean.astype(running_mean.dtype, copy=False)
            running_var *= 1.0 - mom
            running_var += mom * unbiased.astype(running_var.dtype, copy=False)
    else:
        mean, var = (running_mean.astype(x.dtype, copy=False),
                     running_var.astype(x.dtype, copy=False))
    # step 2 and 3: normalise and scale in one factor per channel,
    # y = (x - mean) * inv_std * gamma + beta = xc * scale + beta
    inv_std = 1.0 / xp.sqrt(var + eps)
    scale = inv_std if gamma is None else gamma * inv_std
    y = scratch(xp, "bn.y", x.shape, x.dtype)
    if xc is None and not is_grad_enabled():
        # evaluation without a backward: y = x * scale + (beta - mean * scale), xc never written
        shift = -mean * scale if beta is None else beta - mean * scale
        _scale_shift(xp, x, scale, shift, y, threaded)
        return y, None
    if xc is None:
        xc = _centred(x, mean)
    _scale_shift(xp, xc, scale, beta, y, threaded)
    return y, BatchNormCache(xc, inv_std, gamma, bool(use_batch))


def _threaded(xp: Any, x: Any) -> bool:
    """Work in threads? (NumPy, (N, C, ...) with spatial axes)"""
    return getattr(xp, "__name__", "") == "numpy" and x.ndim >= 3


def _scale_shift(xp: Any, a: Any, scale: Any, shift: Any, out: Any, threaded: bool) -> None:
    """``out = a * scale + shift`` per channel (shift may be None), in threads when asked."""
    nd = a.ndim
    scale_c = _channel_view(scale, nd)
    shift_c = None if shift is None else _channel_view(shift, nd)

    def work(lo: int, hi: int) -> None:
        xp.multiply(a[lo:hi], scale_c, out=out[lo:hi])
        if shift_c is not None:
            out[lo:hi] += shift_c

    if not threaded:
        work(0, a.shape[0])
        return
    _in_blocks(xp, a.shape[0], _per_item(a), work)


def batchnorm_backward(dy: Any, cache: BatchNormCache):
    """Gradients of batch normalisation.

    **Backward:**
        ``dbeta = sum dy``, ``dgamma = sum dy * xhat`` (sums over every axis but the channels);
        training: ``dx = (gamma * inv_std / M) * (M * dy - dbeta - xhat * dgamma)``;
        evaluation: ``dx = dy * gamma * inv_std``.

    Args:
        dy: dL/dy, the shape of x.
        cache: from :func:`batchnorm_forward`.

    Returns:
        ``(dx, dgamma, dbeta)``: the shape of x, (C,), (C,) (dgamma, dbeta None without affine).
    """
    xc, inv_std, gamma, batch_stats = cache
    xp = backend_of(dy).xp
    nd = dy.ndim
    threaded = _threaded(xp, dy)
    # dL/dbeta and dL/dgamma: the shift adds dy, the scale multiplies xhat = xc * inv_std
    if threaded:  # both sums in one pass over dy and xc
        dbeta, dot = _in_blocks(xp, dy.shape[0], _per_item(dy),
                                lambda a, b: (channel_sum(dy[a:b]), channel_dot(dy[a:b], xc[a:b])))
    else:
        dbeta, dot = channel_sum(dy), channel_dot(dy, xc)
    dgamma = inv_std * dot
    scale = inv_std if gamma is None else gamma * inv_std  # (C,): dy -> dxhat -> d(x - mean)
    dx = scratch(xp, "bn.dx", dy.shape, dy.dtype)
    scale_c = _channel_view(scale, nd)
    if batch_stats:
        m = values_per_channel(dy.shape)
        # dx = scale * dy - scale/M * (dbeta + xhat * dgamma)
        #    = scale * dy - (scale * inv_std * dgamma / M) * xc - scale * dbeta / M
        k_xc = _channel_view(scale * inv_std * dgamma / m, nd)
        k_0 = _channel_view(scale * dbeta / m, nd)

    def work(a: int, b: int) -> None:  # dx of the items a..b-1
        xp.multiply(dy[a:b], scale_c, out=dx[a:b])
        if batch_stats:
            term = xp.multiply(xc[a:b], k_xc,
                               out=scratch(xp, "bn.term", xc[a:b].shape, dy.dtype))
            dx[a:b] -= term
            dx[a:b] -= k_0

    if threaded:
        _in_blocks(xp, dy.shape[0], _per_item(dy), work)
    else:
        work(0, dy.shape[0])
    if gamma is None:
        return dx, None, None
    return dx, dgamma, dbeta
