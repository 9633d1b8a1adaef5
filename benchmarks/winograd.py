"""Winograd F(2x2, 3x3) against the direct path, on 3x3 convolutions over channels and sizes.

    python -m benchmarks.winograd                     # the default grid (about 1.5 minutes)
    python -m benchmarks.winograd --layers 512x512x40 256x256x80 --repeats 20

The evidence for the rule in ``conv._winograd_conv2d`` (its ``CPU_WINOGRAD_*`` bounds): for each
``CxOxS`` (C channels in, O out, an S x S map, padding 1, batch 1), ``conv2d`` and
``conv2d_backward`` (both gradients) with Winograd forced on and forced off (the path the
layer would take without it), and torch beside them. Each variant is first checked
against torch's float64 result and not timed if it disagrees; the three are timed
interleaved, round by round, and ``wino/direct`` is the median of the per-round ratios.
The ``rule`` column says whether ``conv2d`` takes Winograd there by default.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from minifcn.cli import run_main
from minifcn.functional import conv as conv_module
from minifcn.functional import conv2d, conv2d_backward

from .common import (add_json_flag, paired_ratio, positive_int, rel_error, start, table,
                     validated, write_json)
from .conv2d import winograd_rule

DEFAULT_LAYERS = ["128x128x160", "128x256x80", "256x256x80", "256x256x56", "256x256x28",
                  "256x256x24", "256x256x20", "256x512x40", "256x512x28", "512x512x40",
                  "512x512x28", "512x512x20", "512x512x14"]


def layer_spec(text):
    """``CxOxS`` -> ``(C, O, S)``, each a positive int."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"a layer is CxOxS (channels in, channels out, map size; positive ints), "
            f"got {text!r}")
    return values


def takes_winograd(c, o, s):
    """Whether conv2d's rule picks Winograd for this layer (float32, batch 1, padding 1)."""
    g = conv_module._geometry("conv2d", np.zeros((1, c, s, s), np.float32),
                              np.zeros((o, c, 3, 3), np.float32), None, 1, 1, 1, 1)
    return conv_module._winograd_conv2d(g)


def run_layer(layer, timer, repeats, torch):
    c, o, s = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, s, s), dtype=np.float32)
    w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    dy = rng.standard_normal((1, o, s, s), dtype=np.float32)
    x64, w64 = torch.tensor(x, dtype=torch.float64, requires_grad=True), \
        torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y64 = torch.nn.functional.conv2d(x64, w64, padding=1)
    y64.backward(torch.tensor(dy, dtype=torch.float64))
    refs = [y64.detach().numpy(), x64.grad.numpy(), w64.grad.numpy()]
    xt, wt, dyt = torch.tensor(x), torch.tensor(w), torch.tensor(dy)

    def torch_step():
        torch.nn.functional.conv2d(xt, wt, padding=1)
        return torch.ops.aten.convolution_backward(dyt, xt, wt, None, [1, 1], [1, 1], [1, 1],
                                                   False, [0, 0], 1, [True, True, False])

    base = {"layer": f"{c}x{o}x{s}", "rule": "winograd" if takes_winograd(c, o, s) else "direct"}
    fns, errs, rows = {"torch": torch_step}, {}, []
    for name, on in (("winograd", True), ("direct", False)):
        def step(on=on):
            with winograd_rule(on):
                y = conv2d(x, w, None, 1, 1)
                dx, dw, _ = conv2d_backward(dy, x, w, 1, 1, need_bias_grad=False)
            return y, dx, dw
        errors = [rel_error(g, r) for g, r in zip(step(), refs)]
        if not validated(errors):                 # refuse to time a variant that is wrong
            rows.append({**base, "impl": name, "note": f"FAILED validation {errors}"})
            continue
        fns[name], errs[name] = step, max(errors)
    times = timer.rounds(fns, repeats)
    row = {**base, **{f"{k}_ms": statistics.median(v) for k, v in times.items()}}
    if "winograd" in times and "direct" in times:
        row["wino/direct"] = paired_ratio(times["winograd"], times["direct"])
    for name in ("winograd", "direct"):
        if name in times:
            row[f"{name}/torch"] = paired_ratio(times[name], times["torch"])
            row[f"{name}_err"] = errs[name]
    return rows + [row]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.winograd",
                                description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu",), default="cpu",
                   help="Winograd is a CPU path (the GPU runs the col2im algorithms)")
    p.add_argument("--layers", nargs="+", type=layer_spec, default=None, metavar="CxOxS",
                   help="3x3 layers to time (default: a grid over 128-512 channels, 14-160)")
    p.add_argument("--repeats", type=positive_int, default=11,
                   help="interleaved timed rounds per layer (forward + backward each)")
    add_json_flag(p, "winograd")
    args, torch, timer, info = start(p, argv, "winograd")
    layers = args.layers or [layer_spec(t) for t in DEFAULT_LAYERS]
    info.update(repeats=args.repeats)
    cols = ["layer", "rule", "winograd_ms", "direct_ms", "torch_ms", "wino/direct",
            "winograd/torch", "direct/torch", "note"]
    rows = []
    for i, layer in enumerate(layers):
        new = run_layer(layer, timer, args.repeats, torch)
        rows += new
        print(f"[{i + 1}/{len(layers)}]", table(new, cols), sep="\n", flush=True)
        write_json(args.json, {"machine": info, "device": "cpu", "rows": rows,
                               "complete": False}, quiet=True)
    write_json(args.json, {"machine": info, "device": "cpu", "rows": rows, "complete": True})
    print("\nForward + backward (dx and dW), ms, median of the rounds:")
    print(table(rows, cols))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
