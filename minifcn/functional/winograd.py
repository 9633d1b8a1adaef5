r"""3x3 stride-1 convolutions with fewer multiplications: Winograd's minimal filtering F(2x2, 3x3).

A 3x3 convolution computes each output pixel with 9 multiply-adds per channel pair. Two
neighbouring outputs of one row share two of their three inputs, and Winograd's minimal
filtering algorithm (Lavin & Gray, *Fast Algorithms for Convolutional Neural Networks*,
2016) computes the pair from 4 products instead of 6. One row of a tile, ``F(2, 3)``:
inputs ``d0..d3``, taps ``g0..g2``, outputs
``y0 = d0 g0 + d1 g1 + d2 g2`` and ``y1 = d1 g0 + d2 g1 + d3 g2``, are

    ``m0 = (d0 - d2) g0``            ``m1 = (d1 + d2) (g0 + g1 + g2) / 2``
    ``m2 = (d2 - d1) (g0 - g1 + g2) / 2``   ``m3 = (d1 - d3) g2``
    ``y0 = m0 + m1 + m2``             ``y1 = m1 - m2 - m3``

In matrices, ``y = A^T [(G g) * (B^T d)]`` (``*`` elementwise) with

    ``B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]``
    ``G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]``
    ``A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]``

and nested in 2-D, a 4x4 input tile ``d`` gives a 2x2 output tile from 16 products:

    ``Y = A^T [ (G g G^T) * (B^T d B) ] A``.

Over channels the 16 products become 16 GEMMs. With ``U = G W G^T`` per (o, c) pair
(the *filter transform*) and ``V = B^T d B`` per (c, tile) (the *input transform*), the
sum over input channels at each of the 16 positions ``xi`` of the 4x4 tile is

    ``M[xi] = U[xi] (O x C) @ V[xi] (C x tiles)``,

and ``Y = A^T M A`` per (o, tile) (the *output transform*). That is 16 multiply-adds
per 4 output pixels per channel pair where im2col's GEMM makes 36: 2.25x fewer. The
transforms add only additions (run as three small products with Kronecker matrices, below),
linear in the channels where the GEMMs are quadratic, so the saving shows from a hundred
or so channels on (VGG's conv2_2 to conv5 with the project machine's AVX2 GEMM kernels;
:func:`~minifcn.functional.conv._winograd_conv2d` has the measured bounds).

The backward is the same algebra read backwards:

- ``dx``: a stride-1 convolution's input gradient is the convolution of ``dy`` with the
  kernel flipped and its channel axes swapped, padding ``2 - p``
  (:func:`~minifcn.functional.conv._as_transposed`) — this forward again. The flipped
  kernel's transform is the kernel's with tile positions 0 and 3 swapped along each axis
  (:func:`flipped_filter_transform`), so no flipped copy of the weight is made.
- ``dW``: ``Y = A^T (U * V) A`` is linear in ``U``. With ``E = A dY A^T`` per (o, tile)
  (``dY``: the tile's 2x2 of ``dy``; the output transform's adjoint), one tile adds
  ``E * V`` to ``dU``, and the sum over tiles and images is 16 GEMMs
  ``dU[xi] = E[xi] (O x tiles) @ V[xi]^T (tiles x C)``; then ``dW = G^T dU G``, the
  filter transform's adjoint.

The output grid is cut into 2x2 tiles; where ``Ho`` or ``Wo`` is odd, the last tile row or
column reaches one pixel past the output, reading zero padding, and is cropped (its
gradient is zero). Arithmetic: the transforms' coefficients are 0, +-1 and +-1/2, and
in float32 the error against the exact result stays within a small factor of the direct
GEMM's (1.5-3x on 64-512 channels; ``tests/test_winograd.py`` holds it to 3x). Two
things differ from the direct sum. An ``inf`` input would give ``inf - inf = NaN`` in
``B^T d`` where the direct sum gives ``inf``: callers (:mod:`.conv`) take Winograd only
when the operands are finite (:func:`~minifcn.functional._select.all_finite`). And the
transformed values are sums of up to 4 inputs (times up to 9/4 for the filter), so
operands within a factor of ~10 of float32's largest value can overflow to ``inf`` where
the direct sum would not (the direct sum can overflow too, at a different point); the
transforms are products that multiply every value, zeros included, so such an ``inf``
makes the whole tile NaN (``0 * inf``).

Memory: the work runs in bands of tile rows (``WINOGRAD_BAND_BYTES`` of transformed
input or output per band), in scratch buffers that are kept between calls, one set per
thread that has run it (:func:`_scratch`). They grow to the largest call's needs and do
not shrink: the band buffers are bounded by the band budget, but the padded input and
the tiled ``dy`` hold one whole image (25 MB of the 50 MB in all after a VGG16 step at
320x320).
:func:`release_workspace` frees the calling thread's set.
"""
from __future__ import annotations

