"""Print an FCN layer by layer: output shape, parameters, activation memory, crop offsets.

    python -m minifcn.summary --model fcn8s --size 500x500 --geometry paper

Shapes come from each layer's ``output_shape`` (no forward pass, so any input size costs
nothing). Building the model still draws its random weights (in float64, then stored as
float32): at full width a few seconds and a peak of about 1.4 GB in the paper geometry
(134 M parameters, fc6's 7x7 alone 103 M) or 0.4 GB in the notes' (34 M); that grows as
width squared, and a model whose weights cannot fit in the memory available is refused
before any is drawn (:func:`minifcn.models.fcn.parameter_count`).
"""
from __future__ import annotations

import argparse
import math
import sys

from .cli import positive_float, run_main, size_arg
from .models import MODELS
from .models.fcn import GEOMETRIES


def summarize(model, size, batch=1, itemsize=4):
    """Rows ``(name, layer, output shape, #params, activation bytes)`` and totals."""
    shapes = model.shapes((batch, 3) + tuple(size))
    rows = []
    for name, layer, _ in model.nodes:
        n_params = int(sum(a.size for a in layer.params.values()))
        rows.append((name, layer, shapes[name], n_params, math.prod(shapes[name]) * itemsize))
    return rows


def format_summary(model, size, batch=1):
    rows = summarize(model, size, batch)
    lines = [f"{type(model).__name__} ({model.geometry} geometry, width {model.width:g}, "
             f"{model.num_classes} classes), input {batch}x3x{size[0]}x{size[1]}", ""]
    lines.append(f"{'layer':<14} {'type':<16} {'output shape':<22} {'params':>12} {'activation':>11}")
    lines.append("-" * 79)
    for name, layer, shape, n, mem in rows:
        lines.append(f"{name:<14} {type(layer).__name__:<16} {'x'.join(map(str, shape)):<22} "
                     f"{n:>12,} {mem / 2**20:>9.2f}MB")
    lines.append("-" * 79)
    total_mem = sum(r[4] for r in rows)
    lines.append(f"{'total':<14} {'':<16} {'':<22} {model.num_params():>12,} {total_mem / 2**20:>9.2f}MB")
    lines.append("")
    lines.append("crop offsets (derived from the layers' coordinate maps): " + ", ".join(
        f"{k} {v[0]}" if v[0] == v[1] else f"{k} {v}" for k, v in model.crop_offsets.items()))
    lines.append("activation memory counts every layer output once, float32; training keeps "
                 "roughly these plus their gradients")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.summary", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="fcn8s")
    p.add_argument("--geometry", choices=GEOMETRIES, default="notes")
    p.add_argument("--size", type=size_arg, default=(500, 500), help="HxW, e.g. 500x500")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--width", type=positive_float, default=1.0)
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args(argv)
    if args.num_classes < 1 or args.batch < 1:
        p.error("--num-classes and --batch must be positive")
    model = MODELS[args.model](num_classes=args.num_classes, geometry=args.geometry,
                               width=args.width)
    print(format_summary(model, args.size, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
