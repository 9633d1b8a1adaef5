"""The layers of an FCN, with torch's constructor signatures, over :mod:`minifcn.functional`.

Each layer keeps exactly what its backward pass needs (the input for a convolution, the
output for a ReLU, the winning taps for a max pool, the mask for a dropout).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .. import functional as F
from ..backend import get_array_module
from ..functional._checks import check_ignore_index, pair, shape_of
from ..functional._select import all_finite
from ..functional.conv import check_algorithm
from ..functional.separable import (axis_matrix, conv_transpose2d_separable,
                                    conv_transpose2d_separable_input_grad, separable_factors)
from .module import Layer, default_rng


def _check_counts(name, **counts):
    for param, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: {param} must be a positive int, got {v!r}")


def _check_channels(name, x, expected):
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name}: input must be a 4-D array (N, C, H, W), got {shape_of(x)}")
    if x.shape[1] != expected:
        raise ValueError(f"{name}: expected {expected} input channels, got input of shape {tuple(x.shape)}")


def _check_backward(name, dy, expected_shape):
    if expected_shape is None:
        raise RuntimeError(f"{name}: backward() called before forward()")
    if tuple(getattr(dy, "shape", ())) != tuple(expected_shape):
        raise ValueError(f"{name}: backward got grad of {shape_of(dy)}, "
                         f"but forward produced {tuple(expected_shape)}")


class _ConvBase(Layer):
    """Shared by Conv2d and ConvTranspose2d: weight + optional bias, torch's default init
    (uniform in +-1/sqrt(fan_in), fan_in = weight.shape[1] * kh * kw, for both)."""

    def __init__(self, weight_shape, bias, dtype, seed):
        super().__init__()
        rng = default_rng(seed)
        fan_in = weight_shape[1] * weight_shape[2] * weight_shape[3]
        bound = 1.0 / math.sqrt(fan_in)
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise ValueError(f"{type(self).__name__}: dtype must be a floating-point type "
                             f"(float32 or float64 run everywhere), got {dtype}")
        self.params["weight"] = rng.uniform(-bound, bound, weight_shape).astype(dtype)
        if bias:
            n_out = self._n_out(weight_shape)
            self.params["bias"] = rng.uniform(-bound, bound, (n_out,)).astype(dtype)
        self._x = None
        self._y_shape = None

    def _set_geometry(self, name, in_channels, out_channels, kernel_size, stride, padding,
                      dilation, groups):
        """Check and store the arguments both convolutions share."""
        _check_counts(name, in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = (int(in_channels), int(out_channels),
                                                            int(groups))
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation", minimum=1)
        self.need_input_grad = True

    @property
    def weight(self):
        return self.params["weight"]

    @property
    def bias(self):
        return self.params.get("bias")

    def clear_cache(self):
        self._x = None

    def _needs_bias_grad(self):
        return self.bias is not None and "bias" not in self.frozen

    def _store_grads(self, dw, db, dx):
        """Frozen parameters get no gradient (and cost no GEMM)."""
        for name, grad in (("weight", dw), ("bias", db)):
            if grad is None:
                self.grads.pop(name, None)
            else:
                self.grads[name] = grad
        return dx


class Conv2d(_ConvBase):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True)``; weight (O, C/groups, kh, kw).  See :func:`minifcn.functional.conv2d`.

    ``need_input_grad=False`` skips computing dx (the trainer sets it on a model, which
    passes it to its first layer: nothing upstream of conv1_1 to train).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, dtype=np.float32, seed=None):
        self._set_geometry("Conv2d", in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups)
        kh, kw = self.kernel_size
        super().__init__((out_channels, in_channels // groups, kh, kw), bias, dtype, seed)

    @staticmethod
    def _n_out(weight_shape):
        return weight_shape[0]

    def forward(self, x):
        _check_channels("Conv2d", x, self.in_channels)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dy):
        _check_backward("Conv2d", dy, self._y_shape)
        dx, dw, db = F.conv2d_backward(dy, self._x, self.weight, self.stride, self.padding,
                                       self.dilation, self.groups,
                                       need_input_grad=self.need_input_grad,
                                       need_weight_grad="weight" not in self.frozen,
                                       need_bias_grad=self._needs_bias_grad())
        return self._store_grads(dw, db, dx)

    def output_shape(self, in_shape):
        n, _, h, w = in_shape
        return (n, self.out_channels) + tuple(
            F.conv_output_size(size, k, s, p, d) for size, k, s, p, d in
            zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))

    def coord_map(self):
        # output pixel o sees inputs o*s - p .. o*s - p + d(k-1): centre o*s + d(k-1)/2 - p
        return tuple((Fraction(s), Fraction(d * (k - 1), 2) - p) for k, s, p, d in
                     zip(self.kernel_size, self.stride, self.padding, self.dilation))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}"
                + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + ("" if self.bias is not None else ", bias=False"))


class ConvTranspose2d(_ConvBase):
    """``ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0, groups=1, bias=True, dilation=1)``; weight (C_in, C_out/groups, kh, kw).

    Forward GEMM + col2im, backward im2col + GEMM: see
    :func:`minifcn.functional.conv_transpose2d`. ``algorithm`` picks the col2im strategy.
    With ``'auto'`` on the CPU, a frozen weight that upsamples each channel on its own with
    one separable kernel (FCN's bilinear upsamplers) runs as two 1-D transposed
    convolutions per channel (:mod:`minifcn.functional.separable`, :meth:`_separable_axes`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, dtype=np.float32,
                 seed=None, algorithm="auto"):
        self._set_geometry("ConvTranspose2d", in_channels, out_channels, kernel_size, stride,
                           padding, dilation, groups)
        kh, kw = self.kernel_size
        self.output_padding = pair(output_padding, "output_padding", minimum=0)
        for axis in range(2):
            if self.output_padding[axis] >= max(self.stride[axis], self.dilation[axis]):
                raise ValueError(f"ConvTranspose2d: output_padding {self.output_padding} must be "
                                 f"smaller than max(stride, dilation) = "
                                 f"{max(self.stride[axis], self.dilation[axis])}")
        # the geometry's part of the check here; that 'winograd' runs on NumPy arrays
        # only, at forward (the layer may move to the GPU meanwhile)
        check_algorithm(algorithm, self.kernel_size, self.stride, self.dilation, groups,
                        owner="ConvTranspose2d: ")
        self.algorithm = algorithm
        self._axes = None           # the separable path's matrices, when the forward took it
        super().__init__((in_channels, out_channels // groups, kh, kw), bias, dtype, seed)

    def _n_out(self, weight_shape):
        return weight_shape[1] * self.groups

    def output_size(self, size):
        """(H, W) of the output for an (H, W) input: the formula of the notes."""
        h, w = pair(size, "size", minimum=1)
        return tuple(F.conv_transpose_output_size(n, k, s, p, d, op) for n, k, s, p, d, op in
                     zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation,
                         self.output_padding))

    def output_shape(self, in_shape):
        return (in_shape[0], self.out_channels) + self.output_size(in_shape[2:])

    def coord_map(self):
        # the inverse of the convolution's map: o_in = (o_out - (d(k-1)/2 - p)) / s
        return tuple((Fraction(1, s), -(Fraction(d * (k - 1), 2) - p) / s) for k, s, p, d in
                     zip(self.kernel_size, self.stride, self.padding, self.dilation))

    def _separable_axes(self, x):
        """The two 1-D matrices of :mod:`minifcn.functional.separable` when this layer may
        run as them: on the CPU, ``algorithm='auto'``, a frozen weight that upsamples each
        channel on its own with one separable kernel (FCN's bilinear upsamplers), no bias,
        dilation 1, a finite input of the weight's dtype and a non-empty output. Else None:
        the general path (which also says what is wrong with a bad input). (One dtype:
        the kernel's factors hold it to a few units in the last place of its dtype, so a
        float64 input on a float32 weight would get float32's accuracy.)"""
        w = self.weight
        if (self.algorithm != "auto" or "weight" not in self.frozen or self.bias is not None
                or self.dilation != (1, 1) or self.groups != 1
                or type(x) is not np.ndarray or type(w) is not np.ndarray
                or x.dtype != w.dtype or x.dtype.kind != "f" or x.size == 0):
            return None
        size_out = self.output_size(x.shape[2:])
        if min(size_out) < 1 or not all_finite(x):      # (inf * 0: keep torch's NaN pattern)
            return None
        factors = separable_factors(w)
        if factors is None:
            return None
        return tuple(axis_matrix(k, n_in, s, p, n_out) for k, n_in, s, p, n_out in
                     zip(factors, x.shape[2:], self.stride, self.padding, size_out))

    def forward(self, x):
        _check_channels("ConvTranspose2d", x, self.in_channels)
        self._axes = self._separable_axes(x)
        if self._axes is not None:
            y = conv_transpose2d_separable(x, *self._axes)
        else:
            y = F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                   self.output_padding, self.groups, self.dilation,
                                   self.algorithm)
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dy):
        _check_backward("ConvTranspose2d", dy, self._y_shape)
        if (self._axes is not None and type(dy) is np.ndarray and dy.dtype == self.weight.dtype
                and all_finite(dy)):
            # (the forward ran separable: the weight is frozen and there is no bias)
            dx = (conv_transpose2d_separable_input_grad(dy, *self._axes)
                  if self.need_input_grad else None)
            return self._store_grads(None, None, dx)
        dx, dw, db = F.conv_transpose2d_backward(
            dy, self._x, self.weight, self.stride, self.padding, self.output_padding,
            self.groups, self.dilation, need_input_grad=self.need_input_grad,
            need_weight_grad="weight" not in self.frozen, need_bias_grad=self._needs_bias_grad(),
            algorithm=self.algorithm)
        return self._store_grads(dw, db, dx)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}"
                + (f", output_padding={self.output_padding}" if any(self.output_padding) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + ("" if self.bias is not None else ", bias=False"))


