r"""Study aids: each claim of the notes about transposed convolution, as code you can run.

Everything here is built the slow, obvious way (Python loops over positions and taps),
so that it can serve as an independent reference for the fast ops in
:mod:`minifcn.functional`; ``tests/test_math.py`` holds the two against each other.

1. **A convolution is a matrix.** For a fixed input size, ``conv2d(x)`` is linear in
   ``x``, so there is a matrix ``C`` with ``conv2d(x).ravel() == C @ x.ravel()``.
   :func:`conv_matrix` writes it down: row = output pixel, column = input pixel, entry =
   the kernel tap that connects them (0 where none does).
2. **Why "transposed".** ``conv_transpose2d(y) == (C.T @ y.ravel()).reshape(...)``:
   the transposed convolution multiplies by the transpose of the same matrix. It maps
   the convolution's output shape back to its input shape — an upsampling — exactly when
   ``output_padding = (H + 2p - d(k-1) - 1) mod s`` (a strided convolution maps several
   input sizes to one output size; ``output_padding`` picks which one comes back).
3. **Why "deconvolution" is a misnomer.** ``C.T`` is not ``C``'s inverse: ``C`` is not
   even square (fewer outputs than inputs when it shrinks), so ``C.T @ C`` has rank at
   most ``Ho*Wo`` and cannot be the identity. :func:`transpose_is_not_inverse` measures it.
4. **Stride spreads the inputs apart, padding crops the output.**
   :func:`transposed_conv_by_zero_insertion` computes a transposed convolution as an
   ordinary one: insert ``stride - 1`` zeros between the inputs, pad by
   ``dilation*(k - 1) - padding``, convolve with the flipped kernel.
   :func:`transposed_conv_by_stamping` is the picture in the notes: every input pixel
   stamps a scaled copy of the kernel, ``stride`` apart, then ``padding`` is cropped off.
5. **An FC layer is a convolution whose kernel covers the whole map.**
   :func:`fc_as_conv` reshapes an FC weight into a conv weight; on a bigger input the
   same weights slide and give a map of scores (position kept, any input size).
6. **Upsampling 32x at once is coarse.** :func:`upsampling_error` pools an image by a
   factor and brings it back with a bilinear transposed convolution: the larger the
   factor, the more detail is lost — why FCN-16s and FCN-8s add finer maps (skips).

7. **Winograd's matrices come from interpolation** (beyond the notes; minifcn's fast
   CPU paths use them). :func:`toom_cook` builds ``(A^T, G, B^T)`` of F(m, r), ``m``
   outputs of an ``r``-tap correlation from ``m + r - 1`` products, from the points where
   the two polynomials are evaluated; :mod:`minifcn.functional.winograd` and
   :mod:`minifcn.functional.winograd_transposed` hold its F(2, 3) and F(3, 2) on 0, 1, -1
   (up to a scale per point, ``tests/test_math.py``), and ``python -m
   benchmarks.winograd_tiles`` what larger tiles would cost in float32 error. In 2-D the
   transforms are products with Kronecker matrices, ``vec(A^T M A) = (A^T (x) A^T)
   vec(M)``: one GEMM for every tile at once.

``python -m minifcn.explain`` prints a tiny worked example of 1-4 and 7.
"""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from .cli import run_main
from .functional import conv2d, conv_transpose2d, winograd_transposed
from .functional._checks import pair


# -- 1. the matrix of a convolution -------------------------------------------------------

