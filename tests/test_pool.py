"""max_pool2d forward and gradient against ``torch.nn.functional.max_pool2d`` + autograd.

Away from ties the values are a random permutation (all distinct). Ties are tested on
their own: torch sends a window's gradient to exactly one element — the first maximum in
scan order — and so must we, so the gradients are compared *exactly* there.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from conftest import assert_close, to_np, torch_grads
from minifcn.functional import conv_output_size, max_pool2d, max_pool2d_backward

DTYPES = [np.float64, np.float32]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _valid(h, w, kernel, stride, padding, dilation, ceil_mode):
    """A geometry both libraries accept, in which every window sees at least one input
    pixel. (With dilation, a window can fall entirely on padding: its max is -inf, and
    torch 2.13's CPU backward then routes the gradient to an index *outside* the window
    — into the next channel — so there is no reference to compare with; that case has
    its own test below.)"""
    k, s, p, d = _pair(kernel), _pair(kernel if stride is None else stride), _pair(padding), \
        _pair(dilation)
    if any(pi > ki // 2 for pi, ki in zip(p, k)):     # torch: padding <= kernel_size / 2
        return False
    for n, ki, si, pi, di in zip((h, w), k, s, p, d):
        out = conv_output_size(n, ki, si, pi, di, ceil_mode)
        if out <= 0:
            return False
        if not all(any(0 <= o * si + i * di - pi < n for i in range(ki)) for o in range(out)):
            return False
    return True


def distinct_values(shape, rng, dtype):
    """All different, with gaps of 1: no ties, and exactly representable in float32."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) - np.prod(shape) / 2).astype(dtype)


def winner_flat_index(tap, width, kernel, stride, padding, dilation):
    """Our (u, v) tap of each window -> the flat index row * W + col of the input pixel it
    picks, the form torch's ``return_indices`` gives."""
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel), _pair(padding), _pair(dilation)
    sh, sw = _pair(kernel if stride is None else stride)
    i = np.arange(tap.shape[2])[:, None]
    j = np.arange(tap.shape[3])[None, :]
    row = i * sh + (tap // kw) * dh - ph
    col = j * sw + (tap % kw) * dw - pw
    return row * width + col


def check_max_pool2d(xp, x, dy_seed, *, kernel, stride, padding, dilation, ceil_mode, exact=False):
    dtype = x.dtype
    y, tap = max_pool2d(xp.asarray(x), kernel, stride, padding, dilation, ceil_mode,
                        return_indices=True)
    y_plain = max_pool2d(xp.asarray(x), kernel, stride, padding, dilation, ceil_mode)
    np.testing.assert_array_equal(to_np(y), to_np(y_plain))
    assert y.dtype == dtype
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(dtype)
    dx = max_pool2d_backward(xp.asarray(dy), tap, x.shape[2:], kernel, stride, padding,
                             dilation, ceil_mode)
    y_ref, g = torch_grads(
        lambda x: TF.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode), {"x": x}, dy)
    assert y.shape == y_ref.shape
    np.testing.assert_array_equal(to_np(y), y_ref.astype(dtype))     # a selection: exact
    assert dx.dtype == dtype and dx.shape == x.shape
    if exact:
        # The same winner as torch in every window (its flat index into the H x W plane) ...
        _, torch_index = TF.max_pool2d(torch.tensor(x), kernel, stride, padding, dilation,
                                       ceil_mode, return_indices=True)
        np.testing.assert_array_equal(
            winner_flat_index(to_np(tap), x.shape[3], kernel, stride, padding, dilation),
            torch_index.numpy())
        # ... so the gradients differ only by the order in which a pixel's several dy are
        # added: a few roundings of the largest sum, where a misrouted dy would be O(1).
        slack = 4 * np.finfo(dtype).eps * max(1.0, float(np.abs(g["x"]).max()))
        np.testing.assert_allclose(to_np(dx).astype(np.float64), g["x"], rtol=0, atol=slack)
    else:
        assert_close(dx, g["x"], dtype, "input gradient")
    return to_np(dx), g["x"]


