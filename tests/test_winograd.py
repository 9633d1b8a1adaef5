"""Winograd's F(2x2, 3x3) (minifcn.functional.winograd), the CPU's path for VGG's wide 3x3
convolutions: its matrices against the direct sums they replace, its four transforms
(additions, or products with Kronecker matrices) against the matrices applied tile by
tile, and conv2d / conv2d_backward through it against torch (float64 autograd on the
same values; tolerances of issue 2 via ``assert_close``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as TF

from conftest import (assert_close, assert_conv2d_non_finite_like_torch, rel_error, torch_grads,
                      torch_grads_random_dy)
from minifcn.functional import conv2d, conv2d_backward
from minifcn.functional import winograd
from minifcn.functional.blas import uses_cblas

DTYPES = [np.float64, np.float32]


def test_one_row_of_a_tile_is_the_direct_sum():
    """``A^T [(G g) * (B^T d)]`` = the two outputs of a 3-tap correlation over 4 inputs,
    ``y_i = sum_u g_u d_{i+u}`` (the 1-D identity the 2-D tiles nest)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.standard_normal(4), rng.standard_normal(3)
        direct = [sum(g[u] * d[i + u] for u in range(3)) for i in range(2)]
        got = winograd.A_T @ ((winograd.G @ g) * (winograd.B_T @ d))
        np.testing.assert_allclose(got, direct, rtol=1e-13, atol=1e-13)


def test_one_tile_is_the_direct_2d_sum():
    """``Y = A^T [(G g G^T) * (B^T d B)] A``: a 4x4 input tile, a 3x3 kernel -> the 2x2
    outputs ``Y[i, j] = sum_{u, v} g[u, v] d[i+u, j+v]``, by loops."""
    rng = np.random.default_rng(1)
    B_T, G, A_T = winograd.B_T, winograd.G, winograd.A_T
    for _ in range(20):
        d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
        direct = np.array([[sum(g[u, v] * d[i + u, j + v] for u in range(3) for v in range(3))
                            for j in range(2)] for i in range(2)])
        got = A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T
        np.testing.assert_allclose(got, direct, rtol=1e-13, atol=1e-13)


