"""The benchmark harness itself: interleaved rounds, paired ratios, and refusing to time a
variant that fails validation (issue 6). Tiny shapes; no timing is asserted."""
from __future__ import annotations

import numpy as np
import pytest

import benchmarks.common as common
import benchmarks.deconv as deconv
from benchmarks.common import Timer, paired_ratio
from minifcn import openblas_core


@pytest.fixture(autouse=True)
def _malloc_untouched(monkeypatch):
    """The benchmarks' mains fix glibc's malloc thresholds for the rest of their process
    (common.fix_malloc_thresholds); called here, inside pytest, they get a stub that only
    says so, and the suite keeps glibc's defaults."""
    import benchmarks.col2im_kernels as ck
    for module in (common, ck):
        monkeypatch.setattr(module, "fix_malloc_thresholds", lambda: "thresholds (test)")


def test_rounds_time_every_contender_once_per_round_in_turn():
    order = []
    times = Timer("cpu").rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                repeats=3, warmup=1, rewarm_s=0)
    # 1 warm-up round, then 3 rounds of (untimed call, timed call) per contender
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3]
    assert all(t >= 0 for v in times.values() for t in v)


def test_rounds_spin_only_on_the_cpu():
    """On the CPU the untimed call repeats for rewarm_s (other libraries' threads spin);
    on the GPU one untimed call (a spin would only queue asynchronous launches)."""
    calls = []
    gpu = Timer.__new__(Timer)
    gpu.device, gpu.sync = "cuda", lambda: None
    gpu.once = lambda fn: (fn(), 1.0)[1]
    gpu.rounds({"a": lambda: calls.append(1)}, repeats=2, warmup=0)
    assert len(calls) == 4                          # per round: one untimed, one timed
    calls.clear()
    Timer("cpu").rounds({"a": lambda: calls.append(1)}, repeats=1, warmup=0, rewarm_s=0.01)
    assert len(calls) > 2


def test_busy_threads_sees_a_spinning_worker_and_waits_for_it():
    """OpenBLAS's workers spin about 0.13 s after a GEMM; a torch call timed inside that
    window shared a core with one (16-24 ms for a 1 ms convolution). The harness lists
    the running threads from /proc and waits until there are none."""
    import threading
    import time

    from benchmarks.common import busy_threads, wait_for_idle_threads
    if busy_threads() is None:
        pytest.skip("threads cannot be listed here (no /proc/self/task)")
    a = np.ones((768, 768), np.float32)            # ~ms per GEMM: mostly inside BLAS
    stop, ready = threading.Event(), threading.Event()

    def spin():                                  # numpy releases the GIL in the GEMM:
        ready.set()                              # the thread stays in state R
        while not stop.is_set():
            a @ a
    worker = threading.Thread(target=spin)
    worker.start()
    ready.wait()
    seen = set()
    for _ in range(50):
        seen.update(busy_threads())
        time.sleep(0.001)
    assert worker.native_id in seen
    assert wait_for_idle_threads(limit_s=0.05) is False    # still spinning: gives up
    stop.set()
    worker.join()
    assert wait_for_idle_threads(limit_s=5.0) is True       # OpenBLAS's own workers too


def test_rounds_wait_for_other_threads_before_each_turn(monkeypatch):
    import benchmarks.common as common
    calls = []
    monkeypatch.setattr(common, "wait_for_idle_threads", lambda: calls.append("wait"))
    Timer("cpu").rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        repeats=2, warmup=0, rewarm_s=0)
    assert calls == ["wait", "a", "a", "wait", "b", "b"] * 2


