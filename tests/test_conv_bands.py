"""conv2d in row bands: the same results as torch, and a bounded col matrix.

``conv2d`` and ``conv2d_backward`` split the output rows into bands once a col matrix would
pass ``CPU_BAND_BYTES`` (``GPU_BAND_BYTES`` on CuPy arrays). These tests shrink the budget
so that every case is cut into bands of one, two or three rows, and hold the results to
torch (float64 autograd) like ``test_conv.py`` does; then they check that the banding
really bounds the memory a convolution allocates.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minifcn.functional.conv as conv
import minifcn.functional.shifted_rows as shifted_rows
from minifcn.functional import conv2d, conv2d_backward
from test_conv import DTYPES, GEOMETRY, H, W, check_conv2d, conv_configs
from test_conv_transpose import check_conv_transpose2d


def _budget_for_rows(rows, n, cin, kh, kw, wo, dtype):
    """A band budget that gives bands of ``rows`` output rows for this convolution."""
    return rows * n * cin * kh * kw * wo * np.dtype(dtype).itemsize


@pytest.fixture
def band_budget(monkeypatch):
    """Call with a byte count: both band budgets (CPU and GPU) are set to it, and bands of
    a transposed convolution's backward may be as thin as one row."""
    # the banded im2col path: not the implicit one that takes VGG-sized layers on the CPU,
    # nor the shifted rows that take those with few channels
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_MIN_CHANNELS", 1 << 30)
    monkeypatch.setattr(conv, "CPU_SHIFTED_CONV2D_MAX_CHANNELS", 0)

    def set_budget(nbytes):
        monkeypatch.setattr(conv, "CPU_BAND_BYTES", nbytes)
        monkeypatch.setattr(conv, "GPU_BAND_BYTES", nbytes)
        monkeypatch.setattr(conv, "MIN_BAND_WINDOWS", 1)
    return set_budget


def test_row_bands_cover_every_row_once(band_budget):
    x = np.zeros((2, 3, 10, 10), np.float32)
    band_budget(_budget_for_rows(3, 2, 3, 3, 3, 10, np.float32))
    bands = conv._row_bands(x, 10, 3 * 3 * 3 * 10)
    assert bands == [(0, 2), (2, 5), (5, 7), (7, 10)]             # 4 bands of <= 3 rows
    band_budget(1)                                   # below one row: one row per band
    assert conv._row_bands(x, 4, 90) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    band_budget(1 << 30)
    assert conv._row_bands(x, 4, 90) == [(0, 4)]
    band_budget(_budget_for_rows(6, 2, 3, 3, 3, 10, np.float32))       # even heights: 5 + 5,
    assert conv._row_bands(x, 10, 3 * 3 * 3 * 10) == [(0, 5), (5, 10)]  # not 6 + 4
    band_budget(1)
    assert conv._row_bands(x, 10, 90, min_rows=4) == [(0, 5), (5, 10)]  # each >= 4 rows
    assert conv._row_bands(x, 10, 90, min_rows=6) == [(0, 10)]
    assert conv._row_bands(x, 0, 90) == []


