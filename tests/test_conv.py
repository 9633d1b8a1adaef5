"""conv2d forward and every gradient (input, weight, bias) against torch.

Reference: ``torch.nn.functional.conv2d`` + autograd in float64 on the very values minifcn
was given. Tolerance (issue 2): relative error <= 1e-10 in float64, <= 1e-5 in float32,
relative to max |reference|.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, assert_conv2d_non_finite_like_torch, to_np, torch_grads
from minifcn.functional import conv2d, conv2d_backward, conv_output_size

DTYPES = [np.float64, np.float32]
# float32 data get a mean of 0.5: a zero-mean reduction (a bias gradient over one output
# channel, say) can cancel to ~0, and then "relative to max |ref|" measures float32
# rounding of the terms, not correctness. Signs stay mixed; float64 data stay zero-mean.
OFFSET = {np.dtype(np.float64): 0.0, np.dtype(np.float32): 0.5}


def check_conv2d(xp, dtype, *, n, cin, cout, h, w, kernel, stride, padding, dilation, groups,
                 bias, seed=0):
    """Run conv2d and conv2d_backward and hold all four results to torch."""
    rng = np.random.default_rng(seed)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    off = OFFSET[np.dtype(dtype)]
    x = (rng.standard_normal((n, cin, h, w)) + off).astype(dtype)
    wt = (rng.standard_normal((cout, cin // groups, kh, kw)) + off).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if bias else None

    y = conv2d(xp.asarray(x), xp.asarray(wt), None if b is None else xp.asarray(b),
               stride, padding, dilation, groups)
    assert y.dtype == np.dtype(dtype), "conv2d must keep the input dtype"
    dy = (rng.standard_normal(y.shape) + off).astype(dtype)
    dx, dw, db = conv2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(wt), stride, padding,
                                 dilation, groups, need_bias_grad=bias)

    y_ref, g = torch_grads(
        lambda x, w, b: TF.conv2d(x, w, b, stride, padding, dilation, groups),
        {"x": x, "w": wt, "b": b}, dy)
    assert_close(y, y_ref, dtype, "forward")
    assert_close(dx, g["x"], dtype, "input gradient")
    assert_close(dw, g["w"], dtype, "weight gradient")
    assert dx.dtype == dw.dtype == np.dtype(dtype)
    if bias:
        assert_close(db, g["b"], dtype, "bias gradient")
    else:
        assert db is None

    # need_input_grad=False: no dx, and the same weight gradient
    dx2, dw2, db2 = conv2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(wt), stride,
                                    padding, dilation, groups, need_input_grad=False)
    assert dx2 is None
    np.testing.assert_array_equal(to_np(dw2), to_np(dw))
    assert_close(db2, g["b"] if bias else dy.astype(np.float64).sum(axis=(0, 2, 3)), dtype,
                 "bias gradient (need_input_grad=False)")


# -- a product grid over the geometry --------------------------------------------------

H, W = 9, 7     # odd, rectangular
GEOMETRY = [g for g in itertools.product(
    [(1, 1), (3, 3), (2, 3)],              # kernel: 1x1, odd square, rectangular
    [1, (2, 2), (3, 1), (4, 3)],           # stride: (4, 3) > the 2x3 and 3x3 kernels
    [0, (2, 1)],                           # padding
    [1, (2, 2), (3, 1)],                   # dilation
) if all(conv_output_size(s, k, st_, p, d) > 0 for s, k, st_, p, d in zip(
    (H, W), g[0], *[(v, v) if isinstance(v, int) else v for v in g[1:]]))]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_conv2d_grid_geometry(xp, dtype, kernel, stride, padding, dilation):
    check_conv2d(xp, dtype, n=2, cin=3, cout=4, h=H, w=W, kernel=kernel, stride=stride,
                 padding=padding, dilation=dilation, groups=1, bias=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cin,cout,groups", [
    (4, 6, 1), (4, 6, 2), (6, 3, 3),       # grouped
    (4, 4, 4), (3, 6, 3),                  # depthwise (groups == in_channels), multiplier 1, 2
])
def test_conv2d_grid_groups_bias(xp, dtype, bias, cin, cout, groups):
    check_conv2d(xp, dtype, n=3, cin=cin, cout=cout, h=8, w=5, kernel=(3, 2), stride=(2, 1),
                 padding=(1, 0), dilation=(1, 2), groups=groups, bias=bias)


# -- the CPU's implicit path (stride-1 convolutions as transposed ones) ----------------------

@pytest.mark.parametrize("band_bytes", [None, 1], ids=["one band", "a band per image row"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,padding", [((3, 3), 1), ((3, 3), 0), ((3, 3), (2, 1)),
                                            ((2, 3), (1, 2)), ((1, 3), (0, 1)), ((3, 2), 0)])
def test_conv2d_as_an_implicit_transposed_convolution(monkeypatch, dtype, kernel, padding,
                                                      band_bytes):
    """With the channel threshold lowered, these small convolutions take the path VGG's
    layers take on the CPU (conv2d = conv_transpose2d with the kernel flipped and the
    channel axes swapped, run as 'implicit'; the weight gradient from banded im2col,
    written transposed); forward and gradients against torch. A 1-byte band budget cuts
    the weight gradient's im2col into one image and one output row at a time."""
    import minifcn.functional.conv as conv
    from minifcn.functional import implicit
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_MIN_PIXELS", 1)
    if band_bytes is not None:
        monkeypatch.setattr(conv, "CPU_BAND_BYTES", band_bytes)
    used = []
    real = implicit.gemm
    monkeypatch.setattr(implicit, "gemm", lambda *a, **k: used.append(1) or real(*a, **k))
    check_conv2d(np, dtype, n=2, cin=3, cout=4, h=H, w=W, kernel=kernel, stride=1,
                 padding=padding, dilation=1, groups=1, bias=True)
    from minifcn.functional.blas import uses_cblas
    assert bool(used) == uses_cblas(dtype)          # the implicit path ran (where it applies)


