r"""Fully Convolutional Networks (Long, Shelhamer & Darrell, CVPR 2015) on a VGG16 backbone.

VGG16's fully connected layers become convolutions (fc6, fc7), a 1x1 convolution scores
every class at every position (score_fr), and transposed convolutions upsample the
1/32-size score map back to the image:

- **FCN-32s**: upscore 32x in one step.  Coarse: one score per 32x32 block.
- **FCN-16s**: upscore2 (2x), add the scores of pool4 (1/16), then upscore16 (16x).
- **FCN-8s**:  ... upscore_pool4 (2x), add the scores of pool3 (1/8), upscore8 (8x).
- **FCN-8s at-once**: FCN-8s trained in one stage; the pool4 and pool3 maps are scaled
  by 0.01 and 0.0001 before scoring, so the skips start small.

Two geometries (``geometry=``):

- ``'notes'`` (default) — the study notes' network: 3x3 convs padded by 1, 2x2 pools,
  fc6/fc7 1x1 convs (4096 channels), upscore ``ConvTranspose2d(C, C, 64, 32, 16)``, and 2x
  upscores ``(4, 2, 1)`` that double sizes exactly (16x: ``(32, 16, 8)``, 8x: ``(16, 8, 4)``).
  **Any input size**: the input is zero-padded at the bottom/right to a multiple of 32
  (PadTo), so every pool halves exactly and every skip lines up, and the logits are
  cropped back to the input's size.
- ``'paper'`` — the original Caffe network: conv1_1 padded by 100, ceil-mode pools, fc6 a
  7x7 conv, un-padded upsamplers, and crops at offsets derived from the layer geometry
  (:mod:`minifcn.models.geometry`): each skip's score map is cropped to the upsampled
  map it joins, and the last upscore's output to the input. **Any input size**: the padding of
  100 makes even a 1x1 input leave pool5 at least 7x7 for fc6, and the final crop takes
  exactly the input's size (tested for every size from 1 to 600).

Parameter names follow the widely used PyTorch port of FCN: ``conv1_1.weight`` ...
``conv5_3.bias``, ``fc6``, ``fc7``, ``score_fr``, ``score_pool4``, ``score_pool3``, and
the bias-free upsamplers ``upscore`` (32s), ``upscore2``, ``upscore16`` (16s),
``upscore_pool4``, ``upscore8`` (8s).

Initialisation as the reference Caffe nets: upsampling kernels bilinear on the channel
diagonal and frozen (``learn_upsampling=True`` learns them), score layers zero, and the
backbone He-initialised (for training from scratch; load VGG16 or FCN weights to
fine-tune). The CVPR paper itself learned the intermediate 2x upsamplers from their
bilinear start and kept only the last one fixed; the released nets freeze them all.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..nn import Add, Conv2d, ConvTranspose2d, Crop, Dropout, Graph, PadTo, ReLU, Scale
from ..functional._checks import shape_of
from .geometry import derive_crop_offsets
from .vgg import STAGES, he_init, scaled, vgg16_from_torchvision, vgg16_nodes

GEOMETRIES = ("notes", "paper")
VARIANTS = ("32s", "16s", "8s", "8s-atonce")


def bilinear_kernel(size):
    """The (size x size) kernel of bilinear interpolation for upsampling by ``ceil(size/2)``:
    ``k[i, j] = (1 - |i - c| / f) * (1 - |j - c| / f)``, f = ceil(size/2), centre c."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"bilinear_kernel: size must be a positive int, got {size!r}")
    f = (size + 1) // 2
    c = f - 1 if size % 2 == 1 else f - 0.5
    t = 1 - np.abs(np.arange(size) - c) / f
    return np.outer(t, t)


def bilinear_weight(channels, size, dtype=np.float32):
    """Transposed-conv weight (C, C, k, k): bilinear kernel on the diagonal, 0 elsewhere
    (each class is upsampled on its own)."""
    if np.dtype(dtype).kind != "f":                # an integer weight would be all zeros
        raise ValueError(f"bilinear_weight: dtype must be a float type, got {np.dtype(dtype)}")
    w = np.zeros((channels, channels, size, size), dtype=dtype)
    w[np.arange(channels), np.arange(channels)] = bilinear_kernel(size)
    return w


