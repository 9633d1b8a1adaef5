r"""ReLU and dropout, forward and backward.

- ReLU: ``y = max(x, 0)``; ``dx = dy * [x > 0]`` (0 at the kink x = 0, as torch).
- Dropout (inverted): in training, ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``,
  so ``E[y] = x`` and nothing needs rescaling at test time; in eval mode ``y = x``.
  ``dx = dy * m / (1 - p)`` — the backward pass reuses the very mask of the forward pass.
  The channel-wise form (``Dropout2d``) draws one ``m`` per (n, c) feature map.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_array_module
from ._checks import check_array, shape_of
from ._select import all_finite, select


def relu(x):
    """``y = max(x, 0)``."""
    xp = get_array_module(x)
    if xp is not np and x.dtype in (np.float32, np.float64):
        from ..kernels import gpu_relu
        return gpu_relu(x)
    return xp.maximum(x, 0)


def relu_backward(dy, y):
    """``dx = dy * [y > 0]`` — computed from the output ``y``, which is > 0 exactly
    where the input was (so the layer keeps one array, not two).

    Shapes: dy, y (any, equal) -> dx (same). Why: ``max(x, 0)`` has slope 1 where
    ``x > 0`` and 0 where ``x < 0``; at the kink ``x = 0`` we take 0, as torch does.
    It is a select, not a product: where ``y <= 0``, ``dx`` is 0 even if ``dy`` is inf or
    NaN (as in torch and the CUDA kernel).
    """
    check_array(dy, "relu_backward: grad_output")
    check_array(y, "relu_backward: the forward output y")
    if dy.shape != y.shape:
        raise ValueError(f"relu_backward: grad_output {shape_of(dy)} does not "
                         f"match the forward output {shape_of(y)}")
    xp = get_array_module(dy)
    if xp is not np:
        from ..kernels import gpu_relu_backward
        return gpu_relu_backward(dy, y)
    keep = y > 0
    return select(np.empty(dy.shape, np.result_type(dy, keep)), dy, keep, all_finite(dy))


def check_p(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be a number in [0, 1], got {p!r}")
    return float(p)


def check_dropout_input(x):
    """Dropout scales the kept values by ``1/(1-p)``: only floating-point input can hold them."""
    if getattr(getattr(x, "dtype", None), "kind", None) != "f":
        raise ValueError("dropout: input must be a floating-point array (the kept values are "
                         f"scaled by 1/(1-p)), got {getattr(x, 'dtype', type(x).__name__)}")


def dropout_mask(shape, p, rng, dtype, xp=np, channelwise=False):
    """The scaled keep-mask ``m / (1 - p)``: 0 with probability p, else ``1/(1-p)``.

    ``rng`` is a ``numpy.random.Generator`` (or CuPy's); ``channelwise`` draws one value
    per (n, c) for (N, C, H, W) inputs, broadcast over H and W.
    """
    p = check_p(p)
    if channelwise:
        if len(shape) != 4:
            raise ValueError(f"channel-wise dropout needs a 4-D input (N, C, H, W), got shape {shape}")
        shape = (shape[0], shape[1], 1, 1)
    if p == 1.0:                        # everything dropped; avoid 0 * inf = NaN
        return xp.zeros(shape, dtype=dtype)
    keep = xp.asarray(rng.random(shape, dtype=np.float32) >= p)   # the draws may be host ones
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))


def dropout(x, p=0.5, training=True, rng=None, channelwise=False):
    """Inverted dropout. Returns ``(y, mask)``; ``mask`` is None when nothing is dropped
    (eval mode or p = 0), else the scaled mask to hand to :func:`dropout_backward`."""
    p = check_p(p)
    if not isinstance(training, (bool, np.bool_)):     # 'no' would read as True
        raise ValueError(f"dropout: training must be True or False, got {training!r}")
    if not training or p == 0.0:
        return x, None                     # the identity: any dtype, as torch
    check_dropout_input(x)
    xp = get_array_module(x)
    if rng is None:
        rng = xp.random.default_rng()
    elif not callable(getattr(rng, "random", None)) or isinstance(rng, (int, np.integer)):
        raise ValueError(f"dropout: rng must be a random Generator (numpy.random.default_rng(), "
                         f"or CuPy's), got {type(rng).__name__}")
    if xp is not np and x.dtype in (np.float32, np.float64):
        from ..kernels import gpu_dropout          # same draws, one fused pass
        return gpu_dropout(x, p, rng, channelwise)
    mask = dropout_mask(x.shape, p, rng, x.dtype, xp, channelwise)
    return x * mask, mask


def dropout_backward(dy, mask):
    """``dx = dy * mask`` with the forward pass's own mask (identity if mask is None).

    Shapes: dy like the forward input; mask broadcastable to it ((N, C, 1, 1) for the
    channel-wise form) -> dx like dy. Why: for a fixed mask ``y = x * mask`` is linear,
    with slope ``mask`` per element; a fresh mask would differentiate another function.
    """
    if mask is None:
        return dy
    check_array(dy, "dropout_backward: grad_output")
    check_array(mask, "dropout_backward: mask")
    shape, mshape = tuple(getattr(dy, "shape", ())), tuple(getattr(mask, "shape", ()))
    if mshape != shape and not (len(shape) == 4 and mshape == shape[:2] + (1, 1)):
        raise ValueError(f"dropout_backward: the mask {mshape} must have the grad_output's shape "
                         f"{shape} (or {shape[:2] + (1, 1)} for channel-wise dropout)")
    if get_array_module(dy) is not np:
        from ..kernels import gpu_dropout_backward
        return gpu_dropout_backward(dy, mask)
    return dy * mask
