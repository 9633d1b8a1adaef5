"""The CUDA kernels against the NumPy path of minifcn.functional.

Every test body runs the package's host code (:mod:`minifcn.kernels.ops`) and its ``.cu``
kernels through a *runtime*: the CPU emulator (``tests/cuda_emu``: the same source compiled
by g++) everywhere, and CuPy on a real GPU where one is usable (marked ``gpu``, skipped with
the reason otherwise). Each is run over launch shapes that stress the grid-stride loops
(one thread, one block, odd sizes, a mostly idle grid) and over both index paths (32-bit
where it fits, forced 64-bit). The references are the NumPy functions, never the kernels.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minifcn import functional as F
from minifcn.functional.im2col import _col2im, _im2col, conv_output_size
from minifcn.functional.pool import _pool_geometry
from minifcn.kernels import ops
from minifcn.kernels.runtime import kernel_path
from tests.cuda_emu import EmulatedModule, EmulatedRuntime, compiler_available
from tests.cuda_emu.testing import INDEX_DEFINES, LAUNCHES, get, gpu_skip_reason, put, runtime

DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# (launch, index path) pairs each test body runs under
CONFIGS = [("auto", "i32"), ("auto", "i64"), ("1thread", "i64"), ("1block", "i32"),
           ("odd", "i32/64"), ("idle", "i64")]


@pytest.fixture(scope="module", params=["emu", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend_name(request):
    if request.param == "cuda":
        reason = gpu_skip_reason()
        if reason:
            pytest.skip(reason)
    elif not compiler_available():
        pytest.skip("the CPU emulator needs g++ (set CXX to another C++17 compiler)")
    return request.param


@pytest.fixture(params=CONFIGS, ids=[f"{l}-{i}" for l, i in CONFIGS])
def rt(request, backend_name):
    return runtime(backend_name, *request.param)


def assert_close(got, ref, dtype, what=""):
    """``max|got - ref| <= tol * max|ref|`` (float32 1e-5, float64 1e-12)."""
    got, ref = get(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != {ref.dtype}"
    if ref.size == 0:
        return
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= TOL[np.dtype(dtype)] * scale, f"{what}: max error {err:.3e} (scale {scale:.3g})"


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# -- im2col / col2im ----------------------------------------------------------------------------

# (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), extra windows (rows, cols)
GEOMETRIES = [
    ((2, 3, 5, 6), (1, 1), (1, 1), (0, 0), (1, 1), (0, 0)),     # 1x1 convolution
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1), (0, 0)),     # VGG's 3x3 / pad 1
    ((1, 2, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), (0, 0)),     # pooling windows, no overlap
    ((2, 2, 4, 5), (4, 4), (2, 2), (1, 1), (1, 1), (0, 0)),     # k4 s2 p1 (an FCN upsampler)
    ((1, 2, 64, 64), (64, 64), (32, 32), (16, 16), (1, 1), (0, 0)),  # FCN-32s's k64 s32 p16
    ((1, 3, 34, 34), (16, 16), (8, 8), (4, 4), (1, 1), (0, 0)),  # k16 s8 p4
    ((1, 2, 9, 10), (2, 2), (3, 3), (0, 0), (1, 1), (0, 0)),    # stride > kernel: gaps
    ((1, 2, 9, 9), (3, 3), (1, 1), (2, 2), (2, 2), (0, 0)),     # dilation 2
    ((1, 2, 11, 12), (3, 2), (2, 3), (1, 2), (3, 2), (0, 0)),   # dilation and stride coprime
    ((1, 2, 13, 12), (3, 3), (4, 4), (1, 0), (2, 2), (0, 0)),   # gcd(s, d) = 2: unreachable rows
    ((1, 1, 15, 14), (2, 3), (6, 4), (2, 1), (4, 6), (0, 0)),   # gcd 2 both ways, mixed
    ((2, 1, 7, 5), (3, 1), (1, 2), (0, 2), (1, 1), (0, 0)),     # non-square everything
    ((1, 2, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1), (0, 0)),     # a single pixel
    ((1, 2, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1), (1, 2)),     # extra windows (ceil mode)
    ((1, 1, 6, 5), (2, 2), (3, 2), (0, 1), (2, 1), (2, 1)),     # extra windows past the padding
    ((3, 4, 3, 3), (5, 5), (1, 1), (2, 2), (1, 1), (0, 0)),     # kernel bigger than the image
]


def _geometry_id(g):
    shape, k, s, p, d, e = g
    return f"x{'x'.join(map(str, shape))}-k{k[0]}{k[1]}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}-e{e[0]}{e[1]}"


def _windows(g):
    (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (eh, ew) = g
    ho = conv_output_size(h, kh, sh, ph, dh) + eh
    wo = conv_output_size(w, kw, sw, pw, dw) + ew
    assert ho > 0 and wo > 0, g
    return (n, c, h, w), (kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_im2col(rt, geometry, dtype):
    shape, win = _windows(geometry)
    x = randn(np.random.default_rng(0), shape, dtype)
    got = ops.im2col(rt, put(rt, x), *win)
    np.testing.assert_array_equal(get(got), _im2col(x, *win))   # a copy: exact


@pytest.mark.parametrize("kernel", ops.COL2IM_KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_col2im(rt, geometry, dtype, kernel):
    """Every col2im kernel (and 'auto') against both NumPy strategies."""
    (n, c, h, w), win = _windows(geometry)
    kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = win
    if kernel in ("phase", "rowblock") and (dh, dw) != (1, 1):
        with pytest.raises(ValueError, match="needs dilation 1"):
            ops.col2im(rt, put(rt, np.zeros((n, c, kh, kw, ho, wo), dtype)), h, w, sh, sw,
                       ph, pw, dh, dw, kernel)
        return
    col = randn(np.random.default_rng(1), (n, c, kh, kw, ho, wo), dtype)
    got = ops.col2im(rt, put(rt, col), h, w, sh, sw, ph, pw, dh, dw, kernel)
    for method in ("taps", "blocks") if (dh, dw) == (1, 1) else ("taps",):
        assert_close(got, _col2im(col, h, w, sh, sw, ph, pw, dh, dw, method), dtype, method)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_col2im_is_the_adjoint_of_im2col(rt, geometry):
    """<im2col(x), c> == <x, col2im(c)>, from the kernels alone (float64)."""
    (n, c, h, w), win = _windows(geometry)
    kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = win
    rng = np.random.default_rng(2)
    x, col = randn(rng, (n, c, h, w), np.float64), randn(rng, (n, c, kh, kw, ho, wo), np.float64)
    lhs = float(np.vdot(get(ops.im2col(rt, put(rt, x), *win)), col))
    rhs = float(np.vdot(x, get(ops.col2im(rt, put(rt, col), h, w, sh, sw, ph, pw, dh, dw))))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_im2col_of_a_band_of_rows(rt, geometry):
    """A band of output rows ``r0 .. r1`` is asked for with padding ``ph - r0*sh`` (negative
    once the band starts below the top padding) and ``ho = r1 - r0``, as conv2d's row
    bands do: it must be those rows of the whole col matrix."""
    shape, win = _windows(geometry)
    kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = win
    x = randn(np.random.default_rng(5), shape, np.float32)
    full = _im2col(x, *win)
    for r0 in range(ho):
        for r1 in range(r0 + 1, min(ho, r0 + 3) + 1):
            band = (kh, kw, sh, sw, ph - r0 * sh, pw, dh, dw, r1 - r0, wo)
            np.testing.assert_array_equal(get(ops.im2col(rt, put(rt, x), *band)),
                                          full[..., r0:r1, :])


def test_col2im_is_deterministic(backend_name):
    """A gather writes each pixel once, in a fixed order: the same bits every run. (The
    emulator runs threads one after another, so there the runs would agree even for a
    scatter with atomics; what makes the kernels deterministic is that they have none:
    the source is checked for atomics too.)"""
    import pathlib
    source = (pathlib.Path(ops.__file__).parent / "im2col.cu").read_text()
    assert "atomicAdd(" not in source and "atomicCAS(" not in source
    rt = runtime(backend_name)
    col = randn(np.random.default_rng(3), (1, 3, 16, 16, 9, 9), np.float32)
    runs = [get(ops.col2im(rt, put(rt, col), 72, 72, 8, 8, 4, 4, 1, 1)) for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_im2col_col2im_random_geometry(backend_name, data):
    """Random geometries, launches and index paths; both ops against NumPy."""
    draw = data.draw
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sh, sw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dh, dw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    h = draw(st.integers(1, 10)) + max(0, dh * (kh - 1) - 2 * ph)    # at least one window
    w = draw(st.integers(1, 10)) + max(0, dw * (kw - 1) - 2 * pw)
    ho = conv_output_size(h, kh, sh, ph, dh) + draw(st.integers(0, 2))
    wo = conv_output_size(w, kw, sw, pw, dw) + draw(st.integers(0, 2))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    rt = runtime(backend_name, draw(st.sampled_from(sorted(LAUNCHES))),
                 draw(st.sampled_from(sorted(INDEX_DEFINES))))
    win = (kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
    rng = np.random.default_rng(4)
    x = randn(rng, (n, c, h, w), dtype)
    np.testing.assert_array_equal(get(ops.im2col(rt, put(rt, x), *win)), _im2col(x, *win))
    col = randn(rng, (n, c, kh, kw, ho, wo), dtype)
    kernel = draw(st.sampled_from(ops.COL2IM_KERNELS if (dh, dw) == (1, 1) else ("auto", "gather")))
    assert_close(ops.col2im(rt, put(rt, col), h, w, sh, sw, ph, pw, dh, dw, kernel),
                 _col2im(col, h, w, sh, sw, ph, pw, dh, dw, "taps"), dtype, f"col2im {kernel}")


# -- conv_transpose2d in one kernel ---------------------------------------------------------------

# (N, C_in, C_out, H, W), kernel, stride, padding, output_padding, dilation, groups, bias
DECONVS = [
    ((2, 3, 4, 5, 6), 4, 2, 1, 0, 1, 1, True),             # FCN's k4 s2 p1
    ((1, 2, 3, 2, 2), 64, 32, 16, 0, 1, 1, False),         # FCN-32s's k64 s32 p16
    ((1, 2, 2, 3, 4), 8, 4, 2, 1, 1, 1, True),             # k8 s4, output padding
    ((1, 4, 6, 4, 5), (3, 2), (2, 3), (1, 0), (1, 2), (2, 1), 2, True),   # groups, dilation
    ((1, 2, 3, 3, 4), 2, 3, 0, 2, 1, 1, False),            # stride > kernel: rows no tap reaches
    ((1, 2, 2, 6, 5), 3, 4, 1, 1, 2, 1, False),            # gcd(s, d) = 2
    ((2, 3, 2, 5, 5), 3, 1, 1, 0, 1, 1, True),             # stride 1
    ((1, 6, 6, 3, 3), 3, 2, 0, 0, 1, 3, True),             # 3 groups of 2
    ((1, 2, 1, 1, 1), 3, 2, 0, 1, 1, 1, False),            # a single pixel
]


def _deconv_id(case):
    shape, k, s, p, op, d, g, b = case
    return f"x{'x'.join(map(str, shape))}-k{k}-s{s}-p{p}-op{op}-d{d}-g{g}-{'bias' if b else 'nobias'}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", DECONVS, ids=_deconv_id)
def test_conv_transpose2d_fused_kernel(rt, case, dtype):
    """The one-kernel transposed convolution against torch (float64)."""
    torch = pytest.importorskip("torch")
    (n, cin, cout, h, w), k, s, p, op, d, groups, bias = case
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pair(k), pair(s), pair(p), pair(d)
    rng = np.random.default_rng(6)
    x = randn(rng, (n, cin, h, w), dtype)
    wt = randn(rng, (cin, cout // groups, kh, kw), dtype)
    b = randn(rng, (cout,), dtype) if bias else None
    ref = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x.astype(np.float64)), torch.from_numpy(wt.astype(np.float64)),
        None if b is None else torch.from_numpy(b.astype(np.float64)),
        pair(s), pair(p), pair(op), groups, pair(d)).numpy()
    got = ops.conv_transpose2d(rt, put(rt, x), put(rt, wt), None if b is None else put(rt, b),
                               groups, ref.shape[2], ref.shape[3], sh, sw, ph, pw, dh, dw)
    assert_close(got, ref.astype(dtype), dtype, "conv_transpose2d")


def test_conv_transpose2d_fused_kernel_refuses_mismatched_arguments(backend_name):
    """The kernel trusts its sizes: the host code refuses what would read out of bounds."""
    rt = runtime(backend_name)
    x, w = np.zeros((1, 2, 3, 3), np.float32), np.zeros((2, 2, 3, 3), np.float64)
    with pytest.raises(TypeError, match="weight is float64 but the input is float32"):
        ops.conv_transpose2d(rt, put(rt, x), put(rt, w), None, 1, 5, 5, 1, 1, 0, 0, 1, 1)
    w = np.zeros((3, 2, 3, 3), np.float32)                       # 3 weight rows for 2 channels
    with pytest.raises(ValueError, match=r"weight \(3, 2, 3, 3\) with groups=1 do not fit"):
        ops.conv_transpose2d(rt, put(rt, x), put(rt, w), None, 1, 5, 5, 1, 1, 0, 0, 1, 1)
    w = np.zeros((2, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="groups=3 do not fit"):
        ops.conv_transpose2d(rt, put(rt, x), put(rt, w), None, 3, 5, 5, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \(3,\)"):
        ops.conv_transpose2d(rt, put(rt, x), put(rt, w), put(rt, np.zeros(3, np.float32)), 1,
                             5, 5, 1, 1, 0, 0, 1, 1)


def test_conv_transpose2d_on_the_gpu_path_runs_the_fused_kernel(monkeypatch):
    """The wiring without a GPU: functional.conv_transpose2d as it runs on one ('auto' on a
    small problem -> 'fused' -> gpu_conv_transpose2d -> ops -> conv_transpose.cu), with the
    emulator as the runtime, against torch."""
    torch = pytest.importorskip("torch")
    if not compiler_available():
        pytest.skip("the CPU emulator needs g++")
    import minifcn.functional.conv as conv_module
    import minifcn.kernels as kernels
    calls = []

    def emulated_runtime():
        calls.append(1)
        return runtime("emu")

    monkeypatch.setattr(kernels, "cupy_runtime", emulated_runtime)
    monkeypatch.setattr(conv_module, "get_array_module", lambda a: "a GPU array module")
    rng = np.random.default_rng(9)
    x = randn(rng, (2, 21, 8, 8), np.float32)
    wt = randn(rng, (21, 21, 4, 4), np.float32)
    b = randn(rng, (21,), np.float32)
    y = F.conv_transpose2d(x, wt, b, 2, 1)                  # algorithm='auto'
    # one kernel launch, bias included; no GEMM (the array module is a string here: any
    # xp.* call would fail)
    assert len(calls) == 1, "auto should take the one fused kernel for a small problem"
    ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).double(),
                                               torch.from_numpy(wt).double(),
                                               torch.from_numpy(b).double(), 2, 1).numpy()
    assert_close(y, ref.astype(np.float32), np.float32, "auto -> fused on the GPU path")


class _NumpyPosingAsGpu(types.ModuleType):
    """NumPy under another name: ``get_array_module`` returning it sends the functional
    code down its GPU branches (``xp is not np``) with NumPy arrays, which the emulator
    runs the kernels on."""

    def __getattr__(self, name):
        return getattr(np, name)


def _take_gpu_branches(monkeypatch, banded=False):
    """Send the package down its GPU branches (every module's ``get_array_module``
    answers the NumPy-posing-as-GPU module), kernels on the emulator; ``banded``: the
    convolutions in bands of one row (GPU_BAND_BYTES = 1)."""
    torch = pytest.importorskip("torch")
    if not compiler_available():
        pytest.skip("the CPU emulator needs g++")
    import sys
    import minifcn.backend
    import minifcn.functional.conv as conv_module
    import minifcn.kernels as kernels
    import minifcn.models  # noqa: F401  (every layer module loaded before the patching below)
    import minifcn.nn.layers
    import minifcn.nn.structural
    gpu_numpy = _NumpyPosingAsGpu("numpy_posing_as_gpu")
    launched = set()
    monkeypatch.setattr(kernels, "cupy_runtime", lambda: _RecordingRuntime(launched))
    for name, module in list(sys.modules.items()):       # the ops and layers; not the code
        if (name.startswith(("minifcn.functional", "minifcn.kernels", "minifcn.nn.layers",
                             "minifcn.nn.structural")) and     # that moves arrays to devices
                getattr(module, "get_array_module", None) is minifcn.backend.get_array_module):
            monkeypatch.setattr(module, "get_array_module", lambda *a: gpu_numpy)
    for module in (conv_module, minifcn.nn.layers, minifcn.nn.structural,
                   sys.modules["minifcn.functional.im2col"], sys.modules["minifcn.functional.pool"],
                   sys.modules["minifcn.functional.activation"]):
        assert module.get_array_module(np.zeros(1)) is gpu_numpy, module.__name__
    if banded:
        monkeypatch.setattr(conv_module, "GPU_BAND_BYTES", 1)
        monkeypatch.setattr(conv_module, "MIN_BAND_WINDOWS", 1)
    return torch, launched


class _RecordingRuntime:
    """The emulator's runtime, noting the name of every kernel launched."""

    def __init__(self, launched):
        self.emu, self.launched = runtime("emu"), launched
        self.xp = self.emu.xp

    def launch_config(self, total):
        return self.emu.launch_config(total)

    def function(self, path, name):
        self.launched.add(name)
        return self.emu.function(path, name)


