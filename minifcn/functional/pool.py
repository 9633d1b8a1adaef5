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

On the CPU, windows that tile the image (stride = kernel, no padding or dilation: FCN's
2x2 pools) take a shorter road to the same numbers: a max per tile row, then across the
rows, and a backward that writes each winner's ``dy`` straight into its tile.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ._checks import check_4d, check_float, check_positive_size, pair, shape_of
from ._select import all_finite, select
from .im2col import _col2im, _window_view, conv_output_size, pad_hw


def _check_pool_settings(op, kh, kw, ph, pw, ceil_mode):
    if not isinstance(ceil_mode, (bool, np.bool_)):   # 'no' would read as True
        raise ValueError(f"{op}: ceil_mode must be True or False, got {ceil_mode!r}")
    if 2 * ph > kh or 2 * pw > kw:         # torch's rule: half the kernel, dilation or not
        raise ValueError(f"{op}: padding {(ph, pw)} must be at most half the "
                         f"kernel size {(kh, kw)}")


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    check_4d(x, "input")
    check_float(x, "input")
    kh, kw = pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = pair(kernel_size if stride is None else stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    _check_pool_settings("max_pool2d", kh, kw, ph, pw, ceil_mode)
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
    elif _tiles(x.shape[2:], kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
        y, tap = _max_pool_tiles(x, kh, kw, ho, wo)
    else:
        # pad with -inf so padding never wins; extra bottom/right rows for ceil_mode
        extra_h = max(0, (ho - 1) * sh + (kh - 1) * dh + 1 - (x.shape[2] + 2 * ph))
        extra_w = max(0, (wo - 1) * sw + (kw - 1) * dw + 1 - (x.shape[3] + 2 * pw))
        xpad = x
        if ph or pw or extra_h or extra_w:
            xpad = pad_hw(x, ph, ph + extra_h, pw, pw + extra_w, value=-np.inf)
        win = _window_view(xpad, kh, kw, sh, sw, dh, dw, ho, wo)      # (N, C, kh, kw, Ho, Wo)
        y, tap = _max_over_taps([win[:, :, i, j] for i in range(kh) for j in range(kw)])
        if xpad is not x:
            _padding_never_wins(y, tap, x.shape[2:], kh, kw, sh, sw, ph, pw, dh, dw)
    return (y, tap) if return_indices else y


def _max_over_taps(taps):
    """Element-wise max over a list of equally shaped views, and the index of the first
    view that attains it (torch's tie rule; NaN: see :func:`_nan_wins`).
    A handful of whole-array operations per tap instead of a gather per window."""
    y = taps[0].copy()
    for v in taps[1:]:
        np.maximum(v, y, out=y)                      # propagates NaN; of +0 and -0, y's
                                                     # (the earlier: see _keep_greater)
    tap = np.zeros(y.shape, dtype=np.int32)
    searching = taps[0] != y
    for v in taps[1:]:
        tap += searching                             # still looking: move on to this tap
        searching &= (v != y)
    _nan_wins(y, tap, taps)
    return y, tap


def _padding_never_wins(y, tap, input_size, kh, kw, sh, sw, ph, pw, dh, dw):
    """A window whose pixels are all -inf ties with its -inf padding, and the first in scan
    order may be a padded tap. torch's kernels start from the window's first pixel (first
    row and column inside the image) and never look at the padding: report that pixel."""
    lost = y == -np.inf
    if not lost.any():
        return
    first, some = [], []
    for size, k, s, p, d, out in ((input_size[0], kh, sh, ph, dh, y.shape[2]),
                                  (input_size[1], kw, sw, pw, dw, y.shape[3])):
        at = (np.arange(out) * s - p)[:, None] + np.arange(k) * d    # each window's taps
        inside = (at >= 0) & (at < size)
        first.append(np.argmax(inside, axis=1))         # the first tap inside the image
        some.append(inside.any(axis=1))
    pixel = first[0][:, None] * kw + first[1][None, :]
    pixel[~(some[0][:, None] & some[1][None, :])] = 0   # a window of padding only: tap 0
    np.copyto(tap, pixel.astype(np.int32), where=lost)


def _nan_wins(y, tap, taps):
    """A window holding NaN has max NaN, and its winner is its *last* NaN in scan order:
    torch's kernels (CPU and CUDA) take any NaN they meet, so a later one takes over."""
    if np.isnan(y).any():
        for t, v in enumerate(taps):
            np.copyto(tap, t, where=np.isnan(v))


# The tiled paths work on slabs of whole channels of about this many input elements (1 MB of
# float32): a slab and its temporaries stay in the L2 cache across the passes over it.
POOL_SLAB_ELEMENTS = 1 << 18


def _tiles(input_size, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """Do the windows tile the image: stride = kernel, no padding or dilation, and every
    window inside (ceil_mode's partial edge windows would stick out)? FCN's 2x2 / 2 pools do."""
    return ((sh, sw) == (kh, kw) and ph == pw == 0 and dh == dw == 1
            and ho * kh <= input_size[0] and wo * kw <= input_size[1])


def _slabs(planes, h, w):
    """Slices of ``planes`` (N*C) image planes, about POOL_SLAB_ELEMENTS input elements each."""
    step = max(1, POOL_SLAB_ELEMENTS // max(1, h * w))
    return [slice(p0, min(planes, p0 + step)) for p0 in range(0, planes, step)]


def _max_pool_tiles(x, kh, kw, ho, wo):
    """Max pooling when the windows tile the image (see :func:`_tiles`): the same max and
    first-in-scan-order winner as :func:`_max_over_taps`, in fewer passes, slab by slab.

    Window (i, j) is the tile ``x[kh*i : kh*i + kh, kw*j : kw*j + kw]``. First each tile row u
    is reduced along W: its max ``m_u`` and the first column ``c_u`` holding it (a later
    column wins only if strictly greater). Then the rows: a later row wins only if its max
    is strictly greater, and its winner is tap ``u*kw + c_u``. So the winner is the first
    maximum in scan order, as in torch. NaN windows are settled by :func:`_nan_wins`."""
    n, c, h, w = x.shape
    y = np.empty((n * c, ho, wo), dtype=x.dtype)
    tap = np.empty((n * c, ho, wo), dtype=np.int32)
    planes = x.reshape(n * c, h, w)                  # a view, unless x's strides forbid it
    for s in _slabs(n * c, h, w):
        tiles = planes[s, :ho * kh, :wo * kw].reshape(-1, ho, kh, wo, kw)
        y_s, tap_s = y[s], tap[s]
        _max_of_tile_row([tiles[:, :, 0, :, v] for v in range(kw)], y_s, tap_s)
        if kh > 1:
            m, col = np.empty_like(y_s), np.empty_like(tap_s)
        for u in range(1, kh):
            _max_of_tile_row([tiles[:, :, u, :, v] for v in range(kw)], m, col)
            col += u * kw
            _keep_greater(y_s, tap_s, m, col)
        _nan_wins(y_s, tap_s, [tiles[:, :, u, :, v] for u in range(kh) for v in range(kw)])
    return y.reshape(n, c, ho, wo), tap.reshape(n, c, ho, wo)


def _max_of_tile_row(columns, m, col):
    """``m`` = the max over the views ``columns``, ``col`` = the first one holding it."""
    if len(columns) == 1:
        np.copyto(m, columns[0])
        col[...] = 0
        return
    later_wins = columns[1] > columns[0]
    np.maximum(columns[1], columns[0], out=m)
    np.copyto(col, later_wins)
    for v in range(2, len(columns)):
        _keep_greater(m, col, columns[v], v)


def _keep_greater(best, best_tap, value, value_tap):
    """One step of the scan: where ``value`` is strictly greater than ``best``, it and its
    tap take over (so of equal values the earlier stays).

    Equal values differ in bits only as +0 and -0, and there torch keeps the earlier.
    ``np.maximum(a, b)`` returns ``b`` when ``a == b`` (NumPy 1.x-2.x, its SIMD and scalar
    loops alike), so ``best`` goes second; ``test_max_pool2d_keeps_the_sign_of_the_first_zero``
    checks this against torch. (A ``copyto`` where strictly greater would not depend on
    it, but would lose a later NaN, which ``np.maximum`` propagates.)"""
    later_wins = value > best
    np.maximum(value, best, out=best)
    np.copyto(best_tap, value_tap, where=later_wins)


def _max_pool_tiles_backward(dy, tap, h, w, kh, kw):
    """The routing when the windows tile the image: each input pixel lies in at most one
    window, so ``dx`` at tap (u, v) of tile (i, j) is ``dy[i, j]`` if that tap won, else 0 —
    kh*kw strided writes per slab, no col matrix and no col2im sum. Rows and columns past
    the last whole tile (floor mode) belong to no window: their gradient is 0."""
    n, c, ho, wo = dy.shape
    dx = np.empty((n * c, h, w), dtype=dy.dtype)
    dy, tap = dy.reshape(n * c, ho, wo), tap.reshape(n * c, ho, wo)
    finite = all_finite(dy)
    for s in _slabs(n * c, h, w):
        if ho * kh < h or wo * kw < w:
            dx[s] = 0
        tiles = dx[s, :ho * kh, :wo * kw].reshape(-1, ho, kh, wo, kw)
        for t in range(kh * kw):
            select(tiles[:, :, t // kw, :, t % kw], dy[s], tap[s] == t, finite)
    return dx.reshape(n, c, h, w)


def max_pool2d_backward(dy, tap, input_size, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Route each ``dy`` to its window's winning input: ``dx = col2im(onehot(tap) * dy)``.

    dy, tap: (N, C, Ho, Wo); input_size: (H, W) of the forward input -> dx (N, C, H, W).
    ``tap``: integers, each window's winning tap ``0 .. kh*kw - 1`` (:func:`max_pool2d`'s
    ``return_indices``); on the CPU a tap outside that range is refused.

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
    _check_pool_settings("max_pool2d_backward", kh, kw, ph, pw, ceil_mode)
    if getattr(dy, "shape", None) != getattr(tap, "shape", None) or getattr(dy, "ndim", 0) != 4:
        raise ValueError(f"max_pool2d_backward: grad_output {shape_of(dy)} and "
                         f"indices {shape_of(tap)} must be equal 4-D shapes")
    xp = get_array_module(dy)
    n, c, ho, wo = dy.shape
    if getattr(getattr(tap, "dtype", None), "kind", None) not in ("i", "u"):
        raise ValueError(f"max_pool2d_backward: indices must be an integer array (the winning "
                         f"tap of each window), got dtype {getattr(tap, 'dtype', type(tap).__name__)}")
    # the taps' range: a negative one reads as huge unsigned (one pass, not min and max);
    # on the CPU only, where it costs a pass (~1% of the op), not a wait for the device
    if xp is np and tap.size and not int(tap.view(f"u{tap.dtype.itemsize}").max()) < kh * kw:
        raise ValueError(f"max_pool2d_backward: indices must be taps 0 .. {kh * kw - 1} of the "
                         f"{kh}x{kw} window, got values from {int(tap.min())} to {int(tap.max())}")
    fits = [(conv_output_size(size, k, s, p, d, ceil_mode), conv_output_size(size, k, s, p, d, False))
            for size, k, s, p, d in ((h, kh, sh, ph, dh), (w, kw, sw, pw, dw))]
    if not (ho in fits[0] and wo in fits[1]):
        raise ValueError(f"max_pool2d_backward: input_size {(h, w)} does not give the "
                         f"{ho}x{wo} windows of grad_output")
    if xp is not np:
        from ..kernels import gpu_max_pool2d_backward
        return gpu_max_pool2d_backward(dy, tap, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    if _tiles((h, w), kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
        return _max_pool_tiles_backward(dy, tap, h, w, kh, kw)
    col = np.empty((n, c, kh, kw, ho, wo), dtype=dy.dtype)
    finite = all_finite(dy)
    for t in range(kh * kw):                         # dy where tap t won, else 0
        select(col[:, :, t // kw, t % kw], dy, tap == t, finite)
    return _col2im(col, h, w, sh, sw, ph, pw, dh, dw)
