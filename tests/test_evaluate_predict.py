"""``python -m minifcn.evaluate`` and ``python -m minifcn.predict`` on a tiny trained run.

The metrics are recomputed here from scratch: the model's own argmax predictions for each
validation image, the labels read with PIL, a confusion matrix counted with np.bincount,
and the paper's four definitions written out with loops.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minifcn import io
from minifcn.cli import run_main
from minifcn.data import SyntheticShapes, save_mask_png
from minifcn.evaluate import main as evaluate_main
from minifcn.models import MODELS
from minifcn.predict import main as predict_main
from minifcn.training import Run, TrainConfig

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4
WIDTH = 0.0625
SIZES = [(40, 40), (36, 44), (44, 36), (40, 48),      # train
         (37, 45), (48, 33), (41, 41)]                # val: odd sizes, one of them a .jpg
VAL = ["img4", "img5", "img6"]


def python_m(module, args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True)


def cli(main, args, capsys):
    try:
        rc = run_main(main, [str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder dataset (void pixels, odd sizes, png and jpg) and a 150-iteration run on it."""
    root = tmp_path_factory.mktemp("evalpred")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i, (h, w) in enumerate(SIZES):
        image, mask = SyntheticShapes(1, size=(h, w), seed=50 + i)[0]
        mask[:, :2] = 255                                        # void columns
        ext = ".jpg" if i == 5 else ".png"
        Image.fromarray(image).save(data / "images" / f"img{i}{ext}")
        save_mask_png(data / "masks" / f"img{i}.png", mask)
    # the validation images are trained on too, so that the network predicts every class
    # there (the checks below then see more than background)
    (data / "train.txt").write_text("".join(f"img{i}\n" for i in range(len(SIZES))))
    (data / "val.txt").write_text("\n".join(VAL) + "\n")
    run = root / "run"
    Run(TrainConfig(data=str(data), width=WIDTH, batch_size=2, iters=150, val_every=150,
                    warmup=5, lr=3e-3, pictures=0, progress=False, out=str(run)),
        log=lambda *a: None).train()
    return data, run


def own_model(checkpoint):
    """The checkpoint's model, rebuilt from its metadata and loaded here."""
    arrays, meta = io.load(checkpoint, with_meta=True)
    spec = meta["model"]
    model = MODELS[spec["name"]](num_classes=spec["num_classes"], geometry=spec["geometry"],
                                 width=spec["width"], dropout=0.0)
    model.load_state_dict(arrays)
    return model.eval()


def own_predict(model, image):
    """argmax of the logits, the input preprocessed as 'simple': RGB / 255 - 0.5."""
    x = (image.astype(np.float32) * np.float32(1 / 255) - np.float32(0.5)).transpose(2, 0, 1)
    logits = model.forward(np.ascontiguousarray(x[None]))
    assert logits.shape == (1, NUM_CLASSES) + image.shape[:2]
    return np.asarray(logits).argmax(axis=1)[0]


def image_path(data, stem):
    return next((data / "images").glob(f"{stem}.*"))


def hand_metrics(preds, labels, k):
    cm = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(preds, labels):              # pixel by pixel (the code bins by index)
        for truth, guess in zip(t.ravel().tolist(), p.ravel().tolist()):
            if truth != 255:
                cm[truth, guess] += 1
    total = cm.sum()
    iou, acc = [], []
    for i in range(k):
        truth, predicted, hit = cm[i, :].sum(), cm[:, i].sum(), cm[i, i]
        union = truth + predicted - hit
        iou.append(hit / union if union else None)        # absent from both: left out
        if truth:
            acc.append(hit / truth)
    present = [v for v in iou if v is not None]
    return {
        "pixel_acc": np.trace(cm) / total,
        "mean_acc": sum(acc) / len(acc),
        "mean_iou": sum(present) / len(present),
        "fw_iou": sum(cm[i].sum() * iou[i] for i in range(k) if iou[i] is not None) / total,
        "per_class_iou": iou,
    }, cm