@pytest.mark.parametrize("banded", [False, True], ids=["whole", "bands"])
@pytest.mark.parametrize("algorithm", ["col2im", "subpixel", "fused", "implicit", "auto"])
def test_transposed_convolution_gpu_branches_on_the_emulator(monkeypatch, algorithm, banded):
    """conv_transpose2d and its backward down the GPU branches of functional/ (kernels by
    the emulator, GEMMs by NumPy), whole and in one-row bands (GPU_BAND_BYTES), against
    torch: the code that runs on a GPU, without one."""
    torch, launched = _take_gpu_branches(monkeypatch, banded)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 5, 4))
    wt = rng.standard_normal((3, 4, 4, 4))
    b = rng.standard_normal(4)
    y = F.conv_transpose2d(x, wt, b, 2, 1, algorithm=algorithm)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv_transpose2d_backward(dy, x, wt, 2, 1, algorithm=algorithm)
    xt, wtt, bt = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    yt = torch.nn.functional.conv_transpose2d(xt, wtt, bt, 2, 1)
    yt.backward(torch.tensor(dy))
    for name, got, ref in (("y", y, yt), ("dx", dx, xt.grad), ("dW", dw, wtt.grad),
                           ("db", db, bt.grad)):
        assert_close(got, ref.detach().numpy(), np.float64, f"{name} [{algorithm}]")
    # the forward's kernels (auto: the fused one, for this small problem), the backward's
    # im2col; 'implicit' launches none: its GEMMs and (un)shuffles are array operations
    forward = {"col2im": {"col2im_rowblock_f64"}, "subpixel": {"im2col_f64", "col2im_rowblock_f64"},
               "fused": {"conv_transpose2d_f64"}, "implicit": set(),
               "auto": {"conv_transpose2d_f64"}}[algorithm]
    if algorithm == "implicit":
        assert launched == set(), launched
    else:
        assert forward | {"im2col_f64"} <= launched, launched


