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

The backward (:func:`conv_transpose2d_implicit_backward`) is the same steps transposed:
``dy`` un-shuffled onto the phase grid, then per GEMM ``A^T @ grad`` added into a shifted
window of the stacked input's gradient, and ``grad @ (x shifted)^T`` into ``A``'s.

Against ``'subpixel'`` (same phases, CPU path in :mod:`.conv`): no im2col copies, and
fewer wasted multiply-adds. ``'subpixel'``'s one GEMM computes every phase on a grid one
row and one column larger (6% more arithmetic at 32x32). Here the only waste is the
gap column (3% at 32x32), plus, in a band of several images, the zero rows between
them (a band holds one image whenever that image's phase outputs fill
``IMPLICIT_BAND_BYTES``, as 256->128 at 32x32 does).
Against ``'col2im'``: the overlap sum happens in the GEMMs, never in a col matrix.
Dilation 1 and groups 1 only, like ``'subpixel'``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from ..backend import get_array_module
from .blas import gemm
from .im2col import transpose_keeping_runs

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


class _Gemm(NamedTuple):
    """One GEMM of a band: ``A @ (x shifted by (d, e))`` into rows ``(r, o, j)`` of the
    phase buffer, ``r`` in ``r0 .. r1-1``, ``j`` every slot (``slot = None``) or one.
    ``A`` (``(r, o, j) x c``) is the weight block ``W[:, :, u0:u0 + r1 - r0, v0:v0 + nv]``."""
    d: int
    e: int
    a: object
    r0: int
    r1: int
    slot: Optional[int]
    u0: int
    v0: int
    nv: int