def _compare(got, ref):
    assert set(got) == set(ref)
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key
    assert len(got["per_class_iou"]) == len(ref["per_class_iou"])
    for g, r in zip(got["per_class_iou"], ref["per_class_iou"]):
        assert (g is None) == (r is None)
        if r is not None:
            assert g == pytest.approx(r, rel=1e-12)


def test_evaluate_matches_hand_computed_confusion_matrix(trained, tmp_path):
    data, run = trained
    out_json = tmp_path / "val.json"
    r = python_m("minifcn.evaluate", ["--checkpoint", run / "best.npz", "--data", data,
                                      "--json", out_json])
    assert r.returncode == 0, r.stderr
    for label in ("pixel acc.", "mean acc.", "mean IU", "f.w. IU"):
        assert label in r.stdout
    got = json.loads(out_json.read_text())

    model = own_model(run / "best.npz")
    preds, labels = [], []
    for stem in VAL:
        image = np.asarray(Image.open(image_path(data, stem)).convert("RGB"))
        labels.append(np.array(Image.open(data / "masks" / f"{stem}.png")))
        preds.append(own_predict(model, image))
    ref, cm = hand_metrics(preds, labels, NUM_CLASSES)
    assert cm.sum() == sum(h * (w - 2) for h, w in SIZES[4:])     # void pixels not counted
    _compare(got, ref)
    # the printed numbers are these numbers
    assert f"mean IU     {ref['mean_iou']:6.4f}" in r.stdout
    assert f"pixel acc.  {ref['pixel_acc']:6.4f}" in r.stdout


def test_evaluate_weights_without_metadata_need_model_flags(trained, tmp_path, capsys):
    data, run = trained
    plain = tmp_path / "plain.npz"
    io.save(plain, io.load(run / "best.npz"))                # the weights, no description
    rc, out, err = cli(evaluate_main, ["--checkpoint", plain, "--data", data], capsys)
    assert_one_line_error(rc, err, plain, "--model")
    out_json = tmp_path / "plain.json"
    rc, out, err = cli(evaluate_main, ["--checkpoint", plain, "--data", data, "--model", "fcn8s",
                                       "--num-classes", NUM_CLASSES, "--geometry", "notes",
                                       "--width", WIDTH, "--preprocess", "simple",
                                       "--json", out_json], capsys)
    assert rc == 0, err
    with_meta = tmp_path / "meta.json"
    assert cli(evaluate_main, ["--checkpoint", run / "best.npz", "--data", data,
                               "--json", with_meta], capsys)[0] == 0
    assert json.loads(out_json.read_text()) == json.loads(with_meta.read_text())


def test_evaluate_bad_inputs(trained, tmp_path, capsys):
    data, run = trained
    best = run / "best.npz"
    # a checkpoint that does not fit the model asked for
    rc, out, err = cli(evaluate_main, ["--checkpoint", best, "--data", data, "--num-classes", 5],
                       capsys)
    assert_one_line_error(rc, err, best, "does not fit")
    rc, out, err = cli(evaluate_main, ["--checkpoint", best, "--data", data, "--width", WIDTH / 2],
                       capsys)
    assert_one_line_error(rc, err, best, "shape mismatch")
    # not a weight file; a missing one; a missing dataset
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    rc, out, err = cli(evaluate_main, ["--checkpoint", junk, "--data", data], capsys)
    assert_one_line_error(rc, err, junk)
    rc, out, err = cli(evaluate_main, ["--checkpoint", tmp_path / "nope.npz", "--data", data],
                       capsys)
    assert_one_line_error(rc, err, tmp_path / "nope.npz")
    rc, out, err = cli(evaluate_main, ["--checkpoint", best, "--data", tmp_path / "nodata"], capsys)
    assert_one_line_error(rc, err, tmp_path / "nodata", "no such")
    # labels outside [0, num_classes) in the split evaluated
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "images" / "x.png")
    save_mask_png(bad / "masks" / "x.png", np.full((8, 8), 7, np.uint8))
    (bad / "val.txt").write_text("x\n")
    rc, out, err = cli(evaluate_main, ["--checkpoint", best, "--data", bad], capsys)
    assert_one_line_error(rc, err, bad / "masks" / "x.png", "outside [0, 4)")


