"""Which kernels NumPy's OpenBLAS runs, and why: a line for logs and benchmark records.

Almost all of minifcn's CPU time is float32 GEMM in the BLAS that NumPy ships: OpenBLAS,
built with every x86 generation's kernels inside (``DYNAMIC_ARCH``). When the library
loads, it picks one kernel set, its *core*: ``Haswell`` for AVX2, ``SkylakeX``,
``Cooperlake`` or ``SapphireRapids`` for AVX-512, and so on. It reads the CPU to choose,
unless the environment variable ``OPENBLAS_CORETYPE`` names a core.

That variable can cost half the speed. This project's CI machine (a 2-core AMD EPYC,
Zen 5, with AVX-512) sets ``OPENBLAS_CORETYPE=Haswell`` in its environment. NumPy's
2048x2048x2048 float32 GEMM runs there at about 250 GFLOP/s, and at about 470 with
OpenBLAS's own choice (``SkylakeX``). torch's oneDNN uses AVX-512 either way, so every
GEMM-bound ratio against torch depends on the variable (benchmarks/RESULTS.md measures
both).

minifcn never changes the variable: a machine's environment is its owner's choice. It
only says what is running, through :func:`describe`, in the training log and in every
benchmark's JSON; and :func:`held_back` tells the benchmarks when to warn. To run with
OpenBLAS's own choice: ``env -u OPENBLAS_CORETYPE python -m ...``.
"""
from __future__ import annotations

import os

ENV = "OPENBLAS_CORETYPE"
AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")   # OpenBLAS's AVX-512 kernel sets
AVX512_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")   # what they use


def parse_cpuinfo(text):
    """The first CPU of a ``/proc/cpuinfo`` text: ``{"vendor", "family", "flags"}``, or
    None where those fields are missing."""
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break                        # the first CPU's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        return {"vendor": fields["vendor_id"], "family": int(fields["cpu family"]),
                "flags": frozenset(fields["flags"].split())}
    except (KeyError, ValueError):
        return None


def read_cpu(path="/proc/cpuinfo"):
    """:func:`parse_cpuinfo` of this machine, or None (not Linux)."""
    try:
        with open(path) as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return None


def runs_avx512(cpu):
    """Whether ``cpu`` (from :func:`read_cpu`) lists the AVX-512 subsets OpenBLAS's AVX-512
    kernels use. Linux lists them only where it enabled the AVX-512 registers."""
    return cpu is not None and all(flag in cpu["flags"] for flag in AVX512_FLAGS)


def running_core():
    """``(config, core)`` of the OpenBLAS NumPy loaded, as OpenBLAS reports them, or None
    where NumPy's BLAS is not an OpenBLAS that says so."""
    import ctypes
    try:
        try:
            from numpy._core import _multiarray_umath as module
        except ImportError:                                  # NumPy 1.x
            from numpy.core import _multiarray_umath as module
        lib = ctypes.CDLL(module.__file__)
    except (ImportError, OSError, AttributeError):
        return None
    for prefix in ("scipy_openblas_", "openblas_"):
        for suffix in ("64_", ""):
            config = getattr(lib, f"{prefix}get_config{suffix}", None)
            core = getattr(lib, f"{prefix}get_corename{suffix}", None)
            if config is not None and core is not None:
                config.restype = core.restype = ctypes.c_char_p
                return config().decode(errors="replace"), core().decode(errors="replace")
    return None


def held_back(running=None, environ=None, cpu=None):
    """True when ``OPENBLAS_CORETYPE`` makes OpenBLAS run kernels without AVX-512 on a CPU
    that runs AVX-512 (arguments default to this process and machine)."""
    running = running_core() if running is None else running
    environ = os.environ if environ is None else environ
    cpu = read_cpu() if cpu is None else cpu
    return (running is not None and bool(environ.get(ENV))
            and running[1].lower() not in AVX512_CORES and runs_avx512(cpu))


def describe(running=None, environ=None, cpu=None):
    """One line: the kernels NumPy's BLAS runs, and who chose them (arguments as
    :func:`held_back`)."""
    running = running_core() if running is None else running
    environ = os.environ if environ is None else environ
    cpu = read_cpu() if cpu is None else cpu
    if running is None:
        return "NumPy's BLAS is not OpenBLAS, or does not say which kernels it runs"
    config, core = running
    version = " ".join(config.split()[:2])
    if not environ.get(ENV):
        return f"{version}, {core} kernels (OpenBLAS's own choice for this CPU)"
    line = f"{version}, {core} kernels ({ENV}={environ[ENV]} in the environment)"
    if held_back(running, environ, cpu):
        line += (f"; this CPU runs AVX-512, which these kernels do not use: unset {ENV} "
                 "to let OpenBLAS choose (float32 GEMM ran about 1.9x faster on the "
                 "project's AMD EPYC)")
    return line
