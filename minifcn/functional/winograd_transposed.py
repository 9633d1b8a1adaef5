r"""Transposed convolutions with kernel = 2 x stride, by Winograd's minimal filtering F(3, 2).

FCN's learned upsamplers have ``k = 2s`` (k4 s2, k16 s8, k64 s32). Along one axis the
transposed convolution stamps tap ``k`` of input ``i`` on output ``o = s*i + k - p``.
Count outputs from ``-p`` (``o' = o + p``) and split them by phase ``r = o' mod s``:
output ``o' = s*q + r`` gathers exactly two taps, ``r`` (from input ``q``) and ``r + s``
(from input ``q - 1``):

    ``y_r[q] = W[r + s] x[q - 1] + W[r] x[q]``.

Every phase is a 2-tap correlation of the *same* input, which is what the sub-pixel
algorithms exploit (:mod:`.implicit`). Three neighbouring outputs of one phase,
``q = 3t .. 3t+2``, read the four inputs ``d = x[3t-1 .. 3t+2]`` with taps
``g = (W[r + s], W[r])``, and Winograd's ``F(3, 2)`` forms them from 4 products
instead of 6 (points 0, 1, -1, infinity; Lavin & Gray 2016, the algorithm of
:mod:`.winograd` with the roles of data and filter lengths exchanged):

    ``m0 = (d0 - d2) g0``                 ``m1 = (d1 + d2) (g0 + g1) / 2``
    ``m2 = (d2 - d1) (g0 - g1) / 2``      ``m3 = (d3 - d1) g1``
    ``y0 = m0 + m1 + m2``    ``y1 = m1 - m2``    ``y2 = m1 + m2 + m3``

i.e. ``y = A^T [(G g) * (B^T d)]`` with

    ``B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]``
    ``G   = [[1, 0], [1/2, 1/2], [1/2, -1/2], [0, 1]]``
    ``A^T = [[1, 1, 1, 0], [0, 1, -1, 0], [0, 1, 1, 1]]``.

In 2-D, a 4x4 window of ``x`` gives a 3x3 tile of every one of the ``s*s`` phases
(3*s x 3*s output pixels) from 16 products per (phase, channel pair), where the direct
sum takes 36: 2.25x fewer multiply-adds. The window is the same for all phases, so one
input transform ``V = B^T d B`` per (channel, window) serves them all, and the sum over
input channels at each of the 16 positions ``xi`` is one GEMM for all phases and
output channels:

    ``M[xi] = U[xi] (s*s*O x C) @ V[xi] (C x windows)``,   ``U = G g G^T`` per (phase, o, c),

then ``Y = A^T M A`` per (phase, o, window), for all of them at once one more product,
``Y (9 x sh*sw*O*windows) = (A^T (x) A^T) (9 x 16) @ M (16 x sh*sw*O*windows)`` (every
(phase, o, window)'s 4x4 ``M`` read as a column of 16): tile position ``(a, b)`` of phase ``(r, t)``
of window ``(i, j)`` is output pixel ``(s*(3i + a) + r - p, s*(3j + b) + t - p)`` (those
inside the output; the rest are cropped). Windows step by 3 and overlap by one input.

The backward is the same algebra read backwards (each step's adjoint, in reverse order):

- ``E = A dY A^T`` per (phase, o, window), ``dY`` the window's 3x3 of each phase of ``dy``
  (zero where cropped): the product with ``(A^T (x) A^T)^T``;
- ``dx``: ``dV[xi] = U[xi]^T @ E[xi]``, then ``B dV B^T`` added back onto the window's
  4x4 inputs (:func:`_input_transform_adjoint`; neighbouring windows share an input);
- ``dW``: ``dU[xi] = sum over windows of E[xi] @ V[xi]^T`` (computed transposed, as
  ``V[xi] @ E[xi]^T``), then ``dg = G^T dU G``, each phase's four taps put back where
  they came from.

Layout: the input transform (and its adjoint) is NumPy additions, and a NumPy pass over a
view that breaks into short runs costs several times one over contiguous memory (a pass
in runs of 132 values took 0.10 ms, the same pass contiguous 0.03 ms). So the 16 inputs
of every window go into 16 planes, one per position in the window (:func:`_split_windows`:
9 strided copies out of ``x``, and 7 planes of inputs shared with a neighbour shifted
from the neighbour's); each of its steps is then arithmetic on whole planes. The output
transform (and its adjoint) is one product with ``A^T (x) A^T``, and its results go to
the output by one strided copy per (position, phase).

Memory: ``U^T`` and ``dU^T`` hold 16 values per 4 taps (4x the weight). Work runs in
bands of images or window rows; a band's products ``M`` take at most ``BAND_BYTES`` (or
one window row's, if more), its ``V`` and row transforms as much each, and the output
tiles ``Y`` 9/16 of it: about 2.6x as much again at most (the backward's ``dV``, as large
as ``V``, makes it 3.6x). They are :mod:`.winograd`'s scratch buffers, kept
between calls per thread (``winograd.release_workspace`` frees them).

Arithmetic: coefficients 0, +-1 and +-1/2. An ``inf`` input would give ``inf - inf =
NaN`` in ``B^T d`` where the direct sum gives ``inf``, so callers (:mod:`.conv`) take
this path for finite operands only; and the transformed values are sums of up to 4
inputs, so operands within a factor of ~4 of the dtype's largest value can overflow to
``inf`` where the direct sum would not (and the output transform, a product that
multiplies every value, zeros included, then makes the whole tile NaN). Float32 and float64 go straight to BLAS; other
float dtypes run (their GEMMs through ``numpy.matmul``).

When it pays: the GEMMs are 9x narrower than the sub-pixel algorithms' (one column per
window of 3x3 input pixels, not per pixel), and the transforms cost per channel, so it
needs wide layers on large enough maps, and GEMMs slow enough that 2.25x fewer
multiply-adds outweigh the transforms: ``conv._pick_algorithm`` takes it at k4 s2 with
128+ channels from 1024 input pixels a batch with AVX2 GEMM kernels, and from 256
channels in (128 out) and 4096 input pixels a batch with AVX-512 ones
(``benchmarks/HISTORY.md``).
"""
from __future__ import annotations

