"""Run minifcn's CUDA kernels on the CPU: the same ``.cu`` source, compiled by g++.

``prelude.h`` defines the CUDA keywords away and supplies ``dim3``, ``threadIdx`` and
friends, atomics, and a launch that runs every thread of every block in turn. Each ``.cu``
file is compiled once into a shared library (cached under the temp directory, keyed on
the source text) with two exports per kernel: a launcher taking CUDA-style packed
arguments, and the kernel's parameter types as text.

:class:`EmulatedRuntime` stands in for :class:`minifcn.kernels.runtime.CupyRuntime`, so the
package's host code (:mod:`minifcn.kernels.ops`) runs unchanged over NumPy arrays. It is
stricter than a GPU in three ways, each there to catch a bug before it reaches one:

- every argument must have exactly the C type the kernel declares: a NumPy array of the
  right dtype, C-contiguous, for a pointer; ``numpy.int32`` for ``int``, ``numpy.int64``
  for ``long long``, ``numpy.float32``/``float64`` for ``float``/``double``. A plain
  Python ``int`` is refused: CuPy would pass it as 64 bits, and a kernel reading ``int``
  would read garbage.
- every array is copied between two guard zones (NaN for floats, 0x7f bytes for ints):
  a read past either end poisons the result, a write there fails the call.
- ``xp.empty`` returns arrays filled with the same poison, so an element a kernel forgets
  to write cannot pass by luck.

:class:`EmulatedElementwiseKernel` does the same for a ``cupy.ElementwiseKernel`` (the
fused optimizer updates): its operation text compiled inside a loop over the elements.

Threads run one after another, which is exact for kernels whose threads never talk to each
other (all of the package's). A source that calls ``__syncthreads`` is built so that the
threads of each block run at once instead, one OS thread each, sharing its ``__shared__``
arrays and meeting at the barrier (slower; used by a benchmark variant). Warp functions
are not emulated, and races beyond what the barrier orders are not detected.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from minifcn.kernels.runtime import kernel_names, launch_config, read_source

PRELUDE = Path(__file__).resolve().with_name("prelude.h")
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++17", "-O2", "-shared", "-fPIC", "-pthread", "-fno-strict-aliasing", "-w"]
GUARD = 64                     # guard elements on each side of every array argument

_SCALARS = {                   # C parameter type -> (NumPy scalar type, ctypes type)
    "int": (np.int32, ctypes.c_int32),
    "unsigned int": (np.uint32, ctypes.c_uint32),
    "long long": (np.int64, ctypes.c_int64),
    "unsigned long long": (np.uint64, ctypes.c_uint64),
    "float": (np.float32, ctypes.c_float),
    "double": (np.float64, ctypes.c_double),
}
_POINTEES = {"float": np.float32, "double": np.float64, "int": np.int32,
             "long long": np.int64, "unsigned char": np.uint8}


def compiler_available() -> bool:
    return shutil.which(CXX) is not None


def cache_dir() -> Path:
    d = os.environ.get("MINIFCN_EMU_CACHE") or os.path.join(
        tempfile.gettempdir(), f"minifcn-cuda-emu-{os.getuid() if hasattr(os, 'getuid') else 0}")
    Path(d).mkdir(parents=True, exist_ok=True)
    return Path(d)


def _poison(dtype) -> np.ndarray:
    """One element of the poison pattern: a NaN for floats, 0x7f7f... for integers."""
    dtype = np.dtype(dtype)
    byte = 0xFF if dtype.kind == "f" else 0x7F
    return np.full(dtype.itemsize, byte, dtype=np.uint8).view(dtype)


def uses_barriers(source: str) -> bool:
    """Whether CUDA source calls ``__syncthreads`` (comments do not count)."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", source, flags=re.DOTALL)
    return re.search(r"\b__syncthreads\s*\(", code) is not None


