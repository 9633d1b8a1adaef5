"""PASCAL VOC 2012 segmentation, read from its own directory layout::

    root/                          (VOC2012/, or a folder holding VOCdevkit/VOC2012/)
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png   palette PNG: pixel value = class index, 255 = void
      ImageSets/Segmentation/train.txt, val.txt, trainval.txt   one <id> per line

21 classes: background and 20 object classes. The void label 255 marks object borders
and difficult regions; the loss and the metrics skip it. Any ``split`` with a list file
in ``ImageSets/Segmentation/`` works (``train``, ``val``, ``trainval``, ...).
"""
from __future__ import annotations

import os

from .base import SegmentationDataset, check_files_exist, read_id_list, require_dir
from .errors import DatasetError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def find_voc_root(root):
    """The directory holding ``JPEGImages/`` and ``SegmentationClass/``, or None.

    Looks at ``root`` itself, then ``root/VOC2012`` and ``root/VOCdevkit/VOC2012`` (how the
    official archive unpacks).
    """
    for candidate in (root, os.path.join(root, "VOC2012"), os.path.join(root, "VOCdevkit", "VOC2012")):
        if (os.path.isdir(os.path.join(candidate, "JPEGImages"))
                and os.path.isdir(os.path.join(candidate, "SegmentationClass"))):
            return candidate
    return None


class VOCSegmentation(SegmentationDataset):
    """VOC 2012 ``split`` of ``root``. ``num_classes`` (default 21) bounds the labels."""

    def __init__(self, root, split: str = "train", num_classes: int = len(VOC_CLASSES),
                 mask_dir: str = "SegmentationClass"):
        require_dir(root, "dataset directory")
        voc = find_voc_root(os.fspath(root))
        if voc is None:
            raise DatasetError(root, "not a PASCAL VOC directory (no JPEGImages/ and "
                                     "SegmentationClass/ in it, nor in VOC2012/ or VOCdevkit/VOC2012/)")
        list_file = os.path.join(voc, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(list_file):
            raise DatasetError(list_file, f"split file for split {split!r} not found")
        ids = read_id_list(list_file)
        if not ids:
            raise DatasetError(list_file, f"split {split!r} lists no images")
        images = [os.path.join(voc, "JPEGImages", f"{i}.jpg") for i in ids]
        masks = [os.path.join(voc, mask_dir, f"{i}.png") for i in ids]
        check_files_exist(zip(images, masks), listed_in=list_file)
        names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else None
        super().__init__(voc, split, ids, images, masks, num_classes, names)