import numpy as np

from .blas import gemm
from .winograd import _rows, _same_dtype, _scratch

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], dtype=np.float64)
G = np.array([[1, 0], [0.5, 0.5], [0.5, -0.5], [0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, 0], [0, 1, 1, 1]], dtype=np.float64)
# The filter and output transforms for all (phase, channels, window) at once are products
# with Kronecker matrices: ``vec(G g G^T) = (G (x) G) vec(g)``, ``vec(A^T M A) = (A^T (x) A^T)
# vec(M)`` (row-major ``vec``). U[4a + b] = sum over (u, v) of G_KRON[4a + b, 2u + v] g[u, v];
# Y[3a + b] = sum over xi of A_KRON[3a + b, xi] M[xi].
G_KRON = np.kron(G, G)          # (16, 4)
A_KRON = np.kron(A_T, A_T)      # (9, 16)

BAND_BYTES = 16 << 20           # per band at most: bytes of its products (or transformed windows, if more)
BAND_MIN_WINDOWS = 512          # windows per band where images allow: the GEMMs' width


def applies(kh, kw, sh, sw, dh=1, dw=1, groups=1):
    """Does this transposed convolution have the form F(3, 2) needs: ``k = 2s`` on both
    axes, dilation 1, one group?"""
    return (kh, kw) == (2 * sh, 2 * sw) and (dh, dw) == (1, 1) and groups == 1


