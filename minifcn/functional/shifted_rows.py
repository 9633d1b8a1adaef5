r"""The shifted-rows layout: a stride-1 convolution's im2col as one contiguous copy per tap
(CPU, NumPy).

Flatten a zero-padded image row by row, and a window's tap ``(u, v)`` sits ``u*Wp + v``
values after the window's own start (``Wp`` the padded row pitch): the row of ``col`` for
that tap is the whole flattened image *shifted* by ``u*Wp + v``, a ``memcpy`` where
:func:`~.im2col._im2col` gathers. The price is a few windows per row that wrap into the
next row, computed and thrown away (:func:`_shifted_rows_waste`). :func:`_conv2d_shifted_rows`
has the derivation.

:mod:`.conv` runs its small-channel 3x3 convolutions this way (forward, input gradient
and weight gradient, :func:`_weight_grad_shifted_rows`), and the ``'subpixel'``
transposed convolution's phase convolution; :func:`_subpixel_channels_last` is that
forward with its GEMM transposed, for large strides. Which of them runs for an op is
:mod:`.conv`'s decision (its ``CPU_*`` rules), and every function here takes the band
budget ``band_bytes`` from the caller; how they lay out their own work is decided here
(the column-tap fold, :func:`_fold_column_taps` and ``CPU_SHIFTED_FOLD_MIN_WINDOWS``;
the channels-last output bands, ``CPU_CHANNELS_LAST_*``).
"""
from __future__ import annotations

import numpy as np

from .blas import gemm
from .im2col import _block_pieces, _pixel_shuffle_channels_last


def _conv2d_shifted_rows(x, weight_t, ph, pw, band_bytes):
    r"""A stride-1, dilation-1, one-group convolution on the CPU whose im2col is one
    contiguous copy per tap. ``weight_t (C, kh, kw, O)``: ``W[o, c, u, v]`` stored as
    ``[c, u, v, o]``, the GEMM's ``W^T``. Returns ``y (N, O, Ho, Wo)`` as a strided view.

    Flatten a padded image ``xpad (C, Hp, Wp)`` row by row. Window ``(i, j)``'s tap
    ``(u, v)`` reads ``xpad[c, i + u, j + v]``, which sits at flat index ``p + u*Wp + v``
    with ``p = i*Wp + j``. So, with the windows numbered by ``p`` instead of ``i*Wo + j``,

    ``col[c, u, v, p] = xpad_flat[c, p + u*Wp + v]``

    — the row ``col[c, u, v]`` is the flattened image *shifted* by ``u*Wp + v``: a memcpy,
    not a gather. The rows share their padding: a row is ``G`` zeros and then the ``W``
    pixels, and a window that runs past the right end of its row reads the zeros at the
    start of the next, so the row pitch is ``Wp = W + G`` with ``G = pw + max(0, pw - kw
    + 1)`` (``>= pw`` zeros on each side, and ``Wp >= Wo``). Windows ``j >= Wo`` of a row,
    if any (``Wp - Wo = kw - 1 - pw`` when ``pw < kw``), wrap into the next row; they are
    computed and thrown away. For the sub-pixel step (``pw = kw - 1``) there are none;
    for, say, a 7x7 kernel with no padding on 14x14 they would make each row's GEMM
    columns 1.75x as many (Wp/Wo = 14/8), and with the window rows past each image's
    bottom (the stack's period, below) the whole GEMM 3.06x as large
    (:func:`_shifted_rows_waste`), which is why
    :func:`~.conv.conv_transpose2d`'s sub-pixel forward uses this, and :func:`~.conv.conv2d` only where
    the waste is small (:func:`~.conv._shifted_conv2d`). ``y = weight_t^T @ col``: BLAS reads the
    weight transposed, so it need not be in ``(O, C*kh*kw)`` order.

    The batch is one tall image: the images stacked, ``P`` rows apart, with zero rows
    between them that serve as the bottom padding of one and the top padding of the
    next (the same sharing, vertically). Image ``k``'s output rows are rows
    ``k*P .. k*P + Ho - 1`` of the stack's output, so one GEMM covers all images (wider
    GEMMs run faster). Output rows go in bands so the col matrix stays within
    ``band_bytes`` (the caller's band budget, ``conv.CPU_BAND_BYTES``).

    On long bands the column taps are not copied either: ``col[c, u, v, p] = col[c, u, 0,
    p + v]``, so only the ``kh`` row shifts are (``col3[c, u, q] = xpad_flat[c, q +
    u*Wp]``, a third of the copies for a 3x3 kernel), and the sum over ``v`` runs as ``kw``
    GEMMs that read ``col3`` from column ``v`` on and add into the same output (BLAS's
    ``beta = 1``)::

        y[:, p] = sum_v W_v @ col3[:, p + v]        (W_v[o, (c, u)] = W[o, c, u, v])

    (:func:`_fold_column_taps` says when.)
    """
    n, c, h, w = x.shape
    _, kh, kw, o = weight_t.shape
    stack_flat, wp, ho, wo, period, out_rows = _shifted_rows_layout(x, kh, kw, ph, pw)
    taps = c * kh * kw
    y = np.empty((o, n * period, wp), dtype=np.result_type(x, weight_t))
    y_flat = y.reshape(o, -1)
    width, bands = _shifted_bands(out_rows, taps, wp, wo, x.dtype.itemsize, band_bytes)
    if _fold_column_taps(kw, width, o, c * kh):         # [(W_v, col offset v), ...]
        parts = [(np.ascontiguousarray(weight_t[:, :, v, :].reshape(c * kh, o).T), v)
                 for v in range(kw)]
    else:                                                # [(W, 0)]: one GEMM, the full col
        parts = [(weight_t.reshape(taps, o).T, 0)]       # (O, K): a transposed view
    col, extra = _shifted_rows_col(c, kh, kw, width, len(parts) > 1, x.dtype)
    col_rows = col.reshape(-1, col.shape[-1])
    for start, length in bands:
        _shifted_copies(stack_flat, col, start, length + extra, wp)
        w_part, v = parts[0]
        np.matmul(w_part, col_rows[:, v:v + length], out=y_flat[:, start:start + length])
        for w_part, v in parts[1:]:
            gemm(w_part, col_rows[:, v:v + length], y_flat[:, start:start + length],
                 accumulate=True)
    return y.reshape(o, n, period, wp)[:, :, :ho, :wo].transpose(1, 0, 2, 3)


