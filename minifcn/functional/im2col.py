r"""im2col and col2im: the two gathers every convolution here stands on.

Notation (used across :mod:`minifcn.functional`): an image batch ``x`` has shape
``(N, C, H, W)``; a window of ``kh x kw`` taps with stride ``s``, zero padding ``p``
and dilation ``d`` gives ``Ho = (H + 2p - d(kh-1) - 1) // s + 1`` output rows
(likewise ``Wo``).

**im2col** copies every window into a column::

    col[n, c, i, j, oh, ow] = xpad[n, c, oh*s + i*d, ow*s + j*d]

so that a convolution becomes one matrix product: with ``col`` reshaped to
``(N, C*kh*kw, Ho*Wo)`` and the weight to ``(C_out, C*kh*kw)``, ``y = W @ col``.

**col2im** is its adjoint: every entry of ``col`` is *added back* to the pixel it
was copied from (pixels that sit in several windows receive several values)::

    x[n, c, h, w] = sum over (i, j, oh, ow) with oh*s + i*d - p == h and
                    ow*s + j*d - p == w   of   col[n, c, i, j, oh, ow]

"Adjoint" means ``<im2col(x), c> == <x, col2im(c)>`` for every ``x`` and ``c``
(``tests/test_im2col.py`` checks it). That is the whole reason a convolution's
input gradient, and a transposed convolution's forward pass, are GEMM + col2im.

Both functions are written once against ``xp`` (NumPy or CuPy); on the GPU the
hot loops are replaced by the kernels in :mod:`minifcn.kernels`.
"""
from __future__ import annotations

import functools

import numpy as np