import threading

import numpy as np

from .blas import gemm

# The transforms of F(2x2, 3x3), as matrices. All three (and the adjoints the weight
# gradient needs) run as products with their Kronecker matrices below.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

WINOGRAD_BAND_BYTES = 8 << 20   # per band of tile rows: bytes of its V (or M, if more channels out)


# ``G W G^T`` for all (o, c) at once is one product with the Kronecker matrix:
# ``U[a, b] = sum_{u, v} G[a, u] G[b, v] W[u, v] = (G (x) G)[4a + b, 3u + v] W[3u + v]``.
G_KRON = np.kron(G, G)          # (16, 9)
# The input and output transforms likewise: ``V[a, b] = sum_{u, w} B^T[a, u] B^T[b, w]
# d[u, w]``, so ``V[4a + b] = (B^T (x) B^T)[4a + b, 4u + w] d[4u + w]`` for all (c, tile)
# at once (once the tiles' 16 inputs lie in 16 planes), and ``Y[2r + s] = (A^T (x)
# A^T)[2r + s, 4a + b] M[4a + b]`` for all (o, tile).
B_KRON = np.kron(B_T, B_T)      # (16, 16)
A_KRON = np.kron(A_T, A_T)      # (4, 16)


def filter_transform(weight):
    """``U = G W G^T`` for every (o, c): weight (O, C, 3, 3) -> U (4, 4, O, C)."""
    o, c = weight.shape[:2]
    k = G_KRON.astype(weight.dtype)
    return (k @ weight.reshape(o * c, 9).T).reshape(4, 4, o, c)


def filter_transform_adjoint(du):
    """``dW = G^T dU G`` for every (o, c): dU (4, 4, O, C) -> dW (O, C, 3, 3)."""
    o, c = du.shape[2:]
    k = G_KRON.astype(du.dtype)
    return (du.reshape(16, o * c).T @ k).reshape(o, c, 3, 3)


# The kernel flipped, ``W'[u, v] = W[2-u, 2-v]``, is ``J W J`` with ``J`` the 3x3 reversal,
# and ``G J = P G`` where ``P`` swaps rows 0 and 3 of G (rows 1 and 2 are palindromes). So
# ``G W' G^T = P (G W G^T) P^T``: the flipped kernel's transform is the kernel's, its
# positions 0 and 3 swapped along each axis.
FLIP = (3, 1, 2, 0)


def flipped_filter_transform(u):
    """The 16 ``(C, O)`` matrices of the input gradient's kernel (``W`` flipped, its channel
    axes swapped) from ``u = filter_transform(W)`` (4, 4, O, C), as views: position
    ``(a, b)`` is ``u[FLIP[a], FLIP[b]].T``."""
    return [u[FLIP[a], FLIP[b]].T for a in range(4) for b in range(4)]


