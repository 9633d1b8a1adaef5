"""Runtimes for the kernel tests: the CPU emulator always, CuPy where a GPU is usable.

A test takes the ``rt`` fixture of its own module, built with :func:`runtime`; the same body
then runs on every (backend, launch, index path) combination it is parametrized with.
"""
from __future__ import annotations

import numpy as np

from minifcn import backend

# Launch shapes every kernel must survive: grid-stride loops make all of them correct.
LAUNCHES = {
    "auto": None,                    # the package's own sizes (one thread per element)
    "1thread": ((1,), (1,)),         # one thread does everything
    "1block": ((1,), (128,)),        # one block, looping
    "odd": ((5,), (33,)),            # sizes that divide nothing
    "idle": ((300,), (64,)),         # far more threads than elements
}

# Index paths: "i32" lets kernels use 32-bit indices where they fit (the default), "i64"
# forces the 64-bit path, "i32/64" moves the switch-over to 600 so small tests straddle it.
INDEX_DEFINES = {"i32": {}, "i64": {"MINIFCN_INDEX32_LIMIT": 0},
                 "i32/64": {"MINIFCN_INDEX32_LIMIT": 600}}

_RUNTIMES = {}


def runtime(backend_name: str, launch: str = "auto", index: str = "i32"):
    """A cached runtime: ``backend_name`` is 'emu' (g++ on the CPU) or 'cuda' (CuPy)."""
    key = (backend_name, launch, index)
    if key not in _RUNTIMES:
        if backend_name == "emu":
            from . import EmulatedRuntime
            _RUNTIMES[key] = EmulatedRuntime(LAUNCHES[launch], INDEX_DEFINES[index])
        elif backend_name == "cuda":
            from minifcn.kernels.runtime import CupyRuntime
            _RUNTIMES[key] = CupyRuntime(LAUNCHES[launch], INDEX_DEFINES[index])
        else:
            raise ValueError(backend_name)
    return _RUNTIMES[key]


def gpu_skip_reason():
    """None if CuPy can run kernels here, else why not (for pytest.skip)."""
    if backend.gpu_available():
        return None
    return f"needs CuPy and a usable GPU: {backend._gpu_error or 'unavailable'}"


def put(rt, a):
    """A NumPy array onto the runtime's device."""
    return rt.xp.asarray(a)


def get(a) -> np.ndarray:
    """Any array back to NumPy."""
    return backend.to_numpy(a)