def _out_len(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_taps(in_size, kernel, stride=1, padding=0, dilation=1):
    """Which kernel tap links output pixel r to input pixel c, as an int matrix.

    Returns ``T`` of shape ``(Ho*Wo, H*W)`` with ``T[r, c] = u*kw + v + 1`` if tap
    ``(u, v)`` of the window of output pixel ``r`` sits on input pixel ``c``, else 0
    (a padded position links to no input: that is what zero padding means).
    Built by a loop over output positions and taps — no call to conv2d.
    """
    h, w = pair(in_size, "in_size", minimum=1)
    kh, kw = pair(kernel, "kernel", minimum=1)
    sh, sw = pair(stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    ho, wo = _out_len(h, kh, sh, ph, dh), _out_len(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv_taps: a {kh}x{kw} kernel (dilation {(dh, dw)}) does not fit "
                         f"a {h}x{w} input padded by {(ph, pw)}")
    taps = np.zeros((ho * wo, h * w), dtype=np.int64)
    for oh in range(ho):
        for ow in range(wo):
            for u in range(kh):
                for v in range(kw):
                    ih, iw = oh * sh + u * dh - ph, ow * sw + v * dw - pw
                    if 0 <= ih < h and 0 <= iw < w:
                        taps[oh * wo + ow, ih * w + iw] = u * kw + v + 1
    return taps


def conv_matrix(in_size, kernel, stride=1, padding=0, dilation=1, weight=None):
    """The dense matrix ``C`` of a convolution: ``conv2d(x, W)[n].ravel() == C @ x[n].ravel()``.

    in_size: H or (H, W); kernel: k or (kh, kw).
    weight: ``(kh, kw)`` for one channel -> C is ``(Ho*Wo, H*W)``; or a conv weight
    ``(O, C, kh, kw)`` -> C is ``(O*Ho*Wo, C*H*W)``, blocks ``C[o, c] = conv_matrix(W[o, c])``
    (a convolution sums over input channels, so each (output, input) channel pair has its
    own block). ``None``: a kernel of ones, i.e. the 0/1 pattern of who feeds whom.
    """
    kh, kw = pair(kernel, "kernel", minimum=1)
    taps = conv_taps(in_size, (kh, kw), stride, padding, dilation)
    w = np.ones((kh, kw)) if weight is None else np.asarray(weight)
    if w.shape[-2:] != (kh, kw) or w.ndim not in (2, 4):
        raise ValueError(f"conv_matrix: weight must have shape ({kh}, {kw}) or "
                         f"(O, C, {kh}, {kw}), got {w.shape}")
    single = w.ndim == 2
    w4 = w[None, None] if single else w
    flat = np.concatenate([np.zeros(w4.shape[:2] + (1,), w4.dtype),
                           w4.reshape(w4.shape[0], w4.shape[1], kh * kw)], axis=2)
    blocks = flat[:, :, taps]                        # (O, C, Ho*Wo, H*W): tap 0 reads the 0
    o, c, rows, cols = blocks.shape
    dense = blocks.transpose(0, 2, 1, 3).reshape(o * rows, c * cols)
    return dense


# -- 2./3. transposed = C^T, and C^T is not C^-1 ------------------------------------------

def conv_transpose_by_matrix(x, weight, stride=1, padding=0, dilation=1, output_padding=0):
    """Transposed convolution computed literally as ``C^T y``, one image at a time.

    x (N, Cin, H, W), weight (Cin, Cout, kh, kw) (torch's layout; groups 1). ``C`` is the
    matrix of the *convolution* with this weight, taken from the transposed output size
    (which that convolution shrinks back to H x W).
    """
    x = np.asarray(x)
    n, cin, h, w = x.shape
    _, cout, kh, kw = weight.shape
    sh, sw = pair(stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    oph, opw = pair(output_padding, "output_padding", minimum=0)
    out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    out_w = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    c = conv_matrix((out_h, out_w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), weight)
    # The convolution shrinks out_h back to H rows of windows -- or more, when
    # output_padding >= stride (allowed if dilation > stride): then only the first H x W
    # windows are the transposed convolution's inputs, the extra ones are dropped.
    ho, wo = _out_len(out_h, kh, sh, ph, dh), _out_len(out_w, kw, sw, pw, dw)
    c = c.reshape(cin, ho, wo, -1)[:, :h, :w].reshape(cin * h * w, -1)
    return (x.reshape(n, -1) @ c).reshape(n, cout, out_h, out_w)   # each row: C^T x[n]


class NotAnInverse(NamedTuple):
    """What :func:`transpose_is_not_inverse` found."""
    shape: tuple                  # (rows, cols) of C: outputs x inputs
    rank: int                     # rank of C, hence of C^T C (<= min(shape))
    identity_error: float         # max |C^T C - I|
    reconstruction_error: float   # ||C^T C x - x|| / ||x|| for a random x


def transpose_is_not_inverse(in_size, kernel, stride=1, padding=0, dilation=1, weight=None,
                             seed=0):
    """Does the transposed convolution undo the convolution? Measure ``C^T C`` against I.

    ``weight`` defaults to a random ``(kh, kw)`` kernel. The answer is no: a convolution
    that shrinks (Ho*Wo < H*W) has ``rank C < H*W``, so no matrix at all can undo it, and
    even a size-keeping one (padding = (k-1)/2, on an input at least as large as the
    kernel) has ``C^T C != I`` unless the kernel is a single +-1 at its centre tap: a
    window at the border loses the taps that fall on the padding, so its row of ``C`` is
    shorter than the others. (On a smaller input other kernels can slip through: on a
    1x2 input the row kernel [1, 0, 1] makes ``C`` a permutation.) So
    ``conv_transpose2d`` is not a "deconvolution": it restores the shape, not the values.

    The one case where it comes close: windows that neither overlap nor reach into the
    padding (no padding, and a window span ``d*(k-1) + 1 <= stride``) and a kernel of unit
    norm give ``C C^T = I`` (C's rows are orthonormal: unit norm, disjoint supports). Then
    ``C^T`` is C's pseudo-inverse: convolving after transposed-convolving gives back the
    convolution's output exactly, and ``C^T C x`` is the orthogonal projection of ``x``
    onto C's row space, the smallest input with the same output (``C C^T C x = C x``);
    ``C^T C`` is that projection, not I. With padding, or dilated windows that overlap,
    even a unit-norm kernel does not give ``C C^T = I``.
    """
    rng = np.random.default_rng(seed)
    kh, kw = pair(kernel, "kernel", minimum=1)
    w = rng.standard_normal((kh, kw)) if weight is None else np.asarray(weight, np.float64)
    c = conv_matrix(in_size, (kh, kw), stride, padding, dilation, w)
    x = rng.standard_normal(c.shape[1])
    ctc = c.T @ c
    return NotAnInverse(shape=c.shape, rank=int(np.linalg.matrix_rank(c)),
                        identity_error=float(np.abs(ctc - np.eye(c.shape[1])).max()),
                        reconstruction_error=float(np.linalg.norm(ctc @ x - x)
                                                   / np.linalg.norm(x)))


# -- 4. stride spreads the inputs, padding crops the output --------------------------------

def spread(x, stride):
    """Insert ``stride - 1`` zeros between neighbouring pixels: (H, W) -> ((H-1)s+1, (W-1)s+1)."""
    sh, sw = pair(stride, "stride", minimum=1)
    n, c, h, w = x.shape
    out = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), dtype=x.dtype)
    out[:, :, ::sh, ::sw] = x
    return out


def _pad_or_crop(x, before, after, axis):
    """Zero-pad (positive amounts) or crop (negative amounts) one axis."""
    if before < 0:
        x = np.take(x, range(-before, x.shape[axis]), axis=axis)
        before = 0
    if after < 0:
        x = np.take(x, range(0, x.shape[axis] + after), axis=axis)
        after = 0
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return np.pad(x, widths)


def transposed_conv_by_zero_insertion(x, weight, stride=1, padding=0, dilation=1,
                                      output_padding=0):
    """A transposed convolution as an *ordinary* convolution (stride 1), in three steps:

    1. spread: insert ``stride - 1`` zeros between the inputs;
    2. pad each border by ``q = dilation*(k - 1) - padding`` zeros (a negative q crops),
       plus ``output_padding`` more at the bottom/right;
    3. convolve (minifcn's ``conv2d``) with the kernel flipped in both axes and its
       channel axes swapped: ``W'[o, c] = W[c, o, ::-1, ::-1]``.

    Padding ``p`` of the transposed convolution *removes* ``p`` from the ``d(k-1)`` full
    padding — it crops the output. x (N, Cin, H, W), weight (Cin, Cout, kh, kw), groups 1.
    """
    _, _, kh, kw = weight.shape
    sh, sw = pair(stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    oph, opw = pair(output_padding, "output_padding", minimum=0)
    z = spread(x, (sh, sw))
    qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    z = _pad_or_crop(z, qh, qh + oph, axis=2)
    z = _pad_or_crop(z, qw, qw + opw, axis=3)
    flipped = np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    return conv2d(np.ascontiguousarray(z), flipped, None, 1, 0, (dh, dw))


def transposed_conv_by_stamping(x, weight, stride=1, padding=0, dilation=1, output_padding=0):
    """The notes' picture, as a loop: each input pixel stamps ``x[n, c, i, j] * W[c]``
    onto the output at ``(i*stride, j*stride)``; overlapping stamps add up; finally
    ``padding`` is cropped from every border (``output_padding`` extends the bottom/right).

    x (N, Cin, H, W), weight (Cin, Cout, kh, kw) -> (N, Cout, Ho, Wo). groups 1.
    """
    x, weight = np.asarray(x), np.asarray(weight)
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"transposed_conv_by_stamping: x must be (N, Cin, H, W) and weight "
                         f"(Cin, Cout, kh, kw) with the same Cin, got x {x.shape} and weight "
                         f"{weight.shape}")
    n, cin, h, w = x.shape
    _, cout, kh, kw = weight.shape
    sh, sw = pair(stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    oph, opw = pair(output_padding, "output_padding", minimum=0)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1        # a stamp's footprint
    full_h, full_w = (h - 1) * sh + span_h, (w - 1) * sw + span_w
    out_h, out_w = full_h - 2 * ph + oph, full_w - 2 * pw + opw
    if out_h < 1 or out_w < 1:
        raise ValueError(f"transposed_conv_by_stamping: empty output {out_h}x{out_w}")
    canvas = np.zeros((n, cout, max(full_h, ph + out_h), max(full_w, pw + out_w)),
                      dtype=np.result_type(x, weight))
    for b in range(n):
        for c in range(cin):
            for i in range(h):
                for j in range(w):
                    canvas[b, :, i * sh:i * sh + span_h:dh, j * sw:j * sw + span_w:dw] += (
                        x[b, c, i, j] * weight[c])
    return canvas[:, :, ph:ph + out_h, pw:pw + out_w]                 # padding crops


# -- 5. an FC layer is a convolution over the whole map ------------------------------------

def fc_as_conv(fc_weight, in_shape):
    """Reshape an FC weight ``(out, C*H*W)`` (acting on a flattened ``(C, H, W)`` map) into
    the weight ``(out, C, H, W)`` of a convolution with an ``H x W`` kernel.

    On a ``C x H x W`` input the convolution gives a ``1 x 1`` map equal to the FC output.
    On a bigger input the same weights slide: output pixel ``(i, j)`` is the FC layer
    applied to the window at ``(i, j)`` — the position is kept, and any size >= H x W works,
    where the FC layer would refuse the input. (FCN's fc6 is this, with VGG16's 7x7x512
    window; ``tests/test_models.py`` checks that conversion on the real classifier.)
    """
    c, h, w = in_shape
    fc_weight = np.asarray(fc_weight)
    if fc_weight.ndim != 2 or fc_weight.shape[1] != c * h * w:
        raise ValueError(f"fc_as_conv: weight must be (out, {c}*{h}*{w} = {c * h * w}), "
                         f"got {fc_weight.shape}")
    return fc_weight.reshape(fc_weight.shape[0], c, h, w)


# -- 6. why one 32x step is coarse ------------------------------------------------------------

def bilinear_kernel(factor):
    """The ``2f x 2f`` bilinear interpolation kernel (FCN's initial upsampling weight); for
    an even ``f``, a transposed convolution with it, ``stride = f``, ``padding = f // 2``,
    enlarges f times (an odd f gives ``f*n + 1``)."""
    from .models.fcn import bilinear_kernel as kernel_of_size   # the one the models use
    return kernel_of_size(2 * factor)


def upsampling_error(image, factor):
    """Average-pool a (H, W) image by ``factor`` and upsample it back with a bilinear
    transposed convolution (k = 2f, s = f, p = f/2); return the mean absolute error over
    the interior: the ``f/2`` pixels along each border are left out, where the upsampler's
    zero padding darkens even a constant image (an artefact of the border, not lost
    detail; a constant image gives 0 here).

    Detail smaller than ``factor`` pixels is gone after pooling and no upsampler brings it
    back, so the error grows with the factor: a 1/32 map upsampled 32x is coarser than a
    1/8 map upsampled 8x. FCN-16s and FCN-8s add those finer maps back (skip connections).
    H and W must be multiples of ``factor`` (and factor even, or 1).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"upsampling_error: image must be 2-D (H, W), got shape {image.shape}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"upsampling_error: factor must be a positive int, got {factor!r}")
    h, w = image.shape
    if h % factor or w % factor or (factor > 1 and factor % 2):
        raise ValueError(f"upsampling_error: {h}x{w} is not a multiple of factor {factor}, "
                         "or the factor is odd")
    if factor == 1:
        return 0.0
    small = image.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    up = conv_transpose2d(small[None, None], bilinear_kernel(factor)[None, None], None,
                          factor, factor // 2)[0, 0]
    b = factor // 2                                 # the border band the zero padding darkens
    return float(np.abs(up - image)[b:h - b, b:w - b].mean())


# -- 7. Winograd's minimal filtering, from its interpolation points ------------------------

def toom_cook(m, r, points):
    """``(A^T, G, B^T)`` of Winograd's F(m, r) on the finite ``points`` (``m + r - 2``
    distinct values) and infinity: ``y = A^T [(G g) * (B^T d)]`` gives the ``m`` outputs
    ``y[i] = sum_k g[k] d[i + k]`` of an ``r``-tap correlation from ``n = m + r - 1``
    products instead of ``m r``.

    The products are the values, at the points, of two polynomials made from ``g`` and
    ``d``, and the rest is Lagrange interpolation of their product. With ``M_j(x) =
    prod_{l != j} (x - a_l)``:

    - ``G`` evaluates ``g(x) = sum g[k] x^k`` at each point, row ``j`` scaled by ``1 /
      M_j(a_j)`` (Lagrange's denominators); infinity takes the leading coefficient;
    - ``B^T``'s row ``j`` is ``M_j``'s coefficients (lowest power first), and infinity's
      row those of ``M(x) = prod_l (x - a_l)``;
    - ``A^T``'s column ``j`` is ``(1, a_j, ..., a_j^(m-1))``; infinity's, the last unit
      vector.

    The identity ``sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k]`` (every ``i, k, l``:
    output ``i`` is the sum of ``g[k] d[i + k]``) is checked before they are returned.
    More points mean larger coefficients (2, 1/2, 4, ...), and more float32 rounding."""
    from numpy.polynomial import polynomial
    n = m + r - 1
    a = [float(p) for p in points]
    if min(m, r) < 1 or len(a) != n - 1 or len(set(a)) != len(a) or not np.isfinite(a).all():
        raise ValueError(f"toom_cook: F({m}, {r}) needs m, r >= 1 and {n - 1} distinct finite "
                         f"points, got {points}")
    a_t, g, b_t = np.zeros((m, n)), np.zeros((n, r)), np.zeros((n, n))
    for j, aj in enumerate(a):
        others = [al for al in a if al != aj]
        a_t[:, j] = [aj ** i for i in range(m)]
        g[j] = [aj ** k / np.prod([aj - al for al in others]) for k in range(r)]
        b_t[j, :n - 1] = polynomial.polyfromroots(others) if others else [1.0]
    a_t[m - 1, n - 1] = g[n - 1, r - 1] = 1
    b_t[n - 1] = polynomial.polyfromroots(a)
    identity = np.einsum("ij,jk,jl->ikl", a_t, g, b_t)
    expected = np.zeros((m, r, n))
    for i in range(m):
        for k in range(r):
            expected[i, k, i + k] = 1
    error = np.abs(identity - expected).max()
    if not error <= 1e-9:
        raise ValueError(f"toom_cook: F({m}, {r}) on points {points} is not exact "
                         f"(error {error:.1e})")
    return a_t + 0.0, g + 0.0, b_t + 0.0         # (+ 0.0: no -0 in what is printed)


# -- the demo -----------------------------------------------------------------------------

def _show(matrix, name):
    print(f"{name} ({matrix.shape[0]}x{matrix.shape[1]}):")
    for row in np.asarray(matrix):
        print("   " + " ".join(f"{v:>3g}" for v in row))


def main(argv=None):
    import argparse
    argparse.ArgumentParser(
        prog="python -m minifcn.explain",
        description="Print a tiny worked example of why transposed convolution is "
                    "'transposed' (and not a deconvolution): claims 1-4 of minifcn.explain, "
                    "each checked against minifcn's own ops; then claim 7, Winograd's "
                    "matrices from their points. Takes no options.").parse_args(argv)
    np.set_printoptions(precision=3, suppress=True)
    print("1-D: a 1x6 input, kernel w = [1, 2, 3] (weights w1 w2 w3), stride 1, no padding.\n"
          "conv(x) = C x, with C built by listing which tap links output i to input j:\n")
    w = np.array([[1.0, 2.0, 3.0]])
    c = conv_matrix((1, 6), (1, 3), weight=w)
    _show(c, "C")
    x = np.arange(1.0, 7.0).reshape(1, 1, 1, 6)
    y = conv2d(x, w[None, None])
    print(f"\nx = {x.ravel()}:  C x = {c @ x.ravel()},  conv2d(x) = {y.ravel()}")
    print("\nWhy 'transposed': C^T maps 4 values back to 6 positions, and so does "
          "conv_transpose2d:\n")
    _show(c.T, "C^T")
    print(f"\nC^T y = {c.T @ y.ravel()},  conv_transpose2d(y) = "
          f"{conv_transpose2d(y, w[None, None]).ravel()}")
    print("\nWhy 'deconvolution' is a misnomer: C^T C is not the identity "
          "(C is 4x6: rank <= 4 < 6, nothing can undo it):\n")
    _show(c.T @ c, "C^T C")
    print(f"\nC^T C x = conv_transpose2d(conv2d(x)) = {c.T @ c @ x.ravel()},  but x = {x.ravel()}")
    print("\n2-D: a 4x4 input, 3x3 kernel with taps numbered 1..9; row = output pixel, "
          "column = input pixel:\n")
    _show(conv_taps(4, 3), "taps of C")
    r = transpose_is_not_inverse(4, 3)
    print(f"\nrandom 3x3 kernel: C is {r.shape[0]}x{r.shape[1]} with rank {r.rank}; "
          f"max|C^T C - I| = {r.identity_error:.2f}; ||C^T C x - x|| / ||x|| = "
          f"{r.reconstruction_error:.2f}")
    print("\nStride spreads the inputs: transposed conv with stride 2 = insert 1 zero between "
          "inputs, pad by k - 1 - p, convolve with the flipped kernel:")
    x = np.array([[[[1.0, 2.0, 3.0]]]])
    print(f"   x = {x.ravel()}  ->  spread = {spread(x, (1, 2)).ravel()}")
    inserted = transposed_conv_by_zero_insertion(x, w[None, None], (1, 2))
    print(f"   zero insertion: {inserted.ravel()}")
    print(f"   stamping:       {transposed_conv_by_stamping(x, w[None, None], (1, 2)).ravel()}")
    print(f"   conv_transpose2d: {conv_transpose2d(x, w[None, None], None, (1, 2)).ravel()}")
    print("\nPadding crops the output: the same with padding 1 loses one value per border:")
    print(f"   conv_transpose2d(padding=(0, 1)): "
          f"{conv_transpose2d(x, w[None, None], None, (1, 2), (0, 1)).ravel()}")
    print("\nBeyond the notes: with kernel = 2 x stride each output phase is a 2-tap "
          "correlation,\ny[i] = g0 d[i] + g1 d[i+1], and Winograd's F(3, 2) gives 3 outputs "
          "from 4 products\ninstead of 6: y = A^T [(G g) * (B^T d)], the matrices built from "
          "the points 0, 1, -1, infinity:\n")
    a_t, g_m, b_t = toom_cook(3, 2, (0, 1, -1))
    _show(a_t, "A^T")
    _show(g_m, "G")
    _show(b_t + 0.0, "B^T")
    d, taps = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0])
    print(f"\nd = {d}, g = {taps}: the 4 products (G g) * (B^T d) = {(g_m @ taps) * (b_t @ d)}; "
          f"A^T of them = {a_t @ ((g_m @ taps) * (b_t @ d))}, the direct sums "
          f"{np.array([d[i:i + 2] @ taps for i in range(3)])}")
    m = np.arange(16.0).reshape(4, 4) % 5
    a_kron = winograd_transposed.A_KRON
    print("\nIn 2-D a 4x4 window of products M gives a 3x3 tile, Y = A^T M A. Read M as a "
          "column of 16,\nthat is one product with a Kronecker matrix, vec(A^T M A) = "
          f"(A^T (x) A^T) vec(M): a {a_kron.shape[0]}x{a_kron.shape[1]} matrix\n"
          "(minifcn's A_KRON), which the package applies to every (phase, channel, window) "
          "in one GEMM.\n")
    _show(m, "M")
    print(f"\nA^T M A = {(winograd_transposed.A_T @ m @ winograd_transposed.A_T.T).ravel()}\n"
          f"A_KRON @ vec(M) = {a_kron @ m.ravel()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