def _writable_host_float(x):
    """Can an ``inplace`` layer write its result over ``x``: a writeable NumPy float array."""
    return get_array_module(x) is np and x.dtype.kind == "f" and x.flags.writeable


class ReLU(Layer):
    """``y = max(x, 0)``; keeps y (y > 0 exactly where x > 0).

    ``inplace=True`` writes y over x on the CPU (no new array: the networks use it, each
    ReLU being its convolution's only reader). On the GPU the kernel writes a fresh array
    from CuPy's memory pool, and x is left as it was."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)
        self._y = None

    def forward(self, x):
        if self.inplace and _writable_host_float(x):
            self._y = np.maximum(x, 0, out=x)
        else:
            self._y = F.relu(x)
        return self._y

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""

    def backward(self, dy):
        _check_backward("ReLU", dy, None if self._y is None else self._y.shape)
        return F.relu_backward(dy, self._y)

    def clear_cache(self):
        self._y = None


class MaxPool2d(Layer):
    """``MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False)``; keeps the winning tap of each window."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d: return_indices=True is not supported "
                             "(the layer keeps the indices for its own backward)")
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation", minimum=1)
        self.ceil_mode = bool(ceil_mode)
        self._tap = self._in_size = None

    def forward(self, x):
        y, self._tap = F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                    self.dilation, self.ceil_mode, return_indices=True)
        self._in_size = x.shape[2:]
        return y

    def backward(self, dy):
        _check_backward("MaxPool2d", dy, None if self._tap is None else self._tap.shape)
        return F.max_pool2d_backward(dy, self._tap, self._in_size, self.kernel_size,
                                     self.stride, self.padding, self.dilation, self.ceil_mode)

    def clear_cache(self):
        self._tap = None

    def output_shape(self, in_shape):
        return tuple(in_shape[:2]) + tuple(
            F.conv_output_size(size, k, s, p, d, self.ceil_mode) for size, k, s, p, d in
            zip(in_shape[2:], self.kernel_size, self.stride, self.padding, self.dilation))

    def coord_map(self):
        return tuple((Fraction(s), Fraction(d * (k - 1), 2) - p) for k, s, p, d in
                     zip(self.kernel_size, self.stride, self.padding, self.dilation))

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + (", ceil_mode=True" if self.ceil_mode else ""))


