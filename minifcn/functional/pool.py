r"""Max pooling, forward and backward.

``y[n, c, i, j] = max over taps (u, v) of xpad[n, c, i*s + u*d, j*s + v*d]``, where the
padding is ``-inf`` (a padded position never wins). With ``ceil_mode`` the output size
rounds up (the original FCN's Caffe pooling does), adding a partial window at the
bottom/right edge as long as it starts inside the image or its left padding.

Backward: the max is a selection, so its gradient is a routing. Each ``dy[n, c, i, j]``
goes to the one input that won window ``(i, j)`` — if two inputs tie, only the first in
scan order gets it (as torch does; the test checks ties explicitly). Overlapping windows
(stride < kernel) may route several gradients to one pixel; they add up, which is
exactly col2im of a one-hot column.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ._checks import check_4d, check_float, check_positive_size, pair
from .im2col import _col2im, _window_view, conv_output_size, pad_hw


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    check_4d(x, "input")
    check_float(x, "input")
    kh, kw = pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = pair(kernel_size if stride is None else stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    if 2 * ph > dh * (kh - 1) + 1 or 2 * pw > dw * (kw - 1) + 1:
        raise ValueError(f"max_pool2d: padding {(ph, pw)} must be at most half the "
                         f"(dilated) kernel size {(dh * (kh - 1) + 1, dw * (kw - 1) + 1)}")
    h, w = x.shape[2:]
    ho = conv_output_size(h, kh, sh, ph, dh, ceil_mode)
    wo = conv_output_size(w, kw, sw, pw, dw, ceil_mode)
    check_positive_size("max_pool2d", (ho, wo), (h, w), kernel_size=(kh, kw), stride=(sh, sw),
                        padding=(ph, pw), dilation=(dh, dw))
    return kh, kw, sh, sw, ph, pw, dh, dw, ho, wo


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling. x (N, C, H, W) -> y (N, C, Ho, Wo).

    With ``return_indices`` also returns ``tap`` (N, C, Ho, Wo), int32: which tap
    ``u*kw + v`` of each window won — all :func:`max_pool2d_backward` needs.
    """
    kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = _pool_geometry(x, kernel_size, stride, padding,
                                                            dilation, ceil_mode)
    xp = get_array_module(x)
    if xp is not np:
        from ..kernels import gpu_max_pool2d
        y, tap = gpu_max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
    else:
        # pad with -inf so padding never wins; extra bottom/right rows for ceil_mode
        extra_h = max(0, (ho - 1) * sh + (kh - 1) * dh + 1 - (x.shape[2] + 2 * ph))
        extra_w = max(0, (wo - 1) * sw + (kw - 1) * dw + 1 - (x.shape[3] + 2 * pw))
        xpad = x
        if ph or pw or extra_h or extra_w:
            xpad = pad_hw(x, ph, ph + extra_h, pw, pw + extra_w, value=-np.inf)
        win = _window_view(xpad, kh, kw, sh, sw, dh, dw, ho, wo)      # (N, C, kh, kw, Ho, Wo)
        y, tap = _max_over_taps([win[:, :, i, j] for i in range(kh) for j in range(kw)])
    return (y, tap) if return_indices else y


def _max_over_taps(taps):
    """Element-wise max over a list of equally shaped views, and the index of the first
    view that attains it (torch's tie rule; a NaN counts as the max, as in torch).
    A handful of whole-array operations per tap instead of a gather per window."""
    y = taps[0].copy()
    for v in taps[1:]:
        np.maximum(y, v, out=y)                      # propagates NaN
    nan = bool(np.isnan(y).any())
    tap = np.zeros(y.shape, dtype=np.int32)
    searching = (taps[0] != y) & ~(np.isnan(taps[0]) if nan else False)
    for v in taps[1:]:
        tap += searching                             # still looking: move on to this tap
        searching &= (v != y)
        if nan:
            searching &= ~np.isnan(v)
    return y, tap


def max_pool2d_backward(dy, tap, input_size, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Route each ``dy`` to its window's winning input: ``dx = col2im(onehot(tap) * dy)``.

    dy, tap: (N, C, Ho, Wo); input_size: (H, W) of the forward input -> dx (N, C, H, W).

    Why the argmax: near the forward input (no ties), ``y[n, c, i, j]`` *is* one input
    pixel, the winner, and nudging any other pixel of the window does not change it. So
    ``dy[i, j] / dx[winner] = 1`` and 0 for the rest: ``dx[h, w] = sum of dy over the
    windows that pixel (h, w) won``. The one-hot column has a single 1 per window at the
    winning tap, and col2im adds those back to the pixels they came from.
    """
    h, w = pair(input_size, "input_size", minimum=1)
    kh, kw = pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = pair(kernel_size if stride is None else stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    if getattr(dy, "shape", None) != getattr(tap, "shape", None) or getattr(dy, "ndim", 0) != 4:
        raise ValueError(f"max_pool2d_backward: grad_output {getattr(dy, 'shape', None)} and "
                         f"indices {getattr(tap, 'shape', None)} must be equal 4-D shapes")
    xp = get_array_module(dy)
    n, c, ho, wo = dy.shape
    fits = [(conv_output_size(size, k, s, p, d, ceil_mode), conv_output_size(size, k, s, p, d, False))
            for size, k, s, p, d in ((h, kh, sh, ph, dh), (w, kw, sw, pw, dw))]
    if not (ho in fits[0] and wo in fits[1]):
        raise ValueError(f"max_pool2d_backward: input_size {(h, w)} does not give the "
                         f"{ho}x{wo} windows of grad_output")
    if xp is not np:
        from ..kernels import gpu_max_pool2d_backward
        return gpu_max_pool2d_backward(dy, tap, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    col = np.empty((n, c, kh, kw, ho, wo), dtype=dy.dtype)
    for t in range(kh * kw):                         # one-hot column, times dy
        np.multiply(dy, tap == t, out=col[:, :, t // kw, t % kw])
    return _col2im(col, h, w, sh, sw, ph, pw, dh, dw)
