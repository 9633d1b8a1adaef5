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
model\t\t: 2
flags\t\t: {flags}

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
flags\t\t: fpu
"""
ZEN5 = oc.parse_cpuinfo(CPUINFO.format(flags=AVX512))
AVX2_ONLY = oc.parse_cpuinfo(CPUINFO.format(flags="fpu sse2 avx avx2 fma avx512f"))
RUNNING_HASWELL = ("OpenBLAS 0.3.31.188.0  USE64BITINT DYNAMIC_ARCH Haswell", "Haswell")
RUNNING_SKX = ("OpenBLAS 0.3.31.188.0  USE64BITINT DYNAMIC_ARCH SkylakeX", "SkylakeX")


def test_parse_cpuinfo_reads_the_first_cpu():
    assert ZEN5 == {"vendor": "AuthenticAMD", "family": 26, "flags": frozenset(AVX512.split())}
    assert oc.parse_cpuinfo("processor : 0\nvendor_id : AuthenticAMD\n") is None   # no family
    assert oc.parse_cpuinfo("") is None


def test_runs_avx512_needs_every_subset_the_kernels_use():
    assert oc.runs_avx512(ZEN5)
    assert not oc.runs_avx512(AVX2_ONLY)          # avx512f alone is not enough
    assert not oc.runs_avx512(None)


@pytest.mark.parametrize("running, environ, cpu, expected", [
    (RUNNING_HASWELL, {"OPENBLAS_CORETYPE": "Haswell"}, ZEN5, True),
    (RUNNING_HASWELL, {}, ZEN5, False),                       # OpenBLAS's own choice
    (RUNNING_HASWELL, {"OPENBLAS_CORETYPE": ""}, ZEN5, False),
    (RUNNING_SKX, {"OPENBLAS_CORETYPE": "SkylakeX"}, ZEN5, False),
    (RUNNING_HASWELL, {"OPENBLAS_CORETYPE": "Haswell"}, AVX2_ONLY, False),
])
def test_held_back_only_when_the_environment_pins_kernels_below_the_cpu(running, environ,
                                                                        cpu, expected):
    assert oc.held_back(running, environ, cpu) is expected


def test_describe_says_which_kernels_and_who_chose_them():
    pinned = oc.describe(RUNNING_HASWELL, {"OPENBLAS_CORETYPE": "Haswell"}, ZEN5)
    assert pinned.startswith("OpenBLAS 0.3.31.188.0, Haswell kernels")
    assert "OPENBLAS_CORETYPE=Haswell in the environment" in pinned
    assert "unset OPENBLAS_CORETYPE" in pinned
    own = oc.describe(RUNNING_SKX, {}, ZEN5)
    assert own == "OpenBLAS 0.3.31.188.0, SkylakeX kernels (OpenBLAS's own choice for this CPU)"
    assert "unset" not in oc.describe(RUNNING_HASWELL, {"OPENBLAS_CORETYPE": "Haswell"},
                                      AVX2_ONLY)


@pytest.mark.parametrize("core", ["Haswell", "SandyBridge"])
def test_running_core_reads_what_openblas_loaded(core):
    """OPENBLAS_CORETYPE is OpenBLAS's documented override: a fresh interpreter started with
    it must report that core, else running_core() reads the wrong thing."""
    if oc.running_core() is None:
        pytest.skip("NumPy's BLAS here is not an OpenBLAS that reports its core")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("these are x86 cores")
    env = dict(os.environ, OPENBLAS_CORETYPE=core)
    out = subprocess.run([sys.executable, "-c", "from minifcn import openblas_core as oc; "
                          "print(oc.running_core()[1])"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().lower() == core.lower()