from ..backend import as_strided, get_array_module
from ._checks import check_4d, check_positive_size, pair, shape_of


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis.

    ``floor((size + 2p - d(k-1) - 1) / s) + 1``; with ``ceil_mode`` the division
    rounds up, but the last window must still start inside the input or its
    left padding (the rule torch and Caffe use).
    """
    if stride < 1:
        raise ValueError(f"conv_output_size: stride must be >= 1, got {stride!r}")
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1 if span >= 0 else 0
    out = -(-span // stride) + 1          # ceil; a window may hang past the bottom edge
    if (out - 1) * stride >= size + padding:
        out -= 1
    return max(out, 0)


def conv_transpose_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                               dilation: int = 1, output_padding: int = 0) -> int:
    """Output length of a transposed convolution along one axis:

    ``(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``

    Read it as the notes do: stride spreads the ``size`` inputs apart
    (``(size-1)*stride + 1`` positions), each stamps a kernel of span
    ``dilation*(kernel-1) + 1``, and padding then *crops* ``padding`` from each side.
    """
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def pad_hw(x, top, bottom, left, right, value=0):
    """``x`` (N, C, H, W) with constant borders added (what ``np.pad`` does, without its
    general-purpose overhead, which dominates for small maps)."""
    n, c, h, w = x.shape
    out = np.full((n, c, h + top + bottom, w + left + right), value, dtype=x.dtype)
    out[:, :, top:top + h, left:left + w] = x
    return out


def _window_view(xpad, kh, kw, sh, sw, dh, dw, ho, wo):
    """A strided (no-copy) view ``v[n, c, i, j, oh, ow] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]``."""
    sn, sc, sy, sx = xpad.strides
    return as_strided(xpad, (xpad.shape[0], xpad.shape[1], kh, kw, ho, wo),
                      (sn, sc, sy * dh, sx * dw, sy * sh, sx * sw))


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Copy every ``kh x kw`` window of ``x`` into a column.

    x: (N, C, H, W)  ->  col: (N, C, kh, kw, Ho, Wo), C-contiguous, so that
    ``col.reshape(N, C*kh*kw, Ho*Wo)`` is free.
    """
    check_4d(x, "x")
    kh, kw = pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = pair(stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    h, w = x.shape[2:]
    ho, wo = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    check_positive_size("im2col", (ho, wo), (h, w), kernel_size=(kh, kw), stride=(sh, sw),
                        padding=(ph, pw), dilation=(dh, dw))
    return _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


COL2IM_METHODS = ("auto", "taps", "blocks", "phases")
COL2IM_BLOCKS_MIN_STRIDE = 32         # 'auto' takes 'blocks' from this stride on,
COL2IM_BLOCKS_MAX_TAP_ENTRIES = 8192   # when one tap's slice is this small (see col2im)


def col2im(col, image_size, stride=1, padding=0, dilation=1, method="auto"):
    """Add every column entry back to the pixel it came from (the adjoint of im2col).

    col: (N, C, kh, kw, Ho, Wo)  ->  x: (N, C, H, W) with ``(H, W) = image_size``.

    Three NumPy strategies, which give the same sums (tests hold each to a naive loop):

    - ``'taps'``: one strided ``+=`` per kernel tap (kh*kw of them). Simple, any dilation.
    - ``'blocks'`` (dilation 1): group the taps by the stride-block they land in.
      Tap ``i = a*s + r`` of window ``oh`` lands on padded row ``(oh + a)*s + r``:
      block ``oh + a``, phase ``r``. So all taps with the same ``a`` are one shifted
      ``+=`` on the output viewed as ``(N, C, blocks, s, blocks, s)``: ``ceil(kh/s) *
      ceil(kw/s)`` large operations instead of ``kh*kw`` small ones (4 instead of
      4096 for FCN-32s's 64x64 kernel with stride 32).
    - ``'phases'`` (dilation 1): group the taps by the output *phase* they land on. Tap
      ``i`` of window ``m`` lands on row ``m*s + i - p``; that is phase ``r`` (rows ``r,
      r+s, ...``) exactly when ``i ≡ r + p (mod s)``, at the phase's row ``m + (i - p -
      r)/s``. So each phase is a sum of its taps' slices shifted by whole rows and
      columns: ``+=`` on a small contiguous buffer (one per phase, in cache), then one
      strided copy of the buffer into the image. Every tap is still one operation, but
      the image itself is written once in all (``s*s`` strided copies of ``1/(s*s)`` of
      it each), where ``'taps'`` reads and writes it about ``kh*kw/(s*s)`` times over,
      through strided views.

    ``'auto'`` (measured: ``python -m benchmarks.col2im_kernels --device cpu`` against
    torch's ``fold``; ``benchmarks/results/col2im_cpu_session12.json``):

    - ``'taps'`` where ``'phases'`` cannot help: dilation other than 1, stride 1 on either
      axis (one phase per row or column: the same adds plus a copy), or windows that do
      not overlap (kernel <= stride on both axes: each of the taps' adds is then a plain
      copy);
    - ``'blocks'`` from stride ``COL2IM_BLOCKS_MIN_STRIDE`` (32) when each tap's slice
      (``N*C*Ho*Wo`` entries) is at most ``COL2IM_BLOCKS_MAX_TAP_ENTRIES``: then
      ``'phases'``' one operation per tap costs more than the 4 block adds (FCN-32s's 4096
      taps on a 16x16 map, 5376 entries each: 31.8 against 28.7 ms), while on a 32x32 map
      (21504 entries each) ``'phases'`` took 91.5 ms against ``'blocks'``' 199.5. The
      bound lies between those two measured points;
    - else ``'phases'``: 1.22-2.56x faster than ``'taps'`` on five of the benchmark's six
      shapes whose windows overlap (128 channels, k4 s2, batch 8: 12.8 against 32.8 ms),
      and 6% slower on the smallest (21 channels, k4 s2 p0 on 16x16, a 0.11 ms op).

    There is no ``np.add.at``: each ``+=`` touches every element of its target once.
    """
    if getattr(col, "ndim", None) != 6:
        raise ValueError("col must be a 6-D array (N, C, kh, kw, Ho, Wo), "
                         f"got {shape_of(col)}")
    h, w = pair(image_size, "image_size", minimum=1)
    sh, sw = pair(stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    kh, kw, ho, wo = col.shape[2:]
    want = (conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw))
    if (ho, wo) != want:
        raise ValueError(
            f"col has {ho}x{wo} windows, but image_size {h}x{w} with kernel {kh}x{kw}, "
            f"stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)} has {want[0]}x{want[1]}")
    if method not in COL2IM_METHODS:
        raise ValueError(f"col2im method must be one of {COL2IM_METHODS}, got {method!r}")
    if method in ("blocks", "phases") and (dh, dw) != (1, 1):
        raise ValueError(f"col2im method {method!r} needs dilation 1, got {(dh, dw)}")
    return _col2im(col, h, w, sh, sw, ph, pw, dh, dw, method)


# -- the unchecked cores, called by conv.py / pool.py with sizes they computed ---------

def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out=None):
    """im2col of the ``ho x wo`` windows whose first tap reads row ``oh*sh - ph`` and
    column ``ow*sw - pw``; a read outside ``x`` gives 0.

    ``ho`` may be fewer windows than fit, and ``ph`` may be negative: window row 0 then
    starts ``-ph`` rows into the image. That is how a band of output rows ``r0 .. r1`` is
    asked for: ``ph - r0*sh`` and ``ho = r1 - r0`` (see ``conv.py``'s row bands).
    ``out`` (NumPy only): a C-contiguous array of the col's shape to write into.
    """
    xp = get_array_module(x)
    if xp is not np:
        from ..kernels import gpu_im2col
        return gpu_im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
    x = _region(x, -ph, (ho - 1) * sh + (kh - 1) * dh + 1 - ph,
                -pw, (wo - 1) * sw + (kw - 1) * dw + 1 - pw)
    view = _window_view(x, kh, kw, sh, sw, dh, dw, ho, wo)
    if out is None:
        return np.ascontiguousarray(view)
    np.copyto(out, view)
    return out


