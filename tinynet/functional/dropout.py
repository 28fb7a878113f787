"""Dropout: forward and backward by hand ("inverted" dropout, as in PyTorch).

In training mode each value is kept with probability 1 - p and zeroed with probability p; the kept
values are divided by 1 - p, so that the expected output equals the input:

    mask = [u >= p] / (1 - p)      with u ~ U[0, 1) drawn afresh for every value and every batch
    y    = x * mask

In evaluation mode dropout does nothing (y = x): the scaling during training already made the
average activation match, so nothing needs rescaling at test time.

Shapes:
    x: any shape -> y: the same shape; the mask has the shape of x.

Backward:
    dL/dx = dL/dy * mask  (a dropped value had no effect on the loss; a kept one was scaled).
"""

from __future__ import annotations

from typing import Any

from ..backend import backend_of


def dropout_forward(x: Any, p: float = 0.5, training: bool = True, rng: Any = None):
    """Zero each value with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    ``y = x * mask``, ``mask = [u >= p] / (1 - p)``, ``u ~ U[0, 1)``.

    Args:
        x: any array.
        p: probability of dropping a value, in [0, 1]. ``p = 1`` drops everything (y = 0; nothing
            is divided by zero).
        training: drop (True) or pass x through unchanged (False).
        rng: a generator with ``random(shape, dtype=...)`` on x's device; default: the device's
            generator (``tinynet.backend.get_backend(device).rng()``, seeded by
            ``tinynet.manual_seed``).

    Returns:
        ``(y, mask)`` with y and mask of the shape of x; mask is None when nothing was dropped
        (evaluation mode or p = 0), so backward passes dy through.

    Backward: see :func:`dropout_backward`.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p}")
    if not training or p == 0.0:
        return x, None
    backend = backend_of(x)
    xp = backend.xp
    if p == 1.0:
        mask = xp.zeros(x.shape, dtype=x.dtype)  # everything dropped: no 1/(1-p) to compute
        return x * mask, mask
    # u ~ U[0, 1) in x's dtype; keep where u >= p (probability 1 - p), then scale by 1/(1 - p)
    u = (rng if rng is not None else backend.rng()).random(x.shape, dtype=x.dtype)
    mask = u >= p
    scale = x.dtype.type(1.0 / (1.0 - p))
    mask = mask.astype(x.dtype)
    mask *= scale
    return x * mask, mask


def dropout_backward(dy: Any, mask: Any):
    """**Backward:** ``dx = dy * mask`` (``dx = dy`` when the forward dropped nothing).

    Returns:
        dx of the shape of dy.
    """
    if mask is None:
        return dy
    return dy * mask
