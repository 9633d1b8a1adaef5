"""Where the GPU time of one FCN-8s training step goes (CUPTI, through torch.profiler,
which records every CUDA kernel in the process, CuPy's included).

    python -m benchmarks.profile_step --size 320
"""
from __future__ import annotations

import argparse
import sys
import time

from .step import _models


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    import cupy
    import torch
    from torch.profiler import ProfilerActivity, profile
    ours_step, torch_step = _models(args.size, "cuda", 1.0)
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
    print(f"size {args.size}: wall {wall:.2f} ms/step, GPU kernels {total:.2f} ms/step "
          f"(host loop {cpu_side:.2f} ms)")
    print(events.table(sort_by="device_time_total", row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(main())
