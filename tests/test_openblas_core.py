"""Which kernels NumPy's OpenBLAS runs (minifcn/openblas_core.py): the line the training
log and the benchmarks' JSON carry, and when the benchmarks warn that an environment's
OPENBLAS_CORETYPE holds the GEMMs back."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from minifcn import openblas_core as oc

AVX512 = "fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16"
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
flags\t\t: {flags}

processor\t: 1
flags\t\t: fpu
"""
ZEN5 = oc.parse_cpu_flags(CPUINFO.format(flags=AVX512))
AVX2_ONLY = oc.parse_cpu_flags(CPUINFO.format(flags="fpu sse2 avx avx2 fma avx512f"))
RUNNING_HASWELL = ("OpenBLAS 0.3.31.188.0  USE64BITINT DYNAMIC_ARCH Haswell", "Haswell")
RUNNING_SKX = ("OpenBLAS 0.3.31.188.0  USE64BITINT DYNAMIC_ARCH SkylakeX", "SkylakeX")
PINNED = {"OPENBLAS_CORETYPE": "Haswell"}


def test_parse_cpu_flags_reads_the_first_cpu():
    assert ZEN5 == frozenset(AVX512.split())
    assert oc.parse_cpu_flags("processor : 0\nvendor_id : AuthenticAMD\n") is None
    assert oc.parse_cpu_flags("") is None


def test_runs_avx512_needs_every_subset_the_kernels_use():
    assert oc.runs_avx512(ZEN5)
    assert not oc.runs_avx512(AVX2_ONLY)          # avx512f alone is not enough
    assert not oc.runs_avx512(None)               # unknown CPU


@pytest.mark.parametrize("running, environ, flags, expected", [
    (RUNNING_HASWELL, PINNED, ZEN5, True),
    (RUNNING_HASWELL, {}, ZEN5, False),                       # OpenBLAS's own choice
    (RUNNING_HASWELL, {"OPENBLAS_CORETYPE": ""}, ZEN5, False),
    (RUNNING_SKX, {"OPENBLAS_CORETYPE": "SkylakeX"}, ZEN5, False),
    (RUNNING_HASWELL, PINNED, AVX2_ONLY, False),
    (RUNNING_HASWELL, PINNED, None, False),                   # CPU unknown: no warning
    (None, PINNED, ZEN5, False),                              # not OpenBLAS
])
def test_held_back_only_when_the_environment_pins_kernels_below_the_cpu(running, environ,
                                                                        flags, expected):
    assert oc.held_back(running, environ, flags) is expected


@pytest.mark.parametrize("running, expected", [
    (RUNNING_SKX, True), (("OpenBLAS 0.3.31", "Cooperlake"), True),
    (("OpenBLAS 0.3.31", "SAPPHIRERAPIDS"), True), (RUNNING_HASWELL, False),
    (("OpenBLAS 0.3.31", "Zen"), False), (None, False)])
def test_avx512_kernels_names_openblas_avx512_cores(running, expected):
    """What conv2d's Winograd rule asks: whether the GEMMs run AVX-512 kernels (whatever
    the CPU could do)."""
    assert oc.avx512_kernels(running) is expected


def test_describe_says_which_kernels_and_who_chose_them():
    pinned = oc.describe(RUNNING_HASWELL, PINNED, ZEN5)
    assert pinned == ("OpenBLAS 0.3.31.188.0, Haswell kernels (OPENBLAS_CORETYPE=Haswell in "
                      "the environment); this CPU runs AVX-512, which these kernels do not "
                      "use: unset OPENBLAS_CORETYPE to let OpenBLAS choose")
    own = oc.describe(RUNNING_SKX, {}, ZEN5)
    assert own == "OpenBLAS 0.3.31.188.0, SkylakeX kernels (OpenBLAS's own choice for this CPU)"
    assert "unset" not in oc.describe(RUNNING_HASWELL, PINNED, AVX2_ONLY)
    assert "not OpenBLAS" in oc.describe(None, {}, ZEN5)


@pytest.mark.parametrize("core", ["SandyBridge", "Nehalem"])
def test_running_core_reads_what_openblas_loaded(core):
    """OPENBLAS_CORETYPE is OpenBLAS's documented override: a fresh interpreter started with
    it must report that core (one this machine's environment does not already name), else
    running_core() reads the wrong thing."""
    if oc.running_core() is None:
        pytest.skip("NumPy's BLAS here is not an OpenBLAS that reports its core")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("these are x86 cores")
    root = os.path.dirname(os.path.dirname(os.path.abspath(oc.__file__)))
    env = dict(os.environ, OPENBLAS_CORETYPE=core)
    out = subprocess.run([sys.executable, "-c", "from minifcn import openblas_core as oc; "
                          "print(oc.running_core()[1])"],
                         env=env, cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip().lower() == core.lower()
