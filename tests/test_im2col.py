"""im2col / col2im against a naive loop, and the adjoint identity between them.

The reference is the definition, written as plainly as possible (one loop per index)::

    col[n, c, i, j, oh, ow] = xpad[n, c, oh*s + i*d, ow*s + j*d]

and col2im is its adjoint, ``<im2col(x), c> == <x, col2im(c)>``.
"""
from __future__ import annotations

import contextlib
import itertools
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import assert_close, to_np
from minifcn.functional import col2im, conv_output_size, im2col


def naive_im2col(x, kh, kw, sh, sw, ph, pw, dh, dw):
    n, c, h, w = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    col = np.zeros((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            for oh in range(ho):
                for ow in range(wo):
                    r, q = oh * sh + i * dh - ph, ow * sw + j * dw - pw
                    if 0 <= r < h and 0 <= q < w:
                        col[:, :, i, j, oh, ow] = x[:, :, r, q]
    return col


def naive_col2im(col, h, w, sh, sw, ph, pw, dh, dw):
    n, c, kh, kw, ho, wo = col.shape
    x = np.zeros((n, c, h, w), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            for oh in range(ho):
                for ow in range(wo):
                    r, q = oh * sh + i * dh - ph, ow * sw + j * dw - pw
                    if 0 <= r < h and 0 <= q < w:
                        x[:, :, r, q] += col[:, :, i, j, oh, ow]
    return x


def _valid(h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    return (conv_output_size(h, kh, sh, ph, dh) > 0 and conv_output_size(w, kw, sw, pw, dw) > 0)


# A product grid: square and rectangular kernels, stride below / equal to / above the
# kernel, padding, dilation.
H, W = 7, 6
GRID = [g for g in itertools.product(
    [(1, 1), (2, 2), (3, 2), (1, 4)],      # kernel
    [(1, 1), (2, 2), (3, 1), (5, 4)],      # stride (5 > every kernel here)
    [(0, 0), (1, 2)],                      # padding
    [(1, 1), (2, 3)],                      # dilation
) if _valid(H, W, *g[0], *g[1], *g[2], *g[3])]


def _method_list(dilation):
    return ["taps", "auto"] + (["blocks", "phases"] if tuple(dilation) == (1, 1) else [])


@pytest.mark.parametrize("kernel,stride,padding,dilation", GRID)
def test_im2col_col2im_match_naive_loops(xp, kernel, stride, padding, dilation):
    h, w = H, W
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, h, w))
    col = to_np(im2col(xp.asarray(x), kernel, stride, padding, dilation))
    ref = naive_im2col(x, *kernel, *stride, *padding, *dilation)
    assert col.shape == ref.shape
    np.testing.assert_array_equal(col, ref)          # a copy: exact

    c = rng.standard_normal(ref.shape)
    ref_x = naive_col2im(c, h, w, *stride, *padding, *dilation)
    for method in _method_list(dilation):
        got = to_np(col2im(xp.asarray(c), (h, w), stride, padding, dilation, method=method))
        assert_close(got, ref_x, np.float64, f"col2im method={method}")


@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    min_h = max(1, dh * (kh - 1) + 1 - 2 * ph)      # at least one window
    min_w = max(1, dw * (kw - 1) + 1 - 2 * pw)
    h, w = draw(st.integers(min_h, min_h + 8)), draw(st.integers(min_w, min_w + 8))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw)


@settings(max_examples=50, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**31 - 1))
def test_im2col_col2im_random_geometries(xp, geom, seed):
    shape, kernel, stride, padding, dilation = geom
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    col = to_np(im2col(xp.asarray(x), kernel, stride, padding, dilation))
    np.testing.assert_array_equal(col, naive_im2col(x, *kernel, *stride, *padding, *dilation))
    c = rng.standard_normal(col.shape)
    ref_x = naive_col2im(c, *shape[2:], *stride, *padding, *dilation)
    for method in _method_list(dilation):
        got = to_np(col2im(xp.asarray(c), shape[2:], stride, padding, dilation, method=method))
        assert_close(got, ref_x, np.float64, f"col2im method={method}")


