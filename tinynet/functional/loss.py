"""Softmax cross-entropy from logits: forward and backward by hand.

    p[n, k] = exp(z[n, k]) / sum_j exp(z[n, j])          (softmax over the classes)
    L = -(1/N) * sum_n log p[n, y_n]                     (mean over the batch)
      = (1/N) * sum_n ( logsumexp(z[n]) - z[n, y_n] )

Shapes: logits z (N, K), labels y (N,) integers in [0, K) -> L a 0-d array.

Stability: logsumexp(z) = m + log(sum exp(z - m)) with m = max_k z[n, k], so no exp overflows even
for logits of magnitude 1e4.

Backward (the famous simple form):
    dL/dz[n, k] = (p[n, k] - [k == y_n]) / N
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_of


class CrossEntropyCache(NamedTuple):
    probs: Any  # (N, K) softmax probabilities
    labels: Any  # (N,)


def cross_entropy_forward(logits: Any, labels: Any):
    """Mean softmax cross-entropy. Returns ``(loss, cache)`` with loss a 0-d array."""
    xp = backend_of(logits).xp
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)  # the max is 0: exp never overflows
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_sum_exp = xp.log(sum_exp)
    rows = xp.arange(n)
    # L = mean(logsumexp - z_y), with the shift cancelling out
    loss = (log_sum_exp[:, 0] - shifted[rows, labels]).mean()
    probs = exp / sum_exp
    return loss, CrossEntropyCache(probs, labels)


def cross_entropy_backward(cache: CrossEntropyCache, grad: Any = 1.0):
    """``dL/dz = (softmax(z) - one_hot(y)) / N``, times the upstream gradient ``grad``."""
    xp = backend_of(cache.probs).xp
    probs, labels = cache
    n = probs.shape[0]
    dz = probs.copy()
    dz[xp.arange(n), labels] -= 1
    scale = xp.asarray(grad, dtype=probs.dtype) / n
    dz *= scale
    return dz