H, W = 9, 8
GRID = [g for g in itertools.product(
    [2, 3, (3, 2)],                              # kernel
    [None, 1, (3, 1), 5],                        # stride (None = kernel; 5 > every kernel)
    [0, (1, 0)],                                 # padding
    [1, 2],                                      # dilation
    [False, True],                               # ceil_mode
) if _valid(H, W, *g)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", GRID)
def test_max_pool2d_grid(xp, dtype, kernel, stride, padding, dilation, ceil_mode):
    x = distinct_values((2, 3, H, W), np.random.default_rng(0), dtype)
    check_max_pool2d(xp, x, 1, kernel=kernel, stride=stride, padding=padding,
                     dilation=dilation, ceil_mode=ceil_mode)


@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 11))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 11))
    cfg = dict(kernel=(kh, kw), stride=stride, padding=(ph, pw), dilation=(dh, dw),
               ceil_mode=draw(st.booleans()))
    assume(_valid(h, w, **cfg))
    cfg["shape"] = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    return cfg


@settings(max_examples=50, deadline=None)
@given(cfg=pool_configs(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1),
       ties=st.booleans())
@example(cfg={"kernel": (4, 3), "stride": (1, 2), "padding": (2, 0), "dilation": (1, 1),
              "ceil_mode": False, "shape": (1, 1, 3, 11)}, dtype=np.float64, seed=112,
         ties=True)    # a pixel wins 3 windows: its dy sum rounds differently from torch's
def test_max_pool2d_random_configs(xp, cfg, dtype, seed, ties):
    rng = np.random.default_rng(seed)
    shape = cfg.pop("shape")
    if ties:     # few distinct values: ties everywhere; torch and we must pick the same one
        x = rng.integers(-2, 3, shape).astype(dtype)
    else:
        x = distinct_values(shape, rng, dtype)
    check_max_pool2d(xp, x, seed + 1, exact=ties, **cfg)


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", [
    (2, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 1, False), (2, 1, 0, 2, False),
    ((3, 2), (2, 3), (1, 0), 1, True),
])
def test_max_pool2d_constant_input_ties(xp, kernel, stride, padding, dilation, ceil_mode):
    """A constant input: every tap of every window ties. Each window's gradient goes to one
    element (the first in scan order, like torch), so dx sums to sum(dy) exactly once."""
    x = np.full((2, 2, 7, 6), 3.0)
    dx, ref = check_max_pool2d(xp, x, 5, kernel=kernel, stride=stride, padding=padding,
                               dilation=dilation, ceil_mode=ceil_mode, exact=True)
    y = TF.max_pool2d(torch.tensor(x), kernel, stride, padding, dilation, ceil_mode)
    dy = np.random.default_rng(5).standard_normal(tuple(y.shape))
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-12)


def test_max_pool2d_tie_goes_to_first_in_scan_order(xp):
    """One 2x2 window [[1, 5], [5, 5]]: the gradient goes to (0, 1), none to (1, 0), (1, 1)."""
    x = np.array([[[[1.0, 5.0], [5.0, 5.0]]]])
    y, tap = max_pool2d(xp.asarray(x), 2, return_indices=True)
    dx = to_np(max_pool2d_backward(xp.asarray(np.array([[[[7.0]]]])), tap, (2, 2), 2))
    np.testing.assert_array_equal(dx, [[[[0.0, 7.0], [0.0, 0.0]]]])
    xt = torch.tensor(x, requires_grad=True)
    TF.max_pool2d(xt, 2).backward(torch.tensor([[[[7.0]]]], dtype=torch.float64))
    np.testing.assert_array_equal(dx, xt.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 3, 0), (3, 2, 1), (3, 1, 1),
                                                    ((2, 3), (1, 2), (1, 0))],
                         ids=["tiles 2x2", "tiles 3x3", "3x3 s2 p1", "3x3 s1 p1", "2x3 s(1,2)"])
