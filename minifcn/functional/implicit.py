r"""``conv_transpose2d(..., algorithm='implicit')``: the sub-pixel phases, each an implicit GEMM.

A transposed convolution stamps ``W[c, o, u, v] * x[n, c, i, j]`` onto output pixel
``(i*s + u - p, j*s + v - p)``. Along one axis, output ``y = r + s*m`` (phase ``r``, block
``m``) receives ``y = i*s + u - p``, so ``u ≡ r + p (mod s)``: only the taps
``u = u0 + a*s`` (``u0 = (r + p) mod s``, ``a = 0, 1, ...`` while ``u < k``), each reading input

    ``i = m + q - a``,   ``q = (r + p) // s``

— a fixed *shift* ``d = q - a`` of the block index (:func:`axis_phases`). In 2-D, phase
``(r, t)`` of the output is therefore an ordinary stride-1 convolution of ``x``:

    ``y[n, o, r + s*m, t + s*l] = sum over its taps (u, d) x (v, e) of
    sum_c W[c, o, u, v] * x[n, c, m + d, l + e]``

and the inner sum is a GEMM, ``W_tap (O x C) @ x shifted by (d, e) (C x pixels)``.

What makes the GEMM *implicit* (no im2col): lay the padded input out flat, rows ``Wp``
apart, and "``x`` shifted by ``(d, e)``" is the same flat array read from ``d*Wp + e``
on — a view with rows ``C``-plane apart, which BLAS reads in place
(:func:`~minifcn.functional.blas.gemm`), and the sum over taps accumulates in the GEMM's
output (``beta = 1``). Phases that share a shift share its GEMM: their weights stack
into one taller ``A``. Last, the phase outputs are interleaved into ``y`` (the pixel
shuffle).

Rows and columns share differently (:func:`column_slots`). Each row phase computes
exactly its own rows. The column phases all go on one grid: phase ``t``'s column ``l``
sits at grid column ``l + delta_t`` (``delta_t`` in {0, 1}), which lines up their
shifts, so every column shift serves every column phase. That grid is one column wider
than a phase, but the flat rows carry that column anyway (the zero gap between rows
that the shifts read as padding), so it costs nothing. For FCN's k4 s2 p1 that makes
6 GEMMs of 2 or 4 phases each (rows ``O*2`` or ``O*4``) where one per exact shift
would be 9, four of them a single phase's: BLAS runs the taller ones faster.

Against ``'subpixel'`` (same phases, CPU path in :mod:`.conv`): no im2col copies, and
no extra rows, where ``'subpixel'``'s one GEMM computes every phase on a shared grid one
row and column larger (6% more arithmetic at 32x32).
Against ``'col2im'``: the overlap sum happens in the GEMMs, never in a col matrix.
Dilation 1 and groups 1 only, like ``'subpixel'``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .blas import gemm

IMPLICIT_BAND_BYTES = 4 << 20   # phase-output bytes per band (stays in cache for the shuffle)


def axis_phases(out_size, k, s, p):
    """One axis of the phase decomposition: for each phase ``r`` in ``0 .. s-1``,
    ``(count, taps)`` — ``count`` outputs ``y = r, r+s, ...`` below ``out_size``, and
    ``taps = [(u, d), ...]``: ``y = r + s*m`` gets ``W[..., u] * x[m + d]``."""
    phases = []
    for r in range(s):
        u0, q = (r + p) % s, (r + p) // s
        taps = [(u, q - a) for a, u in enumerate(range(u0, k, s))]
        phases.append((len(range(r, out_size, s)), taps))
    return phases


def column_slots(out_size, k, s, p):
    """The column phases on one shared grid: ``(slots, taps)``.

    ``slots[j] = (t, count, delta)``: slot ``j`` holds phase ``t = (j - p) mod s`` (so its
    taps are ``v = j + s*a``: the slots run in tap order), whose ``count`` outputs
    ``t + s*l`` sit at grid columns ``l + delta``. ``taps = [(a, e, width), ...]``: tap
    ``a`` of every slot ``j < width`` (those with ``j + s*a < k``) reads grid shift ``e``:
    grid column ``l'`` gets ``W[..., j + s*a] * x[..., l' + e]``.

    Why: phase ``t`` reads shifts ``q_t - a`` with ``q_t = (t + p) // s``
    (:func:`axis_phases`), and ``q_t`` takes at most two values; moving the phases with
    the larger one a column to the right (``delta = q_t - min q``) gives them all the
    shifts ``min q - a``."""
    q = [(t + p) // s for t in range(s)]
    slots = []
    for j in range(s):
        t = (j - p) % s
        slots.append((t, len(range(t, out_size, s)), q[t] - min(q)))
    taps = [(a, min(q) - a, min(s, k - s * a)) for a in range(-(-k // s))]
    return slots, taps


def _gemm_plan(weight, rows, col_taps, g, xp):
    """The GEMMs of one band: ``[(d, e, A, (r0, r1), j), ...]`` — for each row shift ``d``
    and column tap ``a`` (grid shift ``e``), the stacked weights ``A`` of the phases that
    read it: rows ``(r, o, j)`` for ``r`` in ``r0 .. r1-1`` and every slot ``j`` (``j =
    None``) or one slot ``j``; columns ``c``. Ordered so that a GEMM covering every phase
    comes first.

    Row phase ``r`` reads shift ``d`` through tap ``u = r + p - s*d`` (:func:`axis_phases`),
    so a shift's row phases are the ``r`` with ``0 <= u < k`` — one run — and slot ``j``
    takes column tap ``j + s*a`` (:func:`column_slots`): ``A`` is one slice of the
    kernel, ``W[:, :, u(r0):u(r1), s*a:s*a + width]``, reshaped. It is kept as the
    transpose of a ``(c, (r, o, j))`` array, copied one input channel's block at a time
    (in cache; BLAS reads it transposed)."""
    c = weight.shape[0]
    ds = sorted({d for _, taps in rows for _, d in taps})
    plan = []
    for d in ds:
        r0 = max(0, g.sh * d - g.ph)                        # the phases with 0 <= u < kh
        r1 = min(g.sh, g.sh * d - g.ph + g.kh)
        taps = weight[:, :, g.ph - g.sh * d + r0:g.ph - g.sh * d + r1]   # u = r + p - s*d
        for a, e, width in col_taps:
            block = taps[..., g.sw * a:g.sw * a + width]    # slot j: column tap j + s*a
            if width == g.sw:                               # rows (r, o, j): one uniform stride
                plan.append((d, e, _swap_o_and_r(block, xp).reshape(c, -1).T, (r0, r1), None))
            else:                                           # rows (r, o) of one slot
                plan.extend((d, e, _swap_o_and_r(block[..., j:j + 1], xp).reshape(c, -1).T,
                             (r0, r1), j) for j in range(width))
    full = [i for i, q in enumerate(plan) if q[3] == (0, g.sh) and q[4] is None]
    if full:
        plan.insert(0, plan.pop(full[0]))
    return plan, bool(full)


def _swap_o_and_r(taps, xp):
    """``(c, o, r, t)`` -> a contiguous ``(c, r, o, t)``. On NumPy the ``t`` values of one
    ``(c, o, r)`` are adjacent in both layouts and move as one opaque item, so the copy's
    inner loop runs over ``o`` (7x faster for t = 2 than element by element)."""
    if xp is np and taps.shape[-1] > 1 and taps.strides[-1] == taps.itemsize:
        runs = taps.view(np.dtype((np.void, taps.shape[-1] * taps.itemsize)))[..., 0]
        return np.ascontiguousarray(runs.transpose(0, 2, 1)).view(taps.dtype).reshape(
            taps.shape[0], taps.shape[2], taps.shape[1], taps.shape[3])
    return xp.ascontiguousarray(taps.transpose(0, 2, 1, 3))


def _bands(n, mq, period, row_bytes, budget):
    """``[(k0, k1, m0, m1), ...]``: images ``k0 .. k1-1``, phase rows ``m0 .. m1-1`` of each.
    Whole images while one fits ``budget``; else one image at a time, in even row bands."""
    if period * row_bytes <= budget:
        step = max(1, budget // (period * row_bytes))
        return [(k0, min(n, k0 + step), 0, mq) for k0 in range(0, n, step)]
    count = -(-mq // max(1, budget // row_bytes))
    bounds = [i * mq // count for i in range(count + 1)]
    return [(k, k + 1, m0, m1) for k in range(n) for m0, m1 in zip(bounds[:-1], bounds[1:])]


def conv_transpose2d_implicit(x, weight, g):
    """The forward (no bias) of :func:`~.conv.conv_transpose2d` with ``algorithm='implicit'``;
    ``g`` from :func:`~.conv._geometry` (dilation 1, groups 1)."""
    xp = get_array_module(x)
    dtype = g.dtype
    x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
    n, c, h, w = x.shape
    rows = axis_phases(g.ho, g.kh, g.sh, g.ph)
    slots, col_taps = column_slots(g.wo, g.kw, g.sw, g.pw)
    mq = max(count for count, _ in rows)                 # phase rows per image
    grid = max(count + delta for _, count, delta in slots)   # columns of the shared grid
    ds = [d for _, taps in rows for _, d in taps] or [0]
    es = [e for _, e, _ in col_taps] or [0]
    # Padding that the shifts read: rows -top .. h-1+bottom, columns -gap .. w-1+gap.
    top, bottom = max(0, -min(ds)), max(0, mq - 1 + max(ds) - (h - 1))
    gap = max(0, -min(es), grid - 1 + max(es) - (w - 1), grid - w)
    lay = _Layout(top=top, gap=gap, wp=gap + w,        # row pitch: gap zeros, then the pixels
                  period=max(h + max(top, bottom), mq))  # images this many rows apart
    row_bytes = g.sh * g.sw * g.o * lay.wp * np.dtype(dtype).itemsize
    bands = _bands(n, mq, lay.period, row_bytes, IMPLICIT_BAND_BYTES)
    last = max(lay.start(k0, m0, max(ds), max(es)) + lay.span(k0, k1, m0, m1) * lay.wp
               for k0, k1, m0, m1 in bands)             # the furthest read, + 1
    flat = _stack_input(x, lay, -(-last // lay.wp)).reshape(c, -1)
    plan, full_first = _gemm_plan(weight, rows, col_taps, g, xp)
    y = xp.empty((n, g.o, g.ho, g.wo), dtype=dtype)
    longest = max((k1 - k0) * lay.height(k0, k1, m0, m1) for k0, k1, m0, m1 in bands)
    buf = xp.empty((g.sh, g.o, g.sw, longest * lay.wp), dtype=dtype)
    for band in bands:
        _phase_gemms(flat, plan, full_first, lay, band, buf)
        _shuffle_phases(buf, rows, slots, lay, band, y, g)
    return y


class _Layout:
    """Where things sit in the stacked input and in a band's phase outputs."""

    def __init__(self, top, gap, wp, period):
        self.top, self.gap, self.wp, self.period = top, gap, wp, period

    def start(self, k0, m0, d, e):
        """Flat index of input pixel ``(m0 + d, e)`` of image ``k0``: where the band's
        GEMM for shift ``(d, e)`` starts reading."""
        return (k0 * self.period + self.top + m0 + d) * self.wp + self.gap + e

    def span(self, k0, k1, m0, m1):
        """Rows of the stacked phase grid a band covers (with the rows between images)."""
        return (k1 - k0 - 1) * self.period + m1 - m0 if k1 - k0 > 1 else m1 - m0

    def height(self, k0, k1, m0, m1):
        """Rows per image in the band's output buffer."""
        return self.period if k1 - k0 > 1 else m1 - m0


