r"""Transposed convolutions whose weight upsamples each channel on its own with one
separable kernel: FCN's bilinear upsamplers.

FCN starts every upsampler as bilinear interpolation (:func:`minifcn.models.fcn.bilinear_weight`)
and by default keeps it frozen: the weight (C, C, k, k) is zero off the channel diagonal, and
each diagonal kernel is the same outer product ``t t^T``. For such a weight,
``W[c, c'] = 0`` for ``c != c'`` and ``W[c, c] = u v^T``, the transposed convolution
(dilation 1) of each channel is two 1-D transposed convolutions, one per axis:

    ``y[n, c] = T_h x[n, c] T_w^T``,   ``T[o, i] = k[o + p - s*i]`` (0 outside ``0 .. len(k)-1``),

with ``T_h`` (Ho x H) the 1-D transposed convolution with ``u`` along the rows (stride,
padding and output size of that axis) and ``T_w`` (Wo x W) with ``v`` along the columns:
the 2-D sum ``y[o, q] = sum_{i, j} u[o + p - s i] v[q + p - s j] x[i, j]`` factors into
the row sum and the column sum. The input gradient is its adjoint,
``dx[n, c] = T_h^T dy[n, c] T_w``; a frozen weight needs no weight gradient.

Cost: two products with small dense matrices (``T`` has ``k/s`` non-zeros per row, the
rest multiplies zeros), ``N C H W Wo + N C Ho H Wo`` multiply-adds, where the general path
does ``C`` times more (every output channel reads every input channel) and rearranges the
data between phases. ``python -m minifcn.train`` (FCN-8s, width 1/8, 4 classes, batch 16
at 64x64, three upsamplers) took 61 s where it took 66 just before, and its step read
1.55x of torch's where it read 1.77x (benchmarks/HISTORY.md, "Eighteenth session").
:class:`minifcn.nn.ConvTranspose2d` takes this path on the CPU for a frozen weight of
this form (:func:`separable_factors`), of its input's dtype, and finite operands.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_4d


def separable_factors(weight):
    """``(u, v)`` with ``weight[c, c] = outer(u, v)`` for every ``c`` and ``weight[c, c'] = 0``
    for ``c != c'``, if ``weight`` (C, C, kh, kw) has that form (to a few units in the last
    place of its dtype); else None."""
    if weight.ndim != 4 or weight.shape[0] != weight.shape[1] or weight.dtype.kind != "f":
        return None
    c = weight.shape[0]
    diag = weight[np.arange(c), np.arange(c)]                       # (C, kh, kw)
    if not (diag == diag[0]).all() or np.count_nonzero(weight) != np.count_nonzero(diag):
        return None                                 # (the second: a non-zero off the diagonal)
    k = diag[0]
    i0, j0 = np.unravel_index(np.argmax(np.abs(k)), k.shape)
    if k[i0, j0] == 0:
        return None
    u, v = k[:, j0], k[i0, :] / k[i0, j0]
    tol = 8 * np.finfo(weight.dtype).eps * np.abs(k).max()
    if np.abs(np.outer(u, v) - k).max() > tol:
        return None
    return u, v


def axis_matrix(k1, size_in, stride, padding, size_out):
    """``T`` (size_out x size_in) of the 1-D transposed convolution with kernel ``k1``:
    ``T[o, i] = k1[o + padding - stride*i]`` where that index is inside ``k1``, else 0."""
    o = np.arange(size_out)[:, None]
    t = o + padding - stride * np.arange(size_in)[None, :]
    inside = (t >= 0) & (t < len(k1))
    return np.where(inside, k1[np.clip(t, 0, len(k1) - 1)], 0).astype(k1.dtype)


def conv_transpose2d_separable(x, th, tw):
    """``y[n, c] = th @ x[n, c] @ tw.T``: x (N, C, H, W), ``th`` (Ho, H), ``tw`` (Wo, W)
    (:func:`axis_matrix`) -> (N, C, Ho, Wo). Two GEMMs: the columns for every row of every
    image at once, then the rows, image by image (one batched ``matmul``)."""
    check_4d(x, "conv_transpose2d_separable: input")
    n, c, h, w = x.shape
    if th.shape[1] != h or tw.shape[1] != w:
        raise ValueError(f"conv_transpose2d_separable: matrices {th.shape} and {tw.shape} do "
                         f"not take a {h}x{w} input")
    cols = np.ascontiguousarray(x).reshape(n * c * h, w) @ tw.T          # (N C H, Wo)
    y = np.matmul(th, cols.reshape(n * c, h, tw.shape[0]))               # (N C, Ho, Wo)
    return y.reshape(n, c, th.shape[0], tw.shape[0])


def conv_transpose2d_separable_input_grad(dy, th, tw):
    """The adjoint: ``dx[n, c] = th.T @ dy[n, c] @ tw``: dy (N, C, Ho, Wo) -> (N, C, H, W)."""
    check_4d(dy, "conv_transpose2d_separable_input_grad: grad_output")
    n, c, ho, wo = dy.shape
    if th.shape[0] != ho or tw.shape[0] != wo:
        raise ValueError(f"conv_transpose2d_separable_input_grad: matrices {th.shape} and "
                         f"{tw.shape} do not give a {ho}x{wo} output")
    cols = np.ascontiguousarray(dy).reshape(n * c * ho, wo) @ tw         # (N C Ho, W)
    dx = np.matmul(th.T, cols.reshape(n * c, ho, tw.shape[1]))           # (N C, H, W)
    return dx.reshape(n, c, th.shape[1], tw.shape[1])