@settings(max_examples=40, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_adjoint_identity(xp, geom, seed, dtype):
    """<im2col(x), c> == <x, col2im(c)> for every col2im method."""
    shape, kernel, stride, padding, dilation = geom
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    col = to_np(im2col(xp.asarray(x), kernel, stride, padding, dilation))
    c = rng.standard_normal(col.shape).astype(dtype)
    lhs = np.vdot(col.astype(np.float64), c.astype(np.float64))
    for method in _method_list(dilation):
        back = to_np(col2im(xp.asarray(c), shape[2:], stride, padding, dilation, method=method))
        assert back.dtype == np.dtype(dtype)
        rhs = np.vdot(x.astype(np.float64), back.astype(np.float64))
        # relative to the sum of |terms| (the inner product itself may cancel to ~0)
        scale = np.abs(col).astype(np.float64).ravel() @ np.abs(c).astype(np.float64).ravel()
        tol = 1e-12 if dtype == np.float64 else 1e-5
        assert abs(lhs - rhs) <= tol * max(scale, 1e-30), (method, lhs, rhs)


def test_im2col_output_layout_is_contiguous_and_dtype_kept(xp):
    x = xp.asarray(np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5))
    col = im2col(x, 3, 2, 1)
    assert col.shape == (2, 3, 3, 3, 3, 3)
    assert col.dtype == np.float32
    assert col.flags.c_contiguous
    # the input is not modified
    np.testing.assert_array_equal(to_np(x), np.arange(150, dtype=np.float32).reshape(2, 3, 5, 5))


DISJOINT = [(k, s, p, size) for (k, s), p, size in itertools.product(
    [((2, 2), (2, 2)), ((3, 2), (3, 2)), ((4, 4), (4, 4)), ((2, 1), (3, 2)), ((1, 1), (2, 3))],
    [(0, 0), (1, 0), (1, 2), (3, 3)],
    [(1, 1), (5, 4), (8, 9)]) if _valid(*size, *k, *s, *p, 1, 1)]


@pytest.mark.parametrize("kernel,stride,padding,size", DISJOINT)
def test_col2im_taps_without_overlaps_fill_every_pixel(monkeypatch, kernel, stride, padding, size):
    """kernel <= stride: 'taps' copies instead of adding, and where the windows tile the
    image it skips the zero fill. Every pixel must still be written (np.empty is made to
    hand out NaN here, so a pixel left unwritten shows) and the uncovered ones be 0."""
    h, w = size
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda *a, **k: np.full_like(real_empty(*a, **k), np.nan))
    ho = conv_output_size(h, kernel[0], stride[0], padding[0])
    wo = conv_output_size(w, kernel[1], stride[1], padding[1])
    c = np.random.default_rng(0).standard_normal((2, 3, *kernel, ho, wo))
    got = col2im(c, (h, w), stride, padding, method="taps")
    np.testing.assert_array_equal(got, naive_col2im(c, h, w, *stride, *padding, 1, 1))


@pytest.mark.parametrize("method", ["taps", "phases", "blocks"])
def test_col2im_with_negative_padding_zeroes_what_no_window_reaches(monkeypatch, method):
    """The unchecked core takes a negative padding (a band that starts inside the image, as
    _im2col allows): windows then tile only part of the image, and the rest must be 0,
    not whatever np.empty held."""
    from minifcn.functional.im2col import _col2im
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda *a, **k: np.full_like(real_empty(*a, **k), np.nan))
    col = np.ones((1, 1, 2, 2, 3, 3))
    got = _col2im(col, 4, 4, 2, 2, -1, -1, 1, 1, method)
    expected = np.zeros((4, 4))
    expected[1:, 1:] = 1.0              # image rows/cols 1..6 of the windows, cropped to 3
    np.testing.assert_array_equal(got[0, 0], expected)


@settings(max_examples=200, deadline=None)
@given(kh=st.integers(1, 7), kw=st.integers(1, 7), sh=st.integers(2, 5), sw=st.integers(2, 5),
       ph=st.integers(-6, 8), pw=st.integers(-6, 8), ho=st.integers(1, 6), wo=st.integers(1, 6),
       h=st.integers(1, 15), w=st.integers(1, 15), seed=st.integers(0, 2**31 - 1))
