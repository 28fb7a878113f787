"""Modules: layers that own weights (Conv2d, Linear) and operations that do not (ReLU, MaxPool2d,
Flatten), the Sequential container and the loss."""

from .activation import ReLU
from .conv import Conv2d
from .flatten import Flatten
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Module, Parameter, Sequential
from .pooling import MaxPool2d

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    "Conv2d",
    "Linear",
    "ReLU",
    "MaxPool2d",
    "Flatten",
    "CrossEntropyLoss",
]
