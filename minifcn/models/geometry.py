r"""Where each pixel of each map sits in the input image: coordinate maps, and the crop
offsets that follow from them.

Every layer maps an output pixel to the centre of its receptive field in its input by an
affine map ``in = a * out + b`` (per axis, exact fractions):

====================  ========  ===============================
layer                 ``a``     ``b``
====================  ========  ===============================
conv / pool k,s,p,d   ``s``     ``d(k-1)/2 - p``
transposed conv       ``1/s``   ``-(d(k-1)/2 - p) / s``  (the inverse map)
crop at offset o      ``1``     ``o``
ReLU, dropout, sum…   ``1``     ``0``
====================  ========  ===============================

Composing them along the path from the input gives, for every map, ``image = A * pixel + B``.
Two maps on the same grid (equal ``A``) line up when the one is cropped at
``offset = (B_ref - B_x) / A``. That is how Caffe derived the crops of the original FCN;
for the paper's network (conv1_1 padded by 100) this gives FCN-32s: 19; FCN-16s: 5 and
27; FCN-8s: 5, 9 and 31 — computed here, never typed in (``tests/test_models.py``).
For the notes' network (padding 1, halving pools, kernel = 2 x stride upsamplers
with padding = stride/2) every offset comes out 0.
"""
from __future__ import annotations

from fractions import Fraction

from ..nn.graph import INPUT
from ..nn.structural import Crop

IDENTITY = ((Fraction(1), Fraction(0)), (Fraction(1), Fraction(0)))


def coord_maps(graph):
    """``{node: ((A_h, B_h), (A_w, B_w))}`` with ``image_coord = A * node_coord + B``.
    Nodes with several inputs (sums, crops) follow their first input."""
    maps = {INPUT: IDENTITY}
    for name, layer, inputs in graph.nodes:
        below = maps[inputs[0]]
        maps[name] = tuple((A * a, A * b + B) for (A, B), (a, b) in zip(below, layer.coord_map()))
    return maps


def crop_offset(map_x, map_ref, what="crop"):
    """The offset at which map ``x`` must be cropped to line up with map ``ref``."""
    offsets = []
    for (ax, bx), (ar, br) in zip(map_x, map_ref):
        if ax != ar:
            raise ValueError(f"{what}: the two maps are on different grids (scales {ax} and {ar})")
        off = (br - bx) / ax
        if off.denominator != 1 or off < 0:
            raise ValueError(f"{what}: the maps are misaligned by {off} pixels (not a "
                             "non-negative integer), so no crop can line them up")
        offsets.append(int(off))
    return tuple(offsets)


def derive_crop_offsets(graph):
    """Set the offset of every :class:`Crop` node from the coordinate maps of its two
    inputs, in graph order (a crop's own map depends on its offset). Returns
    ``{crop node: (oh, ow)}``."""
    maps = {INPUT: IDENTITY}
    found = {}
    for name, layer, inputs in graph.nodes:
        if isinstance(layer, Crop):
            layer.offset = crop_offset(maps[inputs[0]], maps[inputs[1]], f"crop {name!r}")
            found[name] = layer.offset
        below = maps[inputs[0]]
        maps[name] = tuple((A * a, A * b + B) for (A, B), (a, b) in zip(below, layer.coord_map()))
    return found
