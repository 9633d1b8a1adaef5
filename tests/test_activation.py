"""ReLU against torch (including the kink: gradient 0 at exactly 0), and dropout's contract:
statistics, eval identity, backward through the forward mask, p = 0 and p = 1, the
channel-wise form, seeded reproducibility."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from conftest import to_np, torch_grads
from minifcn import nn
from minifcn.functional import dropout, dropout_backward, dropout_mask, relu, relu_backward

DTYPES = [np.float64, np.float32]


# -- ReLU ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_relu_matches_torch_including_exact_zeros(xp, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    x[0, 0, :2] = 0.0                     # the kink: torch's gradient there is 0
    x[1, 2, 3] = -0.0
    dy = rng.standard_normal(x.shape).astype(dtype)
    y = relu(xp.asarray(x))
    dx = relu_backward(xp.asarray(dy), y)
    y_ref, g = torch_grads(lambda x: TF.relu(x), {"x": x}, dy)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(to_np(y), y_ref.astype(dtype))
    np.testing.assert_array_equal(to_np(dx), g["x"].astype(dtype))
    assert (to_np(dx)[0, 0, :2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_relu_backward_is_a_select_for_inf_and_nan(xp, dtype):
    """Where y <= 0 the gradient is 0 even if dy is inf or NaN (torch selects; a product
    with the mask would give NaN there); where y > 0 they pass through unchanged."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 6)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    flat = dy.reshape(-1)
    for value in (np.nan, np.inf, -np.inf):
        flat[rng.choice(flat.size, 12, replace=False)] = value
    dx = to_np(relu_backward(xp.asarray(dy), relu(xp.asarray(x))))
    ref = torch.ops.aten.threshold_backward(torch.tensor(dy), torch.tensor(x), 0).numpy()
    np.testing.assert_array_equal(dx, ref)                   # NaN matches NaN
    assert (dx[x <= 0] == 0).all() and np.isnan(dx).sum() == np.isnan(dy[x > 0]).sum() > 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_against_isfinite(dtype):
    """The cheap test that picks the product path: True exactly for finite arrays (float16
    too, whose sum of squares would overflow), False for any NaN or inf."""
    from minifcn.functional._select import all_finite
    a = np.ones((1 << 18,), dtype)                 # sum of squares 262144 > float16's max
    assert all_finite(a) and all_finite(a[::3]) and all_finite(a[:0])
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[12345] = bad
        assert not all_finite(b) and not np.isfinite(b).all()


def test_dropout_in_eval_mode_is_the_identity_for_any_dtype():
    """As in torch; training mode, which scales by 1/(1-p), refuses integer input."""
    x = np.arange(6).reshape(2, 3)
    y, mask = dropout(x, 0.5, training=False)
    assert y is x and mask is None
    layer = nn.Dropout(0.5)
    layer.eval()
    assert layer.forward(x) is x
    with pytest.raises(ValueError, match="floating-point"):
        dropout(x, 0.5, training=True)


def test_relu_layer_backward_at_zero_is_zero(xp):
    layer = nn.ReLU()
    x = xp.asarray(np.array([[[[-1.0, 0.0, 2.0]]]]))
    y = layer.forward(x)
    np.testing.assert_array_equal(to_np(y), [[[[0.0, 0.0, 2.0]]]])
    np.testing.assert_array_equal(to_np(layer.backward(xp.ones((1, 1, 1, 3)))), [[[[0, 0, 1.0]]]])


def test_relu_does_not_modify_input(xp):
    x = np.array([[[[-1.0, 2.0]]]])
    xd = xp.asarray(x)
    relu(xd)
    np.testing.assert_array_equal(to_np(xd), x)


# -- dropout ---------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_dropout_statistics(xp, p, dtype):
    """Fraction dropped ~ p and mean preserved, each within 5 standard errors."""
    n = 200_000
    x = xp.ones((8, 25, 25, 40), dtype=dtype)                   # 200k ones
    y, mask = dropout(x, p, True, np.random.default_rng(1) if xp is np else None)
    y = to_np(y).astype(np.float64)
    dropped = float((y == 0).mean())
    assert abs(dropped - p) <= 5 * np.sqrt(p * (1 - p) / n), dropped
    # y is 0 or 1/(1-p): mean 1, variance p/(1-p)
    assert abs(y.mean() - 1.0) <= 5 * np.sqrt(p / (1 - p) / n), y.mean()
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - p), rtol=1e-6)


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_dropout2d_statistics_and_whole_maps(xp, p):
    """Channel-wise: each (n, c) map is either all dropped or all kept (scaled)."""
    x = xp.asarray(np.random.default_rng(2).uniform(1.0, 2.0, (50, 200, 3, 2)))  # no zeros
    y, mask = dropout(x, p, True, np.random.default_rng(3) if xp is np else None,
                      channelwise=True)
    y, xh = to_np(y), to_np(x)
    zero = (y == 0).reshape(50, 200, -1)
    assert (zero.all(axis=2) | ~zero.any(axis=2)).all(), "a map was partly dropped"
    maps_dropped = float(zero.all(axis=2).mean())
    n = 50 * 200
    assert abs(maps_dropped - p) <= 5 * np.sqrt(p * (1 - p) / n), maps_dropped
    keep = ~zero.all(axis=2)
    np.testing.assert_allclose(y.reshape(50, 200, -1)[keep],
                               xh.reshape(50, 200, -1)[keep] / (1 - p), rtol=1e-12)


