"""Optimizers: how the weights move once backprop has filled in their gradients."""

from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD"]