def test_max_pool2d_keeps_the_sign_of_the_first_zero(xp, dtype, kernel, stride, padding):
    """+0 and -0 are equal, so a window holding both ties, and torch outputs the first in
    scan order, sign included (ReLU outputs are full of zeros; a -0 comes from, e.g.,
    -1 * 0). Checked bit for bit on inputs of only +0, -0 and -1, with both orders of
    +0 and -0 placed in the first tile. (It failed every case while the max kept NumPy's tie rule, which
    returns maximum(a, b)'s second argument.)"""
    rng = np.random.default_rng(3)
    x = rng.choice(np.array([0.0, -0.0, -1.0], dtype), size=(2, 3, 9, 10))
    x[0, 0, :2, :2] = [[0.0, -0.0], [-0.0, 0.0]]
    x[0, 1, :2, :2] = [[-0.0, 0.0], [0.0, -0.0]]
    y, tap = max_pool2d(xp.asarray(x), kernel, stride, padding, return_indices=True)
    ref, idx = TF.max_pool2d(torch.tensor(x), kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(to_np(y), ref.numpy())
    np.testing.assert_array_equal(np.signbit(to_np(y)), np.signbit(ref.numpy()))
    np.testing.assert_array_equal(                      # and the same pixel wins
        winner_flat_index(to_np(tap), x.shape[3], kernel, stride, padding, 1), idx.numpy())


def test_max_pool2d_overlapping_windows_accumulate(xp):
    """stride < kernel: one pixel can win several windows; its gradients add up."""
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 9.0          # wins all four 2x2 windows of stride 1
    y, tap = max_pool2d(xp.asarray(x), 2, 1, return_indices=True)
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = to_np(max_pool2d_backward(xp.asarray(dy), tap, (3, 3), 2, 1))
    assert dx[0, 0, 1, 1] == 10.0 and dx.sum() == 10.0


def test_max_pool2d_padding_never_wins(xp):
    """Padding is -inf: an all-negative input is not replaced by a padded 0."""
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    y = to_np(max_pool2d(xp.asarray(x), 3, 2, 1))
    y_ref = TF.max_pool2d(torch.tensor(x), 3, 2, 1).numpy()
    np.testing.assert_array_equal(y, y_ref)
    assert (y < 0).all()


def test_max_pool2d_window_entirely_on_padding(xp):
    """kernel 2, dilation 3, padding 1 on a width-2 input: the one window's taps sit at
    columns -1 and 2, both padding. The max is -inf (as in torch) and no gradient reaches
    any input pixel (torch's own gradient for this window lands outside it, see _valid)."""
    x = np.array([[[[2.0, 1.0]], [[0.0, -1.0]]]])
    y, tap = max_pool2d(xp.asarray(x), (1, 2), None, (0, 1), (1, 3), return_indices=True)
    y_ref = TF.max_pool2d(torch.tensor(x), (1, 2), None, (0, 1), (1, 3))
    np.testing.assert_array_equal(to_np(y), y_ref.numpy())
    assert np.isneginf(to_np(y)).all()
    dx = to_np(max_pool2d_backward(xp.ones(y.shape), tap, (1, 2), (1, 2), None, (0, 1), (1, 3)))
    np.testing.assert_array_equal(dx, np.zeros_like(x))


def torch_pool_size(size, kernel, stride, padding, dilation, ceil_mode):
    """torch's (and Caffe's) pooling output length, as in ATen's pooling_output_shape:
    floor or ceil of ``(size + 2p - d(k-1) - 1) / s`` plus 1, and in ceil mode the last
    window must start inside the input or its left padding. Note that in ceil mode a
    window may be larger than the (padded) input: 1 pixel, kernel 2, stride 2 -> 1."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1                  # Python's // rounds toward -inf, like div_rtn
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@pytest.mark.parametrize("size,expect", [(224, 112), (7, 4), (8, 4), (1, 1)])
def test_ceil_mode_sizes_match_torch(xp, size, expect):
    """The FCN's Caffe pooling (kernel 2, stride 2, ceil) keeps the odd edge; and a 1x1
    map (a 16x16 image after four of them) still pools to 1x1, as in torch and Caffe."""
    x = np.random.default_rng(0).standard_normal((1, 1, size, size))
    assert tuple(TF.max_pool2d(torch.tensor(x), 2, 2, ceil_mode=True).shape[2:]) == (expect, expect)
    y = max_pool2d(xp.asarray(x), 2, 2, ceil_mode=True)
    assert y.shape[2:] == (expect, expect)


SIZE_GRID = [(n, k, s, p, d) for n, k, s, p, d in itertools.product(
    range(1, 7), range(1, 5), range(1, 4), range(0, 2), range(1, 3)) if p <= k // 2]


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
def test_output_sizes_match_torch_exhaustively(ceil_mode):
    """Every small (size, kernel, stride, padding, dilation): torch's output length (or
    its refusal) == minifcn's (or its ValueError); and the values where both run."""
    wrong = []
    for n, k, s, p, d in SIZE_GRID:
        x = np.arange(float(n)).reshape(1, 1, 1, n)
        want = torch_pool_size(n, k, s, p, d, ceil_mode)
        try:
            ref = TF.max_pool2d(torch.tensor(x), (1, k), (1, s), (0, p), (1, d), ceil_mode)
        except RuntimeError:
            ref = None
        assert (ref is None) == (want <= 0), (n, k, s, p, d)   # the formula above is torch's
        try:
            got = max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil_mode)
        except ValueError:
            got = None
        if (got is None) != (ref is None) or (got is not None and (
                got.shape != tuple(ref.shape) or not np.array_equal(got, ref.numpy()))):
            wrong.append(((n, k, s, p, d), None if ref is None else ref.shape[-1],
                          None if got is None else got.shape[-1]))
    assert not wrong, f"(size, k, s, p, d), torch width, minifcn width: {wrong}"