def test_evaluate_checks_its_json_path_before_evaluating(trained, tmp_path, capsys):
    """A --json that cannot be written is refused at the start, naming the path given (it
    used to fail after the whole evaluation, naming a .tmp file, and leave that behind)."""
    data, run = trained
    best = run / "best.npz"
    for target, why in ((tmp_path / "no" / "such" / "v.json", "does not exist"),
                        (run, "is a directory")):
        before = sorted(os.listdir(tmp_path)), sorted(os.listdir(run))
        rc, out, err = cli(evaluate_main, ["--checkpoint", best, "--data", data, "--json", target],
                           capsys)
        assert_one_line_error(rc, err, f"--json {target}", why)
        assert out == ""                                   # nothing was evaluated
        assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(run))) == before


@pytest.mark.parametrize("flags,message", [(["--image-size", "0"], "--image-size must be at least 8"),
                                           (["--image-size", "4"], "--image-size must be at least 8"),
                                           (["--num-images", "0"], "--num-images must be positive")])
def test_evaluate_synthetic_flags_are_named(trained, capsys, flags, message):
    data, run = trained
    rc, out, err = cli(evaluate_main, ["--checkpoint", run / "best.npz", "--data", "synthetic",
                                       *flags], capsys)
    assert rc == 2 and message in err, err


def test_predict_gives_inputs_that_share_a_name_their_own_outputs(trained, tmp_path, capsys):
    """a.png from two folders (and a.jpg beside them): three different pairs of files, each
    the prediction of its own image — none overwrites another."""
    from minifcn.predict import output_stems
    assert output_stems(["d1/a.png", "d2/a.png", "d1/a.jpg", "b.png", "a_png-2.png"]) == \
        ["a_png", "a_png-3", "a_jpg", "b", "a_png-2"]       # a later input's own name is kept
    assert output_stems(["x/a.png", "x/a.png"]) == ["a_png", "a_png-2"]
    data, run = trained
    sizes = {"d1/a.png": (20, 30), "d2/a.png": (26, 18), "d1/a.jpg": (16, 24)}
    for name, (h, w) in sizes.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    rc, stdout, err = cli(predict_main, ["--checkpoint", run / "best.npz",
                                         *[tmp_path / n for n in sizes], "--out", out], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == sorted(f"{s}_{kind}.png" for s in ("a_png", "a_png-2", "a_jpg")
                                             for kind in ("mask", "overlay"))
    for stem, (h, w) in zip(("a_png", "a_png-2", "a_jpg"), sizes.values()):
        with Image.open(out / f"{stem}_mask.png") as im:
            assert im.size == (w, h), stem


VOC_COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]


def test_predict_writes_masks_and_overlays_of_each_images_size(trained, tmp_path):
    data, run = trained
    images = {}
    for name, stem in (("photo.jpg", "img4"), ("scan.png", "img5")):   # 37x45 and 48x33
        image = np.asarray(Image.open(image_path(data, stem)).convert("RGB"))
        Image.fromarray(image).save(tmp_path / name)
        images[name] = np.asarray(Image.open(tmp_path / name).convert("RGB"))
    out = tmp_path / "masks"
    r = python_m("minifcn.predict", ["--checkpoint", run / "best.npz", tmp_path / "photo.jpg",
                                     tmp_path / "scan.png", "--out", out])
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["photo_mask.png", "photo_overlay.png", "scan_mask.png",
                                       "scan_overlay.png"]
    model = own_model(run / "best.npz")
    for name, image in images.items():
        stem = Path(name).stem
        h, w = image.shape[:2]
        with Image.open(out / f"{stem}_mask.png") as im:
            assert im.format == "PNG" and im.mode == "P" and im.size == (w, h)
            mask = np.array(im)
            palette = np.asarray(im.getpalette()[:3 * NUM_CLASSES]).reshape(-1, 3)
        assert [tuple(c) for c in palette] == VOC_COLOURS
        assert mask.min() >= 0 and mask.max() < NUM_CLASSES
        np.testing.assert_array_equal(mask, own_predict(model, image))
        with Image.open(out / f"{stem}_overlay.png") as im:
            assert im.mode == "RGB" and im.size == (w, h)
            overlay = np.asarray(im).astype(int)
        bg = mask == 0
        np.testing.assert_array_equal(overlay[bg], image[bg])
        colours = np.asarray(VOC_COLOURS)[mask]
        blend = 0.5 * image + 0.5 * colours
        assert np.abs(overlay[~bg] - blend[~bg]).max() <= 1
        assert f"{stem}_mask.png" in r.stdout
    # the network is not predicting one class everywhere (the overlay checks meant something)
    assert len(np.unique(np.concatenate([np.array(Image.open(out / f"{Path(n).stem}_mask.png")).ravel()
                                         for n in images]))) > 1