def test_filter_transform_and_its_adjoint():
    """``filter_transform`` is ``G W G^T`` per (o, c) (explicit products);
    ``filter_transform_adjoint`` is its adjoint, ``<U(W), S> = <W, U^T(S)>``; and
    ``flipped_filter_transform`` is the transform of the kernel flipped with its channel
    axes swapped (explicitly flipped here)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 2, 3, 3))
    u = winograd.filter_transform(w)
    assert u.shape == (4, 4, 3, 2)
    for o in range(3):
        for c in range(2):
            np.testing.assert_allclose(u[:, :, o, c], winograd.G @ w[o, c] @ winograd.G.T,
                                       rtol=1e-14, atol=1e-14)
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    want = winograd.filter_transform(flipped)
    got = winograd.flipped_filter_transform(u)
    for a in range(4):
        for b in range(4):
            np.testing.assert_allclose(got[4 * a + b], want[a, b], rtol=1e-14, atol=1e-14)
    s = rng.standard_normal((4, 4, 3, 2))
    lhs = np.vdot(u, s)
    rhs = np.vdot(w, winograd.filter_transform_adjoint(s))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_input_and_output_transforms_are_the_matrices_tile_by_tile():
    """``_input_transform`` is ``B^T d B`` on every 4x4 tile (stride 2) of the padded
    input, in the column-split layout of ``_padded_split``; ``_output_transform`` is
    ``A^T M A`` per tile; ``_output_transform_adjoint`` is
    ``A dY A^T``. Checked by loops over tiles with the matrices, on a band that starts
    past the first tile row; the scratch starts as NaN, so a value not written shows."""
    rng = np.random.default_rng(4)
    B_T, A_T = winograd.B_T, winograd.A_T
    c, o, h, w, ph, pw = 2, 3, 9, 7, 1, 2
    th, tw = -(-(h + 2 * ph - 2) // 2), -(-(w + 2 * pw - 2) // 2)
    x = rng.standard_normal((c, h, w))
    xpad = np.zeros((c, 2 * th + 2, 2 * tw + 2))
    xpad[:, ph:ph + h, pw:pw + w] = x
    xs = winograd._padded_split(x, ph, pw, th, tw, np.full((c, 2 * th + 2, 2, tw + 1), 7.0))
    t0, t1 = 1, th
    v = winograd._input_transform(xs, t0, t1, tw, np.full((4, 4, c, t1 - t0, tw), np.nan),
                                  np.full((4, 4, c, t1 - t0, tw), np.nan))
    for ch in range(c):
        for i in range(t0, t1):
            for j in range(tw):
                d = xpad[ch, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
                np.testing.assert_allclose(v[:, :, ch, i - t0, j], B_T @ d @ B_T.T, atol=1e-14)
    m = rng.standard_normal((4, 4, o, 2, tw))
    y = winograd._output_transform(m, np.full((4, o, 2, tw), np.nan),
                                   np.full((o, 2, 2, tw, 2), np.nan))
    dy = rng.standard_normal((o, 2, 2, tw, 2))
    e = winograd._output_transform_adjoint(dy, np.full((4, o, 2, tw), np.nan),
                                           np.full((4, 4, o, 2, tw), np.nan))
    for oc in range(o):
        for i in range(2):
            for j in range(tw):
                np.testing.assert_allclose(y[oc, i, :, j, :], A_T @ m[:, :, oc, i, j] @ A_T.T,
                                           atol=1e-14)
                np.testing.assert_allclose(e[:, :, oc, i, j], A_T.T @ dy[oc, i, :, j, :] @ A_T,
                                           atol=1e-14)


def _data(dtype, n, c, o, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, c, 3, 3)).astype(dtype)
    return rng, x, wt


# (n, C, O, H, W, padding): even and odd outputs (the last tile cropped), every padding
# 0..2 including mixed ones, maps smaller than a tile
SHAPES = [(2, 3, 4, 8, 8, (1, 1)), (1, 5, 3, 9, 7, (1, 1)), (3, 2, 3, 6, 11, (0, 0)),
          (1, 4, 6, 5, 5, (2, 2)), (2, 3, 2, 7, 10, (0, 2)), (1, 2, 2, 3, 3, (0, 0)),
          (1, 3, 3, 1, 2, (1, 2))]


@pytest.mark.parametrize("band_rows", [None, 1, 2], ids=["default bands", "one tile row a band",
                                                         "two tile rows a band"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n,c,o,h,w,padding", SHAPES)
def test_winograd_forward_and_both_gradients_match_torch(monkeypatch, dtype, n, c, o, h, w,
                                                     padding, band_rows):
    """``winograd_conv2d``, ``winograd_conv2d_input_grad`` and
    ``winograd_conv2d_weight_grad`` on their own, against torch's conv2d and its
    gradients. Bands of one or two tile rows make several
    bands per image (the weight gradient sums over them all); two rows over an odd number
    of tile rows (9x7 with padding 1: 5) leave a last band shorter than the others."""
    if band_rows is not None:
        tw = -(-(w + 2 * padding[1] - 2) // 2)
        monkeypatch.setattr(winograd, "WINOGRAD_BAND_BYTES",
                            band_rows * 16 * max(c, o) * tw * np.dtype(dtype).itemsize)
    rng, x, wt = _data(dtype, n, c, o, h, w)
    y = winograd.winograd_conv2d(x, wt, *padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dw = winograd.winograd_conv2d_weight_grad(dy, x, *padding)
    dx = winograd.winograd_conv2d_input_grad(dy, wt, *padding)
    y_ref, g = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, padding), {"x": x, "w": wt}, dy)
    assert y.dtype == dx.dtype == dw.dtype == np.dtype(dtype)
    assert y.flags.c_contiguous and dx.flags.c_contiguous and dw.flags.c_contiguous
    assert_close(y, y_ref, dtype, "forward")
    assert_close(dx, g["x"], dtype, "input gradient")
    assert_close(dw, g["w"], dtype, "weight gradient")


def _take_winograd(monkeypatch):
    """Lower conv.py's thresholds so that small convolutions take Winograd; return the
    list the two Winograd functions append their names to when called."""
    import minifcn.functional.conv as conv
    monkeypatch.setattr(conv, "AVX512_GEMM", False)
    monkeypatch.setattr(conv, "CPU_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "CPU_WINOGRAD_MIN_PIXELS", 1)
    monkeypatch.setattr(conv, "CPU_WINOGRAD_WIDE_MIN_PIXELS", 1)
    calls = []
    fwd, dx, dw = (conv.winograd_conv2d, conv.winograd_conv2d_input_grad,
                   conv.winograd_conv2d_weight_grad)
    monkeypatch.setattr(conv, "winograd_conv2d", lambda *a: calls.append("conv") or fwd(*a))
    monkeypatch.setattr(conv, "winograd_conv2d_input_grad",
                        lambda *a: calls.append("dx") or dx(*a))
    monkeypatch.setattr(conv, "winograd_conv2d_weight_grad",
                        lambda *a: calls.append("dW") or dw(*a))
    return calls


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n,c,o,h,w,padding", SHAPES)
def test_conv2d_through_winograd_matches_torch(monkeypatch, dtype, n, c, o, h, w, padding):
    """conv2d and conv2d_backward with the thresholds lowered: the forward, the input
    gradient (the forward's algorithm, kernel flipped, padding 2 - p) and the weight
    gradient all run by Winograd, with a bias; every result against torch."""
    if not uses_cblas(dtype):
        pytest.skip("NumPy's BLAS is not reachable here")
    calls = _take_winograd(monkeypatch)
    rng, x, wt = _data(dtype, n, c, o, h, w)
    b = rng.standard_normal(o).astype(dtype)
    y = conv2d(x, wt, b, 1, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv2d_backward(dy, x, wt, 1, padding)
    assert calls == ["conv", "dx", "dW"]
    y_ref, g = torch_grads(lambda x, w, b: TF.conv2d(x, w, b, 1, padding),
                           {"x": x, "w": wt, "b": b}, dy)
    assert_close(y, y_ref, dtype, "forward")
    assert_close(dx, g["x"], dtype, "input gradient")
    assert_close(dw, g["w"], dtype, "weight gradient")
    assert_close(db, g["b"], dtype, "bias gradient")
    assert y.dtype == dx.dtype == dw.dtype == np.dtype(dtype)
    # each gradient alone takes its own Winograd product only
    calls.clear()
    dx2, dw2, _ = conv2d_backward(dy, x, wt, 1, padding, need_weight_grad=False)
    assert dw2 is None and calls == ["dx"]
    np.testing.assert_array_equal(dx2, dx)
    calls.clear()
    dx3, dw3, _ = conv2d_backward(dy, x, wt, 1, padding, need_input_grad=False)
    assert dx3 is None and calls == ["dW"]
    np.testing.assert_array_equal(dw3, dw)


def test_views_go_through_winograd_as_they_are(monkeypatch):
    """Non-contiguous operands (a transposed x, a sliced weight, a transposed dy) take the
    Winograd path and give torch's results."""
    calls = _take_winograd(monkeypatch)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 8)).transpose(0, 1, 3, 2)          # (2, 3, 8, 9)
    wt = rng.standard_normal((4, 6, 3, 3))[:, ::2]                         # (4, 3, 3, 3)
    dy = rng.standard_normal((2, 4, 9, 8)).transpose(0, 1, 3, 2)         # (2, 4, 8, 9)
    assert not (x.flags.c_contiguous or wt.flags.c_contiguous or dy.flags.c_contiguous)
    y = conv2d(x, wt, None, 1, 1)
    dx, dw, _ = conv2d_backward(dy, x, wt, 1, 1, need_bias_grad=False)
    assert calls == ["conv", "dx", "dW"]
    y_ref, g = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, 1), {"x": x, "w": wt}, dy)
    for got, ref, what in ((y, y_ref, "forward"), (dx, g["x"], "dx"), (dw, g["w"], "dW")):
        assert_close(got, ref, np.float64, what)