def _gemm_plan(weight, rows, col_taps, g, xp):
    """The GEMMs of one band (:class:`_Gemm`): one for each row shift ``d`` and column
    tap ``a`` (grid shift ``e``), over the phases that read it — ordered so that one
    covering every phase, if any, comes first (it can overwrite instead of add).

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
        u0 = g.ph - g.sh * d + r0                           # u = r + p - s*d
        taps = weight[:, :, u0:u0 + r1 - r0]
        for a, e, width in col_taps:
            v0 = g.sw * a
            if width == g.sw:                               # rows (r, o, j): one uniform stride
                parts = [(None, v0, width)]
            else:                                           # rows (r, o) of one slot each
                parts = [(j, v0 + j, 1) for j in range(width)]
            for slot, v, nv in parts:
                a_t = transpose_keeping_runs(taps[..., v:v + nv], (0, 2, 1))   # (c, r, o, j)
                plan.append(_Gemm(d, e, a_t.reshape(c, -1).T, r0, r1, slot, u0, v, nv))
    full = [i for i, q in enumerate(plan) if (q.r0, q.r1) == (0, g.sh) and q.slot is None]
    if full:
        plan.insert(0, plan.pop(full[0]))
    return plan, bool(full)


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
    if 0 in (g.n, g.c, g.o):                             # an empty batch or channel axis
        return xp.zeros((g.n, g.o, g.ho, g.wo), dtype=g.dtype)
    x, weight = x.astype(g.dtype, copy=False), weight.astype(g.dtype, copy=False)
    lay = _Layout(g)
    flat = _stack_input(x, lay).reshape(g.c, -1)
    plan, full_first = _gemm_plan(weight, lay.rows, lay.col_taps, g, xp)
    y = xp.empty((g.n, g.o, g.ho, g.wo), dtype=g.dtype)
    buf = xp.empty((g.sh, g.o, g.sw, lay.longest * lay.wp), dtype=g.dtype)
    for band in lay.bands:
        _phase_gemms(flat, plan, full_first, lay, band, buf)
        _shuffle_phases(buf, lay, band, y, g)
    return y


def conv_transpose2d_implicit_backward(dy, x, weight, g, need_dx=True, need_dw=True):
    r"""``(dx, dW)`` of :func:`conv_transpose2d_implicit`: the adjoint of each of its steps.

    Forward, per band and GEMM: ``out[rows, q] += A @ flat[:, start + q]``, then the pixel
    shuffle. Backward: un-shuffle ``dy`` onto the phase grid (``G``, zero wherever the
    forward computed a value it then threw away), and for each GEMM

    - ``dflat[:, start + q] += A^T @ G[rows, q]``  (the input gradient, in the stacked
      layout: a GEMM whose output is a shifted window — BLAS writes it in place);
    - ``dA += G[rows, :] @ flat[:, start:start + L]^T``  (BLAS reads the window transposed).

    ``dx`` is the pixels of ``dflat`` (its padding is dropped), and ``dW`` is the blocks
    ``dA`` put back where ``A`` came from (each tap of ``W`` is in exactly one ``A``)."""
    xp = get_array_module(x)
    dtype = g.dtype
    if 0 in (g.n, g.c, g.o):                             # an empty batch or channel axis
        return (xp.zeros(x.shape, dtype=dtype) if need_dx else None,
                xp.zeros(weight.shape, dtype=dtype) if need_dw else None)
    dy, x, weight = (a.astype(dtype, copy=False) for a in (dy, x, weight))
    lay = _Layout(g)
    plan, _ = _gemm_plan(weight, lay.rows, lay.col_taps, g, xp)
    flat = _stack_input(x, lay).reshape(g.c, -1) if need_dw else None
    dflat = xp.zeros((g.c, lay.stack_rows * lay.wp), dtype=dtype) if need_dx else None
    da = [xp.zeros((q.a.shape[0], g.c), dtype=dtype) for q in plan] if need_dw else None
    buf = xp.empty((g.sh, g.o, g.sw, lay.longest * lay.wp), dtype=dtype)
    for band in lay.bands:
        k0, k1, m0, m1 = band
        length = lay.span(*band) * lay.wp
        _unshuffle_phases(dy, buf, lay, band, g)
        for i, q in enumerate(plan):
            start = lay.start(k0, m0, q.d, q.e)
            grad = _gemm_rows(buf, q, length)
            if need_dx:
                gemm(q.a.T, grad, dflat[:, start:start + length], accumulate=True)
            if need_dw:
                gemm(grad, flat[:, start:start + length].T, da[i], accumulate=True)
    dx = dw = None
    if need_dx:
        pixels = dflat.reshape(g.c, lay.stack_rows, lay.wp)[:, lay.top:lay.top + g.n * lay.period]
        dx = xp.ascontiguousarray(pixels.reshape(g.c, g.n, lay.period, lay.wp)
                                  [:, :, :g.h, lay.gap:].transpose(1, 0, 2, 3))
    if need_dw:
        dw = xp.zeros(weight.shape, dtype=dtype)
        for q, grad_a in zip(plan, da):        # grad_a: rows (r, o, j) x c -> W[c, o, u, v]
            nr = q.r1 - q.r0
            block = grad_a.T.reshape(g.c, nr, g.o, q.nv).transpose(0, 2, 1, 3)
            dw[:, :, q.u0:q.u0 + nr, q.v0:q.v0 + q.nv] = block
    return dx, dw


class _Layout:
    """Where everything sits: the phase tables, the stacked input (image ``k``'s pixel
    ``(i, j)`` at stack row ``top + k*period + i``, column ``gap + j``; rows ``wp`` apart)
    and the bands ``(k0, k1, m0, m1)`` of phase rows the GEMMs run over."""

    def __init__(self, g):
        self.rows = axis_phases(g.ho, g.kh, g.sh, g.ph)
        self.slots, self.col_taps = column_slots(g.wo, g.kw, g.sw, g.pw)
        mq = max(count for count, _ in self.rows)             # phase rows per image
        grid = max(count + delta for _, count, delta in self.slots)   # shared grid columns
        ds = [d for _, taps in self.rows for _, d in taps] or [0]
        es = [e for _, e, _ in self.col_taps] or [0]
        # Padding that the shifts read: rows -top .. h-1+bottom, columns -gap .. w-1+gap.
        self.top = max(0, -min(ds))
        bottom = max(0, mq - 1 + max(ds) - (g.h - 1))
        self.gap = max(0, -min(es), grid - 1 + max(es) - (g.w - 1), grid - g.w)
        self.wp = self.gap + g.w                  # row pitch: gap zeros, then the pixels
        self.period = max(g.h + max(self.top, bottom), mq)   # images this many rows apart
        row_bytes = g.sh * g.sw * g.o * self.wp * np.dtype(g.dtype).itemsize
        self.bands = _bands(g.n, mq, self.period, row_bytes, IMPLICIT_BAND_BYTES)
        last = max(self.start(k0, m0, max(ds), max(es)) + self.span(k0, k1, m0, m1) * self.wp
                   for k0, k1, m0, m1 in self.bands)          # the furthest read, + 1
        self.stack_rows = max(-(-last // self.wp), self.top + g.n * self.period)
        self.longest = max((k1 - k0) * self.height(k0, k1, m0, m1)
                           for k0, k1, m0, m1 in self.bands)  # phase-buffer rows per band

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


def _stack_input(x, lay):
    """The input images one below the other, as :class:`_Layout` places them, zeros
    everywhere else — the padding, shared by neighbouring rows and images.
    ``(C, stack_rows, wp)``."""
    xp = get_array_module(x)
    n, c, h, _ = x.shape
    stack = xp.zeros((c, lay.stack_rows, lay.wp), dtype=x.dtype)
    stack[:, lay.top:lay.top + n * lay.period].reshape(c, n, lay.period, lay.wp)[:, :, :h, lay.gap:] = \
        x.transpose(1, 0, 2, 3)
    return stack


def _gemm_rows(buf, q, length):
    """The rows ``(r, o, j)`` of the phase buffer that GEMM ``q`` writes (forward) or reads
    (backward), first ``length`` columns, as one 2-D view (the strides nest: no copy)."""
    rows = buf[q.r0:q.r1] if q.slot is None else buf[q.r0:q.r1, :, q.slot]
    return rows[..., :length].reshape(-1, length)


def _phase_gemms(flat, plan, full_first, lay, band, buf):
    """One band's phase outputs into ``buf (sh, O, sw, L)``: for each GEMM, ``A @ (x
    shifted)`` added into the rows of the phases it serves."""
    k0, k1, m0, m1 = band
    length = lay.span(*band) * lay.wp                  # GEMM columns: phase-grid positions
    if not full_first:
        buf[..., :length].fill(0)                       # phases that no tap reaches stay 0
    for i, q in enumerate(plan):
        start = lay.start(k0, m0, q.d, q.e)
        b = flat[:, start:start + length]               # x shifted by (d, e): a view
        gemm(q.a, b, _gemm_rows(buf, q, length), accumulate=i > 0 or not full_first)


def _band_grid(buf, lay, band, g):
    """The band's phase buffer as ``(sh, O, sw, images, rows, wp)``."""
    k0, k1, m0, m1 = band
    height = lay.height(*band)
    return buf[..., :(k1 - k0) * height * lay.wp].reshape(g.sh, g.o, g.sw, k1 - k0, height, lay.wp)


