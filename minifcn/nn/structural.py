"""The layers that wire an FCN together: skip fusion (Add), Crop, Scale and PadTo.

They have no weights, but each has a forward and a hand-written backward like any layer:

- ``Add``:   ``y = a + b``                    ->  ``da = db = dy``
- ``Crop``:  ``y = x[..., o:o+H, o:o+W]``    ->  ``dx`` = ``dy`` placed at the same offset,
             zeros elsewhere (cropping discards pixels; their gradient is 0)
- ``Scale``: ``y = c * x``                    ->  ``dx = c * dy``
- ``PadTo``: zero-pad bottom/right to a multiple of ``m`` -> ``dx`` = the top-left crop of dy
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction

from ..backend import get_array_module
from ..functional._checks import check_4d, check_array, check_float
from .layers import _check_backward
from .module import Layer


class Add(Layer):
    """Element-wise sum of two maps of equal shape (FCN's skip fusion)."""

    n_inputs = 2

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, a, b):
        check_array(a, "Add: the first input")
        check_array(b, "Add: the second input")
        if a.shape != b.shape:
            raise ValueError(f"Add: the two inputs must have equal shapes, got {a.shape} and {b.shape}")
        self._shape = a.shape
        return a + b

    def backward(self, dy):
        _check_backward("Add", dy, self._shape)
        return dy, dy

    def output_shape(self, a, b):
        return a

    def coord_map(self):
        return (Fraction(1), Fraction(0)), (Fraction(1), Fraction(0))


class Crop(Layer):
    """Crop ``x`` to the height and width of a reference map, starting at ``offset``.

    ``Crop(offset)`` with ``forward(x, ref)``: ``y = x[:, :, oh:oh+ref_H, ow:ow+ref_W]``.
    The offset is derived by :mod:`minifcn.models.geometry` from the coordinate maps of
    the two inputs; the reference contributes only its size (no gradient flows to it).
    """

    n_inputs = 2

    def __init__(self, offset=(0, 0)):
        super().__init__()
        try:
            oh, ow = offset
        except (TypeError, ValueError):
            oh = ow = None
        if not all(isinstance(o, numbers.Integral) and not isinstance(o, bool) and o >= 0
                   for o in (oh, ow)):
            raise ValueError(f"Crop: offset must be a pair of non-negative ints, got {offset!r}")
        self.offset = (int(oh), int(ow))
        self._in_shape = self._out_shape = None

    def forward(self, x, ref):
        check_4d(x, "Crop: input")
        check_4d(ref, "Crop: the reference map")
        oh, ow = self.offset
        h, w = ref.shape[2:]
        if oh + h > x.shape[2] or ow + w > x.shape[3] or oh < 0 or ow < 0:
            raise ValueError(f"Crop: cannot take {h}x{w} at offset {self.offset} from a "
                             f"{x.shape[2]}x{x.shape[3]} map")
        self._in_shape, self._out_shape = x.shape, x.shape[:2] + (h, w)
        return x[:, :, oh:oh + h, ow:ow + w]

    def backward(self, dy):
        _check_backward("Crop", dy, self._out_shape)
        xp = get_array_module(dy)
        dx = xp.zeros(self._in_shape, dtype=dy.dtype)
        oh, ow = self.offset
        dx[:, :, oh:oh + dy.shape[2], ow:ow + dy.shape[3]] = dy
        return dx, None

    def output_shape(self, x, ref):
        oh, ow = self.offset
        if oh + ref[2] > x[2] or ow + ref[3] > x[3]:
            raise ValueError(f"Crop: cannot take {ref[2]}x{ref[3]} at offset {self.offset} "
                             f"from a {x[2]}x{x[3]} map")
        return x[:2] + ref[2:]

    def coord_map(self):
        return tuple((Fraction(1), Fraction(o)) for o in self.offset)

    def extra_repr(self):
        return f"offset={self.offset}"


class Scale(Layer):
    """``y = c * x`` with a fixed constant (FCN-8s at-once scales its pool skips)."""

    def __init__(self, factor):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) \
                or not math.isfinite(factor):
            raise ValueError(f"Scale: factor must be a finite number, got {factor!r}")
        self.factor = float(factor)
        self._shape = None

    def forward(self, x):
        check_array(x, "Scale: input")
        check_float(x, "Scale: input")          # an integer one would turn 0.5 into 0
        self._shape = x.shape
        return x * x.dtype.type(self.factor)

    def backward(self, dy):
        _check_backward("Scale", dy, self._shape)
        check_float(dy, "Scale: grad_output")
        return dy * dy.dtype.type(self.factor)

    def extra_repr(self):
        return f"{self.factor:g}"


class PadTo(Layer):
    """Zero-pad the bottom and right so that height and width become multiples of ``m``.

    The notes' FCN halves the size five times; padding to a multiple of 32 first makes
    every halving exact and every skip line up, and a final Crop removes the padding.
    (Zero is the dataset mean after mean subtraction, i.e. "no signal".)
    """

    def __init__(self, multiple):
        super().__init__()
        if isinstance(multiple, bool) or not isinstance(multiple, numbers.Integral) or multiple < 1:
            raise ValueError(f"PadTo: multiple must be a positive int, got {multiple!r}")
        self.multiple = int(multiple)
        self._hw = self._out_shape = None

    def _target(self, h, w):
        m = self.multiple
        return -(-h // m) * m, -(-w // m) * m

    def forward(self, x):
        check_4d(x, "PadTo: input")
        h, w = x.shape[2:]
        th, tw = self._target(h, w)
        self._hw, self._out_shape = (h, w), x.shape[:2] + (th, tw)
        if (th, tw) == (h, w):
            return x
        xp = get_array_module(x)
        y = xp.zeros(x.shape[:2] + (th, tw), dtype=x.dtype)
        y[:, :, :h, :w] = x
        return y

    def backward(self, dy):
        _check_backward("PadTo", dy, self._out_shape)
        h, w = self._hw
        return dy[:, :, :h, :w]

    def output_shape(self, x):
        return x[:2] + self._target(*x[2:])

    def extra_repr(self):
        return f"multiple={self.multiple}"
