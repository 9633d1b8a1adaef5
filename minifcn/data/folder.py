"""A plain folder of images and masks with matching names::

    root/
      images/<stem>.jpg|.jpeg|.png|.bmp
      masks/<stem>.png             palette or grayscale PNG: pixel value = class index
      train.txt, val.txt           optional: one <stem> per line
      classes.txt                  optional: one class name per line (background first)

Splits. If ``<split>.txt`` exists it lists the stems. If neither ``train.txt`` nor
``val.txt`` exists, the split is made from the sorted stems, deterministically: every
5th stem (positions 4, 9, 14, ... counting from 0) is ``val``, the rest ``train``; with
fewer than 5 images the last one is ``val``. If only one of the two lists exists, the
other split is every stem it does not list. ``split='all'`` is every stem.

Number of classes: the ``num_classes`` argument, else the number of lines of
``classes.txt``, else found by reading every mask once (largest label other than 255,
plus one) — the same answer for every split, since all masks are read.
"""
from __future__ import annotations

import os

import numpy as np

from .base import IMAGE_EXTENSIONS, SegmentationDataset, read_id_list, require_dir
from .errors import DatasetError
from .palette import IGNORE_INDEX, read_mask

VAL_EVERY = 5   # without split lists, every 5th sorted stem goes to val


def _index_dir(directory, extensions) -> dict:
    """``{stem: path}`` of the files in ``directory`` with one of ``extensions``."""
    found = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in extensions or not os.path.isfile(os.path.join(directory, name)):
            continue
        if stem in found:
            raise DatasetError(os.path.join(directory, name),
                               f"two files have the stem {stem!r} (also {found[stem]})")
        found[stem] = os.path.join(directory, name)
    return found


def default_split(stems, split):
    """The deterministic split of sorted ``stems`` used when there are no list files."""
    stems = sorted(stems)
    val = set(stems[VAL_EVERY - 1::VAL_EVERY]) or set(stems[-1:])
    if split == "val":
        return [s for s in stems if s in val]
    return [s for s in stems if s not in val]


class FolderSegmentation(SegmentationDataset):
    """The ``split`` of a plain ``images/`` + ``masks/`` folder (see the module docstring)."""

    def __init__(self, root, split: str = "train", num_classes=None):
        root = require_dir(root, "dataset directory")
        image_dir = require_dir(os.path.join(root, "images"), "images directory")
        mask_dir = require_dir(os.path.join(root, "masks"), "masks directory")
        images = _index_dir(image_dir, IMAGE_EXTENSIONS)
        masks = _index_dir(mask_dir, (".png",))
        self._all_stems = sorted(images)
        self._all_masks = masks

        list_file = os.path.join(root, f"{split}.txt")
        if os.path.isfile(list_file):
            stems, listed_in = read_id_list(list_file), list_file
        elif split == "all":
            stems, listed_in = self._all_stems, None
        elif split in ("train", "val"):
            other = os.path.join(root, ("val" if split == "train" else "train") + ".txt")
            if os.path.isfile(other):
                excluded = set(read_id_list(other))
                stems, listed_in = [s for s in self._all_stems if s not in excluded], None
            else:
                stems, listed_in = default_split(self._all_stems, split), None
        else:
            raise DatasetError(list_file, f"split file for split {split!r} not found")

        if not self._all_stems:
            raise DatasetError(image_dir, "holds no images (" + ", ".join(IMAGE_EXTENSIONS) + ")")
        if not stems:
            raise DatasetError(list_file if listed_in else root,
                               f"split {split!r} has no images ({len(self._all_stems)} in images/)")
        image_paths, mask_paths = [], []
        for stem in stems:
            if stem not in images:
                where = f" (listed in {listed_in})" if listed_in else ""
                raise DatasetError(os.path.join(image_dir, stem + ".*"),
                                   f"no image with this stem{where}; looked for "
                                   + "/".join(IMAGE_EXTENSIONS))
            if stem not in masks:
                raise DatasetError(os.path.join(mask_dir, stem + ".png"),
                                   f"mask file not found (the mask of {images[stem]})")
            image_paths.append(images[stem])
            mask_paths.append(masks[stem])

        names = None
        classes_file = os.path.join(root, "classes.txt")
        if os.path.isfile(classes_file):
            names = _read_names(classes_file)
            if num_classes is not None and num_classes != len(names):
                raise DatasetError(classes_file, f"lists {len(names)} classes but num_classes={num_classes}")
            num_classes = len(names)
        super().__init__(root, split, stems, image_paths, mask_paths, num_classes, names)

    @property
    def num_classes(self):
        if self._num_classes is None:
            self._num_classes = self._count_classes()
        return self._num_classes

    def _count_classes(self) -> int:
        """Largest label (other than 255) in any mask of the folder, plus one."""
        largest = 0
        for stem in self._all_stems:
            path = self._all_masks.get(stem)
            if path is None:
                continue
            values = np.unique(read_mask(path))
            values = values[values != IGNORE_INDEX]
            if values.size:
                largest = max(largest, int(values.max()))
        return max(largest + 1, 2)


def _read_names(path) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read the class names ({type(e).__name__}: {e})") from None
    if not names:
        raise DatasetError(path, "lists no class names")
    return names
