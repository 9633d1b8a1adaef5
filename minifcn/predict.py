"""Predict segmentation masks for your own images with a trained FCN.

    python -m minifcn.predict --checkpoint runs/X/best.npz photo1.jpg photo2.png --out masks/

For each image ``NAME.ext`` it writes ``NAME_mask.png`` (a palette PNG whose pixel values
are the class indices, shown in the VOC colours) and ``NAME_overlay.png`` (the colours
blended over the image), both of the image's own size: an FCN takes any input size.
Inputs that share a name get distinct ones (see :func:`output_stems`): ``a_png`` and
``a_jpg`` for ``a.png`` and ``a.jpg``, then ``-2``, ``-3`` for ``a.png`` from two folders.
Files already in ``--out`` are replaced only with ``--overwrite``, and an input image or
the checkpoint never (:func:`check_outputs`). Each file is written beside its name first
and then moved over it, so an interrupted run leaves no half-written file, and an output
name that is a symbolic link is replaced, not the file it points to. Masks hold class
indices in 8 bits with 255 the "ignore" label, so a model with more than 255 classes is
refused.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .backend import check_device, to_device, to_numpy
from .cli import check_output_dir, run_main, same_file
from .data import colorize, load_image, save_mask_png
from .data.transforms import get_preprocess
from .evaluate import add_model_flags, model_overrides
from .io import write_then_replace
from .training import load_checkpoint_model


MAX_CLASSES = 255       # a mask's uint8 values are class indices; 255 means "ignore"


def check_num_classes(num_classes, what):
    """Refuse a model whose classes do not fit a mask: ``what`` names where it came from."""
    if num_classes > MAX_CLASSES:
        raise ValueError(f"{what}: the model has {num_classes} classes; a mask holds at most "
                         f"{MAX_CLASSES} (uint8 indices, 255 being the ignore label)")


def predict(model, image, preprocess, device="cpu"):
    """uint8 RGB (H, W, 3) -> class indices uint8 (H, W)."""
    x = to_device(get_preprocess(preprocess)(image)[None], device)
    model.eval()
    scores = model.forward(x)
    model.clear_cache()
    check_num_classes(scores.shape[1], "predict")
    return to_numpy(scores.argmax(axis=1))[0].astype(np.uint8)


def overlay(image, mask, alpha=0.5):
    colours = colorize(mask).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return np.where(mask[..., None] == 0, image, np.clip(blend, 0, 255)).astype(np.uint8)


def check_outputs(paths, inputs, overwrite):
    """Refuse, before anything is written, to write over a file this command reads
    (``inputs``: ``(what, path)``), or over any file already there unless ``overwrite``:
    a ground-truth ``cat_mask.png`` beside ``cat.jpg`` must not be lost to ``--out .``."""
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"--out: {path} is a directory, where this command would write "
                             "a file; move it or choose another --out")
        if not os.path.lexists(path):
            continue
        for what, in_path in inputs:
            if same_file(path, in_path):
                raise ValueError(f"--out: {path} would replace {what} of this command "
                                 f"({in_path}); choose another --out")
        if not overwrite:
            raise ValueError(f"--out: {path} already exists; give --overwrite to replace "
                             "it, or another --out")


def output_stems(paths):
    """One output name per input, all different: the file's stem (``a`` for ``d/a.png``);
    where two inputs share it, the name with its extension (``a_png``, ``a_jpg``); where
    that is shared too (``a.png`` in two folders, or one path given twice), ``-2``, ``-3``
    ... in input order. No prediction overwrites another of the same call."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = [s if stems.count(s) == 1 else os.path.basename(p).replace(".", "_")
             for s, p in zip(stems, paths)]
    used, out = set(), []
    for name in names:
        candidate, k = name, 2
        while candidate in used or (candidate != name and candidate in names):
            candidate, k = f"{name}-{k}", k + 1
        used.add(candidate)
        out.append(candidate)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.predict", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="directory for the masks and overlays")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true",
                   help="replace masks and overlays already in --out (never an input image "
                        "or the checkpoint)")
    add_model_flags(p)
    args = p.parse_args(argv)
    check_device(args.device)
    check_output_dir(args.out, "--out")                             # before the work, not after
    model, spec = load_checkpoint_model(args.checkpoint, args.device, **model_overrides(args))
    check_num_classes(int(spec["num_classes"]), f"--checkpoint {args.checkpoint}")
    images = [(path, load_image(path)) for path in args.images]   # every image readable first
    stems = output_stems(args.images)
    outputs = [(os.path.join(args.out, f"{stem}_mask.png"),
                os.path.join(args.out, f"{stem}_overlay.png")) for stem in stems]
    check_outputs([f for pair in outputs for f in pair],
                  [("--checkpoint", args.checkpoint)] + [("an IMAGE", i) for i in args.images],
                  args.overwrite)
    os.makedirs(args.out, exist_ok=True)
    from PIL import Image
    for (path, image), stem, (mask_path, overlay_path) in zip(images, stems, outputs):
        mask = predict(model, image, spec["preprocess"], args.device)
        write_then_replace(mask_path, lambda tmp: save_mask_png(tmp, mask))
        write_then_replace(overlay_path,
                        lambda tmp: Image.fromarray(overlay(image, mask)).save(tmp, format="PNG"))
        present = ", ".join(f"{spec['class_names'][c] if c < len(spec['class_names']) else c} "
                            f"{(mask == c).mean():.0%}" for c in np.unique(mask))
        print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {stem}_mask.png, {stem}_overlay.png ({present})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