@pytest.mark.parametrize("banded", [False, True], ids=["whole", "bands"])
@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 2, 2)])
def test_convolution_gpu_branches_on_the_emulator(monkeypatch, stride, padding, dilation,
                                                  groups, banded):
    """conv2d and its backward down the GPU branches (row bands included), against torch."""
    torch, launched = _take_gpu_branches(monkeypatch, banded)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 7, 6))
    wt = rng.standard_normal((6, 4 // groups, 3, 3))
    b = rng.standard_normal(6)
    y = F.conv2d(x, wt, b, stride, padding, dilation, groups)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, x, wt, stride, padding, dilation, groups)
    xt, wtt, bt = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    yt = torch.nn.functional.conv2d(xt, wtt, bt, stride, padding, dilation, groups)
    yt.backward(torch.tensor(dy))
    for name, got, ref in (("y", y, yt), ("dx", dx, xt.grad), ("dW", dw, wtt.grad),
                           ("db", db, bt.grad)):
        assert_close(got, ref.detach().numpy(), np.float64, name)
    assert "im2col_f64" in launched, launched


@pytest.mark.parametrize("name", ["fcn32s", "fcn8s"])
def test_whole_model_gpu_branches_on_the_emulator(monkeypatch, name):
    """A whole FCN, forward and backward (every weight's gradient), down the GPU branches
    of every layer, against torch: conv, transposed conv, ReLU, max pool, crop, add."""
    _, launched = _take_gpu_branches(monkeypatch)
    from test_models import _check_whole_model
    _check_whole_model(name, "notes", "cpu")
    assert {"im2col_f64", "relu_f64", "relu_backward_f64", "max_pool2d_f64",
            "max_pool2d_backward_f64", "conv_transpose2d_f64"} <= launched, launched


# -- max pooling -------------------------------------------------------------------------------

# (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
POOLS = [
    ((2, 3, 8, 8), 2, 2, 0, 1, False),          # VGG's pool
    ((1, 2, 7, 9), 2, 2, 0, 1, True),           # odd sizes, ceil mode (Caffe's FCN)
    ((1, 2, 9, 8), 3, 2, 1, 1, False),          # overlapping windows, padding
    ((1, 2, 9, 8), 3, 2, 1, 1, True),
    ((2, 1, 10, 11), 3, 1, 1, 2, False),        # dilation
    ((1, 2, 5, 6), (2, 3), (3, 1), (1, 0), (1, 2), True),
    ((1, 1, 2, 2), 2, 2, 1, 3, False),          # a window that holds no pixel at all
    ((1, 2, 6, 6), 1, 2, 0, 1, False),          # kernel 1: a strided copy
    ((1, 1, 4, 4), 5, 1, 2, 1, False),          # every window sees most of the image
]


def _pool_id(p):
    shape, k, s, pad, d, ceil = p
    return f"x{'x'.join(map(str, shape))}-k{k}-s{s}-p{pad}-d{d}{'-ceil' if ceil else ''}"


def pool_input(kind, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return randn(rng, shape, dtype)
    x = rng.integers(0, 3, shape).astype(dtype)                # many ties
    if kind == "minus_inf":                 # windows of -inf only: the first pixel, not padding
        x[rng.random(shape) < 0.8] = -np.inf
    if kind == "special":
        flat = x.reshape(-1)
        for value in (np.nan, -np.inf, np.inf, np.nan):
            flat[rng.integers(0, flat.size)] = value
    return x


@pytest.mark.parametrize("values", ["normal", "ties", "special", "minus_inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
def test_max_pool2d(rt, pool, dtype, values):
    shape, k, s, p, d, ceil = pool
    x = pool_input(values, shape, dtype)
    ref_y, ref_tap = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    geometry = _pool_geometry(x, k, s, p, d, ceil)
    y, tap = ops.max_pool2d(rt, put(rt, x), *geometry)
    np.testing.assert_array_equal(get(y), ref_y)      # NaN == NaN here; selection is exact
    np.testing.assert_array_equal(get(tap), ref_tap)
    assert get(tap).dtype == np.int32


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
def test_max_pool2d_backward(rt, pool, dtype):
    shape, k, s, p, d, ceil = pool
    x = pool_input("ties", shape, dtype, seed=1)
    y, tap = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)   # NumPy's taps
    dy = randn(np.random.default_rng(2), y.shape, dtype)
    ref = F.max_pool2d_backward(dy, tap, shape[2:], k, s, p, d, ceil)
    kh, kw, sh, sw, ph, pw, dh, dw, _, _ = _pool_geometry(x, k, s, p, d, ceil)
    got = ops.max_pool2d_backward(rt, put(rt, dy), put(rt, tap), shape[2], shape[3],
                                  kh, kw, sh, sw, ph, pw, dh, dw)
    assert_close(got, ref, dtype, "dx")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_max_pool2d_random_geometry(backend_name, data):
    draw = data.draw
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))   # torch's limit
    sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h = draw(st.integers(1, 10)) + max(0, dh * (kh - 1) - 2 * ph)
    w = draw(st.integers(1, 10)) + max(0, dw * (kw - 1) - 2 * pw)
    ceil, dtype = draw(st.booleans()), draw(st.sampled_from(DTYPES))
    rt = runtime(backend_name, draw(st.sampled_from(sorted(LAUNCHES))),
                 draw(st.sampled_from(sorted(INDEX_DEFINES))))
    x = pool_input(draw(st.sampled_from(["normal", "ties", "special"])), (2, 2, h, w), dtype)
    ref_y, ref_tap = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil, True)
    geometry = _pool_geometry(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil)
    y, tap = ops.max_pool2d(rt, put(rt, x), *geometry)
    np.testing.assert_array_equal(get(y), ref_y)
    np.testing.assert_array_equal(get(tap), ref_tap)
    dy = randn(np.random.default_rng(5), ref_y.shape, dtype)
    ref = F.max_pool2d_backward(dy, ref_tap, (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil)
    got = ops.max_pool2d_backward(rt, put(rt, dy), put(rt, ref_tap), h, w, *geometry[:8])
    assert_close(got, ref, dtype, "dx")


# -- ReLU and dropout -------------------------------------------------------------------------------

SHAPES = [(0,), (1,), (7, 3), (2, 3, 5, 7)]


def relu_input(shape, dtype):
    x = randn(np.random.default_rng(6), shape, dtype)
    flat = x.reshape(-1)
    for i, v in enumerate([np.nan, -0.0, 0.0, np.inf, -np.inf][:flat.size]):
        flat[(i * 7) % flat.size] = v
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu(rt, dtype, shape):
    x = relu_input(shape, dtype)
    np.testing.assert_array_equal(get(ops.relu(rt, put(rt, x))), F.relu(x))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu_backward(rt, dtype, shape):
    y = F.relu(relu_input(shape, dtype))
    dy = randn(np.random.default_rng(7), shape, dtype)
    got = ops.relu_backward(rt, put(rt, dy), put(rt, y))
    np.testing.assert_array_equal(get(got), F.relu_backward(dy, y))


class FixedDraws:
    """Stands in for a random Generator: hands out given uniform draws (float32)."""

    def __init__(self, u):
        self.u = u

    def random(self, shape, dtype=np.float64):
        assert tuple(shape) == self.u.shape and np.dtype(dtype) == np.float32
        return self.u


def dropout_draws(shape, p, seed=8):
    u = np.random.default_rng(seed).random(shape, dtype=np.float32)
    flat = u.reshape(-1)
    if flat.size >= 2:                     # the boundary, compared in float32 as NumPy does
        flat[0] = np.float32(p)
        flat[1] = np.nextafter(np.float32(p), np.float32(0))
    return u


# relu_input holds +-inf: a dropped inf is inf * 0 = NaN, in torch as in NumPy, which warns
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("channelwise", [False, True], ids=["elementwise", "channelwise"])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_dropout(rt, dtype, p, channelwise):
    shape = (2, 3, 4, 5)
    x = relu_input(shape, dtype)
    u = dropout_draws((2, 3, 1, 1) if channelwise else shape, p)
    y, mask = ops.dropout(rt, put(rt, x), put(rt, u), p)
    if p == 0.0:                            # F.dropout skips the mask; it would be all ones
        ref_y, ref_mask = x, np.ones(u.shape, dtype)
    else:
        ref_y, ref_mask = F.dropout(x, p, True, FixedDraws(u), channelwise)
    np.testing.assert_array_equal(get(mask), ref_mask)
    np.testing.assert_array_equal(get(y), ref_y)
    dy = randn(np.random.default_rng(9), shape, dtype)
    dx = ops.dropout_backward(rt, put(rt, dy), put(rt, ref_mask))
    np.testing.assert_array_equal(get(dx), F.dropout_backward(dy, ref_mask))


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_channelwise_dropout_of_an_empty_map_still_draws_its_mask(rt, p):
    # no thread runs for an empty x: the mask was left as uninitialised memory
    x = np.zeros((2, 3, 0, 5), np.float32)
    u = dropout_draws((2, 3, 1, 1), p)
    y, mask = ops.dropout(rt, put(rt, x), put(rt, u), p)
    ref_y, ref_mask = F.dropout(x, p, True, FixedDraws(u), True)
    assert get(y).shape == x.shape
    np.testing.assert_array_equal(get(mask), ref_mask)


def test_dropout_rejects_draws_of_the_wrong_shape():
    rt = runtime("emu")
    with pytest.raises(ValueError, match="do not fit"):
        ops.dropout(rt, np.zeros((2, 3, 4, 5), np.float32), np.zeros((1, 3, 1, 1), np.float32), 0.5)


# -- softmax cross-entropy -------------------------------------------------------------------------

# (N, K, H, W), share of ignored pixels, logit scale, label dtype, ignore_index
LOSSES = [
    ((2, 21, 5, 6), 0.2, 1.0, np.uint8, 255),
    ((1, 3, 7, 7), 0.0, 1.0, np.int64, 255),
    ((3, 2, 1, 4), 0.5, 1000.0, np.int32, -100),   # huge logits: needs the max shift
    ((1, 5, 3, 3), 1.0, 1.0, np.int64, 255),       # every pixel ignored
    ((1, 1, 2, 3), 0.0, 1.0, np.int64, 255),       # one class: loss 0, gradient 0
]


def loss_inputs(case, dtype, seed=10):
    (n, k, h, w), ignored, scale, label_dtype, ignore_index = case
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, k, h, w)) * scale).astype(dtype)
    labels = rng.integers(0, k, (n, h, w))
    labels[rng.random((n, h, w)) < ignored] = ignore_index
    return logits, labels.astype(label_dtype), ignore_index


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", LOSSES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-ign{c[1]}-s{c[2]:g}-{np.dtype(c[3]).name}")
def test_softmax_cross_entropy(rt, case, dtype):
    logits, labels, ignore = loss_inputs(case, dtype)
    valid = labels != ignore
    count = int(valid.sum())
    loss = get(ops.softmax_cross_entropy(rt, put(rt, logits), put(rt, labels), ignore))
    assert loss.shape == labels.shape and loss.dtype == dtype
    assert np.all(loss[~valid] == 0)
    ref_pixel = -np.take_along_axis(F.log_softmax(logits), np.where(valid, labels, 0).astype(np.int64)[:, None], 1)[:, 0]
    assert_close(np.where(valid, loss, 0), np.where(valid, ref_pixel, 0).astype(dtype), dtype, "per pixel")
    for reduction in ("mean", "sum"):
        ref = F.softmax_cross_entropy(logits, labels, ignore, reduction)
        total = float(loss.sum(dtype=np.float64))
        got = (total / count if reduction == "mean" else total) if count else 0.0
        assert abs(got - ref) <= TOL[np.dtype(dtype)] * max(1.0, abs(ref)), reduction
        denom = count if reduction == "mean" and count else 1
        grad = ops.softmax_cross_entropy_backward(rt, put(rt, logits), put(rt, labels), ignore, denom)
        assert_close(grad, F.softmax_cross_entropy_backward(logits, labels, ignore, reduction),
                     dtype, f"grad ({reduction})")


