"""Which kernels NumPy's OpenBLAS runs, and why: a line for logs and benchmark records.

Almost all of minifcn's CPU time is float32 GEMM in the BLAS that NumPy ships: OpenBLAS,
built with every x86 generation's kernels inside (``DYNAMIC_ARCH``). When the library
loads, it picks one kernel set, its *core*: ``Haswell`` for AVX2, ``SkylakeX``,
``Cooperlake`` or ``SapphireRapids`` for AVX-512, and so on. It reads the CPU to choose,
unless the environment variable ``OPENBLAS_CORETYPE`` names a core.

That variable can cost half the speed. The project's machine of the twelfth session (a
2-core AMD EPYC, Zen 5, with AVX-512) sets ``OPENBLAS_CORETYPE=Haswell`` in its
environment: NumPy's 2048x2048x2048 float32 GEMM ran there at about 250 GFLOP/s, and at
about 470 with OpenBLAS's own choice (``SkylakeX``). torch's convolutions (oneDNN) use
AVX-512 either way, so every GEMM-bound ratio against torch depends on the variable;
benchmarks/RESULTS.md measures both.

minifcn never changes the variable: a machine's environment is its owner's choice. It
says what runs, through :func:`describe`: in the training log on the CPU, and in the
JSON of the benchmarks (``machine.blas``); :func:`held_back` tells them when to warn. To
run with OpenBLAS's own choice: ``env -u OPENBLAS_CORETYPE python -m ...``.
"""
from __future__ import annotations

import os

ENV = "OPENBLAS_CORETYPE"
# OpenBLAS's AVX-512 kernel sets, by the names it reports (a core it adds later is taken
# for one without AVX-512: at worst a needless warning).
AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")
AVX512_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")   # what they use


def parse_cpu_flags(text):
    """The ``flags`` of the first CPU in a ``/proc/cpuinfo`` text, or None if it has none."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def read_cpu_flags(path="/proc/cpuinfo"):
    """:func:`parse_cpu_flags` of this machine, or None (not Linux)."""
    try:
        with open(path) as f:
            return parse_cpu_flags(f.read())
    except OSError:
        return None


def runs_avx512(flags):
    """Whether CPU ``flags`` list the AVX-512 subsets OpenBLAS's AVX-512 kernels use (Linux
    lists them only where it enabled the AVX-512 registers). False for unknown (None)."""
    return flags is not None and all(flag in flags for flag in AVX512_FLAGS)


def numpy_blas_library():
    """NumPy's extension module as a ``ctypes`` library, or None: ``dlsym`` on it finds the
    symbols of the BLAS NumPy was linked against (:mod:`.functional.blas` finds its GEMMs
    this way too)."""
    import ctypes
    try:
        try:
            from numpy._core import _multiarray_umath as module
        except ImportError:                                  # NumPy 1.x
            from numpy.core import _multiarray_umath as module
        return ctypes.CDLL(module.__file__)
    except (ImportError, OSError, AttributeError):
        return None


def running_core():
    """``(config, core)`` of the OpenBLAS NumPy loaded, as OpenBLAS reports them, or None
    where NumPy's BLAS is not an OpenBLAS that says so."""
    import ctypes
    lib = numpy_blas_library()
    if lib is None:
        return None
    for prefix in ("scipy_openblas_", "openblas_"):
        for suffix in ("64_", "_64", ""):
            config = getattr(lib, f"{prefix}get_config{suffix}", None)
            core = getattr(lib, f"{prefix}get_corename{suffix}", None)
            if config is not None and core is not None:
                config.restype = core.restype = ctypes.c_char_p
                return config().decode(errors="replace"), core().decode(errors="replace")
    return None


_THIS = object()       # default argument: this process and machine


def _this(running, environ, flags):
    """The arguments of :func:`held_back` and :func:`describe`, defaults filled in."""
    return (running_core() if running is _THIS else running,
            os.environ if environ is None else environ,
            read_cpu_flags() if flags is _THIS else flags)


def avx512_kernels(running=_THIS):
    """Whether NumPy's OpenBLAS runs one of its AVX-512 kernel sets (``running``:
    :func:`running_core`'s result, by default this process's; False where unknown).
    :func:`~minifcn.functional.conv._winograd_conv2d` asks: with GEMMs about twice as
    fast, Winograd's transforms weigh twice as much."""
    running = running_core() if running is _THIS else running
    return running is not None and running[1].lower() in AVX512_CORES


def held_back(running=_THIS, environ=None, flags=_THIS):
    """True when ``OPENBLAS_CORETYPE`` makes OpenBLAS run kernels without AVX-512 on a CPU
    that runs AVX-512. Arguments: :func:`running_core`'s result, the environment OpenBLAS
    was loaded with and the CPU's flags (None: unknown); by default this process's."""
    running, environ, flags = _this(running, environ, flags)
    return (running is not None and bool(environ.get(ENV))
            and running[1].lower() not in AVX512_CORES and runs_avx512(flags))


def describe(running=_THIS, environ=None, flags=_THIS):
    """One line: the kernels NumPy's BLAS runs, and who chose them (arguments as
    :func:`held_back`)."""
    running, environ, flags = _this(running, environ, flags)
    if running is None:
        return "NumPy's BLAS is not OpenBLAS, or does not say which kernels it runs"
    config, core = running
    version = " ".join(config.split()[:2])
    if not environ.get(ENV):
        return f"{version}, {core} kernels (OpenBLAS's own choice for this CPU)"
    line = f"{version}, {core} kernels ({ENV}={environ[ENV]} in the environment)"
    if held_back(running, environ, flags):
        line += (f"; this CPU runs AVX-512, which these kernels do not use: unset {ENV} "
                 "to let OpenBLAS choose")
    return line
