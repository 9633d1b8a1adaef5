r"""Convolution and transposed convolution, forward and backward, as GEMM + im2col/col2im.

Shapes: ``x (N, C, H, W)``; a convolution weight is ``(O, C/g, kh, kw)``; a transposed
convolution weight is ``(C, O/g, kh, kw)`` as in torch (``g`` = groups). ``s, p, d`` are
stride, padding and dilation; every int parameter also takes an ``(h, w)`` pair.

The one idea of this file: **a convolution and a transposed convolution are each other's
input gradient.** Writing ``C`` for the (huge, sparse) matrix of a convolution with
weight ``W``, so that ``conv2d(x) = C x``:

=====================================  =================================================
conv2d forward        ``y = C x``       ``col = im2col(x)``;  ``y = W @ col``
conv2d input grad     ``dx = C^T dy``   ``dx = col2im(W^T @ dy)``
conv_transpose2d fwd  ``y = C^T x``     ``y = col2im(W^T @ x)``     (the same two lines)
conv_transpose2d grad ``dx = C dy``     ``col = im2col(dy)``; ``dx = W @ col``
weight gradients      outer products    ``dW = dy @ im2col(x)^T`` (conv),
                                        ``dW = x @ im2col(dy)^T`` (transposed, same col)
=====================================  =================================================

That is why the op is called *transposed* convolution, and why it is not a
deconvolution: ``C^T`` is not ``C^{-1}`` (see :mod:`minifcn.explain`).

The GEMM helpers below are shared by both ops; each is named for the product it forms.
"""
from __future__ import annotations

import math
import numbers
from types import SimpleNamespace

import numpy as np

from ..backend import get_array_module
from ..openblas_core import avx512_kernels
from ._checks import check_4d, check_float, check_positive_size, pair, shape_of
from ._select import all_finite
from .blas import gemm, uses_cblas
from .implicit import conv_transpose2d_implicit, conv_transpose2d_implicit_backward
from .winograd import winograd_conv2d, winograd_conv2d_input_grad, winograd_conv2d_weight_grad
from .winograd_transposed import (winograd_conv_transpose2d, winograd_conv_transpose2d_backward,
                                  applies as winograd_transposed_applies)
from .im2col import (_col2im, _im2col, _pixel_shuffle, conv_output_size,
                     conv_transpose_output_size, transpose_keeping_runs)
from .shifted_rows import (_conv2d_shifted_rows, _shifted_rows_waste, _subpixel_channels_last,
                           _weight_grad_shifted_rows)


# -- the three GEMMs -------------------------------------------------------------------

BATCH_GEMM_MIN_WEIGHT_PER_PIXEL = 32   # one GEMM for the batch when O*K >= this * pixels*(K+O)


def _one_gemm_for_the_batch(a, n, pixels, k, o):
    """Whether a GEMM per image should become one GEMM over the batch, its images side by
    side (NumPy, one group): when the ``O x K`` weight (or weight gradient) that every
    per-image GEMM reads (or adds to) again is ``BATCH_GEMM_MIN_WEIGHT_PER_PIXEL`` times
    each image's own operands, ``pixels * (K + O)`` values. fc7 at 2x2 (512 channels,
    batch 16; 64x): 16 GEMMs each re-reading a 1 MB matrix for 4 pixels' worth of work;
    one GEMM over 64 pixels instead, after the small copies that put the images side by
    side: forward 1.11 -> 0.56 ms, backward 7.35 -> 1.48 ms. At 14x and below (fc6 and
    score_fr at 2x2) the copies cost what they saved, and at 2.3x (512 channels, 3x3,
    14x14, batch 4) 10% more."""
    return (get_array_module(a) is np and n > 1
            and pixels * (k + o) * BATCH_GEMM_MIN_WEIGHT_PER_PIXEL <= k * o)


def _side_by_side(a, n, rows, pixels):
    """``a (N, rows, pixels)`` (any array that reshapes so) -> ``(rows, N*pixels)``, the
    images side by side (a copy)."""
    return np.ascontiguousarray(a.reshape(n, rows, pixels).transpose(1, 0, 2)).reshape(rows, -1)


