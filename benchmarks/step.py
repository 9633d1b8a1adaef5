"""One training step of FCN-8s (VGG16, full width, the notes' geometry): minifcn vs torch.

    python -m benchmarks.step --device cpu                  # 224 and 320; writes step_cpu.json
    python -m benchmarks.step --device cuda --json step_cuda.json

A step is forward + softmax cross-entropy + backward + SGD (momentum 0.9), batch 1
(``--batch``), 21 classes, both
frameworks starting from the same weights (copied through the state dict), with the
bilinear upsamplers frozen in both, and no dropout in either (the torch network, the
tests' reference twin, has none; minifcn's FCN8s had its default 0.5 here until the
eighth session, 3 ms of ~900 at 224). Reported: median ms per step, the ratio
minifcn / torch (the two timed interleaved, step by step; the median of the per-round
ratios), and peak memory — on the GPU CuPy's pool (bytes handed out, tracked
by a memory hook) against ``torch.cuda.max_memory_allocated``; on the CPU the peak RSS of
a fresh subprocess that builds only that framework's network and runs two steps, less
its RSS before the network was built (the libraries imported alike by both, and started
on a tiny network first): weights, gradients, momentum buffers, activations and
workspace, as the GPU figures count them. The median of ``--memory-runs`` subprocesses.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import numpy as np

from minifcn.cli import positive_float, run_main

from .common import (add_json_flag, paired_ratio, positive_int, start, table,
                     write_json)


def _models(size, device, width, batch=1):
    """``(ours_step, torch_step)``: one training step of each, as closures."""
    return _steps(_build(size, device, width, batch=batch))


def _steps(b):
    """The two step closures over the parts ``b`` from :func:`_build`."""

    def ours_step():
        loss = b.crit.forward(b.ours.forward(b.x), b.y)
        b.ours.backward(b.crit.backward())
        b.opt.step()
        return loss

    def torch_step():
        b.topt.zero_grad(set_to_none=True)
        loss = b.torch.nn.functional.cross_entropy(b.ref(b.xt), b.yt, ignore_index=255)
        loss.backward()
        b.topt.step()
        return loss

    return ours_step, torch_step


def _build(size, device, width, frameworks=("minifcn", "torch"), batch=1):
    """The two networks with equal weights, their inputs, losses and optimizers (or only
    those of ``frameworks``; the parts of the other are None)."""
    import types

    import torch
    from minifcn.models import FCN8s
    from minifcn.nn import SoftmaxCrossEntropy
    from minifcn.optim import SGD
    from tests.test_models import TorchFCN

    ours = ref = crit = opt = topt = None
    if "minifcn" in frameworks:
        ours = FCN8s(num_classes=21, width=width, dropout=0.0)    # the torch twin has no dropout
        ours.need_input_grad = False
    if "torch" in frameworks:
        ref = TorchFCN("8s", "notes", 21, width)
        if ours is not None:
            ref.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    # random score layers, so that every layer gets a gradient (the zero init hides them)
    rng = np.random.default_rng(0)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        shape = (ours.params[f"{name}.weight"].shape if ours is not None
                 else tuple(getattr(ref, name).weight.shape))
        w = rng.standard_normal(shape).astype(np.float32) * 1e-2
        if ours is not None:
            ours.layers[name].params["weight"] = w
        if ref is not None:
            getattr(ref, name).weight.data = torch.tensor(w)
    tdev = "cuda" if device == "cuda" else "cpu"
    if ref is not None:
        for n, p in ref.named_parameters():
            if n.startswith("upscore"):
                p.requires_grad_(False)
        ref = ref.to(tdev).train()
        topt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], 1e-4, momentum=0.9)
    if ours is not None:
        ours.to(device).train()
        crit = SoftmaxCrossEntropy()
        opt = SGD(ours, 1e-4, momentum=0.9)
    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    y = rng.integers(0, 21, (batch, size, size))
    if device == "cuda":
        import cupy
        xd, yd = cupy.asarray(x), cupy.asarray(y)
    else:
        xd, yd = x, y
    xt = torch.tensor(x, device=tdev)
    yt = torch.tensor(y, device=tdev)
    return types.SimpleNamespace(ours=ours, crit=crit, opt=opt, x=xd, y=yd, torch=torch,
                                 ref=ref, topt=topt, xt=xt, yt=yt)


def _cpu_peak_rss(framework, size, width, runs=1, batch=1):
    """The median over ``runs`` fresh processes of: peak RSS (MB) over building
    ``framework``'s network alone and two steps of it, less the RSS before the build."""
    which = 0 if framework == "minifcn" else 1
    code = (f"import gc, benchmarks.step as s, minifcn.models, torch, tests.test_models\n"
            # the libraries' own lazy start-up (thread pools, torch's autograd engine and
            # oneDNN, OpenBLAS's buffers) on a tiny network first: not the step's memory
            f"w = s._build(32, 'cpu', 1 / 32, ({framework!r},)); g = s._steps(w)[{which}]\n"
            f"g(); g(); del w, g; gc.collect()\n"
            f"base = s._rss_kb('VmRSS')\n"
            f"open('/proc/self/clear_refs', 'w').write('5')\n"   # VmHWM from here
            f"b = s._build({size}, 'cpu', {width}, ({framework!r},), batch={batch})\n"
            f"f = s._steps(b)[{which}]\n"
            f"f(); f()\n"                              # the first makes the momentum buffers
            f"print((s._rss_kb('VmHWM') - base) / 1024)\n")
    values = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"the {framework} memory run failed:\n{out.stderr.strip()}")
        values.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(values)


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _gpu_peaks(ours_step, torch_step):
    import cupy
    import torch

    class Peak(cupy.cuda.MemoryHook):
        name = "PeakHook"

        def __init__(self):
            self.used = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.used += kw["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kw):
            self.used -= kw["mem_size"]

    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    base = pool.used_bytes()
    hook = Peak()
    with hook:
        ours_step()
        cupy.cuda.Device().synchronize()
    ours_mb = (base + hook.peak) / 2**20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch_step()
    torch.cuda.synchronize()
    return ours_mb, torch.cuda.max_memory_allocated() / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[224, 320],
                   help="input sizes (square), one row each (default: 224 320)")
    p.add_argument("--width", type=positive_float, default=1.0,
                   help="channel multiplier of the VGG16 backbone (default: 1, full width)")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="images per step (default: 1, as the FCN paper trains; "
                        "python -m minifcn.train's default run: --sizes 64 --width 0.125 --batch 16)")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="interleaved timed rounds per size (default: 5)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--without-winograd", action="store_true",
                   help="CPU: also time minifcn with Winograd turned off (the direct paths), "
                        "interleaved with the others: the speed-up in one process")
    p.add_argument("--memory-runs", type=positive_int, default=3,
                   help="CPU: fresh processes per framework and size for the peak memory (median)")
    add_json_flag(p, "step")
    args, _, timer, info = start(p, argv, "step")       # (torch: cuDNN's settings set)
    info["repeats"] = args.repeats
    rows = []
    direct = args.without_winograd and args.device == "cpu"
    columns = COLUMNS + (DIRECT_COLUMNS if direct else [])
    for i, size in enumerate(args.sizes):
        ours_step, torch_step = _models(size, args.device, args.width, args.batch)
        contenders = {"minifcn": ours_step, "torch": torch_step}
        if direct:
            contenders["direct"] = _without_winograd(ours_step)
        times = timer.rounds(contenders, args.repeats)
        row = {"size": f"{size}x{size}", "minifcn_ms": statistics.median(times["minifcn"]),
               "torch_ms": statistics.median(times["torch"]),
               "ratio": paired_ratio(times["minifcn"], times["torch"])}
        if direct:
            row.update(direct_ms=statistics.median(times["direct"]),
                       direct_ratio=paired_ratio(times["direct"], times["torch"]),
                       winograd_speedup=paired_ratio(times["direct"], times["minifcn"]))
        if not args.no_memory:
            if args.device == "cuda":
                m_ours, m_torch = _gpu_peaks(ours_step, torch_step)
            else:
                m_ours = _cpu_peak_rss("minifcn", size, args.width, args.memory_runs, args.batch)
                m_torch = _cpu_peak_rss("torch", size, args.width, args.memory_runs, args.batch)
            row.update(minifcn_peak_MB=m_ours, torch_peak_MB=m_torch, memory_ratio=m_ours / m_torch)
        rows.append(row)
        del ours_step, torch_step
        last = i + 1 == len(args.sizes)
        if not last:                       # as it goes: a run cut short keeps what it measured
            print(table([row], columns), flush=True)
        info["busy_turns"] = timer.busy_turns
        write_json(args.json, {"machine": info, "device": args.device, "width": args.width,
                               "batch": args.batch,
                               "rows": rows, "complete": last}, quiet=not last)
    print(f"FCN-8s step (width {args.width:g}, batch {args.batch}) on {info.get('gpu', info['cpu'])}")
    if args.device == "cpu":
        print(f"NumPy's BLAS: {info['blas']}")
    print(table(rows, columns))
    return 0


def _without_winograd(step):
    """``step`` with conv2d's Winograd rule switched off for its duration."""
    from .conv2d import winograd_rule

    def direct_step():
        with winograd_rule(False):
            return step()
    return direct_step


COLUMNS = ["size", "minifcn_ms", "torch_ms", "ratio", "minifcn_peak_MB", "torch_peak_MB",
           "memory_ratio"]
DIRECT_COLUMNS = ["direct_ms", "direct_ratio", "winograd_speedup"]


if __name__ == "__main__":
    sys.exit(run_main(main))
