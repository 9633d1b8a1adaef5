"""``conv_transpose2d(..., algorithm='implicit')``: the phase tables against a naive
enumeration of the stamp formula, the op and its gradients against torch in every band
layout and through both GEMM paths, and the claim that each phase computes only its own
outputs.

(The op's forward and gradients on the shared geometry grids are in test_conv_transpose.py,
test_math.py and test_gradcheck.py, which loop over every algorithm.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from conftest import assert_close
from minifcn.functional import (blas, conv_transpose2d, conv_transpose2d_backward,
                                conv_transpose_output_size, implicit)


@pytest.mark.parametrize("k,s,p,extra", [(4, 2, 1, 0), (4, 2, 0, 1), (64, 32, 16, 0),
                                         (16, 8, 4, 7), (3, 2, 0, 1), (5, 3, 2, 2),
                                         (2, 3, 0, 0), (1, 1, 0, 0), (3, 1, 2, 0)])
def test_axis_phases_is_the_stamp_formula_regrouped(k, s, p, extra):
    """Enumerate every (input i, tap u) with output y = i*s + u - p inside the output, and
    check that phase r = y mod s lists exactly those taps, as shifts d = i - y // s."""
    h = 5
    out = conv_transpose_output_size(h, k, s, p, 1, extra)
    phases = implicit.axis_phases(out, k, s, p)
    assert len(phases) == s
    for r, (count, taps) in enumerate(phases):
        ys = range(r, out, s)
        assert count == len(ys)
        for y in ys:
            m = y // s
            want = sorted((u, i - m) for i in range(-k, h + k) for u in range(k)
                          if i * s + u - p == y)
            assert sorted(taps) == want, (r, y)


@pytest.mark.parametrize("k,s,p,extra", [(4, 2, 1, 0), (4, 2, 0, 1), (64, 32, 16, 0),
                                         (16, 8, 4, 7), (3, 2, 0, 1), (5, 3, 2, 2),
                                         (2, 3, 0, 0), (1, 1, 0, 0), (3, 1, 2, 0), (6, 4, 5, 3)])
def test_column_slots_put_every_stamp_on_the_shared_grid(k, s, p, extra):
    """Enumerate every (input j, tap v) with output X = j*s + v - p, and find it in the
    slot table: X = t + s*l sits at grid column l + delta of the slot holding t, which
    gets W[v] * x[l' + e] for its column taps (v = slot + s*a)."""
    w = 5
    out = conv_transpose_output_size(w, k, s, p, 1, extra)
    slots, taps = implicit.column_slots(out, k, s, p)
    assert sorted(t for t, _, _ in slots) == list(range(s))
    for j, (t, count, delta) in enumerate(slots):
        assert count == len(range(t, out, s))
        for X in range(t, out, s):
            grid_col = X // s + delta
            got = sorted((j + s * a, grid_col + e) for a, e, width in taps if j < width)
            want = sorted((v, i) for i in range(-k, w + k) for v in range(k) if i * s + v - p == X)
            assert got == want, (j, X)


def _torch_ref(x, wt, s, p, op):
    return TF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(wt), None, s, p, op).numpy()


# (N, C, O, H, W, k, s, p, output_padding)
CASES = [
    (3, 4, 5, 6, 5, (4, 4), (2, 2), (1, 1), (0, 0)),      # FCN's k4 s2 p1 upsampler
    (2, 3, 2, 5, 7, (4, 6), (2, 3), (1, 2), (1, 0)),      # everything different per axis
    (2, 2, 3, 3, 4, (16, 16), (8, 8), (4, 4), (0, 0)),    # k16 s8: shifts shared by few phases
    (2, 3, 2, 4, 4, (3, 5), (2, 2), (0, 2), (1, 1)),      # s does not divide k
    (1, 2, 2, 4, 3, (2, 2), (3, 3), (0, 0), (2, 1)),      # k < s: phases no tap reaches
    (2, 3, 4, 5, 5, (3, 3), (1, 1), (1, 1), (0, 0)),      # stride 1: one phase, nine shifts
    (1, 2, 3, 1, 1, (4, 4), (2, 2), (1, 1), (0, 0)),      # a single pixel
]


def _torch_grads(x, wt, dy, s, p, op):
    xt, wtt = torch.tensor(x, requires_grad=True), torch.tensor(wt, requires_grad=True)
    TF.conv_transpose2d(xt, wtt, None, s, p, op).backward(torch.tensor(dy))
    return xt.grad.numpy(), wtt.grad.numpy()


