"""CrossEntropyLoss: how wrong the class scores (logits) are, and its gradient."""

from __future__ import annotations

from typing import Any

from .. import backend as B
from .. import kernels
from ._checks import check_float_input
from .module import Module


class CrossEntropyLoss(Module):
    r"""Softmax cross-entropy from logits, averaged over the batch.

    ``L = mean_n( logsumexp(z[n]) - z[n, y_n] )`` (see :mod:`tinynet.functional.loss`).

    Shape:
        - logits: (N, K) raw class scores (no softmax before this loss).
        - labels: (N,) integers in [0, K).
        - Output: a 0-d array; ``float(loss)`` gives the number.

    Backward:
        ``loss_fn.backward()`` returns ``dL/dz = (softmax(z) - one_hot(y)) / N``: the start of
        backpropagation, to pass to ``model.backward``.

    Example::

        >>> loss_fn = CrossEntropyLoss()
        >>> loss = loss_fn(model(x), y)      # forward
        >>> model.backward(loss_fn.backward())
    """

    def forward(self, logits: Any, labels: Any) -> Any:
        xp = self._validate(logits, labels)
        loss, cache = kernels.cross_entropy_forward(logits, xp.asarray(labels))
        self.save_for_backward(cache)
        return loss

    def backward(self, grad_output: Any = 1.0) -> Any:
        cache = self.saved()
        if getattr(grad_output, "shape", ()) != ():
            raise ValueError(
                "CrossEntropyLoss.backward: the loss is a scalar, so its upstream gradient must be "
                f"a number or a 0-d array, got shape {tuple(grad_output.shape)}"
            )
        return kernels.cross_entropy_backward(cache, grad_output)

    def _validate(self, logits: Any, labels: Any) -> Any:
        where = "CrossEntropyLoss"
        check_float_input(where, logits)
        if logits.ndim != 2:
            raise ValueError(
                f"{where}: expected logits of shape (N, classes), got shape {tuple(logits.shape)}"
                + (" — flatten the model's output first" if logits.ndim > 2 else "")
            )
        n, k = logits.shape
        backend = B.backend_of(logits)
        xp = backend.xp
        if isinstance(labels, (list, tuple)):
            labels = backend.asarray(labels)
        if not hasattr(labels, "dtype"):
            raise TypeError(f"{where}: labels must be an array of class indices, got "
                            f"{type(labels).__name__}")
        B.check_same_device(f"{where} (labels)", labels, backend.device)
        if labels.dtype.kind not in "iu":
            raise TypeError(
                f"{where}: labels must be integer class indices (N,), got dtype {labels.dtype}"
                + (" — convert with labels.astype('int64')" if labels.dtype.kind == "f" else "")
            )
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(
                f"{where}: expected labels of shape ({n},) to match logits of shape {(n, k)}, got "
                f"labels of shape {tuple(labels.shape)}"
            )
        if n == 0:
            raise ValueError(f"{where}: empty batch (0 samples)")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{where}: labels must lie in [0, {k - 1}] for {k} classes, got {bad}. Check that "
                "the last Linear layer's out_features equals the number of classes"
            )
        if not bool(xp.isfinite(logits).all()):
            raise ValueError(
                f"{where}: the logits contain NaN or inf: the model has diverged. Try a lower "
                "learning rate (or check the input normalisation)"
            )
        return xp
