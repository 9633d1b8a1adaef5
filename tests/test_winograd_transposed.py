"""Winograd's F(3, 2) per phase for transposed convolutions with k = 2s
(minifcn.functional.winograd_transposed), the CPU's path for wide k4 s2 upsamplers: its
matrices against the direct 2-tap sums, each transform against the matrices applied
window by window (loops), each adjoint against its transform (``<T a, b> = <a, T^T b>``),
and the forward and both gradients against torch (float64 autograd on the same values;
tolerances of issue 2 via ``assert_close``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as TF

from conftest import assert_close, rel_error, torch_grads, torch_grads_random_dy
from minifcn.functional import conv_transpose2d, conv_transpose2d_backward
from minifcn.functional import winograd_transposed as wt
from minifcn.functional.blas import uses_cblas
from minifcn.functional.winograd import release_workspace

DTYPES = [np.float64, np.float32]


def test_one_phase_row_is_the_direct_two_tap_sum():
    """``A^T [(G g) * (B^T d)]`` = the three outputs of a 2-tap correlation over 4 inputs,
    ``y_i = g0 d_i + g1 d_{i+1}``."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.standard_normal(4), rng.standard_normal(2)
        direct = [g[0] * d[i] + g[1] * d[i + 1] for i in range(3)]
        got = wt.A_T @ ((wt.G @ g) * (wt.B_T @ d))
        np.testing.assert_allclose(got, direct, rtol=1e-13, atol=1e-13)


