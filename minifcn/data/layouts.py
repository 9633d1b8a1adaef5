"""``open_dataset``: from a ``--data`` argument to a dataset object.

``'synthetic'`` is the built-in shapes dataset; anything else is a directory whose layout
is recognised by what it holds:

    voc      JPEGImages/ and SegmentationClass/ (also under VOC2012/ or VOCdevkit/VOC2012/)
    folder   images/ and masks/
"""
from __future__ import annotations

import os

from .base import require_dir
from .errors import DatasetError
from .folder import FolderSegmentation
from .synthetic import SyntheticShapes
from .voc import VOC_CLASSES, VOCSegmentation, find_voc_root

# Images per split of the synthetic dataset, unless num_images is given. 5000 training
# images: with 1000 a small FCN starts to memorise them (val mean IU stalls near 0.71).
SYNTHETIC_SIZES = {"train": 5000, "val": 200, "test": 200}


def detect_layout(path) -> str:
    """``'voc'`` or ``'folder'``; a :class:`DatasetError` if ``path`` is neither."""
    path = require_dir(path, "dataset directory")
    if find_voc_root(path) is not None:
        return "voc"
    if os.path.isdir(os.path.join(path, "images")) and os.path.isdir(os.path.join(path, "masks")):
        return "folder"
    raise DatasetError(path, "not a dataset directory: expected the PASCAL VOC layout "
                             "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/) "
                             "or the folder layout (images/, masks/)")


def open_dataset(data, split: str = "train", num_classes=None, *, seed: int = 0,
                 num_images=None, image_size=(64, 64), **synthetic_options):
    """The ``split`` of ``data`` (``'synthetic'`` or a directory), items loaded lazily.

    ``num_classes`` bounds the labels (each item load checks them); left ``None`` it is
    4 for synthetic data, 21 for VOC, and for a folder read from ``classes.txt`` or the
    masks. ``seed``, ``num_images``, ``image_size`` and ``synthetic_options`` (``noise``,
    ``texture``, ``radius``, ``objects``, ``rotation``, ``max_occlusion``, ``cache``) only
    concern the synthetic dataset; for a directory they are ignored, so a caller can pass
    the same arguments whatever ``data`` is.
    """
    if isinstance(data, str) and data == "synthetic":
        n = SYNTHETIC_SIZES.get(split) if num_images is None else num_images
        if n is None:
            raise ValueError(f"synthetic data has splits {tuple(SYNTHETIC_SIZES)}, got {split!r}")
        return SyntheticShapes(n, size=image_size, seed=seed,
                               num_classes=4 if num_classes is None else num_classes,
                               split=split, **synthetic_options)
    data = os.fspath(data)
    layout = detect_layout(data)
    if layout == "voc":
        return VOCSegmentation(data, split, len(VOC_CLASSES) if num_classes is None else num_classes)
    return FolderSegmentation(data, split, num_classes)
