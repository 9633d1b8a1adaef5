"""Whole FCN models against the same networks written independently in torch.

The torch reference below is built from torch.nn layers with the crop offsets typed in
from the paper (19; 5, 27; 5, 9, 31) — minifcn derives them from the layer geometry, so
agreement checks the derivation too.
"""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional

from minifcn.models import FCN8s, FCN16s, FCN32s, MODELS, bilinear_weight  # noqa: E402
from minifcn.models.vgg import STAGES, scaled  # noqa: E402

PAPER_OFFSETS = {"32s": {"score": 19}, "16s": {"pool4": 5, "score": 27},
                 "8s": {"pool4": 5, "pool3": 9, "score": 31}}
PAPER_OFFSETS["8s-atonce"] = PAPER_OFFSETS["8s"]


class TorchFCN(tnn.Module):
    def __init__(self, variant, geometry, n_class, width):
        super().__init__()
        self.variant, self.paper = variant, geometry == "paper"
        c_in = 3
        self.stage_convs = []
        for s, (n, c) in enumerate(STAGES, 1):
            names = []
            for i in range(1, n + 1):
                pad = 100 if (self.paper and (s, i) == (1, 1)) else 1
                setattr(self, f"conv{s}_{i}", tnn.Conv2d(c_in, scaled(c, width), 3, padding=pad))
                c_in = scaled(c, width)
                names.append(f"conv{s}_{i}")
            self.stage_convs.append(names)
        fc = scaled(4096, width)
        self.fc6 = tnn.Conv2d(c_in, fc, 7 if self.paper else 1)
        self.fc7 = tnn.Conv2d(fc, fc, 1)
        self.score_fr = tnn.Conv2d(fc, n_class, 1)
        p = 0 if self.paper else None

        def up(f):
            return tnn.ConvTranspose2d(n_class, n_class, 2 * f, f, f // 2 if p is None else 0, bias=False)
        if variant == "32s":
            self.upscore = up(32)
        else:
            self.upscore2 = up(2)
            self.score_pool4 = tnn.Conv2d(scaled(512, width), n_class, 1)
            if variant == "16s":
                self.upscore16 = up(16)
            else:
                self.upscore_pool4 = up(2)
                self.score_pool3 = tnn.Conv2d(scaled(256, width), n_class, 1)
                self.upscore8 = up(8)

    def forward(self, x):
        H, W = x.shape[2:]
        off = PAPER_OFFSETS[self.variant] if self.paper else {}
        crop = lambda t, o, h, w: t[:, :, o:o + h, o:o + w]  # noqa: E731
        h = x if self.paper else TF.pad(x, (0, -W % 32, 0, -H % 32))
        pools = {}
        for s, names in enumerate(self.stage_convs, 1):
            for name in names:
                h = torch.relu(getattr(self, name)(h))
            h = TF.max_pool2d(h, 2, 2, ceil_mode=self.paper)
            pools[s] = h
        h = torch.relu(self.fc7(torch.relu(self.fc6(h))))
        h = self.score_fr(h)
        if self.variant == "32s":
            return crop(self.upscore(h), off.get("score", 0), H, W)
        atonce = self.variant == "8s-atonce"
        up2 = self.upscore2(h)
        s4 = self.score_pool4(pools[4] * 0.01 if atonce else pools[4])
        h = up2 + crop(s4, off.get("pool4", 0), up2.shape[2], up2.shape[3])
        if self.variant == "16s":
            return crop(self.upscore16(h), off.get("score", 0), H, W)
        upp4 = self.upscore_pool4(h)
        s3 = self.score_pool3(pools[3] * 0.0001 if atonce else pools[3])
        h = upp4 + crop(s3, off.get("pool3", 0), upp4.shape[2], upp4.shape[3])
        return crop(self.upscore8(h), off.get("score", 0), H, W)


def _rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300)


