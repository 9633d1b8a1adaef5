"""Pretrained weights: a torchvision-style VGG16 transplanted into the FCN backbone, and the
PyTorch port's FCN state dict loaded as it is — both saved by ``torch.save`` here and read
back with ``minifcn.io.load`` (which never imports torch).

torchvision is not installed, so its VGG16 is written out below with the same module
indices (``features.0`` ... ``features.28``, ``classifier.0``/``classifier.3``). The full
width VGG16 has 138M parameters; the file builds it once, and one full-width FCN of each
geometry. Those tests are marked ``slow`` (about 20 s together); the PyTorch-port
tests use a width-1/16 network and are quick.
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from minifcn import io
from minifcn.data import SyntheticShapes
from minifcn.models import FCN8s, FCN32s
from minifcn.training import Run, TrainConfig

torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional

try:                                        # pytest puts tests/ on sys.path ("prepend")
    from test_models import TorchFCN
except ImportError:                         # run from the repository root as a package
    from tests.test_models import TorchFCN

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

# Everything that touches the full-width VGG16 (a 550 MB file, 138M-parameter models):
# about 20 s together on 2 cores.
SLOW = pytest.mark.slow


class TorchVGG16(tnn.Module):
    """torchvision.models.vgg16's layout: features (13 convs, ReLUs, 5 max pools at 4, 9,
    16, 23, 30), avgpool (7x7 adaptive: the identity at 224x224), classifier."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512, "M"]:
            if v == "M":
                layers.append(tnn.MaxPool2d(2, 2))
            else:
                layers += [tnn.Conv2d(c_in, v, 3, padding=1), tnn.ReLU(inplace=True)]
                c_in = v
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Sequential(
            tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(4096, 1000))


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """A randomly initialised VGG16 (He-normal convs, so activations keep their scale
    through 13 layers; non-zero biases), saved with torch.save as a state dict."""
    torch.manual_seed(0)
    net = TorchVGG16().eval()
    with torch.no_grad():
        for m in net.features:
            if isinstance(m, tnn.Conv2d):
                tnn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(net.state_dict(), path)
    return net, path, io.load(path)          # read once: 550 MB


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@SLOW
def test_vgg16_file_reads_back_equal(vgg):
    """The reference has torchvision's indices, and the .pth reads back exactly."""
    net, _, weights = vgg
    sd = net.state_dict()
    names = [k for k in sd if k.endswith(".weight")]
    assert names == [f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24,
                                                      26, 28)] + \
        ["classifier.0.weight", "classifier.3.weight", "classifier.6.weight"]
    assert set(weights) == set(sd)
    for k in ("features.0.weight", "features.28.bias", "classifier.0.weight"):
        assert weights[k].dtype == np.float32 and weights[k].shape == tuple(sd[k].shape)
        assert np.array_equal(weights[k], sd[k].numpy()), k


@SLOW
def test_vgg16_transplant_notes_geometry_reproduces_features(vgg):
    """FCN-32s in the notes' geometry with VGG16 loaded: its pool5 for a 224x224 input is
    torchvision's ``features(x)``; and its 1x1 fc6 (the 49 taps of the 7x7 fc6 summed)
    gives the classifier's first Linear layer on a spatially constant pool5 map."""
    net, _, weights = vgg
    model = FCN32s(num_classes=21, geometry="notes", width=1.0, dropout=0.5)
    model.load_vgg16(weights)
    model.eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    seen = {}
    model.forward(x, hook=lambda name, value: seen.__setitem__(name, np.array(value))
                  if name in ("pool5", "fc6", "fc7") else None)
    with torch.no_grad():
        ref = net.features(torch.from_numpy(x)).numpy()
    assert seen["pool5"].shape == ref.shape == (1, 512, 7, 7)
    assert _rel(seen["pool5"], ref) < 1e-4

    # fc6 as a 1x1 convolution: exact for a pool5 map that is the same at every position
    v = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    const = np.broadcast_to(v[None, :, None, None], (1, 512, 7, 7)).copy()
    y = model.layers["fc6"].forward(const)
    with torch.no_grad():
        ref6 = net.classifier[0](torch.from_numpy(const).flatten(1)).numpy()
    assert y.shape == (1, 4096, 7, 7)
    assert _rel(y[0, :, 3, 3], ref6[0]) < 1e-4
    assert _rel(y[0, :, 0, 6], ref6[0]) < 1e-4
    # fc7 is the second Linear layer, as a 1x1 convolution, at every position
    h = np.maximum(seen["fc6"], 0)
    with torch.no_grad():
        ref7 = net.classifier[3](torch.from_numpy(h[0, :, 2, 5][None].copy())).numpy()
    assert _rel(model.layers["fc7"].forward(h)[0, :, 2, 5], ref7[0]) < 1e-4
    # nothing outside the backbone changed: the score layer is still zero, upscore bilinear
    assert not model.params["score_fr.weight"].any()


