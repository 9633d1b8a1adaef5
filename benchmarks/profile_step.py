"""Where the time of one FCN-8s training step goes, minifcn beside torch.

    python -m benchmarks.profile_step --device cpu --size 320
    python -m benchmarks.profile_step --device cuda --size 320

CPU: minifcn's time per layer type and pass (forward, backward), taken with the graph's
own per-node hooks around the real step (the loss and the optimizer timed apart), beside
torch's CPU time per operator (``torch.profiler``, self time, so nothing is counted
twice). The two sides name things differently (a minifcn ``Conv2d`` backward is torch's
``aten::convolution_backward``), but the totals and the big rows line up.

CUDA: every GPU kernel of minifcn's step (CUPTI through ``torch.profiler``, which records
every CUDA kernel in the process, CuPy's included), against the step's wall time.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time

from minifcn import openblas_core
from minifcn.cli import run_main

from . import common
from .common import require_device, wait_for_idle_threads
from .step import _build, _models, _steps


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step",
                                description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="default: cpu, as the other benchmarks")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1, help="images per step (default: 1)")
    args = p.parse_args(argv)
    for name, value in (("--size", args.size), ("--steps", args.steps), ("--batch", args.batch)):
        if value < 1:
            p.error(f"{name} must be at least 1, got {value}")
    if not 0 < args.width < float("inf"):
        p.error(f"--width must be a positive finite number, got {args.width}")
    require_device(p, args.device)
    if args.device == "cuda":
        return _profile_cuda(args)
    return _profile_cpu(args)


def _profile_cpu(args):
    from torch.profiler import ProfilerActivity, profile
    common.fix_malloc_thresholds()                  # as the benchmarks time: see common
    print(f"NumPy's BLAS: {openblas_core.describe()}")
    b = _build(args.size, "cpu", args.width, batch=args.batch)
    times = collections.defaultdict(float)            # (pass, node name) -> seconds

    def timed_step():
        clock = [time.perf_counter()]
        previous = [None]

        def after_forward(name, _):                   # called as each node's output is ready
            now = time.perf_counter()
            times["forward", name] += now - clock[0]
            clock[0] = now

        def before_backward(name, _):                 # called as each node's gradient arrives
            now = time.perf_counter()
            if previous[0] is not None:               # the time since: the last node's backward
                times["backward", previous[0]] += now - clock[0]
            clock[0], previous[0] = now, name

        logits = b.ours.forward(b.x, hook=after_forward)
        start = time.perf_counter()
        b.crit.forward(logits, b.y)
        dy = b.crit.backward()
        times["loss", "softmax cross-entropy"] += time.perf_counter() - start
        clock[0] = time.perf_counter()
        b.ours.backward(dy, hook=before_backward)
        times["backward", previous[0]] += time.perf_counter() - clock[0]
        start = time.perf_counter()
        b.opt.step()
        times["optimizer", "SGD step"] += time.perf_counter() - start

    _, torch_step = _steps(b)

    for _ in range(2):                                # warm-up: buffers, first-call costs
        timed_step()
        torch_step()
    # each framework starts with the other's worker threads asleep (a spinning OpenBLAS
    # thread slowed torch's next few ms several-fold: common.Timer.rounds) and its own awake
    wait_for_idle_threads()
    timed_step()
    times.clear()
    for _ in range(args.steps):
        timed_step()
    wait_for_idle_threads()
    torch_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            torch_step()

    per_step = {key: t / args.steps * 1e3 for key, t in times.items()}
    by_kind = collections.defaultdict(float)
    for (phase, name), ms in per_step.items():
        layer = b.ours.layers.get(name)
        by_kind[phase, type(layer).__name__ if layer is not None else name] += ms
    ours_total = sum(per_step.values())
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    torch_total = sum(e.self_cpu_time_total for e in events) / args.steps / 1e3

    print(f"FCN-8s step at {args.size}x{args.size} (width {args.width:g}, batch {args.batch}), CPU, "
          f"mean of {args.steps} steps")
    print(f"minifcn {ours_total:.1f} ms per step, torch {torch_total:.1f} ms "
          f"(ratio {ours_total / torch_total:.2f})\n")
    print("minifcn, by layer type and pass                 ms   share")
    for (phase, kind), ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:10s} {kind:32s} {ms:8.1f}  {ms / ours_total:6.1%}")
    print("\nminifcn, the 12 slowest nodes                   ms")
    for (phase, name), ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {phase:10s} {name:32s} {ms:8.1f}")
    print("\ntorch, by operator (self CPU time)              ms   share   calls")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:14]:
        ms = e.self_cpu_time_total / args.steps / 1e3
        print(f"  {e.key[:43]:43s} {ms:8.1f}  {ms / torch_total:6.1%}  {e.count // args.steps:6d}")
    return 0


def _profile_cuda(args):
    import cupy
    from torch.profiler import ProfilerActivity, profile
    ours_step, _ = _models(args.size, "cuda", args.width, args.batch)
    for _ in range(3):
        ours_step()
    cupy.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        ours_step()
    cpu_side = (time.perf_counter() - t) / args.steps * 1e3   # includes the loss's syncs
    cupy.cuda.Device().synchronize()
    wall = (time.perf_counter() - t) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            ours_step()
        cupy.cuda.Device().synchronize()
    events = prof.key_averages()
    total = sum(e.device_time_total for e in events) / args.steps / 1e3
    print(f"size {args.size}, batch {args.batch}: wall {wall:.2f} ms/step, "
          f"GPU kernels {total:.2f} ms/step (host loop {cpu_side:.2f} ms)")
    print(events.table(sort_by="device_time_total", row_limit=22, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