# -- the CPU's shifted rows (stride-1 convolutions with few channels) ------------------------

SHIFTED_CASES = [((3, 3), 1), ((3, 3), 0), ((2, 3), (1, 2)), ((1, 3), (0, 1)), ((3, 2), 0),
                 ((5, 5), 2), ((4, 4), (3, 1))]


def _spy_shifted(monkeypatch):
    """Record which of the shifted-rows functions run: 'rows' (a forward or an input
    gradient, :func:`_conv2d_shifted_rows`) and 'dW'."""
    import minifcn.functional.conv as conv
    calls = []
    rows, dw = conv._conv2d_shifted_rows, conv._weight_grad_shifted_rows
    monkeypatch.setattr(conv, "_conv2d_shifted_rows",
                        lambda *a: calls.append("rows") or rows(*a))
    monkeypatch.setattr(conv, "_weight_grad_shifted_rows",
                        lambda *a: calls.append("dW") or dw(*a))
    return calls


@pytest.mark.parametrize("fold", [False, True], ids=["all taps copied", "row shifts copied"])
@pytest.mark.parametrize("band_bytes", [None, 1], ids=["one band", "a band per output row"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,padding", SHIFTED_CASES)
def test_conv2d_on_shifted_rows(monkeypatch, dtype, kernel, padding, band_bytes, fold):
    """The path the CPU takes for stride-1 convolutions with few channels: the forward and
    the input gradient as convolutions on shifted rows (the input gradient with the kernel
    flipped and padding k-1-p), the weight gradient from the same layout. Padding 0 to
    kernel-1, square and rectangular; with the waste bound lifted so that the 9x7 images
    take it, and a 1-byte budget for bands of one output row (of the stacked batch, so
    bands that straddle two images). With every tap's row copied, and with only the row
    shifts copied and the column taps read at offsets (``_fold_column_taps``, which the
    test turns on for any band: only long bands take it by default). Held to torch, and
    the paths checked."""
    import minifcn.functional.conv as conv
    import minifcn.functional.shifted_rows as shifted_rows
    from minifcn.functional.blas import uses_cblas
    monkeypatch.setattr(conv, "CPU_SHIFTED_CONV2D_MAX_WASTE", 100.0)
    monkeypatch.setattr(shifted_rows, "CPU_SHIFTED_FOLD_MIN_WINDOWS", 0 if fold else 1 << 62)
    if band_bytes is not None:
        monkeypatch.setattr(conv, "CPU_BAND_BYTES", band_bytes)
    calls = _spy_shifted(monkeypatch)
    folded, real_fold = [], shifted_rows._fold_column_taps
    monkeypatch.setattr(shifted_rows, "_fold_column_taps", lambda *a: folded.append(real_fold(*a))
                        or folded[-1])
    check_conv2d(np, dtype, n=3, cin=4, cout=5, h=H, w=W, kernel=kernel, stride=1,
                 padding=padding, dilation=1, groups=1, bias=True)
    # conv2d, then conv2d_backward with dx and dW, then with dW alone
    want = ["rows", "rows", "dW", "dW"] if uses_cblas(dtype) else []
    assert calls == want
    # folded where the column taps are more than one, and (forward, dx) the GEMM's output
    # rows are no more than C*kh: forward 5 <= 4*kh, dx 4 <= 5*kh
    wide, kh = fold and kernel[1] > 1, kernel[0]
    expect = [wide and 5 <= 4 * kh, wide and 4 <= 5 * kh, wide, wide]
    assert folded == (expect if want else [])


def test_which_convolutions_take_shifted_rows():
    """The rule, on the default training run's layers (width 1/8, 64x64, batch 16) and on
    the cases it leaves to the other paths."""
    import minifcn.functional.conv as conv
    from minifcn.functional.blas import uses_cblas
    if not uses_cblas(np.float32):
        pytest.skip("NumPy's BLAS is not reachable here")

    def takes(n, c, o, h, k=3, p=1, s=1, d=1, groups=1, dtype=np.float32):
        g = conv._geometry("conv2d", np.zeros((n, c, h, h), dtype),
                           np.zeros((o, c // groups, k, k), dtype), None, s, p, d, groups)
        return conv._shifted_conv2d(g) and not conv._implicit_conv2d(g)

    for c, o, h in [(3, 8, 64), (8, 8, 64), (8, 16, 32), (16, 32, 16), (32, 64, 8), (64, 64, 4)]:
        assert takes(16, c, o, h), (c, o, h)
    assert takes(1, 128, 128, 28)
    assert not takes(1, 256, 256, 56)            # many channels: im2col / implicit
    assert not takes(1, 64, 64, 224)             # VGG's conv1 at full width: implicit
    assert not takes(16, 64, 21, 4, k=1, p=0)    # 1x1: no windows to gather
    assert not takes(16, 64, 512, 2, k=7, p=3)   # fc6 on 2x2: 6.25 windows per window kept
    assert not takes(16, 8, 8, 64, s=2)
    assert not takes(16, 8, 8, 64, d=2, p=2)
    assert not takes(16, 8, 8, 64, groups=2)
    assert not takes(16, 8, 8, 64, dtype=np.float16)
    assert not takes(16, 8, 8, 2)                # 3x3 on 2x2: 2.25 windows per window kept


@pytest.mark.parametrize("cin,cout,want", [(3, 8, ["rows"]), (8, 3, ["rows", "rows"]),
                                           (4, 4, ["rows", "rows", "dW"])])
def test_shifted_rows_gradients_need_four_channels(monkeypatch, cin, cout, want):
    """Below 4 channels the shifted-rows gradients lost to im2col (BLAS on a GEMM of 3
    rows: VGG's conv1_1 input gradient at 224 took 6.7x as long), so the input gradient
    needs C >= 4 and the weight gradient min(C, O) >= 4; the forward takes it anyway.
    Held to torch either way."""
    from minifcn.functional.blas import uses_cblas
    if not uses_cblas(np.float64):
        pytest.skip("NumPy's BLAS is not reachable here")
    calls = _spy_shifted(monkeypatch)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, cin, 12, 10)), rng.standard_normal((cout, cin, 3, 3))
    dy = rng.standard_normal((2, cout, 12, 10))
    y = conv2d(x, w, None, 1, 1)
    dx, dw, _ = conv2d_backward(dy, x, w, 1, 1, need_bias_grad=False)
    assert calls == want
    y_ref, g = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, 1), {"x": x, "w": w}, dy)
    for got, ref, what in ((y, y_ref, "forward"), (dx, g["x"], "dx"), (dw, g["w"], "dW")):
        assert_close(got, ref, np.float64, what)


@pytest.mark.parametrize("where,index", [("x", (0, 6)), ("x", (8, 0)), ("x", (4, 3)),
                                         ("w", (0, 0)), ("w", (2, 2)), ("dy", (0, 6))])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_shifted_rows_put_inf_and_nan_only_where_torch_does(monkeypatch, where, index):
    """The shifted-rows layout computes windows that are thrown away (their ``dy`` is a
    zero in the weight gradient) and pads ``dy`` for the input gradient: an inf of ``x``
    meeting such a zero, or an inf weight meeting ``dy``'s zero border, gives 0 * inf =
    NaN where torch's float64 sums have no such term. Those gradients take im2col; the
    pattern of inf and NaN, and every finite value, must be torch's."""
    import minifcn.functional.conv as conv
    monkeypatch.setattr(conv, "CPU_SHIFTED_CONV2D_MAX_WASTE", 100.0)
    calls = _spy_shifted(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, H, W))
    w = rng.standard_normal((4, 4, 3, 3))
    dy = rng.standard_normal((2, 4, H, W))
    {"x": x, "w": w, "dy": dy}[where][(0, 0, *index)] = np.inf
    assert_conv2d_non_finite_like_torch(x, w, dy)
    if where == "dy":                          # finite x and W: every gradient shifted
        assert calls == ["rows", "rows", "dW"]


