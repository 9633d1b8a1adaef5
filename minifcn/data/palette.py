"""The PASCAL VOC colour palette, and reading/writing label masks as PNG files.

A label mask is a 2-D array of class indices (0 = background, 255 = void: "ignore this
pixel"). VOC stores it as a palette ('P' mode) PNG: the pixel values *are* the indices, and
the palette only says how to show them. The VOC palette gives class ``i`` the colour whose
bits are those of ``i`` dealt out in turn to R, G and B, most significant bit first::

    i = ... b5 b4 b3 b2 b1 b0      R = b0 b3 b6 0 0 0 0 0   (bit 7 first)
                                   G = b1 b4 b7 0 0 0 0 0
                                   B = b2 b5 0  0 0 0 0 0

so 1 = dark red (128, 0, 0), 2 = dark green, 3 = olive, ..., and 255 = cream
(224, 224, 192), which is how the void border around VOC objects looks.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import DatasetError

IGNORE_INDEX = 255   # the "void" label: left out of the loss and the metrics


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC colour map as a ``(n, 3)`` uint8 array (row ``i`` = colour of label ``i``)."""
    if not 1 <= n <= 256:
        raise ValueError(f"the palette has 1..256 colours, got n={n}")
    labels = np.arange(n)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):                    # bit-triplet k of the label -> bit 7-k of R, G, B
        for channel in range(3):
            rgb[:, channel] |= ((labels >> (3 * bit + channel)) & 1) << (7 - bit)
    return rgb.astype(np.uint8)


PALETTE = voc_palette()
PALETTE.setflags(write=False)


def _as_label_array(mask, name="mask") -> np.ndarray:
    """A 2-D integer array with values in [0, 255], as NumPy (CuPy arrays are copied over)."""
    if type(mask).__module__.split(".")[0] == "cupy":
        mask = mask.get()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (H, W) of class indices, got shape {mask.shape}")
    if mask.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer array of class indices, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{name} values must lie in [0, 255] to fit a palette, "
                         f"got [{int(mask.min())}, {int(mask.max())}]")
    return mask.astype(np.uint8, copy=False)


def colorize(mask) -> np.ndarray:
    """Class indices ``(H, W)`` -> VOC colours ``(H, W, 3)`` uint8 (255 -> cream)."""
    return PALETTE[_as_label_array(mask)]


def save_mask_png(path, mask) -> None:
    """Write ``mask`` (H, W) as a 'P' mode PNG with the VOC palette (values = indices)."""
    labels = np.ascontiguousarray(_as_label_array(mask))
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(PALETTE.tobytes())
    image.save(os.fspath(path), format="PNG")


_LOW_BIT_GRAY = {"L;2": 2, "L;4": 4}   # PNG grayscale below 8 bits: bits per sample


def stored_mode(im):
    """How an opened (not yet loaded) PIL image stores its samples, e.g. ``'L;4'`` or
    ``'I;16B'``, when its decoder says (PIL's mode may be wider: it unpacks them); else None."""
    rawmode = im.tile[0][3] if im.tile else None
    return rawmode if isinstance(rawmode, str) else None


def read_mask(path) -> np.ndarray:
    """Read a label mask PNG as a uint8 ``(H, W)`` array of class indices.

    Accepts a palette PNG (the indices are stored, the palette is ignored) or a grayscale
    one (1-, 2-, 4-, 8- or 16-bit, values <= 255; PIL stretches 2- and 4-bit samples to
    0..255, which is undone here). A colour (RGB) mask is refused with a message: its
    colours would have to be mapped back to indices, and that mapping is not in the file —
    unless all three channels are equal, in which case it is a grayscale mask saved as RGB.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            rawmode = stored_mode(im)
            im.load()
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise DatasetError(path, "mask file not found") from None
    except Exception as e:   # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        raise DatasetError(path, f"cannot read the mask ({type(e).__name__}: {e})") from None
    if mode == "L" and rawmode in _LOW_BIT_GRAY:  # PIL stretched 2-/4-bit samples to 0..255
        return arr // (255 // (2 ** _LOW_BIT_GRAY[rawmode] - 1))
    if mode in ("P", "L", "1"):
        return arr.astype(np.uint8, copy=False)
    if mode.startswith("I"):      # 16/32-bit grayscale
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(path, f"grayscale mask has values in [{int(arr.min())}, {int(arr.max())}]; "
                                     "class indices must lie in [0, 255]")
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA") and arr.ndim == 3 and \
            np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        return arr[..., 0].copy()
    raise DatasetError(path, f"mask is a {mode} image; expected a palette ('P') or grayscale PNG "
                             "whose pixel values are the class indices")