def test_one_window_is_the_direct_2d_sum():
    """A 4x4 window and a 2x2 phase kernel -> the 3x3 outputs
    ``Y[i, j] = sum_{u, v} g[u, v] d[i+u, j+v]``, by loops."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        d, g = rng.standard_normal((4, 4)), rng.standard_normal((2, 2))
        direct = np.array([[sum(g[u, v] * d[i + u, j + v] for u in range(2) for v in range(2))
                            for j in range(3)] for i in range(3)])
        got = wt.A_T @ ((wt.G @ g @ wt.G.T) * (wt.B_T @ d @ wt.B_T.T)) @ wt.A_T.T
        np.testing.assert_allclose(got, direct, rtol=1e-13, atol=1e-13)


def test_phase_taps_are_the_ones_that_reach_each_output():
    """The module's claim: output ``o = s*q + r - p`` of a k = 2s transposed convolution
    is ``W[r + s] x[q - 1] + W[r] x[q]`` (``x`` zero outside its ``n`` inputs). Checked in
    1-D against the stamp formula ``y[s*i + k - p] += x[i] W[k]`` written as loops, with
    output_padding reaching past the last stamp (``q`` up to ``n + 1``)."""
    rng = np.random.default_rng(2)
    for s, p, n, op in ((2, 1, 5, 0), (2, 0, 4, 1), (3, 2, 6, 2), (4, 5, 3, 0), (1, 0, 4, 0),
                        (2, 1, 3, 1)):
        x, w = rng.standard_normal(n), rng.standard_normal(2 * s)
        size = (n - 1) * s - 2 * p + 2 * s + op
        stamped = np.zeros(size)
        for i in range(n):
            for k in range(2 * s):
                if 0 <= s * i + k - p < size:
                    stamped[s * i + k - p] += x[i] * w[k]
        xz = np.concatenate([[0.0], x, [0.0, 0.0]])          # xz[q + 1] = x[q], zero outside
        for o in range(size):
            q, r = divmod(o + p, s)
            assert 0 <= q <= n + 1
            want = w[r + s] * xz[q] + w[r] * xz[q + 1]
            assert stamped[o] == pytest.approx(want, abs=1e-12), (s, p, op, o)


def test_filter_transform_and_its_adjoint():
    """``filter_transform`` is ``G g G^T`` per (phase, o, c) with each phase's taps read
    off the weight explicitly; ``filter_transform_adjoint`` is its adjoint."""
    rng = np.random.default_rng(3)
    c, o, sh, sw = 3, 2, 2, 3
    w = rng.standard_normal((c, o, 2 * sh, 2 * sw))
    u_t = wt.filter_transform(w).copy()                  # (16, C, sh*sw*O)
    assert u_t.shape == (16, c, sh * sw * o)
    for r in range(sh):
        for t in range(sw):
            for oc in range(o):
                col = (r * sw + t) * o + oc
                for ci in range(c):
                    g = np.array([[w[ci, oc, r + sh, t + sw], w[ci, oc, r + sh, t]],
                                  [w[ci, oc, r, t + sw], w[ci, oc, r, t]]])
                    np.testing.assert_allclose(u_t[:, ci, col].reshape(4, 4),
                                               wt.G @ g @ wt.G.T, rtol=1e-14, atol=1e-14)
    s = rng.standard_normal(u_t.shape)
    lhs = np.vdot(u_t, s)
    rhs = np.vdot(w, wt.filter_transform_adjoint(s, o, sh, sw))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def _band_inputs(seed, nb, c, h, w, s, p, t0=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nb, c, h, w))
    size_out = ((h - 1) * s - 2 * p + 2 * s, (w - 1) * s - 2 * p + 2 * s)
    ay, ax = wt._Axis(s, p, size_out[0]), wt._Axis(s, p, size_out[1])
    rows, cols = ay.windows - t0, ax.windows
    return rng, x, ay, ax, rows, cols


def test_input_transform_is_the_matrices_window_by_window():
    """``_split_windows`` + ``_input_transform`` give ``B^T d B`` on every 4x4 window of
    the input (window (i, j) reads rows ``3(first + t0 + i) - 1 ..`` and columns
    ``3(first + j) - 1 ..``, zero outside), for a band that starts past the first window
    row, into buffers full of garbage."""
    for s, p, t0, h in ((2, 1, 1, 8), (2, 4, 0, 8), (3, 0, 1, 8), (2, 9, 0, 14)):
        c, nb, w = 2, 2, 14                 # p = 9: windows start past the first (first_window 1)
        rng, x, ay, ax, rows, cols = _band_inputs(5, nb, c, h, w, s, p, t0)
        assert rows > 0 and cols > 0 and (p < 6 or ay.first_window == 1)
        d = wt._split_windows(x, ay, ax, t0, np.full((4, 4, c, nb, rows, cols), 7.0))
        v = wt._input_transform(d.reshape(4, 4, c, -1), np.full((4, 4, c, nb * rows * cols), 7.0))
        v = v.reshape(4, 4, c, nb, rows, cols)
        pad = 3 * (ay.first_window + ax.first_window + rows + cols + 4)
        xpad = np.zeros((nb, c, h + 2 * pad, w + 2 * pad))
        xpad[:, :, pad:pad + h, pad:pad + w] = x
        for n in range(nb):
            for ch in range(c):
                for i in range(rows):
                    for j in range(cols):
                        r0 = 3 * (ay.first_window + t0 + i) - 1 + pad
                        c0 = 3 * (ax.first_window + j) - 1 + pad
                        d = xpad[n, ch, r0:r0 + 4, c0:c0 + 4]
                        np.testing.assert_allclose(v[:, :, ch, n, i, j], wt.B_T @ d @ wt.B_T.T,
                                                   atol=1e-14)


def test_input_transform_adjoint_and_split_adjoint():
    """``_input_transform_adjoint`` and ``_split_windows_adjoint`` are the adjoints of the
    forward's two steps: ``<V(x), dv> = <x, V^T(dv)>`` (neighbouring windows share
    inputs, so ``V^T`` adds several windows' gradients onto one pixel). Both use their
    inputs up as scratch, so each call gets its own copy of ``dv``."""
    for s, p, t0 in ((2, 1, 0), (2, 1, 1), (3, 4, 0), (2, 0, 0)):
        c, nb, h, w = 3, 2, 9, 7
        rng, x, ay, ax, rows, cols = _band_inputs(6, nb, c, h, w, s, p, t0)
        windows = nb * rows * cols
        d = wt._split_windows(x, ay, ax, t0, np.empty((4, 4, c, nb, rows, cols)))
        v = wt._input_transform(d.reshape(4, 4, c, windows), np.empty((4, 4, c, windows))).copy()
        dv = rng.standard_normal(v.shape)

        def input_gradient(whole_images):
            grid = wt._input_transform_adjoint(dv.copy(), np.full((4, 4, c, windows), 7.0))
            d_bar = [[g.reshape(c, nb, rows, cols) for g in row] for row in grid]
            dx = np.zeros_like(x)
            wt._split_windows_adjoint(d_bar, ay, ax, t0, dx, whole_images)
            return dx

        dx = input_gradient(False)
        lhs, rhs = np.vdot(v, dv), np.vdot(x, dx)
        assert abs(lhs - rhs) <= 1e-11 * max(1.0, abs(lhs)), (s, p, t0, lhs, rhs)
        if t0 == 0:            # a band of whole images: its 9 unshared inputs are written
            np.testing.assert_allclose(input_gradient(True), dx, rtol=1e-14, atol=1e-14)


def test_split_windows_shares_inputs_between_neighbours():
    """``_split_windows``: every one of the 16 planes against the definition by loops
    (the 7 planes of shared inputs are derived from their neighbours' by shifts), and its
    adjoint by ``<split(x), g> = <x, split^T(g)>``, on bands that start at and past the
    first window row, with paddings that put windows past each edge."""
    for s, p, t0, h, w in ((2, 1, 0, 9, 7), (2, 1, 1, 9, 7), (3, 4, 0, 6, 8), (2, 0, 0, 4, 5),
                           (2, 5, 1, 13, 10)):
        c, nb = 2, 2
        rng, x, ay, ax, rows, cols = _band_inputs(8, nb, c, h, w, s, p, t0)
        d = wt._split_windows(x, ay, ax, t0, np.full((4, 4, c, nb, rows, cols), 7.0))
        pad = 3 * (rows + cols + ay.first_window + ax.first_window + 4)
        xpad = np.zeros((nb, c, h + 2 * pad, w + 2 * pad))
        xpad[:, :, pad:pad + h, pad:pad + w] = x
        for u in range(4):
            for v in range(4):
                for i in range(rows):
                    for j in range(cols):
                        r = 3 * (ay.first_window + t0 + i) + u - 1 + pad
                        q = 3 * (ax.first_window + j) + v - 1 + pad
                        np.testing.assert_array_equal(d[u, v, :, :, i, j], xpad[:, :, r, q].T)
        g = rng.standard_normal(d.shape)
        dx = np.zeros_like(x)
        wt._split_windows_adjoint([[g[u, v].copy() for v in range(4)] for u in range(4)],
                                  ay, ax, t0, dx, False)
        lhs, rhs = np.vdot(d, g), np.vdot(x, dx)
        assert abs(lhs - rhs) <= 1e-11 * max(1.0, abs(lhs)), (s, p, t0, lhs, rhs)


def test_output_transform_and_its_adjoint():
    """``_output_transform`` writes ``A^T M A`` of phase ``(r, c)`` of window ``(i, j)`` to
    output pixel ``(s(3(first + t0 + i) + a) + r - p, ...)`` (loops), every output pixel
    exactly once; ``_output_transform_adjoint`` is its adjoint."""
    for s, p, t0, h in ((2, 1, 0, 6), (2, 3, 1, 7), (3, 2, 0, 5)):
        nb, o, w = 2, 2, 5
        rng, _, ay, ax, rows, cols = _band_inputs(7, nb, 1, h, w, s, p, t0)
        ho, wo = ay.size_out, ax.size_out
        m = rng.standard_normal((4, 4, s, s, o, nb, rows, cols))
        y = np.full((nb, o, ho, wo), np.nan)
        shape = (s, s, o, nb, rows, cols)
        wt._output_transform(m, np.full((9,) + shape, np.nan), y, ay, ax, t0)
        first_row = s * 3 * (ay.first_window + t0) - p          # the band's first output row
        want = np.full_like(y, np.nan)
        for i in range(rows):
            for j in range(cols):
                for r in range(s):
                    for c in range(s):
                        tile = wt.A_T @ m[:, :, r, c, :, :, i, j].transpose(3, 2, 0, 1) @ wt.A_T.T
                        for a in range(3):
                            for b in range(3):
                                oy = s * (3 * (ay.first_window + t0 + i) + a) + r - p
                                ox = s * (3 * (ax.first_window + j) + b) + c - p
                                if 0 <= oy < ho and 0 <= ox < wo:
                                    assert np.isnan(want[:, :, oy, ox]).all()   # once
                                    want[:, :, oy, ox] = tile[:, :, a, b]
        band = slice(max(first_row, 0), None)
        np.testing.assert_allclose(y[:, :, band], want[:, :, band], atol=1e-13)
        if t0 == 0:
            assert not np.isnan(y).any()                  # every output pixel written
        dy = rng.standard_normal(y.shape)
        dy[:, :, :max(first_row, 0)] = 0                  # rows this band does not reach
        y[np.isnan(y)] = 0
        e = wt._output_transform_adjoint(dy, np.full((9,) + shape, 7.0),
                                         np.full((16, s * s * o, nb * rows * cols), 7.0),
                                         ay, ax, t0)
        assert len(e) == 16 and all(ei.shape == (s * s * o, nb * rows * cols) for ei in e)
        e = np.stack(e).reshape(m.shape)
        lhs, rhs = np.vdot(y, dy), np.vdot(m, e)
        assert abs(lhs - rhs) <= 1e-11 * max(1.0, abs(lhs)), (s, p, t0)


def _data(dtype, n, c, o, h, w, sh, sw, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((c, o, 2 * sh, 2 * sw)).astype(dtype)
    return rng, x, weight


# (n, C, O, H, W, stride, padding, output_padding): FCN's k4 s2 with padding 0 and 1,
# rectangular strides and paddings, paddings past a window (p >= 3s), output_padding,
# stride 1 (k2), inputs smaller than a window, a batch whose windows split unevenly
SHAPES = [(2, 3, 4, 8, 8, (2, 2), (1, 1), (0, 0)), (1, 5, 3, 9, 7, (2, 2), (0, 0), (1, 1)),
          (2, 2, 3, 6, 11, (2, 3), (1, 2), (1, 0)), (1, 4, 2, 5, 5, (4, 4), (2, 2), (0, 3)),
          (1, 2, 2, 8, 9, (2, 2), (7, 6), (0, 0)), (3, 3, 2, 5, 6, (1, 1), (0, 0), (0, 0)),
          (1, 2, 3, 1, 2, (2, 2), (1, 0), (1, 1)), (5, 2, 2, 4, 4, (3, 2), (1, 1), (2, 0))]


@pytest.mark.parametrize("bands", ["default", "one window row", "two window rows", "two images"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n,c,o,h,w,stride,padding,output_padding", SHAPES)
def test_forward_and_both_gradients_match_torch(monkeypatch, dtype, n, c, o, h, w, stride,
                                                padding, output_padding, bands):
    """``winograd_conv_transpose2d`` and its backward on their own against torch. Bands of
    one or two window rows make several bands per image (dx and dW sum over them; two
    rows over an odd number leave a shorter last band), bands of two images leave a last
    band of one where the batch is odd."""
    rng, x, weight = _data(dtype, n, c, o, h, w, *stride)
    fn = lambda x, w: TF.conv_transpose2d(x, w, None, stride, padding, output_padding)  # noqa: E731
    y_ref, dy, g = torch_grads_random_dy(fn, {"x": x, "w": weight}, rng, dtype)
    _, _, _, ay, ax, _ = wt._plan(x.shape, weight, y_ref.shape[2:], stride, padding)
    per_row = ax.windows * wt.window_bytes(c, o, *stride, np.dtype(dtype).itemsize)
    if bands == "one window row":
        monkeypatch.setattr(wt, "BAND_BYTES", 1)
    elif bands == "two window rows":
        monkeypatch.setattr(wt, "BAND_BYTES", 2 * per_row)
    elif bands == "two images":
        monkeypatch.setattr(wt, "BAND_MIN_WINDOWS", 1 << 30)
        monkeypatch.setattr(wt, "BAND_BYTES", 2 * ay.windows * per_row)
    taken = wt._plan(x.shape, weight, y_ref.shape[2:], stride, padding)[-1]
    if bands == "one window row":
        assert taken == [(i, i + 1, t, t + 1) for i in range(n) for t in range(ay.windows)]
    elif bands == "two window rows" and ay.windows > 2:
        assert taken == [(i, i + 1, t, min(t + 2, ay.windows)) for i in range(n)
                         for t in range(0, ay.windows, 2)]
    elif bands == "two images":
        assert [n1 - n0 for n0, n1, _, _ in taken] == [2] * (n // 2) + [1] * (n % 2)
    y = wt.winograd_conv_transpose2d(x, weight, stride, padding, y_ref.shape[2:])
    dx, dw = wt.winograd_conv_transpose2d_backward(dy, x, weight, stride, padding)
    assert y.dtype == dx.dtype == dw.dtype == np.dtype(dtype)
    assert y.flags.c_contiguous and dx.flags.c_contiguous and dw.flags.c_contiguous
    assert_close(y, y_ref, dtype, "forward")
    assert_close(dx, g["x"], dtype, "input gradient")
    assert_close(dw, g["w"], dtype, "weight gradient")
    only_dx = wt.winograd_conv_transpose2d_backward(dy, x, weight, stride, padding, need_dw=False)
    only_dw = wt.winograd_conv_transpose2d_backward(dy, x, weight, stride, padding, need_dx=False)
    assert only_dx[1] is None and only_dw[0] is None
    np.testing.assert_array_equal(only_dx[0], dx)
    np.testing.assert_array_equal(only_dw[1], dw)


@pytest.mark.skipif(not uses_cblas(np.float32), reason="'auto' takes Winograd with BLAS only")
def test_auto_takes_winograd_on_a_wide_k4_s2_layer_and_matches_torch(monkeypatch):
    """The public functions on a shape 'auto' sends to Winograd (256 -> 128, 24x24, with
    AVX2 GEMM kernels), float32, bias included, against torch; the Winograd functions
    are seen to run."""
    import minifcn.functional.conv as conv
    monkeypatch.setattr(conv, "AVX512_GEMM", False)
    calls = []
    for name in ("winograd_conv_transpose2d", "winograd_conv_transpose2d_backward"):
        real = getattr(conv, name)
        monkeypatch.setattr(conv, name, lambda *a, real=real, name=name, **k: (
            calls.append(name), real(*a, **k))[1])
    rng = np.random.default_rng(4)
    # offsets: zero-mean float32 sums over 256 channels (the bias gradient, say) can cancel
    # to ~0, and then a relative error measures rounding, not correctness
    x = (rng.standard_normal((2, 256, 24, 24)) + 0.5).astype(np.float32)
    weight = (rng.standard_normal((256, 128, 4, 4)) / 32 + 0.01).astype(np.float32)
    bias = rng.standard_normal(128).astype(np.float32)
    fn = lambda x, w, b: TF.conv_transpose2d(x, w, b, 2, 1)  # noqa: E731
    y_ref, _ = torch_grads(fn, {"x": x, "w": weight, "b": bias})
    dy = (rng.standard_normal(y_ref.shape) + 0.5).astype(np.float32)
    _, g = torch_grads(fn, {"x": x, "w": weight, "b": bias}, dy)
    y = conv_transpose2d(x, weight, bias, 2, 1)
    dx, dw, db = conv_transpose2d_backward(dy, x, weight, 2, 1)
    assert calls == ["winograd_conv_transpose2d", "winograd_conv_transpose2d_backward"]
    for got, ref, what in ((y, y_ref, "forward"), (dx, g["x"], "dx"), (dw, g["w"], "dW"),
                           (db, g["b"], "db")):
        assert_close(got, ref, np.float32, what)


def test_float32_rounding_stays_near_the_direct_sums():
    """At 128 channels in and out, float32: Winograd's error against the exact (float64)
    result is within 3x the error of 'col2im' (one GEMM per output, no transforms) on the
    same float32 values."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 128, 12, 12)).astype(np.float32)
    weight = (rng.standard_normal((128, 128, 4, 4)) / 23).astype(np.float32)
    fn = lambda x, w: TF.conv_transpose2d(x, w, None, 2, 1)  # noqa: E731
    y_ref, dy, g = torch_grads_random_dy(fn, {"x": x, "w": weight}, rng, np.float32)
    refs = [y_ref, g["x"], g["w"]]

    def errors(algorithm):
        y = conv_transpose2d(x, weight, None, 2, 1, algorithm=algorithm)
        dx, dw, _ = conv_transpose2d_backward(dy, x, weight, 2, 1, algorithm=algorithm)
        return [np.abs(a - r).max() / np.abs(r).max() for a, r in zip((y, dx, dw), refs)]

    for what, e_w, e_d in zip(("forward", "dx", "dW"), errors("winograd"), errors("col2im")):
        assert e_w <= 3 * e_d, f"{what}: Winograd {e_w:.2e} vs col2im {e_d:.2e}"


def test_float16_runs_through_matmul_within_its_rounding():
    """A dtype BLAS does not take (float16, asked for explicitly: 'auto' takes Winograd
    with BLAS only) runs its GEMMs and transform products through ``numpy.matmul`` and
    keeps its dtype. Each transform rounds to float16 again, so the bound is a few of
    float16's units (eps 9.8e-4) of the output's scale, not a multiple of the direct
    path's error (one rounding at the end: 2.3e-4 for dx here, Winograd 1.7e-3); a wrong
    transform is off by the output's own scale."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 64, 9, 9)).astype(np.float16)
    weight = (rng.standard_normal((64, 32, 4, 4)) / 16).astype(np.float16)
    fn = lambda x, w: TF.conv_transpose2d(x, w, None, 2, 1)  # noqa: E731
    y_ref, dy, g = torch_grads_random_dy(fn, {"x": x, "w": weight}, rng, np.float16)
    y = conv_transpose2d(x, weight, None, 2, 1, algorithm="winograd")
    dx, dw, _ = conv_transpose2d_backward(dy, x, weight, 2, 1, algorithm="winograd")
    for what, got, ref in (("forward", y, y_ref), ("dx", dx, g["x"]), ("dW", dw, g["w"])):
        assert got.dtype == np.float16, what
        err = rel_error(got, ref)
        assert err <= 1e-2, f"{what}: relative error {err:.2e}"


def test_the_kept_workspace_carries_nothing_from_one_call_to_the_next():
    """The scratch buffers are kept between calls: a smaller call after a larger one
    finds the larger one's values where it needs zeros (its borders, cropped windows,
    windows past an edge). A sequence of shapes, forward and both gradients against torch,
    and every earlier result unchanged afterwards (none lives in the scratch)."""
    seq = [(2, 6, 5, 13, 12, 2, 1), (1, 4, 3, 5, 7, 2, 0), (1, 6, 5, 9, 8, 3, 2),
           (2, 6, 5, 13, 12, 2, 1), (1, 2, 2, 2, 3, 2, 1)]
    kept = []
    for i, (n, c, o, h, w, s, p) in enumerate(seq):
        rng, x, weight = _data(np.float64, n, c, o, h, w, s, s, seed=i)
        fn = lambda x, w: TF.conv_transpose2d(x, w, None, s, p)  # noqa: E731
        y_ref, dy, g = torch_grads_random_dy(fn, {"x": x, "w": weight}, rng)
        y = wt.winograd_conv_transpose2d(x, weight, (s, s), (p, p), y_ref.shape[2:])
        dx, dw = wt.winograd_conv_transpose2d_backward(dy, x, weight, (s, s), (p, p))
        for got, ref, what in ((y, y_ref, "forward"), (dx, g["x"], "dx"), (dw, g["w"], "dW")):
            assert_close(got, ref, np.float64, f"{what}, call {i}")
            kept.append((got, got.copy(), f"{what}, call {i}"))
    for got, copy, what in kept:
        np.testing.assert_array_equal(got, copy, err_msg=f"{what} changed by a later call")
    assert release_workspace() > 0                        # the shared scratch of .winograd


def test_explicit_winograd_refuses_what_it_cannot_compute():
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="'winograd' runs on the CPU .* kernel = 2 x stride"):
        conv_transpose2d(x, np.zeros((2, 3, 3, 3)), None, 2, 1, algorithm="winograd")
    with pytest.raises(ValueError, match=r"dilation \(2, 2\)"):
        conv_transpose2d(x, np.zeros((2, 3, 4, 4)), None, 2, 1, dilation=2, algorithm="winograd")
    with pytest.raises(ValueError, match="groups 2"):
        conv_transpose2d(x, np.zeros((2, 3, 4, 4)), None, 2, 1, groups=2, algorithm="winograd")
    with pytest.raises(TypeError, match="operands must share one dtype"):
        wt.winograd_conv_transpose2d(x.astype(np.float32), np.zeros((2, 3, 4, 4)), (2, 2),
                                     (1, 1), (8, 8))
    # called directly, the module's own functions name what does not fit
    with pytest.raises(ValueError, match=r"kernel must be 2 x stride, got weight \(2, 3, 4, 4\) "
                                         r"with stride \(3, 3\)"):
        wt.winograd_conv_transpose2d(x, np.zeros((2, 3, 4, 4)), (3, 3), (1, 1), (8, 8))
    with pytest.raises(ValueError, match="same C"):
        wt.winograd_conv_transpose2d(x, np.zeros((5, 3, 4, 4)), (2, 2), (1, 1), (8, 8))
    with pytest.raises(ValueError, match=r"dy must be \(N, O, Ho, Wo\) = \(1, 3, ...\)"):
        wt.winograd_conv_transpose2d_backward(np.zeros((1, 4, 8, 8)), x, np.zeros((2, 3, 4, 4)),
                                              (2, 2), (1, 1))