def test_predict_bad_inputs(trained, tmp_path, capsys):
    data, run = trained
    best = run / "best.npz"
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(good)
    out = tmp_path / "out"

    missing = tmp_path / "missing.jpg"
    rc, _, err = cli(predict_main, ["--checkpoint", best, good, missing, "--out", out], capsys)
    assert_one_line_error(rc, err, missing, "not found")
    assert not out.exists()                       # nothing written before every image was read

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rc, _, err = cli(predict_main, ["--checkpoint", best, good, corrupt, "--out", out], capsys)
    assert_one_line_error(rc, err, corrupt, "cannot read the image")
    assert not out.exists()

    plain = tmp_path / "plain.npz"
    io.save(plain, io.load(best))
    rc, _, err = cli(predict_main, ["--checkpoint", plain, good, "--out", out], capsys)
    assert_one_line_error(rc, err, plain, "--model")
    assert not out.exists()
    rc, _, err = cli(predict_main, ["--checkpoint", plain, good, "--out", out, "--model", "fcn8s",
                                    "--num-classes", NUM_CLASSES, "--geometry", "notes",
                                    "--width", WIDTH, "--preprocess", "simple"], capsys)
    assert rc == 0, err
    with Image.open(out / "good_mask.png") as im:
        assert im.size == (30, 20)

    rc, _, err = cli(predict_main, ["--checkpoint", best, good, "--out", out,
                                    "--num-classes", 3], capsys)
    assert_one_line_error(rc, err, best, "does not fit")


def test_predict_checks_its_out_directory_before_predicting(trained, tmp_path, capsys,
                                                            monkeypatch):
    """An --out that is a file, or lies under one, is refused at the start with the flag
    named (it used to be a bare "[Errno 17] File exists" after loading every image); a
    missing --out is made."""
    import minifcn.predict as predict_module
    data, run = trained
    best = run / "best.npz"
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(good)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    loaded = []
    real = predict_module.load_checkpoint_model
    monkeypatch.setattr(predict_module, "load_checkpoint_model",
                        lambda *a, **k: loaded.append(1) or real(*a, **k))
    for target, why in ((afile, "is a file; give a directory"),
                        (afile / "sub", "is not a directory"),
                        ("", "--out is empty")):
        rc, out, err = cli(predict_main, ["--checkpoint", best, good, "--out", target], capsys)
        assert_one_line_error(rc, err, f"--out {target}", why)
        assert loaded == [] and out == ""
        assert afile.read_text() == "keep me"
    nested = tmp_path / "new" / "masks"
    rc, out, err = cli(predict_main, ["--checkpoint", best, good, "--out", nested], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(nested)) == ["good_mask.png", "good_overlay.png"]


