"""Winograd's F(m, r) for larger tiles: the multiply-adds it would save, and its float32 error.

    python -m benchmarks.winograd_tiles
    python -m benchmarks.winograd_tiles --channels 512 --windows 400

Why minifcn's two Winograd paths stop where they do: conv2d runs F(2x2, 3x3)
(``minifcn/functional/winograd.py``), and the transposed convolution with k = 2s runs
F(3x3, 2x2) per phase (``winograd_transposed.py``). A larger output tile ``m`` does fewer
multiply-adds, ``(m r)^2 / (m + r - 1)^2`` times fewer in 2-D, but it needs more
interpolation points, the transforms' coefficients grow with them (2, 1/2, 4, ...), and
so does float32 rounding.

Each tile's matrices come from the Toom-Cook construction on its points
(:func:`minifcn.explain.toom_cook`; the point at infinity is always the last), checked
exact in float64 before use; the rows marked ``minifcn`` use the package's own matrices
instead. Then the 2-D F(m x m, r x r) runs on ``--windows`` random windows summed over
``--channels`` input channels in float32, as the package's GEMMs sum them, and so does
the direct sum; both are compared with the direct sum in float64. ``error_ratio`` is the
root-mean-square error of Winograd over that of the direct float32 sum; the tests allow
minifcn's Winograd paths 3x the direct path's (largest) error (``tests/test_winograd*.py``).
Counts, not timings: the run takes seconds, and its numbers do not depend on the
machine's speed.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from minifcn.cli import run_main
from minifcn.explain import toom_cook
from minifcn.functional import winograd, winograd_transposed

from .common import add_json_flag, command_line, json_path, machine, positive_int, table, write_json

# (m, r, the finite points, whose matrices): conv2d's tiles (r = 3), then the transposed
# convolution's (r = 2); None: the Toom-Cook construction's
TILES = [
    (2, 3, (0, 1, -1), "minifcn"),
    (4, 3, (0, 1, -1, 2, -2), None),
    (4, 3, (0, 1, -1, 0.5, -2), None),
    (2, 2, (0, 1), None),
    (3, 2, (0, 1, -1), "minifcn"),
    (4, 2, (0, 1, -1, 0.5), None),
    (4, 2, (0, 1, -1, 2), None),
    (5, 2, (0, 1, -1, 0.5, -0.5), None),
    (6, 2, (0, 1, -1, 0.5, -0.5, 2), None),
]


def package_matrices(m, r):
    """The matrices minifcn runs for this tile: conv2d's F(2, 3), the transposed
    convolution's F(3, 2)."""
    module = {(2, 3): winograd, (3, 2): winograd_transposed}[(m, r)]
    return module.A_T, module.G, module.B_T


def direct_2d(d, g, m):
    """The direct 2-D correlation: d (T, C, n, n) windows, g (O, C, r, r) -> (T, O, m, m),
    summed over C in ``d``'s dtype."""
    r = g.shape[-1]
    y = np.zeros((d.shape[0], g.shape[0], m, m), dtype=d.dtype)
    for u in range(r):
        for v in range(r):
            y += np.einsum("tcij,oc->toij", d[:, :, u:u + m, v:v + m], g[:, :, u, v])
    return y


def winograd_2d(d, g, a_t, gm, b_t):
    """F(m x m, r x r) on the same windows, in ``d``'s dtype: ``U = G g G^T``, ``V = B^T d
    B``, ``M = sum over C of U * V`` (the GEMMs' sums), ``Y = A^T M A``."""
    a_t, gm, b_t = (x.astype(d.dtype) for x in (a_t, gm, b_t))
    u = np.einsum("ia,ocab,jb->ocij", gm, g, gm)
    v = np.einsum("ia,tcab,jb->tcij", b_t, d, b_t)
    return np.einsum("ai,toij,bj->toab", a_t, np.einsum("ocij,tcij->toij", u, v), a_t)


def measure(m, r, points, which, channels, windows, outputs=8, seed=0):
    """One row of the table: the tile, its saving, and the float32 errors."""
    a_t, gm, b_t = package_matrices(m, r) if which == "minifcn" else toom_cook(m, r, points)
    n = m + r - 1
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((windows, channels, n, n))
    g = rng.standard_normal((outputs, channels, r, r)) / np.sqrt(channels * r * r)
    exact = direct_2d(d, g, m)
    wrong = np.abs(winograd_2d(d, g, a_t, gm, b_t) - exact).max() / np.abs(exact).max()
    if wrong > 1e-12:                           # the matrices must be exact before use
        raise ValueError(f"F({m}, {r}) on {points}: float64 error {wrong:.1e}")
    d32, g32 = d.astype(np.float32), g.astype(np.float32)

    def rms(y):
        return float(np.sqrt(np.mean((y.astype(np.float64) - exact) ** 2)))

    wino, direct = rms(winograd_2d(d32, g32, a_t, gm, b_t)), rms(direct_2d(d32, g32, m))
    return {"tile": f"F({m}x{m}, {r}x{r})", "points": ", ".join(f"{p:g}" for p in points) + ", inf",
            "matrices": which or "Toom-Cook", "fewer_mults": (m * r) ** 2 / n ** 2,
            "largest_coefficient": float(max(np.abs(x).max() for x in (a_t, gm, b_t))),
            "winograd_rms": wino, "direct_rms": direct, "error_ratio": wino / direct}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.winograd_tiles",
                                description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=positive_int, default=256,
                   help="input channels each output sums over (default 256)")
    p.add_argument("--windows", type=positive_int, default=200,
                   help="random windows per tile (default 200)")
    p.add_argument("--device", choices=("cpu",), default="cpu", help=argparse.SUPPRESS)
    add_json_flag(p, "winograd_tiles")
    args = p.parse_args(argv)
    args.json = json_path(p, args, "winograd_tiles")
    info = machine("cpu", command_line("benchmarks.winograd_tiles", argv))
    rows = [measure(m, r, pts, which, args.channels, args.windows) for m, r, pts, which in TILES]
    print(f"float32, {args.channels} input channels, {args.windows} windows per tile; "
          "errors against the float64 direct sum")
    print(table(rows, ["tile", "points", "matrices", "fewer_mults", "largest_coefficient",
                       "winograd_rms", "direct_rms", "error_ratio"]))
    write_json(args.json, {"machine": info, "channels": args.channels,
                           "windows": args.windows, "rows": rows, "complete": True})
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