def test_mixed_dtypes_compute_in_the_wider_one(monkeypatch):
    """A float32 input with a float64 weight: float64 out, as every other path."""
    calls = _take_winograd(monkeypatch)
    rng, x, wt = _data(np.float64, 2, 3, 4, 6, 6)
    x32 = x.astype(np.float32)
    y = conv2d(x32, wt, None, 1, 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, _ = conv2d_backward(dy, x32, wt, 1, 1)
    assert y.dtype == dx.dtype == dw.dtype == np.float64
    assert calls == ["conv", "dx", "dW"]
    y_ref, g = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, 1), {"x": x32, "w": wt}, dy)
    for got, ref, what in ((y, y_ref, "forward"), (dx, g["x"], "dx"), (dw, g["w"], "dW")):
        assert_close(got, ref, np.float64, what)


@pytest.mark.parametrize("value", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("where,index", [("x", (0, 3)), ("x", (5, 5)), ("w", (1, 1)),
                                         ("dy", (2, 4))])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_inf_takes_the_direct_path_and_lands_where_torch_puts_it(monkeypatch, where, index,
                                                                    value):
    """Winograd's input transform subtracts inputs: an inf would meet another inf (or a
    tile's partner) as ``inf - inf = NaN`` where torch's direct sum keeps inf. With an inf
    in x, W or dy, the products it enters take the other paths, and the pattern of inf
    and NaN, and every finite value, is torch's; the products it does not enter still run
    by Winograd."""
    calls = _take_winograd(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 8, 8))
    {"x": x, "w": w, "dy": dy}[where][(0, 0, *index)] = value
    assert_conv2d_non_finite_like_torch(x, w, dy)
    want = {"x": ["dx"],            # the input gradient (dy, W finite) still runs it
            "w": ["dW"],            # the weight gradient (dy, x finite) still runs it
            "dy": ["conv"]}[where]  # the forward ran before dy existed
    assert calls == want


