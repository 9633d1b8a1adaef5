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
transforms add only additions, linear in the channels where the GEMMs are quadratic, so
the saving shows from a few hundred channels on (VGG's conv3 to conv5).

The backward is the same algebra read backwards:

- ``dx``: a stride-1 convolution's input gradient is the convolution of ``dy`` with the
  kernel flipped and its channel axes swapped, padding ``2 - p``
  (:func:`~minifcn.functional.conv._as_transposed`) — this forward again.
- ``dW``: ``Y = A^T (U * V) A`` is linear in ``U``, so ``dU = (A dY A^T) * V`` per tile
  (``dY``: the 2x2 tile of ``dy``), summed over tiles and images: 16 GEMMs
  ``S[xi] = dU[xi] (O x tiles) @ V[xi]^T (tiles x C)``; then ``dW = G^T S G``, the
  filter transform's adjoint.

The output grid is cut into 2x2 tiles; where ``Ho`` or ``Wo`` is odd, the last tile row or
column reaches one pixel past the output, reading zero padding, and is cropped (its
gradient is zero). Arithmetic: the transforms' coefficients are 0, +-1 and +-1/2, so
rounding stays within a few ulps of the direct sum's. Non-finite values are another
matter: ``B^T d`` subtracts inputs, and an ``inf`` input would give ``inf - inf = NaN``
where the direct sum gives ``inf``; callers (:mod:`.conv`) take Winograd only when the
operands are finite (:func:`~minifcn.functional._select.all_finite`).
"""
from __future__ import annotations

import numpy as np

from .blas import gemm

# The transforms of F(2x2, 3x3), as matrices (for the filter transform and its adjoint,
# and for the tests); the input and output transforms are written out as additions.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

WINOGRAD_BAND_BYTES = 8 << 20   # input-transform bytes per band of tile rows (the V of one band)


# ``G W G^T`` for all (o, c) at once is one product with the Kronecker matrix:
# ``U[a, b] = sum_{u, v} G[a, u] G[b, v] W[u, v] = (G (x) G)[4a + b, 3u + v] W[3u + v]``.
G_KRON = np.kron(G, G)          # (16, 9)


def filter_transform(weight):
    """``U = G W G^T`` for every (o, c): weight (O, C, 3, 3) -> U (4, 4, O, C)."""
    o, c = weight.shape[:2]
    k = G_KRON.astype(weight.dtype)
    return (k @ weight.reshape(o * c, 9).T).reshape(4, 4, o, c)


def filter_transform_adjoint(s):
    """``dW = G^T S G`` for every (o, c): S (4, 4, O, C) -> dW (O, C, 3, 3)."""
    o, c = s.shape[2:]
    k = G_KRON.astype(s.dtype)
    return np.ascontiguousarray((k.T @ s.reshape(16, o * c)).T).reshape(o, c, 3, 3)


def _tiles(ho, wo):
    return -(-ho // 2), -(-wo // 2)


def _padded(x, ph, pw, th, tw):
    """The input with its padding, grown to ``2*th + 2`` rows and ``2*tw + 2`` columns (the
    last tiles' reach), zeros around: (N, C, 2th+2, 2tw+2)."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    r0, c0 = max(ph, 0), max(pw, 0)
    src = x[:, :, max(-ph, 0):, max(-pw, 0):]
    rows = min(src.shape[2], xp.shape[2] - r0)
    cols = min(src.shape[3], xp.shape[3] - c0)
    xp[:, :, r0:r0 + rows, c0:c0 + cols] = src[:, :, :rows, :cols]
    return xp


def _split_columns(xp):
    """The padded image ``xp`` (C, Hp, Wp) with its even and odd columns apart:
    (C, Hp, 2, Wp/2), ``[c, r, k, j] = xp[c, r, 2j + k]``. Tile column ``j`` reads padded
    columns ``2j .. 2j+3``: even ``j``, odd ``j``, even ``j+1``, odd ``j+1``, so in this
    layout every term of the input transform is a contiguous run (a shifted view),
    where on ``xp`` it would be a stride-2 gather."""
    c, hp, wp = xp.shape
    xs = np.empty((c, hp, 2, wp // 2), dtype=xp.dtype)
    np.copyto(xs.transpose(0, 1, 3, 2), xp.reshape(c, hp, wp // 2, 2))
    return xs


def _input_transform(xs, t0, t1, tw, rows_buf, v):
    """``V = B^T d B`` for the tiles of tile rows ``t0 .. t1-1`` of one padded image, its
    columns split (``xs`` (C, Hp, 2, tw+1), :func:`_split_columns`): into ``v`` (4, 4, C,
    t1-t0, tw). Tile (i, j) reads padded rows ``2i .. 2i+3`` and columns ``2j .. 2j+3``.
    The rows first (``rows_buf`` (4, C, t1-t0, 2, tw+1) gets ``B^T`` applied along
    them), then the columns."""
    r = [xs[:, 2 * t0 + k: 2 * t1 + k: 2] for k in range(4)]      # row k of every tile
    np.subtract(r[0], r[2], out=rows_buf[0])
    np.add(r[1], r[2], out=rows_buf[1])
    np.subtract(r[2], r[1], out=rows_buf[2])
    np.subtract(r[1], r[3], out=rows_buf[3])
    even, odd = rows_buf[:, :, :, 0], rows_buf[:, :, :, 1]
    col = [even[..., :tw], odd[..., :tw], even[..., 1:], odd[..., 1:]]   # column k of every tile
    np.subtract(col[0], col[2], out=v[:, 0])
    np.add(col[1], col[2], out=v[:, 1])
    np.subtract(col[2], col[1], out=v[:, 2])
    np.subtract(col[1], col[3], out=v[:, 3])
    return v


def _output_transform(m, z, out):
    """``Y = A^T M A`` per (o, tile): m (4, 4, O, rows, tw) -> out (O, rows, 2, tw, 2),
    ``out[o, i, r, j, s]`` = output pixel ``(2i + r, 2j + s)``; ``z`` (2, 4, O, rows, tw)
    holds the rows' half."""
    np.add(m[0], m[1], out=z[0])
    z[0] += m[2]
    np.subtract(m[1], m[2], out=z[1])
    z[1] -= m[3]
    for r in range(2):
        y = out[:, :, r]                                           # (O, rows, tw, 2)
        np.add(z[r, 0], z[r, 1], out=y[..., 0])
        y[..., 0] += z[r, 2]
        np.subtract(z[r, 1], z[r, 2], out=y[..., 1])
        y[..., 1] -= z[r, 3]
    return out


def _output_transform_adjoint(dy_tiles, e, du):
    """``dU = A dY A^T`` per (o, tile), the output transform's adjoint: dy_tiles (O, rows,
    2, tw, 2) -> du (4, 4, O, rows, tw); ``e`` (4, 2, O, rows, tw) holds the rows' half.
    ``A = [[1, 0], [1, 1], [1, -1], [0, -1]]``."""
    d0, d1 = dy_tiles[:, :, 0], dy_tiles[:, :, 1]                  # (O, rows, tw, 2)
    for s in range(2):
        np.copyto(e[0, s], d0[..., s])
        np.add(d0[..., s], d1[..., s], out=e[1, s])
        np.subtract(d0[..., s], d1[..., s], out=e[2, s])
        np.negative(d1[..., s], out=e[3, s])
    np.copyto(du[:, 0], e[:, 0])
    np.add(e[:, 0], e[:, 1], out=du[:, 1])
    np.subtract(e[:, 0], e[:, 1], out=du[:, 2])
    np.negative(e[:, 1], out=du[:, 3])
    return du


def _buffer(size, dtype):
    """A flat scratch array, from which each band takes a contiguous view (:func:`_view`)."""
    return np.empty(size, dtype=dtype)


def _view(buf, *shape):
    """The first ``prod(shape)`` entries of the flat ``buf`` as a contiguous array of that
    shape (a band shorter than the first keeps its rows contiguous, so the GEMMs read
    and write the buffer itself, never a reshaped copy)."""
    return buf[:int(np.prod(shape))].reshape(shape)


def _bands(th, c, tw, itemsize):
    per_row = 16 * c * tw * itemsize
    rows = max(1, min(th, WINOGRAD_BAND_BYTES // max(per_row, 1)))
    return [(t0, min(t0 + rows, th)) for t0 in range(0, th, rows)]


def winograd_conv2d(x, weight, ph, pw):
    """``conv2d(x, weight, padding=(ph, pw))`` for a 3x3 kernel, stride 1, dilation 1, one
    group, by F(2x2, 3x3): x (N, C, H, W), weight (O, C, 3, 3) -> (N, O, H+2ph-2, W+2pw-2).
    Same dtype in and out (float32 or float64). One band of tile rows at a time
    (``WINOGRAD_BAND_BYTES`` of input transform): transform, 16 GEMMs, transform back."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = _tiles(ho, wo)
    u = filter_transform(weight).reshape(16, o, c)
    y = np.empty((n, o, th, 2, tw, 2), dtype=x.dtype)
    bands = _bands(th, c, tw, x.itemsize)
    rows = bands[0][1] - bands[0][0]
    rows_buf = _buffer(4 * c * rows * (2 * tw + 2), x.dtype)
    v_buf, m_buf = _buffer(16 * c * rows * tw, x.dtype), _buffer(16 * o * rows * tw, x.dtype)
    z_buf = _buffer(8 * o * rows * tw, x.dtype)
    for i in range(n):
        xs = _split_columns(_padded(x[i:i + 1], ph, pw, th, tw)[0])
        for t0, t1 in bands:
            b = t1 - t0
            v = _input_transform(xs, t0, t1, tw, _view(rows_buf, 4, c, b, 2, tw + 1),
                                 _view(v_buf, 4, 4, c, b, tw))
            m = _view(m_buf, 4, 4, o, b, tw)
            vf, mf = v.reshape(16, c, b * tw), m.reshape(16, o, b * tw)
            for xi in range(16):
                gemm(u[xi], vf[xi], mf[xi])
            _output_transform(m, _view(z_buf, 2, 4, o, b, tw), y[i, :, t0:t1])
    y = y.reshape(n, o, 2 * th, 2 * tw)
    if (2 * th, 2 * tw) != (ho, wo):
        y = np.ascontiguousarray(y[:, :, :ho, :wo])
    return y


def winograd_conv2d_weight_grad(dy, x, ph, pw):
    """``dW`` of ``conv2d(x, W, padding=(ph, pw))`` (3x3, stride 1, one group) by F(2x2, 3x3):
    dy (N, O, Ho, Wo), x (N, C, H, W) -> dW (O, C, 3, 3). Per band of tile rows:
    ``S[xi] += (A dY A^T)[xi] @ V[xi]^T`` (16 GEMMs accumulating in place); last,
    ``dW = G^T S G``."""
    n, c, h, w = x.shape
    o, ho, wo = dy.shape[1:]
    th, tw = _tiles(ho, wo)
    s = np.zeros((16, o, c), dtype=x.dtype)
    bands = _bands(th, max(c, o), tw, x.itemsize)
    rows = bands[0][1] - bands[0][0]
    rows_buf = _buffer(4 * c * rows * (2 * tw + 2), x.dtype)
    v_buf, du_buf = _buffer(16 * c * rows * tw, x.dtype), _buffer(16 * o * rows * tw, x.dtype)
    e_buf = _buffer(8 * o * rows * tw, x.dtype)
    dy_tiles = np.zeros((o, th, 2, tw, 2), dtype=x.dtype)     # dy on the tile grid, 0 past it
    dyt_flat = dy_tiles.reshape(o, 2 * th, 2 * tw)
    for i in range(n):
        xs = _split_columns(_padded(x[i:i + 1], ph, pw, th, tw)[0])
        dyt_flat[:, :ho, :wo] = dy[i]
        for t0, t1 in bands:
            b = t1 - t0
            v = _input_transform(xs, t0, t1, tw, _view(rows_buf, 4, c, b, 2, tw + 1),
                                 _view(v_buf, 4, 4, c, b, tw))
            du = _output_transform_adjoint(dy_tiles[:, t0:t1], _view(e_buf, 4, 2, o, b, tw),
                                           _view(du_buf, 4, 4, o, b, tw))
            vf, duf = v.reshape(16, c, b * tw), du.reshape(16, o, b * tw)
            for xi in range(16):
                gemm(duf[xi], vf[xi].T, s[xi], accumulate=True)
    return filter_transform_adjoint(s.reshape(4, 4, o, c))