def _region(x, top, bottom, left, right):
    """``x[:, :, top:bottom, left:right]`` with zeros wherever that range leaves the image
    (a view when it stays inside)."""
    h, w = x.shape[2:]
    if top >= h or bottom <= 0 or left >= w or right <= 0:          # no overlap at all
        return np.zeros(x.shape[:2] + (bottom - top, right - left), dtype=x.dtype)
    inner = x[:, :, max(top, 0):min(bottom, h), max(left, 0):min(right, w)]
    pads = (max(0, -top), max(0, bottom - h), max(0, -left), max(0, right - w))
    return pad_hw(inner, *pads) if any(pads) else inner


def _col2im(col, h, w, sh, sw, ph, pw, dh, dw, method="auto"):
    """col2im onto an (h, w) image; pixels no window reaches are 0."""
    xp = get_array_module(col)
    if xp is not np:
        from ..kernels import gpu_col2im
        return gpu_col2im(col, h, w, sh, sw, ph, pw, dh, dw)
    if method == "auto":                                    # measured: see col2im
        kh, kw = col.shape[2:4]
        if (dh, dw) != (1, 1) or min(sh, sw) == 1 or (kh <= sh and kw <= sw):
            method = "taps"
        elif (min(sh, sw) >= COL2IM_BLOCKS_MIN_STRIDE
              and col.shape[0] * col.shape[1] * col.shape[4] * col.shape[5]
              <= COL2IM_BLOCKS_MAX_TAP_ENTRIES):
            method = "blocks"
        else:
            method = "phases"
    if method == "taps":
        return _col2im_taps(col, h, w, sh, sw, ph, pw, dh, dw)
    if method == "phases":
        return _col2im_phases(col, h, w, sh, sw, ph, pw)
    return _crop(_col2im_blocks(col, h + 2 * ph, w + 2 * pw, sh, sw), ph, pw, h, w)


def _crop(padded, ph, pw, h, w):
    """Image rows ``0 .. h-1`` are padded rows ``ph .. ph+h-1`` (columns alike): a compact
    (N, C, h, w) copy. A negative padding puts image pixels before padded row 0, and
    ``padded`` may end before ``ph + h``: pixels outside it are reached by no window, 0."""
    n, c, hp, wp = padded.shape
    if 0 <= ph and ph + h <= hp and 0 <= pw and pw + w <= wp:     # (the usual case)
        return np.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w])
    out = np.zeros((n, c, h, w), dtype=padded.dtype)
    r0, r1 = max(ph, 0), min(ph + h, hp)
    c0, c1 = max(pw, 0), min(pw + w, wp)
    if r1 > r0 and c1 > c0:
        out[:, :, r0 - ph:r1 - ph, c0 - pw:c1 - pw] = padded[:, :, r0:r1, c0:c1]
    return out