def build(path, defines=None) -> Path:
    """Compile one ``.cu`` file for the CPU; return the shared library's path (cached)."""
    path = Path(path).resolve()
    defines = dict(defines or {})
    names = kernel_names(path)
    source = read_source(path)
    if uses_barriers(source):              # threads of a block must run at once
        defines.setdefault("EMU_CONCURRENT_BLOCKS", 1)
    unit = "\n".join([
        *(f"#define {k} {v}" for k, v in sorted(defines.items())),
        f'#include "{PRELUDE}"',
        f'#line 1 "{path}"',
        source,
        "// -- emulator exports --",
        *(f"EMU_EXPORT({n})" for n in names),
        "",
    ])
    return _build_unit(unit, path.stem, PRELUDE.read_text(), what=str(path))


class EmulatedKernel:
    """One kernel, called like ``cupy.RawKernel``: ``kernel(grid, block, args)``."""

    def __init__(self, lib, name: str):
        self.name = name
        self._launch = getattr(lib, f"emu_launch_{name}")
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p)]
        self._launch.restype = ctypes.c_int
        signature = getattr(lib, f"emu_signature_{name}")
        signature.restype = ctypes.c_char_p
        text = signature().decode()
        self.param_types = text.split(",") if text else []

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        if shared_mem:
            raise ValueError(f"{self.name}: the emulator runs no dynamic shared memory")
        args = tuple(args)
        if len(args) != len(self.param_types):
            raise TypeError(f"{self.name} takes {len(self.param_types)} arguments "
                            f"({', '.join(self.param_types)}), got {len(args)}")
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        for i, a in enumerate(arrays):
            for b in arrays[i + 1:]:
                if np.shares_memory(a, b):
                    raise ValueError(f"{self.name}: two array arguments overlap "
                                     "(the kernels declare them __restrict__)")
        holders, guarded = [], []
        for pos, (ctype, arg) in enumerate(zip(self.param_types, args)):
            if ctype.endswith("*"):
                g = _Guarded(self.name, pos, ctype, arg)
                guarded.append(g)
                holders.append(ctypes.c_void_p(g.pointer))
            else:
                holders.append(_scalar(self.name, pos, ctype, arg))
        packed = (ctypes.c_void_p * max(1, len(holders)))(
            *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        cfg = (ctypes.c_uint * 6)(*grid, *block)
        self._launch(cfg, packed)
        for g in guarded:
            g.finish()


def _dims(value, what):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise ValueError(f"{what} must be 1 to 3 positive sizes, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


def _scalar(kernel, pos, ctype, arg):
    if ctype not in _SCALARS:
        raise TypeError(f"{kernel}: the emulator does not know parameter type {ctype!r}")
    np_type, c_type = _SCALARS[ctype]
    if type(arg) is not np_type:
        hint = " (a Python int would reach CUDA as 64 bits)" if isinstance(arg, int) else ""
        raise TypeError(f"{kernel}: argument {pos} is declared {ctype}, so it must be a "
                        f"numpy.{np_type.__name__}; got {type(arg).__name__} {arg!r}{hint}")
    return c_type(arg.item())


class _Guarded:
    """An array argument copied between two poisoned guard zones."""

    def __init__(self, kernel, pos, ctype, arr):
        pointee = ctype.rstrip("*").strip()
        const = pointee.startswith("const ")
        pointee = pointee[6:] if const else pointee
        want = np.dtype(_POINTEES[pointee])
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{kernel}: argument {pos} is declared {ctype}, so it must be a "
                            f"NumPy array (a CuPy array on the GPU); got {type(arr).__name__}")
        if arr.dtype != want:
            raise TypeError(f"{kernel}: argument {pos} is declared {ctype}, so it must be "
                            f"{want}; got an array of {arr.dtype}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{kernel}: argument {pos} must be C-contiguous "
                             "(the kernel reads it as a flat buffer)")
        if not const and not arr.flags.writeable:
            raise ValueError(f"{kernel}: argument {pos} ({ctype}) is written but read-only")
        self.kernel, self.pos, self.const, self.arr = kernel, pos, const, arr
        n = arr.size
        self.buf = np.empty(n + 2 * GUARD, dtype=want)
        self.buf[:] = _poison(want)[0]
        self.buf[GUARD:GUARD + n] = arr.reshape(-1)
        self.guard_bytes = self.buf.view(np.uint8).copy()
        self.pointer = self.buf.ctypes.data + GUARD * want.itemsize

    def finish(self):
        n, size = self.arr.size, self.buf.itemsize
        raw = self.buf.view(np.uint8)
        lo, hi = slice(0, GUARD * size), slice((GUARD + n) * size, None)
        if not (np.array_equal(raw[lo], self.guard_bytes[lo])
                and np.array_equal(raw[hi], self.guard_bytes[hi])):
            raise AssertionError(f"{self.kernel}: wrote outside array argument {self.pos}")
        if self.const:
            if not np.array_equal(raw, self.guard_bytes):
                raise AssertionError(f"{self.kernel}: wrote into const argument {self.pos}")
        else:
            self.arr.reshape(-1)[...] = self.buf[GUARD:GUARD + n]


class EmulatedModule:
    """The kernels of one ``.cu`` file, like ``cupy.RawModule``."""

    def __init__(self, path, defines=None):
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(build(path, defines)))
        self._kernels = {}

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self._kernels:
            self._kernels[name] = EmulatedKernel(self._lib, name)
        return self._kernels[name]


