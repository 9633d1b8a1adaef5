"""The benchmark harness itself: interleaved rounds, paired ratios, and refusing to time a
variant that fails validation (issue 6). Tiny shapes; no timing is asserted."""
from __future__ import annotations

import numpy as np

import benchmarks.deconv as deconv
from benchmarks.common import Timer, paired_ratio


def test_rounds_time_every_contender_once_per_round_in_turn():
    order = []
    times = Timer("cpu").rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                repeats=3, warmup=1, rewarm_s=0)
    # 1 warm-up round, then 3 rounds of (untimed call, timed call) per contender
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3]
    assert all(t >= 0 for v in times.values() for t in v)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # round 2 ran during a slowdown that hit both sides: the paired ratio ignores it,
    # while the ratio of medians (20/10 = 2) would not
    assert paired_ratio([10, 100, 12, 11, 9], [20, 200, 10, 22, 18]) == 0.5


SMALL = ("tiny k4s2", 1, 3, 2, 5, 4, 4, 2, 1)


def test_deconv_rows_validate_then_time_every_algorithm():
    import torch
    rows = deconv.run_shape(SMALL, "cpu", Timer("cpu"), 2, torch)
    impls = [r["impl"] for r in rows]
    assert impls == ["torch", "minifcn auto", "minifcn col2im", "minifcn subpixel", "minifcn fused"]
    for r in rows[1:]:
        assert r["max_rel_err"] <= 1e-4 and r["fwd_ratio"] > 0 and r["bwd_ratio"] > 0


def test_deconv_refuses_to_time_a_variant_that_fails_validation(monkeypatch):
    import torch
    real = deconv.conv_transpose2d

    def broken(x, w, b, s, p, algorithm="auto"):
        y = real(x, w, b, s, p, algorithm=algorithm)
        return y + 1 if algorithm == "col2im" else y     # one wrong variant

    monkeypatch.setattr(deconv, "conv_transpose2d", broken)
    rows = {r["impl"]: r for r in deconv.run_shape(SMALL, "cpu", Timer("cpu"), 2, torch)}
    bad = rows["minifcn col2im"]
    assert "FAILED validation" in bad["note"] and "fwd_ms" not in bad
    assert np.isfinite(rows["minifcn subpixel"]["fwd_ms"])