class Dropout(Layer):
    """``Dropout(p=0.5)``: inverted dropout, element-wise; identity in eval mode.

    ``seed`` makes the masks reproducible (a NumPy Generator is drawn from it; on the GPU a
    CuPy generator seeded from the same stream). ``inplace=True`` writes y over x on the
    CPU in training (the same mask); as in torch, not for a map another layer keeps for
    its backward."""

    channelwise = False

    def __init__(self, p=0.5, inplace=False, *, seed=None):
        super().__init__()
        self.p = F.activation.check_p(p)
        self.inplace = bool(inplace)
        self.rng = default_rng(seed)
        self._mask = None
        self._shape = None

    def _rng_for(self, x):
        """The NumPy generator on the CPU; on the GPU a CuPy generator seeded afresh from it
        at every call, so the NumPy generator's state alone decides every mask (and a
        checkpoint that saves it resumes the same masks on either device)."""
        xp = get_array_module(x)
        if xp is np:
            return self.rng
        seed = int(self.rng.integers(2**63))
        try:        # Philox starts in no time; XORWOW (default_rng) spends ~0.5 ms seeding
            return xp.random.Generator(xp.random.Philox4x3210(seed))
        except AttributeError:
            return xp.random.default_rng(seed)

    def forward(self, x):
        rng = self._rng_for(x) if (self.training and self.p > 0) else None
        if rng is not None and self.inplace and _writable_host_float(x):
            self._mask = F.dropout_mask(x.shape, self.p, rng, x.dtype, np, self.channelwise)
            y = np.multiply(x, self._mask, out=x)
        else:
            y, self._mask = F.dropout(x, self.p, self.training, rng, self.channelwise)
        self._shape = x.shape
        return y

    def backward(self, dy):
        _check_backward(type(self).__name__, dy, self._shape)
        return F.dropout_backward(dy, self._mask)

    def clear_cache(self):
        self._mask = None

    def extra_repr(self):
        return f"p={self.p}" + (", inplace=True" if self.inplace else "")