def test_col2im_phases_and_auto_match_taps_on_any_geometry(kh, kw, sh, sw, ph, pw, ho, wo, h,
                                                            w, seed):
    """The unchecked core on what its callers may pass: any padding (negative: a band inside
    the image), kernels smaller or larger than the stride, images that are not a multiple
    of it, more or fewer windows than fit. 'phases', 'blocks' and 'auto' give 'taps''
    sums, which the tests above hold to naive loops (the negative padding to an explicit
    answer)."""
    from minifcn.functional.im2col import _col2im
    col = np.random.default_rng(seed).standard_normal((2, 3, kh, kw, ho, wo))
    ref = _col2im(col, h, w, sh, sw, ph, pw, 1, 1, "taps")
    for method in ("phases", "blocks", "auto"):
        np.testing.assert_allclose(_col2im(col, h, w, sh, sw, ph, pw, 1, 1, method), ref,
                                   rtol=1e-12, atol=1e-12, err_msg=method)


def test_col2im_fcn32_upsampler_geometry(xp):
    """The FCN-32s upsampler: kernel 64, stride 32, padding 16 — the 'blocks' method's
    reason to exist — against the taps method and a naive loop on a small batch."""
    rng = np.random.default_rng(1)
    h = w = 3
    hi = (h - 1) * 32 - 2 * 16 + 64           # the transposed conv's output: 96
    c = rng.standard_normal((1, 2, 64, 64, h, w))
    ref = naive_col2im(c, hi, hi, 32, 32, 16, 16, 1, 1)
    for method in ("taps", "blocks", "phases", "auto"):
        got = to_np(col2im(xp.asarray(c), (hi, hi), 32, 16, 1, method=method))
        assert_close(got, ref, np.float64, method)


@contextlib.contextmanager
def empty_hands_out_nan():
    """Within: ``np.empty`` returns NaN-filled arrays, so an output pixel that the code
    under test leaves unwritten shows as NaN instead of whatever the memory held (fresh
    memory is often 0, which a test against zeros would not see)."""
    real_empty = np.empty
    np.empty = lambda *a, **k: np.full_like(real_empty(*a, **k), np.nan)
    try:
        yield
    finally:
        np.empty = real_empty


@settings(max_examples=60, deadline=None)
@given(sh=st.integers(1, 5), sw=st.integers(1, 5), hq=st.integers(1, 6), wq=st.integers(1, 6),
       ph=st.integers(0, 6), pw=st.integers(0, 6), eh=st.integers(-3, 3), ew=st.integers(-3, 3),
       maps_per_block=st.sampled_from([1, 2, 4, 100]), max_copies=st.sampled_from([1, 256]),
       seed=st.integers(0, 2**31 - 1))
def test_pixel_shuffle_matches_a_naive_loop(sh, sw, hq, wq, ph, pw, eh, ew, maps_per_block,
                                            max_copies, seed):
    """The sub-pixel transposed convolution's last step (kernel = stride, so a pure
    rearrangement): ``x[q*sh + r - ph, u*sw + t - pw] = ysub[r, t, q, u]``, any crop, and
    output rows past the last block (output_padding) left at 0; the 2 x 3 maps shuffled in
    blocks of 1, 2, 4 or all of them (or, past ``max_copies`` copies, as one block)."""
    im2col_module = sys.modules["minifcn.functional.im2col"]   # (the package exports a function im2col)
    h, w = hq * sh - 2 * ph + eh, wq * sw - 2 * pw + ew
    assume(h >= 1 and w >= 1)                 # (an early return would count as a pass)
    ysub = np.random.default_rng(seed).standard_normal((2, 3, sh, sw, hq, wq))
    ref = np.zeros((2, 3, h, w))
    for r, t, q, u in itertools.product(range(sh), range(sw), range(hq), range(wq)):
        y, x = q * sh + r - ph, u * sw + t - pw
        if 0 <= y < h and 0 <= x < w:
            ref[:, :, y, x] = ysub[:, :, r, t, q, u]
    saved = im2col_module.SHUFFLE_BLOCK_BYTES, im2col_module.SHUFFLE_MAX_COPIES
    im2col_module.SHUFFLE_BLOCK_BYTES = maps_per_block * h * w * ysub.itemsize
    im2col_module.SHUFFLE_MAX_COPIES = max_copies
    try:
        with empty_hands_out_nan():
            got = im2col_module._pixel_shuffle(ysub, h, w, ph, pw)
    finally:
        im2col_module.SHUFFLE_BLOCK_BYTES, im2col_module.SHUFFLE_MAX_COPIES = saved
    np.testing.assert_array_equal(got, ref)


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 40), s=st.integers(1, 6), p=st.integers(0, 14),
       blocks=st.integers(1, 8))
