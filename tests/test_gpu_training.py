"""Training on the GPU: the same run on CuPy and on NumPy starts from the same loss and
writes the same files; resume works on the GPU too. Skipped without a GPU."""
import csv

import pytest

from minifcn.train import main as train_main

pytestmark = pytest.mark.gpu

ARGS = ["--data", "synthetic", "--train-images", "16", "--val-images", "8", "--image-size", "32",
        "--width", "0.0625", "--batch-size", "4", "--val-every", "3", "--pictures", "2",
        "--no-progress"]


def _losses(run_dir):
    with open(run_dir / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_gpu_run_matches_cpu_run_at_the_start(tmp_path):
    """Six iterations of the same run on CuPy and on NumPy give the same losses. The first
    loss is ln 4 whatever the network computes (the score layers start at zero), so the
    run has no warm-up and an lr that moves the loss clearly (1.386 -> ~1.25 on the CPU,
    smoothly: a larger lr makes it chaotic, and float32 differences would then grow)."""
    args = ARGS + ["--iters", "6", "--warmup", "0", "--lr", "0.002"]
    assert train_main(args + ["--device", "cuda", "--out", str(tmp_path / "gpu")]) == 0
    assert train_main(args + ["--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    for name in ("config.json", "log.csv", "checkpoint.npz", "best.npz", "metrics.json",
                 "val_samples.png"):
        assert (tmp_path / "gpu" / name).is_file(), name
    gpu, cpu = _losses(tmp_path / "gpu"), _losses(tmp_path / "cpu")
    assert len(gpu) == len(cpu) == 6
    assert cpu[-1] < cpu[0] - 0.05                         # the losses carry information
    assert gpu == pytest.approx(cpu, rel=1e-3)


def test_gpu_resume_continues_the_log(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert train_main(ARGS + ["--schedule", "fixed", "--dropout", "0.5", "--iters", "6", "--device", "cuda", "--out", str(full)]) == 0
    assert train_main(ARGS + ["--schedule", "fixed", "--dropout", "0.5", "--iters", "3", "--device", "cuda", "--out", str(part)]) == 0
    assert train_main(["--resume", str(part), "--iters", "6", "--device", "cuda", "--no-progress"]) == 0
    assert _losses(part) == pytest.approx(_losses(full), rel=1e-5)
