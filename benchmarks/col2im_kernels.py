"""col2im kernel variants, validated then timed, on the FCN's transposed-convolution shapes.

    python -m benchmarks.col2im_kernels --device cuda         # writes col2im_kernels_cuda.json
    python -m benchmarks.col2im_kernels --device emulate      # CPU: validate the CUDA source only
    python -m benchmarks.col2im_kernels --device cpu          # the NumPy strategies vs torch's fold

The variants live in ``benchmarks/kernels/col2im_v*.cu``, numbered in the order they were
tried (the way llm.c develops its CUDA kernels):

- v1 scatter: one thread per col entry, ``atomicAdd`` into a zeroed image;
- v2 gather: one thread per pixel, only the taps of its stride phase (package, dilation > 1);
- v3 gather in stride-phase order: a warp shares one phase, so col reads coalesce (package,
  stride > 8);
- v4 gather, one thread per stride block of a row (sw pixels each) (package, stride <= 8);
- v5 v3's reads, then a transpose through shared memory so the writes coalesce too.

Every variant is checked against the NumPy reference (``minifcn.functional.col2im``) on the
very arrays it is about to be timed on, and one that fails is reported and not timed.
Timing: CUDA events around each call, after warm-up; the median of ``--repeats`` calls.
GB/s counts the bytes an ideal col2im must move — read col once, write the image once —
the same for every variant, so the column compares speed, not traffic.
With torch on the GPU, ``torch.nn.functional.fold`` (ATen's col2im) is timed beside them.

On the CPU (``--device cpu``) the same is done for the package's NumPy col2im strategies
(``minifcn.functional.col2im``'s ``method``): ``'taps'`` (one strided add per kernel tap)
and ``'blocks'`` (the taps grouped by stride block), plus ``'auto'`` (the package's pick),
beside ``torch.nn.functional.fold`` on the CPU. Their reference is torch's fold in float64
(independent of the code under test); the contenders are timed interleaved, round by
round, and the ratio to fold is the median of the per-round ratios
(``benchmarks/common.py``).

The shapes are those of FCN's upsampling layers, seen as col2im: a transposed convolution
``C_in -> C_out`` with kernel k, stride s, padding p on an ``H x W`` input computes
``col = W^T @ x`` of shape ``(N, C_out, k, k, H, W)`` and col2im's it onto the
``(H - 1)*s - 2p + k`` square output.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minifcn import openblas_core
from minifcn.cli import run_main
from minifcn.functional.im2col import _col2im, conv_output_size

from .common import (Timer, add_json_flag, command_line, fix_malloc_thresholds, json_path,
                     machine, non_negative_int, paired_ratio, positive_int, rel_error,
                     require_device, validated, write_json)

KERNELS = Path(__file__).resolve().parent / "kernels"


# -- the variants ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    number: int
    name: str
    source: str
    dilation1_only: bool = False

    def kernel(self, rt, dtype):
        sfx = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]
        entry = {2: "col2im", 3: "col2im_phase", 4: "col2im_rowblock"}.get(   # the package's
            self.number, f"col2im_v{self.number}")
        return rt.function(KERNELS / self.source, f"{entry}_{sfx}")

    def threads(self, n, c, h, w, kh, kw, s, p, ho, wo):
        """How many threads the variant wants (sizes its grid; grid-stride loops do the rest)."""
        qw = (w + p + s - 1) // s                   # stride blocks covering a padded row
        tiles = n * c * h * -(-qw // 32)            # v5: one block of 256 per 32-block tile
        return {1: n * c * kh * kw * ho * wo, 2: n * c * h * w,
                3: n * c * h * s * qw, 4: n * c * h * qw, 5: tiles * 256}[self.number]

    def __call__(self, rt, col, h, w, s, p, out=None):
        """col2im of ``col`` onto an (h, w) image, stride s, padding p (dilation 1)."""
        n, c, kh, kw, ho, wo = col.shape
        if self.number == 5 and s > 64:
            raise ValueError("v5 sizes its shared tile for strides up to 64")
        xp = rt.xp
        if out is None:
            out = xp.empty((n, c, h, w), dtype=col.dtype)
        if self.number == 1:
            out.fill(0)                             # the scatter adds into a zeroed image
        i32 = np.int32
        geometry = [i32(kh), i32(kw), i32(s), i32(s), i32(p), i32(p)]
        if not self.dilation1_only:
            geometry += [i32(1), i32(1)]
        args = (col, out, np.int64(n * c), i32(h), i32(w), *geometry, i32(ho), i32(wo))
        grid, block = rt.launch_config(self.threads(n, c, h, w, kh, kw, s, p, ho, wo))
        self.kernel(rt, col.dtype)(grid, block, args)
        return out


VARIANTS = {v.number: v for v in [
    Variant(1, "scatter + atomicAdd", "col2im_v1.cu"),
    Variant(2, "gather per pixel (package, dilation > 1)", "col2im_v2.cu"),
    Variant(3, "gather, stride-phase order (package, s > 8)", "col2im_v3.cu", dilation1_only=True),
    Variant(4, "gather, row block per thread (package, s <= 8)", "col2im_v4.cu", dilation1_only=True),
    Variant(5, "v3 + shared-memory transpose", "col2im_v5.cu", dilation1_only=True),
]}


# -- the shapes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    c: int          # C_out: the channels col2im works on
    k: int
    s: int
    p: int
    hin: int        # the transposed convolution's input size = col2im's window count

    @property
    def hout(self):
        return (self.hin - 1) * self.s - 2 * self.p + self.k

    def col_shape(self):
        return (self.n, self.c, self.k, self.k, self.hin, self.hin)

    def check(self):
        assert conv_output_size(self.hout, self.k, self.s, self.p) == self.hin, self


FCN_SHAPES = [
    Shape("fcn32s 21ch k64 s32 p16 16x16", 1, 21, 64, 32, 16, 16),
    Shape("fcn32s 21ch k64 s32 p16 32x32", 1, 21, 64, 32, 16, 32),
    Shape("upscore2 21ch k4 s2 p0 16x16", 1, 21, 4, 2, 0, 16),
    Shape("upscore2 21ch k4 s2 p1 16x16", 1, 21, 4, 2, 1, 16),
    Shape("upscore8 21ch k16 s8 p4 64x64", 1, 21, 16, 8, 4, 64),
    Shape("128ch k4 s2 p1 batch8 32x32", 8, 128, 4, 2, 1, 32),
    # The same layers through conv_transpose2d's default 'subpixel' algorithm: a GEMM does the
    # overlap sums, then col2im with kernel = stride only shuffles (windows do not overlap).
    Shape("shuffle fcn32s 21ch k32 s32 p16 17x17", 1, 21, 32, 32, 16, 17),
    Shape("shuffle upscore2 21ch k2 s2 p1 17x17", 1, 21, 2, 2, 1, 17),
    Shape("shuffle upscore8 21ch k8 s8 p4 65x65", 1, 21, 8, 8, 4, 65),
    Shape("shuffle 128ch k2 s2 p1 batch8 33x33", 8, 128, 2, 2, 1, 33),
]

# Small shapes for validating through the CPU emulator (and first, on the GPU).
SMALL_SHAPES = [
    Shape("small k64 s32 p16 2x2", 1, 2, 64, 32, 16, 2),
    Shape("small k4 s2 p0 5x5", 2, 3, 4, 2, 0, 5),
    Shape("small k4 s2 p1 5x5", 1, 3, 4, 2, 1, 5),
    Shape("small k16 s8 p4 4x4", 1, 2, 16, 8, 4, 4),
    Shape("small k3 s2 p1 4x4", 1, 2, 3, 2, 1, 4),     # stride does not divide the kernel
    Shape("small k2 s3 p0 4x4", 1, 2, 2, 3, 0, 4),     # stride > kernel: gaps
    Shape("small k5 s1 p2 3x3", 2, 2, 5, 1, 2, 3),
    Shape("small shuffle k8 s8 p4 5x5", 1, 3, 8, 8, 4, 5),
]


def reference(col_np, shape):
    return _col2im(col_np, shape.hout, shape.hout, shape.s, shape.s, shape.p, shape.p, 1, 1)


def validate(rt, variant, shape, dtype=np.float32, seed=0, col_np=None, ref=None):
    """(ok, max relative error) of one variant on one shape against NumPy."""
    if col_np is None:
        col_np = np.random.default_rng(seed).standard_normal(shape.col_shape()).astype(dtype)
    if ref is None:
        ref = reference(col_np, shape)
    got = variant(rt, rt.xp.asarray(col_np), shape.hout, shape.hout, shape.s, shape.p)
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    err = float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1.0))
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    return err <= tol, err


# -- timing ---------------------------------------------------------------------------------------

def time_cuda(fn, warmup, repeats):
    """Median milliseconds of ``fn()`` by CUDA events on CuPy's current stream."""
    import cupy
    for _ in range(warmup):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def torch_fold(shape):
    """torch.nn.functional.fold (ATen's col2im) on the GPU, or None without CUDA torch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    import torch.nn.functional as TF

    def run(col):
        n, c, k, _, hin, _ = col.shape
        t = torch.from_dlpack(col).reshape(n, c * k * k, hin * hin)
        return TF.fold(t, (shape.hout, shape.hout), k, stride=shape.s, padding=shape.p)
    return run


def to_numpy(a):
    """A NumPy, CuPy or torch array as NumPy."""
    if type(a).__module__.split(".")[0] == "torch":
        return a.detach().cpu().numpy()
    return a.get() if hasattr(a, "get") else np.asarray(a)


def measure(shape_name, candidates, ref, timer, tol, nbytes, poison=None):
    """Validate each candidate ``(label, name, fn)`` against ``ref``; time only those that
    pass. Returns one row per candidate; a failed one has no 'ms'. ``poison()``, if given,
    runs before each validation call: it fills the output buffer the candidates share with
    NaN, so that a kernel that leaves pixels unwritten cannot pass on the values an
    earlier candidate wrote there."""
    rows = []
    scale = max(float(np.abs(ref).max()), 1.0)
    for label, name, fn in candidates:
        if poison is not None:
            poison()
        got = to_numpy(fn())
        err = (float(np.abs(got.astype(np.float64) - ref).max()) / scale
               if got.shape == ref.shape else float("inf"))
        if not np.isfinite(err):            # NaN (an unwritten pixel) must not pass as <= tol
            err = float("inf")
        row = dict(shape=shape_name, variant=label, name=name, bytes=nbytes,
                   max_rel_error=err, valid=bool(err <= tol))
        if row["valid"]:
            ms = timer(fn)
            row.update(ms=ms, gbps=nbytes / ms / 1e6)
        rows.append(row)
    return rows


def run_cuda(args, variants, shapes, save):
    import cupy
    from minifcn.kernels.runtime import CupyRuntime
    rt = CupyRuntime()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    dtype = np.dtype(args.dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    print(f"device: {device}; CuPy {cupy.__version__}; {dtype.name}; "
          f"median of {args.repeats} after {args.warmup} warm-up calls")

    # small shapes first: a variant wrong there is not timed anywhere
    broken = set()
    for v in variants:
        for shape in SMALL_SHAPES:
            ok, err = validate(rt, v, shape, dtype)
            if not ok:
                broken.add(v.number)
                print(f"  v{v.number} FAILED validation on {shape.name}: rel. error {err:.2e}")

    def timer(fn):
        return time_cuda(fn, args.warmup, args.repeats)

    rows = []
    for shape in shapes:
        shape.check()
        col_np = np.random.default_rng(1).standard_normal(shape.col_shape()).astype(dtype)
        ref = reference(col_np, shape)
        col = cupy.asarray(col_np)
        out = cupy.empty((shape.n, shape.c, shape.hout, shape.hout), dtype=dtype)
        candidates = [(f"v{v.number}", v.name,
                       lambda v=v: v(rt, col, shape.hout, shape.hout, shape.s, shape.p, out))
                      for v in variants if v.number not in broken]
        fold = torch_fold(shape) if args.torch else None
        if fold is not None:
            candidates.append(("torch", "torch.nn.functional.fold", lambda: fold(col)))
        shape_rows = measure(shape.name, candidates, ref, timer, tol, col.nbytes + out.nbytes,
                             poison=lambda: out.fill(np.nan))
        shape_rows += [dict(shape=shape.name, variant=f"v{n}", name=VARIANTS[n].name,
                            valid=False, max_rel_error=None) for n in sorted(broken)]
        for row in shape_rows:
            row.update(dtype=dtype.name, col_shape=list(shape.col_shape()),
                       image=[shape.hout, shape.hout])
        rows += shape_rows
        col = out = None                    # the next shape's arrays replace these
        cupy.get_default_memory_pool().free_all_blocks()
        save(dict(device=device, cupy=cupy.__version__, rows=rows, complete=False))  # as it goes
    print_table(rows)
    return dict(device=device, cupy=cupy.__version__, rows=rows), all(r["valid"] for r in rows)


def run_emulate(args, variants):
    from tests.cuda_emu import EmulatedRuntime, compiler_available
    if not compiler_available():
        raise SystemExit("the CPU emulator needs g++ (or CXX set to a C++17 compiler)")
    rows = []
    for launch in (None, ((3,), (37,))):
        rt = EmulatedRuntime(launch)
        for shape in SMALL_SHAPES:
            shape.check()
            for v in variants:
                for dtype in (np.float32, np.float64):
                    ok, err = validate(rt, v, shape, dtype)
                    rows.append(dict(shape=shape.name, variant=f"v{v.number}", name=v.name,
                                     dtype=np.dtype(dtype).name,
                                     launch="auto" if launch is None else str(launch),
                                     valid=ok, max_rel_error=err))
    width = max(len(r["shape"]) for r in rows)
    print(f"{'shape':{width}}  variant  dtype    launch            valid  max rel. error")
    for r in rows:
        print(f"{r['shape']:{width}}  {r['variant']:7}  {r['dtype']:7}  {r['launch']:16}  "
              f"{'yes' if r['valid'] else 'NO':5}  {r['max_rel_error']:.1e}")
    bad = [r for r in rows if not r["valid"]]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} validations passed (CPU emulation of the "
          f"CUDA source). Timings need a GPU: run with --device cuda.")
    return dict(device="emulate", rows=rows), not bad


CPU_METHODS = ("taps", "blocks", "phases", "auto")


def run_cpu(args, shapes, save):
    """The NumPy col2im strategies against torch's fold on the CPU: validated against fold
    in float64, then timed interleaved (:meth:`benchmarks.common.Timer.rounds`)."""
    import torch
    import torch.nn.functional as TF
    from minifcn.functional.im2col import col2im
    dtype = np.dtype(args.dtype)
    timer = Timer("cpu")
    print(f"CPU: {machine('cpu')['cpu']}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads); {dtype.name}; median of {args.repeats} interleaved rounds")
    rows = []
    for shape in shapes:
        shape.check()
        n, c, k, _, hin, _ = shape.col_shape()
        col_np = np.random.default_rng(1).standard_normal(shape.col_shape()).astype(dtype)
        col_t = torch.from_numpy(col_np).reshape(n, c * k * k, hin * hin)

        def fold(t=col_t):
            return TF.fold(t, (shape.hout, shape.hout), k, stride=shape.s, padding=shape.p)
        ref = fold(col_t.double()).numpy()                     # the independent reference
        contenders = {f"numpy {m}": (lambda m=m: col2im(col_np, (shape.hout, shape.hout),
                                                        shape.s, shape.p, method=m))
                      for m in CPU_METHODS}
        contenders["torch fold"] = fold
        nbytes = col_np.nbytes + n * c * shape.hout ** 2 * dtype.itemsize
        shape_rows, timed = [], {}
        for label, fn in contenders.items():
            err = rel_error(to_numpy(fn()), ref)
            row = dict(shape=shape.name, variant=label, bytes=nbytes, max_rel_error=err,
                       valid=validated([err], 1e-5 if dtype == np.float32 else 1e-12))
            if row["valid"]:
                timed[label] = fn
            shape_rows.append(row)
        times = timer.rounds(timed, args.repeats, warmup=args.warmup) if timed else {}
        for row in shape_rows:
            if row["variant"] in times:
                ms = float(np.median(times[row["variant"]]))
                row.update(ms=ms, gbps=nbytes / ms / 1e6)
                if "torch fold" in times and row["variant"] != "torch fold":
                    row["vs_fold"] = paired_ratio(times[row["variant"]], times["torch fold"])
            row.update(dtype=dtype.name, col_shape=list(shape.col_shape()),
                       image=[shape.hout, shape.hout])
        rows += shape_rows
        print(f"[{len(rows) // len(contenders)}/{len(shapes)}] {shape.name}: " + ", ".join(
            f"{r['variant']} {r['ms']:.3g} ms" if "ms" in r else f"{r['variant']} FAILED"
            for r in shape_rows), flush=True)
        save(dict(device="cpu", rows=rows, complete=False, busy_turns=timer.busy_turns))
    print_table(rows, base_variant="torch fold", base_label="vs fold")
    print("'vs fold': the median of per-round time ratios to torch.nn.functional.fold; "
          "'auto' (dilation 1): 'taps' at stride 1 or where windows do not overlap, "
          "'blocks' from stride 32 on small maps, else 'phases'")
    return (dict(device="cpu", rows=rows, busy_turns=timer.busy_turns),
            all(r["valid"] for r in rows))


def print_table(rows, base_variant="v2", base_label="vs v2"):
    width = max(len(r["shape"]) for r in rows)
    vw = max(7, *(len(r["variant"]) for r in rows))
    print(f"\n{'shape':{width}}  {'variant':{vw}}  {'ms':>9}  {'GB/s':>7}  {base_label:>7}  "
          f"{'rel. err':>8}")
    base = {r["shape"]: r.get("ms") for r in rows if r["variant"] == base_variant}
    for r in rows:
        if r.get("ms") is None:
            print(f"{r['shape']:{width}}  {r['variant']:{vw}}  {'FAILED validation, not timed':>36}")
            continue
        if "vs_fold" in r:
            ratio = f"{r['vs_fold']:.2f}x"
        else:
            ratio = f"{r['ms'] / base[r['shape']]:.2f}x" if base.get(r["shape"]) else "-"
        print(f"{r['shape']:{width}}  {r['variant']:{vw}}  {r['ms']:9.4f}  {r['gbps']:7.1f}  "
              f"{ratio:>7}  {r['max_rel_error']:8.1e}")
    print(f"GB/s: (col bytes + image bytes) / time; '{base_label}': time relative to "
          f"{base_variant}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.col2im_kernels",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "emulate", "cpu"], default="cuda",
                    help="cuda: validate and time the CUDA variants on the GPU; emulate: "
                         "validate them on the CPU; cpu: validate and time the NumPy strategies")
    ap.add_argument("--variants",
                    help="CUDA variants only: comma-separated numbers (default: all)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--warmup", type=non_negative_int,
                    help="untimed calls (GPU) or rounds (CPU) first (default: 10 on the GPU, "
                         "2 on the CPU)")
    ap.add_argument("--repeats", type=positive_int,
                    help="timed calls per variant (default: 100 on the GPU, 10 on the CPU)")
    ap.add_argument("--no-torch", dest="torch", action="store_false",
                    help="GPU only: do not time torch.nn.functional.fold beside the variants "
                         "(on the CPU fold is the reference, always run)")
    add_json_flag(ap, "col2im_kernels")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 10 if args.device == "cpu" else 100
    if args.warmup is None:
        args.warmup = 2 if args.device == "cpu" else 10
    if args.device == "cpu" and (args.variants is not None or not args.torch):
        ap.error("--variants and --no-torch choose among the CUDA variants; --device cpu "
                 "times the NumPy strategies against torch's fold")
    if args.variants is None:
        args.variants = ",".join(map(str, VARIANTS))
    try:
        variants = [VARIANTS[int(v)] for v in args.variants.split(",")]
    except (KeyError, ValueError):
        ap.error(f"--variants: choose from {sorted(VARIANTS)}, got {args.variants!r}")

    require_device(ap, args.device, hint="Here --device emulate validates the CUDA variants' "
                   "source on the CPU (g++); --device cpu times the NumPy strategies.")
    path = json_path(ap, args, "col2im_kernels")
    about = dict(command=command_line("benchmarks.col2im_kernels", argv),
                 date=datetime.datetime.now().isoformat(timespec="seconds"),
                 host=platform.node(), python=platform.python_version(), repeats=args.repeats)
    if args.device != "emulate":                      # (emulate validates, times nothing)
        about["malloc"] = fix_malloc_thresholds()
    if args.device == "cpu":
        about["blas"] = openblas_core.describe()      # (no GEMM here: for the record)

    def save(result, quiet=True):
        write_json(path, {**result, **about}, quiet=quiet)

    if args.device == "emulate":
        result, ok = run_emulate(args, variants)
    elif args.device == "cpu":
        result, ok = run_cpu(args, FCN_SHAPES, save)
    else:
        result, ok = run_cuda(args, variants, FCN_SHAPES, save)
    save({**result, "complete": True}, quiet=False)
    if not ok:
        print("some variant FAILED validation (see above): exit status 1")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