@pytest.mark.parametrize("geometry", ["notes", "paper"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_model_matches_torch(name, geometry):
    _check_whole_model(name, geometry, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", ["notes", "paper"])
@pytest.mark.parametrize("name", ["fcn32s", "fcn8s"])
def test_whole_model_on_the_gpu_matches_torch(name, geometry):
    """The same check with minifcn on CuPy (its CUDA kernels) against torch on the CPU."""
    _check_whole_model(name, geometry, "cuda")


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _check_whole_model(name, geometry, device):
    width = 1 / 16
    model = MODELS[name](num_classes=3, geometry=geometry, width=width, learn_upsampling=True,
                         dtype=np.float64).eval()
    ref = TorchFCN(model.variant, geometry, 3, width).double().eval()
    # random weights everywhere (the zero-initialised score layers would hide gradients)
    rng = np.random.default_rng(1)
    state = {k: rng.standard_normal(v.shape) * (0.5 if v.ndim == 4 else 0.1)
             for k, v in model.state_dict().items()}
    assert set(state) == set(ref.state_dict()), "parameter names differ from the torch port's"
    model.load_state_dict(state)
    model.to(device)
    ref.load_state_dict({k: torch.tensor(v) for k, v in state.items()})

    x = rng.standard_normal((2, 3, 61, 83))
    to_dev = (lambda a: a) if device == "cpu" else __import__("cupy").asarray
    y = model.forward(to_dev(x))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    assert y.shape == (2, 3, 61, 83) == tuple(yt.shape)
    assert _rel(_host(y), yt.detach().numpy()) < 1e-8

    dy = rng.standard_normal(y.shape)
    dx = _host(model.backward(to_dev(dy)))
    yt.backward(torch.tensor(dy))
    assert _rel(dx, xt.grad.numpy()) < 1e-8
    grads = {k: _host(v) for k, v in model.grads.items()}
    torch_params = dict(ref.named_parameters())
    assert set(grads) == set(torch_params)
    for k, p in torch_params.items():
        assert grads[k].shape == tuple(p.shape), k
        assert _rel(grads[k], p.grad.numpy()) < 1e-8, k


def test_crop_offsets_are_derived_as_in_the_paper():
    got = {cls.__name__: cls(num_classes=2, geometry="paper", width=1 / 32).crop_offsets
           for cls in (FCN32s, FCN16s, FCN8s)}
    assert got == {"FCN32s": {"score": (19, 19)},
                   "FCN16s": {"score_pool4c": (5, 5), "score": (27, 27)},
                   "FCN8s": {"score_pool4c": (5, 5), "score_pool3c": (9, 9), "score": (31, 31)}}
    for cls in (FCN32s, FCN16s, FCN8s):
        assert set(cls(num_classes=2, width=1 / 32).crop_offsets.values()) == {(0, 0)}


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
@pytest.mark.parametrize("geometry", ["paper", "notes"])
def test_any_input_size_gives_logits_of_that_size(cls, geometry):
    """Every size from 1 to 600: shapes only (no arithmetic), each crop within its map."""
    model = cls(num_classes=21, geometry=geometry, width=1 / 64)
    for size in range(1, 601):
        shapes = model.shapes((1, 3, size, size + 1))      # raises if a crop does not fit
        assert shapes["score"] == (1, 21, size, size + 1), size


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 3, 5, 33), (2, 3, 37, 20)])
def test_forward_runs_at_tiny_and_odd_sizes(shape):
    for geometry in ("notes", "paper"):
        model = FCN8s(num_classes=4, geometry=geometry, width=1 / 32)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = model.forward(x)
        assert y.shape == (shape[0], 4) + shape[2:] and y.dtype == np.float32
        assert model.backward(np.ones_like(y)).shape == shape