class Dropout2d(Dropout):
    """``Dropout2d(p=0.5)``: drops whole feature maps (one draw per (n, c))."""

    channelwise = True


class SoftmaxCrossEntropy:
    """``SoftmaxCrossEntropy(ignore_index=255, reduction='mean')``.

    ``loss = crit.forward(logits, labels)`` returns a float; ``crit.backward()`` returns
    d loss / d logits. See :mod:`minifcn.functional.loss` for the formula. ``counted``:
    how many pixels the last forward counted (labels other than ``ignore_index``).

    The backward reuses what the forward checked and counted (on the GPU each check and
    count is a wait for the device).
    """

    def __init__(self, ignore_index=255, reduction="mean"):
        if reduction not in F.loss.REDUCTIONS:
            raise ValueError(f"reduction must be one of {F.loss.REDUCTIONS}, got {reduction!r}")
        self.ignore_index = check_ignore_index(ignore_index, "SoftmaxCrossEntropy: ignore_index")
        self.reduction = reduction
        self._logits = self._labels = self._log_probs = None
        self.counted = None

    def forward(self, logits, labels):
        self._logits = self._labels = self._log_probs = self.counted = None   # no stale state
        F.loss._check(logits, labels, self.ignore_index, self.reduction)
        loss, self._log_probs, self.counted = F.loss._forward(logits, labels, self.ignore_index,
                                                              self.reduction)
        self._logits, self._labels = logits, labels
        return loss

    __call__ = forward

    def backward(self):
        if self._logits is None:
            raise RuntimeError("SoftmaxCrossEntropy: backward() called before forward()")
        log_probs, self._log_probs = self._log_probs, None    # used once: not held any longer
        return F.loss._backward(self._logits, self._labels, self.ignore_index, self.reduction,
                                log_probs, self.counted)