# -- one GEMM for the whole batch (small maps, large weights) ----------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cin,cout,h,kernel,padding", [(256, 256, 2, 1, 0),   # fc7-like
                                                        (64, 64, 1, 3, 1)])    # 3x3 on 1x1
def test_small_maps_run_one_gemm_for_the_batch(monkeypatch, dtype, cin, cout, h, kernel,
                                               padding):
    """Where the weight is far larger than an image's operands (fc7 at 2x2), the forward,
    the input gradient and the weight gradient put the images side by side and run one
    GEMM, instead of one per image that each re-reads the weight: held to torch, and the
    path checked (the images were put side by side)."""
    import minifcn.functional.conv as conv
    calls = []
    real = conv._side_by_side
    monkeypatch.setattr(conv, "_side_by_side", lambda *a: calls.append(1) or real(*a))
    check_conv2d(np, dtype, n=3, cin=cin, cout=cout, h=h, w=h, kernel=kernel, stride=1,
                 padding=padding, dilation=1, groups=1, bias=True)
    assert len(calls) >= 4        # forward 1, dx 1, dW 2 (and dW 2 again without dx)


def test_transposed_convolution_on_a_1x1_map_batches_its_gemm(monkeypatch):
    """conv_transpose2d's 'col2im' forward shares the GEMM W^T @ x (one for the batch here)."""
    import torch
    import minifcn.functional.conv as conv
    from minifcn.functional import conv_transpose2d
    calls = []
    real = conv._side_by_side
    monkeypatch.setattr(conv, "_side_by_side", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((3, 256, 1, 1)), rng.standard_normal((256, 256, 2, 2))
    y = conv_transpose2d(x, w, None, 2, 0, algorithm="col2im")
    assert calls
    ref = TF.conv_transpose2d(torch.tensor(x), torch.tensor(w), stride=2).numpy()
    assert_close(y, ref, np.float64, "forward")


# -- randomised configurations ---------------------------------------------------------

@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    cin = groups if depthwise else groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 11))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 11))
    return dict(n=draw(st.integers(1, 3)), cin=cin, cout=cout, h=h, w=w, kernel=(kh, kw),
                stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups,
                bias=draw(st.booleans()))


