"""Every CUDA source compiles with nvcc for Ampere (sm_80) and Hopper (sm_90), without spills.

No GPU is needed: nvcc stops at the cubin. ptxas's resource report (registers, stack,
spill stores and loads per kernel) is written to the test's tmp dir and printed (see it
with ``pytest -s`` or in a failure's captured output). Skipped where nvcc is missing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from minifcn.kernels.runtime import KERNEL_DIR, kernel_names

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(KERNEL_DIR.glob("*.cu")) + sorted((ROOT / "benchmarks" / "kernels").glob("*.cu"))
ARCHS = ["sm_80", "sm_90"]
NVCC = shutil.which("nvcc")

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(report: str) -> dict:
    """kernel name -> {'registers', 'stack', 'spill_stores', 'spill_loads'} from ptxas -v."""
    kernels, current = {}, None
    for line in report.splitlines():
        if m := _ENTRY.search(line):
            current = kernels.setdefault(m.group(1), {})
        elif current is not None and (m := _SPILLS.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                           spill_loads=int(m.group(3)))
        elif current is not None and (m := _REGS.search(line)):
            current["registers"] = int(m.group(1))
    return kernels


def test_there_are_sources():
    names = {p.name for p in SOURCES if p.parent == KERNEL_DIR}
    assert {"activation.cu", "conv_transpose.cu", "im2col.cu", "loss.cu", "pool.cu"} <= names


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH (install the CUDA toolkit)")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_compiles_without_spills(source, arch, tmp_path):
    cubin = tmp_path / f"{source.stem}.{arch}.cubin"
    proc = subprocess.run(
        [NVCC, f"-arch={arch}", "-cubin", "-std=c++17", "-Xptxas", "-v", "-Werror", "all-warnings",
         "-o", str(cubin), str(source)], capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    (tmp_path / f"{source.stem}.{arch}.ptxas.txt").write_text(report)
    assert proc.returncode == 0, f"nvcc failed on {source.name} for {arch}:\n{report}"

    kernels = parse_ptxas(report)
    print(f"\n{source.name} [{arch}]")
    for name, info in sorted(kernels.items()):
        print(f"  {name:40s} {info.get('registers', '?'):>3} registers  "
              f"stack {info.get('stack', '?')} B  spills {info.get('spill_stores', '?')}/"
              f"{info.get('spill_loads', '?')} B")
    assert sorted(kernels) == sorted(kernel_names(source)), "ptxas saw other kernels than the source declares"
    spilled = {k: v for k, v in kernels.items() if v.get("spill_stores") or v.get("spill_loads")}
    assert not spilled, f"register spills in {source.name} for {arch}: {spilled}"