def test_evaluate_refuses_a_json_that_is_its_checkpoint_or_cannot_be_made(trained, tmp_path,
                                                                          capsys):
    """--json equal to --checkpoint (as given, or by another path to the same file) used
    to replace the weights with the metrics; a folder that takes no new files (/proc,
    where root's permission bits say yes) failed after the evaluation."""
    data, run = trained
    best = tmp_path / "best.npz"
    best.write_bytes((run / "best.npz").read_bytes())
    weights = best.read_bytes()
    (tmp_path / "link.npz").symlink_to(best)
    for target in (best, tmp_path / "link.npz", tmp_path / "." / "best.npz"):
        rc, out, err = cli(evaluate_main, ["--checkpoint", best, "--data", data, "--json", target],
                           capsys)
        assert_one_line_error(rc, err, f"--json {target}", "the file given as --checkpoint")
        assert out == "" and best.read_bytes() == weights
    # the atomic write goes through <json>.tmp first: a checkpoint there is refused too
    tmp_ckpt = tmp_path / "w.json.tmp"
    tmp_ckpt.write_bytes(weights)
    rc, out, err = cli(evaluate_main, ["--checkpoint", tmp_ckpt, "--data", data,
                                       "--json", tmp_path / "w.json"], capsys)
    assert_one_line_error(rc, err, f"replace {tmp_ckpt}", "the file given as --checkpoint")
    assert tmp_ckpt.read_bytes() == weights and not (tmp_path / "w.json").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".write-check-")]
    if os.path.isdir("/proc"):
        rc, out, err = cli(evaluate_main, ["--checkpoint", best, "--data", data,
                                           "--json", "/proc/metrics.json"], capsys)
        assert_one_line_error(rc, err, "--json /proc/metrics.json", "cannot write in /proc")
        assert out == ""


def test_evaluate_refuses_synthetic_only_flags_on_a_dataset(trained, capsys):
    """--image-size, --num-images and --seed shape the synthetic data only; on a dataset
    directory they used to be ignored without a word."""
    data, run = trained
    for flag, value in (("--image-size", "32"), ("--num-images", "2"), ("--seed", "3")):
        rc, out, err = cli(evaluate_main, ["--checkpoint", run / "best.npz", "--data", data,
                                           flag, value], capsys)
        assert rc == 2 and flag in err and "--data synthetic only" in err, err
        assert out == ""


def test_evaluate_and_predict_refuse_non_finite_weights(trained, tmp_path, capsys):
    """A checkpoint with a NaN used to evaluate to 'everything is background' and exit 0."""
    data, run = trained
    arrays, meta = io.load(run / "best.npz", with_meta=True)
    name = sorted(arrays)[0]
    arrays[name] = arrays[name].astype(np.float32)
    arrays[name].flat[0] = np.nan
    bad = tmp_path / "bad.npz"
    io.save(bad, arrays, meta=meta)
    rc, out, err = cli(evaluate_main, ["--checkpoint", bad, "--data", data], capsys)
    assert_one_line_error(rc, err, bad, f"{name!r} holds inf or NaN")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(good)
    rc, out, err = cli(predict_main, ["--checkpoint", bad, good, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, bad, "holds inf or NaN")
    assert not (tmp_path / "o").exists()


def test_predict_never_writes_over_an_input_and_over_old_outputs_only_when_asked(
        trained, tmp_path, capsys):
    """``a_mask.png`` given as an input beside ``a.png``, with ``--out`` their folder: the
    mask predicted for a.png used to replace it (read as an input a moment before). Now
    any file already at an output path is refused, naming it, unless --overwrite; and
    even then an input is never written over. Nothing is written by a refused call."""
    data, run = trained
    best = run / "best.npz"
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((20, 30, 3), 50, np.uint8)).save(folder / "a_mask.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for extra in ([], ["--overwrite"]):
        rc, out, err = cli(predict_main, ["--checkpoint", best, folder / "a.png",
                                          folder / "a_mask.png", "--out", folder, *extra], capsys)
        assert_one_line_error(rc, err, folder / "a_mask.png", "would replace an IMAGE")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # outputs of an earlier call: kept unless --overwrite
    out_dir = tmp_path / "out"
    args = ["--checkpoint", best, folder / "a.png", "--out", out_dir]
    assert cli(predict_main, args, capsys)[0] == 0
    (out_dir / "a_overlay.png").write_bytes(b"my edited overlay")
    rc, out, err = cli(predict_main, args, capsys)
    assert_one_line_error(rc, err, out_dir / "a_mask.png", "already exists", "--overwrite")
    assert (out_dir / "a_overlay.png").read_bytes() == b"my edited overlay"
    rc, out, err = cli(predict_main, [*args, "--overwrite"], capsys)
    assert rc == 0, err
    with Image.open(out_dir / "a_overlay.png") as im:
        assert im.size == (30, 20)


def test_predict_overwrite_replaces_a_link_not_its_target(trained, tmp_path, capsys):
    """An output name that is a symbolic link to a file elsewhere: --overwrite replaces the
    link with the new mask (each output is written beside its name, then moved over it),
    and the file it pointed to keeps its bytes. Without --overwrite, even a dangling link
    counts as a file already there."""
    data, run = trained
    best = run / "best.npz"
    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(tmp_path / "a.png")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "a_mask.png").symlink_to(precious)
    (out_dir / "a_overlay.png").symlink_to(tmp_path / "nowhere.png")           # dangling
    args = ["--checkpoint", best, tmp_path / "a.png", "--out", out_dir]
    rc, out, err = cli(predict_main, args, capsys)
    assert_one_line_error(rc, err, out_dir / "a_mask.png", "already exists")
    rc, out, err = cli(predict_main, [*args, "--overwrite"], capsys)
    assert rc == 0, err
    assert precious.read_text() == "keep me" and not (tmp_path / "nowhere.png").exists()
    for name in ("a_mask.png", "a_overlay.png"):
        assert not (out_dir / name).is_symlink()
        with Image.open(out_dir / name) as im:
            assert im.size == (30, 20)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_mask.png", "a_overlay.png"]


