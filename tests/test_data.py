"""Datasets, palette, preprocessing and the batch loader.

The VOC and folder layouts are written by the tests themselves into ``tmp_path`` as tiny
JPEG/PNG files; every bad input is checked to raise a one-line ``DatasetError`` that names
the file at fault.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minifcn.data import (PRESETS, BatchLoader, DatasetError, FolderSegmentation,
                          SyntheticShapes, VOCSegmentation, colorize, deprocess, detect_layout,
                          get_preprocess, load_image, open_dataset, preprocess, read_mask,
                          save_mask_png, voc_palette)
from minifcn.data.folder import default_split


# ----------------------------------------------------------------------------- helpers

def write_image(path, array, **save_options):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **save_options)


def random_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def smooth_image(h, w):
    """An image JPEG keeps nearly intact (no high frequencies), to compare after loading."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), np.full((h, w), 90)], -1)


def blocky_mask(h, w, labels):
    """A mask with the given labels in vertical bands."""
    cols = np.arange(w) * len(labels) // w
    return np.asarray(labels, dtype=np.uint8)[cols][None, :].repeat(h, 0)


def make_voc(root, sizes=None, splits=None, labels=(0, 1, 15, 255)):
    """A VOC2012-layout directory; returns {id: (image, mask)} as written."""
    sizes = sizes or {"a": (10, 12), "b": (14, 9), "c": (8, 8)}
    splits = splits or {"train": ["a", "b"], "val": ["c"]}
    written = {}
    for i, (h, w) in sizes.items():
        image, mask = smooth_image(h, w), blocky_mask(h, w, labels)
        write_image(os.path.join(root, "JPEGImages", f"{i}.jpg"), image, quality=95)
        os.makedirs(os.path.join(root, "SegmentationClass"), exist_ok=True)
        save_mask_png(os.path.join(root, "SegmentationClass", f"{i}.png"), mask)
        written[i] = (image, mask)
    os.makedirs(os.path.join(root, "ImageSets", "Segmentation"), exist_ok=True)
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    return written


def make_folder(root, n=7, lists=None):
    """A folder-layout directory with n items of mixed formats; returns {stem: (image, mask)}."""
    rng = np.random.default_rng(0)
    exts = [".png", ".jpg", ".bmp", ".jpeg"]
    written = {}
    for k in range(n):
        stem, h, w = f"img{k:02d}", 6 + k, 9
        image = random_image(rng, h, w) if exts[k % 4] in (".png", ".bmp") else smooth_image(h, w)
        mask = blocky_mask(h, w, [0, 1 + k % 3, 255])
        write_image(os.path.join(root, "images", stem + exts[k % 4]), image)
        if k % 2:                      # grayscale and palette masks both work
            write_image(os.path.join(root, "masks", stem + ".png"), mask)
        else:
            os.makedirs(os.path.join(root, "masks"), exist_ok=True)
            save_mask_png(os.path.join(root, "masks", stem + ".png"), mask)
        written[stem] = (image, mask)
    for split, stems in (lists or {}).items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(stems) + "\n")
    return written


def assert_names(err, *paths):
    """The error is one line and names each of ``paths``."""
    message = str(err.value)
    assert "\n" not in message, message
    for p in paths:
        assert str(p) in message, f"{p} not named in: {message}"