# -- the emulator itself ---------------------------------------------------------------------------

def test_emulator_refuses_python_scalars():
    """The bug CuPy lets through: a Python int reaches a kernel's ``int`` as 64 bits."""
    rt = EmulatedRuntime()
    kernel = rt.function(kernel_path("activation.cu"), "relu_f32")
    x, y = np.ones(4, np.float32), np.empty(4, np.float32)
    with pytest.raises(TypeError, match="numpy.int64"):
        kernel((1,), (4,), (x, y, 4))
    with pytest.raises(TypeError, match="float32"):
        kernel((1,), (4,), (x.astype(np.float64), y, np.int64(4)))
    kernel((1,), (4,), (x, y, np.int64(4)))
    np.testing.assert_array_equal(y, x)


def test_emulator_catches_out_of_bounds_writes_and_unwritten_outputs(tmp_path):
    src = tmp_path / "bad.cu"
    src.write_text('extern "C" __global__ void off_by_one(float* y, long long n) {\n'
                   '    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n'
                   '    if (i <= n) y[i] = 1.0f;\n'
                   '}\n'
                   'extern "C" __global__ void skips_last(float* y, long long n) {\n'
                   '    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n'
                   '    if (i < n - 1) y[i] = 1.0f;\n'
                   '}\n')
    module = EmulatedModule(src)
    with pytest.raises(AssertionError, match="outside"):
        module.get_function("off_by_one")((1,), (8,), (np.zeros(4, np.float32), np.int64(4)))
    y = EmulatedRuntime.xp.empty(4, np.float32)          # poisoned, as the runtime allocates
    module.get_function("skips_last")((1,), (8,), (y, np.int64(4)))
    assert np.isnan(y[-1]) and np.all(y[:-1] == 1)


