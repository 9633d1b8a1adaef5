"""Data: datasets (synthetic, PASCAL VOC, plain folders), batching, preprocessing, palettes.

    ds = open_dataset("synthetic", "train")          # or a directory in either layout
    image, mask = ds[0]                               # uint8 (H, W, 3) RGB, uint8 (H, W)
    loader = BatchLoader(ds, 8, crop_size=64, flip=True, preprocess="simple")
    x, y = loader.next_batch()                        # float32 (8, 3, 64, 64), int64 (8, 64, 64)

Label 255 means "ignore this pixel" everywhere. Every problem with data on disk raises
:class:`DatasetError` (a ``ValueError``) with a one-line message naming the file.
"""
from .base import SegmentationDataset, load_image
from .errors import DatasetError
from .folder import FolderSegmentation
from .layouts import SYNTHETIC_SIZES, detect_layout, open_dataset
from .loader import BatchLoader
from .palette import IGNORE_INDEX, PALETTE, colorize, read_mask, save_mask_png, voc_palette
from .synthetic import SHAPES, SyntheticShapes
from .transforms import PRESETS, Preprocess, crop_or_pad, deprocess, get_preprocess, hflip, preprocess
from .voc import VOC_CLASSES, VOCSegmentation

__all__ = [
    "BatchLoader", "DatasetError", "FolderSegmentation", "IGNORE_INDEX", "PALETTE", "PRESETS",
    "Preprocess", "SHAPES", "SYNTHETIC_SIZES", "SegmentationDataset", "SyntheticShapes",
    "VOCSegmentation", "VOC_CLASSES", "colorize", "crop_or_pad", "deprocess", "detect_layout",
    "get_preprocess", "hflip", "load_image", "open_dataset", "preprocess", "read_mask",
    "save_mask_png", "voc_palette",
]