def test_block_pieces_place_every_reached_index_once(size, s, p, blocks):
    """``_block_pieces``: the indices ``i = q*s + r - p`` in range, from at most three
    pieces (partial, whole blocks, partial), in order, against a naive enumeration."""
    im2col_module = sys.modules["minifcn.functional.im2col"]
    pieces, covered = im2col_module._block_pieces(size, s, p, blocks)
    want = {q * s + r - p: (q, r) for q in range(blocks) for r in range(s)
            if 0 <= q * s + r - p < size}
    got = {}
    for q, qc, r, rc, i in pieces:
        assert qc == 1 or (r, rc) == (0, s)
        for a in range(qc):
            for b in range(rc):
                assert i + a * rc + b not in got
                got[i + a * rc + b] = (q + a, r + b)
    assert got == want
    assert len(pieces) <= 3
    assert sorted(want) == list(range(covered))


@settings(max_examples=60, deadline=None)
@given(sh=st.integers(1, 5), sw=st.integers(1, 5), hq=st.integers(1, 6), wq=st.integers(1, 6),
       ph=st.integers(0, 6), pw=st.integers(0, 6), eh=st.integers(-3, 3), ew=st.integers(-3, 3),
       band=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_channels_last_pixel_shuffle_matches_a_naive_loop(sh, sw, hq, wq, ph, pw, eh, ew,
                                                          band, seed):
    """``_pixel_shuffle_channels_last``: ``x[q*sh + r - ph, u*sw + t - pw] = ysub[q, u, r, t]``
    with ``ysub`` channels-last, any crop, output_padding rows left at 0; whole, and in
    bands of 1-3 block rows (``q0``) written into one output."""
    im2col_module = sys.modules["minifcn.functional.im2col"]
    h, w = hq * sh - 2 * ph + eh, wq * sw - 2 * pw + ew
    assume(h >= 1 and w >= 1)                 # (an early return would count as a pass)
    ysub = np.random.default_rng(seed).standard_normal((2, hq, wq, 3, sh, sw))
    ref = np.zeros((2, 3, h, w))
    for r, t, q, u in itertools.product(range(sh), range(sw), range(hq), range(wq)):
        y, x = q * sh + r - ph, u * sw + t - pw
        if 0 <= y < h and 0 <= x < w:
            ref[:, :, y, x] = ysub[:, q, u, :, r, t]
    with empty_hands_out_nan():
        got = im2col_module._pixel_shuffle_channels_last(ysub, h, w, ph, pw)
    np.testing.assert_array_equal(got, ref)
    out = np.zeros((2, 3, h, w))
    for q0 in range(0, hq, band):
        im2col_module._pixel_shuffle_channels_last(ysub[:, q0:q0 + band], h, w, ph, pw, out=out,
                                                   q0=q0)
    np.testing.assert_array_equal(out, ref)


def test_copy_keeping_runs_copies_strided_runs():
    """Runs along a unit-stride last axis moved as opaque items, the rest of the layout
    strided (against plain assignment); and the plain path for other layouts."""
    from minifcn.functional.im2col import copy_keeping_runs
    rng = np.random.default_rng(0)
    src = rng.standard_normal((4, 5, 6, 3)).astype(np.float32).transpose(2, 0, 1, 3)
    dst = np.zeros((7, 4, 5, 3), np.float32)[1:]
    copy_keeping_runs(dst, src)
    np.testing.assert_array_equal(dst, src)
    dst2 = np.zeros((6, 4, 5, 3), np.float32)
    copy_keeping_runs(dst2, src[..., ::-1])                 # last axis not unit-stride
    np.testing.assert_array_equal(dst2, src[..., ::-1])
    dst3 = np.zeros((6, 4, 5, 3), np.float32)
    copy_keeping_runs(dst3, src[..., :1])                   # broadcast along the last axis
    np.testing.assert_array_equal(dst3, np.broadcast_to(src[..., :1], dst3.shape))


def test_channels_last_pixel_shuffle_zeroes_the_rows_it_does_not_hold():
    """Given only block rows 2.. (``q0 = 2``) and no ``out``, the rows of blocks 0-1 are 0."""
    im2col_module = sys.modules["minifcn.functional.im2col"]
    ysub = np.ones((1, 4, 3, 2, 3, 8))
    got = im2col_module._pixel_shuffle_channels_last(ysub[:, 2:], 12, 24, 0, 0, q0=2)
    assert not got[:, :, :6].any() and got[:, :, 6:].all()