@settings(max_examples=50, deadline=None)
@given(cfg=conv_configs(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_conv2d_random_configs(xp, cfg, dtype, seed):
    check_conv2d(xp, dtype, seed=seed, **cfg)


def test_conv2d_int_and_pair_arguments_agree(xp):
    """Every int parameter also takes an (h, w) pair, with the same meaning."""
    rng = np.random.default_rng(3)
    x = xp.asarray(rng.standard_normal((2, 2, 9, 9)))
    wt = xp.asarray(rng.standard_normal((3, 2, 3, 3)))
    a = conv2d(x, wt, None, 2, 1, 2)
    b = conv2d(x, wt, None, (2, 2), (1, 1), (2, 2))
    c = conv2d(x, wt, None, [2, 2], [1, 1], [2, 2])
    np.testing.assert_array_equal(to_np(a), to_np(b))
    np.testing.assert_array_equal(to_np(a), to_np(c))


def test_conv2d_does_not_modify_its_inputs(xp):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 6, 6))
    wt = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    dy = rng.standard_normal((2, 3, 3, 3))
    arrays = [xp.asarray(a) for a in (x, wt, b, dy)]
    conv2d(arrays[0], arrays[1], arrays[2], 2, 1)
    conv2d_backward(arrays[3], arrays[0], arrays[1], 2, 1)
    for orig, arr in zip((x, wt, b, dy), arrays):
        np.testing.assert_array_equal(to_np(arr), orig)