def _takes(c, o, h, k=3, p=1, s=1, d=1, groups=1, dtype=np.float32, n=1):
    import minifcn.functional.conv as conv
    g = conv._geometry("conv2d", np.zeros((n, c, h, h), dtype),
                       np.zeros((o, c // groups, k, k), dtype), None, s, p, d, groups)
    return conv._winograd_conv2d(g)


def test_which_convolutions_take_winograd(monkeypatch):
    """The rule with OpenBLAS's AVX2 kernels (the project machine as configured), on
    VGG16's layers at 320x320 and 224x224 (the step benchmark's sizes), and the cases it
    leaves to the other paths."""
    import minifcn.functional.conv as conv
    if not uses_cblas(np.float32):
        pytest.skip("NumPy's BLAS is not reachable here")
    monkeypatch.setattr(conv, "AVX512_GEMM", False)
    takes = _takes

    for c, o, h in [(256, 256, 80), (256, 512, 40), (512, 512, 40), (256, 256, 56),
                    (512, 512, 28), (256, 256, 24), (512, 512, 20), (256, 256, 20),
                    (128, 256, 80), (128, 128, 160), (128, 128, 40)]:
        assert takes(c, o, h), (c, o, h)
    assert not takes(256, 256, 16)          # too few pixels to pay
    assert not takes(512, 512, 16)
    assert not takes(128, 128, 36)          # ... from fewer channels, fewer still
    assert not takes(128, 256, 36)
    assert not takes(64, 128, 160)          # conv2_1: too few input channels
    assert not takes(64, 64, 320)           # conv1_2: transforms cost more than they save
    assert takes(256, 256, 80, dtype=np.float64)
    assert not takes(256, 256, 80, p=3)     # the input gradient would need padding -1
    assert not takes(256, 256, 80, p=(1, 3))
    assert not takes(256, 256, 80, k=5, p=2)
    assert not takes(256, 256, 80, s=2)
    assert not takes(256, 256, 80, d=2, p=2)
    assert not takes(256, 256, 80, groups=2)
    assert not takes(256, 256, 80, dtype=np.float16)
    assert not takes(256, 256, 80, n=0)


def test_with_avx512_kernels_only_the_widest_layers_take_winograd(monkeypatch):
    """With GEMMs about twice as fast (OpenBLAS's AVX-512 kernels), the transforms weigh
    twice as much: 512 channels in and out, from 28x28."""
    import minifcn.functional.conv as conv
    from minifcn import openblas_core
    if not uses_cblas(np.float32):
        pytest.skip("NumPy's BLAS is not reachable here")
    monkeypatch.setattr(conv, "AVX512_GEMM", True)
    assert _takes(512, 512, 40) and _takes(512, 512, 28)
    assert not _takes(512, 512, 24)
    assert not _takes(256, 512, 40) and not _takes(256, 256, 80)
    assert conv.AVX512_GEMM is True
    monkeypatch.undo()
    assert conv.AVX512_GEMM == openblas_core.avx512_kernels()   # this process's own


def test_float32_rounding_stays_near_the_direct_sums(monkeypatch):
    """At a VGG layer's channel count (256 in and out) in float32, Winograd's error
    against the exact (float64) result is within 3x the error of the direct im2col GEMM
    on the same float32 values: the transforms' coefficients (0, +-1, +-1/2) add little
    rounding."""
    import minifcn.functional.conv as conv
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 256, 12, 12)).astype(np.float32)
    w = (rng.standard_normal((256, 256, 3, 3)) / 48).astype(np.float32)
    dy = rng.standard_normal((1, 256, 12, 12)).astype(np.float32)
    y_ref, g = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, 1), {"x": x, "w": w}, dy)
    refs = [y_ref, g["x"], g["w"]]

    def errors():
        y = conv2d(x, w, None, 1, 1)
        dx, dw, _ = conv2d_backward(dy, x, w, 1, 1, need_bias_grad=False)
        return [np.abs(a - r).max() / np.abs(r).max() for a, r in zip((y, dx, dw), refs)]

    monkeypatch.setattr(conv, "AVX512_GEMM", False)
    monkeypatch.setattr(conv, "CPU_WINOGRAD_MIN_CHANNELS", 1 << 62)
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_MIN_CHANNELS", 1 << 62)
    direct = errors()
    calls = _take_winograd(monkeypatch)
    wino = errors()
    assert calls == ["conv", "dx", "dW"]
    for what, e_w, e_d in zip(("forward", "dx", "dW"), wino, direct):
        assert e_w <= 3 * e_d, f"{what}: Winograd {e_w:.2e} vs direct {e_d:.2e}"