def parameter_count(variant, num_classes, geometry, width):
    """How many parameters an FCN of this configuration has, counted from its layer sizes
    without building it (held to the built models' ``num_params()`` by the tests)."""
    convs = [scaled(c, width) for n, c in STAGES for _ in range(n)]     # conv1_1 .. conv5_3
    conv3 = sum(cin * cout * 9 + cout for cin, cout in zip([3] + convs[:-1], convs))
    c3, c4, c5 = (scaled(c, width) for c in (256, 512, 512))
    fc = scaled(4096, width)
    k = num_classes
    total = conv3 + c5 * fc * (49 if geometry == "paper" else 1) + fc + fc * fc + fc
    total += fc * k + k                                        # score_fr
    ups = {"32s": [32], "16s": [2, 16], "8s": [2, 2, 8], "8s-atonce": [2, 2, 8]}[variant]
    total += sum(k * k * (2 * f) ** 2 for f in ups)            # the upsamplers, no bias
    total += (c4 * k + k) * (variant != "32s") + (c3 * k + k) * variant.startswith("8s")
    return total


def _available_memory():
    """Bytes this process may still take, as the kernel says (MemAvailable + SwapFree),
    and within its cgroup's limit if it has one (a container); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        have = info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            have = min(have, int(limit) - used)
    except (OSError, ValueError):
        pass
    return have


def _gib(nbytes):
    return (f"{nbytes / 2**30:.1f} GiB" if nbytes < 2**1000
            else f"10^{len(str(nbytes >> 30)) - 1} GiB")


def _check_room_for(variant, num_classes, geometry, width, dtype=np.float32):
    """Refuse, before allocating, a model whose weights alone (``dtype``) cannot fit in the
    memory this process may still take: a huge --width or --num-classes would otherwise
    end in the OOM killer, not in an error. (Building them takes more, up to ~3x for
    float32: the random draws are float64; only what is sure not to fit is refused.)"""
    try:
        need = parameter_count(variant, num_classes, geometry, width) * np.dtype(dtype).itemsize
    except OverflowError:
        raise ValueError(f"width {width:g} is too large: its channel counts overflow") from None
    have = _available_memory()
    if have is not None and need > have:
        raise ValueError(f"an FCN-{variant} of width {width:g} with {num_classes} classes "
                         f"({geometry} geometry) needs {_gib(need)} for its weights alone; "
                         f"this process can take {_gib(max(have, 0))} more")


class FCN(Graph):
    """An FCN of the given ``variant`` ('32s', '16s', '8s', '8s-atonce'). Use the named
    subclasses FCN32s, FCN16s, FCN8s, FCN8sAtOnce.

    ``model.forward(x)``: x (N, 3, H, W) -> logits (N, num_classes, H, W), any H, W.
    ``model.backward(dlogits)``: returns dx and fills ``model.grads``.
    """

    variant = "8s"

    def __init__(self, num_classes=21, geometry="notes", width=1.0, learn_upsampling=False,
                 dropout=0.5, seed=0, dtype=np.float32):
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if not (isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool)
                and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not (isinstance(width, numbers.Real) and not isinstance(width, bool)
                and 0 < width < math.inf):
            raise ValueError(f"width must be a positive finite number, got {width!r}")
        num_classes = int(num_classes)
        _check_room_for(self.variant, num_classes, geometry, width, dtype)
        self.num_classes, self.geometry, self.width = num_classes, geometry, float(width)
        self.learn_upsampling = learn_upsampling
        rng = np.random.default_rng(seed)
        paper = geometry == "paper"
        c = num_classes

        def up(factor):
            """The transposed conv that upsamples by ``factor``: kernel 2f, stride f;
            padding f/2 in the notes' geometry (exact doubling), 0 in the paper's."""
            layer = ConvTranspose2d(c, c, 2 * factor, factor, 0 if paper else factor // 2,
                                    bias=False, dtype=dtype)
            layer.params["weight"] = bilinear_weight(c, 2 * factor, dtype)
            if not learn_upsampling:
                layer.frozen.add("weight")
            return layer

        def score(c_in):
            layer = Conv2d(c_in, c, 1, dtype=dtype)
            for name in layer.params:
                layer.params[name] = np.zeros_like(layer.params[name])
            return layer

        source = "data" if paper else "pad"
        nodes = [] if paper else [("pad", PadTo(32), ["data"])]
        backbone, ch = vgg16_nodes(source, width, geometry, dtype, rng)
        nodes += backbone
        c_fc = scaled(4096, width)
        fc6 = Conv2d(ch["pool5"], c_fc, 7 if paper else 1, dtype=dtype)
        fc7 = Conv2d(c_fc, c_fc, 1, dtype=dtype)
        he_init(fc6, rng)
        he_init(fc7, rng)
        drop_seed = int(rng.integers(2**31))
        nodes += [
            ("fc6", fc6, ["pool5"]), ("relu6", ReLU(inplace=True), ["fc6"]),
            ("drop6", Dropout(dropout, seed=drop_seed), ["relu6"]),
            ("fc7", fc7, ["drop6"]), ("relu7", ReLU(inplace=True), ["fc7"]),
            ("drop7", Dropout(dropout, seed=drop_seed + 1), ["relu7"]),
            ("score_fr", score(c_fc), ["drop7"]),
        ]
        atonce = self.variant == "8s-atonce"
        if self.variant == "32s":
            nodes += [("upscore", up(32), ["score_fr"])]
        else:
            pool4 = "pool4"
            if atonce:
                nodes += [("scale_pool4", Scale(0.01), ["pool4"])]
                pool4 = "scale_pool4"
            nodes += [
                ("upscore2", up(2), ["score_fr"]),                     # 1/32 -> 1/16
                ("score_pool4", score(ch["pool4"]), [pool4]),
                ("score_pool4c", Crop(), ["score_pool4", "upscore2"]),
                ("fuse_pool4", Add(), ["upscore2", "score_pool4c"]),
            ]
            if self.variant == "16s":
                nodes += [("upscore16", up(16), ["fuse_pool4"])]
            else:
                pool3 = "pool3"
                if atonce:
                    nodes += [("scale_pool3", Scale(0.0001), ["pool3"])]
                    pool3 = "scale_pool3"
                nodes += [
                    ("upscore_pool4", up(2), ["fuse_pool4"]),          # 1/16 -> 1/8
                    ("score_pool3", score(ch["pool3"]), [pool3]),
                    ("score_pool3c", Crop(), ["score_pool3", "upscore_pool4"]),
                    ("fuse_pool3", Add(), ["upscore_pool4", "score_pool3c"]),
                    ("upscore8", up(8), ["fuse_pool3"]),
                ]
        nodes += [("score", Crop(), [nodes[-1][0], "data"])]          # exactly the input's size
        super().__init__(nodes)
        self.crop_offsets = derive_crop_offsets(self)
        self.layers["conv1_1"].need_input_grad = True

    # -- the input gradient of the first layer is rarely wanted (training never needs it)
    @property
    def need_input_grad(self):
        return self.layers["conv1_1"].need_input_grad

    @need_input_grad.setter
    def need_input_grad(self, value):
        self.layers["conv1_1"].need_input_grad = bool(value)

    def forward(self, x, hook=None):
        if getattr(x, "ndim", None) != 4 or x.shape[1] != 3:
            raise ValueError(f"FCN input must have shape (N, 3, H, W), got {shape_of(x)}")
        return super().forward(x, hook=hook)

    def load_vgg16(self, state):
        """Transplant torchvision VGG16 ImageNet weights into conv1_1..fc7 (width 1 only).
        See :func:`minifcn.models.vgg.vgg16_from_torchvision`."""
        weights = vgg16_from_torchvision(state, self.params["fc6.weight"].shape)
        own = self.params
        wrong = [f"{k}: {weights[k].shape} vs {own[k].shape}" for k in weights
                 if weights[k].shape != own[k].shape]
        if wrong:
            raise ValueError("VGG16 weights do not fit this model (width "
                             f"{self.width:g}; they need width 1): " + "; ".join(wrong[:4]))
        full = dict(own)
        full.update(weights)
        self.load_state_dict(full)

    def extra_repr(self):
        return (f"variant={self.variant!r}, num_classes={self.num_classes}, "
                f"geometry={self.geometry!r}, width={self.width:g}")

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class FCN32s(FCN):
    variant = "32s"


class FCN16s(FCN):
    variant = "16s"


class FCN8s(FCN):
    variant = "8s"


class FCN8sAtOnce(FCN):
    variant = "8s-atonce"


MODELS = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s, "fcn8s-atonce": FCN8sAtOnce}


def build_model(name, **kwargs):
    """``build_model('fcn8s', num_classes=4, width=0.125)``."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}") from None
    return cls(**kwargs)