def _phase_blocks(lay, band, g):
    """For the pixel shuffle of one band: ``(r, j, output rows, output columns, grid rows,
    grid columns)`` — row phase ``r``'s row ``m`` and slot ``j``'s grid column
    ``l + delta`` hold output ``(r + sh*m, t + sw*l)``, ``t`` the slot's phase."""
    k0, k1, m0, m1 = band
    for r, (count_r, _) in enumerate(lay.rows):
        hr = min(m1, count_r) - m0
        for j, (t, count_t, delta) in enumerate(lay.slots):
            if hr > 0 and count_t > 0:
                y0 = r + g.sh * m0
                yield (r, j, slice(y0, y0 + g.sh * (hr - 1) + 1, g.sh), slice(t, None, g.sw),
                       slice(0, hr), slice(delta, delta + count_t))


def _shuffle_phases(buf, lay, band, y, g):
    """The pixel shuffle of one band: phase outputs -> ``y``."""
    k0, k1 = band[:2]
    grid = _band_grid(buf, lay, band, g)
    for r, j, ys, xs, ms, ls in _phase_blocks(lay, band, g):
        y[k0:k1, :, ys, xs] = grid[r, :, j, :, ms, ls].transpose(1, 0, 2, 3)


def _unshuffle_phases(dy, buf, lay, band, g):
    """The adjoint of :func:`_shuffle_phases`: ``dy`` -> the band's phase buffer, zero
    at the grid positions that hold no output."""
    k0, k1 = band[:2]
    grid = _band_grid(buf, lay, band, g)
    grid.fill(0)
    for r, j, ys, xs, ms, ls in _phase_blocks(lay, band, g):
        grid[r, :, j, :, ms, ls] = dy[k0:k1, :, ys, xs].transpose(1, 0, 2, 3)