def _tiles(ho, wo):
    return -(-ho // 2), -(-wo // 2)


def _padded_split(x, ph, pw, th, tw, out):
    """One image ``x`` (C, H, W) with its padding, grown to ``2*th + 2`` rows and
    ``2*tw + 2`` columns (the last tiles' reach), zeros around, and its even and odd
    columns apart: into ``out`` (C, 2th+2, 2, tw+1), ``out[c, r, k, j] = xpad[c, r, 2j + k]``.

    Why apart: tile column ``j`` reads padded columns ``2j .. 2j+3``, i.e. even ``j``, odd
    ``j``, even ``j+1``, odd ``j+1``; in this layout each of a tile's 16 inputs, taken over
    a row of tiles, is a contiguous run (a shifted view), where on ``xpad`` it would be a
    stride-2 gather."""
    c, h, w = x.shape
    out.fill(0)
    rows = min(h, out.shape[1] - ph)
    for k in range(2):
        first = (k - pw) % 2            # x column that lands on padded column parity k
        j0 = (first + pw - k) // 2      # ... at split column j0
        cols = x[:, :rows, first::2]
        n = min(cols.shape[2], out.shape[3] - j0)
        out[:, ph:ph + rows, k, j0:j0 + n] = cols[:, :, :n]
    return out


def _input_transform(xs, t0, t1, tw, d, v):
    """``V = B^T d B`` for the tiles of tile rows ``t0 .. t1-1`` of one padded image, its
    columns split (``xs`` (C, Hp, 2, tw+1), :func:`_padded_split`): into ``v`` (4, 4, C,
    t1-t0, tw). Tile (i, j) reads padded rows ``2i .. 2i+3`` and columns ``2j .. 2j+3``.
    Its 16 inputs go to 16 planes of ``d`` (4, 4, C, t1-t0, tw), ``d[u, w, c, i, j] =
    xpad[c, 2i + u, 2j + w]`` (column ``2j + w`` is split column ``j + w // 2`` of parity
    ``w % 2``: a contiguous run per row); then one product, ``V = B_KRON @ d``."""
    for u in range(4):
        rows = xs[:, 2 * t0 + u: 2 * t1 + u: 2]                   # row u of every tile
        for w in range(4):
            np.copyto(d[u, w], rows[:, :, w % 2, w // 2: w // 2 + tw])
    gemm(B_KRON.astype(v.dtype), _rows(d, 16), _rows(v, 16))
    return v


def _rows(buf, k):
    """``buf`` as a (k, -1) matrix *view* for a GEMM to write into: a buffer that is not
    contiguous would be reshaped into a copy, and the product lost with it."""
    if not buf.flags.c_contiguous:
        raise ValueError(f"winograd: a transform's buffer must be C-contiguous, got strides "
                         f"{buf.strides} for shape {buf.shape}")
    return buf.reshape(k, -1)


def _output_transform(m, y4, out):
    """``Y = A^T M A`` per (o, tile): m (4, 4, O, rows, tw) -> out (O, rows, 2, tw, 2),
    ``out[o, i, r, j, s]`` = output pixel ``(2i + r, 2j + s)``. One product,
    ``Y[2r + s] = sum over xi of A_KRON[2r + s, xi] M[xi]``, into ``y4`` (4, O, rows, tw);
    then each of the 4 tile positions to its pixels (a copy with stride 2)."""
    gemm(A_KRON.astype(m.dtype), _rows(m, 16), _rows(y4, 4))
    for r in range(2):
        for s in range(2):
            out[:, :, r, :, s] = y4[2 * r + s]
    return out


def _output_transform_adjoint(dy_tiles, dy4, e):
    """``E = A dY A^T`` per (o, tile), the output transform's adjoint: dy_tiles (O, rows,
    2, tw, 2) -> e (4, 4, O, rows, tw). Each tile position's values go to one plane of
    ``dy4`` (4, O, rows, tw); then one product, ``E = A_KRON^T dY``."""
    for r in range(2):
        for s in range(2):
            np.copyto(dy4[2 * r + s], dy_tiles[:, :, r, :, s])
    gemm(A_KRON.T.astype(e.dtype), _rows(dy4, 4), _rows(e, 16))
    return e


_WORKSPACE = threading.local()   # per thread: {(name, dtype): flat scratch array}


def _scratch(name, dtype, *shape):
    """A contiguous scratch array of ``shape``, the front of a flat buffer kept for the
    next call (per thread, per name and dtype; it grows to the largest request).

    Why kept: each call's scratch is tens of MB (a band's transforms, the padded input).
    Fresh from ``np.empty``, glibc maps blocks that large from the kernel and returns
    them on free, so every call paid its page faults again: measured on VGG's conv4_2 at
    320 (512 channels, 40x40), the forward took 37 ms instead of 27 and the backward
    124 instead of 57, slower than the direct path it replaces. :func:`release_workspace`
    frees the buffers."""
    size = int(np.prod(shape))
    bufs = getattr(_WORKSPACE, "buffers", None)
    if bufs is None:
        bufs = _WORKSPACE.buffers = {}
    key = (name, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def release_workspace():
    """Free this thread's Winograd scratch buffers (they are kept between calls); returns
    the bytes freed."""
    bufs = getattr(_WORKSPACE, "buffers", {})
    freed = sum(b.nbytes for b in bufs.values())
    bufs.clear()
    return freed


def _bands(th, c, tw, itemsize):
    """Bands ``[(t0, t1), ...]`` of the ``th`` tile rows, each with at most
    ``WINOGRAD_BAND_BYTES`` of transformed tiles for ``c`` channels (at least one row)."""
    per_row = 16 * c * tw * itemsize
    rows = max(1, min(th, WINOGRAD_BAND_BYTES // max(per_row, 1)))
    count = -(-th // rows)
    rows = -(-th // count)                  # as even as the budget allows: no runt band
    return [(t0, min(t0 + rows, th)) for t0 in range(0, th, rows)]


def winograd_conv2d(x, weight, ph, pw):
    """``conv2d(x, weight, padding=(ph, pw))`` for a 3x3 kernel, stride 1, dilation 1, one
    group, by F(2x2, 3x3): x (N, C, H, W), weight (O, C, 3, 3) -> (N, O, H+2ph-2, W+2pw-2).
    One dtype throughout (float32 or float64). One band of tile rows at a time
    (``WINOGRAD_BAND_BYTES`` of transformed tiles): transform, 16 GEMMs, transform back."""
    _same_dtype("winograd_conv2d", x, weight)
    o, c = weight.shape[:2]
    return _winograd(x, filter_transform(weight).reshape(16, o, c), ph, pw)


def winograd_conv2d_input_grad(dy, weight, ph, pw):
    """``dx`` of ``conv2d(x, weight, padding=(ph, pw))`` (3x3, stride 1, one group) by
    F(2x2, 3x3): the convolution of ``dy`` (N, O, Ho, Wo) with the kernel flipped and its
    channel axes swapped, padding ``2 - p`` -> dx (N, C, Ho-2ph+2, Wo-2pw+2). The flipped
    kernel's transform comes from the kernel's (:func:`flipped_filter_transform`)."""
    _same_dtype("winograd_conv2d_input_grad", dy, weight)
    return _winograd(dy, flipped_filter_transform(filter_transform(weight)), 2 - ph, 2 - pw)


def _same_dtype(name, *arrays):
    """The Winograd functions compute in their operands' one dtype (conv.py casts first);
    a mix would send every GEMM to matmul's slower fallback, silently."""
    if len({a.dtype for a in arrays}) != 1:
        raise TypeError(f"{name}: operands must share one dtype, got "
                        f"{', '.join(str(a.dtype) for a in arrays)}")


def _transformed_bands(x, ph, pw, th, tw, bands):
    """For one image ``x`` (C, H, W): ``(t0, t1, V)`` per band of tile rows, ``V`` its input
    transform (4, 4, C, t1-t0, tw) in the workspace (valid until the next band)."""
    c, dt = x.shape[0], x.dtype
    xs = _padded_split(x, ph, pw, th, tw, _scratch("xs", dt, c, 2 * th + 2, 2, tw + 1))
    for t0, t1 in bands:
        b = t1 - t0
        yield t0, t1, _input_transform(xs, t0, t1, tw, _scratch("d", dt, 4, 4, c, b, tw),
                                       _scratch("v", dt, 4, 4, c, b, tw))


def _winograd(x, u, ph, pw):
    """The forward on transformed filters ``u``: 16 matrices (O, C), one per tile position
    (an array, or for the input gradient a list of transposed views). For the input
    gradient ``x`` is ``dy``: ``C`` is then the forward's O, and ``O`` its C."""
    n, c, h, w = x.shape
    o = u[0].shape[0]
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = _tiles(ho, wo)
    y = np.empty((n, o, th, 2, tw, 2), dtype=x.dtype)
    bands = _bands(th, max(c, o), tw, x.itemsize)
    dt = x.dtype
    for i in range(n):
        for t0, t1, v in _transformed_bands(x[i], ph, pw, th, tw, bands):
            b = t1 - t0
            m = _scratch("m", dt, 4, 4, o, b, tw)
            vf, mf = v.reshape(16, c, b * tw), m.reshape(16, o, b * tw)
            for xi in range(16):
                gemm(u[xi], vf[xi], mf[xi])
            _output_transform(m, _scratch("z", dt, 4, o, b, tw), y[i, :, t0:t1])
    y = y.reshape(n, o, 2 * th, 2 * tw)
    if (2 * th, 2 * tw) != (ho, wo):
        y = np.ascontiguousarray(y[:, :, :ho, :wo])
    return y


def winograd_conv2d_weight_grad(dy, x, ph, pw):
    """``dW`` of ``conv2d(x, W, padding=(ph, pw))`` (3x3, stride 1, one group) by F(2x2, 3x3):
    dy (N, O, Ho, Wo), x (N, C, H, W) -> dW (O, C, 3, 3). Per band of tile rows:
    ``dU[xi] += E[xi] @ V[xi]^T`` with ``E = A dY A^T`` (16 GEMMs accumulating in place);
    last, ``dW = G^T dU G``."""
    _same_dtype("winograd_conv2d_weight_grad", dy, x)
    n, c, h, w = x.shape
    o, ho, wo = dy.shape[1:]
    th, tw = _tiles(ho, wo)
    du = np.zeros((16, o, c), dtype=x.dtype)
    bands = _bands(th, max(c, o), tw, x.itemsize)
    dt = x.dtype
    dy_tiles = _scratch("dy", dt, o, th, 2, tw, 2)        # dy on the tile grid, 0 past it
    dyt_flat = dy_tiles.reshape(o, 2 * th, 2 * tw)
    if (2 * th, 2 * tw) != (ho, wo):
        dy_tiles.fill(0)
    for i in range(n):
        dyt_flat[:, :ho, :wo] = dy[i]
        for t0, t1, v in _transformed_bands(x[i], ph, pw, th, tw, bands):
            b = t1 - t0
            # E and dY's planes take the forward's 'm' and 'z' buffers (same sizes; the
            # forward does not run meanwhile)
            e = _output_transform_adjoint(dy_tiles[:, t0:t1], _scratch("z", dt, 4, o, b, tw),
                                          _scratch("m", dt, 4, 4, o, b, tw))
            vf, ef = v.reshape(16, c, b * tw), e.reshape(16, o, b * tw)
            for xi in range(16):
                gemm(ef[xi], vf[xi].T, du[xi], accumulate=True)
    return filter_transform_adjoint(du.reshape(4, 4, o, c))