def _ceil_div(a, b):
    return -(-a // b)


def _check(name, x, weight, stride, padding):
    """What the two entry points need and :mod:`.conv` has checked before calling them;
    called directly, they say what is wrong instead of failing in a GEMM."""
    (sh, sw), (ph, pw) = stride, padding
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"{name}: x must be (N, C, H, W) and weight (C, O, kh, kw) with the "
                         f"same C, got x {x.shape} and weight {weight.shape}")
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{name}: stride must be >= 1 and padding >= 0, got stride "
                         f"{stride}, padding {padding}")
    if not applies(*weight.shape[2:], sh, sw):
        raise ValueError(f"{name}: the kernel must be 2 x stride, got weight {weight.shape} "
                         f"with stride {stride}")


class _Axis:
    """One axis: stride ``s``, padding ``p``, ``size_out`` outputs.
    Phase ``r`` output ``q`` is output pixel ``s*q + r - p``; window ``t`` (of
    ``windows``) covers phase outputs ``q = 3(first_window + t) .. +2`` and reads inputs
    ``3(first_window + t) - 1 .. +2``."""

    def __init__(self, s, p, size_out):
        self.s, self.p, self.size_out = s, p, size_out
        q_first, q_last = p // s, (p + size_out - 1) // s
        self.first_window = q_first // 3
        self.windows = q_last // 3 - self.first_window + 1 if size_out > 0 else 0


