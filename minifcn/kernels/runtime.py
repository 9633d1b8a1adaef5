"""Where a kernel runs: reading the ``.cu`` sources, compiling them with CuPy, launching.

The host code in :mod:`minifcn.kernels.ops` never imports CuPy itself. It asks a *runtime*
for two things:

- ``runtime.xp`` — the array module to allocate outputs with (``cupy``);
- ``runtime.function(path, name)`` — a callable ``f(grid, block, args)``, the call shape of
  ``cupy.RawKernel``;

plus ``runtime.launch_config(total)`` for the (grid, block) of a launch. :class:`CupyRuntime`
is the real one. ``tests/cuda_emu`` provides a second runtime that compiles the very same
``.cu`` files with g++ and runs them on the CPU, which is how the kernels *and* this host
code are tested on machines without a GPU.
"""
from __future__ import annotations

import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65536          # more blocks than an H100 keeps resident ~60 times over;
                            # larger problems go round the grid-stride loop again

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.MULTILINE)


def kernel_path(name: str) -> Path:
    """The path of one of the package's sources, e.g. ``kernel_path('im2col.cu')``."""
    return KERNEL_DIR / name


def read_source(path) -> str:
    """The text of a ``.cu`` file with its ``#include "..."`` files pasted in (each once).

    Pasting keeps the source self-contained for NVRTC, and makes CuPy's compile cache
    (keyed on the source text) see a change to a header too.
    """
    seen: set[Path] = set()

    def expand(p: Path) -> str:
        p = p.resolve()
        if p in seen:
            return f"// (already included: {p.name})\n"
        seen.add(p)
        text = p.read_text()
        return _INCLUDE.sub(lambda m: expand(p.parent / m.group(1)), text)

    return expand(Path(path))


def kernel_names(path) -> list[str]:
    """The ``extern "C" __global__`` entry points a source file defines, in order."""
    return re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(', read_source(path))


def launch_config(total: int, threads: int = THREADS_PER_BLOCK) -> tuple[tuple, tuple]:
    """(grid, block) for ``total`` independent elements: one thread each, up to MAX_BLOCKS."""
    blocks = max(1, min(MAX_BLOCKS, -(-int(total) // threads)))
    return (blocks,), (threads,)


class CupyRuntime:
    """Compiles each ``.cu`` file once with ``cupy.RawModule`` (NVRTC) and hands out its
    kernels. CuPy also caches the compiled binary on disk, so a new process skips NVRTC.

    ``launch`` and ``defines`` exist for the tests: a fixed ``(grid, block)`` (or a callable
    ``total -> (grid, block)``) instead of :func:`launch_config`, and preprocessor macros
    for the compile (``{"MINIFCN_INDEX32_LIMIT": 0}`` forces the 64-bit index paths).
    """

    def __init__(self, launch=None, defines=None):
        import cupy
        self.xp = cupy
        self.launch = launch
        self.options = ("--std=c++17",) + tuple(
            f"-D{k}={v}" for k, v in sorted((defines or {}).items()))
        self._modules = {}
        self._functions = {}

    def function(self, path, name: str):
        key = (str(path), name)
        fn = self._functions.get(key)
        if fn is None:
            module = self._modules.get(str(path))
            if module is None:
                module = self.xp.RawModule(code=read_source(path), options=self.options)
                self._modules[str(path)] = module
            fn = self._functions[key] = module.get_function(name)
        return fn

    def launch_config(self, total: int):
        if self.launch is None:
            return launch_config(total)
        return self.launch(total) if callable(self.launch) else self.launch


_cupy_runtime = None


def cupy_runtime() -> CupyRuntime:
    """The process-wide CuPy runtime (created on first use)."""
    global _cupy_runtime
    if _cupy_runtime is None:
        _cupy_runtime = CupyRuntime()
    return _cupy_runtime
