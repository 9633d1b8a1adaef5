"""FCN-32s/16s/8s on a VGG16 backbone, in the notes' and the paper's geometry."""
from .fcn import (FCN, FCN8s, FCN8sAtOnce, FCN16s, FCN32s, MODELS, bilinear_kernel,
                  bilinear_weight, build_model)
from .geometry import coord_maps, crop_offset, derive_crop_offsets

__all__ = ["FCN", "FCN32s", "FCN16s", "FCN8s", "FCN8sAtOnce", "MODELS", "build_model",
           "bilinear_kernel", "bilinear_weight", "coord_maps", "crop_offset",
           "derive_crop_offsets"]