def _col2im_taps(col, h, w, sh, sw, ph, pw, dh, dw):
    """The (N, C, h, w) image: one strided ``+=`` per kernel tap, each clipped to the image
    (:func:`_tap_span`), so no padded image is made and cropped.

    Where no two taps of a window meet (dilation 1 and kernel <= stride: the pixel
    shuffle's case) each ``+=`` is a plain copy, and when the windows also tile the
    whole image (kernel = stride) nothing needs zeroing first."""
    n, c, kh, kw, ho, wo = col.shape
    disjoint = dh == dw == 1 and kh <= sh and kw <= sw
    tiled = (disjoint and kh == sh and kw == sw and 0 <= ph and ph + h <= ho * sh
             and 0 <= pw and pw + w <= wo * sw)
    out = (np.empty if tiled else np.zeros)((n, c, h, w), dtype=col.dtype)
    for i in range(kh):
        m0, m1, r0 = _tap_span(i * dh - ph, sh, ho, h)
        for j in range(kw):
            q0, q1, c0 = _tap_span(j * dw - pw, sw, wo, w)
            if m1 <= m0 or q1 <= q0:                  # this tap lands only on padding
                continue
            dst = out[:, :, r0:r0 + sh * (m1 - m0 - 1) + 1:sh, c0:c0 + sw * (q1 - q0 - 1) + 1:sw]
            src = col[:, :, i, j, m0:m1, q0:q1]
            if disjoint:
                dst[...] = src
            else:
                dst += src
    return out