def _weight_times_col(weight, col, groups):
    """``y = W @ col`` per group.  weight (O, C/g, kh, kw), col (N, C, kh, kw, Ho, Wo)
    -> y (N, O, Ho, Wo)."""
    xp = get_array_module(col)
    n, c, kh, kw, ho, wo = col.shape
    o = weight.shape[0]
    k = (c // groups) * kh * kw
    if groups == 1 and n == 1:            # one plain 2-D GEMM: no batch bookkeeping
        return (weight.reshape(o, k) @ col.reshape(k, ho * wo)).reshape(1, o, ho, wo)
    if groups == 1 and _one_gemm_for_the_batch(col, n, ho * wo, k, o):
        y = weight.reshape(o, k) @ _side_by_side(col, n, k, ho * wo)              # (O, N*L)
        return np.ascontiguousarray(y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))
    w = weight.reshape(groups, o // groups, k)
    y = xp.matmul(w, col.reshape(n, groups, k, ho * wo))                      # (N, g, O/g, L)
    return y.reshape(n, o, ho, wo)


def _weight_t_times(weight, dy, groups):
    """``dcol = W^T @ dy`` per group.  weight (O, C/g, kh, kw), dy (N, O, Ho, Wo)
    -> dcol (N, C, kh, kw, Ho, Wo)."""
    xp = get_array_module(dy)
    n, o, ho, wo = dy.shape
    cg, kh, kw = weight.shape[1:]
    if groups == 1 and n == 1:            # W^T as a transposed view: BLAS reads it as is
        dcol = weight.reshape(o, cg * kh * kw).T @ dy.reshape(o, ho * wo)
        return dcol.reshape(1, cg, kh, kw, ho, wo)
    if groups == 1 and _one_gemm_for_the_batch(dy, n, ho * wo, cg * kh * kw, o):
        dcol = weight.reshape(o, -1).T @ _side_by_side(dy, n, o, ho * wo)          # (K, N*L)
        return dcol.reshape(cg, kh, kw, n, ho, wo).transpose(3, 0, 1, 2, 4, 5)
    wt = weight.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)  # (g, K, O/g)
    dcol = xp.matmul(wt, dy.reshape(n, groups, o // groups, ho * wo))          # (N, g, K, L)
    return dcol.reshape(n, groups * cg, kh, kw, ho, wo)


def _dy_times_col_t(dy, col, groups):
    """``dW = sum_n dy[n] @ col[n]^T`` per group.  dy (N, O, Ho, Wo), col (N, C, kh, kw,
    Ho, Wo) -> dW (O, C/g, kh, kw).  One GEMM per image, summed; ``col^T`` is a transposed
    view (no copy of col)."""
    n, c, kh, kw, ho, wo = col.shape
    o = dy.shape[1]
    dym = dy.reshape(n, groups, o // groups, ho * wo)
    colm = col.reshape(n, groups, (c // groups) * kh * kw, ho * wo)
    if n == 0:                                              # an empty batch: no products
        return get_array_module(dy).zeros((o, c // groups, kh, kw), dtype=dy.dtype)
    if groups == 1 and _one_gemm_for_the_batch(dy, n, ho * wo, colm.shape[2], o):
        dw = _side_by_side(dy, n, o, ho * wo) @ _side_by_side(col, n, colm.shape[2], ho * wo).T
        return dw.reshape(o, c, kh, kw)
    if groups == 1:
        dw = dym[0, 0] @ colm[0, 0].T                                          # (O, K)
        for i in range(1, n):
            dw += dym[i, 0] @ colm[i, 0].T
        return dw.reshape(o, c, kh, kw)
    dw = dym[0] @ colm[0].transpose(0, 2, 1)                                   # (g, O/g, K)
    for i in range(1, n):
        dw += dym[i] @ colm[i].transpose(0, 2, 1)
    return dw.reshape(o, c // groups, kh, kw)


def _bias_grad(dy):
    """``db[o] = sum over n, h, w of dy[n, o, h, w]``."""
    return dy.sum(axis=(0, 2, 3))


def _add_bias(y, bias):
    y += bias.reshape(1, -1, 1, 1)
    return y


# -- row bands: a bounded col matrix ------------------------------------------------------

CPU_BAND_BYTES = 8 << 20    # col bytes per band on the CPU (fits the last-level cache)
MIN_BAND_WINDOWS = 256      # a transposed convolution's backward band: at least this many
GPU_BAND_BYTES = 64 << 20   # on the GPU: bounds memory; few bands, since launches cost


def _band_budget(x):
    return CPU_BAND_BYTES if get_array_module(x) is np else GPU_BAND_BYTES


def _image_batches(x, col_entries_per_image):
    """Split the batch into runs of images whose col matrix fits the band budget:
    ``[(n0, n1), ...]`` (one run when it all fits). Images first, rows second
    (:func:`_row_bands`): a whole image keeps each GEMM wide."""
    n = x.shape[0]
    per_image = max(1, col_entries_per_image * x.dtype.itemsize)
    if n == 1 or n * per_image <= _band_budget(x):
        return [(0, n)]
    step = max(1, _band_budget(x) // per_image)
    return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


def _row_bands(x, rows, col_entries_per_row, min_rows=1):
    """Split ``rows`` output rows into bands whose im2col (``col_entries_per_row`` entries
    per image and row) stays within the band budget: ``[(r0, r1), ...]``, the bands as
    even as whole rows allow (32 rows under a 31-row budget: 16 + 16, not 31 + 1). With
    ``min_rows`` above the budget's rows, the bands are instead at least ``min_rows``
    high (and may pass the budget).

    Why: the col matrix is ``kh*kw`` times the size of its input — 236 MB for VGG's
    conv1_2 at 320x320 — and it is the largest array of a training step. Row by row, the
    product is the same (each output row only reads its own windows), the peak memory is
    one band, and on the CPU the band is still in cache when the GEMM reads it.
    """
    if rows <= 0:
        return []
    per_row = max(1, x.shape[0] * col_entries_per_row * x.dtype.itemsize)
    budget_rows = max(1, _band_budget(x) // per_row)
    if min_rows > budget_rows:
        count = max(1, rows // min_rows)             # every band >= min_rows
    else:
        count = -(-rows // budget_rows)              # every band <= budget_rows
    bounds = [k * rows // count for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class _BandBuffer:
    """One reused NumPy buffer for the bands' col matrices (fresh memory for every band
    would be page-faulted in again); on the GPU CuPy's memory pool does this already."""

    def __init__(self, x):
        self.numpy = get_array_module(x) is np
        self.flat = None

    def get(self, shape, dtype):
        if not self.numpy:
            return None
        size = int(np.prod(shape))
        if self.flat is None or self.flat.size < size or self.flat.dtype != dtype:
            self.flat = np.empty(size, dtype=dtype)
        return self.flat[:size].reshape(shape)


def _band_im2col(x, g, r0, r1, buf):
    """``im2col`` of output rows ``r0 .. r1`` only: the same windows, read from row
    ``r0*sh - ph`` on (a negative padding for :func:`_im2col`)."""
    n, c = x.shape[:2]
    out = buf.get((n, c, g.kh, g.kw, r1 - r0, g.wo), x.dtype)
    return _im2col(x, g.kh, g.kw, g.sh, g.sw, g.ph - r0 * g.sh, g.pw, g.dh, g.dw,
                   r1 - r0, g.wo, out=out)


# -- argument checking -------------------------------------------------------------------

def _geometry(op, x, weight, bias, stride, padding, dilation, groups, output_padding=None):
    """Check every argument of a (transposed) convolution; return the sizes involved."""
    check_4d(x, "input")
    check_float(x, "input")
    check_4d(weight, "weight", "(O, C/groups, kh, kw)" if output_padding is None
             else "(C, O/groups, kh, kw)")
    check_float(weight, "weight")
    if type(groups) is not int and (isinstance(groups, bool)
                                    or not isinstance(groups, numbers.Integral)) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    groups = int(groups)
    g = SimpleNamespace(groups=groups, gpu=get_array_module(x) is not np,
                        dtype=np.result_type(x.dtype, weight.dtype))
    g.n, g.c, g.h, g.w = x.shape
    g.kh, g.kw = weight.shape[2:]
    g.sh, g.sw = pair(stride, "stride", minimum=1)
    g.ph, g.pw = pair(padding, "padding", minimum=0)
    g.dh, g.dw = pair(dilation, "dilation", minimum=1)
    if g.kh < 1 or g.kw < 1:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {tuple(weight.shape)}")
    if g.c % groups:
        raise ValueError(f"{op}: input channels ({g.c}) must be divisible by groups ({groups})")
    if output_padding is None:                       # convolution: weight (O, C/g, kh, kw)
        g.o = weight.shape[0]
        if weight.shape[1] * groups != g.c:
            raise ValueError(f"{op}: input has {g.c} channels, but weight {tuple(weight.shape)} "
                             f"with groups={groups} expects {weight.shape[1] * groups}")
        if g.o % groups:
            raise ValueError(f"{op}: output channels ({g.o}) must be divisible by groups ({groups})")
        g.ho = conv_output_size(g.h, g.kh, g.sh, g.ph, g.dh)
        g.wo = conv_output_size(g.w, g.kw, g.sw, g.pw, g.dw)
    else:                                            # transposed: weight (C, O/g, kh, kw)
        if weight.shape[0] != g.c:
            raise ValueError(f"{op}: input has {g.c} channels, but weight {tuple(weight.shape)} "
                             f"expects {weight.shape[0]} (weight layout (C_in, C_out/groups, kh, kw))")
        g.o = weight.shape[1] * groups
        g.oph, g.opw = pair(output_padding, "output_padding", minimum=0)
        for name, op_, s, d in (("height", g.oph, g.sh, g.dh), ("width", g.opw, g.sw, g.dw)):
            if op_ >= max(s, d):
                raise ValueError(f"{op}: output_padding ({op_}) must be smaller than "
                                 f"max(stride, dilation) = {max(s, d)} along the {name}")
        g.ho = conv_transpose_output_size(g.h, g.kh, g.sh, g.ph, g.dh, g.oph)
        g.wo = conv_transpose_output_size(g.w, g.kw, g.sw, g.pw, g.dw, g.opw)
    if g.ho <= 0 or g.wo <= 0:
        check_positive_size(op, (g.ho, g.wo), (g.h, g.w), kernel_size=(g.kh, g.kw),
                            stride=(g.sh, g.sw), padding=(g.ph, g.pw), dilation=(g.dh, g.dw))
    if bias is not None:
        if getattr(bias, "shape", None) is None or getattr(bias, "dtype", None) is None:
            raise ValueError(f"{op}: bias must be an array of shape ({g.o},) (or None), "
                             f"got {type(bias).__name__}")
        if tuple(bias.shape) != (g.o,):
            raise ValueError(f"{op}: bias must have shape ({g.o},), got {tuple(bias.shape)}")
        check_float(bias, "bias")
    return g


def _one_dtype(g, dy, x, weight):
    """``dy, x, weight`` in one dtype, ``result_type`` of the three (and ``g.dtype`` set to
    it), so that every path of a backward returns gradients of that dtype: the row bands,
    the implicit paths and the plain GEMMs chose differently when ``dy`` came in another
    dtype than the forward's output."""
    check_float(dy, "grad_output")
    g.dtype = np.result_type(g.dtype, dy.dtype)
    return tuple(a.astype(g.dtype, copy=False) for a in (dy, x, weight))


def _check_grad_shape(op, dy, g):
    want = (g.n, g.o, g.ho, g.wo)
    if tuple(getattr(dy, "shape", ())) != want:
        raise ValueError(f"{op}: grad_output must have shape {want}, got {shape_of(dy)}")


# -- conv2d ------------------------------------------------------------------------------

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""2-D convolution (cross-correlation, as in torch).

    ``y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] * xpad[n, g(o)*C/g + c, i*s + u*d, j*s + v*d]``

    Computed as ``col = im2col(x)`` (N, C*kh*kw, Ho*Wo) and one GEMM per group,
    ``y = W (O, C*kh*kw) @ col``.  Returns y (N, O, Ho, Wo).

    On the CPU, VGG's wide 3x3 layers (128 channels and more on large enough maps, see
    :func:`_winograd_conv2d`) run by Winograd's F(2x2, 3x3) (:mod:`.winograd`): 2.25x
    fewer multiply-adds. Its other convolutions (stride 1, 3x3, 64 channels and more) run
    as the transposed convolution they equal (:func:`_as_transposed`), with
    ``'implicit'``: no im2col, the GEMMs read the padded input in place. Those with few
    channels (up to 128) that Winograd does not take come from shifted rows
    (:func:`~.shifted_rows._conv2d_shifted_rows`): an im2col of contiguous copies, and one GEMM for the
    whole batch.
    """
    g = _geometry("conv2d", x, weight, bias, stride, padding, dilation, groups)
    if _winograd_conv2d(g) and all_finite(x) and all_finite(weight):
        y = winograd_conv2d(x.astype(g.dtype, copy=False), weight.astype(g.dtype, copy=False),
                            g.ph, g.pw)
    elif _implicit_conv2d(g):
        wt, gt = _as_transposed(x, weight, g)
        y = conv_transpose2d_implicit(x, wt, gt)
    elif _shifted_conv2d(g):     # (a compact copy: ReLU and pooling ran 2x slower on the view)
        y = np.ascontiguousarray(_conv2d_shifted_rows(x, weight.transpose(1, 2, 3, 0), g.ph, g.pw,
                                                      CPU_BAND_BYTES))
    else:
        y = _conv2d(x, weight, g)
    return y if bias is None else _add_bias(y, bias)


CPU_WINOGRAD_MIN_CHANNELS = 128        # conv2d: from min(C, O) this large, Winograd F(2x2, 3x3) on the CPU
CPU_WINOGRAD_MIN_PIXELS = 40 * 40      # ... for outputs of at least this many pixels
CPU_WINOGRAD_WIDE_CHANNELS = 256       # ... or, from min(C, O) this large,
CPU_WINOGRAD_WIDE_MIN_PIXELS = 20 * 20  # ... this many
# With OpenBLAS's AVX-512 kernels (GEMMs about twice as fast), only VGG's widest layers:
CPU_WINOGRAD_AVX512_MIN_CHANNELS = 512
CPU_WINOGRAD_AVX512_MIN_PIXELS = 28 * 28
AVX512_GEMM = avx512_kernels()          # which rule this process's BLAS gets


def _winograd_conv2d(g):
    """Whether the CPU runs this convolution (forward and both gradients) by Winograd's
    F(2x2, 3x3) (:mod:`.winograd`): a 3x3 kernel, stride 1, dilation 1, one group, padding
    0 to 2 (the input gradient's padding ``2 - p`` must be >= 0), float32/64 with NumPy's
    BLAS, and enough channels and pixels: from ``CPU_WINOGRAD_MIN_CHANNELS`` in and out
    and ``CPU_WINOGRAD_MIN_PIXELS`` output pixels (``CPU_WINOGRAD_WIDE_MIN_PIXELS`` from
    ``CPU_WINOGRAD_WIDE_CHANNELS``); where OpenBLAS runs its AVX-512 kernels
    (``AVX512_GEMM``), from ``CPU_WINOGRAD_AVX512_MIN_CHANNELS`` and
    ``CPU_WINOGRAD_AVX512_MIN_PIXELS``. Callers also check that the operands are finite
    (Winograd's transforms would turn an ``inf`` into NaN).

    Why there: its 16 GEMMs do 2.25x fewer multiply-adds, but its transforms move 4x the
    activation (into 16 planes and back out), and they cost per channel where the GEMMs
    cost per channel pair; the faster the GEMMs, the more the transforms weigh.
    ``python -m benchmarks.winograd`` (forward + both gradients, Winograd / the direct
    path, interleaved; ``benchmarks/HISTORY.md``), on the Zen 5 EPYC:

    - AVX2 kernels (``OPENBLAS_CORETYPE=Haswell``, its configured state), since the
      transforms became products (sixteenth session): 128 channels 0.81-0.94x from 40x40
      (to 259x259), 1.02-1.11x at 28-36 (128 in, 256 out: 0.86-0.89x there); 256-512
      0.67-0.91x from 20x20, 0.87x at 18, 0.94-0.98x at 16, 1.03-1.10x at 14; 64
      channels 1.03-1.24x.
    - AVX-512 kernels (OpenBLAS's own choice there): 0.75-0.79x on 512 at 28-40, 1.12x
      at 20; 256 channels 0.89-1.14x; 128 1.31-1.32x."""
    pixels = g.ho * g.wo
    if AVX512_GEMM:
        channels, min_pixels = CPU_WINOGRAD_AVX512_MIN_CHANNELS, CPU_WINOGRAD_AVX512_MIN_PIXELS
    elif min(g.c, g.o) >= CPU_WINOGRAD_WIDE_CHANNELS:
        channels, min_pixels = CPU_WINOGRAD_MIN_CHANNELS, CPU_WINOGRAD_WIDE_MIN_PIXELS
    else:
        channels, min_pixels = CPU_WINOGRAD_MIN_CHANNELS, CPU_WINOGRAD_MIN_PIXELS
    return (not g.gpu and (g.kh, g.kw) == (3, 3) and (g.sh, g.sw) == (1, 1)
            and (g.dh, g.dw) == (1, 1) and g.groups == 1 and g.ph <= 2 and g.pw <= 2
            and min(g.c, g.o) >= channels and pixels >= min_pixels
            and g.n > 0 and uses_cblas(g.dtype))


CPU_IMPLICIT_CONV2D_MIN_CHANNELS = 64   # conv2d: from min(C, O) this large, 'implicit' on the CPU
CPU_IMPLICIT_CONV2D_MAX_TAPS = 9        # ... for kernels of at most this many taps (3x3)
CPU_IMPLICIT_CONV2D_MIN_PIXELS = 64 * 64   # ... and outputs of at least this many pixels
CPU_IMPLICIT_CONV2D_DX_MIN_PIXELS = 2048   # ... or, for the input gradient alone, this many


def _implicit_conv2d(g, min_pixels=None):
    """Whether the CPU runs this convolution (forward, and the input gradient) as an
    implicit-GEMM transposed convolution: stride 1, dilation 1, one group, padding < kernel (so the
    transposed padding ``k - 1 - p`` is >= 0), kernels up to 3x3 and 64 channels in
    and out, float32/64 with NumPy's BLAS. Measured on VGG's layers at 320x320 (64 to
    512 channels), forward 0.79–1.33x of torch against im2col's 0.83–1.44x, backward
    0.97–1.28x against 1.08–1.65x; a 7x7 kernel on 10x10 (fc6) ran 20x slower (49
    narrow GEMMs), 1x1 kernels 2x slower (no im2col to save, more overhead).
    ``min_pixels``: the output-pixel bound, ``CPU_IMPLICIT_CONV2D_MIN_PIXELS`` by default
    (``conv2d_backward`` asks with ``CPU_IMPLICIT_CONV2D_DX_MIN_PIXELS`` for dx alone)."""
    return (not g.gpu and (g.sh, g.sw) == (1, 1) and (g.dh, g.dw) == (1, 1)
            and g.groups == 1 and g.ph < g.kh and g.pw < g.kw
            and 1 < g.kh * g.kw <= CPU_IMPLICIT_CONV2D_MAX_TAPS
            and g.ho * g.wo >= (CPU_IMPLICIT_CONV2D_MIN_PIXELS if min_pixels is None
                                else min_pixels)
            and min(g.c, g.o) >= CPU_IMPLICIT_CONV2D_MIN_CHANNELS and uses_cblas(g.dtype))


CPU_SHIFTED_CONV2D_MAX_CHANNELS = 128   # conv2d: up to max(C, O) this large, shifted rows
CPU_SHIFTED_CONV2D_MAX_WASTE = 1.6      # ... if the windows computed per window kept are at most this
CPU_SHIFTED_BACKWARD_MIN_CHANNELS = 4   # its dx from C this large, its dW from min(C, O)


def _shifted_conv2d(g):
    """Whether the CPU runs this convolution on shifted rows (:func:`~.shifted_rows._conv2d_shifted_rows`):
    the forward, the input gradient as the convolution of ``dy`` with the flipped kernel
    (:func:`_as_transposed`'s identity, read backwards), and the weight gradient
    (:func:`~.shifted_rows._weight_grad_shifted_rows`). Stride 1, dilation 1, one group, kernels of 2 taps
    and more with padding < kernel, up to ``CPU_SHIFTED_CONV2D_MAX_CHANNELS`` channels in
    and out, and at most ``CPU_SHIFTED_CONV2D_MAX_WASTE`` windows computed per window kept
    (:func:`~.shifted_rows._shifted_rows_waste`) in the forward and in the input gradient.

    Why: at few channels a convolution is memory-bound, and im2col's gather (runs of one
    image row) and the batch's one small GEMM per image were most of its time. Measured
    against im2col, interleaved, on the default training run's layers (8 to 64 channels,
    4x4 to 64x64, batch 16): forward 0.55-0.85x of its time, input gradient 0.45-0.8x,
    weight gradient 0.5-0.85x; 0.85-1.0x on 64-128 channels at batch 1. On VGG's 256- and
    512-channel layers it lost (forward up to 1.2x, weight gradient 1.6-4x), and below 4
    channels so did the gradients (``CPU_SHIFTED_BACKWARD_MIN_CHANNELS``; the input
    gradient of a 3-channel image, a GEMM of 3 rows, took 6.7x as long). 1x1 kernels have
    no windows to gather and stay on im2col. ``benchmarks/HISTORY.md`` has the table."""
    if (g.gpu or (g.sh, g.sw) != (1, 1) or (g.dh, g.dw) != (1, 1) or g.groups != 1
            or g.kh * g.kw < 2 or g.ph >= g.kh or g.pw >= g.kw or min(g.n, g.c, g.o) == 0
            or max(g.c, g.o) > CPU_SHIFTED_CONV2D_MAX_CHANNELS or not uses_cblas(g.dtype)):
        return False
    waste = max(_shifted_rows_waste(g.h, g.w, g.kh, g.kw, g.ph, g.pw),
                _shifted_rows_waste(g.ho, g.wo, g.kh, g.kw, g.kh - 1 - g.ph, g.kw - 1 - g.pw))
    return waste <= CPU_SHIFTED_CONV2D_MAX_WASTE


def _as_transposed(x, weight, g):
    r"""A stride-1 convolution as a transposed convolution: ``(W', g')`` with

    ``conv2d(x, W, padding=p) == conv_transpose2d(x, W', padding=k-1-p)``,
    ``W'[c, o, u, v] = W[o, c, k-1-u, k-1-v]``

    — the kernel flipped and its channel axes swapped. (At stride 1 the transposed
    convolution stamps ``W'[., ., u, v] x[i]`` onto ``i + u - (k-1-p)``, so output ``y``
    reads ``x[y + (k-1-u) - p]``: the convolution's tap ``k-1-u``.) ``W'`` is a view."""
    wt = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    gt = _geometry("conv_transpose2d", x, wt, None, 1, (g.kh - 1 - g.ph, g.kw - 1 - g.pw),
                   1, 1, 0)
    return wt, gt


def _conv2d(x, weight, g):
    """conv2d without the checks, for sizes already computed (``g`` from :func:`_geometry`).

    Output rows are computed in bands (:func:`_row_bands`) so that no col matrix exceeds
    the band budget: ``y[:, :, r0:r1] = W @ im2col(rows r0..r1)``.
    """
    per_row = x.shape[1] * g.kh * g.kw * g.wo                       # col entries per image
    batches = _image_batches(x, per_row * g.ho)
    if len(batches) > 1:
        xp = get_array_module(x)
        return xp.concatenate([_conv2d(x[n0:n1], weight, g) for n0, n1 in batches])
    bands = _row_bands(x, g.ho, per_row)
    if len(bands) == 1:
        col = _im2col(x, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.ho, g.wo)
        return _weight_times_col(weight, col, g.groups)
    y = None
    buf = _BandBuffer(x)
    for r0, r1 in bands:
        col = _band_im2col(x, g, r0, r1, buf)
        part = _weight_times_col(weight, col, g.groups)
        if y is None:
            y = get_array_module(x).empty(part.shape[:2] + (g.ho, g.wo), dtype=part.dtype)
        y[:, :, r0:r1] = part
    return y


def _weight_grad_t(dy, x, g):
    """``dW`` of a one-group convolution, as ``dW^T = sum over images and row bands of
    col @ dy^T`` — the product of :func:`_dy_times_col_t`, written transposed: the GEMM's
    output is (C*kh*kw, O) and BLAS's kernels do better on that tall shape than on the
    wide (O, C*kh*kw) one when O is a few dozen to a few hundred channels. One band's col
    at a time (:func:`_row_bands`), accumulated in place in the transposed result."""
    k = g.c * g.kh * g.kw
    x, dy = x.astype(g.dtype, copy=False), dy.astype(g.dtype, copy=False)   # a mix: the wider
    dwt = np.zeros((k, g.o), dtype=g.dtype)
    buf = _BandBuffer(x)
    for n0, n1 in _image_batches(x, k * g.ho * g.wo):
        xs = x[n0:n1]
        for r0, r1 in _row_bands(xs, g.ho, k * g.wo):
            col = _band_im2col(xs, g, r0, r1, buf)              # (n, C, kh, kw, rows, Wo)
            for i in range(n1 - n0):
                gemm(col[i].reshape(k, -1), dy[n0 + i, :, r0:r1].reshape(g.o, -1).T, dwt,
                     accumulate=True)
    return np.ascontiguousarray(dwt.T).reshape(g.o, g.c, g.kh, g.kw)


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    need_input_grad=True, need_weight_grad=True, need_bias_grad=True):
    r"""Gradients of :func:`conv2d`; returns ``(dx, dW, db)`` (``None`` where not asked for).

    Shapes: dy (N, O, Ho, Wo) and the forward input x (N, C, H, W) -> dx (N, C, H, W),
    dW (O, C/g, kh, kw), db (O,).

    Why these formulas: ``y = C x + b`` is linear in ``x`` (and in ``W``), and the chain
    rule through a matrix product is the transposed product: ``dL/dx = C^T dL/dy``.
    With ``L`` the loss and ``dy = dL/dy``:

    - ``dW = dy @ col^T`` — each weight multiplies the window entries it saw:
      ``dW[o, c, u, v] = sum_{n,i,j} dy[n, o, i, j] * xpad[n, c, i*s + u*d, j*s + v*d]``.
    - ``dx = col2im(W^T @ dy)`` — every input pixel gathers ``dy`` from each window it
      sat in, weighted by the tap it sat under. That is a *transposed convolution* of
      ``dy`` with the same weight: ``dx = conv_transpose2d(dy, W)`` (tested).
    - ``db[o] = sum_{n,i,j} dy[n, o, i, j]``.

    On the CPU, the layers :func:`conv2d` runs by Winograd take both gradients by Winograd
    too (:mod:`.winograd`); the others take the paths below, each named where it is taken.

    ``need_input_grad=False`` skips the col2im (the first layer of a network needs no dx);
    ``need_weight_grad=False`` skips im2col and the weight GEMM (a frozen weight).
    im2col(x) is recomputed rather than kept from the forward pass: it costs one
    gather and saves holding kh*kw copies of every activation.
    """
    g = _geometry("conv2d_backward", x, weight, None, stride, padding, dilation, groups)
    _check_grad_shape("conv2d_backward", dy, g)
    dy, x, weight = _one_dtype(g, dy, x, weight)
    db = _bias_grad(dy) if need_bias_grad else None
    dw = dx = None
    if _winograd_conv2d(g) and (need_input_grad or need_weight_grad) and all_finite(dy):
        # dx: the convolution of dy with the kernel flipped and its channel axes swapped,
        # padding 2 - p (:func:`_as_transposed`'s identity, read backwards), by the same
        # forward; dW: the 16 GEMMs of the filter transform's adjoint (:mod:`.winograd`).
        # Each only where its other operand is finite too; else the paths below.
        if need_input_grad and all_finite(weight):
            dx = winograd_conv2d_input_grad(dy, weight, g.ph, g.pw)
            need_input_grad = False
        if need_weight_grad and all_finite(x):
            dw = winograd_conv2d_weight_grad(dy, x, g.ph, g.pw)
            need_weight_grad = False
        if not (need_input_grad or need_weight_grad):
            return dx, dw, db
    if _implicit_conv2d(g):
        # dx: the transposed convolution's own adjoint, implicit (no col, no col2im).
        # dW: on shifted rows of x with the column taps folded (only the kh row shifts
        # copied, ``dW^T += col3 @ dy^T`` read at kw offsets: :func:`~.shifted_rows._weight_grad_shifted_rows`),
        # where x is finite; on VGG's 64-256-channel layers at 80-320 pixels a side
        # 0.75-0.95x of the time of banded im2col (:func:`_weight_grad_t`), with AVX2 and
        # AVX-512 GEMM kernels alike. (Implicit GEMMs, one per tap, O x C outputs from K =
        # a band of pixels, ran at 117-161 GFLOP/s against 200-226 for these.) An inf or
        # NaN in x takes im2col, which pairs no zero of the layout with it.
        if need_input_grad:
            wt, gt = _as_transposed(x, weight, g)
            dx, _ = conv_transpose2d_implicit_backward(dy, x, wt, gt, True, False)
        if need_weight_grad:
            dw = (_weight_grad_shifted_rows(dy, x, g, CPU_BAND_BYTES, fold=True) if g.n > 0 and all_finite(x)
                  else _weight_grad_t(dy, x, g))        # (an empty batch: zeros, from there)
        return dx, dw, db
    if _shifted_conv2d(g):
        # dx: ``conv2d(dy, W flipped, channel axes swapped, padding k-1-p)`` (the identity
        # of :func:`_as_transposed`, the other way round), on shifted rows of dy. dW: from
        # shifted rows of x. Each only where no inf or NaN meets one of the layout's zeros,
        # which stand for no term of the sums: dx pairs dy's zero border with every weight,
        # dW pairs dy's zeros at the thrown-away windows with x. Otherwise that gradient
        # takes im2col below, which forms only the products torch's float64 path forms.
        if need_input_grad and g.c >= CPU_SHIFTED_BACKWARD_MIN_CHANNELS and all_finite(weight):
            dx = np.ascontiguousarray(_conv2d_shifted_rows(
                dy, weight[:, :, ::-1, ::-1].transpose(0, 2, 3, 1), g.kh - 1 - g.ph, g.kw - 1 - g.pw,
                CPU_BAND_BYTES))
            need_input_grad = False
        if (need_weight_grad and min(g.c, g.o) >= CPU_SHIFTED_BACKWARD_MIN_CHANNELS
                and all_finite(x)):
            dw = _weight_grad_shifted_rows(dy, x, g, CPU_BAND_BYTES)
            need_weight_grad = False
    if need_input_grad and _implicit_conv2d(g, CPU_IMPLICIT_CONV2D_DX_MIN_PIXELS):
        # dx alone as the implicit transposed convolution of dy (no W^T dy col matrix, no
        # col2im): on VGG's 512-channel 53x53 layers 0.83-0.87x of the im2col path's dx,
        # where the whole layer (forward, dW) still runs faster on im2col
        gdx = _geometry("conv2d_backward", dy, weight, None, 1, (g.ph, g.pw), 1, 1, 0)
        _pick_algorithm("implicit", gdx)
        dx = conv_transpose2d_implicit(dy, weight, gdx)
        need_input_grad = False
    if need_input_grad or need_weight_grad:
        dx_col, dw_col = _conv2d_backward_im2col(dy, x, weight, g, need_input_grad,
                                                 need_weight_grad)
        dx = dx if dx_col is None else dx_col
        dw = dw if dw_col is None else dw_col
    return dx, dw, db


def _conv2d_backward_im2col(dy, x, weight, g, need_dx, need_dw):
    """``(dx, dW)`` of :func:`conv2d_backward` the textbook way (``None`` where not asked
    for): ``dW = dy @ im2col(x)^T`` and ``dx = col2im(W^T @ dy)``, in runs of images and
    row bands that bound the col matrix (:func:`_image_batches`, :func:`_row_bands`)."""
    dw = dx = None
    groups = g.groups
    batches = _image_batches(x, g.c * g.kh * g.kw * g.wo * g.ho)
    if len(batches) > 1:                     # images in runs: dx side by side, dW summed
        xp = get_array_module(x)
        parts = [_conv2d_backward_im2col(dy[n0:n1], x[n0:n1], weight, g, need_dx, need_dw)
                 for n0, n1 in batches]
        if need_dx:
            dx = xp.concatenate([p[0] for p in parts])
        if need_dw:
            dw = parts[0][1]
            for p in parts[1:]:
                dw += p[1]
        return dx, dw
    bands = _row_bands(x, g.ho, g.c * g.kh * g.kw * g.wo)
    if need_dw:                              # dW = sum over bands of dy[band] @ col[band]^T
        buf = _BandBuffer(x)
        for r0, r1 in bands:
            part = _dy_times_col_t(dy[:, :, r0:r1], _band_im2col(x, g, r0, r1, buf), groups)
            if dw is None:
                dw = part
            else:
                dw += part
        del buf
    if need_dx:
        if len(bands) == 1:
            dx = _col2im(_weight_t_times(weight, dy, groups), g.h, g.w,
                         g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
        else:                                # each band adds onto the rows its windows read
            dx = get_array_module(x).zeros(x.shape, dtype=dy.dtype)
            for r0, r1 in bands:
                top = r0 * g.sh - g.ph                        # image row of the band's first tap
                lo = max(0, top)
                hi = min(g.h, top + (r1 - r0 - 1) * g.sh + (g.kh - 1) * g.dh + 1)
                if hi > lo:
                    dcol = _weight_t_times(weight, dy[:, :, r0:r1], groups)
                    dx[:, :, lo:hi] += _col2im(dcol, hi - lo, g.w, g.sh, g.sw, lo - top, g.pw,
                                               g.dh, g.dw)
    return dx, dw


# -- conv_transpose2d ----------------------------------------------------------------------

ALGORITHMS = ("auto", "col2im", "subpixel", "fused", "implicit", "winograd")


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, algorithm="auto"):
    r"""2-D transposed convolution (torch's ``conv_transpose2d``), weight (C, O/g, kh, kw).

    Every input pixel stamps a weighted copy of the kernel onto the output, the stamps
    ``s`` apart; overlaps add up; then ``padding`` is cropped from each border::

        y[n, o, i*s + u*d - p, j*s + v*d - p] += x[n, c, i, j] * W[c, o, u, v]

    Output size: ``(H - 1)*s - 2p + d*(kh - 1) + output_padding + 1``.

    ``algorithm``:

    - ``'col2im'`` — the textbook: ``col = W^T @ x`` (N, O*kh*kw, H*W), then ``col2im``
      adds the stamps up. Any stride, dilation, groups.
    - ``'subpixel'`` — dilation 1, groups 1. Split the kernel into ``s x s`` phases of
      ``A x B = ceil(kh/s) x ceil(kw/s)`` taps each. Output row ``q*s + r`` only sees
      taps ``r, r+s, r+2s, ...``, i.e. inputs ``q, q-1, ..., q-A+1``; so the transposed
      convolution is an ordinary ``A x B`` convolution of ``x`` (padded by A-1) into
      ``O*s*s`` channels, followed by ``col2im`` with kernel = stride (windows that do
      not overlap: a pure rearrangement, the "pixel shuffle") which also crops the
      padding. The overlap sum happens inside the GEMM instead of in col2im, so the
      GEMM writes ``s*s*(H+A-1)*(W+B-1)`` values per output channel instead of
      ``kh*kw*H*W`` (3.5x fewer for FCN-32s's k64 s32 on 16x16), for the same FLOPs
      when ``s`` divides ``k`` (FCN's upsamplers all have k = 2s). On the CPU the
      A x B convolution runs as :func:`~.shifted_rows._conv2d_shifted_rows` (its im2col is one
      shifted copy per tap) and the shuffle as :func:`~.im2col._pixel_shuffle`; from
      column stride 8 on, with the GEMM transposed, channels-last, so that the shuffle
      moves runs of ``sw`` values (:func:`~.shifted_rows._subpixel_channels_last`).
    - ``'fused'`` — ``'col2im'`` with the GEMM folded into the col2im: no col matrix.
      On the GPU one kernel (``kernels/conv_transpose.cu``), one thread per output pixel,
      summing ``W[c, o, u, v] * x[n, c, i, j]`` over the taps that reach it and the input
      channels; on the CPU (:func:`_conv_transpose2d_fused`) the stamp formula above
      literally, one GEMM per kernel tap. Any stride, dilation, groups. Its backward is
      ``'col2im'``'s.
    - ``'implicit'`` — ``'subpixel'``'s phases without its im2col: each phase is a sum over
      its taps of ``W_tap @ (x shifted)``, one GEMM per shift reading the padded input in
      place and adding into the phase's output (:mod:`.implicit`), then the pixel shuffle.
      No im2col, and the GEMMs multiply-add only what the phases need, up to the
      zero gap column of each row and, where a band holds several images, the zero
      rows between them. Dilation 1, groups 1. Its backward is
      its adjoint, step by step (:func:`~.implicit.conv_transpose2d_implicit_backward`).
    - ``'winograd'`` — the CPU, ``k = 2s``, dilation 1, groups 1: every phase's 2-tap
      sum by Winograd's F(3, 2), 2.25x fewer multiply-adds than the others, plus
      transforms that are NumPy additions or small products (:mod:`.winograd_transposed`).
      Its backward is the same algebra's adjoint. Operands with an inf or NaN run ``'col2im'``.
    - ``'auto'`` — ``'subpixel'`` when it applies and ``s`` divides ``k`` (no padded taps)
      with ``s > 1``, else ``'col2im'``; on the CPU, ``'winograd'`` where it applies with
      many channels, and ``'implicit'`` instead of ``'subpixel'`` for the forward at
      stride 2 with 128 channels and more; on the GPU, ``'fused'`` for small problems
      (see :func:`_pick_algorithm`; ``benchmarks/deconv.py`` measures all of them).
    """
    g = _geometry("conv_transpose2d", x, weight, bias, stride, padding, dilation, groups,
                  output_padding)
    algorithm = _pick_algorithm(algorithm, g)
    if 0 in (g.n, g.c, g.o):                       # an empty batch or channel axis: no stamps
        y = get_array_module(x).zeros((g.n, g.o, g.ho, g.wo), dtype=g.dtype)
        return y if bias is None else _add_bias(y, bias)
    if algorithm in ("subpixel", "implicit") and _phase_zeros_meet_forward(algorithm, g, x, weight):
        algorithm = "col2im"
    if algorithm == "winograd":
        if all_finite(x) and all_finite(weight):
            y = winograd_conv_transpose2d(x.astype(g.dtype, copy=False),
                                          weight.astype(g.dtype, copy=False), (g.sh, g.sw),
                                          (g.ph, g.pw), (g.ho, g.wo))
            return y if bias is None else _add_bias(y, bias)
        algorithm = "col2im"        # inf - inf in its transforms would give NaN
    if algorithm == "fused":
        return _conv_transpose2d_fused(x, weight, bias, g)
    if algorithm == "implicit":
        y = conv_transpose2d_implicit(x, weight, g)
    elif algorithm == "subpixel":
        hq, wq = g.h + g.ah - 1, g.w + g.aw - 1                       # ysub: (N, O*sh*sw, Hq, Wq)
        if g.gpu:                      # the GPU kernels: im2col, GEMM, col2im with kernel = stride
            sub = SimpleNamespace(kh=g.ah, kw=g.aw, sh=1, sw=1, ph=g.ah - 1, pw=g.aw - 1, dh=1,
                                  dw=1, ho=hq, wo=wq, groups=1)
            ysub = _conv2d(x, _subpixel_weight(weight, g), sub)
            y = _col2im(ysub.reshape(g.n, g.o, g.sh, g.sw, hq, wq), g.ho, g.wo, g.sh, g.sw,
                        g.ph, g.pw, 1, 1)
        elif g.sw >= CPU_SUBPIXEL_CHANNELS_LAST_MIN_STRIDE:    # NumPy, long phase rows
            y = _subpixel_channels_last(x, _subpixel_weight_t(weight, g), g, CPU_BAND_BYTES)
        else:                          # NumPy: shifted-copy im2col, GEMM, pixel shuffle + crop
            ysub = _conv2d_shifted_rows(x, _subpixel_weight_t(weight, g), g.ah - 1, g.aw - 1,
                                        CPU_BAND_BYTES)
            y = _pixel_shuffle(ysub.reshape(g.n, g.o, g.sh, g.sw, hq, wq), g.ho, g.wo, g.ph, g.pw)
    else:
        col = _weight_t_times(weight, x, groups)                       # (N, O, kh, kw, H, W)
        y = _col2im(col, g.ho, g.wo, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    return y if bias is None else _add_bias(y, bias)


def _conv_transpose2d_fused(x, weight, bias, g):
    """``algorithm='fused'``: the transposed convolution without a col matrix.

    On the GPU (float32/float64) one kernel does it all, bias included
    (:func:`~minifcn.kernels.gpu_conv_transpose2d`). Elsewhere, the stamp formula of
    :func:`conv_transpose2d` one kernel tap ``(u, v)`` at a time: the tap's col entries
    ``W[:, :, u, v]^T @ x`` (one GEMM per group) are added into the output pixels
    ``(i*s + u*d, j*s + v*d)`` they land on, a strided slice of the padded output; the
    padding is cropped at the end. Memory: the padded output, and one tap's col
    (``N x O x H x W``, H x W the *input* size) instead of all ``kh*kw`` taps' at once.
    """
    xp = get_array_module(x)
    dtype = g.dtype               # result_type(x, W), as the other algorithms (bias added in place)
    if g.gpu and dtype in (np.float32, np.float64):
        from ..kernels import gpu_conv_transpose2d
        return gpu_conv_transpose2d(x.astype(dtype, copy=False), weight.astype(dtype, copy=False),
                                    None if bias is None else bias.astype(dtype, copy=False),
                                    g.groups, g.ho, g.wo, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    n, c, h, w = x.shape
    cg, og = c // g.groups, g.o // g.groups
    hp = max(g.ph + g.ho, (h - 1) * g.sh + (g.kh - 1) * g.dh + 1)    # the padded output
    wp = max(g.pw + g.wo, (w - 1) * g.sw + (g.kw - 1) * g.dw + 1)
    y = xp.zeros((n, g.o, hp, wp), dtype=dtype)
    xg = x.reshape(n, g.groups, cg, h * w)
    for u in range(g.kh):
        for v in range(g.kw):
            w_uv = weight[:, :, u, v].reshape(g.groups, cg, og).transpose(0, 2, 1)  # (g, O/g, C/g)
            stamps = xp.matmul(w_uv, xg).reshape(n, g.o, h, w)       # col[:, :, u, v]
            y[:, :, u * g.dh:u * g.dh + (h - 1) * g.sh + 1:g.sh,
              v * g.dw:v * g.dw + (w - 1) * g.sw + 1:g.sw] += stamps
    y = xp.ascontiguousarray(y[:, :, g.ph:g.ph + g.ho, g.pw:g.pw + g.wo])
    return y if bias is None else _add_bias(y, bias)


def conv_transpose2d_backward(dy, x, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, *, need_input_grad=True, need_weight_grad=True,
                              need_bias_grad=True, algorithm="auto"):
    r"""Gradients of :func:`conv_transpose2d`; returns ``(dx, dW, db)``.

    Shapes: dy (N, O, Ho, Wo) and the forward input x (N, C, H, W) -> dx (N, C, H, W),
    dW (C, O/g, kh, kw) (torch's transposed layout), db (O,).

    The forward pass is ``y = C^T x`` (C: the matrix of the convolution with the same
    weight), so ``dx = C dy`` — an ordinary **convolution** of ``dy`` with the same
    weight: ``col = im2col(dy)``; ``dx = W @ col``.  The weight gradient reuses that
    one col: ``dW[c, o, u, v] = sum_{n,i,j} x[n, c, i, j] * dypad[n, o, i*s + u*d, j*s + v*d]``,
    i.e. ``dW = x @ col^T``: each weight multiplied an input pixel onto an output pixel, so
    its gradient pairs that input with the gradient that reached that output.
    ``db[o] = sum dy[n, o, :, :]`` (the bias was added to every output pixel).
    ``algorithm='fused'`` runs this ``'col2im'`` backward (only its forward differs);
    ``'implicit'`` and ``'winograd'`` run their forwards' adjoints (:mod:`.implicit`,
    :mod:`.winograd_transposed`).
    With ``output_padding >= stride`` (possible when dilation > stride) the convolution of
    ``dy`` has windows past the first H x W; no input fed them, so they are not computed.

    The ``'subpixel'`` algorithm runs the same algebra in phase space: ``im2col`` with
    kernel = stride un-shuffles ``dy`` (and zero-pads the cropped border back), then
    the backward pass of the small ``A x B`` convolution gives dx and the phase
    weights' gradient, which is rearranged back to ``(C, O, kh, kw)``.
    """
    g = _geometry("conv_transpose2d_backward", x, weight, None, stride, padding, dilation,
                  groups, output_padding)
    _check_grad_shape("conv_transpose2d_backward", dy, g)
    dy, x, weight = _one_dtype(g, dy, x, weight)
    algorithm = _pick_algorithm(algorithm, g, backward=True)
    if algorithm in ("subpixel", "implicit") and _phase_zeros_meet(
            algorithm, g, dy, x, weight, need_input_grad, need_weight_grad):
        algorithm = "col2im"
    if algorithm == "winograd" and not (
            all_finite(dy) and (not need_weight_grad or all_finite(x))
            and (not need_input_grad or all_finite(weight))):
        algorithm = "col2im"
    if algorithm == "winograd":
        dx, dw = winograd_conv_transpose2d_backward(dy, x, weight, (g.sh, g.sw), (g.ph, g.pw),
                                                    need_input_grad, need_weight_grad)
    elif algorithm == "implicit":
        dx, dw = conv_transpose2d_implicit_backward(dy, x, weight, g, need_input_grad,
                                                    need_weight_grad)
    elif algorithm == "subpixel":
        hq, wq = g.h + g.ah - 1, g.w + g.aw - 1
        dysub = _im2col(dy, g.sh, g.sw, g.sh, g.sw, g.ph, g.pw, 1, 1, hq, wq)  # (N,O,sh,sw,Hq,Wq)
        dysub = dysub.reshape(g.n, g.o * g.sh * g.sw, hq, wq)
        dx, dwsub, _ = conv2d_backward(dysub, x, _subpixel_weight(weight, g), 1,
                                       (g.ah - 1, g.aw - 1), need_input_grad=need_input_grad,
                                       need_weight_grad=need_weight_grad, need_bias_grad=False)
        dw = _subpixel_weight_grad(dwsub, g) if need_weight_grad else None
    else:
        dx, dw = _conv_transpose2d_backward_col(dy, x, weight, g, need_input_grad,
                                                need_weight_grad)
    db = _bias_grad(dy) if need_bias_grad else None
    return dx, dw, db


def _conv_transpose2d_backward_col(dy, x, weight, g, need_dx, need_dw):
    """The 'col2im' backward: ``col = im2col(dy)`` feeds both GEMMs, ``dx = W @ col`` and
    ``dW = x @ col^T``.

    The windows of this im2col are the input pixels, so a band of input rows needs only
    its own windows: the images run in batches and the rows in bands
    (:func:`_image_batches`, :func:`_row_bands`), and each band's col matrix is made
    once, in one reused buffer, and read by both GEMMs while it is still in cache. (At
    256->128 k4 s2 on 8 x 32x32 the whole col matrix would be 67 MB.) A band keeps at
    least ``MIN_BAND_WINDOWS`` windows (or is the whole image): every band adds a partial
    dW of ``C*O*kh*kw`` values, and below that its GEMM does too little work per value
    (FCN-32s's k64 s32 on 16x16 in bands of one row ran 1.12x slower than whole).

    With NumPy's BLAS and one group, from ``DIRECT_BACKWARD_MIN_PIXELS`` input pixels per
    image and ``DIRECT_BACKWARD_MIN_WINDOWS`` in the batch, each image's GEMMs go to BLAS
    directly (:func:`~.blas.gemm`): ``dx``'s GEMM writes its rows of ``dx`` in place, and
    the weight gradient is summed transposed, ``dW^T (C_out*kh*kw, C_in) += col @ x^T``,
    in place (``beta = 1``), then transposed once. The same products as ``dW = x @
    col^T``, but BLAS runs that orientation faster here (K = 2048, 256 columns, 1024
    windows: 180-195 against 158-173 GFLOP/s), and no partial dx or dW is allocated and
    copied or added: 256->128 k4 s2 b8 0.91-0.95x of the general path
    (``benchmarks/HISTORY.md``). Below those sizes the final transpose of dW (16 MB for
    256 -> 256 k8) against few windows, or the per-call cost on small ops, outweighs it
    (256 -> 256 k4 s2 on one 16x16 image: 1.66x), and the batched ``matmul`` path stays.
    """
    conv = SimpleNamespace(kh=g.kh, kw=g.kw, sh=g.sh, sw=g.sw, ph=g.ph, pw=g.pw, dh=g.dh,
                           dw=g.dw, wo=g.w)              # the convolution of dy, H x W windows
    per_row = g.o * g.kh * g.kw * g.w                    # col entries per image and input row
    dx = dw = None
    if not (need_dx or need_dw):
        return dx, dw
    buf = _BandBuffer(dy)
    k = g.o * g.kh * g.kw                               # col rows: (o, u, v)
    direct = (g.groups == 1 and type(dy) is np.ndarray and uses_cblas(g.dtype)
              and dy.dtype == x.dtype == weight.dtype == g.dtype
              and g.h * g.w >= DIRECT_BACKWARD_MIN_PIXELS
              and g.n * g.h * g.w >= DIRECT_BACKWARD_MIN_WINDOWS)
    if direct:
        dx = np.empty(x.shape, dtype=g.dtype) if need_dx else None
        w_mat = weight.reshape(g.c, k)
        dw_t = np.zeros((k, g.c), dtype=g.dtype) if need_dw else None
    for n0, n1 in _image_batches(dy, per_row * g.h):
        for r0, r1 in _row_bands(dy[n0:n1], g.h, per_row, -(-MIN_BAND_WINDOWS // g.w)):
            col = _band_im2col(dy[n0:n1], conv, r0, r1, buf)
            if direct:                  # per image: dx's rows, and dW^T += col @ x^T
                windows = (r1 - r0) * g.w
                for i in range(n1 - n0):
                    col_i = col[i].reshape(k, windows)
                    if need_dx:
                        gemm(w_mat, col_i, dx[n0 + i, :, r0:r1].reshape(g.c, windows))
                    if need_dw:
                        x_i = x[n0 + i, :, r0:r1].reshape(g.c, windows)
                        gemm(col_i, x_i.T, dw_t, accumulate=True)
                continue
            if need_dx:
                part = _weight_times_col(weight, col, g.groups)
                if (n1 - n0, r1 - r0) == (g.n, g.h):      # one band: it is dx, no copy
                    dx = part
                else:
                    if dx is None:
                        dx = get_array_module(dy).empty(x.shape, dtype=part.dtype)
                    dx[n0:n1, :, r0:r1] = part
            if need_dw:
                part = _dy_times_col_t(x[n0:n1, :, r0:r1], col, g.groups)
                if dw is None:
                    dw = part
                else:
                    dw += part
    if direct and need_dw:
        dw = np.ascontiguousarray(dw_t.T).reshape(weight.shape)
    return dx, dw


DIRECT_BACKWARD_MIN_PIXELS = 1024   # input pixels per image (each GEMM's width) and
DIRECT_BACKWARD_MIN_WINDOWS = 4096  # in the batch, from which the 'col2im' backward calls BLAS
GPU_SUBPIXEL_MIN_COL = 1 << 25      # col entries above which the GPU prefers 'subpixel'
GPU_FUSED_MAX_MACS = 1 << 24        # multiply-adds up to which the GPU forward runs 'fused'
GPU_FUSED_MAX_PER_PIXEL = 4096      # ... if no output pixel's own sum is longer than this
CPU_SUBPIXEL_MAX_BACKWARD_CHANNELS = 32 * 32   # C_in * C_out up to which its backward pays
CPU_SUBPIXEL_CHANNELS_LAST_MIN_STRIDE = 8   # column stride from which 'subpixel' runs channels-last
CPU_IMPLICIT_MIN_CHANNELS = 128     # min(C_in, C_out) from which the CPU forward runs 'implicit'
CPU_WINOGRAD_TRANSPOSED_MIN_CHANNELS = 128   # ... and both directions 'winograd' at k4 s2,
CPU_WINOGRAD_TRANSPOSED_MIN_PIXELS = 1024   # ... from this many input pixels in the batch;
CPU_WINOGRAD_TRANSPOSED_AVX512_MIN_IN_CHANNELS = 256   # with AVX-512 GEMM kernels, from C_in this
CPU_WINOGRAD_TRANSPOSED_AVX512_MIN_PIXELS = 4096       # ... and input pixels in the batch


def check_algorithm(algorithm, kernel, stride, dilation, groups, gpu=False, owner=""):
    """Whether a transposed convolution of this geometry can run ``algorithm`` (one of
    ``ALGORITHMS``): 'subpixel' and 'implicit' need dilation 1 and groups 1, 'winograd'
    that too, kernel = 2 x stride, and NumPy arrays. A ValueError says which condition
    fails (``owner``, e.g. ``'ConvTranspose2d: '``, in front)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{owner}algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm in ("subpixel", "implicit") and (tuple(dilation) != (1, 1) or groups != 1):
        raise ValueError(f"{owner}algorithm {algorithm!r} needs dilation 1 and groups 1, got "
                         f"dilation {tuple(dilation)} and groups {groups}")
    if algorithm == "winograd" and (gpu or not winograd_transposed_applies(
            *kernel, *stride, *dilation, groups)):
        raise ValueError(f"{owner}algorithm 'winograd' runs on the CPU (NumPy arrays) with "
                         f"kernel = 2 x stride, dilation 1 and groups 1, got "
                         f"{'CuPy arrays, ' if gpu else ''}kernel {tuple(kernel)}, stride "
                         f"{tuple(stride)}, dilation {tuple(dilation)}, groups {groups}")


def _pick_algorithm(algorithm, g, backward=False):
    """Resolve 'auto' (measured by benchmarks/deconv.py: the latest runs in
    benchmarks/RESULTS.md, each rule's own measurements in benchmarks/HISTORY.md).

    On the CPU:

    - both directions: 'winograd' at k4 s2, float32/float64. Its GEMMs do 4/9 of the
      others' multiply-adds, but its windows are 3x3 input pixels, so its GEMMs are 9x
      narrower, and its transforms, NumPy passes, cost per channel: it needs wide layers
      on enough pixels, the more so the faster the GEMMs. With AVX2 GEMM kernels
      (``AVX512_GEMM`` false), from ``CPU_WINOGRAD_TRANSPOSED_MIN_CHANNELS`` channels in
      and out and ``CPU_WINOGRAD_TRANSPOSED_MIN_PIXELS`` input pixels in the batch.
      Measured interleaved with torch on the final code (fourteenth session), ratios to
      torch's time forward / backward against the best other algorithm's: 256->128 b8
      32x32 1.20x / 1.20x against 1.68x / 1.78x; 256->128 on one 32x32 image 1.63x / 1.69x
      against 1.81x / 1.93x; 256 channels b4 16x16 1.78x / 1.74x against 2.13x / 2.30x;
      128 channels b8 16x16 2.09x / 2.18x against 2.17x / 2.53x; 128 channels b4 32x32
      1.41x / 1.55x against 1.90x / 2.01x; but with 512 input pixels (256 channels b2
      16x16) 2.13x / 2.30x against 2.00x / 1.91x, (128 channels b2 16x16) 2.60x / 2.66x
      against 2.14x / 2.47x, and 128->64 b8 32x32 2.06x forward against 1.95x. With
      AVX-512 kernels the GEMMs take half the time and the transforms do not: from
      ``CPU_WINOGRAD_TRANSPOSED_AVX512_MIN_IN_CHANNELS`` channels in (128 out) and
      ``CPU_WINOGRAD_TRANSPOSED_AVX512_MIN_PIXELS`` input pixels in the batch: 256->128
      b8 32x32 0.92x / 0.91x against 0.98x / 1.11x; but 256->128 on one 32x32 image 1.42x /
      1.36x against 1.11x / 1.23x, 256 channels b2 24x24 1.32x forward against 1.16x, and
      128 channels b4 32x32 1.19x / 1.19x against 1.22x / 1.25x (even: left out). Other
      strides: not measured enough;
    - forward: 'subpixel' whenever it applies with s > 1 and s dividing k — its GEMM
      writes s*s*(H+A-1)*(W+B-1) values per channel where 'col2im' writes k*k*H*W, and
      the overlap sum happens inside the GEMM; but 'implicit' at stride 2 with at least
      ``CPU_IMPLICIT_MIN_CHANNELS`` channels in and out, in float32/float64 where NumPy's
      BLAS is reachable (256->128 k4 s2 b8: 0.90-1.04x of torch against 0.98-1.07x).
      Its 6 GEMMs at k4 s2 (rows O*2 or O*4, K = C_in) are small for BLAS with fewer
      channels; from s = 4 on, its s*s*O-row phase buffer forces narrow bands, and each
      GEMM reads and writes it again: 'subpixel''s one GEMM wins there;
    - backward: 'subpixel' only for strides of 4 and more and few channels (C_in * C_out
      up to 32 * 32: FCN's score maps). The 'col2im' backward is a single im2col of dy and
      two GEMMs (no col2im at all); for k = 2s its col has 4*s*s entries per pixel, and at
      s = 2, or with 64 channels and more, that costs less than subpixel's three
      rearrangements (un-shuffle dy, im2col x, col2im dx) — see the sweeps in
      benchmarks/HISTORY.md.

    On the GPU, 'subpixel' only once the col matrix passes ``GPU_SUBPIXEL_MIN_COL`` entries.
    The forward of a small problem (up to ``GPU_FUSED_MAX_MACS`` multiply-adds, float32 or
    float64) runs 'fused': one kernel launch where the others take two or three and a
    cuBLAS call, which is what their time was made of on FCN's k4 s2 upsamplers (~0.2 ms
    against cuDNN's 0.034 ms). That bound is an estimate — the fused kernel does no data
    reuse, so it loses once the arithmetic dominates — and not yet measured on a GPU
    (``benchmarks/gpu_session.sh`` times all algorithms side by side).
    A backward asked for with 'fused' runs 'col2im' (the fused kernel is forward only).
    """
    check_algorithm(algorithm, (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw), g.groups, g.gpu)
    subpixel_ok = (g.dh, g.dw) == (1, 1) and g.groups == 1
    winograd_ok = winograd_transposed_applies(g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.groups)
    if algorithm == "fused" and backward:
        algorithm = "col2im"
    if algorithm == "auto":
        fits = subpixel_ok and g.kh % g.sh == 0 and g.kw % g.sw == 0
        if g.gpu:
            # On the GPU each op is a few kernel launches and the launches, not the bytes,
            # set the time until the col matrix gets large: measured on an H200,
            # 'col2im' was faster up to ~22M col entries, 'subpixel' at 88M.
            col_entries = g.n * g.o * g.kh * g.kw * g.h * g.w
            macs = col_entries * (g.c // g.groups)
            # the most taps one output pixel gathers: every (s / gcd(s, d))-th tap per axis
            per_pixel = ((g.c // g.groups) * -(-g.kh // (g.sh // math.gcd(g.sh, g.dh)))
                         * -(-g.kw // (g.sw // math.gcd(g.sw, g.dw))))
            if (not backward and macs <= GPU_FUSED_MAX_MACS and per_pixel <= GPU_FUSED_MAX_PER_PIXEL
                    and g.dtype in (np.float32, np.float64)):
                algorithm = "fused"
            else:
                algorithm = "subpixel" if fits and col_entries > GPU_SUBPIXEL_MIN_COL else "col2im"
        elif winograd_ok and (g.sh, g.sw) == (2, 2) and uses_cblas(g.dtype) and (
                (g.c >= CPU_WINOGRAD_TRANSPOSED_AVX512_MIN_IN_CHANNELS
                 and g.o >= CPU_WINOGRAD_TRANSPOSED_MIN_CHANNELS
                 and g.n * g.h * g.w >= CPU_WINOGRAD_TRANSPOSED_AVX512_MIN_PIXELS)
                if AVX512_GEMM else
                (min(g.c, g.o) >= CPU_WINOGRAD_TRANSPOSED_MIN_CHANNELS
                 and g.n * g.h * g.w >= CPU_WINOGRAD_TRANSPOSED_MIN_PIXELS)):
            algorithm = "winograd"
        elif backward:
            algorithm = ("subpixel" if fits and min(g.sh, g.sw) >= 4
                         and g.c * g.o <= CPU_SUBPIXEL_MAX_BACKWARD_CHANNELS else "col2im")
        elif (fits and (g.sh, g.sw) == (2, 2) and min(g.c, g.o) >= CPU_IMPLICIT_MIN_CHANNELS
              and uses_cblas(g.dtype)):
            algorithm = "implicit"
        else:
            algorithm = "subpixel" if fits and min(g.sh, g.sw) >= 2 else "col2im"
    if algorithm == "subpixel":
        g.ah, g.aw = -(-g.kh // g.sh), -(-g.kw // g.sw)          # taps per phase, ceil(k/s)
    return algorithm


def _padded_taps(g):
    """Does the sub-pixel split pad the kernel with zero taps (``s`` not dividing ``k``)?"""
    return (g.ah * g.sh, g.aw * g.sw) != (g.kh, g.kw)


def _phase_zeros_meet_forward(algorithm, g, x, weight):
    """Would the forward of a phase algorithm multiply an inf or NaN by one of its own
    zeros (see :func:`_phase_zeros_meet`)? The zero border around ``x`` meets every weight;
    'subpixel''s zero taps (``s`` not dividing ``k``) meet every pixel of ``x``. The
    weight is small, so it is always checked; ``x`` only where zero taps exist."""
    if not all_finite(weight):
        return True
    return algorithm == "subpixel" and _padded_taps(g) and not all_finite(x)


def _phase_zeros_meet(algorithm, g, dy, x, weight, need_dx, need_dw):
    """Would a phase algorithm's backward multiply an inf or NaN by a zero that stands
    for no term of the transposed convolution?

    The phase grids are padded: 'subpixel' pads ``x`` (and un-shuffles ``dy`` with a zero
    border), 'implicit' lays ``x`` out with zero padding and ``dy`` on a grid with zeros
    where no output is. The weight gradient pairs those zeros with the other array, and
    the input gradient pairs the grid's zeros with the weight (and 'subpixel''s zero taps,
    when ``s`` does not divide ``k``, with ``dy``): 0 * inf = NaN where 'col2im' gives 0
    or inf. So these cases run 'col2im', whose results are also torch's on its reference
    path (float64; torch's float32 oneDNN kernels form fewer such products, and differ
    from both where an inf of ``x`` meets the zero padding of ``dy``). Checked only for
    the gradients asked for: a frozen upsampler costs no check of ``dy`` or ``x``."""
    if need_dw and not (all_finite(dy) and all_finite(x)):
        return True
    if not need_dx:
        return False
    if not all_finite(weight):
        return True
    return algorithm == "subpixel" and _padded_taps(g) and not all_finite(dy)


def _subpixel_phases(weight, g):
    """A view ``w6[c, o, a, r, b, t] = W[c, o, (A-1-a)*sh + r, (B-1-b)*sw + t]`` of the
    transposed-conv weight (zero past kh, kw): tap ``(a, b)`` of phase ``(r, t)``."""
    xp = get_array_module(weight)
    c, o, kh, kw = weight.shape
    full = weight
    if (g.ah * g.sh, g.aw * g.sw) != (kh, kw):
        full = xp.zeros((c, o, g.ah * g.sh, g.aw * g.sw), dtype=weight.dtype)
        full[:, :, :kh, :kw] = weight
    return full.reshape(c, o, g.ah, g.sh, g.aw, g.sw)[:, :, ::-1, :, ::-1, :]


def _subpixel_weight(weight, g):
    """Rearrange a transposed-conv weight (C, O, kh, kw) into the weight of the
    equivalent ordinary convolution, (O*sh*sw, C, A, B):

    ``Wsub[(o, r, t), c, A-1-a, B-1-b] = W[c, o, a*sh + r, b*sw + t]`` (zero past kh, kw).
    The flip (``A-1-a``) is the one a transposed convolution always carries: input
    ``q - a`` is ``a`` rows *above* output block ``q``.
    """
    xp = get_array_module(weight)
    c, o = weight.shape[:2]
    w6 = _subpixel_phases(weight, g)
    return xp.ascontiguousarray(w6.transpose(1, 3, 5, 0, 2, 4)).reshape(
        o * g.sh * g.sw, c, g.ah, g.aw)


def _subpixel_weight_t(weight, g):
    """The transpose of :func:`_subpixel_weight`'s matrix, (C, A, B, O*sh*sw), for
    :func:`~.shifted_rows._conv2d_shifted_rows`. ``C`` stays first, as in ``W`` itself, so the copy
    permutes within one input channel's (O, kh, kw) block at a time (256 KB for 256
    outputs at k16: in cache); ``(O*sh*sw, C, A, B)`` is a transpose of C against O,
    which for a 256 x 256 x 16 x 16 weight (67 MB) took 147 ms, longer than the GEMM.
    The ``sw`` values of one phase row (``t``) are adjacent in both layouts, so they move
    as one opaque ``sw*itemsize``-byte item: the copy's inner loop runs over ``o``, not
    over ``sw`` values (3-4x faster at s = 2 and 4; ``benchmarks/HISTORY.md``).
    """
    c, o = weight.shape[:2]
    w6 = _subpixel_phases(np.ascontiguousarray(weight), g)            # (c, o, a, r, b, t)
    wt = transpose_keeping_runs(w6, (0, 2, 4, 1, 3))                  # (c, a, b, o, r, t)
    return wt.reshape(c, g.ah, g.aw, o * g.sh * g.sw)


def _subpixel_weight_grad(dwsub, g):
    """The adjoint of :func:`_subpixel_weight`: (O*sh*sw, C, A, B) -> (C, O, kh, kw)."""
    xp = get_array_module(dwsub)
    c = dwsub.shape[1]
    w6 = dwsub.reshape(g.o, g.sh, g.sw, c, g.ah, g.aw)[:, :, :, :, ::-1, ::-1]
    full = w6.transpose(3, 0, 4, 1, 5, 2).reshape(c, g.o, g.ah * g.sh, g.aw * g.sw)
    return xp.ascontiguousarray(full[:, :, :g.kh, :g.kw])
