"""The VGG16 backbone (Simonyan & Zisserman 2015) as FCN uses it, and how ImageNet
weights for it are transplanted.

Five stages of 3x3 convolutions + ReLU, each closed by a 2x2 max pool that halves the
size (the notes' conv1..conv5: 1/2, 1/4, 1/8, 1/16, 1/32 of the input):

    conv1: (conv-relu) x 2, pool      64 channels
    conv2: (conv-relu) x 2, pool     128
    conv3: (conv-relu) x 3, pool     256
    conv4: (conv-relu) x 3, pool     512
    conv5: (conv-relu) x 3, pool     512

Then VGG's classifier, "convolutionalised": fc6 and fc7 become convolutions (see fcn.py).
"""
from __future__ import annotations

import numpy as np

from ..nn import Conv2d, MaxPool2d, ReLU

STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

# torchvision's vgg16().features: the index of each conv layer, in order
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def scaled(channels, width):
    """Channel count under the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def conv_names():
    return [f"conv{s}_{i}" for s, (n, _) in enumerate(STAGES, 1) for i in range(1, n + 1)]


def he_init(layer, rng):
    """He (Kaiming) normal init, std = sqrt(2 / fan_in), zero bias: keeps the activation
    scale constant through a deep ReLU stack (the torch default shrinks it layer by layer,
    which stalls training from scratch)."""
    shape, dtype = layer.params["weight"].shape, layer.params["weight"].dtype
    layer.params["weight"] = None                       # freed first, and the draw scaled in
    draw = rng.standard_normal(shape)                   # place: fc6 at full width is 0.8 GB
    draw *= np.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    layer.params["weight"] = draw.astype(dtype)
    if "bias" in layer.params:
        layer.params["bias"] = np.zeros_like(layer.params["bias"])


def vgg16_nodes(source, width=1.0, geometry="notes", dtype=np.float32, rng=None):
    """Graph nodes of conv1_1 .. pool5, reading from node ``source``.

    geometry 'notes': every conv padded by 1, pools 2x2 stride 2 (floor).
    geometry 'paper': conv1_1 padded by 100 and ceil-mode pools, as the original Caffe
    FCN (the padding lets a network whose fc6 is a 7x7 convolution accept any input size).
    Returns (nodes, {"pool3": channels, "pool4": channels, "pool5": channels}).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    nodes, below, c_in = [], source, 3
    channels = {}
    for s, (n_convs, c) in enumerate(STAGES, 1):
        c_out = scaled(c, width)
        for i in range(1, n_convs + 1):
            pad = 100 if (geometry == "paper" and (s, i) == (1, 1)) else 1
            conv = Conv2d(c_in, c_out, 3, padding=pad, dtype=dtype, seed=rng)
            he_init(conv, rng)
            nodes += [(f"conv{s}_{i}", conv, [below]), (f"relu{s}_{i}", ReLU(inplace=True), [f"conv{s}_{i}"])]
            below, c_in = f"relu{s}_{i}", c_out
        nodes.append((f"pool{s}", MaxPool2d(2, 2, ceil_mode=(geometry == "paper")), [below]))
        below = f"pool{s}"
        channels[f"pool{s}"] = c_out
    return nodes, channels


def vgg16_from_torchvision(state, fc6_shape):
    """Rename a torchvision VGG16 state dict (``features.N.*``, ``classifier.0/3.*``) to
    minifcn's names (``conv1_1.weight`` ... ``fc7.bias``).

    The classifier's Linear layers become convolutions — the notes' "replace nn.Linear
    by a convolution": ``classifier.0`` (4096 x 25088 = 4096 x 512*7*7) *is* a 7x7
    convolution over pool5, its rows reshaped to (4096, 512, 7, 7); ``classifier.3``
    (4096 x 4096) is a 1x1 convolution.

    ``fc6_shape`` is the model's fc6 weight shape. For the notes' 1x1 fc6 the 49 taps
    are *summed*: that 1x1 conv gives exactly what the 7x7 fc6 gives on a spatially
    constant pool5 map, and is the nearest 1x1 stand-in otherwise. (Fine-tuning then
    adapts it; use geometry 'paper' to keep fc6 exactly as trained.)
    """
    need = [f"features.{i}.{p}" for i in TORCHVISION_CONV_INDICES for p in ("weight", "bias")]
    need += [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"not a torchvision VGG16 state dict: missing {', '.join(missing[:6])}"
                         + (" ..." if len(missing) > 6 else ""))
    out = {}
    for name, i in zip(conv_names(), TORCHVISION_CONV_INDICES):
        out[f"{name}.weight"] = np.asarray(state[f"features.{i}.weight"])
        out[f"{name}.bias"] = np.asarray(state[f"features.{i}.bias"])
    classifier = {key: np.asarray(state[key]) for key in need if key.startswith("classifier.")}
    for key, shape in (("classifier.0.weight", (4096, 512 * 7 * 7)), ("classifier.0.bias", (4096,)),
                       ("classifier.3.weight", (4096, 4096)), ("classifier.3.bias", (4096,))):
        if classifier[key].shape != shape:
            raise ValueError(f"{key} has shape {classifier[key].shape}, expected {shape}")
    w6 = classifier["classifier.0.weight"].reshape(4096, 512, 7, 7)
    if tuple(fc6_shape[2:]) == (1, 1):
        w6 = w6.sum(axis=(2, 3), keepdims=True)
    out["fc6.weight"], out["fc6.bias"] = w6, classifier["classifier.0.bias"]
    out["fc7.weight"] = classifier["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    out["fc7.bias"] = classifier["classifier.3.bias"]
    return out
