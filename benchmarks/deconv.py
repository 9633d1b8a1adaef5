"""Transposed convolution, minifcn against torch (oneDNN on the CPU, cuDNN on the GPU).

    python -m benchmarks.deconv --device cpu                 # writes deconv_cpu.json
    python -m benchmarks.deconv --device cuda --sweep --json deconv_cuda.json

For each shape: forward, and backward (input + weight gradients together, as a training
step needs them), for minifcn's algorithms ('col2im': GEMM + col2im; 'subpixel': the
phase decomposition; 'fused': col2im with the GEMM folded in, one kernel on the GPU and
one GEMM per tap on the CPU; 'implicit': the phases as GEMMs that read the padded input
in place, no im2col; 'auto': what the package picks) and torch, in one process on the
same float32 inputs. Every minifcn variant is first checked against torch on those
inputs; one that disagrees is reported and not timed.

Columns: median ms; ratio = minifcn / torch, the median of per-round ratios (all
variants and torch are timed interleaved, round by round; below 1: minifcn faster); GFLOP/s of the
useful arithmetic (2 * N * C_in * C_out * kh * kw * H * W per pass, twice that for
backward; it includes the taps that the padding crops away, 6% for k64 s32 p16, the same
count for both sides); GB/s of the least traffic (inputs and outputs once) — beside the
measured ceilings of the machine (a large copy, a large matmul).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from minifcn.cli import run_main
from minifcn.functional import conv_transpose2d, conv_transpose2d_backward
from minifcn.functional.conv import _geometry, _pick_algorithm

from .common import (add_json_flag, ceilings, paired_ratio, positive_int, rel_error,
                     start, table, validated, write_json)

# (name, N, C_in, C_out, H, W, k, s, p): FCN's upsampling layers and a decoder layer
FCN_SHAPES = [
    ("upscore 32x, 16x16", 1, 21, 21, 16, 16, 64, 32, 16),
    ("upscore 32x, 32x32", 1, 21, 21, 32, 32, 64, 32, 16),
    ("upscore2 k4s2, 16x16", 1, 21, 21, 16, 16, 4, 2, 0),
    ("upscore2 k4s2p1, 16x16", 1, 21, 21, 16, 16, 4, 2, 1),
    ("upscore8 k16s8, 64x64", 1, 21, 21, 64, 64, 16, 8, 0),
    ("256->128 k4s2p1, b8 32x32", 8, 256, 128, 32, 32, 4, 2, 1),
]


def sweep_shapes():
    out = []
    for c in (21, 64, 256):
        for k, s in ((4, 2), (8, 4), (16, 8), (32, 16), (64, 32)):
            for n in (1, 4):
                if c * c * k * k * n > 64 * 64 * 64 * 64:     # keep each case under ~1 s on a CPU
                    continue
                out.append((f"sweep c{c} k{k}s{s} b{n}", n, c, c, 16, 16, k, s, s // 2))
    return out


# 'implicit' is a CPU algorithm ('auto' never takes it on the GPU): on CuPy its phase
# shuffle is tens of thousands of small copies per call, minutes of the GPU session's time
ALGORITHMS_TIMED = {"cpu": ["auto", "col2im", "subpixel", "fused", "implicit", "winograd"],
                    "cuda": ["auto", "col2im", "subpixel", "fused"]}


def run_shape(shape, device, timer, repeats, torch):
    name, n, cin, cout, h, w, k, s, p = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    wt = (rng.standard_normal((cin, cout, k, k)) / np.sqrt(cin * k * k / s / s)).astype(np.float32)
    if device == "cuda":
        import cupy
        xd, wd = cupy.asarray(x), cupy.asarray(wt)
        tdev = "cuda"
    else:
        xd, wd, tdev = x, wt, "cpu"
    xt, wtt = torch.tensor(x, device=tdev), torch.tensor(wt, device=tdev)
    yt = torch.nn.functional.conv_transpose2d(xt, wtt, stride=s, padding=p)
    dy = rng.standard_normal(tuple(yt.shape), dtype=np.float32)
    dyt = torch.tensor(dy, device=tdev)
    dyd = cupy.asarray(dy) if device == "cuda" else dy

    def torch_fwd():
        return torch.nn.functional.conv_transpose2d(xt, wtt, stride=s, padding=p)

    def torch_bwd():
        return torch.ops.aten.convolution_backward(dyt, xt, wtt, None, [s, s], [p, p], [1, 1],
                                                   True, [0, 0], 1, [True, True, False])
    ref_dx, ref_dw, _ = torch_bwd()
    refs = [yt.cpu().numpy(), ref_dx.cpu().numpy(), ref_dw.cpu().numpy()]
    flops = 2.0 * n * cin * cout * k * k * h * w
    out_elems = int(np.prod(yt.shape))
    fwd_bytes = 4 * (x.size + wt.size + out_elems)
    bwd_bytes = 4 * (out_elems + x.size + wt.size + x.size + wt.size)
    g = _geometry("conv_transpose2d", xd, wd, None, s, p, 1, 1, 0)      # what 'auto' resolves to
    base = {"shape": name, "out": "x".join(map(str, yt.shape)),
            "macs": n * cin * cout * k * k * h * w, "auto_fwd": _pick_algorithm("auto", g),
            "auto_bwd": _pick_algorithm("auto", g, backward=True)}
    fwd_fns, bwd_fns, rows, errs = {"torch": torch_fwd}, {"torch": torch_bwd}, [], {}
    for alg in ALGORITHMS_TIMED[device]:
        def fwd(alg=alg):
            return conv_transpose2d(xd, wd, None, s, p, algorithm=alg)

        def bwd(alg=alg):
            return conv_transpose2d_backward(dyd, xd, wd, s, p, need_bias_grad=False, algorithm=alg)
        got = [fwd(), *bwd()[:2]]
        errors = [rel_error(g, r) for g, r in zip(got, refs)]
        if not validated(errors):               # refuse to time a variant that is wrong
            rows.append({**base, "impl": f"minifcn {alg}", "note": f"FAILED validation {errors}"})
            continue
        fwd_fns[f"minifcn {alg}"], bwd_fns[f"minifcn {alg}"] = fwd, bwd
        errs[f"minifcn {alg}"] = max(errors)
    tf, tb = timer.rounds(fwd_fns, repeats), timer.rounds(bwd_fns, repeats)
    for impl in fwd_fns:
        f_ms, b_ms = statistics.median(tf[impl]), statistics.median(tb[impl])
        row = {**base, "impl": impl, "fwd_ms": f_ms, "bwd_ms": b_ms,
               "fwd_GFLOPs": flops / f_ms / 1e6, "bwd_GFLOPs": 2 * flops / b_ms / 1e6,
               "fwd_GBps": fwd_bytes / f_ms / 1e6, "bwd_GBps": bwd_bytes / b_ms / 1e6}
        if impl != "torch":
            row.update(fwd_ratio=paired_ratio(tf[impl], tf["torch"]),
                       bwd_ratio=paired_ratio(tb[impl], tb["torch"]), max_rel_err=errs[impl])
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.deconv", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sweep", action="store_true", help="also the sweep over channels, kernel, batch")
    p.add_argument("--repeats", type=positive_int, default=10)
    add_json_flag(p, "deconv")
    args, torch, timer, info = start(p, argv, "deconv")
    info["repeats"] = args.repeats
    info["ceilings"] = c = ceilings(args.device, timer, torch)
    print(f"{info.get('gpu', info['cpu'])}: copy {c['copy_GBps']:.0f} GB/s, float32 matmul "
          f"{c['matmul_GFLOPs']:.0f} GFLOP/s ({c['torch_matmul_GFLOPs']:.0f} through torch: "
          f"minifcn's GEMM at {c['matmul_ratio']:.2f}x of torch's time)")
    if args.device == "cpu":
        print(f"NumPy's BLAS: {info['blas']}")
    shapes = FCN_SHAPES + (sweep_shapes() if args.sweep else [])
    rows = []
    cols = ["shape", "impl", "fwd_ms", "fwd_ratio", "bwd_ms", "bwd_ratio", "fwd_GFLOPs",
            "bwd_GFLOPs", "fwd_GBps", "bwd_GBps", "note"]
    for i, shape in enumerate(shapes):
        new = run_shape(shape, args.device, timer, args.repeats, torch)
        rows += new
        # as it goes: a run cut short (a device session's time limit) keeps what it measured
        print(f"[{i + 1}/{len(shapes)}]", table(new, cols), sep="\n", flush=True)
        info["busy_turns"] = timer.busy_turns
        write_json(args.json, {"machine": info, "device": args.device, "rows": rows,
                               "complete": i + 1 == len(shapes)}, quiet=i + 1 < len(shapes))
    print("\nAll shapes:")
    print(table(rows, cols))
    print("\nWhat 'auto' picks against the fastest algorithm of each shape (by ratio to torch):")
    print(table(auto_check(rows), ["shape", "macs", "auto_fwd", "best_fwd", "auto_fwd_vs_best",
                                   "auto_bwd", "best_bwd", "auto_bwd_vs_best"]))
    return 0


def auto_check(rows):
    """Per shape: the algorithm 'auto' resolved to, the fastest explicit one (lowest median
    ratio to torch), and auto's ratio over that best one (1.0: auto picked the best;
    above: by how much its pick lost). This is how the rules in _pick_algorithm
    (thresholds such as GPU_FUSED_MAX_MACS) are checked against a machine. 'fused' is
    not ranked for the backward: its backward is 'col2im''s code."""
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        timed = {r["impl"].split()[-1]: r for r in rows
                 if r["shape"] == shape and r["impl"].startswith("minifcn") and "fwd_ratio" in r}
        if "auto" not in timed or len(timed) < 2:
            continue
        auto = timed.pop("auto")
        entry = {"shape": shape, "macs": auto["macs"]}
        for d in ("fwd", "bwd"):
            ranked = [a for a in timed if not (d == "bwd" and a == "fused")]
            best = min(ranked, key=lambda a: timed[a][f"{d}_ratio"])
            entry.update({f"auto_{d}": auto[f"auto_{d}"], f"best_{d}": best,
                          f"auto_{d}_vs_best": auto[f"{d}_ratio"] / timed[best][f"{d}_ratio"]})
        out.append(entry)
    return out


if __name__ == "__main__":
    sys.exit(run_main(main))
