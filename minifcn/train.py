"""Train an FCN: ``python -m minifcn.train`` (no arguments: the built-in synthetic shapes).

    python -m minifcn.train                                  # synthetic data, ~3 min on 2 cores
    python -m minifcn.train --data VOCdevkit/VOC2012 --model fcn8s --width 1 \\
        --init vgg16-397923af.pth --crop-size 320 --batch-size 1 --iters 100000
    python -m minifcn.train --resume runs/20261125-120000    # continue a stopped run

Every flag is a field of :class:`minifcn.training.TrainConfig` (its comment is the help).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import typing

from .cli import run_main
from .training import Run, TrainConfig, _number


def _field_help():
    """The comment after each field of TrainConfig, as help text."""
    help_ = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith("#"):
            help_[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
    return help_


def build_parser(defaults=True):
    """The flags, one per field of TrainConfig; with ``defaults=False`` a parse holds only
    the flags given (which a resume checks)."""
    p = argparse.ArgumentParser(prog="python -m minifcn.train",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    help_ = _field_help()
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if defaults else argparse.SUPPRESS
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=help_.get(f.name, ""))
        else:
            p.add_argument(flag, type=kind, default=default, metavar=f.name.upper(),
                           help=help_.get(f.name, ""))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    given = set(vars(build_parser(defaults=False).parse_args(argv)))
    run = Run(TrainConfig(**vars(args)), given=given)
    print("configuration:", json.dumps(dataclasses.asdict(run.config), sort_keys=False), flush=True)
    metrics = run.train()
    acc, macc, miou, fwiou = (_number(metrics[k], ".4f")
                              for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"))
    print(f"final validation: pixel acc {acc}, mean acc {macc}, mean IU {miou}, f.w. IU "
          f"{fwiou}  (run directory {run.dir})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
