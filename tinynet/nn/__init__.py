"""Modules: layers that own weights (Conv2d, Linear, BatchNorm) and operations that do not (ReLU,
MaxPool2d, AvgPool2d, Flatten, Dropout), the Sequential container and the loss."""

from .activation import ReLU
from .avgpool import AdaptiveAvgPool2d, AvgPool2d
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import Conv2d
from .dropout import Dropout
from .flatten import Flatten
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Module, Parameter, Sequential
from .pooling import MaxPool2d

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    # the course network
    "Conv2d",
    "Linear",
    "ReLU",
    "MaxPool2d",
    "Flatten",
    "CrossEntropyLoss",
    # beyond it
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
]
