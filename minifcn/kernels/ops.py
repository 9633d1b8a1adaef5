"""Host side of the CUDA kernels: check dtypes, allocate outputs, pack the scalars, launch.

Every function takes a *runtime* first (see :mod:`minifcn.kernels.runtime`): the CuPy one
on a GPU, the CPU emulator in the tests. Nothing here imports CuPy, so the tests run this
exact code — argument order, scalar types, launch sizes — without a GPU.

Scalars go to the kernels as NumPy scalars of the C type the kernel declares: ``int`` ->
``numpy.int32``, ``long long`` -> ``numpy.int64``, ``float``/``double`` -> the array's
type. (CuPy would pass a plain Python int as 64 bits, which a kernel reading ``int``
misreads; the emulator refuses plain Python numbers for that reason.)
"""
from __future__ import annotations

import numpy as np

from .runtime import kernel_path

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_INT32_MAX = 2**31 - 1


def _suffix(dtype, op: str) -> str:
    try:
        return _SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"{op}: minifcn's CUDA kernels take float32 or float64 arrays, "
                        f"got {np.dtype(dtype)}") from None


def _i32(value) -> np.int32:
    value = int(value)
    if not -_INT32_MAX - 1 <= value <= _INT32_MAX:
        raise ValueError(f"size {value} does not fit the kernels' 32-bit int parameters")
    return np.int32(value)


def _launch(rt, source: str, name: str, total: int, args):
    """Run kernel ``name`` of ``minifcn/kernels/<source>`` over ``total`` elements."""
    if total == 0:
        return                                  # CUDA refuses an empty grid
    grid, block = rt.launch_config(total)
    rt.function(kernel_path(source), name)(grid, block, tuple(args))