def test_a_transform_refuses_a_buffer_its_product_could_not_write_into():
    """The transforms write their products through a (k, -1) view of the buffer; a buffer
    that is not contiguous would reshape into a copy and the result would be lost, so it
    is refused (no caller passes one: the scratch buffers are contiguous)."""
    m = np.ones((4, 4, 1, 2, 3))
    out = np.full((1, 2, 2, 3, 2), np.nan)
    with pytest.raises(ValueError, match="C-contiguous"):
        winograd._output_transform(m, np.full((4, 1, 2, 6), np.nan)[..., ::2], out)
    assert np.isnan(out).all()


def test_float16_runs_through_matmul_within_its_rounding():
    """The module's three functions on a dtype BLAS does not take (float16; conv2d itself
    takes Winograd with BLAS only): the products go through ``numpy.matmul``, the dtype
    stays, and the error is a few of float16's units (eps 9.8e-4) of the output's scale
    (each transform rounds again); a wrong transform is off by the scale itself."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 64, 12, 12)).astype(np.float16)
    w = (rng.standard_normal((48, 64, 3, 3)) / 24).astype(np.float16)
    fn = lambda x, w: TF.conv2d(x, w, None, 1, 1)  # noqa: E731
    y_ref, dy, g = torch_grads_random_dy(fn, {"x": x, "w": w}, rng, np.float16)
    got = {"forward": (winograd.winograd_conv2d(x, w, 1, 1), y_ref),
           "dx": (winograd.winograd_conv2d_input_grad(dy, w, 1, 1), g["x"]),
           "dW": (winograd.winograd_conv2d_weight_grad(dy, x, 1, 1), g["w"])}
    for what, (a, ref) in got.items():
        assert a.dtype == np.float16, what
        err = rel_error(a, ref)
        assert err <= 1e-2, f"{what}: relative error {err:.2e}"


def test_the_kept_workspace_carries_nothing_from_one_call_to_the_next():
    """The scratch buffers are kept between calls (:func:`winograd._scratch`): a call on a
    smaller map after a larger one reuses memory holding the larger call's values, where
    the smaller one needs zero padding (its borders, its cropped tile row or column).
    Each call in a sequence of shapes and paddings (odd and even output heights and
    widths), in both dtypes: forward and both gradients against torch, and every earlier
    result unchanged afterwards (no returned array lives in the scratch). Then
    ``release_workspace`` frees the buffers, and the next call still agrees."""
    seq = [(2, 6, 5, 13, 12, (1, 1)), (1, 4, 3, 5, 7, (2, 0)), (1, 6, 5, 9, 8, (0, 1)),
           (2, 6, 5, 13, 12, (1, 1)), (1, 5, 4, 8, 7, (1, 1)), (1, 2, 2, 3, 3, (2, 2))]
    kept = []
    for dtype in DTYPES:
        for i, (n, c, o, h, w, padding) in enumerate(seq):
            rng, x, wt = _data(dtype, n, c, o, h, w, seed=i)
            y = winograd.winograd_conv2d(x, wt, *padding)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dx = winograd.winograd_conv2d_input_grad(dy, wt, *padding)
            dw = winograd.winograd_conv2d_weight_grad(dy, x, *padding)
            y_ref, g = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, padding),
                                   {"x": x, "w": wt}, dy)
            for got, ref, what in ((y, y_ref, "forward"), (dx, g["x"], "dx"), (dw, g["w"], "dW")):
                assert_close(got, ref, dtype, f"{what}, call {i}")
                kept.append((got, got.copy(), f"{what}, call {i}"))
    for got, copy, what in kept:
        np.testing.assert_array_equal(got, copy, err_msg=f"{what} changed by a later call")
    assert winograd.release_workspace() > 0
    assert winograd.release_workspace() == 0
    rng, x, wt = _data(np.float64, 1, 3, 3, 6, 6)
    y_ref, _ = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, 1), {"x": x, "w": wt})
    assert_close(winograd.winograd_conv2d(x, wt, 1, 1), y_ref, np.float64, "after release")


def test_mixed_operands_are_refused_by_the_winograd_functions():
    """conv.py casts first; called directly with two dtypes, they say so (every GEMM would
    otherwise fall back to matmul, silently)."""
    x, w = np.zeros((1, 2, 4, 4), np.float32), np.zeros((3, 2, 3, 3))
    with pytest.raises(TypeError, match="winograd_conv2d: operands must share one dtype"):
        winograd.winograd_conv2d(x, w, 1, 1)
    with pytest.raises(TypeError, match="input_grad"):
        winograd.winograd_conv2d_input_grad(np.zeros((1, 3, 4, 4), np.float32), w, 1, 1)
    with pytest.raises(TypeError, match="weight_grad"):
        winograd.winograd_conv2d_weight_grad(np.zeros((1, 3, 4, 4)), x, 1, 1)


def test_threads_get_their_own_workspace():
    """Two threads running Winograd at once, on different shapes, each get torch's
    answer: the kept scratch buffers are per thread. An exception in a thread (which
    pytest would only warn about) fails the test too, and a thread that dies before the
    barrier breaks it instead of leaving the other waiting forever."""
    import threading
    cases = [(1, 8, 8, 24, 24, (1, 1)), (1, 5, 7, 17, 19, (0, 2))]
    errors, barrier = [], threading.Barrier(2, timeout=60)

    def work(case, seed):
        try:
            n, c, o, h, w, padding = case
            rng, x, wt = _data(np.float64, n, c, o, h, w, seed=seed)
            y_ref, _ = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, padding), {"x": x, "w": wt})
            barrier.wait()
            for _ in range(20):
                y = winograd.winograd_conv2d(x, wt, *padding)
                if not np.allclose(y, y_ref, rtol=1e-10, atol=1e-10):
                    errors.append(f"{case}: wrong values")
                    return
        except BaseException as e:       # noqa: BLE001 -- reported below, not swallowed
            barrier.abort()
            errors.append(f"{case}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(case, i)) for i, case in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is still running"
    assert not errors, errors