CPU_SHIFTED_FOLD_MIN_WINDOWS = 8192   # shifted rows: copy only the row shifts from this band width


def _fold_column_taps(kw, width, outputs=0, rows=0):
    """Whether the shifted-rows layout copies only each kernel row's first column tap
    and reads the others at offsets ``v`` (``kw`` GEMMs per band instead of one): for
    kernels more than one wide, on bands of at least ``CPU_SHIFTED_FOLD_MIN_WINDOWS``
    windows, and with no more ``outputs`` (GEMM output rows) than ``rows`` (of the folded
    col: ``C*kh``; the weight gradient's output is dW itself, and it passes 0).

    The bands are sized for the unfolded col (:func:`_shifted_bands`), so 8192 windows
    fit only where ``C*kh*kw*itemsize <= band_bytes / 8192`` (1 kB): for 3x3 kernels
    at most 28 channels in float32 (14 in float64), and the image(s) must hold 8192
    windows. Interleaved A/B of forward + backward on the training run's layers (batch
    16, 7 rounds, two runs), folding every band: 0.89-0.92x of the time at 64x64,
    0.86-0.97x at 32x32, but 0.96-1.21x at 16x16 (4.6k windows), 0.97-1.15x at 8x8 and
    0.91-1.24x at 4x4: there the two more GEMM calls per pass cost more than the copies
    they save. The forward also needs no more output channels than ``col3`` has rows
    (``O <= C*kh``): each more GEMM reads and writes the output band again, and VGG's
    conv1_1 (3 -> 64 channels) at 320x320 took 1.15x as long folded. (The weight gradient
    of the implicit layers, 64+ channels, folds on every band: :func:`~.conv.conv2d_backward`.)"""
    return kw > 1 and width >= CPU_SHIFTED_FOLD_MIN_WINDOWS and outputs <= rows


def _shifted_rows_col(c, kh, kw, width, folded, dtype):
    """A band's col buffer for the shifted rows, and how many windows past the band it
    reads: ``(C, kh, kw, width)`` and 0, or folded (:func:`_fold_column_taps`) the row
    shifts only, ``(C, kh, 1, width + kw - 1)`` and ``kw - 1`` (tap ``v`` reads ``v``
    windows on)."""
    extra = kw - 1 if folded else 0
    return np.empty((c, kh, 1 if folded else kw, width + extra), dtype=dtype), extra