def test_bilinear_upsampling_of_a_ramp_is_linear_interpolation():
    """A fixed bilinear kernel, stride f, reproduces linear interpolation in the interior."""
    from minifcn.functional import conv_transpose2d
    for f in (2, 4, 8, 32):
        ramp = np.add.outer(np.arange(6.0), 2 * np.arange(7.0))[None, None]   # a + 2b
        w = bilinear_weight(1, 2 * f, np.float64)
        y = conv_transpose2d(ramp, w, stride=f, padding=f // 2)[0, 0]          # notes geometry
        assert y.shape == (6 * f, 7 * f)
        # output pixel i sits at input coordinate (i + 0.5)/f - 0.5 (half-pixel centres)
        u = (np.arange(6 * f) + 0.5) / f - 0.5
        v = (np.arange(7 * f) + 0.5) / f - 0.5
        expect = np.add.outer(u, 2 * v)
        inner = (slice(f, 5 * f), slice(f, 6 * f))       # away from the zero border
        np.testing.assert_allclose(y[inner], expect[inner], atol=1e-12)


def test_bilinear_init_and_frozen_upsampling():
    model = FCN8s(num_classes=3, width=1 / 32)
    w = model.params["upscore8.weight"]
    assert w.shape == (3, 3, 16, 16)
    assert np.all(w[0, 1] == 0) and np.allclose(w[1, 1], w[0, 0])
    assert "upscore8.weight" in model.frozen and "score_fr.weight" not in model.frozen
    assert not model.params["score_fr.weight"].any() and not model.params["score_pool3.bias"].any()
    y = model.forward(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    model.backward(np.ones_like(y))
    assert "upscore8.weight" not in model.grads and "score_fr.weight" in model.grads
    learn = FCN8s(num_classes=3, width=1 / 32, learn_upsampling=True)
    assert not learn.frozen


def test_state_dict_names_and_shapes_of_the_pytorch_port():
    m = FCN8s(num_classes=21, geometry="paper", width=1 / 32)
    names = set(m.state_dict())
    assert {"conv1_1.weight", "conv5_3.bias", "fc6.weight", "fc7.bias", "score_fr.weight",
            "score_pool4.weight", "score_pool3.bias", "upscore2.weight", "upscore_pool4.weight",
            "upscore8.weight"} <= names
    assert not any(n.startswith("upscore") and n.endswith("bias") for n in names)
    assert m.state_dict()["fc6.weight"].shape[2:] == (7, 7)
    assert FCN32s(num_classes=21, width=1 / 32).state_dict()["fc6.weight"].shape[2:] == (1, 1)
    assert "upscore.weight" in FCN32s(num_classes=2, width=1 / 32).state_dict()
    assert "upscore16.weight" in FCN16s(num_classes=2, width=1 / 32).state_dict()


def test_load_state_dict_mismatch_lists_names_and_shapes():
    m = FCN16s(num_classes=3, width=1 / 32)
    state = dict(m.state_dict())
    state.pop("fc7.bias")
    state["extra.weight"] = np.zeros(1)
    state["score_fr.weight"] = np.zeros((5, 5, 1, 1))
    with pytest.raises(ValueError) as err:
        m.load_state_dict(state)
    msg = str(err.value)
    assert "fc7.bias" in msg and "extra.weight" in msg and "score_fr.weight" in msg and "(5, 5, 1, 1)" in msg


def test_state_dict_replaces_parameters():
    """Every parameter takes the loaded values (copies, not shared), and the network then
    computes what the source computes. The score layers start at zero, which would make
    both outputs 0 whatever was loaded: they are made random first."""
    a, b = FCN32s(num_classes=2, width=1 / 32, seed=1), FCN32s(num_classes=2, width=1 / 32, seed=2)
    rng = np.random.default_rng(3)
    a.layers["score_fr"].params["weight"] = rng.standard_normal(
        a.params["score_fr.weight"].shape).astype(np.float32)
    differed = [k for k in a.params if not np.array_equal(a.params[k], b.params[k])]
    assert "conv1_1.weight" in differed and "score_fr.weight" in differed
    b.load_state_dict(a.state_dict())
    for k in a.params:
        np.testing.assert_array_equal(b.params[k], a.params[k], err_msg=k)
        assert a.params[k] is not b.params[k]
    x = rng.standard_normal((1, 3, 40, 40)).astype(np.float32)
    a.eval(), b.eval()
    y = a.forward(x)
    assert np.abs(y).max() > 0
    np.testing.assert_array_equal(y, b.forward(x))


@pytest.mark.parametrize("key,shape", [("classifier.0.weight", (4096, 25000)),
                                       ("classifier.0.bias", (1000,)),
                                       ("classifier.3.weight", (1000, 4096)),
                                       ("classifier.3.bias", (4096, 1))])
def test_vgg16_classifier_of_another_shape_is_named(key, shape):
    """Each classifier tensor's shape is checked and named (classifier.3.weight of another
    shape was a bare NumPy reshape error). Zero-stride arrays: no 400 MB allocations."""
    from minifcn.models.vgg import vgg16_from_torchvision
    good = {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
            "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)}
    state = {f"features.{i}.{p}": np.zeros(1) for i in range(29) for p in ("weight", "bias")}
    state.update({k: np.broadcast_to(np.float32(0), v) for k, v in good.items()})
    state[key] = np.broadcast_to(np.float32(0), shape)
    with pytest.raises(ValueError, match=re.escape(f"{key} has shape {shape}, expected {good[key]}")):
        vgg16_from_torchvision(state, (4096, 512, 7, 7))


def test_fc_layers_are_convolutions():
    """VGG16's classifier (Linear 25088->4096, Linear 4096->4096) on a 224x224 image's 7x7
    pool5 equals fc6/fc7 as convolutions at 1x1; a larger pool5 gives a map whose every
    position is the classifier applied to the window there (position kept)."""
    from minifcn.nn import Conv2d
    from minifcn.models.vgg import vgg16_from_torchvision
    torch.manual_seed(0)
    lin6, lin7 = tnn.Linear(25088, 4096), tnn.Linear(4096, 4096)
    state = {f"features.{i}.{p}": np.zeros(1) for i in range(29) for p in ("weight", "bias")}
    state.update({"classifier.0.weight": lin6.weight.detach().numpy(), "classifier.0.bias": lin6.bias.detach().numpy(),
                  "classifier.3.weight": lin7.weight.detach().numpy(), "classifier.3.bias": lin7.bias.detach().numpy()})
    w = vgg16_from_torchvision(state, (4096, 512, 7, 7))
    fc6, fc7 = Conv2d(512, 4096, 7, bias=True), Conv2d(4096, 4096, 1)
    fc6.params.update(weight=w["fc6.weight"], bias=w["fc6.bias"])
    fc7.params.update(weight=w["fc7.weight"], bias=w["fc7.bias"])
    pool5 = np.random.default_rng(0).standard_normal((1, 512, 9, 8)).astype(np.float32)
    out = fc7.forward(np.maximum(fc6.forward(pool5), 0))          # (1, 4096, 3, 2)
    assert out.shape == (1, 4096, 3, 2)
    for i in range(3):
        for j in range(2):
            window = torch.tensor(pool5[:, :, i:i + 7, j:j + 7]).reshape(1, -1)   # flatten as VGG does
            ref = lin7(torch.relu(lin6(window))).detach().numpy()[0]
            np.testing.assert_allclose(out[0, :, i, j], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [lambda w: w.astype(np.complex64) + 1j,
                                 lambda w: w.astype("datetime64[s]"),
                                 lambda w: w.astype(str)])
def test_state_dict_of_a_non_number_type_is_refused(bad):
    """A complex array lost its imaginary part and dates or strings became weights."""
    model = FCN32s(num_classes=2, width=1 / 32)
    state = model.state_dict()
    before = state["conv1_1.weight"].copy()
    state["conv1_1.weight"] = bad(np.round(before * 100))
    with pytest.raises(ValueError, match=r"conv1_1.weight: dtype .* is not a real number type"):
        model.load_state_dict(state)
    np.testing.assert_array_equal(model.params["conv1_1.weight"], before)   # nothing changed


@pytest.mark.parametrize("geometry", ["notes", "paper"])
def test_parameter_count_without_building_is_the_models_own(geometry):
    from minifcn.models import MODELS
    from minifcn.models.fcn import parameter_count
    for cls in MODELS.values():
        for width, k in ((1 / 32, 3), (0.125, 21), (0.3, 5)):
            model = cls(num_classes=k, geometry=geometry, width=width)
            assert parameter_count(cls.variant, k, geometry, width) == model.num_params()
    # full width, counted only. The paper's: VGG16's published 138,357,544 less its
    # 1000-class fc8 (4096 * 1000 + 1000), plus score_fr, score_pool4, score_pool3 (21
    # classes, with biases) and the three upsamplers (k4, k4, k16; no bias)
    vgg16_to_fc7 = 138_357_544 - (4096 * 1000 + 1000)
    scores = (4096 * 21 + 21) + (512 * 21 + 21) + (256 * 21 + 21)
    assert parameter_count("8s", 21, "paper", 1.0) == \
        vgg16_to_fc7 + scores + 21 * 21 * (4 * 4 + 4 * 4 + 16 * 16)
    assert 30e6 < parameter_count("8s", 21, "notes", 1.0) < 40e6


def test_a_model_too_large_for_the_machine_is_refused_before_allocating(monkeypatch, capsys):
    """``summary --width 100`` (3.7 TB of weights) met the OOM killer; now the model says
    how much it needs against what the machine has, before drawing a single weight."""
    import minifcn.models.fcn as fcn
    from minifcn.cli import run_main
    from minifcn.summary import main as summary_main
    monkeypatch.setattr(fcn, "_available_memory", lambda: 1 << 28)          # 256 MiB free
    drawn = []
    monkeypatch.setattr(fcn, "vgg16_nodes", lambda *a, **k: drawn.append(1))
    with pytest.raises(ValueError, match=r"width 1 .* needs 0\.5 GiB for its weights alone; "
                                         r"this process can take 0\.2 GiB more"):
        fcn.FCN8s(num_classes=21, geometry="paper", width=1.0)          # 134.5 M float32
    with pytest.raises(ValueError, match=r"needs 1\.0 GiB"):
        fcn.FCN8s(num_classes=21, geometry="paper", width=1.0, dtype=np.float64)
    with pytest.raises(ValueError, match=r"needs 10\^319 GiB"):               # no float overflow
        fcn.FCN8s(width=1e160)
    with pytest.raises(ValueError, match=r"width 1e\+306 is too large"):
        fcn.FCN8s(width=1e306)
    assert drawn == []
    assert run_main(summary_main, ["--width", "100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: an FCN-8s of width 100") and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(fcn, "_available_memory", lambda: None)        # unknown: not refused
    fcn._check_room_for("8s", 21, "notes", 100.0)
