"""Argument checking shared by the ops: every bad argument becomes a ValueError
that names the parameter and the sizes involved (never a broadcasting error)."""
from __future__ import annotations

import numbers


def pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """Turn an int or an (h, w) pair into an (h, w) tuple of ints >= ``minimum``."""
    if type(value) is int and value >= minimum:      # the common case, without the ABC checks
        return value, value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        h = w = int(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        h, w = int(value[0]), int(value[1])
    else:
        raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if h < minimum or w < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return h, w


def check_ignore_index(value, owner: str = "ignore_index") -> int:
    """The label that marks pixels not to count: an int (not a bool). Anything else (None,
    1.5, '255') would silently mean "ignore nothing", since no label equals it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner} must be an int (the label of pixels not to count), "
                         f"got {value!r}")
    return int(value)


def _is_array(x):
    """Has ``x`` a shape and a dtype, as NumPy and CuPy arrays (and NumPy scalars) do?"""
    return getattr(x, "shape", None) is not None and hasattr(x, "dtype")


def shape_of(x):
    """What an error message says ``x`` is: ``'shape (2, 3)'``, or for something that is
    not an array (a list, None) ``'a list, not an array'``."""
    if not _is_array(x):
        return f"a {type(x).__name__}, not an array"
    return f"shape {tuple(x.shape)}"


def check_array(x, name: str):
    """``x`` must be a NumPy or CuPy array: a list would fail later, inside NumPy, with a
    message about lists."""
    if not _is_array(x):
        raise ValueError(f"{name} must be a NumPy or CuPy array, got {shape_of(x)}")


def check_4d(x, name: str = "input", layout: str = "(N, C, H, W)"):
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name} must be a 4-D array {layout}, got {shape_of(x)}")


def check_float(x, name: str = "input"):
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def check_positive_size(name: str, out_hw, in_hw, **params):
    if out_hw[0] <= 0 or out_hw[1] <= 0:
        detail = ", ".join(f"{k}={v}" for k, v in params.items())
        raise ValueError(f"{name}: the output size would be {out_hw[0]}x{out_hw[1]} "
                         f"(empty) for input size {in_hw[0]}x{in_hw[1]} with {detail}")
