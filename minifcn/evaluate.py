"""Evaluate a trained FCN on a dataset split: the FCN paper's four metrics, per-class IU.

    python -m minifcn.evaluate --checkpoint runs/X/best.npz --data synthetic
    python -m minifcn.evaluate --checkpoint runs/X/best.npz --data VOCdevkit/VOC2012 --json val.json

One confusion matrix is accumulated over the whole split (pixels labelled 255 ignored),
then pixel accuracy, mean accuracy, mean IU and frequency-weighted IU are read off it.
Weights without minifcn metadata (e.g. the PyTorch port's fcn8s_from_caffe.pth) need
--model, --num-classes, --geometry paper and --width 1 (their preprocessing, --preprocess
caffe, is the default for such files).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .backend import check_device, to_device, to_numpy
from .cli import positive_float, probe_writable, run_main, same_file
from .data import BatchLoader, open_dataset
from .data.synthetic import MIN_SIZE as SYNTHETIC_MIN_SIZE
from .metrics import ConfusionMatrix, format_metrics
from .models import MODELS
from .models.fcn import GEOMETRIES
from .training import load_checkpoint_model


def evaluate(model, dataset, preprocess, batch_size=1, device="cpu", progress=False):
    """Metrics dict (``pixel_acc``, ``mean_acc``, ``mean_iou``, ``fw_iou``, ``per_class_iou``)."""
    model.eval()
    cm = ConfusionMatrix(model.num_classes)
    loader = BatchLoader(dataset, batch_size, shuffle=False, preprocess=preprocess)
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, total=len(loader), unit="batch")
    for x, y in batches:
        logits = model.forward(to_device(x, device))
        cm.update(to_numpy(logits.argmax(axis=1)), y)
    model.clear_cache()
    return cm.compute()


def add_model_flags(p):
    """Flags that describe weights saved without minifcn metadata."""
    g = p.add_argument_group("for weights without minifcn metadata")
    g.add_argument("--model", choices=sorted(MODELS))
    g.add_argument("--num-classes", type=int)
    g.add_argument("--geometry", choices=GEOMETRIES)
    g.add_argument("--width", type=positive_float)
    g.add_argument("--preprocess", choices=("simple", "caffe", "imagenet"))


def model_overrides(args):
    return {"name": args.model, "num_classes": args.num_classes, "geometry": args.geometry,
            "width": args.width, "preprocess": args.preprocess}


def check_output_file(path, flag, inputs=()):
    """Can a file be written at ``path``: its folder exists and takes new files (tried:
    :func:`minifcn.cli.probe_writable`), it is not a folder itself, and neither it nor
    ``path + '.tmp'`` (where the atomic write goes first) is one of ``inputs`` (``(flag,
    path)`` of each file the command reads)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a directory; give a file name, e.g. {os.path.join(path, 'metrics.json')}")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    for target in (path, path + ".tmp"):
        for in_flag, in_path in inputs:
            if in_path is not None and os.path.exists(target) and same_file(target, in_path):
                raise ValueError(f"{flag} {path}: writing it would replace {target}, the file "
                                 f"given as {in_flag}: choose another file")
    if os.path.lexists(path + ".tmp") and not os.path.isfile(path + ".tmp"):
        raise ValueError(f"{flag} {path}: {path}.tmp, where it is written first, is in the way "
                         "(not a file)")
    probe_writable(folder, f"{flag} {path}")


def inside(path, folder):
    """Does ``path`` (existing or not) lie in ``folder`` or below it, links seen through?"""
    where = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))),
                         os.path.basename(path))
    folder = os.path.realpath(folder)
    return os.path.commonpath([where, folder]) == folder


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="best.npz / checkpoint.npz, or .pth weights")
    p.add_argument("--data", required=True, help="'synthetic' or a dataset directory")
    p.add_argument("--split", default="val")
    p.add_argument("--json", help="also write the metrics to this file")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass; above 1, images of different sizes are padded "
                        "to a common size, which changes predictions near their borders")
    p.add_argument("--image-size", type=int, help="synthetic data only (default: 64)")
    p.add_argument("--num-images", type=int, help="synthetic data only (default: the split's size)")
    p.add_argument("--seed", type=int, help="synthetic data only (default: 0)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    add_model_flags(p)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be positive")
    if args.data != "synthetic":
        given = [flag for flag, value in (("--image-size", args.image_size),
                                          ("--num-images", args.num_images),
                                          ("--seed", args.seed)) if value is not None]
        if given:
            p.error(f"{', '.join(given)}: for --data synthetic only (a dataset directory's "
                    "images are evaluated as they are)")
    args.image_size = 64 if args.image_size is None else args.image_size
    args.seed = 0 if args.seed is None else args.seed
    if args.data == "synthetic" and args.image_size < SYNTHETIC_MIN_SIZE:
        p.error(f"--image-size must be at least {SYNTHETIC_MIN_SIZE} for the synthetic shapes, "
                f"got {args.image_size}")
    if args.num_images is not None and args.num_images < 1:
        p.error(f"--num-images must be positive, got {args.num_images}")
    if args.json:                                # before the evaluation, not after it
        check_output_file(args.json, "--json", [("--checkpoint", args.checkpoint)])
    check_device(args.device)
    model, spec = load_checkpoint_model(args.checkpoint, args.device, **model_overrides(args))
    extra = {}
    if args.data == "synthetic":
        extra = dict(seed=args.seed, image_size=(args.image_size, args.image_size),
                     num_images=args.num_images)
    dataset = open_dataset(args.data, args.split, int(spec["num_classes"]), **extra)
    if args.json and args.data != "synthetic" and inside(args.json, args.data):
        raise ValueError(f"--json {args.json} is inside the dataset directory {args.data}, "
                         "where it could replace one of the dataset's files (an image, a "
                         "mask, a list): write it elsewhere")
    metrics = evaluate(model, dataset, spec["preprocess"], args.batch_size, args.device, args.progress)
    print(f"{args.checkpoint} on {args.data} ({args.split}, {len(dataset)} images)")
    print(format_metrics(metrics, spec.get("class_names")))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