def _poisoned_empty(shape, dtype=float, order="C"):
    a = np.empty(shape, dtype=dtype, order=order)
    a[...] = _poison(a.dtype)[0]
    return a


class _PoisonedNumpy:
    """NumPy, except that new arrays come filled with poison instead of old memory."""

    empty = staticmethod(_poisoned_empty)

    @staticmethod
    def empty_like(a, dtype=None):
        return _poisoned_empty(a.shape, dtype or a.dtype)

    def __getattr__(self, name):
        return getattr(np, name)


poisoned_numpy = _PoisonedNumpy()


class EmulatedRuntime:
    """Stands in for :class:`minifcn.kernels.runtime.CupyRuntime` on the CPU.

    ``launch``: None for the package's own launch sizes, a fixed ``(grid, block)`` to force
    one (a single thread, a single block, a grid mostly idle), or a callable
    ``total -> (grid, block)``. ``defines``: preprocessor macros for the compile (e.g.
    ``{"MINIFCN_INDEX32_LIMIT": 0}`` sends every kernel down its 64-bit index path).
    Every launch is recorded in ``launches`` as ``(name, grid, block)``.
    """

    xp = poisoned_numpy

    def __init__(self, launch=None, defines=None):
        self.launch = launch
        self.defines = dict(defines or {})
        self.launches = []
        self._modules = {}

    def module(self, path) -> EmulatedModule:
        key = str(Path(path).resolve())
        if key not in self._modules:
            self._modules[key] = _module_cache(key, tuple(sorted(self.defines.items())))
        return self._modules[key]

    def function(self, path, name: str):
        kernel = self.module(path).get_function(name)

        def launch(grid, block, args, shared_mem=0):
            self.launches.append((name, _dims(grid, "grid"), _dims(block, "block")))
            kernel(grid, block, args, shared_mem)
        return launch

    def launch_config(self, total: int):
        if self.launch is None:
            return launch_config(total)
        if callable(self.launch):
            return self.launch(total)
        return self.launch


