"""``python -m minifcn.train`` end to end, on tiny datasets the tests write themselves.

Most runs call ``minifcn.train.main`` in-process through ``run_main`` (what ``__main__``
does); a few go through a real ``python -m minifcn.train`` subprocess: ``--help``, an
unknown flag, a bad directory, a synthetic run, and a run killed with SIGKILL.
Every run is a few iterations of a width-1/32 network on 32x32..64x64 images.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minifcn import io
from minifcn.cli import run_main
from minifcn.data import BatchLoader, SyntheticShapes, save_mask_png
from minifcn.models import FCN8s
from minifcn.train import main as train_main
from minifcn.training import Run, TrainConfig, diagnose_nonfinite

REPO = Path(__file__).resolve().parents[1]
LOG_COLUMNS = ["iteration", "epoch", "loss", "lr", "it_per_s", "pixel_acc", "mean_acc",
               "mean_iou", "fw_iou"]
METRICS = ["pixel_acc", "mean_acc", "mean_iou", "fw_iou"]
TINY = ["--width", "0.03125", "--batch-size", "2", "--no-progress"]
SYN = ["--data", "synthetic", "--image-size", "32", "--train-images", "6", "--val-images", "2",
       "--pictures", "1", *TINY]


# -- helpers ------------------------------------------------------------------------------

def cli(main, args, capsys):
    """Run a CLI main in-process as ``python -m`` would: ``(exit status, stdout, stderr)``."""
    try:
        rc = run_main(main, [str(a) for a in args])
    except SystemExit as e:                 # argparse: --help, bad flags
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def python_m(module, args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, **kw)


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def read_log(run_dir):
    with open(Path(run_dir) / "log.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def synth_pair(h, w, seed, num_classes=4):
    image, mask = SyntheticShapes(1, size=(h, w), seed=seed, num_classes=num_classes)[0]
    return image, mask


def make_voc(root, train_sizes, val_sizes, void=True):
    """A PASCAL VOC 2012 directory: JPEGImages/*.jpg, SegmentationClass/*.png (palette),
    ImageSets/Segmentation/{train,val}.txt. Returns {split: [ids]}."""
    root = Path(root)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids, k = {}, 0
    for split, sizes in (("train", train_sizes), ("val", val_sizes)):
        ids[split] = []
        for h, w in sizes:
            image, mask = synth_pair(h, w, seed=k)
            if void:
                mask[0, :] = 255                  # a void border, as VOC has
            name = f"2007_{k:06d}"
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            save_mask_png(root / "SegmentationClass" / f"{name}.png", mask)
            ids[split].append(name)
            k += 1
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids[split]) + "\n")
    return ids


def make_folder(root, sizes, lists=None, ext=".png", num_classes=4, seed0=100):
    """The folder layout: images/<stem><ext>, masks/<stem>.png, optional split lists
    (``lists={'train': [...], 'val': [...]}``). Returns the stems."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    stems = []
    for i, (h, w) in enumerate(sizes):
        image, mask = synth_pair(h, w, seed=seed0 + i, num_classes=num_classes)
        stem = f"img{i}"
        Image.fromarray(image).save(root / "images" / f"{stem}{ext}")
        save_mask_png(root / "masks" / f"{stem}.png", mask)
        stems.append(stem)
    for split, names in (lists or {}).items():
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return stems


def snapshot(run_dir, names):
    return {n: (Path(run_dir) / n).read_bytes() for n in names}


def poly_lr(base, it, iters, warmup, power=0.9):
    """The poly schedule with linear warm-up, written out again here."""
    lr = base * (1 - it / iters) ** power
    return lr * (it + 1) / warmup if it < warmup else lr


# -- the command line itself ----------------------------------------------------------------

def test_help_subprocess():
    r = python_m("minifcn.train", ["--help"])
    assert r.returncode == 0, r.stderr
    for flag in ("--data", "--model", "--geometry", "--width", "--num-classes", "--iters",
                 "--epochs", "--batch-size", "--lr", "--optimizer", "--device", "--init", "--out",
                 "--resume", "--seed", "--val-every", "--recipe", "--schedule", "--momentum",
                 "--weight-decay", "--dropout", "--crop-size", "--no-flip", "--no-progress"):
        assert flag in r.stdout, flag


def test_unknown_flag_refused_subprocess(tmp_path):
    r = python_m("minifcn.train", ["--iterations", "3", "--out", tmp_path / "run"])
    assert r.returncode == 2
    assert "unrecognized arguments: --iterations" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,message", [
    (["--iters", "abc"], "invalid int value: 'abc'"),
    (["--lr", "fast"], "invalid float value: 'fast'"),
    (["--batch-size", "2.5"], "invalid int value: '2.5'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flag_values_refused(args, message, capsys, tmp_path):
    rc, out, err = cli(train_main, [*args, "--out", tmp_path / "run"], capsys)
    assert rc == 2
    assert message in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,message", [
    (["--model", "fcn4s"], "--model must be one of"),
    (["--optimizer", "rmsprop"], "--optimizer must be one of"),
    (["--geometry", "round"], "--geometry must be one of"),
    (["--iters", "3", "--epochs", "1"], "not both"),
    (["--lr", "-1"], "--lr must be a positive finite number, got -1"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--width", "inf"], "--width must be a positive finite number"),
    (["--epochs", "inf"], "--epochs must be a positive finite number"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--pictures", "-1"], "--pictures must be >= 0"),
    (["--image-size", "4"], "--image-size must be at least 8"),
    (["--init", "no/such/weights.pth"], "no/such/weights.pth"),
])
def test_bad_settings_are_one_line_errors(args, message, capsys, tmp_path):
    """Each names its flag (one check per setting, not one message for all)."""
    length = [] if ("--iters" in args or "--epochs" in args) else ["--iters", "1"]
    rc, out, err = cli(train_main, [*SYN, *args, *length, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(rc, err, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("main_name", ["train", "evaluate", "predict"])
def test_cuda_without_a_gpu_is_a_one_line_error(main_name, monkeypatch, capsys, tmp_path):
    import minifcn.backend as backend
    from minifcn.evaluate import main as evaluate_main
    from minifcn.predict import main as predict_main
    monkeypatch.setattr(backend, "_gpu_checked", False)
    monkeypatch.setattr(backend, "_gpu_error", "CuPy is not installed (test)")
    args = {"train": (train_main, [*SYN, "--iters", "1", "--out", tmp_path / "run"]),
            "evaluate": (evaluate_main, ["--checkpoint", "x.npz", "--data", "synthetic"]),
            "predict": (predict_main, ["--checkpoint", "x.npz", "a.png", "--out", tmp_path])}
    main, argv = args[main_name]
    rc, out, err = cli(main, [*argv, "--device", "cuda"], capsys)
    assert_one_line_error(rc, err, "device 'cuda' was asked for, but CuPy is not installed (test)")
    assert not (tmp_path / "run").exists()


# -- a run on each layout, and the files it writes --------------------------------------------

def test_voc_layout_end_to_end(tmp_path, capsys):
    """VOC layout, images of different sizes in every batch (and void 255 labels); checks
    every file of the run directory."""
    data = tmp_path / "VOC2012"
    train_sizes = [(40, 48), (36, 52), (48, 40), (44, 44)]
    val_sizes = [(36, 44), (40, 30)]
    ids = make_voc(data, train_sizes, val_sizes)
    run = tmp_path / "run"
    rc, out, err = cli(train_main, ["--data", data, *TINY, "--iters", "4", "--val-every", "2",
                                    "--pictures", "2", "--out", run], capsys)
    assert rc == 0, err

    # config.json: the resolved configuration, every field of TrainConfig
    config = json.loads((run / "config.json").read_text())
    assert set(config) == {f.name for f in dataclasses.fields(TrainConfig)}
    expect = {"data": str(data), "model": "fcn8s", "geometry": "notes", "width": 0.03125,
              "num_classes": 21, "optimizer": "adam", "lr": 5e-3, "momentum": 0.9,
              "weight_decay": 0.0, "preprocess": "simple", "recipe": "normalized",
              "schedule": "poly", "iters": 4, "batch_size": 2, "val_every": 2, "seed": 0,
              "out": str(run), "resume": None, "init": None, "device": "cpu", "pictures": 2}
    assert {k: config[k] for k in expect} == expect
    # ... and it is what was printed
    printed = json.loads(out.split("configuration:", 1)[1].splitlines()[0])
    assert printed == config
    assert re.search(r"final validation: pixel acc [0-9.]+, mean acc [0-9.]+, mean IU [0-9.]+", out)

    # log.csv: one row per iteration, metrics on validation rows only
    fields, rows = read_log(run)
    assert fields == LOG_COLUMNS
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    for i, r in enumerate(rows):
        assert math.isfinite(float(r["loss"])) and float(r["loss"]) > 0
        assert float(r["lr"]) == pytest.approx(poly_lr(5e-3, i, 4, warmup=200), rel=1e-5)
        assert float(r["it_per_s"]) > 0
        validated = int(r["iteration"]) % 2 == 0
        for m in METRICS:
            assert (r[m] != "") == validated, (r["iteration"], m)
            if validated:
                assert 0 <= float(r[m]) <= 1
    # the first loss, with the score layers zero-initialised: ln(21) per pixel, exactly
    assert float(rows[0]["loss"]) == pytest.approx(math.log(21), rel=1e-5)

    # metrics.json: the final validation, also in the last log row
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {*METRICS, "per_class_iou"}
    assert len(metrics["per_class_iou"]) == 21
    for m in METRICS:
        assert float(rows[-1][m]) == pytest.approx(metrics[m], abs=1e-6)

    # checkpoint.npz: weights, optimizer state, where the run is
    arrays, meta = io.load(run / "checkpoint.npz", with_meta=True)
    assert meta["kind"] == "minifcn-checkpoint" and meta["iteration"] == 4
    model_keys = set(FCN8s(num_classes=21, width=0.03125).state_dict())
    assert {k for k in arrays if not k.startswith("optimizer/")} == model_keys
    assert any(k.startswith("optimizer/m/") for k in arrays)
    assert arrays["score_fr.weight"].shape[0] == 21
    # best.npz: weights only, with the model description
    best, best_meta = io.load(run / "best.npz", with_meta=True)
    assert set(best) == model_keys
    assert best_meta["model"]["name"] == "fcn8s" and best_meta["model"]["num_classes"] == 21

    # val_samples.png: a real PNG, one row per picture, image | truth | prediction
    with Image.open(run / "val_samples.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        picture = np.asarray(im)
    hs, ws = [h for h, _ in val_sizes], [w for _, w in val_sizes]
    assert picture.shape == (sum(h + 2 for h in hs), 3 * max(ws), 3)
    top = 0
    for name, (h, w) in zip(ids["val"], val_sizes):
        row = picture[top:top + h]
        image = np.asarray(Image.open(data / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        truth = np.asarray(Image.open(data / "SegmentationClass" / f"{name}.png").convert("RGB"))
        assert np.abs(row[:, :w].astype(int) - image).max() <= 1          # the image
        np.testing.assert_array_equal(row[:, w:2 * w], truth)              # the truth, VOC colours
        palette = {tuple(c) for c in np.asarray(
            Image.open(data / "SegmentationClass" / f"{name}.png").getpalette()[:21 * 3]).reshape(21, 3)}
        assert {tuple(c) for c in row[:, 2 * w:3 * w].reshape(-1, 3)} <= palette   # a prediction
        top += h + 2


@pytest.mark.parametrize("lists", [True, False])
def test_folder_layout(tmp_path, capsys, lists):
    """images/ + masks/, with train.txt/val.txt or the default split; --epochs; jpg images."""
    data = tmp_path / "data"
    sizes = [(32, 40), (40, 32), (36, 36), (32, 48), (44, 36), (40, 40)]
    split = {"train": ["img0", "img1", "img2", "img3"], "val": ["img4", "img5"]} if lists else None
    make_folder(data, sizes, lists=split, ext=".jpg")
    run = tmp_path / "run"
    rc, out, err = cli(train_main, ["--data", data, *TINY, "--epochs", "1", "--val-every", "1",
                                    "--pictures", "1", "--out", run], capsys)
    assert rc == 0, err
    config = json.loads((run / "config.json").read_text())
    # 4 train images (with lists) or 5 (every 5th sorted stem is val), batches of 2, drop_last
    assert config["iters"] == 2
    assert config["num_classes"] == 4           # from the masks: largest label 3, plus one
    n_val = 2 if lists else 1
    assert f"({4 if lists else 5} train / {n_val} val images, 4 classes)" in out
    _, rows = read_log(run)
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert all(r["mean_iou"] != "" for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["per_class_iou"]) == 4
    assert (run / "best.npz").is_file() and (run / "val_samples.png").is_file()


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, capsys,
                                                                    monkeypatch):
    """The default directory name is the time to the second: a second run that finds it
    taken takes runs/<time>-2 instead of writing into the first run's directory."""
    import minifcn.training as training
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training.time, "strftime", lambda fmt: "runs/20261129-140117")
    outs = []
    for seed in (1, 2):
        rc, out, err = cli(train_main, [*SYN, *TINY, "--iters", "1", "--seed", str(seed)], capsys)
        assert rc == 0, err
        outs.append(out)
    first, second = tmp_path / "runs/20261129-140117", tmp_path / "runs/20261129-140117-2"
    assert "(run directory runs/20261129-140117)" in outs[0]
    assert "(run directory runs/20261129-140117-2)" in outs[1]
    assert json.loads((first / "config.json").read_text())["seed"] == 1
    assert json.loads((second / "config.json").read_text())["seed"] == 2
    assert (first / "checkpoint.npz").is_file() and (second / "checkpoint.npz").is_file()


def test_a_directory_claimed_in_between_is_not_shared(tmp_path):
    """Two runs given the same --out that both passed the start-up check: config.json is
    created exclusively, so the second stops and the first run's file is untouched."""
    from minifcn.training import Run, TrainConfig
    run = tmp_path / "run"
    second = Run.__new__(Run)                  # the second run, just before it claims the directory
    second.dir, second.config = str(run), TrainConfig(out=str(run)).resolved()
    run.mkdir()
    (run / "config.json").write_text('{"seed": 1}')      # the first run got there first
    with pytest.raises(ValueError, match="holds a run with no checkpoint yet"):
        second._claim_directory(default_name=False)
    assert (run / "config.json").read_text() == '{"seed": 1}'


@pytest.mark.filterwarnings("error::RuntimeWarning")     # NumPy's overflow warnings: not on stderr
def test_weights_made_non_finite_by_the_last_update_are_never_saved(tmp_path, capsys):
    """The loss of the step was finite, but the update overflowed the weights: the run stops
    before validating or saving (it used to save NaN weights as best.npz and exit 0)."""
    run = tmp_path / "run"
    rc, out, err = cli(train_main, [*SYN, *TINY, "--optimizer", "adam", "--lr", "3e38",
                                    "--warmup", "0", "--iters", "1", "--out", run], capsys)
    line = assert_one_line_error(rc, err, "iteration 1: the update made parameter",
                                 "non-finite (lower --lr", "no checkpoint was written")
    assert not (run / "checkpoint.npz").exists() and not (run / "best.npz").exists(), line
    # and the directory now says why it cannot be resumed or reused
    rc, out, err = cli(train_main, ["--resume", run], capsys)
    assert_one_line_error(rc, err, "no checkpoint.npz there yet")
    rc, out, err = cli(train_main, [*SYN, "--out", run], capsys)
    assert_one_line_error(rc, err, "holds a run with no checkpoint yet")


def test_a_later_divergence_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import minifcn.training as training
    run = tmp_path / "run"
    rc, out, err = cli(train_main, [*SYN, *TINY, "--iters", "2", "--val-every", "1",
                                    "--out", run], capsys)
    assert rc == 0, err
    saved = snapshot(run, ["checkpoint.npz", "best.npz"])
    real_step = training.Run.step

    def poisoned(self, lr):
        loss = real_step(self, lr)
        self.model.params["fc7.bias"][0] = np.nan          # what an overflowing update does
        return loss
    monkeypatch.setattr(training.Run, "step", poisoned)
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "3", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "iteration 3: the update made parameter 'fc7.bias'",
                          "the last checkpoint is kept")
    assert snapshot(run, ["checkpoint.npz", "best.npz"]) == saved


def test_a_validation_split_without_labelled_pixels(tmp_path, capsys):
    """Every validation pixel is void (255): no score to report or to pick best.npz by,
    said once, and 'n/a' in the log and the summary — not a crash."""
    data = tmp_path / "data"
    make_folder(data, [(32, 32)] * 5, lists={"train": ["img0", "img1", "img2", "img3"],
                                             "val": ["img4"]})
    mask = np.full((32, 32), 255, np.uint8)
    save_mask_png(data / "masks" / "img4.png", mask)
    run = tmp_path / "run"
    rc, out, err = cli(train_main, ["--data", data, *TINY, "--iters", "2", "--val-every", "1",
                                    "--num-classes", "4", "--out", run], capsys)
    assert rc == 0, err
    assert out.count("the validation split has no labelled pixels") == 1
    assert "final validation: pixel acc n/a, mean acc n/a, mean IU n/a, f.w. IU n/a" in out
    _, rows = read_log(run)
    assert [r["mean_iou"] for r in rows] == ["n/a", "n/a"]
    assert (run / "checkpoint.npz").is_file() and not (run / "best.npz").exists()


def test_resume_with_a_damaged_log_names_it(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = cli(train_main, [*SYN, *TINY, "--iters", "1", "--out", run], capsys)
    assert rc == 0, err
    log = run / "log.csv"
    good = log.read_bytes()
    files = os.listdir(run)
    extra_field = good + b"1,0,0.5,0.1,1,,,,,EXTRA\n"
    extra_column = good.replace(b"fw_iou", b"fw_iou,note", 1)
    for damaged, why in ((good + b"\x00" * 40 + b"\n", "line 3 does not start with an iteration"),
                         (b"iter,loss\n1,0.5\n", "has no 'iteration' column"),
                         (extra_field, "line 3 has more fields than the header"),
                         (extra_column, "columns minifcn does not write: ['note']")):
        log.write_bytes(damaged)
        rc, out, err = cli(train_main, ["--resume", run, "--iters", "2", "--no-progress"], capsys)
        assert_one_line_error(rc, err, str(log), why)
        assert log.read_bytes() == damaged                 # left as it was
        assert sorted(os.listdir(run)) == sorted(files)    # and nothing left behind


def test_synthetic_subprocess(tmp_path):
    """A real ``python -m minifcn.train --data synthetic`` run."""
    run = tmp_path / "run"
    r = python_m("minifcn.train", [*SYN, "--iters", "3", "--val-every", "3", "--out", run])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    config = json.loads((run / "config.json").read_text())
    printed = json.loads(r.stdout.split("configuration:", 1)[1].splitlines()[0])
    assert printed == config
    assert config["num_classes"] == 4 and config["image_size"] == 32
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"mean IU {metrics['mean_iou']:.4f}" in r.stdout
    for name in ("log.csv", "checkpoint.npz", "best.npz", "metrics.json", "val_samples.png"):
        assert (run / name).is_file(), name


# -- presets --------------------------------------------------------------------------------

def test_paper_recipe_preset():
    """The paper recipe is the Caffe solver of the FCN code (solver.prototxt and net.py):
    SGD lr 1e-10 fixed (no warm-up), momentum 0.99, weight decay 5e-4, and biases at
    ``lr_mult: 2``. Every part of it can be overridden."""
    c = TrainConfig(recipe="paper").resolved()
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay) == ("sgd", 1e-10, 0.99, 5e-4)
    assert (c.schedule, c.warmup, c.bias_lr_mult, c.batch_size) == ("fixed", 0, 2.0, 1)
    n = TrainConfig().resolved()
    assert (n.recipe, n.optimizer, n.lr) == ("normalized", "adam", 5e-3)
    assert (n.schedule, n.warmup, n.bias_lr_mult, n.batch_size) == ("poly", 200, 1.0, 16)
    o = TrainConfig(recipe="paper", lr=1e-4, momentum=0.9, optimizer="adam", weight_decay=0.0,
                    schedule="poly", warmup=5, bias_lr_mult=1.0, batch_size=4).resolved()
    assert (o.optimizer, o.lr, o.momentum, o.weight_decay) == ("adam", 1e-4, 0.9, 0.0)
    assert (o.schedule, o.warmup, o.bias_lr_mult, o.batch_size) == ("poly", 5, 1.0, 4)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="--bias-lr-mult must be a positive finite number"):
            TrainConfig(bias_lr_mult=bad).resolved()


def test_paper_recipe_sums_the_loss(tmp_path, capsys):
    """--recipe paper on the command line: SGD, momentum 0.99, and a *summed* loss: with the
    score layers zero-initialised the first loss is (pixels) x ln(C), here 2*32*32*ln 4.
    An explicit --lr overrides the preset's."""
    run = tmp_path / "run"
    rc, out, err = cli(train_main, [*SYN, "--recipe", "paper", "--lr", "1e-9", "--iters", "1",
                                    "--out", run], capsys)
    assert rc == 0, err
    config = json.loads((run / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["momentum"]) == ("sgd", 1e-9, 0.99)
    assert (config["schedule"], config["warmup"], config["bias_lr_mult"]) == ("fixed", 0, 2.0)
    _, rows = read_log(run)
    assert float(rows[0]["loss"]) == pytest.approx(2 * 32 * 32 * math.log(4), rel=1e-5)
    assert float(rows[0]["lr"]) == 1e-9                  # fixed from the first iteration


# -- resume ---------------------------------------------------------------------------------

RESUME = [*SYN, "--dropout", "0.5", "--val-every", "4", "--lr", "2e-3", "--warmup", "2"]


def _same_rows(rows, ref_rows):
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in ref_rows]
    for r, ref in zip(rows, ref_rows):
        assert r["epoch"] == ref["epoch"], r["iteration"]
        for k in ("loss", "lr", *METRICS):
            if ref[k] == "":
                assert r[k] == "", (r["iteration"], k)
            else:
                assert float(r[k]) == pytest.approx(float(ref[k]), rel=1e-6, abs=1e-9), \
                    (r["iteration"], k)


def _same_weights(dir_a, dir_b):
    a, b = io.load(Path(dir_a) / "checkpoint.npz"), io.load(Path(dir_b) / "checkpoint.npz")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("how", ["stopped", "interrupted"])
def test_resume_continues_the_log(tmp_path, capsys, monkeypatch, how):
    """An uninterrupted 8-iteration run (dropout 0.5, flips, 3 batches per epoch) against
    the same run stopped at its checkpoint 4 and resumed:

    - ``stopped``: ``--iters 4 --schedule fixed``, then ``--resume DIR --iters 8``;
    - ``interrupted``: 8 iterations with the poly schedule, interrupted during iteration 7
      (after the checkpoint at 4 and two more logged rows), then ``--resume DIR``.
    """
    full, part = tmp_path / "full", tmp_path / "part"
    sched = ["--schedule", "fixed"] if how == "stopped" else ["--schedule", "poly"]
    assert cli(train_main, [*RESUME, *sched, "--iters", "8", "--out", full], capsys)[0] == 0
    if how == "stopped":
        assert cli(train_main, [*RESUME, *sched, "--iters", "4", "--out", part], capsys)[0] == 0
        again = ["--resume", part, "--iters", "8", "--no-progress"]
    else:
        real_step = Run.step

        def step(self, lr):
            if self.iteration == 6:
                raise KeyboardInterrupt
            return real_step(self, lr)
        monkeypatch.setattr(Run, "step", step)
        rc, _, err = cli(train_main, [*RESUME, *sched, "--iters", "8", "--out", part], capsys)
        assert rc == 130, err
        monkeypatch.undo()
        assert [r["iteration"] for r in read_log(part)[1]] == [str(i) for i in range(1, 7)]
        again = ["--resume", part, "--no-progress"]
    rc, out, err = cli(train_main, again, capsys)
    assert rc == 0, err
    assert "resuming" in out and "at iteration 4" in out

    _, ref_rows = read_log(full)
    _, rows = read_log(part)
    _same_rows(rows, ref_rows)
    _same_weights(full, part)
    # the run learnt (so dropout and the optimiser state shaped the losses that matched)
    assert len({r["loss"] for r in ref_rows[2:]}) == len(ref_rows) - 2
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (part, full))
    assert got.keys() == want.keys()
    for key in want:                    # approx takes no nested containers: one key at a time
        if isinstance(want[key], list):
            assert [v is None for v in got[key]] == [v is None for v in want[key]], key
            assert [v for v in got[key] if v is not None] == \
                pytest.approx([v for v in want[key] if v is not None]), key
        else:
            assert got[key] == pytest.approx(want[key]), key


def test_resume_of_a_run_started_with_epochs(tmp_path, capsys):
    """--epochs 1 (6 images, batches of 2: 3 iterations), then --resume with --epochs 2,
    then a plain --resume of the finished run."""
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--epochs", "1", "--val-every", "2", "--out", run], capsys)[0] == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["iters"]) == (1.0, 3)
    rc, out, err = cli(train_main, ["--resume", run, "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    assert [r["iteration"] for r in read_log(run)[1]] == ["1", "2", "3", "4", "5", "6"]
    rc, out, err = cli(train_main, ["--resume", run, "--no-progress"], capsys)
    assert rc == 0, err
    assert len(read_log(run)[1]) == 6


def test_resume_of_a_run_from_before_bias_lr_mult_keeps_biases_at_1x(tmp_path, capsys):
    """A paper-recipe run written before --bias-lr-mult existed trained its biases at the
    plain lr; resumed, it goes on so (the preset's 2x is for new runs)."""
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--recipe", "paper", "--iters", "2", "--val-every", "2",
                            "--out", run], capsys)[0] == 0
    config = json.loads((run / "config.json").read_text())
    assert config.pop("bias_lr_mult") == 2.0
    (run / "config.json").write_text(json.dumps(config))
    resumed = Run._config_to_resume(TrainConfig(resume=str(run), progress=False)).resolved()
    assert (resumed.recipe, resumed.bias_lr_mult) == ("paper", 1.0)


def test_resume_of_a_finished_run_keeps_its_files(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    log_before = read_log(run)
    rc, out, err = cli(train_main, ["--resume", run, "--no-progress"], capsys)
    assert rc == 0, err
    assert read_log(run) == log_before


def test_checkpoint_survives_sigkill(tmp_path, capsys):
    """Kill a real training process (SIGKILL) while it runs and checkpoints every 3
    iterations; the last checkpoint loads, and --resume finishes the run with the very
    log an uninterrupted run writes."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = [*SYN, "--dropout", "0.5", "--schedule", "fixed", "--warmup", "0", "--lr", "2e-3",
            "--val-every", "3", "--pictures", "0"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "minifcn.train", *map(str, args),
                             "--iters", "100000", "--out", str(run)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def logged():
            try:
                return (run / "log.csv").read_text().count("\n") - 1
            except FileNotFoundError:
                return 0
        # until a second checkpoint is written and the next one is in the making
        while logged() < 8:
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read()}")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    arrays, meta = io.load(run / "checkpoint.npz", with_meta=True)
    k = meta["iteration"]
    assert k >= 6 and k % 3 == 0
    assert all(np.isfinite(v).all() for v in arrays.values())
    logged_rows = read_log(run)[1]
    assert int(logged_rows[-1]["iteration"]) >= k

    finish = k + 3
    rc, out, err = cli(train_main, ["--resume", run, "--iters", finish, "--no-progress"], capsys)
    assert rc == 0, err
    assert f"at iteration {k}" in out
    assert cli(train_main, [*args, "--iters", finish, "--out", ref], capsys)[0] == 0
    _same_rows(read_log(run)[1], read_log(ref)[1])
    _same_weights(ref, run)
    assert io.load_meta(run / "checkpoint.npz")["iteration"] == finish


# -- bad input: one line, exit status 2, no traceback -----------------------------------------

def _voc(tmp_path):
    data = tmp_path / "VOC2012"
    ids = make_voc(data, [(36, 40), (40, 36)], [(32, 32)])
    return data, ids


def test_missing_data_directory_subprocess(tmp_path):
    missing = tmp_path / "no_such_dataset"
    r = python_m("minifcn.train", ["--data", missing, *TINY, "--iters", "1", "--out", tmp_path / "run"])
    assert_one_line_error(r.returncode, r.stderr, missing, "no such")


def _corrupt(data, ids):
    path = data / "JPEGImages" / f"{ids['train'][1]}.jpg"
    path.write_bytes(b"this is not a JPEG at all\n" * 10)
    return path, "cannot read the image"


def _truncated(data, ids):
    path = data / "JPEGImages" / f"{ids['train'][0]}.jpg"
    path.write_bytes(path.read_bytes()[:300])
    return path, "cannot read the image"


def _mask_size(data, ids):
    path = data / "SegmentationClass" / f"{ids['val'][0]}.png"
    save_mask_png(path, np.zeros((20, 24), np.uint8))
    return path, "mask is 24x20"


def _label_range(data, ids):
    path = data / "SegmentationClass" / f"{ids['train'][0]}.png"
    mask = np.zeros((36, 40), np.uint8)
    mask[5:9, 5:9] = 30
    mask[0] = 255                                  # 255 is fine; 30 is not (21 classes)
    save_mask_png(path, mask)
    return path, "{30} outside [0, 21)"


def _missing_mask(data, ids):
    path = data / "SegmentationClass" / f"{ids['train'][1]}.png"
    path.unlink()
    return path, "not found"


@pytest.mark.parametrize("spoil", [_corrupt, _truncated, _mask_size, _label_range, _missing_mask])
def test_bad_dataset_files(tmp_path, capsys, spoil):
    data, ids = _voc(tmp_path)
    path, what = spoil(data, ids)
    run = tmp_path / "run"
    rc, out, err = cli(train_main, ["--data", data, *TINY, "--iters", "1", "--out", run], capsys)
    assert_one_line_error(rc, err, path, what)
    assert not (run / "checkpoint.npz").exists()


def test_labels_outside_num_classes_in_folder_layout(tmp_path, capsys):
    data = tmp_path / "data"
    make_folder(data, [(32, 32)] * 5)
    save_mask_png(data / "masks" / "img2.png", np.full((32, 32), 5, np.uint8))
    rc, out, err = cli(train_main, ["--data", data, "--num-classes", "4", *TINY, "--iters", "1",
                                    "--out", tmp_path / "run"], capsys)
    assert_one_line_error(rc, err, data / "masks" / "img2.png", "outside [0, 4)")


def test_init_checkpoint_that_does_not_fit(tmp_path, capsys):
    """--init with weights of another width, or with a file that is not weights at all."""
    other = tmp_path / "other.npz"
    io.save(other, FCN8s(num_classes=4, width=0.0625).state_dict())
    rc, out, err = cli(train_main, [*SYN, "--iters", "1", "--init", other, "--out", tmp_path / "a"],
                       capsys)
    line = assert_one_line_error(rc, err, other, "does not fit")
    assert "conv1_1.weight" in line                 # it says which tensors
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    rc, out, err = cli(train_main, [*SYN, "--iters", "1", "--init", junk, "--out", tmp_path / "b"],
                       capsys)
    assert_one_line_error(rc, err, junk)
    classes = tmp_path / "classes.npz"                # right width, wrong number of classes
    io.save(classes, FCN8s(num_classes=21, width=0.03125).state_dict())
    rc, out, err = cli(train_main, [*SYN, "--iters", "1", "--init", classes, "--out", tmp_path / "c"],
                       capsys)
    assert_one_line_error(rc, err, classes, "score_fr.weight")
    vgg = tmp_path / "vgg.npz"                        # a torchvision VGG16 layout that does not fit
    state = {f"features.{i}.{p}": np.zeros(2, np.float32) for i in range(29) for p in ("weight", "bias")}
    state.update({f"classifier.{i}.{p}": np.zeros(2, np.float32) for i in (0, 3)
                  for p in ("weight", "bias")})
    io.save(vgg, state)
    rc, out, err = cli(train_main, [*SYN, "--iters", "1", "--init", vgg, "--out", tmp_path / "d"],
                       capsys)
    assert_one_line_error(rc, err, vgg, "classifier.0.weight has shape")   # the path was missing


def test_out_directory_that_holds_files_is_refused(tmp_path, capsys):
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("my notes\n")
    (out_dir / "log.csv").write_text("not a training log\n")
    before = snapshot(out_dir, ["notes.txt", "log.csv"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    rc, out, err = cli(train_main, [*SYN, "--iters", "1", "--out", out_dir], capsys)
    assert_one_line_error(rc, err, out_dir, "--resume")
    assert sorted(os.listdir(out_dir)) == ["log.csv", "notes.txt"]
    assert snapshot(out_dir, ["notes.txt", "log.csv"]) == before
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == mtimes


def test_resume_of_something_that_is_not_a_run(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello\n")
    rc, out, err = cli(train_main, ["--resume", plain, "--no-progress"], capsys)
    assert_one_line_error(rc, err, plain, "not a run directory")
    assert os.listdir(plain) == ["notes.txt"]
    missing = tmp_path / "missing"
    rc, out, err = cli(train_main, ["--resume", missing, "--no-progress"], capsys)
    assert_one_line_error(rc, err, missing)
    assert not missing.exists()
    # a run directory whose checkpoint is damaged
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    ckpt = run / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    log_before = (run / "log.csv").read_bytes()
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "4", "--no-progress"], capsys)
    assert_one_line_error(rc, err, ckpt)
    assert (run / "log.csv").read_bytes() == log_before


@pytest.mark.parametrize("validate", [True, False])
def test_failed_resume_loses_nothing(tmp_path, capsys, validate):
    """Corrupt a validation image after checkpoint 4 is written and resume: a one-line
    error naming the image; config.json, checkpoint.npz, best.npz unchanged and loadable,
    log.csv still holds rows 1..4. With --no-validate-data the failure comes mid-run
    (at the validation of iteration 6). After repairing the image, --resume finishes."""
    data, ids = _voc(tmp_path)
    run = tmp_path / "run"
    extra = [] if validate else ["--no-validate-data"]
    assert cli(train_main, ["--data", data, *TINY, "--iters", "4", "--val-every", "2",
                            "--out", run, *extra], capsys)[0] == 0
    kept = ["config.json", "checkpoint.npz", "best.npz", "metrics.json"]
    before = snapshot(run, kept)
    _, rows_before = read_log(run)

    image = data / "JPEGImages" / f"{ids['val'][0]}.jpg"
    good = image.read_bytes()
    image.write_bytes(b"garbage")
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "6", "--no-progress"], capsys)
    assert_one_line_error(rc, err, image, "cannot read the image")
    assert snapshot(run, kept) == before
    _, rows = read_log(run)
    assert rows[:4] == rows_before
    assert [r["iteration"] for r in rows] == (["1", "2", "3", "4"] if validate else
                                              ["1", "2", "3", "4", "5"])
    arrays, meta = io.load(run / "checkpoint.npz", with_meta=True)
    assert meta["iteration"] == 4 and "conv1_1.weight" in arrays
    assert json.loads((run / "config.json").read_text())["iters"] == 4

    image.write_bytes(good)
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "6", "--no-progress"], capsys)
    assert rc == 0, err
    assert [r["iteration"] for r in read_log(run)[1]] == [str(i) for i in range(1, 7)]
    assert io.load_meta(run / "checkpoint.npz")["iteration"] == 6


# -- guards -----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("error::RuntimeWarning")     # NumPy's overflow warnings: not on stderr
def test_nan_guard_names_a_layer(tmp_path, capsys):
    """An absurd learning rate: the run stops at the first non-finite loss with a message
    naming the first layer whose output (or gradient) was not finite."""
    run = tmp_path / "run"
    rc, out, err = cli(train_main, [*SYN, "--optimizer", "sgd", "--lr", "1e6", "--warmup", "0",
                                    "--iters", "20", "--val-every", "20", "--out", run], capsys)
    line = assert_one_line_error(rc, err, "not finite" if "not finite" in err else "non-finite")
    assert re.search(r"iteration \d+: the loss is (nan|inf)", line), line
    named = re.findall(r"'([A-Za-z0-9_]+)(?:\.(?:weight|bias))?'", line)
    layers = set(FCN8s(num_classes=4, width=0.03125).layers)
    assert named and named[0] in layers, line
    # the iterations before it were logged
    assert len(read_log(run)[1]) >= 1


def test_diagnose_nonfinite_finds_the_first_layer():
    """Make conv3_1's weights so large that its output overflows float32: the diagnosis
    names conv3_1, not a later layer (relu3_1, pool3, ... all inherit the inf)."""
    from minifcn.nn import SoftmaxCrossEntropy
    model = FCN8s(num_classes=4, width=0.0625, dropout=0.0)
    model.layers["conv3_1"].params["weight"][...] = 1e38
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 4, (1, 32, 32))
    with np.errstate(all="ignore"):
        msg = diagnose_nonfinite(model, x, y, SoftmaxCrossEntropy())
    assert "output" in msg and "'conv3_1'" in msg, msg
    # a parameter that is itself not finite is named as such
    model = FCN8s(num_classes=4, width=0.0625, dropout=0.0)
    model.layers["fc7"].params["bias"][0] = np.nan
    msg = diagnose_nonfinite(model, x, y, SoftmaxCrossEntropy())
    assert "'fc7.bias'" in msg, msg


@pytest.mark.parametrize("losses,stuck", [
    ([math.log(4)] * 199, False),                     # too early
    ([math.log(4)] * 200, True),
    ([math.log(4)] * 220, False),                     # checked every 50 iterations
    ([math.log(4)] * 250, True),
    ([math.log(4) * 1.005] * 200, True),              # within 1 %
    ([math.log(4) * 0.98] * 200, False),              # 2 % below: learning
    ([0.3] * 150 + [math.log(4)] * 50, True),         # the last 50 count
    ([math.log(4)] * 150 + [0.3] * 50, False),
])
def test_stuck_rule(losses, stuck):
    assert Run._stuck(losses, math.log(4)) is stuck


def test_stuck_loss_warning_in_a_run(tmp_path):
    """The paper recipe (summed loss) with its lr 1e-10 on a folder dataset with void
    pixels: nothing is learnt, the loss per counted pixel stays ln(4), and after 200
    iterations the run warns. The first loss, summed, is (valid pixels) x ln 4."""
    data = tmp_path / "data"
    make_folder(data, [(24, 40)] * 2, lists={"train": ["img0", "img1"], "val": ["img0"]})
    for stem in ("img0", "img1"):                     # 255 on the first row: 40 void pixels
        mask = np.array(Image.open(data / "masks" / f"{stem}.png"))
        mask[0] = 255
        save_mask_png(data / "masks" / f"{stem}.png", mask)
    logs = []
    config = TrainConfig(data=str(data), num_classes=4, width=0.03125, batch_size=1,
                         recipe="paper", iters=200, val_every=200, pictures=0, progress=False,
                         out=str(tmp_path / "run"))
    run = Run(config, log=logs.append)
    run.train()
    warnings = [m for m in logs if m.startswith("warning")]
    assert len(warnings) == 1 and "after 200 iterations" in warnings[0] \
        and "not learning" in warnings[0], logs
    _, rows = read_log(tmp_path / "run")
    assert float(rows[0]["loss"]) == pytest.approx((24 * 40 - 40) * math.log(4), rel=1e-5)


# -- it learns ---------------------------------------------------------------------------------

def test_overfits_two_images(tmp_path, capsys):
    """A small FCN-8s (width 1/16, Adam) learns two synthetic 48x48 images by heart:
    validation on the same two images reaches pixel accuracy >= 0.95."""
    data = tmp_path / "two"
    make_folder(data, [(48, 48)] * 2, lists={"train": ["img0", "img1"], "val": ["img0", "img1"]},
                seed0=3)
    run = tmp_path / "run"
    rc, out, err = cli(train_main, ["--data", data, "--num-classes", "4", "--model", "fcn8s",
                                    "--width", "0.0625", "--batch-size", "2", "--lr", "3e-3",
                                    "--warmup", "10", "--iters", "250", "--val-every", "250",
                                    "--no-flip", "--no-progress", "--pictures", "0",
                                    "--out", run], capsys)
    assert rc == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pixel_acc"] >= 0.95, metrics
    assert metrics["mean_iou"] >= 0.8, metrics


def test_a_torch_checkpoints_model_entry_that_is_not_a_description(tmp_path, capsys):
    """A torch checkpoint's scalar entries become metadata: a string or None under 'model'
    is not minifcn's model description, so the flags fill it in (it was a TypeError
    traceback, or a message without the file)."""
    import torch
    from minifcn.evaluate import main as evaluate_main
    model = FCN8s(num_classes=4, width=0.03125)
    sd = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    for value in ("fcn8s", None):
        path = tmp_path / f"ck_{value}.pth"
        torch.save({"state_dict": sd, "model": value}, path)
        rc, out, err = cli(evaluate_main, ["--checkpoint", path, "--data", "synthetic",
                                           "--image-size", "32", "--num-images", "2",
                                           "--model", "fcn8s", "--num-classes", "4",
                                           "--geometry", "notes", "--width", "0.03125",
                                           "--preprocess", "simple"], capsys)
        assert rc == 0, err
        rc, out, err = cli(evaluate_main, ["--checkpoint", path, "--data", "synthetic"], capsys)
        assert_one_line_error(rc, err, path, "no model description")


def test_resume_from_an_incomplete_checkpoint_names_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    arrays, meta = io.load(run / "checkpoint.npz", with_meta=True)
    del meta["loader"]
    io.save(run / "checkpoint.npz", arrays, meta=meta)
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "4", "--no-progress"], capsys)
    assert_one_line_error(rc, err, run / "checkpoint.npz", "incomplete checkpoint")


@pytest.mark.parametrize("key,value,needle", [
    ("iteration", "x", "'iteration' must be a whole number >= 0, got 'x'"),
    ("iteration", -5, "'iteration' must be a whole number >= 0, got -5"),
    ("iteration", 2.5, "'iteration' must be a whole number"),
    ("best_mean_iou", None, "'best_mean_iou' must be a finite number, got None")])
def test_resume_with_hand_edited_checkpoint_numbers_names_the_field(tmp_path, capsys, key,
                                                                     value, needle):
    """A checkpoint's counters edited by hand used to give Python's own messages
    ('invalid literal for int()') or, for a negative iteration, run on; each now names the
    field and its value, and the run directory keeps its files."""
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    arrays, meta = io.load(run / "checkpoint.npz", with_meta=True)
    meta[key] = value
    io.save(run / "checkpoint.npz", arrays, meta=meta)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "4", "--no-progress"], capsys)
    assert_one_line_error(rc, err, run / "checkpoint.npz", needle)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_where_the_checkpoint_is_a_directory_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    (run / "checkpoint.npz").unlink()
    (run / "checkpoint.npz").mkdir()
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "4", "--no-progress"], capsys)
    assert_one_line_error(rc, err, run / "checkpoint.npz", "is not a file")


def test_best_npz_holds_the_first_best_validation(tmp_path):
    """best.npz is written when the validation mean IU beats every earlier one, and only
    then: here it peaks at iteration 3 and ties it afterwards, so best.npz is iteration
    3's weights, not the last ones (saving at every validation, or never raising the
    best, would both leave iteration 8's)."""
    run = tmp_path / "run"
    config = TrainConfig(data="synthetic", image_size=32, train_images=6, val_images=2,
                         width=0.03125, batch_size=2, iters=8, val_every=1, lr=0.02, warmup=0,
                         pictures=0, progress=False, out=str(run))
    Run(config, log=lambda m: None).train()
    _, rows = read_log(run)
    scores = [float(r["mean_iou"]) for r in rows]
    first_best = scores.index(max(scores)) + 1
    assert 1 < first_best < len(scores)                  # the case that tells them apart
    best, meta = io.load(run / "best.npz", with_meta=True)
    assert meta["iteration"] == first_best
    assert meta["metrics"]["mean_iou"] == pytest.approx(max(scores), abs=1e-6)
    last = io.load(run / "checkpoint.npz")
    assert any(not np.array_equal(best[k], last[k]) for k in best)


@pytest.mark.parametrize("flags,flip,crop", [([], True, None), (["--no-flip"], False, None),
                                             (["--crop-size", "24"], True, (24, 24))])
def test_flip_and_crop_flags_reach_the_batches(tmp_path, capsys, flags, flip, crop):
    """--no-flip and --crop-size are the loader's settings, and a --crop-size run trains on
    batches of that size (an inverted flip, or a dropped crop, passed every other test)."""
    shapes = []
    real = BatchLoader.next_batch

    def next_batch(self):
        x, y = real(self)
        shapes.append(x.shape)
        return x, y
    import minifcn.data.loader as loader_module
    monkey = pytest.MonkeyPatch()
    monkey.setattr(loader_module.BatchLoader, "next_batch", next_batch)
    try:
        rc, out, err = cli(train_main, [*SYN, *flags, "--iters", "1", "--out", tmp_path / "r"], capsys)
    finally:
        monkey.undo()
    assert rc == 0, err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["flip"] is flip
    assert shapes and shapes[0][2:] == (crop or (32, 32))
    run = Run(TrainConfig(data="synthetic", image_size=32, train_images=6, val_images=2,
                          width=0.03125, batch_size=2, iters=1, progress=False,
                          flip=flip, crop_size=crop[0] if crop else None, out=str(tmp_path / "s")),
              log=lambda m: None)
    assert run.loader.flip is flip
    assert run.loader.crop_size in (crop, crop[0] if crop else None)


def test_resume_refuses_flags_it_would_ignore_and_loses_nothing(tmp_path, capsys):
    """--resume continues a run with its saved settings: any other flag (a new --lr, model,
    --out, --init) used to be dropped without a word and the run trained as saved; an
    --iters below the checkpoint's iteration is refused too. Every file stays as it was."""
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    files = sorted(os.listdir(run))
    before = snapshot(run, files)
    for extra, needles in ((["--lr", "1"], ["--lr", "cannot be given",
                                            "--out naming the same directory, can"]),
                           (["--model", "fcn32s", "--out", tmp_path / "elsewhere"],
                            ["--model, --out", "cannot be given"]),
                           (["--init", run / "best.npz"], ["--init"]),
                           (["--iters", "1"], ["already at iteration 2", "past the 1 iterations"])):
        rc, out, err = cli(train_main, ["--resume", run, "--no-progress", *extra], capsys)
        assert_one_line_error(rc, err, *needles)
        assert snapshot(run, files) == before
        assert not (tmp_path / "elsewhere").exists()
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "3", "--no-progress",
                                    "--no-validate-data"], capsys)   # what may change
    assert rc == 0, err
    assert io.load_meta(run / "checkpoint.npz")["iteration"] == 3


@pytest.mark.parametrize("content,needle", [
    ("[1, 2]", "got a JSON list"),
    ({"lr": "abc"}, "setting 'lr' must be a number or null, got 'abc'"),
    ({"iters": "5"}, "setting 'iters' must be an integer or null, got '5'"),
    ({"image_size": None}, "setting 'image_size' must be an integer, got None"),
    ({"flip": 1}, "setting 'flip' must be true or false, got 1"),
    ({"lr": -1.0}, "--lr must be a positive finite number"),
])
def test_resume_with_a_hand_edited_config_names_the_setting(tmp_path, capsys, content, needle):
    """A config.json that is valid JSON but not a run's settings used to end in a
    traceback (AttributeError, TypeError deep in the run); now one line names the file and
    the setting, and nothing is written."""
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    config = run / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(content if isinstance(content, str) else json.dumps({**saved, **content}))
    files = sorted(os.listdir(run))
    before = snapshot(run, files)
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "3", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "config.json", needle)
    assert snapshot(run, files) == before


def test_out_is_checked_before_the_data_and_the_model(tmp_path, capsys, monkeypatch):
    """An empty --out, a file, a path under a file, or a folder that takes no new entries
    (/proc, where root's permission bits say yes) is refused at once, naming --out; it
    used to be a bare errno message after the data and the model were built, or, for '',
    a run written to runs/ in the current folder."""
    import minifcn.training as training
    built = []
    monkeypatch.setattr(training, "open_dataset", lambda *a, **k: built.append(1))
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for target, why in (("", "--out is empty"), (afile, "is a file"),
                        (afile / "sub", "is not a directory"),
                        (tmp_path / "dangling", "is a link to nothing"),
                        ("/proc/minifcn-run", "cannot write in /proc")):
        if str(target).startswith("/proc") and not os.path.isdir("/proc"):
            continue
        rc, out, err = cli(train_main, [*SYN, "--iters", "1", "--out", target], capsys)
        assert_one_line_error(rc, err, f"--out {target}".rstrip() if target else "--out", why)
        assert built == [] and afile.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["afile", "dangling"]   # no runs/, no probe left


def test_init_with_non_finite_weights_is_refused_naming_the_entry(tmp_path, capsys):
    """An --init file holding a NaN used to train and stop at iteration 1 saying 'the
    previous step diverged; lower --lr': the file was the problem, and now it says so
    before anything is written."""
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--iters", "2", "--val-every", "2", "--out", run], capsys)[0] == 0
    arrays, meta = io.load(run / "best.npz", with_meta=True)
    arrays["conv1_1.weight"] = arrays["conv1_1.weight"].copy()
    arrays["conv1_1.weight"].flat[3] = np.inf
    bad = tmp_path / "bad.npz"
    io.save(bad, arrays, meta=meta)
    out_dir = tmp_path / "new"
    rc, out, err = cli(train_main, [*SYN, "--iters", "1", "--init", bad, "--out", out_dir], capsys)
    assert_one_line_error(rc, err, f"--init {bad}", "'conv1_1.weight' holds inf or NaN")
    assert not out_dir.exists()


def test_resume_checks_what_was_given_not_its_value(tmp_path, capsys, monkeypatch):
    """A flag given to a resume is refused even with its default value (--seed 0 on a run
    seeded 7 was dropped without a word); --out naming the run itself is no change;
    --iters with --epochs is refused as for a new run; an --iters below the checkpoint's
    iteration is refused before the data is opened; --no-validate-data takes effect."""
    import minifcn.training as training
    run = tmp_path / "run"
    assert cli(train_main, [*SYN, "--seed", "7", "--no-flip", "--iters", "2", "--val-every", "2",
                            "--out", run], capsys)[0] == 0
    files = sorted(os.listdir(run))
    before = snapshot(run, files)
    for extra, needles in ((["--seed", "0"], ["--seed cannot be given"]),
                           (["--flip"], ["--flip cannot be given"]),
                           (["--iters", "5", "--epochs", "3"], ["--iters or --epochs, not both"])):
        rc, out, err = cli(train_main, ["--resume", run, "--no-progress", *extra], capsys)
        assert_one_line_error(rc, err, *needles)
        assert snapshot(run, files) == before
    opened = []
    real_open = training.open_dataset
    monkeypatch.setattr(training, "open_dataset", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "1", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "already at iteration 2")
    assert opened == []                               # refused before the data was opened
    validated = []
    monkeypatch.setattr(SyntheticShapes, "validate", lambda self, *a, **k: validated.append(1))
    rc, out, err = cli(train_main, ["--resume", run, "--out", run, "--iters", "3",
                                    "--no-validate-data", "--no-progress"], capsys)
    assert rc == 0, err
    assert validated == []                            # the flag took effect
    assert json.loads(out.split("configuration:", 1)[1].splitlines()[0])["validate_data"] is False
    rc, out, err = cli(train_main, ["--resume", run, "--iters", "4", "--no-progress"], capsys)
    assert rc == 0, err
    assert validated == [1, 1]                        # the run's own choice: validate
