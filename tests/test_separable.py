"""The separable path of FCN's frozen bilinear upsamplers (minifcn.functional.separable):
two 1-D transposed convolutions per channel, held to torch's 2-D ``conv_transpose2d`` with
the whole (C, C, kh, kw) weight, and the layer's choice of it held to the general path."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as TF

from conftest import assert_close, assert_same_non_finite, torch_grads, torch_grads_random_dy
from minifcn import nn
from minifcn.functional.separable import (axis_matrix, conv_transpose2d_separable,
                                          conv_transpose2d_separable_input_grad,
                                          separable_factors)
from minifcn.models.fcn import bilinear_weight


def _diagonal_weight(u, v, c, dtype=np.float64):
    w = np.zeros((c, c, len(u), len(v)), dtype)
    w[np.arange(c), np.arange(c)] = np.outer(u, v)
    return w


def test_axis_matrix_is_the_1d_transposed_convolution():
    """Against a stamping loop: input i adds k[t] to output s*i + t - p."""
    rng = np.random.default_rng(0)
    for k_len, size_in, s, p, extra in [(4, 5, 2, 1, 0), (16, 3, 8, 4, 3), (3, 4, 1, 0, 0),
                                        (5, 6, 3, 2, 2)]:
        k = rng.standard_normal(k_len)
        size_out = (size_in - 1) * s - 2 * p + k_len + extra
        ref = np.zeros((size_out, size_in))
        for i in range(size_in):
            for t in range(k_len):
                if 0 <= s * i + t - p < size_out:
                    ref[s * i + t - p, i] += k[t]
        np.testing.assert_array_equal(axis_matrix(k, size_in, s, p, size_out), ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,c,h,w,kh,kw,s,p,op", [
    (2, 3, 5, 4, 4, 4, (2, 2), (1, 1), (0, 0)),       # upscore2
    (1, 4, 3, 6, 16, 16, (8, 8), (4, 4), (0, 0)),     # upscore8
    (2, 2, 2, 3, 64, 64, (32, 32), (16, 16), (0, 0)), # FCN-32s's upscore
    (1, 3, 4, 5, 5, 3, (3, 2), (2, 0), (2, 1)),       # unequal everything, output_padding
])
def test_forward_and_input_grad_match_torch(dtype, n, c, h, w, kh, kw, s, p, op):
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(kh), rng.standard_normal(kw)
    weight = _diagonal_weight(u, v, c, dtype)
    x = rng.standard_normal((n, c, h, w)).astype(dtype) + 0.5
    y_ref, dy, grads = torch_grads_random_dy(
        lambda x, w: TF.conv_transpose2d(x, w, None, s, p, op), {"x": x, "w": weight}, rng, dtype)
    fu, fv = separable_factors(weight)
    th = axis_matrix(fu, h, s[0], p[0], y_ref.shape[2])
    tw = axis_matrix(fv, w, s[1], p[1], y_ref.shape[3])
    y = conv_transpose2d_separable(x, th, tw)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, "y")
    dx = conv_transpose2d_separable_input_grad(dy, th, tw)
    assert_close(dx, grads["x"], dtype, "dx")


def test_separable_factors_finds_the_bilinear_kernel_and_nothing_else():
    w = bilinear_weight(3, 16)
    u, v = separable_factors(w)
    np.testing.assert_allclose(np.outer(u, v), w[0, 0], rtol=0, atol=1e-7)
    rng = np.random.default_rng(2)
    off = w.copy()
    off[0, 1, 3, 3] = 1e-3                               # one value off the channel diagonal
    unequal = w.copy()
    unequal[2, 2] *= 2                                   # one channel's kernel differs
    rank2 = _diagonal_weight(rng.standard_normal(4), rng.standard_normal(4), 2)
    rank2[:, :, 0, 0] += np.eye(2)                       # a kernel that is not an outer product
    for bad in (off, unequal, rank2, np.zeros((2, 3, 4, 4)),     # C != O
                w.astype(np.int64), np.zeros((2, 2, 4, 4))):     # integers; all zero
        assert separable_factors(bad) is None


def _upsampler(c=4, k=16, s=8, p=4, frozen=True, dtype=np.float64, **kwargs):
    layer = nn.ConvTranspose2d(c, c, k, s, p, bias=False, **kwargs)
    layer.params["weight"] = bilinear_weight(c, k, dtype)
    if frozen:
        layer.frozen.add("weight")
    return layer


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_frozen_bilinear_layer_runs_separable_and_gives_the_general_answer(dtype):
    """FCN's upsampler as the models build it: the layer takes the separable path, and its
    output and dx are torch's (and so the general path's)."""
    rng = np.random.default_rng(3)
    layer = _upsampler(dtype=dtype)
    x = rng.standard_normal((2, 4, 5, 6)).astype(dtype)
    y = layer.forward(x)
    assert layer._axes is not None and y.dtype == dtype          # the separable path ran
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.dtype == dtype
    y_ref, grads = torch_grads(lambda x, w: TF.conv_transpose2d(x, w, None, 8, 4),
                               {"x": x, "w": layer.weight}, dy)
    assert_close(y, y_ref, dtype, "y")
    assert_close(dx, grads["x"], dtype, "dx")
    assert "weight" not in layer.grads                   # frozen: no weight gradient
    layer.need_input_grad = False
    layer.forward(x)
    assert layer.backward(dy) is None


@pytest.mark.parametrize("case", ["learned", "bias", "algorithm", "not separable"])
def test_other_upsamplers_take_the_general_path(case):
    layer = _upsampler(frozen=case != "learned", algorithm="col2im" if case == "algorithm"
                       else "auto")
    if case == "bias":
        layer.params["bias"] = np.zeros(4)
    if case == "not separable":
        layer.params["weight"][0, 1, 0, 0] = 0.5
    x = np.random.default_rng(4).standard_normal((1, 4, 3, 3))
    y = layer.forward(x)
    assert layer._axes is None
    ref, _ = torch_grads(lambda x, w: TF.conv_transpose2d(x, w, None, 8, 4),
                         {"x": x, "w": layer.weight})
    assert_close(y - (0 if layer.bias is None else layer.bias[None, :, None, None]), ref,
                 np.float64, case)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_values_keep_torch_s_pattern():
    """An inf in x (or dy) times the weight's zeros is NaN in torch, in every channel that
    reads it; the separable path would keep it to its own channel, so such calls take the
    general path: inf and NaN exactly where float64 torch has them."""
    rng = np.random.default_rng(5)
    layer = _upsampler(c=3, k=4, s=2, p=1)
    x = rng.standard_normal((1, 3, 4, 4))
    x[0, 1, 2, 2] = np.inf
    y = layer.forward(x)
    assert layer._axes is None
    ref, _ = torch_grads(lambda x, w: TF.conv_transpose2d(x, w, None, 2, 1),
                         {"x": x, "w": layer.weight})
    assert_same_non_finite(y, ref, "y")
    x[0, 1, 2, 2] = 0.0
    y = layer.forward(x)
    assert layer._axes is not None
    dy = rng.standard_normal(y.shape)
    dy[0, 0, 3, 3] = np.nan
    _, grads = torch_grads(lambda x, w: TF.conv_transpose2d(x, w, None, 2, 1),
                           {"x": x, "w": layer.weight}, dy)
    assert_same_non_finite(layer.backward(dy), grads["x"], "dx")


@pytest.mark.parametrize("x_dtype,dy_dtype", [(np.float64, np.float32),
                                              (np.float32, np.float64)])
def test_mixed_dtypes_take_the_general_path_in_float64(x_dtype, dy_dtype):
    """A float32 weight's factors hold it to float32's last places: a float64 input (or
    grad_output) on it takes the general path, computed in float64 as the general path
    does."""
    rng = np.random.default_rng(6)
    layer = _upsampler()
    layer.params["weight"] = layer.weight.astype(np.float32)
    x = rng.standard_normal((1, 4, 3, 3)).astype(x_dtype)
    y = layer.forward(x)
    assert (layer._axes is None) == (x_dtype == np.float64)
    dy = rng.standard_normal(y.shape).astype(dy_dtype)
    dx = layer.backward(dy)
    assert dx.dtype == np.float64
    y_ref, grads = torch_grads(lambda x, w: TF.conv_transpose2d(x, w, None, 8, 4),
                               {"x": x, "w": layer.weight}, dy)
    assert_close(y, y_ref, x_dtype, "y")
    assert_close(dx, grads["x"], np.float64, "dx")
