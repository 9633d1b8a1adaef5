"""The numbered col2im variants of benchmarks/kernels/ against NumPy, and the harness's rule
that a variant failing validation is never timed."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import col2im_kernels as bench
from tests.cuda_emu import compiler_available, uses_barriers
from tests.cuda_emu.testing import gpu_skip_reason, runtime

CONFIGS = [("auto", "i32"), ("1thread", "i64"), ("odd", "i32/64"), ("idle", "i32")]


@pytest.fixture(scope="module", params=["emu", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend_name(request):
    if request.param == "cuda":
        reason = gpu_skip_reason()
        if reason:
            pytest.skip(reason)
    elif not compiler_available():
        pytest.skip("the CPU emulator needs g++ (set CXX to another C++17 compiler)")
    return request.param


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", bench.SMALL_SHAPES, ids=lambda s: s.name.replace(" ", "-"))
@pytest.mark.parametrize("number", sorted(bench.VARIANTS), ids=lambda n: f"v{n}")
def test_variant_matches_numpy(backend_name, number, shape, dtype, config):
    variant = bench.VARIANTS[number]
    if (backend_name == "emu" and config[0] not in ("1thread", "odd")
            and uses_barriers((bench.KERNELS / variant.source).read_text())):
        pytest.skip("a block-synchronising variant is emulated with one OS thread per GPU "
                    "thread: only the small launches, to keep the suite fast")
    ok, err = bench.validate(runtime(backend_name, *config), variant, shape, dtype)
    assert ok, f"v{number} on {shape.name}: relative error {err:.2e}"


def test_shapes_are_consistent():
    for shape in bench.FCN_SHAPES + bench.SMALL_SHAPES:
        shape.check()
    assert bench.FCN_SHAPES[0].hout == 512 and bench.FCN_SHAPES[1].hout == 1024


def test_a_variant_that_fails_validation_is_not_timed():
    ref = np.arange(6, dtype=np.float64).reshape(2, 3)
    timed = []

    def timer(fn):
        timed.append(fn)
        return 1.0

    right = lambda: ref.astype(np.float32)                     # noqa: E731
    wrong = lambda: ref.astype(np.float32) + 1                 # noqa: E731
    short = lambda: ref[:1].astype(np.float32)                 # noqa: E731
    rows = bench.measure("toy", [("a", "right", right), ("b", "wrong", wrong),
                                 ("c", "wrong shape", short)], ref, timer, 1e-5, 48)
    assert [r["valid"] for r in rows] == [True, False, False]
    assert timed == [right]
    assert "ms" in rows[0] and "ms" not in rows[1] and "ms" not in rows[2]


def test_emulate_command_validates_and_writes_json(tmp_path, capsys):
    if not compiler_available():
        pytest.skip("the CPU emulator needs g++")
    out = tmp_path / "col2im.json"
    assert bench.main(["--device", "emulate", "--variants", "2,3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Timings need a GPU" in text
    import json
    result = json.loads(out.read_text())
    assert result["device"] == "emulate" and all(r["valid"] for r in result["rows"])
    assert {r["variant"] for r in result["rows"]} == {"v2", "v3"}