@pytest.mark.parametrize("layer_cls", [nn.Dropout, nn.Dropout2d])
@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout_backward_uses_the_forward_mask(xp, layer_cls, p):
    """dx == 0 exactly where y == 0, and dy / (1 - p) elsewhere."""
    layer = layer_cls(p, seed=4)
    x = xp.asarray(np.random.default_rng(5).uniform(0.5, 1.5, (4, 6, 5, 5)))   # no zeros
    y = to_np(layer.forward(x))
    dy = np.random.default_rng(6).uniform(0.5, 1.5, y.shape)
    dx = to_np(layer.backward(xp.asarray(dy)))
    assert ((dx == 0) == (y == 0)).all()
    assert (y == 0).any() and (y != 0).any()
    np.testing.assert_allclose(dx[y != 0], dy[y != 0] / (1 - p), rtol=1e-12)
    # a second forward draws a new mask, and backward follows it
    y2 = to_np(layer.forward(x))
    dx2 = to_np(layer.backward(xp.asarray(dy)))
    assert not np.array_equal(y2 == 0, y == 0)
    assert ((dx2 == 0) == (y2 == 0)).all()


def test_dropout_functional_backward_matches_mask(xp):
    x = xp.asarray(np.random.default_rng(0).uniform(1, 2, (3, 4, 5, 6)))
    y, mask = dropout(x, 0.4, True, np.random.default_rng(9) if xp is np else None)
    dy = xp.asarray(np.random.default_rng(1).uniform(1, 2, (3, 4, 5, 6)))
    dx = to_np(dropout_backward(dy, mask))
    np.testing.assert_allclose(dx, to_np(dy) * to_np(y) / to_np(x), rtol=1e-12)


@pytest.mark.parametrize("layer_cls", [nn.Dropout, nn.Dropout2d])
def test_dropout_eval_is_identity(xp, layer_cls):
    layer = layer_cls(0.5, seed=0)
    assert layer.eval() is layer and layer.training is False
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 4)))
    np.testing.assert_array_equal(to_np(layer.forward(x)), to_np(x))
    dy = np.random.default_rng(1).standard_normal((2, 3, 4, 4))
    np.testing.assert_array_equal(to_np(layer.backward(xp.asarray(dy))), dy)
    y, mask = dropout(x, 0.5, training=False)
    assert mask is None
    np.testing.assert_array_equal(to_np(y), to_np(x))
    layer.train()
    assert layer.training is True
    assert (to_np(layer.forward(x)) == 0).any()


@pytest.mark.parametrize("layer_cls", [nn.Dropout, nn.Dropout2d])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_dropout_p0_and_p1(xp, layer_cls, dtype):
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(dtype))
    dy = xp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(dtype))
    keep_all = layer_cls(0.0, seed=0)
    np.testing.assert_array_equal(to_np(keep_all.forward(x)), to_np(x))
    np.testing.assert_array_equal(to_np(keep_all.backward(dy)), to_np(dy))
    drop_all = layer_cls(1.0, seed=0)
    y = to_np(drop_all.forward(x))
    dx = to_np(drop_all.backward(dy))
    assert np.isfinite(y).all() and np.isfinite(dx).all(), "p=1 must not produce NaN/inf"
    assert (y == 0).all() and (dx == 0).all()
    assert y.dtype == dx.dtype == np.dtype(dtype)
    mask = to_np(dropout_mask((2, 3), 1.0, np.random.default_rng(0), np.dtype(dtype)))
    assert (mask == 0).all()


@pytest.mark.parametrize("layer_cls", [nn.Dropout, nn.Dropout2d])
def test_dropout_seeded_is_reproducible(xp, layer_cls):
    x = xp.asarray(np.ones((3, 8, 6, 6)))
    a = [to_np(layer_cls(0.5, seed=123).forward(x)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    b = to_np(layer_cls(0.5, seed=124).forward(x))
    assert not np.array_equal(a[0], b)
    layer = layer_cls(0.5, seed=123)
    first, second = to_np(layer.forward(x)), to_np(layer.forward(x))
    assert not np.array_equal(first, second), "each forward must draw a fresh mask"
    if xp is np:      # the functional form with an explicit Generator
        f = [to_np(dropout(x, 0.5, True, np.random.default_rng(7))[0]) for _ in range(2)]
        np.testing.assert_array_equal(f[0], f[1])


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout_matches_torch_in_distribution_not_values(p):
    """The masks are different random draws, so the link to torch is the distribution: on
    the same 200,000 ones, minifcn and torch keep the same value 1/(1-p), and their drop
    rates agree within 5 standard errors of the difference of two rates."""
    n = 200_000
    torch.manual_seed(0)
    theirs = TF.dropout(torch.ones(n, dtype=torch.float64), p, training=True).numpy()
    ours, _ = dropout(np.ones((1, 1, 1, n)), p, True, np.random.default_rng(0))
    ours = ours.reshape(-1)
    for y in (ours, theirs):
        np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-15)
    se = np.sqrt(2 * p * (1 - p) / n)
    assert abs(np.mean(ours == 0) - np.mean(theirs == 0)) < 5 * se


def test_dropout_does_not_modify_input(xp):
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    xd = xp.asarray(x)
    dropout(xd, 0.5, True, np.random.default_rng(0) if xp is np else None)
    np.testing.assert_array_equal(to_np(xd), x)