def _tap_span(offset, stride, windows, size):
    """``(m0, m1, first)``: the windows ``m0 .. m1-1`` whose tap lands on image row
    ``offset + stride*m`` inside ``0 .. size-1``, and that row for ``m0`` (``m1 <= m0``:
    none does). ``m0 = ceil(-offset / stride)``, ``m1 = floor((size-1-offset) / stride) + 1``."""
    m0 = max(0, -(offset // stride))
    m1 = min(windows, (size - 1 - offset) // stride + 1)
    return m0, m1, offset + stride * m0


def _col2im_phases(col, h, w, sh, sw, ph, pw):
    """The (N, C, h, w) image, one output phase ``(r, t)`` at a time (dilation 1): the
    phase's taps added into a contiguous buffer of its ``ceil((h-r)/sh) x
    ceil((w-t)/sw)`` pixels, then copied into ``image[:, :, r::sh, t::sw]``.

    Tap ``i`` of window ``m`` lands on image row ``m*sh + i - ph``, which belongs to phase
    ``r`` when ``i ≡ r + ph (mod sh)``: windows ``m0 .. m1-1`` land inside the image
    (:func:`_tap_span`, as for ``'taps'``), the first on image row ``y0``, which is the
    phase's row ``(y0 - r) / sh``; the next windows take the phase's next rows."""
    n, c, kh, kw, ho, wo = col.shape
    out = np.empty((n, c, h, w), dtype=col.dtype)
    for r in range(min(sh, h)):
        for t in range(min(sw, w)):
            phase = None                                   # no tap reaches it yet: zeros
            for i in range((r + ph) % sh, kh, sh):
                m0, m1, y0 = _tap_span(i - ph, sh, ho, h)
                for j in range((t + pw) % sw, kw, sw):
                    q0, q1, x0 = _tap_span(j - pw, sw, wo, w)
                    if m1 <= m0 or q1 <= q0:               # this tap lands only on padding
                        continue
                    if phase is None:   # allocated at first use: 7% faster at 128ch k4 s2 b8
                        phase = np.zeros((n, c, len(range(r, h, sh)), len(range(t, w, sw))),
                                         dtype=col.dtype)
                    top, left = (y0 - r) // sh, (x0 - t) // sw
                    phase[:, :, top:top + m1 - m0, left:left + q1 - q0] += col[:, :, i, j, m0:m1, q0:q1]
            out[:, :, r::sh, t::sw] = 0 if phase is None else phase
    return out


def _col2im_blocks(col, hp, wp, sh, sw):
    """Padded image (N, C, >=hp, >=wp): one shifted += per stride-block of taps."""
    n, c, kh, kw, ho, wo = col.shape
    a_blocks, b_blocks = -(-kh // sh), -(-kw // sw)          # ceil(k / s)
    hb = max(ho + a_blocks - 1, -(-hp // sh))                 # blocks covering the padded image
    wb = max(wo + b_blocks - 1, -(-wp // sw))
    out = np.zeros((n, c, hb, sh, wb, sw), dtype=col.dtype)  # padded row = block*s + phase
    for a in range(a_blocks):
        rows = min(sh, kh - a * sh)                           # taps a*s .. a*s+rows-1
        for b in range(b_blocks):
            cols = min(sw, kw - b * sw)
            src = col[:, :, a * sh:a * sh + rows, b * sw:b * sw + cols]   # (n, c, r, q, ho, wo)
            dst = out[:, :, a:a + ho, :rows, b:b + wo, :cols]
            if a_blocks == b_blocks == 1:
                dst[...] = src.transpose(0, 1, 4, 2, 5, 3)     # windows do not overlap: copy
            else:
                dst += src.transpose(0, 1, 4, 2, 5, 3)
    return out.reshape(n, c, hb * sh, wb * sw)


def transpose_keeping_runs(a, axes):
    """``ascontiguousarray(a.transpose(*axes, last))``: a copy with the leading axes
    permuted and the last axis kept last. On NumPy, when that axis has unit stride, its
    values move as one opaque ``len*itemsize``-byte item, so the copy's inner loop runs
    over the innermost permuted axis instead of over those few values (3-7x faster for
    runs of 2 to 4, ``benchmarks/HISTORY.md``)."""
    xp = get_array_module(a)
    moved = a.transpose(tuple(axes) + (a.ndim - 1,))
    if xp is not np:
        return xp.ascontiguousarray(moved)
    out = np.empty(moved.shape, dtype=a.dtype)
    copy_keeping_runs(out, moved)
    return out


SHUFFLE_BLOCK_BYTES = 2 << 20   # output bytes per block of the pixel shuffle (stays in cache)
SHUFFLE_MAX_COPIES = 256        # above this many strided copies, one block (s = 32 has 1024 phases)


@functools.lru_cache(maxsize=256)
def _phase_runs(size, s, p, blocks):
    """Where each phase ``r`` of one axis of :func:`_pixel_shuffle` lands: ``((r, first
    output index, first block, blocks copied, outputs of the phase), ...)``. A function of
    five ints, kept for the next call with the same sizes (a small op's per-call cost)."""
    out = []
    for r in range(s):
        first = (r - p) % s
        q0 = (first + p) // s
        out.append((r, first, q0, min(len(range(first, size, s)), blocks - q0),
                    len(range(first, size, s))))
    return tuple(out)


def _pixel_shuffle(ysub, h, w, ph, pw):
    """col2im for windows that do not overlap (kernel = stride), NumPy only: a pure
    rearrangement. ysub (N, C, sh, sw, Hq, Wq) -> x (N, C, h, w) with

    ``x[n, c, q*sh + r - ph, u*sw + t - pw] = ysub[n, c, r, t, q, u]``

    (rows that no ``(q, r)`` reaches are 0). One strided copy per phase ``(r, t)`` straight
    into the cropped output: no zero fill, no ``+=``, no crop copy (2-3x faster than
    :func:`_col2im` here, ``benchmarks/HISTORY.md``). The ``sh*sw`` copies interleave into
    the same output lines, so they run one image and block of channel maps
    (``SHUFFLE_BLOCK_BYTES`` of output) at a time: the block is still in cache for the
    next phase's copy (7-9 ms -> 5 ms for 8 x 128 maps of 64x64). With many phases
    (stride 32: 1024 copies per block) the per-copy overhead wins, and it runs as one block.
    """
    n, c, sh, sw, hq, wq = ysub.shape
    rows, cols = _phase_runs(h, sh, ph, hq), _phase_runs(w, sw, pw, wq)
    covered = all(cnt == want for *_, cnt, want in rows + cols)
    x = (np.empty if covered else np.zeros)((n, c, h, w), dtype=ysub.dtype)
    step = max(1, SHUFFLE_BLOCK_BYTES // (h * w * ysub.dtype.itemsize))   # maps per block
    blocks = [(slice(None), slice(None))]     # all at once: fits one block, or too many copies
    if n * c > step and n * -(-c // step) * sh * sw <= SHUFFLE_MAX_COPIES:
        blocks = [(slice(i, i + 1), slice(c0, c0 + step)) for i in range(n)
                  for c0 in range(0, c, step)]
    for images, maps in blocks:
        for r, y0, q0, hc, _ in rows:
            for t, x0, u0, wc, _ in cols:
                if hc > 0 and wc > 0:
                    x[images, maps, y0:y0 + sh * (hc - 1) + 1:sh, x0:x0 + sw * (wc - 1) + 1:sw] = \
                        ysub[images, maps, r, t, q0:q0 + hc, u0:u0 + wc]
    return x


def _block_pieces(size, s, p, blocks):
    """The output indices ``i = q*s + r - p`` (``0 <= i < size``, block ``0 <= q < blocks``,
    phase ``0 <= r < s``) as pieces ``(q, q_count, r, r_count, i)``: ``q_count`` blocks from
    ``q`` on, phases ``r .. r + r_count - 1`` of each, landing on ``i`` on. At most three: a
    partial first block (the crop ``p`` cuts into it), the whole blocks, a partial last
    block (the crop at the end). Returns ``(pieces, covered)``; indices from ``covered``
    on are reached by no block (an ``output_padding``'s rows)."""
    pieces, i = [], 0
    while i < size:
        q, r = divmod(i + p, s)
        if q >= blocks:
            break
        whole = min(blocks - q, (size - i) // s) if r == 0 else 0
        if whole:
            pieces.append((q, whole, 0, s, i))
            i += whole * s
        else:
            count = min(s - r, size - i)
            pieces.append((q, 1, r, count, i))
            i += count
    return pieces, i


def copy_keeping_runs(dst, src):
    """``dst[...] = src`` for arrays whose last axes both have unit stride: on NumPy the
    runs along that axis move as opaque ``len*itemsize``-byte items (one ``memcpy`` each
    instead of a strided inner loop over a few values)."""
    if (isinstance(dst, np.ndarray) and isinstance(src, np.ndarray) and dst.shape[-1] > 1
            and src.shape[-1] == dst.shape[-1] and dst.dtype == src.dtype
            and dst.strides[-1] == src.strides[-1] == dst.itemsize):
        item = np.dtype((np.void, dst.shape[-1] * dst.itemsize))
        dst.view(item)[..., 0] = src.view(item)[..., 0]
    else:
        dst[...] = src


def _pixel_shuffle_channels_last(ysub, h, w, ph, pw, out=None, q0=0):
    """:func:`_pixel_shuffle` from a channels-last ``ysub (N, Q, Wq, C, sh, sw)``:

    ``x[n, c, q*sh + r - ph, u*sw + t - pw] = ysub[n, q - q0, u, c, r, t]``

    for the row blocks ``q0 .. q0 + Q - 1`` that ``ysub`` holds (all of them by default;
    a band of them when the GEMM streams its output through a small buffer), written into
    ``out (N, C, h, w)`` (a new array, zero where no block reaches, if not given).

    Here the ``sw`` values of one phase row (``t``) lie side by side in ``ysub`` and in
    ``x`` both, so the copy moves them as one item (:func:`copy_keeping_runs`), a whole
    block ``(q, u)`` row by row: at stride 32 one 128-byte ``memcpy`` where
    :func:`_pixel_shuffle` writes 32 floats 32 apart, each into another cache line.
    The crop cuts at most a first and a last partial block per axis
    (:func:`_block_pieces`): at most 9 copies."""
    n, nq, wq, c, sh, sw = ysub.shape
    rows, covered_h = _block_pieces(h, sh, ph, q0 + nq)
    cols, covered_w = _block_pieces(w, sw, pw, wq)
    if out is None:                     # rows of blocks before q0 are not written: zeros
        whole = q0 == 0 and (covered_h, covered_w) == (h, w)
        out = (np.empty if whole else np.zeros)((n, c, h, w), ysub.dtype)
    for q, qc, r, rc, i in rows:
        lo, hi = max(q, q0), min(q + qc, q0 + nq)        # the piece's blocks held here
        if lo >= hi:
            continue
        i, q, qc = i + (lo - q) * sh, lo, hi - lo
        for u, uc, t, tc, j in cols:
            dst = out[:, :, i:i + qc * rc, j:j + uc * tc].reshape(n, c, qc, rc, uc, tc)
            src = ysub[:, q - q0:q - q0 + qc, u:u + uc, :, r:r + rc, t:t + tc]
            copy_keeping_runs(dst, src.transpose(0, 3, 1, 4, 2, 5))
    return out