def _reach(period, start, count, size):
    """For ``index = period*t + start``, ``t`` in ``[0, count)``: the ``t`` whose index
    lies in ``[0, size)``, as ``(t_lo, t_hi, index of t_lo)``."""
    t_lo = max(0, -(start // period))
    t_hi = max(t_lo, min(count, -(-(size - start) // period)))
    return t_lo, t_hi, period * t_lo + start


def filter_transform(weight):
    """``U = G g G^T`` for every (phase (r, t), output channel, input channel), transposed:
    weight (C, O, 2sh, 2sw) -> ``U^T`` (16, C, sh*sw*O), phase ``(r, t)``'s columns at
    ``(r*sw + t)*O`` (the GEMMs read ``U[xi]`` as the transposed view ``U^T[xi].T``).
    Phase ``(r, t)``'s taps: ``g[u, v] = W[:, :, r + (1-u)*sh, t + (1-v)*sw]`` (``u = 0``
    meets the window's earlier input). ``C`` stays first, as in the weight, so that the
    copies below move runs of ``O`` values (with ``O`` first they moved runs of ``sw``:
    2.4 ms against 0.23 ms for 256 -> 128 at s = 2). The result is a scratch buffer that
    the next call overwrites."""
    c, o, kh, kw = weight.shape
    sh, sw = kh // 2, kw // 2
    w6 = weight.reshape(c, o, 2, sh, 2, sw)         # [c, o, U, r, V, t] = W[c, o, U*sh + r, V*sw + t]
    g = np.empty((2, 2, c, sh, sw, o), dtype=weight.dtype)
    for u in range(2):
        for v in range(2):
            g[u, v] = w6[:, :, 1 - u, :, 1 - v, :].transpose(0, 2, 3, 1)
    u_t = _scratch("wt_u", weight.dtype, 16, c, sh * sw * o)
    np.matmul(G_KRON.astype(weight.dtype), g.reshape(4, -1), out=u_t.reshape(16, -1))
    return u_t


def filter_transform_adjoint(du_t, o, sh, sw):
    """The weight gradient from ``dU^T`` (16, C, sh*sw*O) (:func:`filter_transform`'s
    layout): ``dg = G^T dU G``, each phase's four taps put back -> (C, O, 2sh, 2sw)."""
    c = du_t.shape[1]
    dg = (G_KRON.T.astype(du_t.dtype) @ du_t.reshape(16, -1)).reshape(2, 2, c, sh, sw, o)
    taps = np.empty((c, 2, sh, 2, sw, o), dtype=du_t.dtype)     # [c, U, r, V, t, o]
    for u in range(2):
        for v in range(2):
            taps[:, 1 - u, :, 1 - v] = dg[u, v]
    # (c, [U, r, V, t] = the 4*sh*sw taps, o) -> (c, o, taps) = (C, O, kh, kw)
    taps = taps.reshape(c, 4 * sh * sw, o).transpose(0, 2, 1)
    return np.ascontiguousarray(taps).reshape(c, o, 2 * sh, 2 * sw)



def _bands(n, rows, cols, per_window_bytes):
    """Bands ``[(n0, n1, t0, t1), ...]`` of images ``n0 .. n1-1`` and window rows ``t0 ..
    t1-1``: whole images, enough for ``BAND_MIN_WINDOWS`` windows (the GEMMs' width:
    (512 x 256) @ (256 x N) ran at 164 GFLOP/s with N = 132, 209 with 528) while they fit
    ``BAND_BYTES``; an image larger than that in bands of window rows."""
    if n == 0 or rows == 0 or cols == 0:
        return []
    per_image = rows * cols * per_window_bytes
    if per_image <= BAND_BYTES:
        k = max(1, min(n, _ceil_div(BAND_MIN_WINDOWS, rows * cols), BAND_BYTES // per_image))
        k = _ceil_div(n, _ceil_div(n, k))       # as even as that allows: no runt band
        return [(n0, min(n0 + k, n), 0, rows) for n0 in range(0, n, k)]
    k = max(1, BAND_BYTES // (cols * per_window_bytes))
    k = _ceil_div(rows, _ceil_div(rows, k))
    return [(i, i + 1, t0, min(t0 + k, rows)) for i in range(n) for t0 in range(0, rows, k)]


def _place(dst, wi, wj, src):
    """``dst[..., wi, wj] = src`` and zero in the rest of ``dst``'s last two axes (slices
    ``wi``, ``wj`` of them), without writing that part twice."""
    dst[..., wi, wj] = src
    dst[..., :wi.start, :].fill(0)
    dst[..., wi.stop:, :].fill(0)
    dst[..., wi, :wj.start].fill(0)
    dst[..., wi, wj.stop:].fill(0)


def _window_inputs(ay, ax, t0, rows, cols, u, v, size_in, j0=0):
    """Where input ``(u, v)`` of windows ``(t0 + i, j0 + j)`` lies in ``x``: ``(window
    slice, x slice)`` along each axis, or None where no window's input ``(u, v)`` is
    inside."""
    h, w = size_in
    i_lo, i_hi, r0 = _reach(3, 3 * (ay.first_window + t0) + u - 1, rows, h)
    j_lo, j_hi, c0 = _reach(3, 3 * (ax.first_window + j0) + v - 1, cols, w)
    if i_hi <= i_lo or j_hi <= j_lo:
        return None
    return ((slice(i_lo, i_hi), slice(r0, r0 + 3 * (i_hi - i_lo) - 2, 3)),
            (slice(j_lo, j_hi), slice(c0, c0 + 3 * (j_hi - j_lo) - 2, 3)))


def _split_windows(x, ay, ax, t0, out):
    """The 16 inputs of each window of window rows ``t0 ..`` (all window columns) of
    images ``x`` (nb, C, H, W), zero outside ``x``: into ``out`` (4, 4, C, nb, rows, cols),
    ``out[u, v, c, n, i, j] = x[n, c, 3(i0 + i) + u - 1, 3(j0 + j) + v - 1]`` with ``i0 =
    ay.first_window + t0`` and ``j0 = ax.first_window``.

    Windows step by 3, so inputs 0-2 along each axis are each pixel's once: those 9
    planes are strided copies out of ``x``. Input 3 of a window is input 0 of the next
    one, so the 7 planes with a 3 are the planes with a 0 shifted by one window (one
    contiguous copy each, :func:`_shifted`), all but the last window row or column,
    which are copied from ``x``."""
    rows, cols = out.shape[4:]
    xt = x.transpose(1, 0, 2, 3)                                      # (C, nb, H, W)

    def from_x(dst, t0_, rows_, j0, cols_, u, v):
        at = _window_inputs(ay, ax, t0_, rows_, cols_, u, v, x.shape[2:], j0)
        if at is None:
            dst.fill(0)
        else:
            (wi, x_rows), (wj, x_cols) = at
            _place(dst, wi, wj, xt[:, :, x_rows, x_cols])

    for u in range(3):
        for v in range(3):
            from_x(out[u, v], t0, rows, 0, cols, u, v)
    for v in range(3):                       # input 3 down = input 0 of the window below
        _shifted(out[3, v], out[0, v], cols)
        from_x(out[3, v, :, :, rows - 1:], t0 + rows - 1, 1, 0, cols, 3, v)
    for u in range(4):                       # input 3 across = input 0 of the next window
        _shifted(out[u, 3], out[u, 0], 1)
        from_x(out[u, 3, :, :, :, cols - 1:], t0, rows, cols - 1, 1, u, 3)
    return out


def _shifted(dst, src, k):
    """``dst = src`` moved ``k`` places back in memory order (both contiguous, one
    shape): ``dst.flat[i] = src.flat[i + k]``; the last ``k`` values of ``dst`` are left
    as they were. With ``k`` one row (or one value), each window takes its neighbour's
    below (or to the right); the last one in each row (or image) takes the next row's
    first, which the caller overwrites."""
    dst.reshape(-1)[:-k] = src.reshape(-1)[k:]


def _split_windows_adjoint(d_bar, ay, ax, t0, dx, whole_images):
    """Adds ``d_bar``, a gradient in :func:`_split_windows`'s layout (a 4x4 grid of
    contiguous (C, nb, rows, cols) arrays, used up as scratch), onto ``dx`` (nb, C, H, W)
    (zeros where no band has added yet), where the inputs lie inside ``x``.

    The forward's steps backwards: the 7 planes with a 3 are added onto the planes with a
    0, one window on (contiguous adds), except their last window row or column, which
    go to ``dx`` directly; then the 9 planes of each pixel's own inputs go to ``dx``. For
    a band of ``whole_images`` (no other band touches its pixels) those 9 are written,
    not added: no two of them, and none of the last rows or columns, share a pixel."""
    rows, cols = d_bar[0][0].shape[2:]
    dxt = dx.transpose(1, 0, 2, 3)                                    # (C, nb, H, W)

    def to_dx(src, t0_, rows_, j0, cols_, u, v, write=False):
        at = _window_inputs(ay, ax, t0_, rows_, cols_, u, v, dx.shape[2:], j0)
        if at is not None:
            (wi, x_rows), (wj, x_cols) = at
            if write:
                dxt[:, :, x_rows, x_cols] = src[:, :, wi, wj]
            else:
                dxt[:, :, x_rows, x_cols] += src[:, :, wi, wj]

    for u in range(4):                       # input 3 across onto input 0 of the next window
        to_dx(d_bar[u][3][:, :, :, cols - 1:], t0, rows, cols - 1, 1, u, 3)
        d_bar[u][3][:, :, :, cols - 1] = 0
        _shifted_add(d_bar[u][0], d_bar[u][3], 1)
    for v in range(3):                       # input 3 down onto input 0 of the window below
        to_dx(d_bar[3][v][:, :, rows - 1:], t0 + rows - 1, 1, 0, cols, 3, v)
        d_bar[3][v][:, :, rows - 1] = 0
        _shifted_add(d_bar[0][v], d_bar[3][v], cols)
    for u in range(3):
        for v in range(3):
            to_dx(d_bar[u][v], t0, rows, 0, cols, u, v, write=whole_images)


def _shifted_add(dst, src, k):
    """The adjoint of :func:`_shifted`: ``dst.flat[i + k] += src.flat[i]`` (both
    contiguous); the caller has zeroed the values of ``src`` that would land on the next
    row's (or image's) first window."""
    dst.reshape(-1)[k:] += src.reshape(-1)[:-k]


def _b_transform(d, out):
    """``B^T`` along axis 0: d (4, ...) -> out (4, ...), ``(d0 - d2, d1 + d2, d2 - d1,
    d3 - d1)``."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[3], d[1], out=out[3])
    return out


def _b_adjoint(v, tmp):
    """``B`` along a list of 4 arrays, the adjoint of :func:`_b_transform`: ``(v0, v1 - v2
    - v3, v1 + v2 - v0, v3)``. The outer two are ``v``'s own arrays (no copy); the middle
    two are computed into ``tmp`` (2, ...)."""
    np.subtract(v[1], v[2], out=tmp[0])
    tmp[0] -= v[3]
    np.add(v[1], v[2], out=tmp[1])
    tmp[1] -= v[0]
    return [v[0], tmp[0], tmp[1], v[3]]


def _input_transform(d, rows_buf):
    """``V = B^T d B`` per (channel, window), in place: d (4, 4, C, N), the windows'
    inputs (:func:`_split_windows`), becomes V; ``rows_buf`` (4, 4, C, N) holds ``B^T d``
    on the way. Each step is four passes over whole (4, C, N) blocks."""
    _b_transform(d, rows_buf)                                 # along the window rows
    _b_transform(rows_buf.transpose(1, 0, 2, 3), d.transpose(1, 0, 2, 3))   # the columns
    return d


def _input_transform_adjoint(dv, tmp):
    """The adjoint of :func:`_input_transform`, ``B dV B^T``: dv (4, 4, C, N) -> a 4x4 grid
    (nested lists) of (C, N) arrays. Its outer rows and columns are ``dv``'s own planes
    (``B``'s outer rows copy); the rest is computed into ``tmp`` (4, 4, C, N)."""
    cols = _b_adjoint([dv[:, b] for b in range(4)], tmp[:2])          # along the columns
    grid = [_b_adjoint([cols[b][a] for a in range(4)], tmp[2:, b]) for b in range(4)]
    return [[grid[b][a] for b in range(4)] for a in range(4)]         # grid[a][b]


def _output_pixels(ay, ax, t0, rows, cols, a, r, b, t, size_out):
    """Where tile position ``(a, b)`` of phase ``(r, t)`` of window rows ``t0 ..
    t0+rows-1`` lands: ``(window slice, output slice)`` along each axis, or None."""
    ho, wo = size_out
    i_lo, i_hi, y0 = _reach(3 * ay.s, ay.s * (3 * (ay.first_window + t0) + a) + r - ay.p, rows, ho)
    j_lo, j_hi, x0 = _reach(3 * ax.s, ax.s * (3 * ax.first_window + b) + t - ax.p, cols, wo)
    if i_hi <= i_lo or j_hi <= j_lo:
        return None
    return ((slice(i_lo, i_hi), slice(y0, y0 + 3 * ay.s * (i_hi - i_lo) - 1, 3 * ay.s)),
            (slice(j_lo, j_hi), slice(x0, x0 + 3 * ax.s * (j_hi - j_lo) - 1, 3 * ax.s)))


def _output_transform(m, y9, y, ay, ax, t0):
    """``Y = A^T M A`` per (phase, o, window), written to the output: m (16, sh*sw*O,
    windows) -> y (nb, O, Ho, Wo) (this band's images). One product, ``Y[3a + b] = sum
    over xi of A_KRON[3a + b, xi] M[xi]``, into ``y9`` (9, sh, sw, O, nb, rows, cols);
    then each (tile position, phase) to its output pixels, one strided copy each."""
    gemm(A_KRON.astype(m.dtype), _rows(m, 16), _rows(y9, 9))
    rows, cols = y9.shape[5:]
    yt = y.transpose(1, 0, 2, 3)                         # (O, nb, Ho, Wo)
    for a in range(3):
        for r in range(ay.s):
            for b in range(3):
                for t in range(ax.s):
                    at = _output_pixels(ay, ax, t0, rows, cols, a, r, b, t, y.shape[2:])
                    if at is not None:
                        (wi, y_rows), (wj, y_cols) = at
                        yt[:, :, y_rows, y_cols] = y9[3 * a + b, r, t, :, :, wi, wj]


def _gather_tiles(dyt, out, ay, ax, t0, a, b):
    """Tile position ``(a, b)`` of every phase and window, read from ``dyt`` (O, nb, Ho,
    Wo) into ``out`` (sh, sw, O, nb, rows, cols); zero where no output pixel is (cropped)."""
    rows, cols = out.shape[4:]
    for r in range(ay.s):
        for t in range(ax.s):
            at = _output_pixels(ay, ax, t0, rows, cols, a, r, b, t, dyt.shape[2:])
            if at is None:
                out[r, t].fill(0)
            else:
                (wi, y_rows), (wj, y_cols) = at
                _place(out[r, t], wi, wj, dyt[:, :, y_rows, y_cols])


def _output_transform_adjoint(dy, dy9, e, ay, ax, t0):
    """``E = A dY A^T`` per (phase, o, window): dy (nb, O, Ho, Wo) -> the 16 matrices
    ``E[xi]`` (sh*sw*O, windows), zero where no output pixel is. Tile position ``(a, b)``
    of every phase and window is read into ``dy9[3a + b]`` (``dy9`` (9, sh, sw, O, nb,
    rows, cols); zero where cropped), then one product, ``E = A_KRON^T dY``, into ``e``
    (16, sh*sw*O, windows)."""
    dyt = dy.transpose(1, 0, 2, 3)
    for a in range(3):
        for b in range(3):
            _gather_tiles(dyt, dy9[3 * a + b], ay, ax, t0, a, b)
    gemm(A_KRON.T.astype(e.dtype), _rows(dy9, 9), _rows(e, 16))
    return list(e)


def window_bytes(c, o, sh, sw, itemsize):
    """Bytes of one window's transformed inputs or products, whichever is more (what the
    bands are sized by): 16 values per input channel, or per (phase, output channel)."""
    return 16 * max(c, sh * sw * o) * itemsize


def _plan(x_shape, weight, size_out, stride, padding):
    """``(n, c, o, ay, ax, bands)``: the sizes, the two axes (:class:`_Axis`) and the bands
    (:func:`_bands`) of one call."""
    n, c = x_shape[:2]
    o = weight.shape[1]
    sh, sw = stride
    ay, ax = _Axis(sh, padding[0], size_out[0]), _Axis(sw, padding[1], size_out[1])
    per_window = window_bytes(c, o, sh, sw, weight.itemsize)
    return n, c, o, ay, ax, _bands(n, ay.windows, ax.windows, per_window)


def _transformed_band(x, c, ay, ax, n0, n1, t0, t1, dt):
    """V of one band (images ``n0 .. n1-1``, window rows ``t0 .. t1-1``), (16, C, windows)."""
    windows = (n1 - n0) * (t1 - t0) * ax.windows
    d = _split_windows(x[n0:n1], ay, ax, t0,
                       _scratch("wt_d", dt, 4, 4, c, n1 - n0, t1 - t0, ax.windows))
    v = _input_transform(d.reshape(4, 4, c, windows), _scratch("wt_rows", dt, 4, 4, c, windows))
    return v.reshape(16, c, windows)


def winograd_conv_transpose2d(x, weight, stride, padding, size_out):
    """``conv_transpose2d(x, weight, stride, padding)`` with ``k = 2*stride``, cropped or
    extended to ``size_out`` (output_padding), by F(3, 2) per phase: x (N, C, H, W),
    weight (C, O, 2sh, 2sw) -> (N, O, Ho, Wo). One dtype (float32 or float64 to reach BLAS)."""
    _same_dtype("winograd_conv_transpose2d", x, weight)
    _check("winograd_conv_transpose2d", x, weight, stride, padding)
    n, c, o, ay, ax, bands = _plan(x.shape, weight, size_out, stride, padding)
    sh, sw = ay.s, ax.s
    dt = x.dtype
    y = np.empty((n, o) + tuple(size_out), dtype=dt)
    if ay.windows == 0 or ax.windows == 0:
        y.fill(0)
        return y
    u_t = filter_transform(weight)
    cols = ax.windows
    for n0, n1, t0, t1 in bands:
        nb, rows = n1 - n0, t1 - t0
        v = _transformed_band(x, c, ay, ax, n0, n1, t0, t1, dt)
        m = _scratch("wt_m", dt, 16, sh * sw * o, nb * rows * cols)
        for xi in range(16):
            gemm(u_t[xi].T, v[xi], m[xi])
        _output_transform(m, _scratch("wt_z", dt, 9, sh, sw, o, nb, rows, cols), y[n0:n1],
                          ay, ax, t0)
    return y


def winograd_conv_transpose2d_backward(dy, x, weight, stride, padding, need_dx=True,
                                       need_dw=True):
    """``(dx, dW)`` of :func:`winograd_conv_transpose2d` (None for those not asked for):
    dy (N, O, Ho, Wo), x (N, C, H, W), weight (C, O, 2sh, 2sw). Per band: ``E = A dY A^T``;
    ``dV[xi] = U[xi]^T @ E[xi]`` and its input transform's adjoint for ``dx``;
    ``dU^T[xi] += V[xi] @ E[xi]^T`` for ``dW = G^T dU G``."""
    _same_dtype("winograd_conv_transpose2d_backward", dy, x, weight)
    _check("winograd_conv_transpose2d_backward", x, weight, stride, padding)
    if dy.ndim != 4 or dy.shape[:2] != (x.shape[0], weight.shape[1]):
        raise ValueError(f"winograd_conv_transpose2d_backward: dy must be (N, O, Ho, Wo) = "
                         f"({x.shape[0]}, {weight.shape[1]}, ...), got {dy.shape}")
    n, c, o, ay, ax, bands = _plan(x.shape, weight, dy.shape[2:], stride, padding)
    sh, sw = ay.s, ax.s
    dt = x.dtype
    po, cols = sh * sw * o, ax.windows
    dx = np.zeros(x.shape, dtype=dt) if need_dx else None
    du_t = np.zeros((16, c, po), dtype=dt) if need_dw else None
    if ay.windows and ax.windows and (need_dx or need_dw):
        u_t = filter_transform(weight) if need_dx else None
        for n0, n1, t0, t1 in bands:
            nb, rows = n1 - n0, t1 - t0
            # the forward's buffers (it does not run meanwhile): dY's tiles in 'wt_z', E in 'wt_m'
            dy9 = _scratch("wt_z", dt, 9, sh, sw, o, nb, rows, cols)
            e = _output_transform_adjoint(dy[n0:n1], dy9, _scratch("wt_m", dt, 16, po, nb * rows * cols),
                                          ay, ax, t0)
            if need_dw:
                v = _transformed_band(x, c, ay, ax, n0, n1, t0, t1, dt)
                for xi in range(16):
                    gemm(v[xi], e[xi].T, du_t[xi], accumulate=True)
            if need_dx:
                windows = nb * rows * cols
                dv = _scratch("wt_dv", dt, 4, 4, c, windows)
                dvf = dv.reshape(16, c, windows)
                for xi in range(16):
                    gemm(u_t[xi], e[xi], dvf[xi])
                grid = _input_transform_adjoint(dv, _scratch("wt_rows", dt, 4, 4, c, windows))
                d_bar = [[plane.reshape(c, nb, rows, cols) for plane in row] for row in grid]
                _split_windows_adjoint(d_bar, ay, ax, t0, dx[n0:n1], (t0, t1) == (0, ay.windows))
    dw = filter_transform_adjoint(du_t, o, sh, sw) if need_dw else None
    return dx, dw