@pytest.mark.parametrize("view", ["step", "reversed", "transposed", "broadcast"])
def test_conv2d_non_contiguous_inputs(xp, view):
    """Strided, reversed, transposed and broadcast (read-only, zero-stride) views give the
    same answers as their contiguous copies."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((2, 3, 14, 9))
    wbase = rng.standard_normal((4, 3, 3, 2))
    dy = rng.standard_normal((2, 4, 7, 8))
    if view == "step":
        x = xp.asarray(base)[:, :, ::2, :]                      # (2, 3, 7, 9)
    elif view == "reversed":
        x = xp.asarray(base)[:, ::-1, 7:, ::-1]
    elif view == "transposed":
        x = xp.asarray(base[:, :, :9, :7]).transpose(0, 1, 3, 2)  # (2, 3, 7, 9)
    else:
        x = xp.broadcast_to(xp.asarray(base[:1, :, :7, :]), (2, 3, 7, 9))
    wt = xp.asarray(wbase)[:, :, ::-1, :]
    xc, wc = xp.ascontiguousarray(x), xp.ascontiguousarray(wt)
    assert not x.flags.c_contiguous
    y = conv2d(x, wt, None, 1, (1, 0))
    np.testing.assert_array_equal(to_np(y), to_np(conv2d(xc, wc, None, 1, (1, 0))))
    got = conv2d_backward(xp.asarray(dy), x, wt, 1, (1, 0))
    ref = conv2d_backward(xp.asarray(dy), xc, wc, 1, (1, 0))
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(to_np(g), to_np(r))
    y_ref, _ = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, (1, 0)),
                           {"x": to_np(xc), "w": to_np(wc)})
    assert_close(y, y_ref, np.float64, f"forward on a {view} view")


def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients():
    """N = 0: conv2d's backward used to index the first image of dy (IndexError)."""
    x, w = np.zeros((0, 3, 6, 6)), np.ones((4, 3, 3, 3))
    y = conv2d(x, w, np.ones(4), 1, 1)
    assert y.shape == (0, 4, 6, 6)
    dx, dw, db = conv2d_backward(np.zeros(y.shape), x, w, 1, 1)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (4,)
    assert not dw.any() and not db.any()