def test_rounds_count_and_report_turns_whose_wait_gave_up(monkeypatch, capsys):
    """A thread that never sleeps would make every wait give up: the turns are still
    timed, but counted (the benchmarks' JSON records ``busy_turns``), and reported once."""
    import benchmarks.common as common
    monkeypatch.setattr(common, "wait_for_idle_threads", lambda: False)
    timer = Timer("cpu")
    timer.rounds({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=0, rewarm_s=0)
    assert timer.busy_turns == 6
    err = capsys.readouterr().err
    assert err.count("warning: other threads of this process still running") == 1
    monkeypatch.setattr(common, "wait_for_idle_threads", lambda: True)
    quiet = Timer("cpu")
    quiet.rounds({"a": lambda: None}, repeats=2, warmup=0, rewarm_s=0)
    assert quiet.busy_turns == 0 and "warning" not in capsys.readouterr().err


def test_ceilings_time_torchs_matmul_beside_numpys(monkeypatch):
    """With torch, the ceilings add torch's GFLOP/s on the same matrix and the paired
    ratio of the two libraries' times (checked against the rounds it came from)."""
    import benchmarks.common as common
    import torch
    seen = {}
    real_rounds = common.Timer.rounds

    def spy(self, fns, *args, **kwargs):
        seen.update(real_rounds(self, fns, *args, **kwargs))
        return seen
    monkeypatch.setattr(common.Timer, "rounds", spy)
    c = common.ceilings("cpu", Timer("cpu"), torch, sizes=(1 << 12, 64))
    flop = 2 * 64 ** 3 / 1e6
    assert set(seen) == {"ours", "torch"}
    assert c["matmul_GFLOPs"] == pytest.approx(flop / np.median(seen["ours"]))
    assert c["torch_matmul_GFLOPs"] == pytest.approx(flop / np.median(seen["torch"]))
    assert c["matmul_ratio"] == pytest.approx(paired_ratio(seen["ours"], seen["torch"]))
    assert np.isfinite(c["copy_GBps"]) and c["copy_GBps"] > 0
    assert set(common.ceilings("cpu", Timer("cpu"), sizes=(1 << 12, 64))) == {
        "copy_GBps", "matmul_GFLOPs"}                 # without torch: NumPy's alone


def test_deconv_keeps_what_it_measured_when_cut_short(tmp_path, monkeypatch, capsys):
    """The JSON is rewritten after every shape (a device session's time limit may stop the
    run): stopped during the second shape, it holds the first shape's rows."""
    import json
    monkeypatch.setattr(deconv, "FCN_SHAPES", [SMALL, ("second",) + SMALL[1:]])
    real = deconv.run_shape

    def run_shape(shape, *args):
        if shape[0] == "second":
            raise KeyboardInterrupt              # what timeout -s INT does
        return real(shape, *args)
    monkeypatch.setattr(deconv, "run_shape", run_shape)
    monkeypatch.setattr(deconv, "ceilings", lambda device, timer, torch: {
        "copy_GBps": 1.0, "matmul_GFLOPs": 1.0, "torch_matmul_GFLOPs": 1.0, "matmul_ratio": 1.0})
    path = tmp_path / "d.json"
    path.write_text('{"complete": true, "rows": ["a finished run"]}')
    finished = path.read_text()
    with pytest.raises(KeyboardInterrupt):
        deconv.main(["--repeats", "1", "--json", str(path)])
    assert path.read_text() == finished          # a finished run's file is never replaced
    saved = json.loads((tmp_path / "d.json.partial").read_text())
    assert saved["complete"] is False
    assert saved["machine"]["busy_turns"] >= 0
    assert saved["machine"]["blas"] == openblas_core.describe()   # which GEMM kernels ran
    assert saved["machine"]["malloc"] == "thresholds (test)"    # fix_malloc_thresholds' line
    # torch, then every CPU algorithm (all apply to k4 s2): none refused, none skipped
    assert [r["impl"] for r in saved["rows"]] == ["torch"] + [
        f"minifcn {a}" for a in deconv.ALGORITHMS_TIMED["cpu"]]
    assert {r["shape"] for r in saved["rows"]} == {SMALL[0]}
    assert "[1/2]" in capsys.readouterr().out
    assert not (tmp_path / "d.json.tmp").exists()
    assert not (tmp_path / "d.json.partial.tmp").exists()
    # as `python -m` runs it: one line, no traceback, exit status 130
    from minifcn.cli import run_main
    assert run_main(deconv.main, ["--repeats", "1", "--json", str(path)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"


def test_json_path_check_covers_where_a_run_writes_first(tmp_path, capsys):
    """A run writes ``PATH.partial`` (through ``PATH.partial.tmp``) until it completes: a
    folder in either place used to stop the run after its first measurement; the check
    made before any timing now refuses it, naming the path."""
    import argparse
    for name in ("a.json.partial", "b.json.partial.tmp"):
        (tmp_path / name).mkdir()
        path = str(tmp_path / name.split(".partial")[0])
        parser = argparse.ArgumentParser(prog="bench")
        with pytest.raises(SystemExit) as e:
            common.check_json_path(parser, path)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"--json {path}" in err and "in the way" in err and name in err
    common.check_json_path(argparse.ArgumentParser(), str(tmp_path / "c.json"))     # fine


def test_write_json_keeps_a_run_going_beside_the_finished_file(tmp_path, capsys):
    import json
    import os
    path = tmp_path / "r.json"
    common.write_json(str(path), {"complete": False, "rows": [1]})
    assert not path.exists() and (tmp_path / "r.json.partial").exists()
    common.write_json(str(path), {"complete": True, "rows": [1, 2]})
    assert json.loads(path.read_text())["rows"] == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["r.json"]          # the partial file is gone
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(OSError, match=r"--json .*gone.*r\.json"):
        common.write_json(str(tmp_path / "gone" / "r.json"), {"complete": True})


def test_deconv_on_the_gpu_does_not_time_the_cpu_algorithms():
    for cpu_only in ("implicit", "winograd"):
        assert cpu_only in deconv.ALGORITHMS_TIMED["cpu"]
        assert cpu_only not in deconv.ALGORITHMS_TIMED["cuda"]


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # round 2 ran during a slowdown that hit both sides: the paired ratio ignores it,
    # while the ratio of medians (20/10 = 2) would not
    assert paired_ratio([10, 100, 12, 11, 9], [20, 200, 10, 22, 18]) == 0.5


SMALL = ("tiny k4s2", 1, 3, 2, 5, 4, 4, 2, 1)


def test_deconv_rows_validate_then_time_every_algorithm():
    import torch
    rows = deconv.run_shape(SMALL, "cpu", Timer("cpu"), 2, torch)
    impls = [r["impl"] for r in rows]
    assert impls == ["torch", "minifcn auto", "minifcn col2im", "minifcn subpixel", "minifcn fused",
                     "minifcn implicit", "minifcn winograd"]
    for r in rows[1:]:
        assert r["max_rel_err"] <= 1e-4 and r["fwd_ratio"] > 0 and r["bwd_ratio"] > 0
    (check,) = deconv.auto_check(rows)
    assert check["auto_fwd"] == "subpixel" and check["auto_bwd"] == "col2im"    # CPU, k4 s2
    assert check["best_fwd"] in ("col2im", "subpixel", "fused", "implicit", "winograd")
    assert check["auto_fwd_vs_best"] > 0


def test_auto_check_names_the_fastest_algorithm_and_what_auto_lost():
    rows = [{"shape": "s", "impl": "torch", "fwd_ms": 1.0}]
    for impl, f, b in (("auto", 1.2, 0.5), ("col2im", 1.0, 0.5), ("subpixel", 1.2, 0.7),
                       ("fused", 0.8, 0.4),         # fused's backward is col2im's: not ranked
                       ("implicit", 0.9, 0.45)):
        rows.append({"shape": "s", "impl": f"minifcn {impl}", "fwd_ratio": f, "bwd_ratio": b,
                     "macs": 7, "auto_fwd": "subpixel", "auto_bwd": "col2im"})
    rows.append({"shape": "s", "impl": "minifcn broken", "note": "FAILED validation"})
    (check,) = deconv.auto_check(rows)
    assert check.pop("auto_fwd_vs_best") == pytest.approx(1.2 / 0.8)
    assert check.pop("auto_bwd_vs_best") == pytest.approx(0.5 / 0.45)      # implicit's own
    assert check == {"shape": "s", "macs": 7, "auto_fwd": "subpixel", "best_fwd": "fused",
                     "auto_bwd": "col2im", "best_bwd": "implicit"}


@pytest.mark.parametrize("wrong", ["off by one", "NaN", "one NaN", "shape"])
def test_deconv_refuses_to_time_a_variant_that_fails_validation(monkeypatch, wrong):
    """Wrong values, NaN (whose error, NaN, is not 'above the tolerance' either: it used to
    pass and be timed), or another shape: reported, not timed."""
    import torch
    real = deconv.conv_transpose2d

    def broken(x, w, b, s, p, algorithm="auto"):
        y = real(x, w, b, s, p, algorithm=algorithm)
        if algorithm != "col2im":
            return y
        if wrong == "off by one":
            return y + 1
        if wrong == "NaN":
            return np.full_like(y, np.nan)
        if wrong == "one NaN":
            y = y.copy()
            y.flat[3] = np.nan
            return y
        return y[..., :-1]

    monkeypatch.setattr(deconv, "conv_transpose2d", broken)
    rows = {r["impl"]: r for r in deconv.run_shape(SMALL, "cpu", Timer("cpu"), 2, torch)}
    bad = rows["minifcn col2im"]
    assert "FAILED validation" in bad["note"] and "fwd_ms" not in bad
    assert np.isfinite(rows["minifcn subpixel"]["fwd_ms"])


def test_rel_error_and_validated():
    from benchmarks.common import rel_error, validated
    ref = np.array([1.0, -2.0, 4.0])
    assert rel_error(ref + 0.04, ref) == pytest.approx(0.01)
    for got in (np.array([1.0, np.nan, 4.0]), np.array([np.inf, -2.0, 4.0]), ref[:2]):
        assert rel_error(got, ref) == float("inf")
    assert validated([0.0, 1e-5]) and not validated([0.0, 1e-3])
    assert not validated([float("nan")])


def test_col2im_kernels_measure_poisons_the_shared_output():
    """Candidates share one output buffer on the GPU: a kernel that writes nothing must not
    pass on the image the previous candidate left there (poisoned with NaN first)."""
    import benchmarks.col2im_kernels as ck
    ref = np.arange(6.0).reshape(2, 3)
    out = np.empty_like(ref)

    def good():
        out[...] = ref
        return out

    def writes_nothing():
        return out

    def timer(fn):
        return 1.0
    rows = ck.measure("s", [("v1", "good", good), ("v2", "lazy", writes_nothing)], ref, timer,
                      1e-5, 1, poison=lambda: out.fill(np.nan))
    assert [(r["variant"], r["valid"], "ms" in r) for r in rows] == [("v1", True, True),
                                                                    ("v2", False, False)]
    unpoisoned = ck.measure("s", [("v1", "good", good), ("v2", "lazy", writes_nothing)], ref,
                            timer, 1e-5, 1)
    assert unpoisoned[1]["valid"]         # what the poison is for


def test_col2im_kernels_on_the_cpu_validates_and_times_the_numpy_strategies(tmp_path,
                                                                           monkeypatch, capsys):
    """``--device cpu``: taps, blocks and auto against torch's fold (validated against fold
    in float64, then timed), a JSON row each; a strategy made wrong is refused, exit 1."""
    import json
    import benchmarks.col2im_kernels as ck
    small = [ck.Shape("k4 s2 p1", 1, 3, 4, 2, 1, 5), ck.Shape("k16 s8 p4", 1, 2, 16, 8, 4, 3)]
    monkeypatch.setattr(ck, "FCN_SHAPES", small)
    path = tmp_path / "c.json"
    assert ck.main(["--device", "cpu", "--repeats", "2", "--json", str(path)]) == 0
    saved = json.loads(path.read_text())
    assert saved["complete"] is True and saved["repeats"] == 2
    assert "--device cpu" in saved["command"]
    rows = saved["rows"]
    assert [(r["shape"], r["variant"]) for r in rows] == [
        (s.name, v) for s in small
        for v in ("numpy taps", "numpy blocks", "numpy phases", "numpy auto", "torch fold")]
    for r in rows:
        assert r["valid"] and r["max_rel_error"] <= 1e-5 and r["ms"] > 0
        assert r["vs_fold"] > 0 if r["variant"] != "torch fold" else "vs_fold" not in r
    assert "vs fold" in capsys.readouterr().out

    import importlib
    im2col_module = importlib.import_module("minifcn.functional.im2col")
    real = im2col_module.col2im
    monkeypatch.setattr(im2col_module, "col2im",
                        lambda col, *a, method="auto", **k: real(col, *a, method=method, **k)
                        * (2 if method == "blocks" else 1))
    assert ck.main(["--device", "cpu", "--repeats", "1", "--json", str(path)]) == 1
    rows = json.loads(path.read_text())["rows"]
    blocks = [r for r in rows if r["variant"] == "numpy blocks"]
    assert blocks and all(not r["valid"] and "ms" not in r for r in blocks)
    assert "FAILED validation" in capsys.readouterr().out


@pytest.mark.parametrize("module,argv,flag", [
    ("deconv", ["--repeats", "0"], "--repeats"),
    ("step", ["--repeats", "0"], "--repeats"),
    ("step", ["--sizes", "0"], "--sizes"),
    ("step", ["--sizes", "-5"], "--sizes"),
    ("step", ["--width", "nan"], "--width"),
    ("step", ["--width", "0"], "--width"),
    ("col2im_kernels", ["--device", "cpu", "--repeats", "0"], "--repeats"),
    ("col2im_kernels", ["--device", "cpu", "--warmup", "x"], "--warmup"),
    ("col2im_kernels", ["--device", "cpu", "--warmup", "-1"], "--warmup"),
    ("col2im_kernels", ["--device", "cpu", "--no-torch"], "--no-torch"),
    ("col2im_kernels", ["--device", "cpu", "--variants", "1"], "--variants"),
    ("conv2d", ["--repeats", "0"], "--repeats"),
    ("conv2d", ["--size", "0"], "--size"),
    ("conv2d", ["--width", "nan"], "--width"),
    ("conv2d", ["--batch", "-1"], "--batch"),
    ("winograd", ["--repeats", "0"], "--repeats"),
    ("winograd", ["--layers", "256x256"], "--layers"),
    ("winograd", ["--layers", "256x0x8"], "--layers"),
    ("winograd", ["--device", "cuda"], "--device"),
    ("winograd_tiles", ["--channels", "0"], "--channels"),
    ("winograd_tiles", ["--windows", "x"], "--windows"),
    ("profile_deconv", ["--shape", "1", "2", "2", "4", "4", "4", "0", "1"], "--shape"),
    ("profile_deconv", ["--shape", "-1", "2", "2", "4", "4", "4", "2", "1"], "--shape"),
    ("profile_deconv", ["--shape", "1", "0", "2", "4", "4", "4", "2", "1"], "--shape"),
    ("profile_deconv", ["--shape", "0", "2", "2", "4", "4", "4", "2", "1"], "--shape"),
    ("profile_deconv", ["--shape", "1", "2", "2", "4", "4", "4", "2", "-1"], "--shape"),
    ("profile_step", ["--device", "cpu", "--width", "inf"], "--width"),
])
def test_benchmark_flags_are_checked_before_measuring(module, argv, flag, capsys):
    import importlib
    cli = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("module,extra", [("deconv", []), ("step", []), ("conv2d", []),
                                          ("col2im_kernels", ["--device", "cpu"]),
                                          ("winograd", []), ("winograd_tiles", [])])
def test_benchmark_json_path_is_checked_before_measuring(module, extra, tmp_path, capsys,
                                                         monkeypatch):
    """A --json that cannot be written stops the run at once (it used to be a traceback
    after all the measuring); without --json, the run writes <name>_<device>.json here."""
    import importlib
    cli = importlib.import_module(f"benchmarks.{module}")
    import os
    proc = [("/proc/x.json", "cannot write in /proc")] if os.path.isdir("/proc") else []
    for target, why in ((tmp_path / "no" / "x.json", "does not exist"),
                        (tmp_path, "is a directory"), *proc):
        with pytest.raises(SystemExit) as exc:
            cli.main([*extra, "--json", str(target)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"--json {target}" in err and why in err
    monkeypatch.chdir(tmp_path)
    import argparse
    p = argparse.ArgumentParser()
    from benchmarks.common import add_json_flag, json_path
    add_json_flag(p, module)
    p.add_argument("--device", default="cpu")
    assert json_path(p, p.parse_args([]), module) == f"{module}_cpu.json"
    assert json_path(p, p.parse_args(["--json", ""]), module) == ""


def test_profile_deconv_names_the_steps_of_each_algorithm(capsys):
    """The profile finds the package's step functions by name: renaming one would silently
    drop it from the report, so every algorithm's steps must show up."""
    import benchmarks.profile_deconv as profile
    shape = ["--shape", "2", "3", "2", "5", "4", "4", "2", "1", "--repeats", "2"]
    expected = {"subpixel": ["sub-pixel weight", "stack the images", "shifted copies (im2col)",
                             "GEMM (shifted rows)", "pixel shuffle"],
                "col2im": ["GEMM (W^T @ x)", "col2im"],
                "fused": ["fused (per-tap GEMMs)"],
                "implicit": ["phase weights", "stack the input", "GEMMs (blas.gemm)",
                             "phase shuffle"],
                "winograd": ["filter transform (winograd)", "split into windows (winograd)",
                             "input transform (winograd)", "output transform (winograd)",
                             "GEMMs (blas.gemm)"]}
    for algorithm, labels in expected.items():
        assert profile.main(shape + ["--algorithm", algorithm]) == 0
        out = capsys.readouterr().out
        for label in labels:
            assert f"  {label} " in out, (algorithm, label, out)
    # stride 8: the channels-last sub-pixel forward
    assert profile.main(["--shape", "1", "2", "2", "3", "3", "16", "8", "4", "--repeats", "2",
                         "--algorithm", "subpixel"]) == 0
    out = capsys.readouterr().out
    for label in ("GEMM (channels-last)", "shuffle (channels-last)"):
        assert f"  {label} " in out, (label, out)
    # the backward: im2col of dy and its two GEMMs; the implicit adjoint's un-shuffle
    backward = {"col2im": ["im2col", "GEMM (W @ col)", "GEMM (dy @ col^T)"],
                "implicit": ["un-shuffle dy (implicit)", "GEMMs (blas.gemm)"],
                "winograd": ["output transform's adjoint (winograd)",
                             "input transform's adjoint (winograd)",
                             "windows back onto dx (winograd)",
                             "filter transform's adjoint (winograd)", "GEMMs (blas.gemm)"]}
    for algorithm, labels in backward.items():
        assert profile.main(shape + ["--algorithm", algorithm, "--backward"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("conv_transpose2d_backward ")
        for label in labels:
            assert f"  {label} " in out, (algorithm, label, out)


def test_profile_deconv_counts_a_gemm_inside_a_step_once():
    """A step that calls ``blas.gemm`` itself is reported without that GEMM's time, which
    the GEMM row holds (with the GEMMs called from elsewhere): the rows add up. cProfile's
    stats by hand: (calls, primitive calls, own s, cumulative s, {caller: the same})."""
    from benchmarks.profile_deconv import step_times
    op, step, gemm = ("conv.py", 1, "conv_transpose2d"), ("w.py", 2, "_output_transform"), \
        ("blas.py", 3, "gemm")
    stats = {op: (1, 1, 0.001, 0.017, {}),              # its own 1 ms, the step, 16 GEMMs
             step: (2, 2, 0.004, 0.007, {op: (2, 2, 0.004, 0.007)}),
             gemm: (18, 18, 0.012, 0.012, {op: (16, 16, 0.009, 0.009),
                                           step: (2, 2, 0.003, 0.003)})}
    got = step_times(stats)
    assert got["_output_transform"] == pytest.approx(4.0)      # 7 ms less its GEMMs' 3
    assert got["gemm"] == pytest.approx(12.0)
    # the op's own time, the step's and all GEMMs' make the op's cumulative time
    assert 1.0 + got["_output_transform"] + got["gemm"] == pytest.approx(17.0)


def test_profile_deconv_refuses_a_wrong_result(monkeypatch, capsys):
    import benchmarks.profile_deconv as profile
    real = profile.conv_transpose2d
    monkeypatch.setattr(profile, "conv_transpose2d", lambda *a, **k: real(*a, **k) * 2)
    assert profile.main(["--shape", "1", "2", "2", "4", "4", "4", "2", "1"]) == 1
    assert "not profiled" in capsys.readouterr().out
    real_bwd = profile.conv_transpose2d_backward
    monkeypatch.setattr(profile, "conv_transpose2d", real)
    monkeypatch.setattr(profile, "conv_transpose2d_backward",
                        lambda *a, **k: tuple(None if g is None else g * 2
                                              for g in real_bwd(*a, **k)))
    assert profile.main(["--shape", "1", "2", "2", "4", "4", "4", "2", "1", "--backward"]) == 1
    assert "not profiled" in capsys.readouterr().out


def test_profile_deconv_bad_arguments_get_a_clear_error(capsys):
    import benchmarks.profile_deconv as profile
    assert profile.main(["--shape", "1", "2", "2", "4", "4", "9", "2", "9"]) == 2
    assert "--shape 1 2 2 4 4 9 2 9" in capsys.readouterr().err
    for bad in (["--algorithm", "fft"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as exc:
            profile.main(bad)
        assert exc.value.code == 2
        assert bad[0] in capsys.readouterr().err


@pytest.mark.parametrize("module", ["deconv", "step", "col2im_kernels", "profile_step"])
def test_cuda_benchmarks_without_a_gpu_stop_with_the_reason(module, capsys):
    """On a machine without a usable GPU, ``--device cuda`` is a usage error that says why
    (exit 2), not a traceback from deep inside."""
    from minifcn.backend import gpu_available
    if gpu_available():
        pytest.skip("this machine has a usable GPU")
    import importlib
    cli = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "device 'cuda' was asked for" in err and "--device cpu" in err
    if module == "col2im_kernels":          # its CUDA source can still be checked here
        assert "--device emulate validates the CUDA variants" in err


def test_profile_step_cpu_shows_both_frameworks_by_layer(capsys):
    """The CPU profile of a (tiny) FCN-8s step: minifcn's rows by layer type and pass, the
    loss and the optimizer timed apart, torch's rows by operator, and the two totals."""
    import benchmarks.profile_step as profile
    assert profile.main(["--device", "cpu", "--size", "32", "--width", "0.0625",
                         "--steps", "1"]) == 0
    out = capsys.readouterr().out
    for expected in ("forward    Conv2d", "backward   Conv2d", "MaxPool2d", "ConvTranspose2d",
                     "loss       softmax cross-entropy", "optimizer  SGD step",
                     "aten::convolution_backward", "minifcn", "ratio"):
        assert expected in out, expected
    with pytest.raises(SystemExit) as exc:
        profile.main(["--device", "cpu", "--steps", "0"])
    assert exc.value.code == 2


def test_col2im_kernels_cpu_takes_warmup_zero(monkeypatch, tmp_path):
    import benchmarks.col2im_kernels as ck
    monkeypatch.setattr(ck, "FCN_SHAPES", [ck.Shape("k2 s2", 1, 2, 2, 2, 0, 3)])
    assert ck.main(["--device", "cpu", "--repeats", "1", "--warmup", "0", "--json", ""]) == 0


@pytest.mark.parametrize("framework", ["minifcn", "torch"])
def test_step_memory_run_builds_one_framework_and_measures_it(framework):
    """The CPU peak memory runs one framework alone in a fresh process: its network is
    built without the other's, its step runs, and the peak over the build is positive
    (measured on a network larger than the process's warm-up one: the same size could
    fit in what the warm-up freed, and read 0)."""
    import benchmarks.step as step
    b = step._build(32, "cpu", 1 / 32, (framework,))
    assert (b.ours is None) == (framework == "torch") and (b.ref is None) == (framework == "minifcn")
    loss = step._steps(b)[0 if framework == "minifcn" else 1]()
    assert np.isfinite(float(loss.detach() if hasattr(loss, "detach") else loss))
    assert step._cpu_peak_rss(framework, 64, 1 / 8) > 0


def test_step_benchmark_times_minifcn_without_winograd_too(tmp_path):
    """``--without-winograd``: a third contender, minifcn's step with the Winograd rule
    switched off for its duration (and on again after), timed in the same rounds."""
    import json
    import benchmarks.step as step
    import minifcn.functional.conv as conv
    from minifcn.functional.blas import uses_cblas
    g = conv._geometry("conv2d", np.zeros((1, 512, 40, 40), np.float32),
                       np.zeros((512, 512, 3, 3), np.float32), None, 1, 1, 1, 1)
    seen = []
    direct = step._without_winograd(lambda: seen.append(conv._winograd_conv2d(g)) or 7)
    assert direct() == 7 and seen == [False]
    assert conv._winograd_conv2d(g) is uses_cblas(np.float32)     # restored
    path = tmp_path / "s.json"
    assert step.main(["--sizes", "32", "--width", "0.0625", "--repeats", "1", "--no-memory",
                      "--without-winograd", "--json", str(path)]) == 0
    row = json.loads(path.read_text())["rows"][0]
    assert row["direct_ms"] > 0 and row["direct_ratio"] > 0 and row["winograd_speedup"] > 0


def test_step_twins_agree_at_a_batch_of_three():
    """``--batch``: both networks take the same batch, and from equal weights their logits
    agree (the two sides time the same work). The logits, not the loss: with score
    weights of 1e-2 the first loss is within 1e-5 of ln 21 whatever the network computes."""
    import benchmarks.step as step
    b = step._build(32, "cpu", 1 / 32, batch=3)
    assert b.x.shape == (3, 3, 32, 32) and b.yt.shape == (3, 32, 32)
    ours = b.ours.forward(b.x)
    theirs = b.ref(b.xt).detach().numpy()
    assert ours.shape == theirs.shape == (3, 21, 32, 32)
    assert np.abs(theirs).max() > 1e-3 and np.abs(theirs - theirs.mean()).max() > 1e-4
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())


# -- benchmarks.conv2d: FCN-8s's convolutions layer by layer --------------------------------

def test_conv2d_benchmark_takes_the_layers_from_the_model():
    import benchmarks.conv2d as bc
    layers = {name: (x, w, p) for name, x, w, p in bc.fcn8s_layers(64, 0.125, 2)}
    assert list(layers)[:3] == ["conv1_1", "conv1_2", "conv2_1"]
    assert len([n for n in layers if n.startswith("conv")]) == 13
    assert {"fc6", "fc7", "score_fr", "score_pool4", "score_pool3"} <= set(layers)
    assert layers["conv1_1"] == ((2, 3, 64, 64), (8, 3, 3, 3), (1, 1))
    assert layers["conv3_1"] == ((2, 16, 16, 16), (32, 16, 3, 3), (1, 1))
    assert layers["fc7"] == ((2, 512, 2, 2), (512, 512, 1, 1), (0, 0))


def test_conv2d_benchmark_forces_im2col_and_restores_the_rules():
    import benchmarks.conv2d as bc
    x, w = np.zeros((2, 8, 16, 16), np.float32), np.zeros((8, 8, 3, 3), np.float32)
    before = bc.path_taken(x, w, (1, 1))
    with bc.im2col_only():
        assert bc.path_taken(x, w, (1, 1)) == "im2col"
        assert bc.path_taken(np.zeros((1, 64, 64, 64), np.float32),
                             np.zeros((64, 64, 3, 3), np.float32), (1, 1)) == "im2col"
    assert bc.path_taken(x, w, (1, 1)) == before


def test_conv2d_benchmark_names_winograd_and_times_it_against_the_direct_path(monkeypatch):
    """A Winograd layer (256 channels, 64x64) shows as 'winograd', as 'implicit' with
    Winograd off, 'im2col' forced; restored after. With the thresholds
    lowered, a small layer takes Winograd and gets the 'minifcn direct' contender."""
    import torch
    import benchmarks.conv2d as bc
    from minifcn.functional.blas import uses_cblas
    if not uses_cblas(np.float32):
        pytest.skip("NumPy's BLAS is not reachable here")
    monkeypatch.setattr(bc.conv_module, "AVX512_GEMM", False)   # the AVX2 kernels' rule
    x, w = np.zeros((1, 256, 64, 64), np.float32), np.zeros((256, 256, 3, 3), np.float32)
    assert bc.path_taken(x, w, (1, 1)) == "winograd"
    with bc.no_winograd():
        assert bc.path_taken(x, w, (1, 1)) == "implicit"
    with bc.im2col_only():
        assert bc.path_taken(x, w, (1, 1)) == "im2col"
    assert bc.path_taken(x, w, (1, 1)) == "winograd"
    monkeypatch.setattr(bc.conv_module, "CPU_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(bc.conv_module, "CPU_WINOGRAD_MIN_PIXELS", 1)
    layer = ("conv3_2", (1, 4, 8, 8), (6, 4, 3, 3), (1, 1))
    rows = {r["impl"]: r for r in bc.run_layer(layer, "cpu", Timer("cpu"), 2, torch)}
    assert set(rows) == {"torch", "minifcn auto", "minifcn direct", "minifcn im2col"}
    assert {r["path"] for r in rows.values()} == {"winograd"}
    assert all(r["max_rel_err"] <= 1e-4 for k, r in rows.items() if k != "torch")


def test_winograd_benchmark_times_both_paths_and_refuses_a_wrong_one(tmp_path, monkeypatch,
                                                                   capsys):
    """Two tiny layers: both variants validated against torch and timed with torch beside
    them, the rule's choice shown; then a Winograd made wrong is reported, not timed."""
    import json
    import benchmarks.winograd as bw
    monkeypatch.setattr(bw.conv_module, "AVX512_GEMM", False)   # the AVX2 kernels' rule
    path = tmp_path / "w.json"
    assert bw.main(["--layers", "4x6x8", "256x256x24", "--repeats", "2",
                    "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["layer"] for r in rows] == ["4x6x8", "256x256x24"]
    assert [r["rule"] for r in rows] == ["direct", "winograd"]
    for r in rows:
        assert r["winograd_ms"] > 0 and r["direct_ms"] > 0 and r["torch_ms"] > 0
        assert r["winograd_err"] <= 1e-4 and r["direct_err"] <= 1e-4
        assert np.isfinite(r["wino/direct"])
    real = bw.conv2d
    monkeypatch.setattr(bw, "conv2d", lambda *a: real(*a) * (
        1.01 if bw.conv_module.CPU_WINOGRAD_MIN_CHANNELS == 1 else 1.0))
    assert bw.main(["--layers", "4x6x8", "--repeats", "1", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    failed = [r for r in rows if r.get("impl") == "winograd"]
    assert failed and "FAILED validation" in failed[0]["note"]
    assert "winograd_ms" not in rows[-1] and rows[-1]["direct_ms"] > 0
    assert "FAILED validation" in capsys.readouterr().out


def test_conv2d_benchmark_validates_then_times_and_refuses_a_wrong_path(monkeypatch):
    import torch
    import benchmarks.conv2d as bc
    layer = ("conv2_1", (2, 4, 8, 8), (6, 4, 3, 3), (1, 1))
    rows = {r["impl"]: r for r in bc.run_layer(layer, "cpu", Timer("cpu"), 2, torch)}
    assert set(rows) == {"torch", "minifcn auto", "minifcn im2col"}
    assert all(np.isfinite(r["fwd_ms"]) and np.isfinite(r["bwd_ms"]) for r in rows.values())
    assert rows["minifcn auto"]["max_rel_err"] <= 1e-4
    total = {r["impl"]: r for r in bc.totals(list(rows.values()))}
    assert total["minifcn auto"]["fwd_ms"] == pytest.approx(rows["minifcn auto"]["fwd_ms"])
    real = bc.conv2d_backward

    def broken(*args, **kw):                 # the im2col path's weight gradient is off
        dx, dw, db = real(*args, **kw)
        return (dx, dw * 1.01, db) if bc.conv_module.CPU_SHIFTED_CONV2D_MAX_CHANNELS == 0 \
            else (dx, dw, db)
    monkeypatch.setattr(bc, "conv2d_backward", broken)
    rows = {r["impl"]: r for r in bc.run_layer(layer, "cpu", Timer("cpu"), 2, torch)}
    assert "FAILED validation" in rows["minifcn im2col"]["note"]
    assert "fwd_ms" not in rows["minifcn im2col"]
    assert np.isfinite(rows["minifcn auto"]["fwd_ms"])
    totals = {r["impl"] for r in bc.totals(list(rows.values()))}
    assert totals == {"torch", "minifcn auto"}          # no total for a path that failed


_FAULTS = """
import resource, sys, numpy as np
sys.path.insert(0, {root!r})
if {fixed}:
    from benchmarks.common import fix_malloc_thresholds
    print(fix_malloc_thresholds())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(2):
    before = faults()
    a = np.ones(20 << 18, np.float32)          # 20 MB, every page touched
    del a
print(faults() - before)                       # the second allocation's page faults
"""


def test_fixed_malloc_thresholds_keep_large_blocks_for_reuse():
    """With the harness's thresholds, a freed 20 MB array's memory is reused by the next
    one (few page faults); with glibc's defaults the second one faults its pages in again
    (the moving threshold has only just risen). So ops that allocate large outputs are
    timed without page faults of memory the process already had, whatever ran before.
    Each case runs in a fresh interpreter (the thresholds stay fixed for a process)."""
    import os
    import platform
    import subprocess
    import sys
    if platform.libc_ver()[0] != "glibc" or sys.maxsize < 2**32:
        pytest.skip("needs 64-bit glibc")
    root = os.path.dirname(os.path.dirname(os.path.abspath(common.__file__)))

    def second_faults(fixed):
        code = _FAULTS.format(root=root, fixed=fixed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split("\n")
        if fixed:
            assert "mmap threshold 32 MB and trim threshold 64 MB" in out[0]
        return int(out[-2])
    default = second_faults(False)
    if default < 100:      # the premise: with glibc's defaults the pages fault in again
        pytest.skip(f"glibc's defaults faulted only {default} pages in here (huge pages or "
                    "malloc tunables): nothing to compare")
    assert second_faults(True) < default / 10   # 20 MB: 5120 pages, or ~10 huge + the rest


def test_winograd_tiles_ranks_the_tiles_as_results_says(tmp_path, capsys):
    """The package's tiles stay within the 3x of the direct sum's float32 error that the
    tests allow; every larger tile for k = 2s, and F(4x4, 3x3), does not."""
    import json

    from benchmarks import winograd_tiles
    out = tmp_path / "tiles.json"
    assert winograd_tiles.main(["--channels", "128", "--windows", "40", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert "error_ratio" in capsys.readouterr().out
    ours = [r for r in rows if r["matrices"] == "minifcn"]
    larger = [r for r in rows if r["matrices"] != "minifcn" and r["fewer_mults"] > 2.25]
    assert {r["tile"] for r in ours} == {"F(2x2, 3x3)", "F(3x3, 2x2)"}
    assert all(r["error_ratio"] < 3 for r in ours)
    assert larger and all(r["error_ratio"] > 3 for r in larger)
    assert all(r["direct_rms"] > 0 for r in rows)


def test_gpu_session_script_fits_one_device_call():
    """benchmarks/gpu_session.sh runs on a lent GPU, where a command may run 10 minutes
    and the whole session has 15 with the machine's start: it must parse, and its steps'
    limits (each stopped at its own, 10 s grace to die) must stay under the 10 minutes
    either way (SWEEP=1 swaps the layer-by-layer step for the sweep) and leave the
    start room by default."""
    import re
    import shutil
    import subprocess
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_session.sh"
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(path)], check=True)
    limits = {"default": [], "sweep": []}
    branch = None                                 # inside the SWEEP if: "sweep" / "default"
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith('if [ "${SWEEP'):
            branch = "sweep"
        elif line == "else" and branch:
            branch = "default"
        elif line == "fi":
            branch = None
        elif not line.startswith("#"):
            m = re.match(r"(?:run|timeout -s INT -k 10) (\d+) ", line)
            if m:
                for run in ([branch] if branch else ["default", "sweep"]):
                    limits[run].append(int(m.group(1)))
    with_grace = {run: sum(v) + 10 * len(v) for run, v in limits.items()}
    assert len(limits["default"]) >= 6        # tests, deconv, step, train, col2im, conv2d
    assert limits["sweep"] != limits["default"]
    assert with_grace["default"] <= 540 and with_grace["sweep"] <= 600, limits