def test_predict_refuses_a_directory_in_an_outputs_place_before_writing(trained, tmp_path,
                                                                         capsys):
    """Two images, the second one's mask name taken by a folder: refused before the first
    image's outputs are written (it used to fail half-way with 'Is a directory')."""
    data, run = trained
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(tmp_path / name)
    out_dir = tmp_path / "out"
    (out_dir / "b_mask.png").mkdir(parents=True)
    rc, out, err = cli(predict_main, ["--checkpoint", run / "best.npz", tmp_path / "a.png",
                                      tmp_path / "b.png", "--out", out_dir, "--overwrite"], capsys)
    assert_one_line_error(rc, err, "--out", out_dir / "b_mask.png", "is a directory")
    assert sorted(p.name for p in out_dir.iterdir()) == ["b_mask.png"]


def test_predict_refuses_more_classes_than_a_mask_holds(tmp_path, capsys):
    """Masks are uint8 with 255 the ignore label: a 300-class model's class 299 would be
    written as 43. predict() and the command refuse such a model, naming the limit."""
    from minifcn.predict import MAX_CLASSES, predict
    model = MODELS["fcn32s"](num_classes=300, geometry="notes", width=0.02, dropout=0.0)
    image = np.full((20, 24, 3), 100, np.uint8)
    with pytest.raises(ValueError, match=f"300 classes.*at most {MAX_CLASSES}"):
        predict(model, image, "simple")
    ckpt = tmp_path / "big.npz"
    io.save(ckpt, model.state_dict(), meta={"model": {
        "name": "fcn32s", "num_classes": 300, "geometry": "notes", "width": 0.02,
        "preprocess": "simple"}})
    Image.fromarray(image).save(tmp_path / "a.png")
    rc, out, err = cli(predict_main, ["--checkpoint", ckpt, tmp_path / "a.png",
                                      "--out", tmp_path / "out"], capsys)
    assert_one_line_error(rc, err, "300 classes", f"at most {MAX_CLASSES}")
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_json_inside_the_dataset(trained, tmp_path, capsys):
    """--json naming one of the dataset's own files (a mask, a list) used to replace it
    with the metrics; any path inside the dataset directory is now refused before the
    evaluation, and the file keeps its bytes."""
    data, run = trained
    for target in (data / "masks" / "img4.png", data / "val.txt", data / "new.json"):
        before = target.read_bytes() if target.exists() else None
        rc, out, err = cli(evaluate_main, ["--checkpoint", run / "best.npz", "--data", data,
                                           "--json", target], capsys)
        assert_one_line_error(rc, err, f"--json {target}", "inside the dataset directory")
        assert (target.read_bytes() if target.exists() else None) == before