def _windows(kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    return [_i32(v) for v in (kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)]


# -- im2col / col2im -------------------------------------------------------------------------

def im2col(rt, x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """x (N, C, H, W) -> col (N, C, kh, kw, ho, wo); reads outside the image give 0."""
    sfx = _suffix(x.dtype, "im2col")
    x = rt.xp.ascontiguousarray(x)
    n, c, h, w = x.shape
    col = rt.xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    _launch(rt, "im2col.cu", f"im2col_{sfx}", col.size,
            [x, col, np.int64(n * c), _i32(h), _i32(w),
             *_windows(kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)])
    return col


COL2IM_KERNELS = ("auto", "gather", "phase", "rowblock")
ROWBLOCK_MAX_STRIDE = 8     # col2im_rowblock up to this width stride, col2im_phase above


def col2im(rt, col, h, w, sh, sw, ph, pw, dh, dw, kernel="auto"):
    """col (N, C, kh, kw, Ho, Wo) -> x (N, C, h, w), the adjoint of :func:`im2col`.

    ``kernel``: three orders of the same gather (``im2col.cu``). ``'auto'`` takes
    ``'gather'`` (one thread per pixel) for dilation > 1; for dilation 1, ``'rowblock'``
    (one thread per stride block of a row) up to stride 8 and ``'phase'`` (threads in
    stride-phase order) above — on every shape of ``benchmarks/col2im_kernels.py`` on an
    H200 that choice was 1.1-1.4x faster than 'gather' or tied with it (the 20 us ones).
    """
    sfx = _suffix(col.dtype, "col2im")
    if kernel not in COL2IM_KERNELS:
        raise ValueError(f"col2im kernel must be one of {COL2IM_KERNELS}, got {kernel!r}")
    dilated = (dh, dw) != (1, 1)
    if kernel == "auto":
        kernel = "gather" if dilated else ("rowblock" if sw <= ROWBLOCK_MAX_STRIDE else "phase")
    if kernel != "gather" and dilated:
        raise ValueError(f"col2im kernel {kernel!r} needs dilation 1, got {(dh, dw)}")
    col = rt.xp.ascontiguousarray(col)
    n, c, kh, kw, ho, wo = col.shape
    x = rt.xp.empty((n, c, h, w), dtype=col.dtype)
    if kernel == "gather":
        _launch(rt, "im2col.cu", f"col2im_{sfx}", x.size,
                [col, x, np.int64(n * c), _i32(h), _i32(w),
                 *_windows(kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)])
        return x
    qw = (w + pw + sw - 1) // sw                    # stride blocks covering a padded row
    threads = n * c * h * qw * (sw if kernel == "phase" else 1)
    _launch(rt, "im2col.cu", f"col2im_{kernel}_{sfx}", threads,
            [col, x, np.int64(n * c), _i32(h), _i32(w),
             *[_i32(v) for v in (kh, kw, sh, sw, ph, pw, ho, wo)]])
    return x


# -- transposed convolution in one kernel ------------------------------------------------------

def conv_transpose2d(rt, x, weight, bias, groups, hout, wout, sh, sw, ph, pw, dh, dw):
    """x (N, C, H, W), weight (C, O/groups, kh, kw), bias (O,) or None -> y (N, O, hout, wout):
    torch's ``conv_transpose2d`` as one gather kernel (``conv_transpose.cu``): col2im with
    the col entries computed on the spot. x, weight and bias must share one dtype."""
    sfx = _suffix(x.dtype, "conv_transpose2d")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and a.dtype != x.dtype:
            raise TypeError(f"conv_transpose2d: {name} is {a.dtype} but the input is {x.dtype}")
    x, weight = rt.xp.ascontiguousarray(x), rt.xp.ascontiguousarray(weight)
    n, c, h, w = x.shape
    cw, og, kh, kw = weight.shape
    if cw != c or c % groups:               # the kernel would read past x or W
        raise ValueError(f"conv_transpose2d: input {tuple(x.shape)} and weight "
                         f"{tuple(weight.shape)} with groups={groups} do not fit: the weight "
                         f"must be (C, O/groups, kh, kw) with C divisible by groups")
    if bias is not None and tuple(bias.shape) != (og * groups,):
        raise ValueError(f"conv_transpose2d: bias must have shape ({og * groups},), "
                         f"got {tuple(bias.shape)}")
    y = rt.xp.empty((n, og * groups, hout, wout), dtype=x.dtype)
    has_bias = bias is not None
    bias = rt.xp.ascontiguousarray(bias) if has_bias else rt.xp.empty(1, dtype=x.dtype)  # unread
    _launch(rt, "conv_transpose.cu", f"conv_transpose2d_{sfx}", y.size,
            [x, weight, bias, y,
             np.int64(n), _i32(c), _i32(og * groups), _i32(groups), _i32(h), _i32(w),
             _i32(hout), _i32(wout), *[_i32(v) for v in (kh, kw, sh, sw, ph, pw, dh, dw)],
             _i32(has_bias)])
    return y


# -- max pooling -----------------------------------------------------------------------------

def max_pool2d(rt, x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """x (N, C, H, W) -> (y, tap), both (N, C, ho, wo); tap (int32) = u*kw + v of the winner."""
    sfx = _suffix(x.dtype, "max_pool2d")
    x = rt.xp.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = rt.xp.empty((n, c, ho, wo), dtype=x.dtype)
    tap = rt.xp.empty((n, c, ho, wo), dtype=np.int32)
    _launch(rt, "pool.cu", f"max_pool2d_{sfx}", y.size,
            [x, y, tap, np.int64(n * c), _i32(h), _i32(w),
             *_windows(kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)])
    return y, tap


def max_pool2d_backward(rt, dy, tap, h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    """dy, tap (N, C, Ho, Wo) -> dx (N, C, h, w): each dy goes to its window's winner."""
    sfx = _suffix(dy.dtype, "max_pool2d_backward")
    dy = rt.xp.ascontiguousarray(dy)
    tap = rt.xp.ascontiguousarray(tap.astype(np.int32, copy=False))
    n, c, ho, wo = dy.shape
    dx = rt.xp.empty((n, c, h, w), dtype=dy.dtype)
    _launch(rt, "pool.cu", f"max_pool2d_backward_{sfx}", dx.size,
            [dy, tap, dx, np.int64(n * c), _i32(h), _i32(w),
             *_windows(kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)])
    return dx


# -- ReLU and dropout ----------------------------------------------------------------------------

def relu(rt, x):
    sfx = _suffix(x.dtype, "relu")
    x = rt.xp.ascontiguousarray(x)
    y = rt.xp.empty(x.shape, dtype=x.dtype)
    _launch(rt, "activation.cu", f"relu_{sfx}", y.size, [x, y, np.int64(y.size)])
    return y


def relu_backward(rt, dy, y):
    sfx = _suffix(dy.dtype, "relu_backward")
    if y.dtype != dy.dtype:
        raise TypeError(f"relu_backward: grad_output is {dy.dtype} but the output is {y.dtype}")
    dy, y = rt.xp.ascontiguousarray(dy), rt.xp.ascontiguousarray(y)
    dx = rt.xp.empty(dy.shape, dtype=dy.dtype)
    _launch(rt, "activation.cu", f"relu_backward_{sfx}", dx.size,
            [dy, y, dx, np.int64(dx.size)])
    return dx


def mask_group(x_shape, mask_shape):
    """How many consecutive elements of x share one mask value: the mask must be x's shape
    with trailing axes set to 1 (``(N, C, 1, 1)`` for channel-wise dropout). None if not."""
    if len(mask_shape) != len(x_shape):
        return None
    k = len(x_shape)
    while k > 0 and mask_shape[k - 1] == 1:
        k -= 1
    if tuple(mask_shape[:k]) != tuple(x_shape[:k]):
        return None
    return int(np.prod(x_shape[k:], dtype=np.int64))


def dropout(rt, x, u, p):
    """Inverted dropout from given uniform draws ``u`` (float32, x's shape or a trailing-ones
    shape such as (N, C, 1, 1)): ``mask = [u >= p] / (1 - p)``, ``y = x * mask``.
    Returns ``(y, mask)``; mask has u's shape and x's dtype."""
    sfx = _suffix(x.dtype, "dropout")
    group = mask_group(x.shape, u.shape)
    if group is None:
        raise ValueError(f"dropout: random draws of shape {u.shape} do not fit input {x.shape}")
    x = rt.xp.ascontiguousarray(x)
    u = rt.xp.ascontiguousarray(u.astype(np.float32, copy=False))
    y = rt.xp.empty(x.shape, dtype=x.dtype)
    mask = rt.xp.empty(u.shape, dtype=x.dtype)
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)    # p = 1: u < 1 always, so every m is 0
    if y.size == 0:        # no thread runs, but a channel-wise mask still holds N*C draws
        mask[...] = (u >= np.float32(p)).astype(x.dtype) * x.dtype.type(scale)
        return y, mask
    _launch(rt, "activation.cu", f"dropout_{sfx}", y.size,
            [x, u, y, mask, np.int64(y.size), np.int64(group), np.float32(p),
             x.dtype.type(scale)])
    return y, mask


def dropout_backward(rt, dy, mask):
    """``dx = dy * mask``; mask as :func:`dropout` returned it."""
    sfx = _suffix(dy.dtype, "dropout_backward")
    group = mask_group(dy.shape, mask.shape)
    if group is None or mask.dtype != dy.dtype:
        raise ValueError(f"dropout_backward: mask {mask.shape} {mask.dtype} does not fit "
                         f"grad_output {dy.shape} {dy.dtype}")
    dy, mask = rt.xp.ascontiguousarray(dy), rt.xp.ascontiguousarray(mask)
    dx = rt.xp.empty(dy.shape, dtype=dy.dtype)
    _launch(rt, "activation.cu", f"dropout_backward_{sfx}", dx.size,
            [dy, mask, dx, np.int64(dx.size), np.int64(group)])
    return dx


# -- softmax cross-entropy ------------------------------------------------------------------------

def _ce_args(rt, logits, labels, op):
    sfx = _suffix(logits.dtype, op)
    logits = rt.xp.ascontiguousarray(logits)
    labels = rt.xp.ascontiguousarray(labels.astype(np.int64, copy=False))
    n, k, h, w = logits.shape
    return sfx, logits, labels, n, k, h * w


def softmax_cross_entropy(rt, logits, labels, ignore_index):
    """Per-pixel loss (N, H, W): ``logsumexp(z) - z[t]``, 0 where t == ignore_index."""
    sfx, logits, labels, n, k, hw = _ce_args(rt, logits, labels, "softmax_cross_entropy")
    loss = rt.xp.empty(labels.shape, dtype=logits.dtype)
    _launch(rt, "loss.cu", f"softmax_cross_entropy_{sfx}", loss.size,
            [logits, labels, loss, np.int64(n), _i32(k), np.int64(hw), np.int64(ignore_index)])
    return loss


def softmax_cross_entropy_backward(rt, logits, labels, ignore_index, denom):
    """``(softmax(z) - onehot(t)) / denom`` (N, K, H, W), 0 where t == ignore_index."""
    sfx, logits, labels, n, k, hw = _ce_args(rt, logits, labels,
                                             "softmax_cross_entropy_backward")
    grad = rt.xp.empty(logits.shape, dtype=logits.dtype)
    _launch(rt, "loss.cu", f"softmax_cross_entropy_backward_{sfx}", labels.size,
            [logits, labels, grad, np.int64(n), _i32(k), np.int64(hw), np.int64(ignore_index),
             logits.dtype.type(denom)])
    return grad
