r"""``python -m minifcn.sizes``: how big is a transposed convolution's output?

With no size flags it reproduces the table of the study notes: an input of shape
1x3x3x3 through ``ConvTranspose2d(3, 3, kernel, stride, padding)`` for five settings.
Every output shape is *measured* by running minifcn's own layer (unless that would take
over a GiB: then the formula answers, and the row says so), then printed beside the
formula worked out with the numbers filled in::

    out = (in - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1

Read the formula as the notes do: stride spreads the ``in`` inputs apart, over
``(in - 1)*stride + 1`` positions; each input stamps a kernel that spans
``dilation*(kernel - 1) + 1`` positions; padding then crops ``padding`` from each border
of the result; ``output_padding`` adds that many rows/columns back at the bottom/right.

Your own sizes::

    python -m minifcn.sizes --in 5 --kernel 4 --stride 2 --padding 1
    python -m minifcn.sizes --in 16 --kernel 64 --stride 32 --padding 16 --channels 1

Bad values (negative padding, ``output_padding >= max(stride, dilation)``, an empty
output) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .cli import int_at_least, run_main
from .functional._checks import check_positive_size
from .nn import ConvTranspose2d

#: The notes' five settings (kernel, stride, padding) on a 1x3x3x3 input.
NOTES_TABLE = ((2, 1, 0), (2, 1, 1), (3, 1, 0), (3, 1, 1), (2, 2, 0))

FORMULA = "out = (in - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1"


def measure(in_size, kernel, stride=1, padding=0, dilation=1, output_padding=0, channels=3,
            seed=0):
    """Run ``ConvTranspose2d(channels, channels, ...)`` on ``randn(1, channels, in, in)``
    and return the output shape (the layer raises ValueError for impossible settings)."""
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(channels, channels, kernel, stride, padding, output_padding,
                            dilation=dilation, dtype=np.float64, seed=seed)
    x = rng.standard_normal((1, channels, in_size, in_size))
    return tuple(layer.forward(x).shape)


def worked(in_size, kernel, stride=1, padding=0, dilation=1, output_padding=0):
    """The formula with the numbers filled in, e.g. ``(3 - 1)*1 - 2*0 + 1*(2 - 1) + 0 + 1 = 4``."""
    out = (in_size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    return (f"({in_size} - 1)*{stride} - 2*{padding} + {dilation}*({kernel} - 1) "
            f"+ {output_padding} + 1 = {out}"), out


#: Sizes whose run would take more memory than this are not run: the formula alone answers.
MEASURE_MAX_BYTES = 1 << 30


def run_bytes(in_size, kernel, stride=1, padding=0, dilation=1, output_padding=0, channels=3):
    """About how much memory :func:`measure` would take (float64 input, weight, output, and
    a col matrix as large as ``C*k*k*in*in``)."""
    _, out = worked(in_size, kernel, stride, padding, dilation, output_padding)
    c, k = channels, kernel
    return 8 * (c * in_size ** 2 + c * c * k * k + c * max(out, 0) ** 2 + c * k * k * in_size ** 2)


def table(rows, in_size, channels=3):
    """The printed table: one line per (kernel, stride, padding, dilation, output_padding).
    Each shape is measured, unless the run would take over ``MEASURE_MAX_BYTES``: then it
    is the formula's, checked the way the layer checks it, and marked ``*``."""
    extra = any(r[3] != 1 or r[4] != 0 for r in rows)      # show d, op only when used
    head = "kernel  stride  padding" + ("  dilation  output_padding" if extra else "")
    lines = [f"  {head}  {'output':<12}  worked: {FORMULA}"]
    notes = []
    for k, s, p, d, op in rows:
        text, out = worked(in_size, k, s, p, d, op)
        need = run_bytes(in_size, k, s, p, d, op, channels)
        if need <= MEASURE_MAX_BYTES:
            shape = measure(in_size, k, s, p, d, op, channels)
            if shape[2:] != (out, out):                      # the layer and the formula disagree
                raise AssertionError(f"ConvTranspose2d gave {shape}, the formula {out}")
            shown = "x".join(map(str, shape))
        else:
            if op >= max(s, d):
                raise ValueError(f"ConvTranspose2d: output_padding {op} must be smaller than "
                                 f"max(stride, dilation) = {max(s, d)}")
            check_positive_size("conv_transpose2d", (out, out), (in_size, in_size),
                                kernel_size=(k, k), stride=(s, s), padding=(p, p),
                                dilation=(d, d))          # the op's own check and message
            shown = f"1x{channels}x{out}x{out}*"
            notes.append(f"* not run: measuring it would take about {need / 2**30:.0f} GiB; "
                         "this is the formula's value")
        cells = f"{k:>6}  {s:>6}  {p:>7}" + (f"  {d:>8}  {op:>14}" if extra else "")
        lines.append(f"  {cells}  {shown:<12}  {text}")
    return lines + notes


class _Parser(argparse.ArgumentParser):
    def error(self, message):                    # one line, status 2, no usage block
        sys.stderr.write(f"python -m minifcn.sizes: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser():
    p = _Parser(prog="python -m minifcn.sizes",
                description="Output size of a transposed convolution, computed by "
                            "minifcn.nn.ConvTranspose2d. Without --kernel: the notes' table.")
    p.add_argument("--in", dest="in_size", type=int_at_least(1), default=3,
                   help="input height = width (default 3, as in the notes)")
    p.add_argument("--kernel", type=int_at_least(1), help="kernel size")
    p.add_argument("--stride", type=int_at_least(1), default=None, help="stride (default 1)")
    p.add_argument("--padding", type=int_at_least(0), default=None, help="padding (default 0)")
    p.add_argument("--dilation", type=int_at_least(1), default=None, help="dilation (default 1)")
    p.add_argument("--output-padding", type=int_at_least(0), default=None,
                   help="extra rows/columns at the bottom/right (default 0)")
    p.add_argument("--channels", type=int_at_least(1), default=3,
                   help="in = out channels (default 3, as in the notes)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [f"--{n.replace('_', '-')}" for n in ("stride", "padding", "dilation", "output_padding")
             if getattr(args, n) is not None]
    if args.kernel is None and given:
        parser.error(f"{', '.join(given)} needs --kernel")
    if args.kernel is None:
        rows = [(k, s, p, 1, 0) for k, s, p in NOTES_TABLE]
        title = "the notes' table"
    else:
        rows = [(args.kernel, args.stride or 1, args.padding or 0, args.dilation or 1,
                 args.output_padding or 0)]
        title = "your sizes"
    c, n = args.channels, args.in_size
    try:
        lines = table(rows, n, c)
    except ValueError as e:                      # the layer's own message names the culprit
        parser.error(str(e))
    measured = "each output shape is measured by minifcn" + (
        "" if not any("not run" in line for line in lines) else " (or computed, where marked)")
    print(f"ConvTranspose2d({c}, {c}, kernel, stride, padding) on an input of shape "
          f"1x{c}x{n}x{n} ({title}); {measured}:\n")
    print("\n".join(lines))
    print(f"\nStride spreads the {n} inputs over (in - 1)*stride + 1 positions, each stamps a "
          "kernel spanning dilation*(kernel - 1) + 1,\nand padding crops that many from each "
          "border of the result (output_padding adds back at the bottom/right).")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
