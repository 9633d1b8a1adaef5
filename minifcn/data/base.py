"""What every dataset on disk shares: lazy, validated loading of (image, mask) pairs.

A dataset is a list of ``(image_path, mask_path)`` pairs. Nothing is read when it is
built; ``dataset[i]`` reads pair ``i`` and checks it, so a bad file is reported as soon as
it is touched, by name, in one line (:class:`DatasetError`):

- an image that is missing, unreadable or corrupt (truncated JPEG, not an image at all);
- a mask that cannot be read, or whose size differs from its image's;
- a label outside ``[0, num_classes)`` other than 255 (when ``num_classes`` is known).

``validate()`` runs the same checks over every item, for a trainer that would rather fail
in the first second than after an hour.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import DatasetError
from .palette import IGNORE_INDEX, read_mask, stored_mode

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def load_image(path) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)`` (grayscale is repeated, alpha dropped).

    16-bit samples keep their high byte (``v >> 8``), grayscale as well as colour: PIL does
    that for 16-bit colour, but would clip 16-bit grayscale at 255 (an almost white image).
    The EXIF orientation tag is *not* applied: masks carry no such tag, so rotating the
    image alone would misalign it with its mask.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            sixteen_bit = im.mode.startswith("I;16") or (stored_mode(im) or "").startswith("I;16")
            im.load()                      # decode now, so a truncated file fails here
            if im.mode.startswith("I"):   # 16- or 32-bit grayscale
                return _gray_to_rgb(np.asarray(im), sixteen_bit)
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except Exception as e:   # OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DatasetError(path, f"cannot read the image ({type(e).__name__}: {e})") from None
    return np.asarray(rgb, dtype=np.uint8)


def _gray_to_rgb(gray, sixteen_bit):
    """Integer grayscale -> uint8 RGB: 16-bit samples (known from the file: older Pillow
    opens them as mode 'I'; or a 32-bit image holding values above 255, taken as 16-bit
    ones) by their high byte, then the channel repeated."""
    gray = gray.astype(np.int64)
    if sixteen_bit or gray.max(initial=0) > 255:
        gray = gray >> 8
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def check_labels(mask: np.ndarray, num_classes, path) -> None:
    """Raise if ``mask`` has labels outside ``[0, num_classes)`` other than 255."""
    if num_classes is None:
        return
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DatasetError(path, f"label values {{{shown}}} outside [0, {num_classes}) "
                                 f"(255 = ignore is the only other value allowed)")


class SegmentationDataset:
    """Base of the on-disk datasets: ``ids``, ``image_paths``, ``mask_paths`` in one order.

    ``dataset[i] -> (image uint8 (H, W, 3) RGB, mask uint8 (H, W))``.
    """

    def __init__(self, root, split, ids, image_paths, mask_paths, num_classes, class_names):
        self.root = os.fspath(root)
        self.split = split
        self.ids = list(ids)
        self.image_paths = list(image_paths)
        self.mask_paths = list(mask_paths)
        self._num_classes = num_classes
        self._class_names = class_names

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def class_names(self):
        if self._class_names is not None:
            return list(self._class_names)
        n = self.num_classes
        return None if n is None else ["background"] + [f"class{k}" for k in range(1, n)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset index must be an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        index = int(index) % n
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = load_image(image_path)
        mask = read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            (h, w), (mh, mw) = image.shape[:2], mask.shape
            raise DatasetError(mask_path, f"mask is {mw}x{mh} (WxH) but its image {image_path} "
                                          f"is {w}x{h}")
        check_labels(mask, self.num_classes, mask_path)
        return image, mask

    def validate(self, progress: bool = False) -> int:
        """Load and check every item; raise the first :class:`DatasetError`. Returns the count."""
        indices = range(len(self))
        if progress:
            from tqdm import tqdm
            indices = tqdm(indices, desc=f"checking {self.split} data", unit="img", leave=False)
        for i in indices:
            self[i]
        return len(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, "
                f"items={len(self)}, num_classes={self.num_classes})")


def require_dir(path, what: str = "directory") -> str:
    path = os.fspath(path)
    if not path:
        raise DatasetError("''", f"an empty path where the {what} should be named")
    if not os.path.exists(path):
        raise DatasetError(path, f"no such {what}")
    if not os.path.isdir(path):
        raise DatasetError(path, f"is not a directory (expected the {what})")
    return path


def read_id_list(path) -> list:
    """The non-empty, stripped lines of a split file (``train.txt``: one id per line)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        raise DatasetError(path, "split file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read the split file ({type(e).__name__}: {e})") from None
    ids = [line.split()[0] for line in lines if line]
    seen = set()
    for i in ids:
        if i in seen:
            raise DatasetError(path, f"id {i!r} is listed twice")
        seen.add(i)
    return ids


def check_files_exist(pairs, listed_in=None) -> None:
    """Raise for the first missing file among ``(image_path, mask_path)`` pairs."""
    missing = [p for pair in pairs for p in pair if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
        where = f", listed in {listed_in}" if listed_in else ""
        raise DatasetError(missing[0], f"file not found{where}{more}")
