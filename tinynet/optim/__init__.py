"""Optimizers: how the weights move once backprop has filled in their gradients."""

from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD"]

# Beyond the course network: Adam/AdamW and learning-rate schedules
from . import lr_scheduler  # noqa: E402
from .adam import Adam, AdamW  # noqa: E402
from .lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR  # noqa: E402

__all__ += ["Adam", "AdamW", "lr_scheduler", "LRScheduler", "StepLR", "CosineAnnealingLR",
            "OneCycleLR"]