def _shifted_bands(out_rows, taps, wp, wo, itemsize, band_bytes):
    """The bands of :func:`_conv2d_shifted_rows`'s windows: ``(width, [(start, length),
    ...])``, whole output rows per band, as many as keep a band's col (``taps x width``)
    within ``band_bytes``; a band is windows ``p = start .. start + length - 1``, less
    the last row's wrapped windows, which are not needed."""
    rows = max(1, band_bytes // (taps * wp * itemsize))            # output rows per band
    width = (min(rows, out_rows) - 1) * wp + wo                          # windows per band
    return width, [(r0 * wp, (min(out_rows, r0 + rows) - r0 - 1) * wp + wo)
                   for r0 in range(0, out_rows, rows)]


def _weight_grad_shifted_rows(dy, x, g, band_bytes, fold=None):
    r"""``dW`` of a convolution run by :func:`_conv2d_shifted_rows`, from the same layout:

    ``dW[o, c, u, v] = sum_p dy_lay[o, p] * col[c, u, v, p]``

    where ``dy_lay`` is ``dy`` written at its windows' positions ``p`` in the stack, with
    zeros at the windows the forward throws away (which then add ``0 * x``: the caller
    checks that ``x`` is finite, else that would be NaN). As in :func:`~.conv._weight_grad_t`,
    the GEMM is written transposed, ``dW^T += col @ dy_lay^T``, one band of col at a
    time; every tap's row of col is one contiguous copy, where im2col gathers. As in
    :func:`_conv2d_shifted_rows`, on long bands only the row shifts are copied, and column
    tap ``v``'s rows of ``dW^T`` come from that ``col3`` read from column ``v`` on
    (``fold``: True or False to decide that here, None to leave it to
    :func:`_fold_column_taps`)."""
    stack_flat, wp, ho, wo, period, out_rows = _shifted_rows_layout(x, g.kh, g.kw, g.ph, g.pw)
    dy_lay = np.zeros((g.o, g.n, period, wp), dtype=g.dtype)
    dy_lay[:, :, :ho, :wo] = dy.transpose(1, 0, 2, 3)
    dy_flat = dy_lay.reshape(g.o, -1)
    taps = g.c * g.kh * g.kw
    width, bands = _shifted_bands(out_rows, taps, wp, wo, x.dtype.itemsize, band_bytes)
    dwt = np.zeros((g.c * g.kh, g.kw, g.o), dtype=g.dtype)   # dW^T, rows (c, u, v)
    if _fold_column_taps(g.kw, width) if fold is None else (fold and g.kw > 1):
        # [(rows of dW^T, offset v)]
        parts = [(dwt[:, v], v) for v in range(g.kw)]
    else:
        parts = [(dwt.reshape(taps, g.o), 0)]
    col, extra = _shifted_rows_col(g.c, g.kh, g.kw, width, len(parts) > 1, x.dtype)
    col_rows = col.reshape(-1, col.shape[-1])
    for start, length in bands:
        _shifted_copies(stack_flat, col, start, length + extra, wp)
        for dwt_part, v in parts:
            gemm(col_rows[:, v:v + length], dy_flat[:, start:start + length].T, dwt_part,
                 accumulate=True)
    return np.ascontiguousarray(dwt.reshape(taps, g.o).T).reshape(g.o, g.c, g.kh, g.kw)


CPU_CHANNELS_LAST_BAND_BYTES = 16 << 20  # GEMM output per band of the channels-last sub-pixel step
CPU_CHANNELS_LAST_MIN_PIXELS = 256       # ... but at least this many GEMM rows (pixels) per band


def _subpixel_channels_last(x, weight_t, g, band_bytes):
    r"""The CPU ``'subpixel'`` forward for large strides: :func:`_conv2d_shifted_rows`'s
    GEMM transposed, ``ysub^T = col^T @ weight_t``, so that each input pixel's
    ``O x sh x sw`` phase values come out side by side (channels-last), and the pixel
    shuffle (:func:`~.im2col._pixel_shuffle_channels_last`) moves each phase row's ``sw``
    values as one run, a ``memcpy`` of ``sw*itemsize`` bytes. The output runs through one
    buffer (``CPU_CHANNELS_LAST_BAND_BYTES``, a few rows of blocks, at least
    ``CPU_CHANNELS_LAST_MIN_PIXELS`` pixels: the GEMM's rows) that each band's
    shuffle empties while it is still in cache: the ``O*sh*sw``-channel ``ysub`` (94 MB for
    FCN-32s on 32x32) is never whole in memory.

    Why: with ``ysub`` channels-first, the shuffle's inner loop writes values ``sw`` apart,
    each into another cache line; at stride 32 that was 85-90% of the time (FCN-32s's
    21 -> 21 k64 s32 on 32x32: 190 ms, 0.43x of it this way; ``benchmarks/HISTORY.md``).
    At stride 2 the runs are 8 bytes, and the channels-first shuffle, blocked per map,
    is as fast and its GEMM wider.
    """
    n, c, h, w = x.shape
    _, ah, aw, m = weight_t.shape                     # m = O*sh*sw, ordered (o, r, t)
    dtype = np.result_type(x, weight_t)
    _, covered_h = _block_pieces(g.ho, g.sh, g.ph, h + ah - 1)
    _, covered_w = _block_pieces(g.wo, g.sw, g.pw, w + aw - 1)
    y = (np.empty if (covered_h, covered_w) == (g.ho, g.wo) else np.zeros)(
        (n, g.o, g.ho, g.wo), dtype=dtype)
    if y.size == 0:                                   # an empty batch (or no channels)
        return y
    stack_flat, wp, hq, wq, period, out_rows = _shifted_rows_layout(x, ah, aw, ah - 1, aw - 1)
    taps = c * ah * aw
    size = x.dtype.itemsize
    rows = min(band_bytes // (taps * wp * size), CPU_CHANNELS_LAST_BAND_BYTES // (m * wp * size))
    rows = min(out_rows, max(rows, -(-CPU_CHANNELS_LAST_MIN_PIXELS // wp)))
    col = np.empty((c, ah, aw, (rows - 1) * wp + wq), dtype=x.dtype)
    ybuf = np.empty((rows * wp, m), dtype=dtype)
    for r0 in range(0, out_rows, rows):
        r1 = min(out_rows, r0 + rows)
        length = (r1 - r0 - 1) * wp + wq
        _shifted_copies(stack_flat, col, r0 * wp, length, wp)
        np.matmul(col.reshape(taps, -1)[:, :length].T, weight_t.reshape(taps, m),
                  out=ybuf[:length])
        band = ybuf[:(r1 - r0) * wp].reshape(r1 - r0, wp, g.o, g.sh, g.sw)
        for k in range(r0 // period, min(n, -(-r1 // period))):   # images the band meets
            q0, q1 = max(0, r0 - k * period), min(hq, r1 - k * period)
            if q0 < q1:
                rows_k = band[k * period + q0 - r0:k * period + q1 - r0, :wq]
                _pixel_shuffle_channels_last(rows_k[None], g.ho, g.wo, g.ph, g.pw,
                                             out=y[k:k + 1], q0=q0)
    return y


def _shifted_rows_sizes(h, w, kh, kw, ph, pw):
    """The sizes of :func:`_conv2d_shifted_rows`'s layout for ``h x w`` images:
    ``(gap, wp, ho, wo, period)`` — the zeros before each row, the row pitch, the output
    size, and the rows from one image to the next."""
    gap = pw + max(0, pw - kw + 1)                   # zeros between rows: >= pw, Wp >= Wo
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    period = h + ph + max(0, ph - kh + 1)           # >= h + ph, and >= Ho: no overlap
    return gap, w + gap, ho, wo, period


def _shifted_rows_waste(h, w, kh, kw, ph, pw):
    """The windows :func:`_conv2d_shifted_rows` computes per window it keeps:
    ``period * Wp / (Ho * Wo)`` (1.03 for a 3x3 'same' convolution on 64x64, 1.56 on
    4x4, 6.25 for fc6's 7x7 kernel padded by 3 on 2x2)."""
    _, wp, ho, wo, period = _shifted_rows_sizes(h, w, kh, kw, ph, pw)
    return period * wp / (ho * wo)


def _shifted_rows_layout(x, kh, kw, ph, pw):
    """The stacked, flattened image of :func:`_conv2d_shifted_rows` and its sizes:
    ``(stack_flat, wp, ho, wo, period, out_rows)`` — the row pitch, the output size, the
    rows between images, and the stack's output rows that are needed."""
    n, c, h, w = x.shape
    gap, wp, ho, wo, period = _shifted_rows_sizes(h, w, kh, kw, ph, pw)
    # padded pixel (r, s) of image k at flat (k*period + r)*Wp + s + (gap - pw)
    stack_flat = _stack_images(x, ph, gap, period).reshape(c, -1)[:, gap - pw:]
    return stack_flat, wp, ho, wo, period, (n - 1) * period + ho


def _stack_images(x, ph, gap, period):
    """x (N, C, H, W) -> (C, N*period + ph + 1, gap + W): the images one below the other,
    ``period`` rows apart, each row after ``gap`` zeros, all in zeros (the padding of
    each image, shared between neighbouring rows and images; one more zero row at the
    bottom for the last windows' reads past their row)."""
    n, c, h, w = x.shape
    stack = np.zeros((c, n * period + ph + 1, gap + w), dtype=x.dtype)
    stack[:, ph:ph + n * period, gap:].reshape(c, n, period, w)[:, :, :h] = \
        x.transpose(1, 0, 2, 3)
    return stack


def _shifted_copies(stack_flat, col, start, length, wp):
    """``col[c, u, v, :length] = stack_flat[c, start + u*wp + v :][:length]``: the im2col of
    windows ``start .. start+length-1``, one contiguous copy per tap."""
    _, kh, kw, _ = col.shape
    for u in range(kh):
        for v in range(kw):
            shift = start + u * wp + v
            col[:, u, v, :length] = stack_flat[:, shift:shift + length]
