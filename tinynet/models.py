"""Ready-made networks: the course network for Fashion-MNIST.

The course notes build one network, layer by layer; :func:`course_cnn` is that network as a
:class:`~tinynet.nn.Sequential`, with the same layers, order and state-dict keys (``0.weight``,
``0.bias``, ``3.weight``, ...) as the PyTorch version, so weights can be compared key by key.
"""

from __future__ import annotations

from typing import Any

from . import nn


def course_cnn(dtype: Any = None, device: Any = None) -> nn.Sequential:
    """The course's CNN: two conv blocks, flatten, three fully connected layers, 10 class scores.

    Args:
        dtype: float32 (default: ``tinynet.get_default_dtype()``) or float64.
        device: ``'cpu'`` or ``'cuda'`` (default: the default device).

    Shape:
        - Input: (N, 1, 28, 28): a batch of grey 28x28 images, [batch, channels, height, width].
        - Output: (N, 10): one raw score (logit) per class; feed it to ``CrossEntropyLoss``.

        Through the network (conv: ``H_out = H - kernel + 1``; pool: ``H_out = floor(H / 2)``)::

            (N,1,28,28) -conv5-> (N,6,24,24) -pool2-> (N,6,12,12)
                        -conv5-> (N,12,8,8)  -pool2-> (N,12,4,4) -flatten-> (N,192)
                        -> (N,120) -> (N,60) -> (N,10)

    Backward:
        ``model.backward(dL/dlogits)`` runs every module's backward, last first, filling each
        layer's ``weight.grad`` and ``bias.grad`` and returning dL/dinput of shape (N, 1, 28, 28).

    Layers vs operations: only ``Conv2d`` and ``Linear`` are *layers* (they own weights that
    training changes: 5 layers, 32,998 weights in all); ``ReLU``, ``MaxPool2d`` and ``Flatten`` are
    *operations* (no weights: the same computation for ever).

    Example::

        >>> model = course_cnn()
        >>> model(x).shape            # x: (64, 1, 28, 28)
        (64, 10)
    """
    kw = dict(dtype=dtype, device=device)
    return nn.Sequential(
        # Layer 1 (convolution). in_channels=1 is data-dependent: grey images have ONE channel
        # (colour images would need 3). out_channels=6 filters and kernel_size=5 are
        # hyperparameters we chose. (N,1,28,28) -> (N,6,24,24): 28 - 5 + 1 = 24.
        nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5, **kw),  # key 0: weights (6,1,5,5)
        nn.ReLU(),  # operation: max(x, 0), no weights
        nn.MaxPool2d(kernel_size=2),  # operation: max of each 2x2 window -> (N,6,12,12)
        # Layer 2 (convolution). in_channels=6 must equal the previous layer's out_channels:
        # each of its 12 filters looks at all 6 feature maps. (N,6,12,12) -> (N,12,8,8).
        nn.Conv2d(in_channels=6, out_channels=12, kernel_size=5, **kw),  # key 3: (12,6,5,5)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2),  # -> (N,12,4,4)
        # Flatten before Linear: a Linear layer takes one vector per image, so the rank-4 tensor
        # (N,12,4,4) becomes the rank-2 tensor (N,192), 192 = 12 channels * 4 * 4 pixels.
        nn.Flatten(),
        # Layer 3 (fully connected). in_features=192 follows from the shapes above.
        nn.Linear(in_features=192, out_features=120, **kw),  # key 7: weights (120,192)
        nn.ReLU(),
        # Layer 4 (fully connected): 120 and 60 are hyperparameters (each layer shrinks).
        nn.Linear(in_features=120, out_features=60, **kw),  # key 9: weights (60,120)
        nn.ReLU(),
        # Layer 5, the output layer. out_features=10 is data-dependent: Fashion-MNIST has 10
        # classes, and we want one score per class. No ReLU: the loss takes raw scores.
        nn.Linear(in_features=60, out_features=10, **kw),  # key 11: weights (10,60)
    )


__all__ = ["course_cnn"]
