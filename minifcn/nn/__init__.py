"""Layers: parameters + what backward needs + forward/backward over :mod:`minifcn.functional`."""
from .layers import (Conv2d, ConvTranspose2d, Dropout, Dropout2d, MaxPool2d, ReLU,
                     SoftmaxCrossEntropy)
from .module import Layer

__all__ = ["Layer", "Conv2d", "ConvTranspose2d", "ReLU", "MaxPool2d", "Dropout", "Dropout2d",
           "SoftmaxCrossEntropy"]
from .graph import Graph
from .structural import Add, Crop, PadTo, Scale

__all__ += ["Graph", "Add", "Crop", "PadTo", "Scale"]