@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_banded_conv2d_grid_geometry(xp, band_budget, rows, kernel, stride, padding, dilation):
    """Every stride/padding/dilation of the grid, cut into bands of 1, 2 and 3 rows: the
    bands' first taps start in the top padding, inside the image and (stride > kernel)
    skip rows; their last taps reach into the bottom padding."""
    kh, kw = kernel
    band_budget(_budget_for_rows(rows, 2, 3, kh, kw, W, np.float64))
    check_conv2d(xp, np.float64, n=2, cin=3, cout=4, h=H, w=W, kernel=kernel, stride=stride,
                 padding=padding, dilation=dilation, groups=1, bias=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cin,cout,groups", [(4, 6, 2), (4, 4, 4)])
def test_banded_conv2d_groups(xp, band_budget, dtype, cin, cout, groups):
    band_budget(1)
    check_conv2d(xp, dtype, n=3, cin=cin, cout=cout, h=8, w=5, kernel=(3, 2), stride=(2, 1),
                 padding=(1, 0), dilation=(1, 2), groups=groups, bias=True)


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(), rows=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_banded_conv2d_random_configs(xp, cfg, rows, seed):
    """Random geometries with a budget of ``rows`` output rows (of the real output width):
    each case must really be cut (more than one row band, or image batches of one), and
    still agree with torch."""
    from minifcn.functional import conv_output_size
    kh, kw = cfg["kernel"]
    ho = conv_output_size(cfg["h"], kh, cfg["stride"][0], cfg["padding"][0], cfg["dilation"][0])
    wo = conv_output_size(cfg["w"], kw, cfg["stride"][1], cfg["padding"][1], cfg["dilation"][1])
    assume(ho > rows)
    old = conv.CPU_BAND_BYTES, conv.GPU_BAND_BYTES, conv._row_bands
    cuts = []

    def counting_row_bands(*args, **kwargs):
        bands = old[2](*args, **kwargs)
        cuts.append(len(bands))
        return bands
    conv.CPU_BAND_BYTES = conv.GPU_BAND_BYTES = _budget_for_rows(
        rows, 1, cfg["cin"], kh, kw, wo, np.float64)
    conv._row_bands = counting_row_bands
    try:
        check_conv2d(xp, np.float64, seed=seed, **cfg)
    finally:
        conv.CPU_BAND_BYTES, conv.GPU_BAND_BYTES, conv._row_bands = old
    assert max(cuts, default=0) > 1, cuts


def test_banded_transposed_convolution(xp, band_budget):
    """The sub-pixel transposed convolution runs an ordinary convolution: banded too."""
    band_budget(1)
    check_conv_transpose2d(xp, np.float64, n=2, cin=3, cout=2, h=5, w=4, kernel=4, stride=2,
                           padding=1, output_padding=0, dilation=1, groups=1, bias=True,
                           algorithms=["subpixel", "col2im"])


# (kernel, stride, padding, output_padding, dilation, groups): the transposed convolution's
# backward im2col reads dy through windows one per input pixel
TRANSPOSED = [
    (4, 2, 1, 0, 1, 1),                     # FCN's k4 s2 p1
    (3, 1, 1, 0, 2, 2),                     # stride 1, dilation, groups
    (3, 2, 0, 2, 3, 1),                     # output_padding >= stride: windows past H x W
    (2, 3, 0, 1, 1, 1),                     # stride > kernel: rows no tap reaches
]


@pytest.mark.parametrize("rows", [1, 2, 3, "images"])
@pytest.mark.parametrize("kernel,stride,padding,output_padding,dilation,groups", TRANSPOSED)
def test_banded_transposed_convolution_backward(xp, band_budget, rows, kernel, stride, padding,
                                                output_padding, dilation, groups):
    """The 'col2im' backward makes im2col(dy) one image and a band of input rows at a time
    (or, with a budget of two images, images 0-1 and then 2), for both GEMMs: held to
    torch."""
    n, cin, cout, h, w = 3, 4, 2 * groups, 5, 4
    per_row = cout * kernel * kernel * w * 8            # float64 col bytes per image and row
    band_budget(2 * h * per_row if rows == "images" else rows * per_row)
    check_conv_transpose2d(xp, np.float64, n=n, cin=cin, cout=cout, h=h, w=w, kernel=kernel,
                           stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups, bias=True, algorithms=["col2im"])


@pytest.fixture
def gemm_calls(monkeypatch):
    """Counts the calls of ``blas.gemm`` that ``conv.py`` makes (not those of
    ``shifted_rows.py``, which has its own name for it)."""
    calls = []
    real = conv.gemm
    monkeypatch.setattr(conv, "gemm", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("rows", [1, 2, "images", "all"])
@pytest.mark.parametrize("kernel,stride,padding,output_padding,dilation,groups", TRANSPOSED)
def test_direct_blas_transposed_backward_matches_torch(band_budget, monkeypatch, gemm_calls,
                                                       dtype, rows, kernel, stride, padding,
                                                       output_padding, dilation, groups):
    """The 'col2im' backward with its GEMMs sent to BLAS per image (``dx``'s rows written
    in place, ``dW^T += col @ x^T`` summed in place over images and bands, transposed at
    the end), taken here at any size, in bands of rows, of images, or whole: held to
    torch, and the path really taken wherever it applies (one group, NumPy's BLAS)."""
    from minifcn.functional.blas import uses_cblas
    monkeypatch.setattr(conv, "DIRECT_BACKWARD_MIN_PIXELS", 1)
    monkeypatch.setattr(conv, "DIRECT_BACKWARD_MIN_WINDOWS", 1)
    n, cin, cout, h, w = 3, 4, 2 * groups, 5, 4
    per_row = cout * kernel * kernel * w * np.dtype(dtype).itemsize
    if rows != "all":
        band_budget(2 * h * per_row if rows == "images" else rows * per_row)
    check_conv_transpose2d(np, dtype, n=n, cin=cin, cout=cout, h=h, w=w, kernel=kernel,
                           stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups, bias=True, algorithms=["col2im"])
    assert bool(gemm_calls) == (groups == 1 and uses_cblas(dtype))


def test_the_direct_blas_backward_is_taken_at_fcn_sizes(gemm_calls):
    """At the default thresholds (1024 input pixels per image, 4096 in the batch) the
    k4 s2 p1 backward of a 32x64 map, batch 2, goes to BLAS directly; a 16x16 map does not."""
    from minifcn.functional.blas import uses_cblas
    if not uses_cblas(np.float64):
        pytest.skip("NumPy's BLAS is not reachable here")
    check_conv_transpose2d(np, np.float64, n=2, cin=5, cout=3, h=32, w=64, kernel=4, stride=2,
                           padding=1, output_padding=0, dilation=1, groups=1, bias=False,
                           algorithms=["col2im"])
    assert gemm_calls
    gemm_calls.clear()
    check_conv_transpose2d(np, np.float64, n=2, cin=5, cout=3, h=16, w=16, kernel=4, stride=2,
                           padding=1, output_padding=0, dilation=1, groups=1, bias=False,
                           algorithms=["col2im"])
    assert not gemm_calls


def test_bands_bound_the_memory_of_a_transposed_convolution_backward(band_budget):
    """256->128 k4 s2 p1 on 32x32: im2col(dy) is 8.4 MB per image. With a 2 MB budget the
    backward stays far below that; with one band it builds it whole."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 256, 32, 32), dtype=np.float32)             # 1 MB
    wt = rng.standard_normal((256, 128, 4, 4), dtype=np.float32)            # 2 MB
    dy = rng.standard_normal((1, 128, 64, 64), dtype=np.float32)            # 2 MB
    col_mb = 128 * 16 * 32 * 32 * 4 / 2**20
    backward = lambda: conv.conv_transpose2d_backward(dy, x, wt, 2, 1, algorithm="col2im")
    band_budget(64 << 20)
    assert _traced_peak_mb(backward) > col_mb
    band_budget(2 << 20)
    peak = _traced_peak_mb(backward)
    # dx (1 MB), dW and one band's part of it (2 + 2 MB), a 2 MB band, a slice of x
    assert peak < 8, f"{peak:.1f} MB allocated with 2 MB bands (col: {col_mb:.1f} MB)"


def _traced_peak_mb(fn):
    """Peak bytes NumPy allocated while ``fn`` ran (NumPy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_bands_bound_the_memory_of_a_convolution(band_budget):
    """64 channels at 128x128, 3x3: the col matrix is 36 MB. With a 4 MB budget neither
    the forward nor the backward pass may allocate anywhere near that; with the budget
    above 36 MB (one band) they do — which shows the measurement can see a col matrix."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 128, 128), dtype=np.float32)       # 4 MB
    wt = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    dy = rng.standard_normal((1, 64, 128, 128), dtype=np.float32)
    col_mb = 64 * 9 * 128 * 128 * 4 / 2**20
    steps = {"forward": lambda: conv2d(x, wt, None, 1, 1),
             "weight grad": lambda: conv2d_backward(dy, x, wt, 1, 1, need_input_grad=False),
             "input grad": lambda: conv2d_backward(dy, x, wt, 1, 1, need_weight_grad=False)}
    band_budget(64 << 20)
    for name, fn in steps.items():
        assert _traced_peak_mb(fn) > col_mb, f"{name}: one band should build the whole col"
    band_budget(4 << 20)
    for name, fn in steps.items():
        peak = _traced_peak_mb(fn)
        # the output or gradient (4 MB), a padded band of x, one 4 MB band and its product
        assert peak < 16, f"{name}: {peak:.1f} MB allocated with 4 MB bands (col: {col_mb:.0f} MB)"


def test_banded_vgg_sized_layer_in_float32(band_budget):
    """A VGG-sized layer (float32, 128 channels at 48x40), against torch in float64."""
    import torch
    import torch.nn.functional as TF
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 128, 48, 40), dtype=np.float32)
    wt = (rng.standard_normal((96, 128, 3, 3)) * 0.05).astype(np.float32)
    dy = rng.standard_normal((1, 96, 48, 40), dtype=np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wtt = torch.tensor(wt, dtype=torch.float64, requires_grad=True)
    yt = TF.conv2d(xt, wtt, None, 1, 1)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    band_budget(_budget_for_rows(8, 1, 128, 3, 3, 40, np.float32))
    assert len(conv._row_bands(x, 48, 128 * 9 * 40)) == 6
    y = conv2d(x, wt, None, 1, 1)
    dx, dw, _ = conv2d_backward(dy, x, wt, 1, 1)
    for got, ref in ((y, yt), (dx, xt.grad), (dw, wtt.grad)):
        ref = ref.detach().numpy()
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


# -- the shifted-rows convolution of the sub-pixel forward (CPU) ----------------------------

@pytest.mark.parametrize("kernel", [(1, 1), (2, 2), (2, 3), (3, 3), (4, 1)])
@pytest.mark.parametrize("padding", [(0, 0), (1, 1), (1, 0), (2, 1)])
@pytest.mark.parametrize("rows", [1, 2, 100])
def test_shifted_rows_convolution_matches_torch(band_budget, kernel, padding, rows):
    """``_conv2d_shifted_rows`` numbers windows by their flat index in the stacked image,
    whose rows share their padding (pitch W + gap), and discards the ones that wrap
    around a row end; bands of 1 and 2 rows start mid-image. Paddings both below and
    above kw - 1. Held to torch's float64 conv2d."""
    import torch
    import torch.nn.functional as TF
    rng = np.random.default_rng(sum(kernel) + 7 * sum(padding) + rows)
    kh, kw = kernel
    x = rng.standard_normal((3, 4, 7, 6))
    wt = rng.standard_normal((5, 4, kh, kw))
    pw = padding[1]
    wp = 6 + pw + max(0, pw - kw + 1)                     # the row pitch: W + gap
    band_budget(rows * 4 * kh * kw * wp * 8)
    y = shifted_rows._conv2d_shifted_rows(x, wt.transpose(1, 2, 3, 0), *padding,   # (C, kh, kw, O)
                                          conv.CPU_BAND_BYTES)
    ref = TF.conv2d(torch.tensor(x), torch.tensor(wt), padding=padding).numpy()
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,padding", [(3, 1), (3, 0), (2, 1), ((1, 3), (0, 1))])
def test_conv2d_input_gradient_alone_runs_implicit_on_mid_sized_maps(monkeypatch, dtype, kernel,
                                                                     padding):
    """Between ``CPU_IMPLICIT_CONV2D_DX_MIN_PIXELS`` and ``CPU_IMPLICIT_CONV2D_MIN_PIXELS``
    output pixels (VGG's conv4 at 224: 53x53), conv2d's forward and dW stay on im2col but
    dx runs as the implicit transposed convolution of dy: held to torch, the path taken
    (and not taken for dW alone, or below the bound)."""
    import torch
    from minifcn.functional.blas import uses_cblas
    if not uses_cblas(dtype):
        pytest.skip("NumPy's BLAS is not reachable here")
    calls = []
    real = conv.conv_transpose2d_implicit
    monkeypatch.setattr(conv, "conv_transpose2d_implicit",
                        lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_DX_MIN_PIXELS", 300)
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_MIN_PIXELS", 10 ** 9)
    monkeypatch.setattr(conv, "CPU_SHIFTED_CONV2D_MAX_CHANNELS", 0)    # not shifted rows
    rng = np.random.default_rng(3)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    x = rng.standard_normal((2, 64, 22, 21)).astype(dtype)
    wt = rng.standard_normal((64, 64, kh, kw)).astype(dtype)
    ho, wo = 22 + 2 * ph - kh + 1, 21 + 2 * pw - kw + 1
    dy = rng.standard_normal((2, 64, ho, wo)).astype(dtype)
    dx, dw, db = conv2d_backward(dy, x, wt, 1, (ph, pw))
    assert calls
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wtt = torch.tensor(wt.astype(np.float64), requires_grad=True)
    torch.nn.functional.conv2d(xt, wtt, padding=(ph, pw)).backward(torch.tensor(dy.astype(np.float64)))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for got, ref in ((dx, xt.grad), (dw, wtt.grad)):
        ref = ref.numpy()
        assert got.dtype == dtype
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    calls.clear()
    conv2d_backward(dy, x, wt, 1, (ph, pw), need_input_grad=False)
    small = (10 + 2 * ph - kh + 1, 10 + 2 * pw - kw + 1)                  # under 300 pixels
    conv2d_backward(dy[:, :, :small[0], :small[1]].copy(), x[:, :, :10, :10].copy(), wt, 1,
                    (ph, pw))
    assert not calls


def test_the_implicit_path_builds_no_col_matrix():
    """The same 64-channel layer as above, as the CPU runs it by default ('implicit'):
    nothing near the 36 MB col matrix is allocated, whatever the band budget — and the
    path is really taken (the GEMMs go through the implicit module)."""
    from minifcn.functional import implicit
    if not conv._implicit_conv2d(conv._geometry("conv2d", np.zeros((1, 64, 128, 128), np.float32),
                                                np.zeros((64, 64, 3, 3), np.float32),
                                                None, 1, 1, 1, 1)):
        pytest.skip("NumPy's BLAS is not reachable here: conv2d stays on im2col")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 128, 128), dtype=np.float32)
    wt = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    dy = rng.standard_normal((1, 64, 128, 128), dtype=np.float32)
    used = []
    real = implicit.gemm
    implicit.gemm = lambda *a, **k: used.append(1) or real(*a, **k)
    try:
        for name, fn in {"forward": lambda: conv2d(x, wt, None, 1, 1),
                         "backward": lambda: conv2d_backward(dy, x, wt, 1, 1)}.items():
            used.clear()
            peak = _traced_peak_mb(fn)
            assert used, f"{name}: the implicit path was not taken"
            # output and gradients (4 MB each), the stacked input and its gradient (~4.3 MB
            # each), one 4 MB band of phase outputs: no 36 MB col
            assert peak < 24, f"{name}: {peak:.1f} MB allocated"
    finally:
        implicit.gemm = real


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,padding,n", [(3, 1, 1), (3, 0, 2), (3, 2, 1), ((2, 3), (1, 0), 2)])
def test_implicit_layers_take_dw_on_folded_shifted_rows(monkeypatch, dtype, kernel, padding, n):
    """conv2d_backward's implicit path (VGG's 64-256-channel layers; the bounds lowered here
    to a small map) takes dW from shifted rows of x with the column taps folded, held to
    torch's float64 dW; with an inf in x it takes banded im2col, whose inf and NaN are
    where torch's are (the folded layout would pair its zeros with the inf)."""
    import torch
    from minifcn.functional.blas import uses_cblas
    if not uses_cblas(dtype):
        pytest.skip("NumPy's BLAS is not reachable here")
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_MIN_PIXELS", 1)
    monkeypatch.setattr(conv, "CPU_IMPLICIT_CONV2D_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "CPU_BAND_BYTES", 4096)           # several bands
    calls, folds = [], []
    real_shifted, real_t = conv._weight_grad_shifted_rows, conv._weight_grad_t
    monkeypatch.setattr(conv, "_weight_grad_shifted_rows",
                        lambda *a, **k: calls.append(("shifted", k)) or real_shifted(*a, **k))
    monkeypatch.setattr(conv, "_weight_grad_t",
                        lambda *a, **k: calls.append(("im2col", k)) or real_t(*a, **k))
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, 5, 9, 11)).astype(dtype)
    wt = rng.standard_normal((6, 5, kh, kw)).astype(dtype)
    g = conv._geometry("conv2d", x, wt, None, 1, (ph, pw), 1, 1)
    assert conv._implicit_conv2d(g)
    dy = rng.standard_normal((n, 6, g.ho, g.wo)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5

    def torch_dw(x):
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        wtt = torch.tensor(wt.astype(np.float64), requires_grad=True)
        torch.nn.functional.conv2d(xt, wtt, padding=(ph, pw)).backward(
            torch.tensor(dy.astype(np.float64)))
        return wtt.grad.numpy()

    _, dw, _ = conv2d_backward(dy, x, wt, 1, (ph, pw), need_input_grad=False)
    assert calls == [("shifted", {"fold": True})]
    ref = torch_dw(x)
    assert dw.dtype == dtype and np.abs(dw - ref).max() <= tol * np.abs(ref).max()
    # the fold is taken: each band's col holds one column tap per row shift, not kw
    real_copies = shifted_rows._shifted_copies
    monkeypatch.setattr(shifted_rows, "_shifted_copies", lambda stack, col, *a: folds.append(col.shape[2])
                        or real_copies(stack, col, *a))
    conv2d_backward(dy, x, wt, 1, (ph, pw), need_input_grad=False)
    assert len(folds) > 1 and set(folds) == {1}         # several bands, all folded
    calls.clear()
    x_inf = x.copy()
    x_inf[0, 2, 4, 5] = np.inf
    _, dw, _ = conv2d_backward(dy, x_inf, wt, 1, (ph, pw), need_input_grad=False)
    assert calls == [("im2col", {})]
    ref = torch_dw(x_inf)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(ref))
    finite = np.isfinite(ref)
    assert np.abs(dw[finite] - ref[finite]).max() <= tol * np.abs(ref[finite]).max()


def test_an_empty_batch_on_the_implicit_path_gives_a_zero_weight_gradient():
    """N = 0 on a layer the implicit path takes (64 channels, 64x64): dW is zeros and dx
    empty, as on the other paths (the shifted-rows layout has no rows for it)."""
    x = np.zeros((0, 64, 64, 64), np.float32)
    w = np.random.default_rng(0).standard_normal((64, 64, 3, 3)).astype(np.float32)
    g = conv._geometry("conv2d", x, w, None, 1, 1, 1, 1)
    if not conv._implicit_conv2d(g):
        pytest.skip("NumPy's BLAS is not reachable here: conv2d stays on im2col")
    dx, dw, db = conv2d_backward(np.zeros((0, 64, 64, 64), np.float32), x, w, 1, 1)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (64,)
    assert not dw.any() and not db.any()