def test_max_pool2d_non_contiguous_input(xp):
    base = distinct_values((2, 3, 10, 9), np.random.default_rng(3), np.float64)
    x = xp.asarray(base)[:, ::-1, ::2, 1:]
    y, tap = max_pool2d(x, 2, 2, 0, 1, True, return_indices=True)
    y_ref = TF.max_pool2d(torch.tensor(np.ascontiguousarray(to_np(x))), 2, 2, 0, 1, True)
    np.testing.assert_array_equal(to_np(y), y_ref.numpy())


# -- the tiled path (stride = kernel, no padding: FCN's 2x2 pools) -----------------------------

# kernel, ceil_mode, (H, W): floor mode with rows and columns past the last whole tile,
# and ceil mode on sizes the tiles divide (ceil = floor: no partial window, still tiled)
TILED = [((2, 2), False, (13, 11)), ((3, 2), False, (13, 11)), ((1, 4), False, (13, 11)),
         ((2, 3), True, (12, 9)), ((4, 4), True, (12, 8))]


@pytest.mark.parametrize("planes_per_slab", [1, 3, 10], ids=["1 plane", "ragged: 3+3+3+1",
                                                              "one slab"])
@pytest.mark.parametrize("kernel,ceil_mode,size", TILED)
def test_max_pool2d_tiled_slabs(xp, monkeypatch, kernel, ceil_mode, size, planes_per_slab):
    """Windows that tile the image, worked slab by slab over the N*C = 10 planes: however
    the planes are cut, the same values, winners (ties included) and gradients as torch;
    rows and columns past the last whole tile get gradient 0."""
    import minifcn.functional.pool as pool
    monkeypatch.setattr(pool, "POOL_SLAB_ELEMENTS", planes_per_slab * size[0] * size[1])
    ran = []
    for name in ("_max_pool_tiles", "_max_pool_tiles_backward"):
        real = getattr(pool, name)
        monkeypatch.setattr(pool, name, lambda *a, _real=real, _name=name: ran.append(_name)
                            or _real(*a))
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, (2, 5) + size).astype(np.float32)        # ties everywhere
    check_max_pool2d(xp, x, 12, kernel=kernel, stride=None, padding=0, dilation=1,
                     ceil_mode=ceil_mode, exact=True)
    x = distinct_values((2, 5) + size, rng, np.float64)
    check_max_pool2d(xp, x, 13, kernel=kernel, stride=None, padding=0, dilation=1,
                     ceil_mode=ceil_mode)
    if xp is np:
        assert sorted(set(ran)) == ["_max_pool_tiles", "_max_pool_tiles_backward"]


@pytest.mark.parametrize("kernel,stride,padding", [
    (2, None, 0),           # the tiled path
    (3, None, 0),           # the tiled path, 3x3 tiles
    (3, 2, 1),              # overlapping windows with padding: the general path
])
def test_max_pool2d_nan_and_inf_like_torch(xp, kernel, stride, padding):
    """A window holding NaN outputs NaN, and its *last* NaN in scan order wins (torch's
    kernels take every NaN they meet); +-inf are ordinary values."""
    rng = np.random.default_rng(4)
    x = rng.integers(-1, 2, (2, 3, 12, 12)).astype(np.float32)
    flat = x.reshape(-1)
    for value in (np.nan, np.inf, -np.inf):
        flat[rng.choice(flat.size, 60, replace=False)] = value
    x[0, 0, :2, :2] = np.nan                    # one window all NaN
    x[0, 1, 0, 0] = x[0, 1, 1, 1] = np.nan      # two NaNs in a window, corners
    y, tap = max_pool2d(xp.asarray(x), kernel, stride, padding, return_indices=True)
    y_ref, index_ref = TF.max_pool2d(torch.tensor(x), kernel, stride, padding,
                                     return_indices=True)
    np.testing.assert_array_equal(to_np(y), y_ref.numpy())          # NaN matches NaN
    np.testing.assert_array_equal(
        winner_flat_index(to_np(tap), x.shape[3], kernel, stride, padding, 1),
        index_ref.numpy())


