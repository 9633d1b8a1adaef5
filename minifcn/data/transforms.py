"""From a uint8 RGB image to the network's input, and the augmentations of training.

**Preprocessing must match the weights.** A network only works on inputs like those it
was trained on, so each set of weights comes with its own recipe; feeding RGB to a net
trained on BGR, or skipping the mean, silently costs accuracy. Three presets::

    name       channels  scale   then                                    for
    caffe      B, G, R   0..255  - (104.00698793, 116.66876762, 122.67891434)  the original FCN
                                                                          (Caffe VGG16) and its
                                                                          PyTorch port
    imagenet   R, G, B   0..1    - (0.485, 0.456, 0.406), / (0.229, 0.224, 0.225)  torchvision VGG16
    simple     R, G, B   0..1    - 0.5                                   training from scratch

(the Caffe means are per channel, listed in B, G, R order). ``x = (pixels[order] * scale -
mean) / std``; ``deprocess`` undoes it for pictures. A pixel of the *mean colour* becomes
exactly 0, which is why the batch loader pads images with 0 after preprocessing: padding
is "nothing there" whatever the preset.

Augmentations (:func:`crop_or_pad`, :func:`hflip`) work on an ``(image, mask)`` pair and
move both together; the mask is padded with 255 (ignored), never with a class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from .palette import IGNORE_INDEX


@dataclass(frozen=True)
class Preprocess:
    """One recipe: ``x = (image[..., channels] * scale - mean) / std``, channels first.

    ``mean`` and ``std`` are given in the network's channel order and scale.
    """
    name: str
    bgr: bool
    scale: float
    mean: tuple
    std: tuple = (1.0, 1.0, 1.0)

    def __call__(self, image) -> np.ndarray:
        return self.preprocess(image)

    def preprocess(self, image) -> np.ndarray:
        """uint8 RGB ``(H, W, 3)`` -> float32 ``(3, H, W)``; also ``(N, H, W, 3)`` -> ``(N, 3, H, W)``."""
        image = np.asarray(image)
        if image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise ValueError(f"image must be RGB (H, W, 3) or (N, H, W, 3), got shape {image.shape}")
        if image.dtype != np.uint8:         # a float image in 0..1 would be read as 0..255
            raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}; convert "
                             "it first, e.g. (img * 255).round().astype(np.uint8) for 0..1 floats")
        x = image.astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def deprocess(self, x) -> np.ndarray:
        """The inverse: float ``(3, H, W)`` (or ``(N, 3, H, W)``, NumPy or CuPy) -> uint8 RGB."""
        x = np.asarray(to_numpy(x), dtype=np.float32)
        if x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"x must be (3, H, W) or (N, 3, H, W), got shape {x.shape}")
        x = np.moveaxis(x, -3, -1)
        x = (x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)) / np.float32(self.scale)
        if self.bgr:
            x = x[..., ::-1]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    @property
    def mean_rgb(self) -> np.ndarray:
        """The uint8-scale RGB colour that preprocesses to (about) 0."""
        mean = np.asarray(self.mean, np.float64) / self.scale
        return mean[::-1] if self.bgr else mean


PRESETS = {
    "caffe": Preprocess("caffe", bgr=True, scale=1.0,
                        mean=(104.00698793, 116.66876762, 122.67891434)),
    "imagenet": Preprocess("imagenet", bgr=False, scale=1 / 255,
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "simple": Preprocess("simple", bgr=False, scale=1 / 255, mean=(0.5, 0.5, 0.5)),
}


def get_preprocess(preset) -> Preprocess:
    """A :class:`Preprocess` from a preset name (or pass one through)."""
    if isinstance(preset, Preprocess):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preprocessing {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def preprocess(image, preset="simple") -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> float32 ``(3, H, W)`` with the named preset."""
    return get_preprocess(preset).preprocess(image)


def deprocess(x, preset="simple") -> np.ndarray:
    """float ``(3, H, W)`` -> uint8 RGB ``(H, W, 3)``, undoing the named preset."""
    return get_preprocess(preset).deprocess(x)


# ---------------------------------------------------------------------- augmentations

def hflip(image, mask):
    """Mirror an ``(H, W, ...)`` image and its ``(H, W)`` mask left-right."""
    return image[:, ::-1], mask[:, ::-1]


def crop_window(size: int, crop: int, rng) -> tuple:
    """Along one axis: ``(src_start, dst_start, length)`` of a random ``crop``-long window.

    Larger than ``crop``: a random window of the image. Smaller: the whole image at a
    random place in the window (the rest is padding).
    """
    if size >= crop:
        return int(rng.integers(0, size - crop + 1)), 0, crop
    return 0, int(rng.integers(0, crop - size + 1)), size


def crop_or_pad(image, mask, crop_size, rng, pad_value=0):
    """A random ``crop_size = (h, w)`` window of ``image`` (H, W, C) and ``mask`` (H, W).

    Where the image is smaller than the window it is padded: the image with ``pad_value``,
    the mask with 255 (ignored by the loss and the metrics).
    """
    ch, cw = crop_size
    (sy, dy, lh), (sx, dx, lw) = crop_window(image.shape[0], ch, rng), crop_window(image.shape[1], cw, rng)
    out_image = np.full((ch, cw) + image.shape[2:], pad_value, dtype=image.dtype)
    out_mask = np.full((ch, cw), IGNORE_INDEX, dtype=mask.dtype)
    out_image[dy:dy + lh, dx:dx + lw] = image[sy:sy + lh, sx:sx + lw]
    out_mask[dy:dy + lh, dx:dx + lw] = mask[sy:sy + lh, sx:sx + lw]
    return out_image, out_mask
