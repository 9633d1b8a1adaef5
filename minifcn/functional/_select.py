"""Routing a gradient by a 0/1 mask, as a select.

The backward passes of ReLU, max pooling and the loss's ignored pixels pass ``dy`` where a
mask is 1 and give 0 where it is 0. A product with the mask does that in one fast pass,
but only for finite values: ``inf * 0`` is NaN, so an overflowed gradient would turn into
NaN at pixels it never reached. torch and the CUDA kernels select; so does this, taking
the product when :func:`all_finite` says it is safe.
"""
from __future__ import annotations

import numpy as np


def all_finite(a) -> bool:
    """Is every element of the array ``a`` finite? For float32/float64 NumPy arrays one
    BLAS pass: ``a . a`` is finite exactly when no element is NaN or inf, unless the sum
    overflows (then this says False, which only costs the caller a slower exact path).
    Narrower types (float16, whose sum would overflow past 65504) are tested element by
    element; so are CuPy arrays (one reduction and a wait for its answer)."""
    if a.size == 0:
        return True
    if not isinstance(a, np.ndarray):
        from ..backend import get_array_module
        return bool(get_array_module(a).isfinite(a).all())
    if a.dtype.itemsize < 4:
        return bool(np.isfinite(a).all())
    return bool(np.isfinite(np.vdot(a, a)))


def select(out, values, keep, finite):
    """``out = values where keep, else 0`` (``out`` may be ``values`` itself);
    ``finite``: :func:`all_finite` of ``values``."""
    if finite:
        np.multiply(values, keep, out=out)
    else:
        if values is not out:
            np.copyto(out, values)
        np.copyto(out, 0, where=~keep)
    return out
