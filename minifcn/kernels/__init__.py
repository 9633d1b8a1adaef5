"""Hand-written CUDA kernels for the ops whose CuPy spelling would be slow or memory-hungry.

Each kernel has a NumPy twin in :mod:`minifcn.functional`, and the functional code calls
the ``gpu_*`` functions below from its ``if xp is not np:`` branches:

=============================  ==========================  ===================================
kernel source                  GPU entry point             NumPy twin
=============================  ==========================  ===================================
``im2col.cu``                  gpu_im2col, gpu_col2im      functional/im2col.py
``conv_transpose.cu``          gpu_conv_transpose2d        functional/conv.py
                                                           (``_conv_transpose2d_fused``)
``pool.cu``                    gpu_max_pool2d(_backward)   functional/pool.py
``activation.cu``              gpu_relu(_backward),        functional/activation.py
                               gpu_dropout(_backward)
``loss.cu``                    gpu_softmax_cross_entropy   functional/loss.py
                               (_backward)
=============================  ==========================  ===================================

GEMMs are not here: they go to cuBLAS through ``cupy.matmul`` (except inside
``conv_transpose.cu``, whose kernel computes the few multiply-adds of a small transposed
convolution itself, to make it one launch).

Layout of this package: ``*.cu`` (the CUDA C, shared helpers in ``common.cuh``),
:mod:`.runtime` (compile with NVRTC through ``cupy.RawModule``, cache, launch sizes) and
:mod:`.ops` (host code: dtypes, outputs, scalar packing). The tests run ``ops`` and the
``.cu`` files on the CPU through ``tests/cuda_emu``, and on a GPU when there is one.

Two things the GPU does that the CPU emulation does not: CuPy compiles every kernel with
``-ftz=true`` (it appends the option to any caller's), so float32 *subnormals* (below
~1.2e-38) read and write as zero there: ReLU of 1e-40 gives 0 on the GPU and 1e-40 on
the CPU, and a comparison may take such a value for 0 (max pooling would see a tie).
And NVRTC contracts a multiply and an add into one fused multiply-add (its default
``--fmad=true``), so the float32 results of the kernels that compute (the fused
transposed convolution, the optimizer updates in :mod:`.fused`) differ from NumPy's in
the last bits. The GPU tests compare with tolerances, and use no subnormal inputs.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import ops
from .runtime import cupy_runtime


def gpu_im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """``col[n,c,i,j,oh,ow] = x[n,c,oh*sh+i*dh-ph, ow*sw+j*dw-pw]`` (0 outside the image)."""
    return ops.im2col(cupy_runtime(), x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


def gpu_col2im(col, h, w, sh, sw, ph, pw, dh, dw):
    """The adjoint of :func:`gpu_im2col`, as a gather (no atomics, deterministic)."""
    return ops.col2im(cupy_runtime(), col, h, w, sh, sw, ph, pw, dh, dw)


def gpu_conv_transpose2d(x, weight, bias, groups, hout, wout, sh, sw, ph, pw, dh, dw):
    """torch's ``conv_transpose2d`` in one launch: col2im with the GEMM fused in."""
    return ops.conv_transpose2d(cupy_runtime(), x, weight, bias, groups, hout, wout,
                                sh, sw, ph, pw, dh, dw)


def gpu_max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """Returns ``(y, tap)``; tap (int32) is ``u*kw + v`` of each window's first maximum."""
    return ops.max_pool2d(cupy_runtime(), x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


def gpu_max_pool2d_backward(dy, tap, h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    """dx (N, C, h, w): every pixel sums dy over the windows it won (a gather)."""
    return ops.max_pool2d_backward(cupy_runtime(), dy, tap, h, w, kh, kw, sh, sw, ph, pw, dh, dw)


def gpu_relu(x):
    return ops.relu(cupy_runtime(), x)


def gpu_relu_backward(dy, y):
    """``dy * [y > 0]``."""
    if dy.dtype != y.dtype or dy.dtype not in (np.float32, np.float64):
        xp = get_array_module(dy)
        return xp.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
    return ops.relu_backward(cupy_runtime(), dy, y)


def gpu_dropout(x, p, rng, channelwise=False):
    """Inverted dropout in one fused pass; ``rng`` is a ``cupy.random.Generator`` (a NumPy
    one works too: its draws are copied to the GPU).

    Draws ``u ~ U[0, 1)`` in float32 (one per element, or one per (n, c) when
    ``channelwise``) exactly as :func:`minifcn.functional.dropout_mask` does, then
    ``mask = [u >= p] / (1 - p)`` and ``y = x * mask``. Returns ``(y, mask)``.
    """
    shape = x.shape
    if channelwise:
        if len(shape) != 4:
            raise ValueError(f"channel-wise dropout needs a 4-D input (N, C, H, W), got shape {shape}")
        shape = (shape[0], shape[1], 1, 1)
    rt = cupy_runtime()
    u = rt.xp.asarray(rng.random(shape, dtype=np.float32))
    return ops.dropout(rt, x, u, p)


def gpu_dropout_backward(dy, mask):
    """``dy * mask`` (mask of x's shape, or (N, C, 1, 1) for the channel-wise form)."""
    if mask.dtype != dy.dtype or ops.mask_group(dy.shape, mask.shape) is None:
        return dy * mask
    return ops.dropout_backward(cupy_runtime(), dy, mask)


def gpu_softmax_cross_entropy(logits, labels, ignore_index):
    """Per-pixel ``-log softmax(z)[t]`` (N, H, W) in the logits' dtype, 0 at ignored pixels."""
    return ops.softmax_cross_entropy(cupy_runtime(), logits, labels, ignore_index)


def gpu_softmax_cross_entropy_backward(logits, labels, ignore_index, denom):
    """``(softmax(z) - onehot(t)) / denom``, 0 at ignored pixels."""
    return ops.softmax_cross_entropy_backward(cupy_runtime(), logits, labels, ignore_index, denom)


__all__ = [
    "gpu_im2col", "gpu_col2im", "gpu_conv_transpose2d", "gpu_max_pool2d",
    "gpu_max_pool2d_backward",
    "gpu_relu", "gpu_relu_backward", "gpu_dropout", "gpu_dropout_backward",
    "gpu_softmax_cross_entropy", "gpu_softmax_cross_entropy_backward",
]