def test_package_kernels_are_free_of_barriers():
    """The package's kernels keep to independent threads, so the emulator may run them one
    after another (a comment that names __syncthreads does not count)."""
    from minifcn.kernels.runtime import KERNEL_DIR, read_source
    from tests.cuda_emu import uses_barriers
    for path in sorted(KERNEL_DIR.glob("*.cu")):
        assert not uses_barriers(read_source(path)), path.name
    assert uses_barriers("__shared__ float t[4];\n__syncthreads ();")
    assert not uses_barriers("// no __syncthreads() here\n/* nor __syncthreads() */")


# -- the fused optimizer updates (kernels/fused.py: cupy.ElementwiseKernel) ---------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("which,kwargs", [
    ("sgd", dict(momentum=0.9, weight_decay=1e-2)), ("sgd", dict(momentum=0.0, weight_decay=0.0)),
    ("adam", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    ("adam", dict(betas=(0.5, 0.9), eps=1e-3, weight_decay=1e-2))])
def test_fused_updates_on_the_emulator_match_torch(monkeypatch, dtype, which, kwargs):
    """The GPU's one-kernel SGD and Adam updates, their operation text compiled for the CPU
    (``EmulatedElementwiseKernel``), over three steps with the state carried, against
    torch.optim.SGD / Adam (L2 weight decay, no dampening, no amsgrad) in float64. Before,
    these kernels ran only where a GPU was lent."""
    import torch

    from minifcn.kernels import fused
    from tests.cuda_emu import EmulatedElementwiseKernel
    if not compiler_available():
        pytest.skip("the CPU emulator needs g++ (set CXX to another C++17 compiler)")
    monkeypatch.setattr(fused, "_KERNELS", {name: EmulatedElementwiseKernel(*spec)
                                            for name, spec in fused.SPECS.items()})
    rng = np.random.default_rng(11)
    w = rng.standard_normal((7, 13)).astype(dtype)
    state = [np.zeros_like(w) for _ in range(1 if which == "sgd" else 2)]
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    lr = 0.05
    opt = (torch.optim.SGD([wt], lr, momentum=kwargs["momentum"],
                           weight_decay=kwargs["weight_decay"]) if which == "sgd"
           else torch.optim.Adam([wt], lr, betas=kwargs["betas"], eps=kwargs["eps"],
                                 weight_decay=kwargs["weight_decay"]))
    for step in (1, 2, 3):
        g = rng.standard_normal(w.shape).astype(dtype)
        if which == "sgd":
            fused.sgd_update(w, state[0], g, lr, kwargs["momentum"], kwargs["weight_decay"])
        else:
            fused.adam_update(w, state[0], state[1], g, lr, *kwargs["betas"], step,
                              kwargs["eps"], kwargs["weight_decay"])
        wt.grad = torch.tensor(g.astype(np.float64))
        opt.step()
        ref = wt.detach().numpy()
        assert w.dtype == dtype
        assert np.abs(w - ref).max() <= TOL[np.dtype(dtype)] * np.abs(ref).max(), step


def test_emulated_elementwise_kernel_is_strict():
    """Arguments a GPU would misread are refused, as the emulator does for RawKernels."""
    from tests.cuda_emu import EmulatedElementwiseKernel
    if not compiler_available():
        pytest.skip("the CPU emulator needs g++ (set CXX to another C++17 compiler)")
    k = EmulatedElementwiseKernel("T a, T s", "T out", "out = a * s + out;", "emu_axpy")
    a, out = np.arange(5.0), np.ones(5)
    k(a, np.float64(2.0), out)
    np.testing.assert_array_equal(out, 2 * np.arange(5.0) + 1)
    for bad in ((a, 2.0, out),                                   # a Python float
                (a, np.float32(2.0), out),                       # another dtype
                (a[::2], np.float64(2.0), out[:3]),              # not contiguous
                (a, np.float64(2.0), np.float64(1.0))):          # an output that is no array
        with pytest.raises(TypeError):
            k(*bad)