@SLOW
def test_vgg16_transplant_paper_geometry_fc6_is_the_linear_layer(vgg):
    """FCN-8s in the paper's geometry with VGG16 loaded: the 13 convolutions are
    torchvision's, and on a 7x7 pool5 window fc6 (7x7 conv) and fc7 (1x1) compute the
    classifier's first two Linear layers."""
    net, _, weights = vgg
    model = FCN8s(num_classes=21, geometry="paper", width=1.0)
    model.load_vgg16(weights)
    sd = net.state_dict()
    convs = [f"conv{s}_{i}" for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
    for name, idx in zip(convs, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)):
        np.testing.assert_array_equal(model.params[f"{name}.weight"], sd[f"features.{idx}.weight"])
        np.testing.assert_array_equal(model.params[f"{name}.bias"], sd[f"features.{idx}.bias"])

    p = np.random.default_rng(2).standard_normal((1, 512, 7, 7)).astype(np.float32)
    y6 = model.layers["fc6"].forward(p)
    with torch.no_grad():
        ref6 = net.classifier[0](torch.from_numpy(p).flatten(1)).numpy()
    assert y6.shape == (1, 4096, 1, 1)
    assert _rel(y6[:, :, 0, 0], ref6) < 1e-4
    h = np.maximum(y6, 0)
    y7 = model.layers["fc7"].forward(h)
    with torch.no_grad():
        ref7 = net.classifier[3](torch.relu(torch.from_numpy(ref6))).numpy()
    assert _rel(y7[:, :, 0, 0], ref7) < 1e-4
    # on a larger pool5 map fc6 slides: each 7x7 window is the Linear layer at its place
    big = np.random.default_rng(3).standard_normal((1, 512, 9, 8)).astype(np.float32)
    y = model.layers["fc6"].forward(big)
    assert y.shape == (1, 4096, 3, 2)
    with torch.no_grad():
        win = net.classifier[0](torch.from_numpy(big[:, :, 2:9, 1:8].copy()).flatten(1)).numpy()
    assert _rel(y[:, :, 2, 1], win) < 1e-4


@SLOW
def test_vgg16_into_a_narrow_model_is_refused(vgg):
    _, _, weights = vgg
    model = FCN32s(num_classes=4, width=0.0625)
    with pytest.raises(ValueError, match="width"):
        model.load_vgg16(weights)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        model.load_vgg16({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)})


@SLOW
def test_training_init_from_vgg16(vgg, tmp_path):
    """--init with torchvision weights: the backbone is loaded, preprocessing 'imagenet'."""
    net, path, _ = vgg
    logs = []
    run = Run(TrainConfig(data="synthetic", image_size=32, train_images=2, val_images=1,
                          model="fcn32s", width=1.0, batch_size=1, iters=1, init=str(path),
                          progress=False, out=str(tmp_path / "run")), log=logs.append)
    assert any("torchvision VGG16" in m for m in logs), logs
    assert run.config.preprocess == "imagenet"
    sd = net.state_dict()
    np.testing.assert_array_equal(run.model.params["conv5_3.weight"], sd["features.28.weight"])
    np.testing.assert_array_equal(run.model.params["fc7.weight"][:, :, 0, 0],
                                  sd["classifier.3.weight"])


# -- the PyTorch port's FCN state dict --------------------------------------------------------

WIDTH, CLASSES = 1 / 16, 3


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """The PyTorch-port FCN-8s (paper geometry, width 1/16, 3 classes) with random
    weights everywhere (the upsampling kernels too), saved with torch.save."""
    torch.manual_seed(1)
    net = TorchFCN("8s", "paper", CLASSES, WIDTH).eval()
    with torch.no_grad():                   # He-normal convs: logits far from uniform
        for m in net.modules():
            if type(m) is tnn.Conv2d:
                tnn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("port") / "fcn8s-port.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_port_state_dict_loads_and_predicts_like_torch(port):
    net, path = port
    weights = io.load(path)
    assert set(weights) == set(net.state_dict())
    assert "upscore8.weight" in weights and "upscore8.bias" not in weights
    model = FCN8s(num_classes=CLASSES, geometry="paper", width=WIDTH)
    model.load_state_dict(weights)
    model.eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 37, 45)).astype(np.float32) * 50
    y = model.forward(x)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape == (2, CLASSES, 37, 45)
    assert _rel(y, ref) < 1e-4


def test_training_init_from_port_weights(port, tmp_path, capsys):
    """``python -m minifcn.train --init fcn8s-port.pth --model fcn8s --geometry paper``:
    the message says the model was initialised from the file, the preprocessing becomes
    Caffe's (BGR, mean subtracted), and the first logged loss is the torch network's loss
    on the first batch (one 32x32 synthetic image, no flip, preprocessed here by hand)."""
    from minifcn.cli import run_main
    from minifcn.train import main as train_main
    net, path = port
    run = tmp_path / "run"
    rc = run_main(train_main, [str(a) for a in [
        "--data", "synthetic", "--image-size", 32, "--train-images", 1, "--val-images", 1,
        "--num-classes", CLASSES, "--model", "fcn8s", "--geometry", "paper", "--width", WIDTH,
        "--init", path, "--batch-size", 1, "--iters", 1, "--no-flip", "--no-progress",
        "--pictures", 0, "--out", run]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"initialised the model from {path}" in out
    config = json.loads((run / "config.json").read_text())
    assert config["preprocess"] == "caffe" and config["init"] == str(path)

    image, mask = SyntheticShapes(1, size=(32, 32), seed=0, num_classes=CLASSES, split="train")[0]
    x = image[..., ::-1].astype(np.float64) - np.asarray(CAFFE_MEAN_BGR)      # BGR - mean
    x = torch.tensor(x.transpose(2, 0, 1)[None].copy(), dtype=torch.float32)
    with torch.no_grad():
        ref_loss = TF.cross_entropy(net(x), torch.from_numpy(mask[None].astype(np.int64)),
                                    ignore_index=255).item()
    with open(run / "log.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert math.isfinite(ref_loss) and abs(ref_loss - math.log(CLASSES)) > 1e-3
    assert float(first["loss"]) == pytest.approx(ref_loss, rel=1e-5)
