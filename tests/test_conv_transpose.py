"""conv_transpose2d forward and every gradient against torch, for every algorithm; and the
identities that make it the *transpose* of a convolution.

- ``torch.nn.functional.conv_transpose2d`` + autograd in float64 is the reference
  (relative error <= 1e-10 in float64, <= 1e-5 in float32, relative to max |ref|).
- ``algorithm='col2im'`` and ``'fused'`` always, ``'subpixel'`` and ``'implicit'`` where
  they apply (dilation 1, groups 1), and ``'auto'``.
- ``<conv_transpose2d(x, W), g> == <x, conv2d(g, W)>``, and conv2d's input gradient *is*
  ``conv_transpose2d(dy, W)``.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, assert_same_non_finite, to_np, torch_grads
from minifcn.functional import (conv2d, conv2d_backward, conv_output_size, conv_transpose2d,
                                conv_transpose2d_backward, conv_transpose_output_size)

DTYPES = [np.float64, np.float32]
# float32 data get a mean of 0.5: a zero-mean reduction (a bias gradient over one output
# channel, say) can cancel to ~0, and then "relative to max |ref|" measures float32
# rounding of the terms, not correctness. Signs stay mixed; float64 data stay zero-mean.
OFFSET = {np.dtype(np.float64): 0.0, np.dtype(np.float32): 0.5}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def algorithms_for(dilation, groups, kernel=None, stride=None, xp=np):
    """Every algorithm that applies; 'winograd' (NumPy only) where the kernel is 2 x stride."""
    plain = _pair(dilation) == (1, 1) and groups == 1
    return (["col2im", "fused", "auto"] + (["subpixel", "implicit"] if plain else [])
            + (["winograd"] if plain and xp is np and kernel is not None
               and tuple(2 * s for s in _pair(stride)) == _pair(kernel) else []))


def check_conv_transpose2d(xp, dtype, *, n, cin, cout, h, w, kernel, stride, padding,
                           output_padding, dilation, groups, bias, seed=0, algorithms=None):
    """Forward and backward of every applicable algorithm, each held to torch."""
    rng = np.random.default_rng(seed)
    kh, kw = _pair(kernel)
    off = OFFSET[np.dtype(dtype)]
    x = (rng.standard_normal((n, cin, h, w)) + off).astype(dtype)
    wt = (rng.standard_normal((cin, cout // groups, kh, kw)) + off).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if bias else None
    ho = conv_transpose_output_size(h, kh, _pair(stride)[0], _pair(padding)[0],
                                    _pair(dilation)[0], _pair(output_padding)[0])
    wo = conv_transpose_output_size(w, kw, _pair(stride)[1], _pair(padding)[1],
                                    _pair(dilation)[1], _pair(output_padding)[1])
    dy = (rng.standard_normal((n, cout, ho, wo)) + off).astype(dtype)
    y_ref, g = torch_grads(
        lambda x, w, b: TF.conv_transpose2d(x, w, b, stride, padding, output_padding, groups,
                                            dilation),
        {"x": x, "w": wt, "b": b}, dy)
    assert y_ref.shape == dy.shape

    for alg in (algorithms or algorithms_for(dilation, groups, kernel, stride, xp)):
        args = (stride, padding, output_padding, groups, dilation)
        y = conv_transpose2d(xp.asarray(x), xp.asarray(wt), None if b is None else xp.asarray(b),
                             *args, algorithm=alg)
        assert y.dtype == np.dtype(dtype), alg
        assert_close(y, y_ref, dtype, f"forward [{alg}]")
        dx, dw, db = conv_transpose2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(wt),
                                               *args, need_bias_grad=bias, algorithm=alg)
        assert_close(dx, g["x"], dtype, f"input gradient [{alg}]")
        assert_close(dw, g["w"], dtype, f"weight gradient [{alg}]")
        assert dx.dtype == dw.dtype == np.dtype(dtype), alg
        if bias:
            assert_close(db, g["b"], dtype, f"bias gradient [{alg}]")
        else:
            assert db is None
        dx2, dw2, _ = conv_transpose2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(wt),
                                                *args, need_input_grad=False, algorithm=alg)
        assert dx2 is None
        assert_close(dw2, g["w"], dtype, f"weight gradient, need_input_grad=False [{alg}]")


# -- product grid ----------------------------------------------------------------------

H, W = 5, 4


def _grid():
    for kernel, stride, padding, dilation, op_max in itertools.product(
            [(1, 1), (3, 3), (4, 2)],       # 1x1, odd square, rectangular; 4 = 2 * stride 2
            [1, (2, 2), (3, 2), (5, 3)],    # (5, 3): stride > kernel
            [0, (2, 1)],
            [1, (2, 3)],
            [False, True]):                 # output_padding 0, or max(stride, dilation) - 1
        s, d = _pair(stride), _pair(dilation)
        op = tuple(max(a, b) - 1 for a, b in zip(s, d)) if op_max else (0, 0)
        if op_max and op == (0, 0):
            continue
        if all(conv_transpose_output_size(n, k, *rest) > 0 for n, k, *rest in
               zip((H, W), kernel, s, _pair(padding), d, op)):
            yield kernel, stride, padding, dilation, op


GRID = list(_grid())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,stride,padding,dilation,output_padding", GRID)
def test_conv_transpose2d_grid_geometry(xp, dtype, kernel, stride, padding, dilation,
                                        output_padding):
    check_conv_transpose2d(xp, dtype, n=2, cin=3, cout=2, h=H, w=W, kernel=kernel,
                           stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=1, bias=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cin,cout,groups", [
    (3, 2, 1), (4, 6, 2), (6, 3, 3),       # grouped
    (4, 4, 4), (3, 6, 3),                  # depthwise
])
def test_conv_transpose2d_grid_groups_bias(xp, dtype, bias, cin, cout, groups):
    check_conv_transpose2d(xp, dtype, n=3, cin=cin, cout=cout, h=4, w=5, kernel=(3, 4),
                           stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                           dilation=(1, 2), groups=groups, bias=bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,stride,padding,output_padding", [
    (4, 2, 1, 0), (4, 2, 1, 1), (4, 2, 0, 0),       # FCN-8s/16s x2 upsampler
    (16, 8, 4, 0), (16, 8, 0, 7),                   # FCN-8s x8 upsampler
    (64, 32, 16, 0),                                # FCN-32s x32 upsampler
    (5, 2, 2, 1), (7, 3, 1, 2), (3, 3, 0, 0),       # s does not divide k; k == s
    (2, 4, 0, 3),                                   # stride > kernel
])
def test_conv_transpose2d_upsampling_shapes(xp, dtype, kernel, stride, padding, output_padding):
    """The FCN upsamplers (stride divides kernel: what 'auto' sends to 'subpixel')."""
    check_conv_transpose2d(xp, dtype, n=2, cin=3, cout=3, h=3, w=2, kernel=kernel,
                           stride=stride, padding=padding, output_padding=output_padding,
                           dilation=1, groups=1, bias=True, seed=kernel)


# -- randomised configurations ---------------------------------------------------------

@st.composite
def conv_transpose_configs(draw):
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    cin = groups if depthwise else groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    oph = draw(st.integers(0, max(sh, dh) - 1))
    opw = draw(st.integers(0, max(sw, dw) - 1))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    # padding up to what still leaves a non-empty output
    full_h = (h - 1) * sh + dh * (kh - 1) + oph + 1
    full_w = (w - 1) * sw + dw * (kw - 1) + opw + 1
    ph = draw(st.integers(0, min(3, (full_h - 1) // 2)))
    pw = draw(st.integers(0, min(3, (full_w - 1) // 2)))
    return dict(n=draw(st.integers(1, 3)), cin=cin, cout=cout, h=h, w=w, kernel=(kh, kw),
                stride=(sh, sw), padding=(ph, pw), output_padding=(oph, opw),
                dilation=(dh, dw), groups=groups, bias=draw(st.booleans()))


@settings(max_examples=50, deadline=None)
@given(cfg=conv_transpose_configs(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_conv_transpose2d_random_configs(xp, cfg, dtype, seed):
    check_conv_transpose2d(xp, dtype, seed=seed, **cfg)


def _where_subpixel_applies(cfg):
    """Restrict a drawn configuration (in place) to where 'subpixel' applies: dilation 1,
    one group, output_padding below the stride, padding below half the full output."""
    cfg.update(dilation=(1, 1), groups=1)
    s = cfg["stride"]
    cfg["output_padding"] = tuple(min(o, a - 1) for o, a in zip(cfg["output_padding"], s))
    full = [(n - 1) * a + k + o for n, a, k, o in
            zip((cfg["h"], cfg["w"]), s, cfg["kernel"], cfg["output_padding"])]
    cfg["padding"] = tuple(min(p, (f - 1) // 2) for p, f in zip(cfg["padding"], full))


@settings(max_examples=30, deadline=None)
@given(cfg=conv_transpose_configs(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_conv_transpose2d_random_configs_subpixel(xp, cfg, dtype, seed):
    """Random configurations restricted to where 'subpixel' applies (it is checked above
    only when hypothesis happens to draw dilation 1 and groups 1)."""
    _where_subpixel_applies(cfg)
    check_conv_transpose2d(xp, dtype, seed=seed, algorithms=["subpixel", "col2im"], **cfg)


@settings(max_examples=30, deadline=None)
@given(cfg=conv_transpose_configs(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_subpixel_with_the_column_taps_folded(cfg, dtype, seed):
    """The CPU 'subpixel' forward's convolution on shifted rows with only the row shifts
    copied and the column taps read at offsets (``shifted_rows._fold_column_taps``, by default
    on bands of 8192+ windows; here on every band): random configurations, held to
    torch."""
    import minifcn.functional.conv as conv
    # where the rule folds: phase kernels more than one wide (kw > sw), and no more GEMM
    # output rows than folded col rows (O*sh*sw <= C*ceil(kh/sh)); drawn at random, only
    # 7.5% of configurations did, and a run of 30 often folded none
    (kh, kw), (sh, sw) = cfg["kernel"], cfg["stride"]
    cfg["kernel"] = (kh, max(kw, sw + 1))
    cfg["cin"] = max(cfg["cin"], -(-cfg["cout"] * sh * sw // -(-kh // sh)))
    _where_subpixel_applies(cfg)
    s = cfg["stride"]
    import minifcn.functional.shifted_rows as shifted_rows
    saved, real = shifted_rows.CPU_SHIFTED_FOLD_MIN_WINDOWS, shifted_rows._fold_column_taps
    folded = []
    shifted_rows.CPU_SHIFTED_FOLD_MIN_WINDOWS = 0
    shifted_rows._fold_column_taps = lambda *a: folded.append(real(*a)) or folded[-1]
    try:
        check_conv_transpose2d(np, dtype, seed=seed, algorithms=["subpixel"], **cfg)
    finally:
        shifted_rows.CPU_SHIFTED_FOLD_MIN_WINDOWS, shifted_rows._fold_column_taps = saved, real
    if s[1] < conv.CPU_SUBPIXEL_CHANNELS_LAST_MIN_STRIDE:     # the channels-first forward
        assert True in folded, f"the column taps were not folded: {folded}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cin,cout,kernel,stride,padding", [
    (8, 1, 4, 2, 1), (6, 2, (4, 6), (2, 3), (1, 0)), (5, 1, 3, 2, 0)])
def test_subpixel_folds_where_the_rule_says(monkeypatch, dtype, cin, cout, kernel, stride,
                                            padding):
    """Cases where the sub-pixel forward's convolution does fold (phase kernels more than
    one wide, O*sh*sw <= C*ah), with the window bound lifted: the fold taken, and the
    result held to torch."""
    import minifcn.functional.shifted_rows as shifted_rows
    monkeypatch.setattr(shifted_rows, "CPU_SHIFTED_FOLD_MIN_WINDOWS", 0)
    folded, real = [], shifted_rows._fold_column_taps
    monkeypatch.setattr(shifted_rows, "_fold_column_taps",
                        lambda *a: folded.append(real(*a)) or folded[-1])
    check_conv_transpose2d(np, dtype, n=2, cin=cin, cout=cout, h=5, w=6, kernel=kernel,
                           stride=stride, padding=padding, output_padding=0, dilation=1,
                           groups=1, bias=True, algorithms=["subpixel"])
    assert True in folded


@settings(max_examples=40, deadline=None)
@given(cfg=conv_transpose_configs(), dtype=st.sampled_from(DTYPES),
       band_bytes=st.sampled_from([1, 200, 1 << 30]), seed=st.integers(0, 2**31 - 1))
def test_subpixel_channels_last_path_matches_torch(cfg, dtype, band_bytes, seed):
    """The CPU 'subpixel' forward that runs its GEMM transposed and shuffles runs of
    ``sw`` values (``shifted_rows._subpixel_channels_last``, spied on where conv calls it), taken here at every stride (it is the
    default from stride 8 on), its output streamed in bands of one block row (which
    cross image boundaries), a few, or all: any kernel, crop and output_padding."""
    import minifcn.functional.conv as conv
    import minifcn.functional.shifted_rows as shifted_rows
    _where_subpixel_applies(cfg)
    saved = (conv.CPU_SUBPIXEL_CHANNELS_LAST_MIN_STRIDE, shifted_rows.CPU_CHANNELS_LAST_BAND_BYTES,
             shifted_rows.CPU_CHANNELS_LAST_MIN_PIXELS)
    calls = []
    real = conv._subpixel_channels_last
    conv._subpixel_channels_last = lambda *a: calls.append(1) or real(*a)
    conv.CPU_SUBPIXEL_CHANNELS_LAST_MIN_STRIDE = 1
    shifted_rows.CPU_CHANNELS_LAST_BAND_BYTES = band_bytes
    shifted_rows.CPU_CHANNELS_LAST_MIN_PIXELS = 1
    try:
        check_conv_transpose2d(np, dtype, seed=seed, algorithms=["subpixel"], **cfg)
    finally:
        (conv.CPU_SUBPIXEL_CHANNELS_LAST_MIN_STRIDE, shifted_rows.CPU_CHANNELS_LAST_BAND_BYTES,
         shifted_rows.CPU_CHANNELS_LAST_MIN_PIXELS) = saved
        conv._subpixel_channels_last = real
    assert calls, "the channels-last path was not taken"


def test_subpixel_takes_the_channels_last_path_from_stride_8():
    """By default the CPU 'subpixel' forward runs channels-last at FCN's x8 and x32
    upsamplers and channels-first at x2 (where its 8-byte runs would not pay)."""
    import minifcn.functional.conv as conv
    calls = []
    real = conv._subpixel_channels_last
    conv._subpixel_channels_last = lambda *a: calls.append(1) or real(*a)
    try:
        for k, s, want in [(4, 2, 0), (16, 8, 1), (64, 32, 1)]:
            calls.clear()
            conv_transpose2d(np.ones((1, 2, 3, 3)), np.ones((2, 2, k, k)), None, s, s // 2,
                             algorithm="subpixel")
            assert len(calls) == want, (k, s)
    finally:
        conv._subpixel_channels_last = real


# -- conv and transposed conv are each other's transpose -------------------------------

@st.composite
def paired_configs(draw):
    """A conv2d geometry, and the output_padding that makes the transposed conv of its
    output land back on the input size."""
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 2))
    o = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 10))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 10))
    oph = (h + 2 * ph - dh * (kh - 1) - 1) % sh
    opw = (w + 2 * pw - dw * (kw - 1) - 1) % sw
    return dict(n=draw(st.integers(1, 2)), c=c, o=o, h=h, w=w, kernel=(kh, kw),
                stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups,
                output_padding=(oph, opw))


@settings(max_examples=40, deadline=None)
@given(cfg=paired_configs(), seed=st.integers(0, 2**31 - 1))
def test_conv_input_gradient_is_the_transposed_conv(xp, cfg, seed):
    """conv2d_backward's dx == conv_transpose2d(dy, W) with the same W, and
    <conv_transpose2d(g, W), x> == <g, conv2d(x, W)> (the adjoint identity)."""
    rng = np.random.default_rng(seed)
    n, c, o, h, w, groups = (cfg[k] for k in ("n", "c", "o", "h", "w", "groups"))
    s, p, d, op = cfg["stride"], cfg["padding"], cfg["dilation"], cfg["output_padding"]
    wt = rng.standard_normal((o, c // groups, *cfg["kernel"]))
    x = rng.standard_normal((n, c, h, w))
    y = to_np(conv2d(xp.asarray(x), xp.asarray(wt), None, s, p, d, groups))
    gy = rng.standard_normal(y.shape)

    dx, _, _ = conv2d_backward(xp.asarray(gy), xp.asarray(x), xp.asarray(wt), s, p, d, groups)
    for alg in algorithms_for(d, groups, cfg["kernel"], s, xp):
        t = to_np(conv_transpose2d(xp.asarray(gy), xp.asarray(wt), None, s, p, op, groups, d,
                                   algorithm=alg))
        assert t.shape == x.shape
        assert_close(dx, t, np.float64, f"conv2d dx vs conv_transpose2d [{alg}]")
        lhs, rhs = np.vdot(t, x), np.vdot(gy, y)
        scale = np.abs(t).ravel() @ np.abs(x).ravel()
        assert abs(lhs - rhs) <= 1e-12 * scale, (alg, lhs, rhs)

    # and the other way round: the transposed conv's input gradient is the conv
    tdx, _, _ = conv_transpose2d_backward(xp.asarray(x), xp.asarray(gy), xp.asarray(wt), s, p,
                                          op, groups, d, algorithm="col2im")
    assert_close(tdx, y, np.float64, "conv_transpose2d dx vs conv2d")


def test_every_algorithm_on_a_rectangular_padded_geometry(xp):
    """'col2im', 'subpixel', 'fused', 'implicit' and (on the CPU) 'winograd' on one geometry
    that is unequal in every way (stride (3, 2), padding (1, 2), output_padding (2, 1), a
    6x4 kernel, 2 x the stride), each against torch."""
    import torch
    rng = np.random.default_rng(7)
    x_np, wt_np = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((4, 3, 6, 4))
    ref = TF.conv_transpose2d(torch.from_numpy(x_np), torch.from_numpy(wt_np), None, (3, 2),
                              (1, 2), (2, 1)).numpy()
    x, wt = xp.asarray(x_np), xp.asarray(wt_np)
    for algorithm in ("col2im", "subpixel", "fused", "implicit") + (("winograd",) if xp is np else ()):
        got = to_np(conv_transpose2d(x, wt, None, (3, 2), (1, 2), (2, 1), algorithm=algorithm))
        assert_close(got, ref, np.float64, algorithm)


def test_algorithms_return_the_same_dtype(xp):
    """The output dtype is result_type(x, W) for every algorithm, whatever the bias's
    (it is added in place), so 'auto' cannot change it by picking another algorithm."""
    rng = np.random.default_rng(11)
    x = xp.asarray(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    wt = xp.asarray(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    b = xp.asarray(rng.standard_normal(3))                                  # float64
    cpu = ("winograd",) if xp is np else ()
    for alg in ("col2im", "subpixel", "fused", "implicit", "auto") + cpu:
        assert conv_transpose2d(x, wt, b, 2, 1, algorithm=alg).dtype == np.float32, alg
    # a float32 input with a float64 weight: float64 from every algorithm, at stride 2 and
    # at stride 8 (where the CPU's 'subpixel' runs its channels-last GEMM), and computed in
    # float64: float64 torch on the same values (float32 arithmetic is ~1e-7 off)
    for k, s in ((4, 2), (16, 8)):
        w64 = xp.asarray(rng.standard_normal((2, 3, k, k)))
        ref, _ = torch_grads(lambda x, w: TF.conv_transpose2d(x, w, None, s, s // 2),
                             {"x": x, "w": w64})
        for alg in ("col2im", "subpixel", "fused", "implicit", "auto") + cpu:
            y = conv_transpose2d(x, w64, None, s, s // 2, algorithm=alg)
            assert y.dtype == np.float64, (alg, s)
            assert_close(to_np(y), ref, np.float64, f"{alg}, stride {s}")


def test_conv_transpose2d_pair_and_int_arguments_agree(xp):
    rng = np.random.default_rng(8)
    x = xp.asarray(rng.standard_normal((1, 2, 4, 4)))
    wt = xp.asarray(rng.standard_normal((2, 3, 3, 3)))
    a = conv_transpose2d(x, wt, None, 2, 1, 1, 1, 1)
    b = conv_transpose2d(x, wt, None, (2, 2), (1, 1), (1, 1), 1, (1, 1))
    np.testing.assert_array_equal(to_np(a), to_np(b))
    assert conv_output_size(to_np(a).shape[2], 3, 2, 1) == 4     # it maps back onto 4x4


@pytest.mark.parametrize("algorithm", ["col2im", "subpixel", "fused", "implicit", "winograd"])
def test_conv_transpose2d_non_contiguous_inputs(xp, algorithm):
    if algorithm == "winograd" and xp is not np:
        pytest.skip("'winograd' is a CPU algorithm")
    rng = np.random.default_rng(9)
    x = xp.asarray(rng.standard_normal((2, 6, 8, 5)))[:, ::2, ::-2, :]     # (2, 3, 4, 5)
    wt = xp.asarray(rng.standard_normal((3, 2, 4, 4))).transpose(0, 1, 3, 2)
    xc, wc = xp.ascontiguousarray(x), xp.ascontiguousarray(wt)
    y = conv_transpose2d(x, wt, None, 2, 1, algorithm=algorithm)
    np.testing.assert_array_equal(to_np(y), to_np(conv_transpose2d(xc, wc, None, 2, 1,
                                                                   algorithm=algorithm)))
    dy = xp.asarray(rng.standard_normal(y.shape))
    got = conv_transpose2d_backward(dy, x, wt, 2, 1, algorithm=algorithm)
    ref = conv_transpose2d_backward(dy, xc, wc, 2, 1, algorithm=algorithm)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(to_np(g), to_np(r))


def test_auto_algorithm_choice_follows_the_measurements(monkeypatch):
    """'auto' resolves as benchmarks/HISTORY.md measured: on the CPU sub-pixel forward from
    stride 2 and backward from stride 4 with few channels; on the GPU only for a large col
    matrix; never
    where sub-pixel does not apply (dilation, groups, stride not dividing the kernel). On the
    GPU a small forward (float32/64) runs 'fused', one kernel launch."""
    from types import SimpleNamespace
    from minifcn.functional.conv import (GPU_FUSED_MAX_MACS, GPU_SUBPIXEL_MIN_COL,
                                         _pick_algorithm)

    def pick(k, s, gpu=False, backward=False, n=1, o=21, hw=16, d=1, groups=1,
             dtype=np.float32, algorithm="auto"):
        g = SimpleNamespace(kh=k, kw=k, sh=s, sw=s, dh=d, dw=d, groups=groups, gpu=gpu,
                            n=n, o=o, c=o, h=hw, w=hw, ho=(hw - 1) * s + k, wo=(hw - 1) * s + k,
                            dtype=np.dtype(dtype))
        return _pick_algorithm(algorithm, g, backward)

    assert pick(64, 32) == pick(4, 2) == pick(16, 8, backward=True) == "subpixel"
    assert pick(4, 2, backward=True) == pick(3, 1) == pick(3, 2) == "col2im"
    assert pick(8, 4, backward=True, o=64) == "col2im"             # many channels: col2im
    assert pick(8, 4, o=64) == "subpixel"
    # 'implicit': the CPU forward at stride 2 with >= 128 channels in and out, where its
    # GEMMs reach BLAS (float32/64 with NumPy's OpenBLAS)
    from minifcn.functional.blas import uses_cblas
    want = "implicit" if uses_cblas(np.float32) else "subpixel"
    assert pick(4, 2, o=256) == pick(4, 2, n=2, o=128, hw=16) == want
    # 'winograd': both directions at k4 s2; with AVX2 GEMM kernels from 128 channels and
    # 1024 input pixels in the batch; with AVX-512 ones (faster GEMMs, the same
    # transforms) from 256 channels in, 128 out, and 4096 input pixels in the batch
    import minifcn.functional.conv as conv
    monkeypatch.setattr(conv, "AVX512_GEMM", True)
    wino = "winograd" if uses_cblas(np.float32) else None

    def pick_io(c, o, n, hw, backward=False):
        g = SimpleNamespace(kh=4, kw=4, sh=2, sw=2, dh=1, dw=1, groups=1, gpu=False, n=n, o=o,
                            c=c, h=hw, w=hw, ho=2 * hw, wo=2 * hw, dtype=np.dtype(np.float32))
        return _pick_algorithm("auto", g, backward)

    assert pick_io(256, 128, 8, 32) == pick_io(256, 128, 8, 32, backward=True) == (wino or "subpixel")
    assert pick_io(256, 256, 1, 64) == (wino or "subpixel")
    assert pick_io(256, 128, 1, 32) == ("implicit" if wino else "subpixel")     # 1024 pixels
    assert pick_io(128, 128, 4, 32) == ("implicit" if wino else "subpixel")     # 128 in
    assert pick_io(256, 128, 1, 32, backward=True) == "col2im"
    assert pick_io(256, 64, 8, 32) == "subpixel"                                # 64 out
    monkeypatch.setattr(conv, "AVX512_GEMM", False)
    assert pick_io(256, 128, 1, 32) == pick_io(128, 128, 4, 32) == (wino or "subpixel")
    assert pick_io(256, 128, 1, 32, backward=True) == (wino or "col2im")
    want = "winograd" if uses_cblas(np.float32) else "subpixel"
    assert pick(4, 2, n=8, o=128, hw=32) == pick(4, 2, o=256, hw=32) == want
    assert pick(4, 2, n=4, o=256, hw=16) == pick(4, 2, n=8, o=128, hw=16) == want
    assert pick(4, 2, o=256, hw=64, backward=True) == (
        "winograd" if uses_cblas(np.float32) else "col2im")
    assert pick(4, 2, o=64, hw=64) == "subpixel"                          # too few channels
    assert pick(4, 2, o=256, hw=31) == want.replace("winograd", "implicit")  # too few pixels
    assert pick(4, 2, n=2, o=256, hw=16) == want.replace("winograd", "implicit")
    assert pick(8, 4, o=256, hw=64) == "subpixel"                         # only stride 2
    assert pick(4, 2, o=256, hw=64, dtype=np.float16) == "subpixel"       # no BLAS for it
    assert pick(4, 2, o=256, hw=64, gpu=True) != "winograd"
    assert pick(6, 3, o=256, hw=64) == "subpixel" and pick(6, 3, o=256, hw=64, backward=True) == "col2im"
    assert pick(4, 2, o=256, dtype=np.float16) == "subpixel"
    assert pick(4, 2, o=64) == pick(8, 4, o=256) == pick(16, 8, o=256) == "subpixel"
    assert pick(4, 2, o=256, backward=True) == "col2im"
    assert pick(4, 2, algorithm="implicit", backward=True) == "implicit"
    assert pick(3, 2, o=256) == pick(4, 2, o=256, d=2) == "col2im"       # implicit does not fit
    assert pick(4, 2, o=256, gpu=True) != "implicit"
    assert pick(4, 2, d=2) == pick(4, 2, groups=3, o=3) == "col2im"
    assert pick(64, 32, gpu=True, hw=16) == "col2im"                # 22M col entries
    assert 21 * 64 * 64 * 32 * 32 > GPU_SUBPIXEL_MIN_COL
    assert pick(64, 32, gpu=True, hw=32) == pick(64, 32, gpu=True, hw=32, backward=True) == "subpixel"
    # the GPU's small forwards: FCN's k4 s2 upsamplers (1.8M multiply-adds at 21 channels)
    assert 21 * 21 * 16 * 16 * 16 <= GPU_FUSED_MAX_MACS < 21 * 21 * 64 * 64 * 256
    assert pick(4, 2, gpu=True) == pick(3, 2, gpu=True, d=2) == "fused"
    assert pick(4, 2, gpu=True, dtype=np.float16) == "col2im"        # the kernel is f32/f64
    assert pick(4, 2, gpu=True, backward=True) == "col2im"           # no fused backward
    assert pick(4, 2, backward=True, algorithm="fused") == "col2im"
    assert pick(16, 8, gpu=True, hw=64) == "col2im"                  # 462M: the GEMM paths
    assert pick(4, 2, gpu=True, n=8, o=128, hw=32) == "col2im"        # 2.1G multiply-adds
    # few multiply-adds in all, but each pixel's sum too long for one thread (4096 * 2 * 2)
    g = SimpleNamespace(kh=4, kw=4, sh=2, sw=2, dh=1, dw=1, groups=1, gpu=True, n=1, o=1,
                        c=4096, h=1, w=1, ho=4, wo=4, dtype=np.dtype(np.float32))
    assert _pick_algorithm("auto", g) == "col2im"


@pytest.mark.parametrize("algorithm", ["col2im", "subpixel", "fused", "implicit", "winograd", "auto"])
def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients(algorithm):
    """N = 0 (a data loader's last, empty batch): every algorithm returns the empty shapes
    and dW = db = 0, as torch does — none of them may index the first image."""
    x, wt = np.zeros((0, 128, 4, 4), np.float32), np.ones((128, 128, 4, 4), np.float32)
    y = conv_transpose2d(x, wt, np.ones(128, np.float32), 2, 1, algorithm=algorithm)
    assert y.shape == (0, 128, 8, 8) and y.dtype == np.float32
    y32 = conv_transpose2d(np.zeros((0, 21, 4, 4), np.float32),         # FCN-32s's x32: on the
                           np.ones((21, 21, 64, 64), np.float32), None,  # CPU 'subpixel' runs
                           32, 16, algorithm=algorithm)                  # it channels-last
    assert y32.shape == (0, 21, 128, 128)
    dx, dw, db = conv_transpose2d_backward(np.zeros(y.shape, np.float32), x, wt, 2, 1,
                                           algorithm=algorithm)
    assert dx.shape == x.shape and dw.shape == wt.shape and db.shape == (128,)
    assert not dw.any() and not db.any()


@pytest.mark.parametrize("algorithm", ["col2im", "subpixel", "fused", "implicit", "winograd", "auto"])
@pytest.mark.parametrize("cin,cout", [(0, 3), (2, 0)])
def test_zero_channels_give_zeros_plus_bias(algorithm, cin, cout):
    """No input channels: the output is the bias alone; no output channels: an empty map.
    'subpixel' (and 'auto' picking it) died in a reshape of the empty arrays."""
    x = np.zeros((2, cin, 4, 4))
    wt = np.zeros((cin, cout, 4, 4))
    bias = np.arange(cout, dtype=np.float64)
    y = conv_transpose2d(x, wt, bias, 2, 1, algorithm=algorithm)
    assert y.shape == (2, cout, 8, 8)
    np.testing.assert_array_equal(y, np.broadcast_to(bias[None, :, None, None], y.shape))
    # and the backward: zero gradients of the right shapes ('winograd' died reshaping its
    # empty products with O = 0)
    dx, dw, db = conv_transpose2d_backward(np.ones(y.shape), x, wt, 2, 1, algorithm=algorithm)
    assert (dx.shape, dw.shape, db.shape) == (x.shape, wt.shape, (cout,))
    assert not dx.any() and not dw.any()
    np.testing.assert_array_equal(db, np.full(cout, 2 * 8 * 8.0))


# Where the sub-pixel and implicit algorithms pad with zeros (the phases' zero taps when s
# does not divide k, the padded input and the zero border of the un-shuffled dy), an inf
# or NaN meeting such a zero gave NaN where 'col2im' and torch's float64 reference path
# give 0 or inf. These shapes put one inf where that happened. (torch's float32 oneDNN
# kernels, taken from batch 2 on, form fewer zero products still: an inf of x meeting
# the zero padding of dy in dW is NaN in float64 and in 'col2im', not there.)
NON_FINITE_CASES = [
    # (x shape, k, s, p, where the inf goes: "x" or "dy", its index)
    ((1, 1, 3, 3), 3, 2, 1, "x", (1, 1)),       # k3 s2: a padded tap per phase row/column
    ((1, 1, 3, 3), 1, 3, 0, "x", (1, 1)),
    ((1, 1, 3, 3), 3, 2, 1, "dy", (2, 2)),
    ((1, 1, 2, 2), 8, 4, 2, "dy", (1, 1)),      # k = 2s ('auto' takes subpixel): dW
    ((1, 2, 4, 4), 4, 2, 1, "dy", (0, 0)),      # k4 s2 p1 (implicit's grid): dW
    ((1, 2, 4, 4), 4, 2, 1, "x", (3, 3)),
    ((1, 1, 2, 2), 4, 2, 1, "w", (0, 0)),       # an inf tap meets the zero border of x
    ((1, 2, 4, 4), 4, 2, 1, "w", (1, 2)),
    ((1, 1, 3, 3), 3, 2, 1, "w", (2, 0)),
]


@pytest.mark.parametrize("case", NON_FINITE_CASES)
@pytest.mark.parametrize("algorithm", ["col2im", "subpixel", "implicit", "winograd", "auto"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_values_reach_only_where_torch_puts_them(case, algorithm):
    import torch
    shape, k, s, p, where, index = case
    if algorithm == "winograd" and k != 2 * s:
        pytest.skip("'winograd' needs k = 2s")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    wt = rng.standard_normal((shape[1], 2, k, k))
    y_shape = conv_transpose2d(np.zeros(shape), wt, None, s, p).shape
    dy = rng.standard_normal(y_shape)
    {"x": x, "dy": dy, "w": wt}[where][(0, 0, *index)] = np.inf
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(wt, requires_grad=True)
    ty = TF.conv_transpose2d(tx, tw, stride=s, padding=p)
    ty.backward(torch.tensor(dy))
    got_y = conv_transpose2d(x, wt, None, s, p, algorithm=algorithm)
    got_dx, got_dw, _ = conv_transpose2d_backward(dy, x, wt, s, p, algorithm=algorithm)
    for name, got, ref in (("y", got_y, ty.detach().numpy()), ("dx", got_dx, tx.grad.numpy()),
                           ("dW", got_dw, tw.grad.numpy())):
        assert_same_non_finite(got, ref, name)


@pytest.mark.parametrize("algorithm", ["col2im", "subpixel", "fused", "implicit", "winograd", "auto"])
def test_backward_gradients_take_the_dtype_of_all_three(algorithm):
    """dx and dW come in result_type(dy, x, W) whatever the path: 'implicit' narrowed a
    float64 dy to float32, and conv2d_backward's row bands kept dy's dtype."""
    rng = np.random.default_rng(0)
    x, wt = rng.standard_normal((1, 128, 6, 6), np.float32), rng.standard_normal((128, 128, 4, 4), np.float32)
    dy = rng.standard_normal((1, 128, 12, 12))                               # float64
    dx, dw, db = conv_transpose2d_backward(dy, x, wt, 2, 1, algorithm=algorithm)
    assert (dx.dtype, dw.dtype) == (np.float64, np.float64)
    # and computed in float64 (a path that narrowed and cast back would be ~1e-7 off)
    _, grads = torch_grads(lambda x, w: TF.conv_transpose2d(x, w, None, 2, 1), {"x": x, "w": wt}, dy)
    assert_close(dx, grads["x"], np.float64, "dx")
    assert_close(dw, grads["w"], np.float64, "dW")


def test_conv2d_backward_dtype_does_not_depend_on_the_image_size(monkeypatch):
    import minifcn.functional.conv as conv
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 3, 3))                                    # float64
    x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    dy = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    _, grads = torch_grads(lambda x, w: TF.conv2d(x, w, None, 1, 1), {"x": x, "w": w}, dy)
    dtypes = set()
    for budget in (1 << 30, 64):                                             # one band, many
        monkeypatch.setattr(conv, "CPU_BAND_BYTES", budget)
        dx, dw, _ = conv2d_backward(dy, x, w, 1, 1)
        dtypes.add((dx.dtype, dw.dtype))
        assert_close(dx, grads["x"], np.float64, f"dx, band budget {budget}")   # in float64
        assert_close(dw, grads["w"], np.float64, f"dW, band budget {budget}")
    assert dtypes == {(np.dtype(np.float64), np.dtype(np.float64))}
