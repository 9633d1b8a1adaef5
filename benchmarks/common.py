"""What every benchmark here shares: timers, the machine's ceilings, tables and JSON.

Timing rules (benchmarks/RESULTS.md repeats them): warm up first (compilation, caches,
cuBLAS/cuDNN handles stay out of the numbers), then time each call on its own and report
the median of ``repeats`` calls. On the GPU the clock is a pair of CUDA events around the
call; on the CPU ``time.perf_counter``. minifcn and torch run in the same process on the
same inputs, **interleaved** (:meth:`Timer.rounds`: each round times every contender once,
in turn, each after the other contenders' worker threads have gone to sleep and after one
untimed call of its own), and a ratio is the median of the per-round ratios: on a shared
2-core machine the speed drifts by 20-50% over seconds, and a drift then hits both sides
of a ratio instead of whichever ran during it.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np

from minifcn import openblas_core
from minifcn.cli import int_at_least
from minifcn.evaluate import check_output_file


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device, command=None):
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": openblas_core.describe(), "cpu": cpu_name(),
            "cores": os.cpu_count()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if command:
        info["command"] = command
    if device == "cuda":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cupy.__version__
    return info


class Timer:
    """``Timer(device).median(fn, repeats, warmup)`` -> milliseconds."""

    def __init__(self, device):
        self.device = device
        self.busy_turns = 0     # turns timed while another thread still ran (see rounds)
        self.blind = False      # threads cannot be listed here: a fixed wait instead
        if device == "cuda":
            import cupy
            self.cupy = cupy

    def sync(self):
        if self.device == "cuda":
            self.cupy.cuda.Device().synchronize()
            try:
                import torch
                torch.cuda.synchronize()
            except Exception:
                pass

    def once(self, fn):
        if self.device == "cuda":
            start, stop = self.cupy.cuda.Event(), self.cupy.cuda.Event()
            self.sync()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            self.sync()
            return self.cupy.cuda.get_elapsed_time(start, stop)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def median(self, fn, repeats=10, warmup=2):
        for _ in range(warmup):
            fn()
        self.sync()
        return statistics.median(self.once(fn) for _ in range(repeats))

    def rounds(self, fns, repeats=10, warmup=2, rewarm_s=None):
        """``{name: fn}`` -> ``{name: [ms per round]}``: every round times each fn once,
        in turn (after ``warmup`` untimed rounds).

        On the CPU, before each fn's turn, the harness first waits until no other thread
        of the process is on a core (:func:`wait_for_idle_threads`), then runs the fn
        untimed (once, and again until ``rewarm_s``, 0.02 s by default, have passed),
        then once timed. Both steps matter on 2 cores. After NumPy's last GEMM,
        OpenBLAS's worker thread spins on the second core for about 0.13 s before it
        sleeps (2^28 cycles). A torch call inside that window shares a core with it and
        took 16-24 ms instead of 1 ms (a scheduler slice or three), which flattered every
        ratio against torch until the eleventh session. torch's OpenMP workers spin a
        few ms in turn. The untimed call then wakes the fn's own threads and warms the
        caches, as a library running alone would find them. On the GPU there are no such
        threads, and a spin would only queue launches (calls are asynchronous): one
        untimed call.

        A turn whose wait gave up (a thread of the process kept running for 0.5 s: some
        background work of its own) is still timed, but counted in ``busy_turns``, and
        the first one is reported on stderr: those timings may be off."""
        if rewarm_s is None:
            rewarm_s = 0.0 if self.device == "cuda" else 0.02
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        self.sync()
        times = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                idle = True if self.device == "cuda" else wait_for_idle_threads()
                if idle is False:
                    self.busy_turns += 1
                    if self.busy_turns == 1:
                        print(f"warning: other threads of this process still running "
                              f"(ids {busy_threads()}) before timing {name!r}: timings "
                              f"may be off (counted as busy_turns in the JSON)",
                              file=sys.stderr, flush=True)
                elif idle is None and not self.blind:
                    self.blind = True
                    print("note: this system does not list a process's threads "
                          "(/proc/self/task): each turn waits 0.5 s instead, for other "
                          "libraries' worker threads to sleep", file=sys.stderr, flush=True)
                start = time.perf_counter()
                fn()
                while time.perf_counter() - start < rewarm_s:
                    fn()
                self.sync()
                times[name].append(self.once(fn))
        return times


def busy_threads():
    """Native ids of this process's threads, other than the caller's, that the kernel
    lists as running (state R in ``/proc/self/task/<id>/stat``): worker threads that
    still spin after a parallel region. ``None`` where that cannot be read (not Linux)."""
    me = threading.get_native_id()
    try:
        ids = os.listdir("/proc/self/task")
    except OSError:
        return None
    busy = []
    for tid in ids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:                       # the thread ended while we looked
            continue
        state = stat[stat.rindex(")") + 2]    # the name, in parentheses, may hold spaces
        if state == "R" and int(tid) != me:
            busy.append(int(tid))
    return busy


def wait_for_idle_threads(limit_s=0.5, poll_s=0.002):
    """Sleep until :func:`busy_threads` finds none, ``limit_s`` at most (a thread that is
    really working would otherwise hold the harness forever). Returns True if the
    threads went idle; where threads cannot be listed, sleeps ``limit_s`` (longer than
    OpenBLAS's spin) and returns None."""
    deadline = time.perf_counter() + limit_s
    while True:
        busy = busy_threads()
        if busy is None:
            time.sleep(limit_s)
            return None
        if not busy:
            return True
        if time.perf_counter() > deadline:
            return False
        time.sleep(poll_s)


MMAP_THRESHOLD = 32 << 20    # glibc's malloc: blocks up to this size come from its heap
TRIM_THRESHOLD = 64 << 20    # ... which it keeps until this much is free at its top
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # mallopt's parameter numbers (malloc.h)


def fix_malloc_thresholds():
    """Fix glibc malloc's thresholds for the rest of the process; returns a line for the
    record, or None where the C library is not glibc or refuses the values.

    By default glibc maps every block above its *mmap threshold* fresh from the kernel and
    unmaps it when freed, so each call that allocates a large array pays its page faults
    again; but the threshold *moves*: freeing a mapped block up to 32 MB raises it to that
    size. So a large op's time depended on what the process had freed before: torch's
    256->128 transposed convolution (16 MB output) took 36-40 ms in a fresh process and
    22-24 ms after a 30 MB array had been freed; minifcn's own moved less (39-45 ms). Here
    both thresholds are set to what the moving rule reaches in a long-running process
    (32 MB, and twice that for trimming), the same for every row and contender, so
    repeated runs measure the same thing. That is torch's faster state: its outputs then
    reuse memory without page faults."""
    import ctypes
    import ctypes.util
    try:
        # find_library may return None; CDLL(None) is then the process's own symbols,
        # which include the C library's on Linux
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        version = libc.gnu_get_libc_version
    except (OSError, TypeError, AttributeError):       # not glibc (musl, macOS, Windows)
        return None
    version.restype = ctypes.c_char_p
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if not (mmap_set and trim_set):                    # e.g. 32-bit glibc: 32 MB too large
        return (f"glibc {version().decode()} malloc refused the harness's thresholds "
                f"(mmap {'set' if mmap_set else 'refused'}, trim "
                f"{'set' if trim_set else 'refused'}): glibc's moving defaults")
    return (f"glibc {version().decode()} malloc, mmap threshold {MMAP_THRESHOLD >> 20} MB "
            f"and trim threshold {TRIM_THRESHOLD >> 20} MB, fixed by the harness")


def require_device(parser, device, hint=None):
    """Stop a benchmark CLI with a usage error (exit 2, no traceback) when ``device`` is
    'cuda' and this machine has no usable GPU, saying why (and ``hint``, what to run
    instead, if given)."""
    if device == "cuda":
        from minifcn.backend import require_gpu
        try:
            require_gpu()
        except RuntimeError as e:
            parser.error(str(e) if hint is None else f"{e} {hint}")


def start(parser, argv, name):
    """What every benchmark does before it measures: parse ``argv``, refuse a device this
    machine lacks, check the ``--json`` path. Returns ``(args, torch set up for the device
    (:func:`torch_for`), a Timer, the machine's description with the command)``."""
    args = parser.parse_args(argv)
    require_device(parser, args.device)
    args.json = json_path(parser, args, name)
    info = machine(args.device, command_line(f"benchmarks.{name}", argv))
    if args.device == "cpu" and openblas_core.held_back():
        print(f"note: NumPy's BLAS: {info['blas']}. minifcn's GEMM-bound times and ratios "
              "here are for those kernels.", file=sys.stderr)
    info["malloc"] = fix_malloc_thresholds()
    return args, torch_for(args.device), Timer(args.device), info


def torch_for(device):
    """torch, set up for a fair comparison on ``device``: on the GPU cuDNN on, its
    autotuner on, and TF32 off (float32 against float32)."""
    import torch
    if device == "cuda":
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch


def paired_ratio(ours, theirs):
    """Median over rounds of ``ours[i] / theirs[i]`` (lists from :meth:`Timer.rounds`)."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def ceilings(device, timer, torch=None, sizes=None):
    """Measured, not datasheet: a large copy (GB/s counting bytes read + written) and a
    large float32 matrix product (GFLOP/s) through the library minifcn itself uses.

    With ``torch``, the same product through torch too (MKL / oneDNN on the CPU, cuBLAS on
    the GPU), timed interleaved with minifcn's: ``matmul_ratio`` (minifcn's library /
    torch's) is how far a GEMM-bound row can get from torch on this machine.
    ``sizes``: ``(copy elements, matrix side)`` instead of the defaults (for tests)."""
    if device == "cuda":
        import cupy as xp
        n_copy, n_mm = 1 << 28, 8192
    else:
        xp = np
        n_copy, n_mm = 1 << 25, 2048
    if sizes is not None:
        n_copy, n_mm = sizes
    copy_ms = _copy_ms(xp, n_copy, timer)          # its buffers freed before the matmul
    rng = np.random.default_rng(0)
    m = xp.asarray(rng.standard_normal((n_mm, n_mm), dtype=np.float32))
    flop = 2 * n_mm ** 3 / 1e6
    if torch is None:
        mm_ms = timer.median(lambda: m @ m, repeats=5)
        return {"copy_GBps": 2 * n_copy * 4 / copy_ms / 1e6, "matmul_GFLOPs": flop / mm_ms}
    mt = torch.as_tensor(m, device="cuda" if device == "cuda" else "cpu")
    times = timer.rounds({"ours": lambda: m @ m, "torch": lambda: mt @ mt}, repeats=5)
    return {"copy_GBps": 2 * n_copy * 4 / copy_ms / 1e6,
            "matmul_GFLOPs": flop / statistics.median(times["ours"]),
            "torch_matmul_GFLOPs": flop / statistics.median(times["torch"]),
            "matmul_ratio": paired_ratio(times["ours"], times["torch"])}


def _copy_ms(xp, n, timer):
    """Median ms of copying ``n`` float32 values from one array to another."""
    a = xp.ones(n, dtype=np.float32)
    b = xp.empty_like(a)
    return timer.median(lambda: xp.copyto(b, a), repeats=10)


VALIDATION_TOL = 1e-4     # float32 results against torch: the largest relative error allowed


def rel_error(got, ref):
    """max |got - ref| / max |ref|; ``inf`` where ``got`` (NumPy or CuPy) has another shape
    or any value that is not finite (a NaN would compare as 'not above the tolerance' and
    pass)."""
    got = got.get() if hasattr(got, "get") else got             # a CuPy array: to the host
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)) if ref.size else 0.0


def validated(errors, tol=VALIDATION_TOL):
    """Every error within ``tol`` (and a number: NaN fails)."""
    return all(e <= tol for e in errors)


# -- command-line arguments, checked before anything is measured ------------------------------

positive_int = int_at_least(1, "a positive int")          # argparse types
non_negative_int = int_at_least(0, "an int >= 0")


def check_json_path(parser, path, flag="--json"):
    """Stop with a usage error now, not after minutes of measuring, when the JSON cannot be
    written at ``path`` (:func:`minifcn.evaluate.check_output_file`'s checks), or at
    ``path + '.partial'``, where a run writes until it completes (:func:`write_json`)."""
    if path:
        try:
            check_output_file(path, flag)
            for extra in (f"{path}.partial", f"{path}.partial.tmp"):
                if os.path.lexists(extra) and not os.path.isfile(extra):
                    raise ValueError(f"{flag} {path}: {extra}, where the run writes first, is "
                                     "in the way (not a file)")
        except ValueError as e:
            parser.error(str(e))


def add_json_flag(parser, name):
    """``--json PATH``; without it ``<name>_<device>.json`` in the current folder
    (:func:`json_path`), and ``--json ''`` writes none."""
    parser.add_argument("--json", metavar="PATH",
                        help=f"write the results here, as they come (default: {name}_<device>.json "
                             "in the current folder; '' for none)")


def json_path(parser, args, name):
    """The ``--json`` path the run writes (see :func:`add_json_flag`), checked now."""
    path = f"{name}_{args.device}.json" if args.json is None else args.json
    check_json_path(parser, path)
    return path


def command_line(prog, argv):
    """How the benchmark was run, for the JSON (``argv`` None: this process's)."""
    import shlex
    import sys
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return " ".join(["python -m", prog, *map(shlex.quote, args)])


def table(rows, columns):
    """Plain-text table of dict rows."""
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    out = ["  ".join(c.rjust(widths[c]) for c in columns),
           "  ".join("-" * widths[c] for c in columns)]
    out += ["  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns) for r in rows]
    return "\n".join(out)


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_json(path, payload, quiet=False):
    """Write ``payload`` to ``path`` (if given) atomically: a run cut short mid-write keeps
    the previous version, not half a file. A run still going (``payload["complete"]`` is
    False) writes to ``path + '.partial'`` instead: a run cut short keeps what it measured
    there and never replaces a finished run's file at ``path``; the complete payload goes
    to ``path`` and removes the partial file. A failed write is an error naming the file."""
    if not path:
        return
    target = f"{path}.partial" if payload.get("complete") is False else path
    tmp = f"{target}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, target)
        if target == path and os.path.exists(f"{path}.partial"):
            os.remove(f"{path}.partial")
    except OSError as e:
        raise OSError(f"--json {path}: cannot write {e.filename or target} ({e.strerror})") from None
    if not quiet:
        print(f"wrote {target}")