class EmulatedElementwiseKernel:
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name)`` on the CPU: the
    same ``operation`` text, compiled by g++ inside a loop over the elements, with each
    array argument bound to its element (inputs by value, outputs by reference) and each
    scalar by value; ``T`` is the arrays' dtype. As strict as :class:`EmulatedKernel`:
    every array must be C-contiguous, of one shape and one dtype (float32 or float64),
    every scalar a NumPy scalar of that dtype, every output an array."""

    _CTYPES = {np.dtype(np.float32): ("float", ctypes.c_float),
               np.dtype(np.float64): ("double", ctypes.c_double)}

    def __init__(self, in_params, out_params, operation, name):
        self.ins, self.outs = _elementwise_params(in_params), _elementwise_params(out_params)
        self.operation, self.name = operation, name
        self._built = {}

    def __call__(self, *args):
        params = self.ins + self.outs
        if len(args) != len(params):
            raise TypeError(f"{self.name}: {len(params)} arguments expected, got {len(args)}")
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        if not arrays or any(not isinstance(a, np.ndarray) for a in args[len(self.ins):]):
            raise TypeError(f"{self.name}: the outputs, and at least one input, must be arrays")
        dtype = arrays[0].dtype
        if dtype not in self._CTYPES:
            raise TypeError(f"{self.name}: T must be float32 or float64, got {dtype}")
        for (_, pname), a in zip(params, args):
            if isinstance(a, np.ndarray):
                if a.dtype != dtype or a.shape != arrays[0].shape or not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: {pname} must be a C-contiguous {dtype} "
                                    f"array of shape {arrays[0].shape}")
            elif type(a) is not dtype.type:
                raise TypeError(f"{self.name}: scalar {pname} must be numpy.{dtype}, got "
                                f"{type(a).__name__}")
        kinds = tuple(isinstance(a, np.ndarray) for a in args)
        fn = self._function(dtype, kinds)
        ctype = self._CTYPES[dtype][1]
        fn(ctypes.c_longlong(arrays[0].size),
           *[a.ctypes.data_as(ctypes.c_void_p) if k else ctype(a) for a, k in zip(args, kinds)])

    def _function(self, dtype, kinds):
        key = (dtype, kinds)
        if key not in self._built:
            cname, ctype = self._CTYPES[dtype]
            n_in = len(self.ins)
            decls, binds = ["long long n"], []
            for j, ((_, pname), is_array) in enumerate(zip(self.ins + self.outs, kinds)):
                if j >= n_in:
                    decls.append(f"T* p_{pname}")
                    binds.append(f"T& {pname} = p_{pname}[i];")
                elif is_array:
                    decls.append(f"const T* p_{pname}")
                    binds.append(f"const T {pname} = p_{pname}[i];")
                else:
                    decls.append(f"T s_{pname}")
                    binds.append(f"const T {pname} = s_{pname};")
            unit = "\n".join([
                "#include <cmath>", "using std::sqrt; using std::exp; using std::log;",
                f"typedef {cname} T;",
                f'extern "C" void run({", ".join(decls)}) {{',
                "  for (long long i = 0; i < n; ++i) {",
                *("    " + b for b in binds),
                f"    {{ {self.operation} }}",
                "  }", "}", ""])
            lib = ctypes.CDLL(str(_build_unit(unit, self.name)))
            fn = lib.run
            fn.argtypes = [ctypes.c_longlong] + [ctypes.c_void_p if k else ctype for k in kinds]
            fn.restype = None
            self._built[key] = fn
        return self._built[key]


def _elementwise_params(text):
    """``"T g, T lr"`` -> ``[("T", "g"), ("T", "lr")]`` (only the type ``T`` is emulated)."""
    params = [tuple(p.split()) for p in text.split(",") if p.strip()]
    for p in params:
        if len(p) != 2 or p[0] != "T":
            raise ValueError(f"emulated ElementwiseKernel parameters are 'T name', got {p}")
    return params


def _build_unit(unit, stem, included="", what=None):
    """Compile a C++ translation unit into a shared library; cached under the temp
    directory, keyed on the unit, ``included`` (the text of what it includes), the
    compiler and its flags."""
    flags = list(CXXFLAGS)
    if os.environ.get("MINIFCN_EMU_SANITIZE"):
        # e.g. MINIFCN_EMU_SANITIZE=undefined: integer overflow and friends abort the run
        flags += [f"-fsanitize={os.environ['MINIFCN_EMU_SANITIZE']}", "-fno-sanitize-recover=all"]
    key = hashlib.sha256("\0".join([unit, included, CXX, *flags]).encode()).hexdigest()
    out = cache_dir() / f"{stem}-{key[:20]}.so"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        src = Path(tmp) / f"{stem}.cpp"
        src.write_text(unit)
        lib = Path(tmp) / out.name
        proc = subprocess.run([CXX, *flags, "-o", str(lib), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ could not compile {what or stem} for the CPU emulator:\n"
                               f"{proc.stderr}")
        os.replace(lib, out)        # atomic: parallel test workers never see half a file
    return out


_MODULES = {}


def _module_cache(path: str, defines: tuple) -> EmulatedModule:
    """One loaded library per (file, defines) per process."""
    key = (path, defines)
    if key not in _MODULES:
        _MODULES[key] = EmulatedModule(path, dict(defines))
    return _MODULES[key]