@pytest.mark.parametrize("kernel,stride,padding", [
    (2, None, 0),           # the tiled path
    (3, 2, 1),              # the general path (one-hot column and col2im)
])
@pytest.mark.filterwarnings("ignore:invalid value encountered")   # inf + -inf, as in torch
def test_max_pool2d_backward_routes_inf_and_nan_only_to_winners(xp, kernel, stride, padding):
    """An inf or NaN in dy reaches its window's winner and nothing else (torch's routing;
    multiplying dy by a one-hot mask would put NaN on every loser of that window)."""
    rng = np.random.default_rng(6)
    x = distinct_values((2, 3, 8, 8), rng, np.float64)
    y, tap = max_pool2d(xp.asarray(x), kernel, stride, padding, return_indices=True)
    dy = rng.standard_normal(y.shape)
    flat = dy.reshape(-1)
    for value in (np.nan, np.inf, -np.inf):
        flat[rng.choice(flat.size, 5, replace=False)] = value
    dx = to_np(max_pool2d_backward(xp.asarray(dy), tap, x.shape[2:], kernel, stride, padding))
    _, g = torch_grads(lambda x: TF.max_pool2d(x, kernel, stride, padding), {"x": x}, dy)
    np.testing.assert_allclose(dx, g["x"], rtol=1e-14, atol=0)   # NaN at the same places
    assert 0 < np.count_nonzero(~np.isfinite(dx)) <= 15


def test_padding_limit_is_torchs():
    """Padding may be at most half the kernel, whatever the dilation: minifcn refuses
    exactly the settings torch refuses (with dilation, windows of padding only remain
    possible: see test_max_pool2d_window_entirely_on_padding)."""
    x = np.zeros((1, 1, 16, 16))
    for k, d, p in itertools.product([1, 2, 3, 4], [1, 2, 3], [0, 1, 2, 3]):
        try:
            TF.max_pool2d(torch.tensor(x), k, 1, p, d)
            torch_ok = True
        except RuntimeError:
            torch_ok = False
        try:
            max_pool2d(x, k, 1, p, d)
            ours_ok = True
        except ValueError as e:
            assert "padding" in str(e)
            ours_ok = False
        assert ours_ok == torch_ok, (k, d, p)


def test_max_pool2d_tiled_non_contiguous_input(xp, monkeypatch):
    """Tiles read from a strided view whose (N, C) axes cannot merge (every other sample,
    row and column): slabs that cross samples still see the right planes."""
    import minifcn.functional.pool as pool
    monkeypatch.setattr(pool, "POOL_SLAB_ELEMENTS", 3 * 6 * 8)     # 3 planes per slab
    base = distinct_values((4, 3, 12, 9), np.random.default_rng(8), np.float64)
    x = base[::2, :, ::2, 1:]                                       # (2, 3, 6, 8)
    assert not x.flags.c_contiguous
    check_max_pool2d(xp, x, 9, kernel=2, stride=2, padding=0, dilation=1, ceil_mode=False)


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode",
                         [g for g in GRID if g[2] != 0 or g[4]])     # padded or ceil-mode windows
def test_max_pool2d_window_of_minus_infinity_reports_its_first_pixel(xp, kernel, stride,
                                                                      padding, dilation,
                                                                      ceil_mode):
    """Windows whose pixels are all -inf tie with their -inf padding. torch never looks at
    the padding and reports the window's first pixel, which gets the gradient; so must we."""
    rng = np.random.default_rng(14)
    x = distinct_values((2, 3, H, W), rng, np.float64)
    x[rng.random(x.shape) < 0.8] = -np.inf
    x[0, 0] = -np.inf                                   # one whole plane
    check_max_pool2d(xp, x, 15, kernel=kernel, stride=stride, padding=padding,
                     dilation=dilation, ceil_mode=ceil_mode, exact=True)
