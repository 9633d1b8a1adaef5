"""Convolutions layer by layer of FCN-8s, minifcn against torch (oneDNN / cuDNN).

    python -m benchmarks.conv2d                        # the default training run's layers
    python -m benchmarks.conv2d --size 224 --width 1 --batch 1   # the paper's network

Every ``Conv2d`` of FCN-8s (VGG16, the notes' geometry) at the given input size, width and
batch (default: what ``python -m minifcn.train`` runs: 64x64, width 1/8, batch 16), with
its input shape taken from a forward pass of the model. Forward, and backward (the input
and weight gradients together; conv1_1's weight gradient alone, as in training), for:

- ``minifcn auto`` — what ``conv2d`` runs; the ``path`` column says which: ``winograd``
  (VGG's 3x3 layers with 256 channels and more: F(2x2, 3x3), 2.25x fewer multiply-adds),
  ``implicit`` (other VGG-sized layers: the convolution as a transposed one, no im2col),
  ``shifted`` (few channels: im2col as contiguous copies of shifted rows, one GEMM for
  the batch) or ``im2col``;
- ``minifcn direct`` (CPU, Winograd layers only) — the same with Winograd turned off: the
  path the layer took before it (``implicit`` from 64x64 outputs, else ``im2col``), for
  the speed-up in one process;
- ``minifcn im2col`` (CPU) — the textbook path, forced, for comparison;
- torch, on the same float32 inputs, in the same process.

Each minifcn variant is first checked against torch and not timed if it disagrees. All
are timed interleaved, round by round; a ratio is minifcn / torch, the median of the
per-round ratios. The last rows add up the layers: the network's convolutions per step.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys

import numpy as np

from minifcn.cli import positive_float, run_main
from minifcn.functional import conv as conv_module
from minifcn.functional import conv2d, conv2d_backward

from .common import (add_json_flag, paired_ratio, positive_int, rel_error, start,
                     table, validated, write_json)


def fcn8s_layers(size, width, batch):
    """``[(name, input shape, weight shape, padding), ...]`` for every Conv2d of FCN-8s,
    from a forward pass of the model on a ``batch x 3 x size x size`` input."""
    from minifcn.models import build_model
    from minifcn.nn.layers import Conv2d
    model = build_model("fcn8s", num_classes=21, width=width)
    model.forward(np.zeros((batch, 3, size, size), np.float32))
    return [(name, tuple(layer._x.shape), tuple(layer.weight.shape), layer.padding)
            for name, layer, _ in model.nodes if isinstance(layer, Conv2d)]


@contextlib.contextmanager
def _thresholds(**values):
    """Within: conv.py's thresholds set to ``values``; restored after."""
    saved = {name: getattr(conv_module, name) for name in values}
    for name, value in values.items():
        setattr(conv_module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(conv_module, name, value)


WINOGRAD_RULE = ("CPU_WINOGRAD_MIN_CHANNELS", "CPU_WINOGRAD_MIN_PIXELS",
                 "CPU_WINOGRAD_WIDE_MIN_PIXELS", "CPU_WINOGRAD_AVX512_MIN_CHANNELS",
                 "CPU_WINOGRAD_AVX512_MIN_PIXELS")      # conv._winograd_conv2d's bounds


def winograd_rule(on):
    """Within: conv2d takes Winograd wherever it can (``on``) or nowhere."""
    return _thresholds(**{name: 1 if on else 1 << 62 for name in WINOGRAD_RULE})


def no_winograd():
    """Within: conv2d and conv2d_backward do not take Winograd on the CPU."""
    return winograd_rule(False)


def im2col_only():
    """Within: conv2d and conv2d_backward take the im2col path on the CPU (neither
    Winograd, nor the implicit, nor the shifted-rows path)."""
    return _thresholds(**{name: 1 << 62 for name in WINOGRAD_RULE},
                       CPU_IMPLICIT_CONV2D_MIN_CHANNELS=1 << 62, CPU_SHIFTED_CONV2D_MAX_CHANNELS=0)


def path_taken(x, w, padding):
    """Which path ``conv2d`` takes for this layer: 'winograd', 'implicit', 'shifted' or
    'im2col' (for finite operands)."""
    g = conv_module._geometry("conv2d", x, w, None, 1, padding, 1, 1)
    if conv_module._winograd_conv2d(g):
        return "winograd"
    if conv_module._implicit_conv2d(g):
        return "implicit"
    return "shifted" if conv_module._shifted_conv2d(g) else "im2col"


def run_layer(layer, device, timer, repeats, torch):
    name, x_shape, w_shape, padding = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    need_dx = name != "conv1_1"                 # nothing upstream of the first layer
    tdev = "cuda" if device == "cuda" else "cpu"
    xt, wt = torch.tensor(x, device=tdev), torch.tensor(w, device=tdev)
    y_ref = torch.nn.functional.conv2d(xt, wt, padding=padding)
    dy = rng.standard_normal(tuple(y_ref.shape), dtype=np.float32)
    dyt = torch.tensor(dy, device=tdev)
    if device == "cuda":
        import cupy
        xd, wd, dyd = cupy.asarray(x), cupy.asarray(w), cupy.asarray(dy)
    else:
        xd, wd, dyd = x, w, dy

    def torch_fwd():
        return torch.nn.functional.conv2d(xt, wt, padding=padding)

    def torch_bwd():
        return torch.ops.aten.convolution_backward(dyt, xt, wt, None, [1, 1], list(padding),
                                                   [1, 1], False, [0, 0], 1,
                                                   [need_dx, True, False])
    ref_dx, ref_dw, _ = torch_bwd()
    refs = [y_ref.cpu().numpy(), None if ref_dx is None else ref_dx.cpu().numpy(),
            ref_dw.cpu().numpy()]
    flops = 2.0 * np.prod(dy.shape) * np.prod(w_shape[1:])
    base = {"layer": name, "input": "x".join(map(str, x_shape)),
            "weight": "x".join(map(str, w_shape)),
            "path": path_taken(x, w, padding) if device == "cpu" else "gpu"}
    contenders = [("minifcn auto", contextlib.nullcontext)]
    if device == "cpu":
        if base["path"] == "winograd":
            contenders.append(("minifcn direct", no_winograd))
        contenders.append(("minifcn im2col", im2col_only))
    fwd_fns, bwd_fns, rows, errs = {"torch": torch_fwd}, {"torch": torch_bwd}, [], {}
    for impl, context in contenders:
        def fwd(context=context):
            with context():
                return conv2d(xd, wd, None, 1, padding)

        def bwd(context=context):
            with context():
                return conv2d_backward(dyd, xd, wd, 1, padding, need_input_grad=need_dx,
                                       need_bias_grad=False)
        got = [fwd(), *bwd()[:2]]
        errors = [rel_error(g, r) for g, r in zip(got, refs) if r is not None]
        if not validated(errors):                 # refuse to time a path that is wrong
            rows.append({**base, "impl": impl, "note": f"FAILED validation {errors}"})
            continue
        fwd_fns[impl], bwd_fns[impl] = fwd, bwd
        errs[impl] = max(errors)
    tf, tb = timer.rounds(fwd_fns, repeats), timer.rounds(bwd_fns, repeats)
    for impl in fwd_fns:
        row = {**base, "impl": impl, "fwd_ms": statistics.median(tf[impl]),
               "bwd_ms": statistics.median(tb[impl]), "_fwd": tf[impl], "_bwd": tb[impl]}
        row["fwd_GFLOPs"] = flops / row["fwd_ms"] / 1e6
        if impl != "torch":
            row.update(fwd_ratio=paired_ratio(tf[impl], tf["torch"]),
                       bwd_ratio=paired_ratio(tb[impl], tb["torch"]), max_rel_err=errs[impl])
        rows.append(row)
    return rows


def totals(rows):
    """One row per contender: its per-round times summed over the layers (every layer
    timed by all of them), and the median ratio of those sums to torch's."""
    timed = [r for r in rows if "_fwd" in r]
    layers = {r["layer"] for r in timed}
    out, sums = [], {}
    for impl in dict.fromkeys(r["impl"] for r in timed):
        mine = [r for r in timed if r["impl"] == impl]
        if len(mine) != len(layers):              # failed somewhere: no fair total
            continue
        sums[impl] = {d: np.sum([r[f"_{d}"] for r in mine], axis=0) for d in ("fwd", "bwd")}
    for impl, s in sums.items():
        row = {"layer": "all layers", "impl": impl, "fwd_ms": float(np.median(s["fwd"])),
               "bwd_ms": float(np.median(s["bwd"]))}
        if impl != "torch" and "torch" in sums:
            row.update(fwd_ratio=paired_ratio(s["fwd"], sums["torch"]["fwd"]),
                       bwd_ratio=paired_ratio(s["bwd"], sums["torch"]["bwd"]))
        out.append(row)
    return out


def _public(rows):
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv2d", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--size", type=positive_int, default=64, help="input size (square)")
    p.add_argument("--width", type=positive_float, default=0.125,
                   help="channel multiplier of the VGG16 backbone")
    p.add_argument("--batch", type=positive_int, default=16, help="images per step")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="interleaved timed rounds per layer")
    add_json_flag(p, "conv2d")
    args, torch, timer, info = start(p, argv, "conv2d")
    info.update(repeats=args.repeats, size=args.size, width=args.width, batch=args.batch)
    layers = fcn8s_layers(args.size, args.width, args.batch)
    cols = ["layer", "input", "weight", "path", "impl", "fwd_ms", "fwd_ratio", "bwd_ms",
            "bwd_ratio", "fwd_GFLOPs", "note"]
    rows = []
    for i, layer in enumerate(layers):
        new = run_layer(layer, args.device, timer, args.repeats, torch)
        rows += new
        info["busy_turns"] = timer.busy_turns
        print(f"[{i + 1}/{len(layers)}]", table(new, cols), sep="\n", flush=True)
        write_json(args.json, {"machine": info, "device": args.device, "rows": _public(rows),
                               "complete": False}, quiet=True)
    total = totals(rows)
    write_json(args.json, {"machine": info, "device": args.device, "rows": _public(rows),
                           "totals": total, "complete": True})
    print("\nAll layers:")
    print(table(rows, cols))
    print("\nThe network's convolutions, summed:")
    print(table(total, ["layer", "impl", "fwd_ms", "fwd_ratio", "bwd_ms", "bwd_ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
