"""Which array module an array lives on, and moving arrays between host and GPU.

Every op in :mod:`minifcn.functional` is written once against ``xp`` — the array
module of its input — so the same line runs on NumPy (CPU) and CuPy (GPU)::

    xp = get_array_module(x)
    y = xp.maximum(x, 0)

This is the one place that asks whether a GPU is usable. CuPy is imported only
when a CuPy array or the ``"cuda"`` device is actually involved, so a CPU-only
install never needs it.
"""
from __future__ import annotations

import numpy as np

_cupy = None          # the cupy module once imported successfully
_gpu_checked = None   # None: not yet checked; True/False: result of the check
_gpu_error = ""       # why the GPU is unusable, for the error message


def _is_cupy_array(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a) is not np.ndarray and _is_cupy_array(a):   # (the common case asked first)
            import cupy
            return cupy
    return np


def gpu_available() -> bool:
    """True if CuPy imports, sees a GPU, and can actually run a tiny kernel.

    ``cupy.is_available()`` alone is not enough: on a machine with CuPy but no
    driver, the first kernel launch is where things fail, with a message about
    a missing library rather than a missing GPU. So we run one kernel once.
    """
    global _cupy, _gpu_checked, _gpu_error
    if _gpu_checked is not None:
        return _gpu_checked
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        _gpu_checked, _gpu_error = False, f"CuPy is not installed ({type(e).__name__}: {e}); install it with `pip install -e .[gpu]`"
        return False
    try:
        if not cupy.is_available():
            raise RuntimeError("cupy.is_available() is False (no GPU or no driver)")
        a = cupy.arange(4, dtype=cupy.float32)
        if float((a * 2).sum()) != 12.0:
            raise RuntimeError("a test kernel returned a wrong result")
    except Exception as e:
        _gpu_checked, _gpu_error = False, f"no usable GPU: {type(e).__name__}: {e}"
        return False
    _cupy, _gpu_checked = cupy, True
    return True


class DeviceUnavailable(RuntimeError):
    """``device='cuda'`` was asked for where CuPy or a GPU is missing (the message says which);
    the command-line tools print it as one line."""


def require_gpu():
    """Return the cupy module, or raise a clear :class:`DeviceUnavailable` saying why not."""
    if not gpu_available():
        raise DeviceUnavailable(f"device 'cuda' was asked for, but {_gpu_error}. "
                           "Use --device cpu (or device='cpu') to run on NumPy.")
    return _cupy


def check_device(device: str) -> str:
    """Validate a device name ('cpu' or 'cuda'); return it normalised."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        require_gpu()
    return device


def device_of(x) -> str:
    return "cuda" if _is_cupy_array(x) else "cpu"


def to_device(x, device: str):
    """Move an array to ``device`` ('cpu' -> NumPy, 'cuda' -> CuPy). No-op if already there."""
    if device == "cpu":
        return x.get() if _is_cupy_array(x) else np.asarray(x)
    if device == "cuda":
        cp = require_gpu()
        return x if _is_cupy_array(x) else cp.asarray(x)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def to_numpy(x) -> np.ndarray:
    return to_device(x, "cpu")


def as_strided(x, shape, strides):
    """``numpy.lib.stride_tricks.as_strided`` for either backend (strides in bytes)."""
    if _is_cupy_array(x):
        import cupy
        return cupy.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
