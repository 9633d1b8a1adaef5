"""The notes' size table, reproduced exactly.

Input ``randn(1, 3, 3, 3)``, ``ConvTranspose2d(3, 3, k, s, p)``; out = (in - 1)*s - 2p + k:

    | kernel | stride | padding | output    |
    | 2      | 1      | 0       | 1x3x4x4   |
    | 2      | 1      | 1       | 1x3x2x2   |
    | 3      | 1      | 0       | 1x3x5x5   |
    | 3      | 1      | 1       | 1x3x3x3   |
    | 2      | 2      | 0       | 1x3x6x6   |
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_close, to_np
from minifcn import nn
from minifcn.functional import conv_transpose_output_size

TABLE = [
    # kernel, stride, padding, output shape
    (2, 1, 0, (1, 3, 4, 4)),
    (2, 1, 1, (1, 3, 2, 2)),
    (3, 1, 0, (1, 3, 5, 5)),
    (3, 1, 1, (1, 3, 3, 3)),
    (2, 2, 0, (1, 3, 6, 6)),
]


@pytest.mark.parametrize("algorithm", ["auto", "col2im", "subpixel"])
@pytest.mark.parametrize("k,s,p,shape", TABLE)
def test_size_table_minifcn(xp, k, s, p, shape, algorithm):
    x = np.random.default_rng(0).standard_normal((1, 3, 3, 3)).astype(np.float32)
    layer = nn.ConvTranspose2d(3, 3, k, s, p, seed=0, algorithm=algorithm)
    if xp is not np:
        layer.to("cuda")
    y = layer.forward(xp.asarray(x))
    assert tuple(y.shape) == shape
    assert layer.output_size((3, 3)) == shape[2:]
    assert conv_transpose_output_size(3, k, s, p) == (3 - 1) * s - 2 * p + k == shape[2]


@pytest.mark.parametrize("k,s,p,shape", TABLE)
def test_size_table_torch_and_values(k, s, p, shape):
    """torch gives the same shapes — and, with the same weights, the same numbers."""
    x = torch.randn(1, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    t = torch.nn.ConvTranspose2d(3, 3, k, s, p)
    yt = t(x)
    assert tuple(yt.shape) == shape
    layer = nn.ConvTranspose2d(3, 3, k, s, p)
    layer.params["weight"] = t.weight.detach().numpy().copy()
    layer.params["bias"] = t.bias.detach().numpy().copy()
    y = layer.forward(x.numpy())
    assert y.shape == shape
    assert_close(to_np(y), yt.detach().numpy().astype(np.float64), np.float32, "values")
