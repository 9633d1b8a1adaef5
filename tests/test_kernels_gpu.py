"""minifcn.functional on CuPy arrays — the GPU branches that call minifcn.kernels — against
the same functions on NumPy arrays. Needs a usable GPU; skipped with the reason otherwise.

(The kernels themselves are checked op by op in test_kernels_emulated.py, on the CPU
emulator and, where there is one, on the GPU; this file checks the wiring.)
"""
from __future__ import annotations

import numpy as np
import pytest

from minifcn import functional as F
from tests.cuda_emu.testing import gpu_skip_reason

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
# GEMMs (cuBLAS vs OpenBLAS) sum in other orders: relative to max |ref|
TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}


@pytest.fixture(scope="module")
def cp():
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    import cupy
    return cupy


def check(got, ref, dtype, what=""):
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, ref.shape, got.dtype)
    scale = max(float(np.abs(ref).max()), 1.0) if ref.size else 1.0
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= TOL[np.dtype(dtype)] * scale, f"{what}: error {err:.3e}, scale {scale:.3g}"


def randn(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CONVS = [  # x shape, weight shape (O, C, kh, kw), stride, padding, dilation
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1, 1),
    ((1, 4, 10, 10), (2, 4, 3, 3), 2, 0, 2),
    ((2, 2, 7, 7), (3, 2, 1, 1), 1, 0, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("conv", CONVS, ids=str)
def test_conv2d(cp, conv, dtype):
    xs, ws, s, p, d = conv
    x, w, b = randn(xs, dtype, 1), randn(ws, dtype, 2), randn(ws[:1], dtype, 3)
    ref = F.conv2d(x, w, b, s, p, d)
    check(F.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), s, p, d), ref, dtype, "y")
    dy = randn(ref.shape, dtype, 4)
    refs = F.conv2d_backward(dy, x, w, s, p, d)
    gots = F.conv2d_backward(cp.asarray(dy), cp.asarray(x), cp.asarray(w), s, p, d)
    for name, got, r in zip(("dx", "dW", "db"), gots, refs):
        check(got, r, dtype, name)


DECONVS = [  # x shape, weight shape (C, O, kh, kw), stride, padding
    ((1, 3, 2, 2), (3, 3, 64, 64), 32, 16),     # FCN-32s's upscore, small input
    ((2, 3, 5, 4), (3, 2, 4, 4), 2, 1),
    ((1, 2, 4, 4), (2, 2, 3, 3), 2, 0),
    ((1, 2, 3, 3), (2, 2, 16, 16), 8, 4),
]


@pytest.mark.parametrize("algorithm", ["col2im", "subpixel", "fused", "implicit"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("deconv", DECONVS, ids=str)
def test_conv_transpose2d(cp, deconv, dtype, algorithm):
    xs, ws, s, p = deconv
    x, w = randn(xs, dtype, 5), randn(ws, dtype, 6)
    ref = F.conv_transpose2d(x, w, None, s, p, algorithm=algorithm)
    got = F.conv_transpose2d(cp.asarray(x), cp.asarray(w), None, s, p, algorithm=algorithm)
    check(got, ref, dtype, "y")
    dy = randn(ref.shape, dtype, 7)
    refs = F.conv_transpose2d_backward(dy, x, w, s, p, algorithm=algorithm)
    gots = F.conv_transpose2d_backward(cp.asarray(dy), cp.asarray(x), cp.asarray(w), s, p,
                                       algorithm=algorithm)
    for name, g, r in zip(("dx", "dW", "db"), gots, refs):
        check(g, r, dtype, name)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_max_pool2d(cp, dtype, ceil_mode):
    x = np.random.default_rng(8).integers(0, 4, (2, 3, 9, 7)).astype(dtype)   # ties
    ref_y, ref_tap = F.max_pool2d(x, 3, 2, 1, 1, ceil_mode, return_indices=True)
    y, tap = F.max_pool2d(cp.asarray(x), 3, 2, 1, 1, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y.get(), ref_y)
    np.testing.assert_array_equal(tap.get(), ref_tap)
    dy = randn(ref_y.shape, dtype, 9)
    ref = F.max_pool2d_backward(dy, ref_tap, (9, 7), 3, 2, 1, 1, ceil_mode)
    check(F.max_pool2d_backward(cp.asarray(dy), tap, (9, 7), 3, 2, 1, 1, ceil_mode), ref, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu(cp, dtype):
    x = randn((3, 4, 5, 6), dtype, 10)
    y = F.relu(cp.asarray(x))
    np.testing.assert_array_equal(y.get(), F.relu(x))
    dy = randn(x.shape, dtype, 11)
    np.testing.assert_array_equal(F.relu_backward(cp.asarray(dy), y).get(),
                                  F.relu_backward(dy, F.relu(x)))


@pytest.mark.parametrize("channelwise", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_dropout(cp, dtype, channelwise):
    p = 0.3
    x = cp.asarray(randn((8, 16, 32, 32), dtype, 12))
    y, mask = F.dropout(x, p, True, cp.random.default_rng(0), channelwise)
    y2, mask2 = F.dropout(x, p, True, cp.random.default_rng(0), channelwise)
    assert cp.array_equal(mask, mask2) and cp.array_equal(y, y2)          # seeded: reproducible
    assert mask.shape == ((8, 16, 1, 1) if channelwise else x.shape) and mask.dtype == dtype
    scale = dtype(1 / (1 - p))
    assert bool(cp.all((mask == 0) | (mask == scale)))
    kept = float((mask != 0).mean())
    assert abs(kept - (1 - p)) < (0.1 if channelwise else 0.01), kept
    assert cp.array_equal(y, x * mask)
    dy = cp.asarray(randn(x.shape, dtype, 13))
    assert cp.array_equal(F.dropout_backward(dy, mask), dy * mask)


@pytest.mark.parametrize("channelwise", [False, True])
def test_dropout_with_a_numpy_generator_on_gpu_input(cp, channelwise):
    """A NumPy Generator with a CuPy input: the same draws as on the CPU, copied over."""
    x = randn((2, 3, 4, 5), np.float32, 14)
    y, mask = F.dropout(cp.asarray(x), 0.4, True, np.random.default_rng(5), channelwise)
    y_ref, mask_ref = F.dropout(x, 0.4, True, np.random.default_rng(5), channelwise)
    np.testing.assert_array_equal(mask.get(), mask_ref)
    np.testing.assert_array_equal(y.get(), y_ref)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_cross_entropy(cp, dtype, reduction):
    rng = np.random.default_rng(14)
    logits = randn((2, 21, 6, 7), dtype, 15) * dtype(3)
    labels = rng.integers(0, 21, (2, 6, 7)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = 255
    ref = F.softmax_cross_entropy(logits, labels, 255, reduction)
    got = F.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels), 255, reduction)
    assert isinstance(got, float) and abs(got - ref) <= TOL[np.dtype(dtype)] * max(1.0, abs(ref))
    check(F.softmax_cross_entropy_backward(cp.asarray(logits), cp.asarray(labels), 255, reduction),
          F.softmax_cross_entropy_backward(logits, labels, 255, reduction), dtype, "grad")