class ListDataset:
    """A dataset of given (image, mask) pairs."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def coordinate_items(sizes):
    """Images whose R, G channels are the row and column (B = item number): after a crop
    or a flip, each output pixel tells where it came from. Mask = (row + col) % 7."""
    items = []
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([yy, xx, np.full((h, w), k)], -1).astype(np.uint8)
        items.append((image, ((yy + xx) % 7).astype(np.uint8)))
    return items


# ----------------------------------------------------------------------------- palette

def test_voc_palette_follows_the_bit_rule():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[4].tolist() == [0, 0, 128]
    assert pal[8].tolist() == [64, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]       # VOC "person"
    assert pal[255].tolist() == [224, 224, 192]      # void: cream
    assert len({tuple(c) for c in pal}) == 256


def test_colorize_maps_labels_to_palette_colours():
    mask = np.array([[0, 1], [255, 2]])
    rgb = colorize(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[1, 0].tolist() == [224, 224, 192] and rgb[0, 1].tolist() == [128, 0, 0]
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 3), int))


def test_mask_png_round_trip_palette_and_grayscale(tmp_path):
    mask = blocky_mask(5, 12, [0, 3, 20, 255])
    save_mask_png(tmp_path / "p.png", mask)
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), mask)
    write_image(str(tmp_path / "g.png"), mask)                       # mode 'L'
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), mask)


def raw_png(path, width, height, bit_depth, colour_type, samples):
    """A PNG written byte by byte (no PIL): ``samples`` (height, width[, channels]) ints,
    packed big-endian at ``bit_depth`` bits each, filter 0 on every row."""
    import struct
    import zlib
    rows = []
    for row in np.asarray(samples).reshape(height, -1):
        if bit_depth == 16:
            rows.append(b"\x00" + b"".join(struct.pack(">H", int(v)) for v in row))
        else:
            bits = "".join(format(int(v), f"0{bit_depth}b") for v in row)
            bits += "0" * (-len(bits) % 8)
            rows.append(b"\x00" + int(bits, 2).to_bytes(len(bits) // 8, "big"))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                           + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_grayscale_masks_of_every_bit_depth_read_as_their_samples(tmp_path, bits):
    """PIL stretches 2- and 4-bit grayscale to 0..255 (label 3 of a 2-bit mask would read
    as 255, "ignore"); the mask reader returns the stored samples at every depth."""
    samples = np.arange(2 * 5).reshape(2, 5) % min(2 ** bits, 256)
    raw_png(tmp_path / "m.png", 5, 2, bits, 0, samples)
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, samples)


def test_16_bit_images_keep_their_high_byte_grayscale_and_colour(tmp_path):
    """A 16-bit grayscale image used to come out almost white (PIL clips it at 255); now,
    like 16-bit colour, each sample is its high byte."""
    samples = np.array([[0x0000, 0x80FF, 0xFFFF], [0x1234, 0x00FF, 0x0100]])
    raw_png(tmp_path / "gray16.png", 3, 2, 16, 0, samples)
    np.testing.assert_array_equal(load_image(tmp_path / "gray16.png"),
                                  np.repeat((samples >> 8)[..., None], 3, axis=2))
    dark = np.array([[0x0000, 0x00C0], [0x0080, 0x00FF]])   # 16-bit, every value below 256
    raw_png(tmp_path / "dark16.png", 2, 2, 16, 0, dark)     # (the file says 16-bit: all 0)
    np.testing.assert_array_equal(load_image(tmp_path / "dark16.png"), np.zeros((2, 2, 3)))
    colour = np.stack([samples, samples[::-1], 0xFFFF - samples], axis=-1)
    raw_png(tmp_path / "rgb16.png", 3, 2, 16, 2, colour)
    np.testing.assert_array_equal(load_image(tmp_path / "rgb16.png"), colour >> 8)


def test_read_mask_refuses_a_colour_mask(tmp_path):
    write_image(str(tmp_path / "rgb.png"), colorize(blocky_mask(4, 4, [0, 1])))
    with pytest.raises(DatasetError) as err:
        read_mask(tmp_path / "rgb.png")
    assert_names(err, tmp_path / "rgb.png")


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_items_are_well_formed():
    ds = SyntheticShapes(6, size=(40, 56), seed=3)
    assert len(ds) == 6 and ds.num_classes == 4
    assert ds.class_names == ["background", "disc", "rectangle", "triangle"]
    image, mask = ds[0]
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert mask.shape == (40, 56) and mask.dtype == np.uint8
    assert mask.max() < 4
    with pytest.raises(IndexError):
        ds[6]
    np.testing.assert_array_equal(ds[-1][1], ds[5][1])


def test_synthetic_is_deterministic_and_item_wise_independent():
    a = SyntheticShapes(10, seed=7)
    b = SyntheticShapes(10, seed=7, cache=False)
    for i in reversed(range(10)):                     # a different order of generation
        for x, y in zip(a[i], b[i]):
            np.testing.assert_array_equal(x, y)
    c = SyntheticShapes(1000, seed=7)                 # the dataset's length does not matter
    np.testing.assert_array_equal(c[9][0], a[9][0])
    d = SyntheticShapes(10, seed=8)
    assert all(not np.array_equal(a[i][1], d[i][1]) for i in range(3))
    val = SyntheticShapes(10, seed=7, split="val")
    assert all(not np.array_equal(a[i][1], val[i][1]) for i in range(3))
    items = [a[i][1] for i in range(10)]
    assert len({m.tobytes() for m in items}) == 10


def test_synthetic_returns_copies():
    ds = SyntheticShapes(2)
    image, mask = ds[0]
    image[:] = 0
    mask[:] = 9
    assert ds[0][1].max() < 4 and ds[0][0].any()


def test_synthetic_has_every_class_and_colour_does_not_tell_the_class():
    ds = SyntheticShapes(24, seed=0, num_classes=6)
    means = {k: [] for k in range(1, 6)}
    for i in range(len(ds)):
        image, mask = ds[i]
        for k in range(1, 6):
            if (mask == k).sum() >= 20:
                means[k].append(image[mask == k].mean(axis=0))
    for k, colours in means.items():
        assert len(colours) >= 3, f"class {k} in only {len(colours)} of 24 images"
        spread = np.std(np.array(colours), axis=0).max()
        assert spread > 30, f"class {k}: the mean colour hardly varies (std {spread:.1f})"
    # Four classes (default): the three shapes show up within a few images.
    ds4 = SyntheticShapes(4, seed=0)
    present = set(np.unique(np.concatenate([ds4[i][1].ravel() for i in range(4)])).tolist())
    assert {1, 2, 3} <= present


def test_synthetic_background_is_textured_and_noise_is_a_knob():
    flat = SyntheticShapes(4, seed=1, noise=0, texture=0)
    textured = SyntheticShapes(4, seed=1, noise=0)
    noisy = SyntheticShapes(4, seed=1, noise=30)
    for i in range(4):
        (fi, fm), (ti, tm), (ni, nm) = flat[i], textured[i], noisy[i]
        np.testing.assert_array_equal(fm, nm)          # the knobs change the pixels, not the shapes
        np.testing.assert_array_equal(tm, nm)
        bg = fm == 0
        assert bg.mean() > 0.2                         # room for background
        # local roughness of the background: mean |difference| between horizontal neighbours
        def rough(image):
            d = np.abs(np.diff(image.astype(float), axis=1)).sum(-1)
            return d[bg[:, 1:] & bg[:, :-1]].mean()
        assert rough(fi) < rough(ti) < rough(ni)


@pytest.mark.parametrize("kwargs", [
    dict(num_images=0), dict(num_images=4, num_classes=7), dict(num_images=4, num_classes=1),
    dict(num_images=4, seed=-1), dict(num_images=4, noise=-1), dict(num_images=4, split="dev"),
    dict(num_images=4, size=(4, 64)), dict(num_images=4, rotation=200),
    dict(num_images=4, max_occlusion=1.5), dict(num_images=4, radius=(0.5, 0.2)),
    dict(num_images=4, objects=(0, 2)),
])
def test_synthetic_refuses_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticShapes(**kwargs)


def test_synthetic_scalar_arguments():
    """A scalar stands for (v, v): a fraction for ``radius`` (0.3 used to be refused as
    "must be a number"), an int for ``size`` and ``objects``, and the message says which."""
    assert SyntheticShapes(2, radius=0.3).radius == (0.3, 0.3)
    assert SyntheticShapes(2, size=np.int64(40), objects=2).size == (40, 40)
    for kwargs, match in ((dict(size=64.0), "size must be an int or a pair, got 64.0"),
                          (dict(objects=2.0), "objects must be an int or a pair"),
                          (dict(radius="0.3"), "radius must be a number or a pair"),
                          (dict(radius=("a", 0.4)), "radius must be fractions"),
                          (dict(radius=True), "radius must be a number or a pair")):
        with pytest.raises(ValueError, match=match):
            SyntheticShapes(2, **kwargs)


def test_open_dataset_synthetic():
    train = open_dataset("synthetic", "train", num_images=5, image_size=(32, 32), noise=5.0)
    val = open_dataset("synthetic", "val", num_images=5, image_size=(32, 32))
    assert isinstance(train, SyntheticShapes) and train.num_classes == 4 and len(train) == 5
    assert train[0][0].shape == (32, 32, 3)
    assert not np.array_equal(train[0][1], val[0][1])
    assert open_dataset("synthetic", num_classes=6, num_images=2).num_classes == 6


# ----------------------------------------------------------------------------- preprocessing

def test_caffe_preset_is_bgr_and_mean_subtracted():
    image = np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8)          # red, black
    x = preprocess(image, "caffe")
    assert x.shape == (3, 1, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [0 - 104.00698793, 0 - 116.66876762, 255 - 122.67891434], rtol=1e-6)
    np.testing.assert_allclose(x[:, 0, 1], [-104.00698793, -116.66876762, -122.67891434], rtol=1e-6)


def test_imagenet_and_simple_presets():
    image = np.array([[[255, 128, 0]]], np.uint8)
    x = preprocess(image, "imagenet")[:, 0, 0]
    want = (np.array([255, 128, 0]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x, want, rtol=1e-5)
    np.testing.assert_allclose(preprocess(image, "simple")[:, 0, 0], [0.5, 128 / 255 - 0.5, -0.5], atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_deprocess_inverts_preprocess(name):
    image = random_image(np.random.default_rng(0), 5, 7)
    np.testing.assert_array_equal(deprocess(preprocess(image, name), name), image)
    batch = np.stack([image, image[::-1]])
    pp = get_preprocess(name)
    assert pp(batch).shape == (2, 3, 5, 7)
    np.testing.assert_array_equal(pp.deprocess(pp(batch)), batch)
    mean_pixel = np.rint(pp.mean_rgb).astype(np.uint8)[None, None]
    assert np.abs(pp(mean_pixel)).max() < 0.01 * max(1.0, pp.scale * 255)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preprocessing"):
        get_preprocess("bgr")


# ----------------------------------------------------------------------------- VOC layout

def test_voc_layout_loads_with_splits(tmp_path):
    written = make_voc(tmp_path / "VOC2012")
    assert detect_layout(tmp_path / "VOC2012") == "voc"
    train = open_dataset(str(tmp_path / "VOC2012"), "train")
    assert isinstance(train, VOCSegmentation)
    assert train.ids == ["a", "b"] and len(train) == 2
    assert train.num_classes == 21 and train.class_names[15] == "person"
    for i, name in enumerate(train.ids):
        image, mask = train[i]
        want_image, want_mask = written[name]
        assert image.shape == want_image.shape and image.dtype == np.uint8
        np.testing.assert_array_equal(mask, want_mask)           # PNG: exact, 255 kept
        assert np.abs(image.astype(int) - want_image).mean() < 4  # JPEG: close
    val = open_dataset(tmp_path / "VOC2012", "val")
    assert val.ids == ["c"]
    assert train.validate() == 2


def test_voc_found_inside_vocdevkit(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    ds = open_dataset(str(tmp_path), "val")
    assert ds.ids == ["c"] and ds.root == str(tmp_path / "VOCdevkit" / "VOC2012")


def test_voc_missing_split_file_and_listed_id_without_file(tmp_path):
    make_voc(tmp_path, splits={"train": ["a", "zzz"], "val": ["c"]})
    with pytest.raises(DatasetError) as err:
        open_dataset(str(tmp_path), "train")
    assert_names(err, os.path.join(str(tmp_path), "JPEGImages", "zzz.jpg"), "train.txt")
    with pytest.raises(DatasetError) as err:
        open_dataset(str(tmp_path), "trainval")
    assert_names(err, "trainval.txt")


# ----------------------------------------------------------------------------- folder layout

def test_folder_layout_default_split(tmp_path):
    written = make_folder(tmp_path, n=7)
    assert detect_layout(tmp_path) == "folder"
    train = open_dataset(str(tmp_path), "train")
    val = open_dataset(str(tmp_path), "val")
    assert isinstance(train, FolderSegmentation)
    stems = sorted(written)
    assert val.ids == [stems[4]]                                  # every 5th stem
    assert train.ids == stems[:4] + stems[5:]
    assert train.num_classes == 4                                 # labels 0..3 in the masks
    for ds in (train, val):
        for i, stem in enumerate(ds.ids):
            image, mask = ds[i]
            want_image, want_mask = written[stem]
            np.testing.assert_array_equal(mask, want_mask)
            assert image.shape == want_image.shape
            if ds.image_paths[i].endswith((".png", ".bmp")):
                np.testing.assert_array_equal(image, want_image)
    assert open_dataset(str(tmp_path), "all").ids == stems


def test_folder_default_split_rule():
    stems = [f"s{k:02d}" for k in range(12)]
    assert default_split(stems, "val") == ["s04", "s09"]
    assert len(default_split(stems, "train")) == 10
    assert default_split(stems[:3], "val") == ["s02"]             # fewer than 5: the last one


def test_folder_layout_with_lists_and_class_names(tmp_path):
    make_folder(tmp_path, n=5, lists={"train": ["img03", "img00"], "val": ["img01"]})
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\nbird\nfish\n")
    train = FolderSegmentation(tmp_path, "train")
    assert train.ids == ["img03", "img00"]
    assert train.num_classes == 5 and train.class_names[1] == "cat"
    assert FolderSegmentation(tmp_path, "val").ids == ["img01"]
    with pytest.raises(DatasetError) as err:
        FolderSegmentation(tmp_path, "train", num_classes=3)
    assert_names(err, "classes.txt")


def test_folder_only_train_list_makes_val_the_rest(tmp_path):
    make_folder(tmp_path, n=4, lists={"train": ["img00", "img02"]})
    assert FolderSegmentation(tmp_path, "val").ids == ["img01", "img03"]


def test_folder_image_without_mask(tmp_path):
    make_folder(tmp_path, n=3)
    os.remove(tmp_path / "masks" / "img01.png")
    with pytest.raises(DatasetError) as err:
        open_dataset(str(tmp_path), "train")
    assert_names(err, os.path.join("masks", "img01.png"))


def test_folder_listed_stem_without_image(tmp_path):
    make_folder(tmp_path, n=3, lists={"train": ["img00", "ghost"], "val": ["img01"]})
    with pytest.raises(DatasetError) as err:
        open_dataset(str(tmp_path), "train")
    assert_names(err, "ghost", "train.txt")


# ----------------------------------------------------------------------------- bad inputs

def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError) as err:
        open_dataset(str(tmp_path / "nope"), "train")
    assert_names(err, tmp_path / "nope")
    assert "no such" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_directory_with_neither_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError) as err:
        open_dataset(str(tmp_path), "train")
    assert_names(err, tmp_path, "JPEGImages", "images/")


def test_an_empty_dataset_path_is_called_empty():
    """``--data ''`` said "error: : no such dataset directory"."""
    with pytest.raises(DatasetError, match="an empty path where the dataset directory"):
        open_dataset("", "train")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_is_named(tmp_path, damage):
    make_voc(tmp_path, sizes={"a": (40, 50), "b": (8, 8)}, splits={"train": ["a", "b"]})
    path = tmp_path / "JPEGImages" / "a.jpg"
    data = path.read_bytes()
    path.write_bytes({"garbage": b"this is not a jpeg" * 10, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    ds = open_dataset(str(tmp_path), "train")                   # lazy: opening still works
    ds[1]
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert_names(err, path)
    with pytest.raises(DatasetError) as err:
        ds.validate()
    assert_names(err, path)


def test_mask_size_mismatch_names_both_files_and_sizes(tmp_path):
    make_voc(tmp_path, sizes={"a": (10, 12)}, splits={"train": ["a"]})
    save_mask_png(tmp_path / "SegmentationClass" / "a.png", np.zeros((11, 12), np.uint8))
    ds = open_dataset(str(tmp_path), "train")
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert_names(err, tmp_path / "SegmentationClass" / "a.png", tmp_path / "JPEGImages" / "a.jpg",
                 "12x11", "12x10")


def test_out_of_range_labels_are_named(tmp_path):
    make_voc(tmp_path, sizes={"a": (6, 6)}, splits={"train": ["a"]}, labels=(0, 30, 255))
    ds = open_dataset(str(tmp_path), "train")
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert_names(err, tmp_path / "SegmentationClass" / "a.png", "30", "[0, 21)")
    assert open_dataset(str(tmp_path), "train", num_classes=31)[0][1].max() == 255  # 255 is fine
    make_folder(tmp_path / "f", n=2)                             # labels up to 2
    with pytest.raises(DatasetError) as err:
        FolderSegmentation(tmp_path / "f", "all", num_classes=2)[1]
    assert_names(err, os.path.join("masks", "img01.png"), "{2}")


def test_unreadable_mask_is_named(tmp_path):
    make_voc(tmp_path, sizes={"a": (6, 6)}, splits={"train": ["a"]})
    (tmp_path / "SegmentationClass" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError) as err:
        open_dataset(str(tmp_path), "train")[0]
    assert_names(err, tmp_path / "SegmentationClass" / "a.png")


# ----------------------------------------------------------------------------- batch loader

def test_batches_of_different_sizes_are_padded_with_zero_and_255():
    items = coordinate_items([(5, 7), (9, 4), (6, 6)])
    loader = BatchLoader(ListDataset(items), 3, shuffle=False)
    x, y = loader.next_batch()
    assert x.shape == (3, 3, 9, 7) and x.dtype == np.float32
    assert y.shape == (3, 9, 7) and y.dtype == np.int64
    for k, (image, mask) in enumerate(items):
        h, w = mask.shape
        np.testing.assert_array_equal(x[k, :, :h, :w], preprocess(image, "simple"))
        np.testing.assert_array_equal(y[k, :h, :w], mask)
        assert (y[k, h:] == 255).all() and (y[k, :, w:] == 255).all()
        assert (x[k, :, h:] == 0).all() and (x[k, :, :, w:] == 0).all()
    assert loader.epoch == 1 and loader.position == 0


def test_pad_multiple_rounds_the_batch_size_up():
    loader = BatchLoader(ListDataset(coordinate_items([(5, 7), (9, 4)])), 2, pad_multiple=8)
    x, y = loader.next_batch()
    assert x.shape[2:] == (16, 8)


def test_random_crop_of_large_images_is_a_window():
    items = coordinate_items([(20, 30), (25, 12)])
    loader = BatchLoader(ListDataset(items), 2, crop_size=(8, 10), shuffle=False, seed=5)
    starts = set()                                   # the first image's window corners
    for _ in range(4):
        x, y = loader.next_batch()
        assert x.shape == (2, 3, 8, 10)
        for k in range(2):
            image = deprocess(x[k], "simple")
            rows, cols = image[..., 0].astype(int), image[..., 1].astype(int)
            valid = y[k] != 255
            # wherever there is image, it is one contiguous window of the source
            r0, c0 = rows[valid].min(), cols[valid].min()
            top, left = np.argwhere(valid)[0]
            np.testing.assert_array_equal(rows[valid], (np.argwhere(valid)[:, 0] - top) + r0)
            np.testing.assert_array_equal(cols[valid], (np.argwhere(valid)[:, 1] - left) + c0)
            np.testing.assert_array_equal(y[k][valid], (rows[valid] + cols[valid]) % 7)
        assert (y[0] != 255).all()                   # 20x30 covers the whole 8x10 window
        assert (y[1] != 255).sum() == 8 * 10         # so does 25x12
        starts.add((int(deprocess(x[0], "simple")[0, 0, 0]), int(deprocess(x[0], "simple")[0, 0, 1])))
    assert len(starts) > 1                           # the windows are drawn, not fixed
    assert all(0 <= r0 <= 20 - 8 and 0 <= c0 <= 30 - 10 for r0, c0 in starts)


def test_crop_larger_than_image_pads_with_255():
    items = coordinate_items([(4, 5)])
    loader = BatchLoader(ListDataset(items), 1, crop_size=9, seed=1)
    seen_offsets = set()
    for _ in range(6):
        x, y = loader.next_batch()
        assert x.shape == (1, 3, 9, 9)
        valid = y[0] != 255
        assert valid.sum() == 4 * 5
        assert (x[0][:, ~valid] == 0).all()
        seen_offsets.add(tuple(np.argwhere(valid)[0]))
        image = deprocess(x[0], "simple")
        np.testing.assert_array_equal(image[valid].reshape(4, 5, 3), items[0][0])
    assert len(seen_offsets) > 1                     # the image lands at random places


def test_flips_are_random_and_move_image_and_mask_together():
    items = coordinate_items([(3, 6)] * 8)
    loader = BatchLoader(ListDataset(items), 8, flip=True, seed=2)
    flipped = 0
    for _ in range(3):
        x, y = loader.next_batch()
        for k in range(8):
            cols = deprocess(x[k], "simple")[..., 1].astype(int)
            rows = deprocess(x[k], "simple")[..., 0].astype(int)
            if cols[0, 0] == 5:
                flipped += 1
                np.testing.assert_array_equal(cols[0], np.arange(6)[::-1])
            else:
                np.testing.assert_array_equal(cols[0], np.arange(6))
            np.testing.assert_array_equal(y[k], (rows + cols) % 7)
    assert 4 <= flipped <= 20                        # of 24: about half
    no_flip = BatchLoader(ListDataset(items), 8, flip=False).next_batch()[0]
    assert (deprocess(no_flip, "simple")[:, 0, 0, 1] == 0).all()


def test_epochs_visit_every_item_once_in_a_seeded_order():
    ds = ListDataset(coordinate_items([(2, 2)] * 10))
    loader = BatchLoader(ds, 4, seed=0)
    assert len(loader) == 3
    orders = []
    for epoch in range(3):
        assert loader.epoch == epoch
        seen = []
        for x, y in loader:                          # the rest of the epoch
            seen += loader.last_indices
        assert sorted(seen) == list(range(10)) and len(seen) == 10
        orders.append(seen)
    assert orders[0] != orders[1]
    again = BatchLoader(ds, 4, seed=0)
    assert [i for _ in range(3) for i in (again.next_batch(), again.last_indices)[1]] == orders[0]
    plain = BatchLoader(ds, 4, shuffle=False)
    plain.next_batch()
    assert plain.last_indices == [0, 1, 2, 3]


def test_drop_last():
    ds = ListDataset(coordinate_items([(2, 2)] * 10))
    loader = BatchLoader(ds, 4, drop_last=True)
    assert len(loader) == 2
    sizes = [loader.next_batch()[0].shape[0] for _ in range(5)]
    assert sizes == [4] * 5 and loader.epoch == 2
    with pytest.raises(ValueError, match="no batch"):
        BatchLoader(ds, 11, drop_last=True)


def test_resume_from_state_dict_gives_the_same_batches():
    sizes = [(7 + k % 3, 9 + k % 4) for k in range(7)]
    ds = ListDataset(coordinate_items(sizes))
    options = dict(seed=11, crop_size=(8, 8), flip=True, preprocess="caffe")
    first = BatchLoader(ds, 3, **options)
    for _ in range(4):                               # into the second epoch
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    expected = [first.next_batch() for _ in range(6)]   # crosses more epoch boundaries
    resumed = BatchLoader(ds, 3, **options)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position, resumed.iteration) == (state["epoch"], state["position"], 4)
    for want, got in zip(expected, (resumed.next_batch() for _ in range(6))):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert resumed.state_dict() == first.state_dict()


def test_resume_without_crop_on_synthetic_data():
    ds = SyntheticShapes(9, size=(16, 16), seed=4)
    first = BatchLoader(ds, 4, flip=True, seed=3)
    first.next_batch()
    state = first.state_dict()
    want = [first.next_batch() for _ in range(3)]
    resumed = BatchLoader(ds, 4, flip=True, seed=3)
    resumed.load_state_dict(state)
    for (wx, wy), (gx, gy) in zip(want, (resumed.next_batch() for _ in range(3))):
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


def test_load_state_dict_refuses_a_state_for_other_data():
    ds = ListDataset(coordinate_items([(2, 2)] * 6))
    state = BatchLoader(ds, 2).state_dict()
    with pytest.raises(ValueError, match="6 items"):
        BatchLoader(ListDataset(coordinate_items([(2, 2)] * 5)), 2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(ds, 3).load_state_dict(state)
    with pytest.raises(ValueError, match="not a BatchLoader state"):
        BatchLoader(ds, 2).load_state_dict({"epoch": 1})


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=2, crop_size=(0, 4)), "crop_size"),
    (dict(batch_size=2, preprocess="nope"), "unknown preprocessing"),
    (dict(batch_size=2, seed=-3), "seed"),
])
def test_batch_loader_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchLoader(ListDataset(coordinate_items([(2, 2)] * 3)), **kwargs)
    with pytest.raises(ValueError, match="empty"):
        BatchLoader(ListDataset([]), 1)
