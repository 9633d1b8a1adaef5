"""Pure math: every op of the FCN and its backward pass, written once against ``xp``.

Nothing here keeps state; :mod:`minifcn.nn` wraps these in layers.
"""
from .activation import dropout, dropout_backward, dropout_mask, relu, relu_backward
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .im2col import col2im, conv_output_size, conv_transpose_output_size, im2col
from .loss import log_softmax, softmax_cross_entropy, softmax_cross_entropy_backward
from .pool import max_pool2d, max_pool2d_backward

__all__ = [
    "im2col", "col2im", "conv_output_size", "conv_transpose_output_size",
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward",
    "relu", "relu_backward", "dropout", "dropout_backward", "dropout_mask",
    "log_softmax", "softmax_cross_entropy", "softmax_cross_entropy_backward",
]
