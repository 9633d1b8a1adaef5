"""Where the CPU time of one transposed convolution goes, beside torch's whole op.

    python -m benchmarks.profile_deconv                      # 256->128 k4 s2 p1, batch 8
    python -m benchmarks.profile_deconv --shape 1 21 21 16 16 4 2 1 --algorithm subpixel
    python -m benchmarks.profile_deconv --backward           # its input + weight gradients

Runs ``conv_transpose2d`` (with ``--backward``: ``conv_transpose2d_backward``, dx and dW,
against torch's ``convolution_backward``) under cProfile (after warm-up) and reports, per call, the time
inside each of the package's functions that does one step (cumulative time; for the
shifted-rows convolution its own time, which is its GEMMs: cProfile does not see
``numpy.matmul``, a ufunc) and the rest; a step that calls ``blas.gemm`` itself (the
Winograd output transform) is reported without it, its GEMM in the GEMM row. torch's
forward is timed in the same rounds, interleaved, each call after the other's worker
threads have gone to sleep, for the ratio. Every figure is a median over the rounds. cProfile adds ~1 us
per Python call, which these ops make a few dozen of. torch's time of the default shape
depends on the allocator's state (~120 ms in a fresh process, ~85 ms in the deconv
harness, benchmarks/HISTORY.md): the ratio here is context, the harness's is the number.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time

import numpy as np

from minifcn import openblas_core
from minifcn.cli import run_main
from minifcn.functional import conv_transpose2d, conv_transpose2d_backward
from minifcn.functional.conv import ALGORITHMS

from . import common
from .common import positive_int, rel_error, validated

# (label, function name as pstats writes it) of the steps reported
STEPS = [
    ("sub-pixel weight", "_subpixel_weight_t"),
    ("stack the images", "_stack_images"),
    ("shifted copies (im2col)", "_shifted_copies"),
    ("GEMM (shifted rows)", "_conv2d_shifted_rows"),
    ("GEMM (channels-last)", "_subpixel_channels_last"),
    ("shuffle (channels-last)", "_pixel_shuffle_channels_last"),
    ("pixel shuffle", "_pixel_shuffle"),
    ("GEMM (W^T @ x)", "_weight_t_times"),
    ("col2im", "_col2im"),
    ("fused (per-tap GEMMs)", "_conv_transpose2d_fused"),
    ("phase weights", "_gemm_plan"),
    ("stack the input", "_stack_input"),
    ("GEMMs (blas.gemm)", "gemm"),
    ("phase shuffle", "_shuffle_phases"),
    ("filter transform (winograd)", "filter_transform"),
    ("split into windows (winograd)", "_split_windows"),
    ("input transform (winograd)", "_input_transform"),
    ("output transform (winograd)", "_output_transform"),
    # the backward's
    ("un-shuffle dy (implicit)", "_unshuffle_phases"),
    ("im2col", "_im2col"),
    ("GEMM (W @ col)", "_weight_times_col"),
    ("GEMM (dy @ col^T)", "_dy_times_col_t"),
    ("output transform's adjoint (winograd)", "_output_transform_adjoint"),
    ("input transform's adjoint (winograd)", "_input_transform_adjoint"),
    ("windows back onto dx (winograd)", "_split_windows_adjoint"),
    ("filter transform's adjoint (winograd)", "filter_transform_adjoint"),
]


def step_times(stats):
    """``{function name: ms}`` from cProfile's ``stats``: each step's cumulative time less
    that of the GEMMs it calls itself (those count in the GEMM row once, so that the rows
    add up); for the shifted-rows convolutions their own time, which is their GEMMs
    (``numpy.matmul``, which cProfile does not see): their steps are reported apart."""
    times, nested_gemm = {}, {}                      # {name: [own s, cumulative s]}, {name: s}
    for (_, _, name), (_, _, tt, ct, callers) in stats.items():
        t = times.setdefault(name, [0.0, 0.0])
        t[0] += tt
        t[1] += ct
        if name == "gemm":
            for (_, _, caller), (_, _, _, caller_ct) in callers.items():
                nested_gemm[caller] = nested_gemm.get(caller, 0.0) + caller_ct
    out = {}
    for name, (t_own, t_cum) in times.items():
        if name in ("_conv2d_shifted_rows", "_subpixel_channels_last"):
            out[name] = t_own * 1e3
        elif name == "gemm":
            out[name] = t_cum * 1e3
        else:
            out[name] = (t_cum - nested_gemm.get(name, 0.0)) * 1e3
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_deconv",
                                description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=8, default=[8, 256, 128, 32, 32, 4, 2, 1],
                   metavar=("N", "C_IN", "C_OUT", "H", "W", "K", "S", "P"))
    p.add_argument("--algorithm", default="auto", choices=ALGORITHMS)
    p.add_argument("--repeats", type=positive_int, default=15)
    p.add_argument("--backward", action="store_true",
                   help="profile the backward (input and weight gradients) instead")
    args = p.parse_args(argv)
    n, cin, cout, h, w, k, s, pad = args.shape
    if min(n, cin, cout, h, w, k, s) < 1 or pad < 0:
        p.error(f"--shape N C_IN C_OUT H W K S P: every size must be >= 1 and P >= 0, got "
                f"{' '.join(map(str, args.shape))}")
    import torch
    common.fix_malloc_thresholds()                  # as the benchmarks time: see common
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    wt = (rng.standard_normal((cin, cout, k, k)) / np.sqrt(cin * k * k / s / s)).astype(np.float32)
    xt, wtt = torch.from_numpy(x), torch.from_numpy(wt)

    def ours():
        return conv_transpose2d(x, wt, None, s, pad, algorithm=args.algorithm)

    def theirs():
        return torch.nn.functional.conv_transpose2d(xt, wtt, stride=s, padding=pad)

    try:
        got = [ours()]
    except ValueError as e:                  # a shape the op refuses: say so, no traceback
        print(f"python -m benchmarks.profile_deconv: --shape {' '.join(map(str, args.shape))}: {e}",
              file=sys.stderr)
        return 2
    ref = [theirs().numpy()]
    if args.backward:
        dy = rng.standard_normal(ref[0].shape, dtype=np.float32)
        dyt = torch.from_numpy(dy)

        def ours():
            return conv_transpose2d_backward(dy, x, wt, s, pad, need_bias_grad=False,
                                             algorithm=args.algorithm)

        def theirs():
            return torch.ops.aten.convolution_backward(dyt, xt, wtt, None, [s, s], [pad, pad],
                                                       [1, 1], True, [0, 0], 1,
                                                       [True, True, False])
        got, ref = ours()[:2], [r.numpy() for r in theirs()[:2]]
    errors = [rel_error(a, b) for a, b in zip(got, ref)]
    err = max(errors)
    if not validated(errors):
        print(f"minifcn disagrees with torch (relative error {err:.2e}): not profiled")
        return 1
    for _ in range(2):                       # warm-up: allocations, BLAS threads
        ours(), theirs()
    ours_ms, torch_ms, steps = [], [], {name: [] for _, name in STEPS}
    for _ in range(args.repeats):
        # each timed call after the other's worker threads have gone to sleep (OpenBLAS's
        # spins ~0.13 s after a GEMM and would take torch's second core), as the harness does
        theirs()
        common.wait_for_idle_threads()
        t = time.perf_counter()
        theirs()
        torch_ms.append((time.perf_counter() - t) * 1e3)
        ours()
        common.wait_for_idle_threads()
        prof = cProfile.Profile()                    # one per round: medians per step
        t = time.perf_counter()
        prof.enable()
        ours()
        prof.disable()
        ours_ms.append((time.perf_counter() - t) * 1e3)
        for name, ms in step_times(pstats.Stats(prof).stats).items():
            if name in steps:
                steps[name].append(ms)
    total = statistics.median(ours_ms)
    op = "conv_transpose2d_backward" if args.backward else "conv_transpose2d"
    print(f"{op} {args.shape} algorithm={args.algorithm!r}: {total:.2f} ms "
          f"(median of {args.repeats}, profiled); torch {statistics.median(torch_ms):.2f} ms, "
          f"ratio {statistics.median(a / b for a, b in zip(ours_ms, torch_ms)):.2f}")
    accounted = 0.0
    for label, name in STEPS:
        if steps[name]:
            ms = statistics.median(steps[name])
            accounted += ms
            print(f"  {label:<24} {ms:8.2f} ms")
    print(f"  {'rest':<24} {max(0.0, total - accounted):8.2f} ms")
    print(f"NumPy's BLAS: {openblas_core.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