def _stack_input(x, lay, rows):
    """The input images one below the other: image ``k``'s pixel ``(i, j)`` at
    ``stack[:, top + k*period + i, gap + j]``, zeros everywhere else — the padding,
    shared by neighbouring rows and images. ``(C, rows, Wp)``."""
    xp = get_array_module(x)
    n, c, h, _ = x.shape
    stack = xp.zeros((c, max(rows, lay.top + n * lay.period), lay.wp), dtype=x.dtype)
    stack[:, lay.top:lay.top + n * lay.period].reshape(c, n, lay.period, lay.wp)[:, :, :h, lay.gap:] = \
        x.transpose(1, 0, 2, 3)
    return stack


def _phase_gemms(flat, plan, full_first, lay, band, buf):
    """One band's phase outputs into ``buf (sh, O, sw, L)``: for each shift, ``A @ (x
    shifted)`` added into the rows of the phases it serves."""
    k0, k1, m0, m1 = band
    length = lay.span(*band) * lay.wp                  # GEMM columns: phase-grid positions
    out = buf[..., :length]
    if not full_first:
        out.fill(0)                                     # phases that no tap reaches stay 0
    for i, (d, e, a, (r0, r1), t) in enumerate(plan):
        start = lay.start(k0, m0, d, e)
        b = flat[:, start:start + length]               # x shifted by (d, e): a view
        dest = out[r0:r1] if t is None else out[r0:r1, :, t]
        gemm(a, b, dest.reshape(-1, length), accumulate=i > 0 or not full_first)


def _shuffle_phases(buf, rows, slots, lay, band, y, g):
    """The pixel shuffle of one band: row phase ``r``'s row ``m`` and slot ``j``'s grid
    column ``l + delta`` -> ``y[:, :, r + sh*m, t + sw*l]`` (``t`` the slot's phase)."""
    k0, k1, m0, m1 = band
    height = lay.height(*band)
    grid = buf[..., :(k1 - k0) * height * lay.wp].reshape(g.sh, g.o, g.sw, k1 - k0, height, lay.wp)
    for r, (count_r, _) in enumerate(rows):
        hr = min(m1, count_r) - m0
        for j, (t, count_t, delta) in enumerate(slots):
            if hr > 0 and count_t > 0:
                y0 = r + g.sh * m0
                y[k0:k1, :, y0:y0 + g.sh * (hr - 1) + 1:g.sh, t::g.sw] = \
                    grid[r, :, j, :, :hr, delta:delta + count_t].transpose(1, 0, 2, 3)