@pytest.mark.parametrize("band_bytes", [1, 3000, 1 << 30], ids=["row bands", "few images", "whole"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_implicit_against_torch_in_every_band_layout(monkeypatch, case, band_bytes):
    """Bands of one phase row, of a few images, or the whole batch: the same forward, and
    the same gradients (each alone too: need_input_grad / need_weight_grad)."""
    n, c, o, h, w, k, s, p, op = case
    monkeypatch.setattr(implicit, "IMPLICIT_BAND_BYTES", band_bytes)
    rng = np.random.default_rng(sum(k) + sum(s))
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((c, o) + k)
    y = conv_transpose2d(x, wt, None, s, p, op, algorithm="implicit")
    assert_close(y, _torch_ref(x, wt, s, p, op), np.float64, f"{case} band {band_bytes}")
    dy = rng.standard_normal(y.shape)
    ref_dx, ref_dw = _torch_grads(x, wt, dy, s, p, op)
    dx, dw, db = conv_transpose2d_backward(dy, x, wt, s, p, op, algorithm="implicit")
    assert_close(dx, ref_dx, np.float64, f"dx {case} band {band_bytes}")
    assert_close(dw, ref_dw, np.float64, f"dW {case} band {band_bytes}")
    assert_close(db, dy.sum(axis=(0, 2, 3)), np.float64, "db")
    dx, dw, _ = conv_transpose2d_backward(dy, x, wt, s, p, op, need_weight_grad=False,
                                          algorithm="implicit")
    assert dw is None
    assert_close(dx, ref_dx, np.float64, "dx alone")
    dx, dw, _ = conv_transpose2d_backward(dy, x, wt, s, p, op, need_input_grad=False,
                                          algorithm="implicit")
    assert dx is None
    assert_close(dw, ref_dw, np.float64, "dW alone")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_implicit_without_cblas_is_the_same_op(monkeypatch, dtype):
    """Where NumPy's BLAS is not reachable, ``gemm`` accumulates through matmul + add."""
    monkeypatch.setattr(blas, "CBLAS", {})
    rng = np.random.default_rng(1)
    for n, c, o, h, w, k, s, p, op in CASES[:3]:
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = rng.standard_normal((c, o) + k).astype(dtype)
        y = conv_transpose2d(x, wt, None, s, p, op, algorithm="implicit")
        assert y.dtype == dtype
        x64, w64 = x.astype(np.float64), wt.astype(np.float64)
        assert_close(y, _torch_ref(x64, w64, s, p, op), dtype, "matmul fallback")
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, dw, _ = conv_transpose2d_backward(dy, x, wt, s, p, op, algorithm="implicit")
        ref_dx, ref_dw = _torch_grads(x64, w64, dy.astype(np.float64), s, p, op)
        assert dx.dtype == dw.dtype == dtype
        assert_close(dx, ref_dx, dtype, "dx, matmul fallback")
        assert_close(dw, ref_dw, dtype, "dW, matmul fallback")


def test_implicit_keeps_the_result_dtype_of_its_inputs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    wt = rng.standard_normal((3, 2, 4, 4))                                 # float64
    y = conv_transpose2d(x, wt, None, 2, 1, algorithm="implicit")
    assert y.dtype == np.float64
    assert_close(y, _torch_ref(x.astype(np.float64), wt, 2, 1, 0), np.float64, "mixed")


def test_the_gemms_multiply_add_only_what_the_phases_need(monkeypatch):
    """The GEMMs' multiply-adds for 256->128-like k4 s2 p1: every tap of every output
    pixel once, plus one column per row (the shared gap, Wp = W + 1, which the column
    phases' shared grid uses) and, in a band of several images, the zero row between
    them — but no extra row per phase (the sub-pixel path's shared grid has one). And
    the GEMMs go to BLAS itself where it is reachable."""
    done, blas_calls = [], []
    real = implicit.gemm
    real_call = blas._call
    monkeypatch.setattr(blas, "_call", lambda *args: blas_calls.append(1) or real_call(*args))

    def counting(a, b, out, accumulate=False):
        done.append(a.shape[0] * a.shape[1] * b.shape[1])
        return real(a, b, out, accumulate)

    monkeypatch.setattr(implicit, "gemm", counting)
    n, c, o, h, w = 2, 8, 4, 8, 8
    x, wt = np.ones((n, c, h, w)), np.ones((c, o, 4, 4))
    monkeypatch.setattr(implicit, "IMPLICIT_BAND_BYTES", 1 << 30)          # one band, 2 images
    conv_transpose2d(x, wt, None, 2, 1, algorithm="implicit")
    rows_between_images = 1                                                # period - mq
    assert sum(done) == c * o * 4 * 4 * (n * h + rows_between_images) * (w + 1)
    assert len(done) == 6                  # one GEMM per row shift (3) and column tap (2)
    done.clear()
    blas_calls.clear()
    monkeypatch.setattr(implicit, "IMPLICIT_BAND_BYTES", 1)                # one phase row each
    conv_transpose2d(x, wt, None, 2, 1, algorithm="implicit")
    assert sum(done) == c * o * 4 * 4 * n * h * (w + 1)
    assert len(blas_calls) == (len(done) if blas.uses_cblas(np.float64) else 0)


def test_implicit_refuses_what_it_cannot_do():
    x, wt = np.ones((1, 2, 4, 4)), np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="algorithm 'implicit' needs dilation 1 and groups 1"):
        conv_transpose2d(x, wt, None, 2, 1, dilation=2, algorithm="implicit")
    with pytest.raises(ValueError, match="algorithm 'implicit' needs dilation 1 and groups 1"):
        conv_transpose2d(x, np.ones((2, 1, 3, 3)), None, 2, 1, groups=2, algorithm="implicit")
