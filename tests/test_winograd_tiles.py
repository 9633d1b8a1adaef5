"""benchmarks/winograd_tiles.py: the Toom-Cook construction of F(m, r) against the
correlation it stands for, the package's own matrices derived from it, and the error
table the project's choice of tiles rests on (benchmarks/RESULTS.md)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import winograd_tiles as wt
from minifcn.functional import winograd, winograd_transposed


def correlate(d, g, m):
    """``y[i] = sum_k g[k] d[i + k]`` for ``i < m``, by loops."""
    return np.array([sum(g[k] * d[i + k] for k in range(len(g))) for i in range(m)])


@pytest.mark.parametrize("m,r,points", [(2, 3, (0, 1, -1)), (4, 3, (0, 1, -1, 2, -2)),
                                        (2, 2, (0, 1)), (3, 2, (0, 1, -1)),
                                        (4, 2, (0, 1, -1, 0.5)), (6, 2, (0, 1, -1, 0.5, -0.5, 2)),
                                        (3, 4, (0, 1, -1, 2, 3))])
def test_toom_cook_matrices_give_the_correlation(m, r, points):
    a_t, g, b_t = wt.toom_cook(m, r, points)
    n = m + r - 1
    assert a_t.shape == (m, n) and g.shape == (n, r) and b_t.shape == (n, n)
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(5):
        d, taps = rng.standard_normal(n), rng.standard_normal(r)
        np.testing.assert_allclose(a_t @ ((g @ taps) * (b_t @ d)), correlate(d, taps, m),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("module,m,r", [(winograd, 2, 3), (winograd_transposed, 3, 2)])
def test_the_package_matrices_are_toom_cooks_on_0_1_minus_1_up_to_scales(module, m, r):
    """The same products up to a scale per point: column ``j`` of ``A^T`` times ``a_j``,
    row ``j`` of ``G`` times ``c_j``, and row ``j`` of ``B^T`` divided by both, which
    leaves ``A^T [(G g) * (B^T d)]`` unchanged (Lavin's F(2, 3) negates the point at
    infinity's column and row)."""
    a_t, g, b_t = wt.toom_cook(m, r, (0, 1, -1))
    for j in range(m + r - 1):
        i, k = np.flatnonzero(a_t[:, j])[0], np.flatnonzero(g[j])[0]
        a, c = module.A_T[i, j] / a_t[i, j], module.G[j, k] / g[j, k]
        assert a != 0 and c != 0
        np.testing.assert_allclose(module.A_T[:, j], a * a_t[:, j], atol=1e-15)
        np.testing.assert_allclose(module.G[j], c * g[j], atol=1e-15)
        np.testing.assert_allclose(module.B_T[j], b_t[j] / (a * c), atol=1e-12)


def test_toom_cook_refuses_points_that_cannot_make_the_tile():
    with pytest.raises(ValueError, match="distinct"):
        wt.toom_cook(3, 2, (0, 1, 1))
    with pytest.raises(ValueError, match="needs 3 distinct finite points"):
        wt.toom_cook(3, 2, (0, 1))


def test_the_table_ranks_the_tiles_as_results_says(tmp_path, capsys):
    """The package's tiles stay within the 3x of the direct sum's float32 error that the
    tests allow; every larger tile for k = 2s, and F(4x4, 3x3), does not."""
    out = tmp_path / "tiles.json"
    assert wt.main(["--channels", "128", "--windows", "40", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert "error_ratio" in capsys.readouterr().out
    ours = [r for r in rows if r["matrices"] == "minifcn"]
    larger = [r for r in rows if r["matrices"] != "minifcn" and r["fewer_mults"] > 2.25]
    assert {r["tile"] for r in ours} == {"F(2x2, 3x3)", "F(3x3, 2x2)"}
    assert all(r["error_ratio"] < 3 for r in ours)
    assert larger and all(r["error_ratio"] > 3 for r in larger)
    assert all(r["direct_rms"] > 0 for r in rows)
