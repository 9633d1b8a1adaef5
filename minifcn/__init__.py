"""minifcn: a from-scratch NumPy/CuPy Fully Convolutional Network.

Every layer has a hand-written backward pass; transposed convolution runs forward as
GEMM + col2im and backward as im2col + GEMM. See README.md for the map of the package.
"""
__version__ = "0.1.0"
