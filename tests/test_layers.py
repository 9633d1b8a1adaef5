"""The layer contract of minifcn.nn (issue 2), and a float64 central-difference gradient
check of every layer.

- ``y = layer.forward(x)``; ``dx = layer.backward(dy)`` fills ``layer.grads[name]`` for every
  ``layer.params[name]``, with torch's shapes, and never writes into ``dy`` (nor ``x``).
- ``layer.params`` is the one owner: replacing an entry replaces the parameter.
- ``train()`` / ``eval()``; backward before forward is a clear error; every int parameter
  also takes an (h, w) pair; ``SoftmaxCrossEntropy.forward`` returns a float.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from conftest import assert_close, to_np
from minifcn import nn
from minifcn.gradcheck import check_gradients

# name -> (make minifcn layer, make the torch layer with the same arguments, input shape)
LAYERS = {
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, seed=0),
               lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6)),
    "Conv2d-rect-groups-nobias": (
        lambda: nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1),
                          groups=2, bias=False, seed=1),
        lambda: torch.nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1),
                                groups=2, bias=False), (2, 4, 7, 6)),
    "Conv2d-depthwise": (lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3, seed=2),
                         lambda: torch.nn.Conv2d(3, 3, 3, padding=1, groups=3), (3, 3, 5, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1, seed=3),
                        lambda: torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
                        (2, 3, 4, 5)),
    "ConvTranspose2d-subpixel": (
        lambda: nn.ConvTranspose2d(3, 2, 5, stride=2, padding=2, output_padding=1, seed=4,
                                   algorithm="subpixel"),
        lambda: torch.nn.ConvTranspose2d(3, 2, 5, stride=2, padding=2, output_padding=1),
        (2, 3, 3, 4)),
    "ConvTranspose2d-col2im-rect-groups": (
        lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0),
                                   output_padding=(1, 2), groups=2, dilation=(1, 2), seed=5,
                                   algorithm="col2im"),
        lambda: torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0),
                                         output_padding=(1, 2), groups=2, dilation=(1, 2)),
        (2, 4, 3, 4)),
    "ConvTranspose2d-nobias": (
        lambda: nn.ConvTranspose2d(2, 3, 3, bias=False, seed=6),
        lambda: torch.nn.ConvTranspose2d(2, 3, 3, bias=False), (1, 2, 3, 3)),
    "ReLU": (lambda: nn.ReLU(), lambda: torch.nn.ReLU(), (2, 3, 4, 5)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2, 2, ceil_mode=True),
                  lambda: torch.nn.MaxPool2d(2, 2, ceil_mode=True), (2, 3, 5, 7)),
    "MaxPool2d-overlap-pad": (lambda: nn.MaxPool2d((3, 2), (2, 1), (1, 0)),
                              lambda: torch.nn.MaxPool2d((3, 2), (2, 1), (1, 0)), (2, 2, 6, 5)),
    "Dropout": (lambda: nn.Dropout(0.5, seed=7), None, (2, 3, 4, 5)),
    "Dropout2d": (lambda: nn.Dropout2d(0.5, seed=8), None, (4, 6, 3, 3)),
}
PARAMETRIC = [k for k in LAYERS if k.startswith("Conv")]


def distinct_input(shape, seed=0, dtype=np.float64):
    """Values well away from ReLU's kink and from max-pool ties (all distinct, gaps of 0.1
    >> the gradcheck step), and never zero (so dropout zeros are the mask's)."""
    rng = np.random.default_rng(seed)
    v = (rng.permutation(int(np.prod(shape))) + 1.0) * 0.1
    v *= rng.choice([-1.0, 1.0], v.size)
    return v.reshape(shape).astype(dtype)


def _torch_layer_like(name, layer, dtype=torch.float64):
    t = LAYERS[name][1]().to(dtype)
    with torch.no_grad():
        for pname, arr in layer.params.items():
            getattr(t, pname).copy_(torch.tensor(to_np(arr)))
    return t


def _xp_layer(xp, layer):
    if xp is not np:
        layer.to("cuda")
    return layer


# -- forward / backward against torch's layer -------------------------------------------

@pytest.mark.parametrize("name", [k for k in LAYERS if LAYERS[k][1] is not None])
def test_layer_matches_torch_layer(xp, name):
    layer = _xp_layer(xp, LAYERS[name][0]().astype(np.float64))
    x = distinct_input(LAYERS[name][2])
    y = layer.forward(xp.asarray(x))
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx = layer.backward(xp.asarray(dy))

    t = _torch_layer_like(name, layer)
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt, np.float64, f"{name} forward")
    assert_close(dx, xt.grad, np.float64, f"{name} input gradient")
    for pname in layer.params:
        ref = getattr(t, pname).grad
        assert tuple(layer.grads[pname].shape) == tuple(ref.shape), pname
        assert_close(layer.grads[pname], ref, np.float64, f"{name} {pname} gradient")


def test_relu_inplace_writes_over_its_input_on_the_cpu():
    """``ReLU(inplace=True)`` (as the networks use it): y is x's own memory, with torch's
    values and gradient; a read-only input is left alone and gets a fresh y."""
    x0 = distinct_input((2, 3, 4, 5))
    x = x0.copy()
    layer = nn.ReLU(inplace=True)
    y = layer.forward(x)
    assert np.shares_memory(y, x)
    xt = torch.tensor(x0, requires_grad=True)
    yt = torch.relu(xt)
    np.testing.assert_array_equal(x, yt.detach().numpy())
    dy = np.random.default_rng(2).standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(layer.backward(dy), xt.grad.numpy())
    frozen = x0.copy()
    frozen.flags.writeable = False
    y = layer.forward(frozen)
    assert not np.shares_memory(y, frozen)
    np.testing.assert_array_equal(frozen, x0)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    assert repr(layer) == "ReLU(inplace=True)" and repr(nn.ReLU()) == "ReLU()"


@pytest.mark.parametrize("cls", [nn.Dropout, nn.Dropout2d])
def test_dropout_inplace_is_the_same_draw_written_over_its_input(cls):
    """``inplace=True``: the same mask as the out-of-place layer with the same seed, y in
    x's memory; in eval mode nothing is drawn or written."""
    x0 = distinct_input((2, 3, 4, 5))
    ref, layer = cls(0.4, seed=3), cls(0.4, inplace=True, seed=3)
    y_ref = ref.forward(x0)
    x = x0.copy()
    y = layer.forward(x)
    assert np.shares_memory(y, x)
    np.testing.assert_array_equal(y, y_ref)
    assert 0 < int((y == 0).sum()) < y.size                  # something dropped, not all
    dy = np.random.default_rng(4).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dy), ref.backward(dy))
    layer.eval()
    x = x0.copy()
    assert layer.forward(x) is x
    np.testing.assert_array_equal(x, x0)
    assert "inplace=True" in repr(layer)


def _graph_with_relu(inplace, through, skip_from):
    """conv -> [through] -> relu, and an Add of relu with ``skip_from``."""
    conv = nn.Conv2d(2, 3, 3, padding=1, seed=1).astype(np.float64)
    nodes = [("conv", conv, ["data"])]
    below = "conv"
    if through == "dropout-eval":
        drop = nn.Dropout(0.5, seed=2)
        drop.eval()
        nodes.append(("drop", drop, ["conv"]))
        below = "drop"
    nodes += [("relu", nn.ReLU(inplace=inplace), [below]), ("add", nn.Add(), ["relu", skip_from])]
    if skip_from == "data":
        nodes[0] = ("conv", nn.Conv2d(2, 2, 3, padding=1, seed=1).astype(np.float64), ["data"])
    return nn.Graph(nodes)


@pytest.mark.parametrize("through,skip_from", [
    (None, "conv"),              # the ReLU's input is read again by the Add
    ("dropout-eval", "conv"),    # ... through a Dropout that hands on its input itself
    (None, "data"),              # the ReLU's input is its own: in place
])
def test_graph_runs_an_inplace_layer_out_of_place_where_its_input_is_still_needed(through,
                                                                                 skip_from):
    """The same outputs and gradients as the out-of-place network in every case; the
    write-over happens exactly where nothing else can see the map."""
    x = distinct_input((1, 2, 5, 4))
    ref, net = (_graph_with_relu(inplace, through, skip_from) for inplace in (False, True))
    seen = {}
    y = net.forward(x, hook=lambda name, out: seen.setdefault(name, out))
    np.testing.assert_array_equal(y, ref.forward(x))
    dy = np.random.default_rng(3).standard_normal(y.shape)
    np.testing.assert_array_equal(net.backward(dy), ref.backward(dy))
    wrote_over = np.shares_memory(seen["relu"], seen["conv"])
    assert wrote_over == (skip_from == "data")
    assert net.layers["relu"].inplace                       # the flag is back after the call


def test_graph_keeps_a_map_an_earlier_reader_cached():
    """conv0's output is read first by conv1 (which keeps it as its input, for its weight
    gradient), then by an in-place ReLU: writing over it would change conv1's weight
    gradient after the fact. The graph runs that ReLU out of place; every gradient is
    torch's."""
    def build(inplace):
        return nn.Graph([
            ("c0", nn.Conv2d(2, 2, 3, padding=1, seed=1).astype(np.float64), ["data"]),
            ("c1", nn.Conv2d(2, 2, 3, padding=1, seed=2).astype(np.float64), ["c0"]),
            ("relu", nn.ReLU(inplace=inplace), ["c0"]),
            ("add", nn.Add(), ["c1", "relu"])])
    x = distinct_input((1, 2, 5, 4))
    dy = np.random.default_rng(5).standard_normal((1, 2, 5, 4))
    net = build(True)
    seen = {}
    y = net.forward(x, hook=lambda name, out: seen.setdefault(name, out))
    net.backward(dy)
    assert not np.shares_memory(seen["relu"], seen["c0"])

    p = {f"{n}.{k}": torch.tensor(v, requires_grad=True) for n, layer in net.layers.items()
         for k, v in layer.params.items()}
    c0 = TF.conv2d(torch.tensor(x), p["c0.weight"], p["c0.bias"], padding=1)
    y_ref = TF.conv2d(c0, p["c1.weight"], p["c1.bias"], padding=1) + TF.relu(c0)
    y_ref.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, y_ref.detach().numpy(), rtol=1e-12)
    for name, t in p.items():
        layer, k = name.split(".")
        np.testing.assert_allclose(net.layers[layer].grads[k], t.grad.numpy(), rtol=1e-10,
                                   err_msg=name)


def test_graph_never_writes_over_the_callers_input():
    x = distinct_input((1, 2, 5, 4))
    x0 = x.copy()
    net = nn.Graph([("relu", nn.ReLU(inplace=True), ["data"])])
    np.testing.assert_array_equal(net.forward(x), np.maximum(x0, 0))
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("name", [k for k in LAYERS if LAYERS[k][1] is not None])
def test_param_and_grad_shapes_are_torchs(name):
    layer = LAYERS[name][0]()
    t = LAYERS[name][1]()
    assert set(layer.params) == {n for n, _ in t.named_parameters()}
    for pname, p in t.named_parameters():
        assert tuple(layer.params[pname].shape) == tuple(p.shape), pname
    x = distinct_input(LAYERS[name][2], dtype=np.float32)
    y = layer.forward(x)
    layer.backward(np.ones(y.shape, np.float32))
    assert set(layer.grads) == set(layer.params)
    for pname in layer.params:
        assert layer.grads[pname].shape == layer.params[pname].shape, pname
        assert layer.grads[pname].dtype == layer.params[pname].dtype, pname


# -- the contract ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_never_writes_into_dy_nor_forward_into_x(xp, name):
    layer = _xp_layer(xp, LAYERS[name][0]())
    x = distinct_input(LAYERS[name][2], dtype=np.float32)
    x_copy = x.copy()
    xd = xp.asarray(x)
    if xp is np:
        xd.setflags(write=False)          # any write raises
    y = layer.forward(xd)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    dy_copy = dy.copy()
    dyd = xp.asarray(dy)
    if xp is np:
        dyd.setflags(write=False)
    dx = layer.backward(dyd)
    np.testing.assert_array_equal(to_np(dyd), dy_copy)
    np.testing.assert_array_equal(to_np(xd), x_copy)
    assert dx.shape == x.shape
    # a second backward with the same dy gives the same result (nothing accumulated)
    grads1 = {k: to_np(v).copy() for k, v in layer.grads.items()}
    dx2 = layer.backward(dyd)
    np.testing.assert_array_equal(to_np(dx2), to_np(dx))
    for k in grads1:
        np.testing.assert_array_equal(to_np(layer.grads[k]), grads1[k])


@pytest.mark.parametrize("name", PARAMETRIC)
def test_replacing_a_param_replaces_the_parameter(xp, name):
    layer = _xp_layer(xp, LAYERS[name][0]().astype(np.float64))
    x = distinct_input(LAYERS[name][2])
    y_old = to_np(layer.forward(xp.asarray(x)))
    rng = np.random.default_rng(3)
    for pname in list(layer.params):
        layer.params[pname] = xp.asarray(rng.standard_normal(layer.params[pname].shape))
    assert layer.weight is layer.params["weight"]
    assert layer.bias is layer.params.get("bias")
    y_new = layer.forward(xp.asarray(x))
    assert not np.allclose(to_np(y_new), y_old)
    t = _torch_layer_like(name, layer)
    assert_close(y_new, t(torch.tensor(x)), np.float64, "forward after replacing params")
    # and backward uses it too
    dy = np.ones(y_new.shape)
    dx = layer.backward(xp.asarray(dy))
    xt = torch.tensor(x, requires_grad=True)
    t(xt).backward(torch.tensor(dy))
    assert_close(dx, xt.grad, np.float64, "input gradient after replacing params")


@pytest.mark.parametrize("name", PARAMETRIC)
def test_dtype_change_by_astype(name):
    layer = LAYERS[name][0]()
    assert all(p.dtype == np.float32 for p in layer.params.values())   # float32 by default
    x = distinct_input(LAYERS[name][2], dtype=np.float32)
    assert layer.forward(x).dtype == np.float32
    layer.astype(np.float64)
    assert all(p.dtype == np.float64 for p in layer.params.values())
    y = layer.forward(x.astype(np.float64))
    assert y.dtype == np.float64
    layer.backward(np.ones(y.shape))
    assert all(g.dtype == np.float64 for g in layer.grads.values())


@pytest.mark.parametrize("name", list(LAYERS))
def test_train_eval(name):
    layer = LAYERS[name][0]()
    assert layer.training is True
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    assert layer.train(False) is layer and layer.training is False
    if "Dropout" not in name:      # only dropout depends on the mode
        x = distinct_input(LAYERS[name][2], dtype=np.float32)
        np.testing.assert_array_equal(layer.eval().forward(x), layer.train().forward(x))


@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_before_forward_is_a_clear_error(name):
    layer = LAYERS[name][0]()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones(LAYERS[name][2], np.float32))


def test_loss_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.SoftmaxCrossEntropy().backward()


@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_with_wrong_grad_shape_is_a_value_error(name):
    layer = LAYERS[name][0]()
    y = layer.forward(distinct_input(LAYERS[name][2], dtype=np.float32))
    bad = np.ones(y.shape[:3] + (y.shape[3] + 1,), np.float32)
    with pytest.raises(ValueError, match="grad"):
        layer.backward(bad)


def test_softmax_cross_entropy_forward_returns_python_float():
    crit = nn.SoftmaxCrossEntropy()
    logits = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    labels = np.array([[[0, 1], [2, 255]], [[1, 1], [0, 2]]])
    loss = crit.forward(logits, labels)
    assert type(loss) is float
    g = crit.backward()
    assert g.shape == logits.shape and g.dtype == np.float32


@pytest.mark.parametrize("cls", [nn.Conv2d, nn.ConvTranspose2d])
def test_need_input_grad_false_skips_dx_only(cls):
    layer = cls(2, 3, 3, stride=2, padding=1, seed=0).astype(np.float64)
    x = distinct_input((2, 2, 5, 5))
    y = layer.forward(x)
    dy = np.random.default_rng(0).standard_normal(y.shape)
    layer.backward(dy)
    full = {k: v.copy() for k, v in layer.grads.items()}
    layer.need_input_grad = False
    layer.forward(x)
    assert layer.backward(dy) is None
    for k in full:
        assert_close(layer.grads[k], full[k], np.float64, k)


# -- every int parameter also takes an (h, w) pair ----------------------------------------

@pytest.mark.parametrize("make_int,make_pair", [
    (lambda: nn.Conv2d(2, 3, 3, 2, 1, 2, seed=0),
     lambda: nn.Conv2d(2, 3, (3, 3), (2, 2), (1, 1), (2, 2), seed=0)),
    (lambda: nn.ConvTranspose2d(2, 3, 3, 2, 1, 1, 1, True, 1, seed=0),
     lambda: nn.ConvTranspose2d(2, 3, (3, 3), (2, 2), (1, 1), (1, 1), 1, True, (1, 1), seed=0)),
    (lambda: nn.MaxPool2d(3, 2, 1, 1), lambda: nn.MaxPool2d((3, 3), (2, 2), (1, 1), (1, 1))),
])
def test_int_and_pair_parameters_agree(make_int, make_pair):
    a, b = make_int(), make_pair()
    x = distinct_input((2, 2, 7, 6), dtype=np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    for attr in ("kernel_size", "stride", "padding", "dilation", "output_padding"):
        if hasattr(a, attr):
            assert getattr(a, attr) == getattr(b, attr) and len(getattr(a, attr)) == 2


def test_convtranspose_output_size_method_matches_forward():
    layer = nn.ConvTranspose2d(2, 2, (4, 3), (2, 3), (1, 0), (1, 2))
    y = layer.forward(np.ones((1, 2, 5, 4), np.float32))
    assert layer.output_size((5, 4)) == y.shape[2:]
    t = torch.nn.ConvTranspose2d(2, 2, (4, 3), (2, 3), (1, 0), (1, 2))
    assert tuple(t(torch.ones(1, 2, 5, 4)).shape[2:]) == y.shape[2:]


# -- float64 central differences, every layer ---------------------------------------------

@pytest.mark.parametrize("name", list(LAYERS))
def test_gradcheck_every_layer(name):
    """Away from kinks: inputs distinct and non-zero, so ReLU and max-pool are smooth there."""
    layer = LAYERS[name][0]().astype(np.float64)
    x = distinct_input(LAYERS[name][2], seed=11)
    report = check_gradients(layer, x, eps=1e-6, tolerance=1e-7)
    assert report.ok, f"{name}: {report}"
    tensors = {"input", *layer.params}
    assert set(report.errors) == tensors | {f"{t} (direction)" for t in tensors}


def test_gradcheck_detects_a_wrong_backward():
    """The checker itself is not vacuous: a backward off by 1e-4 fails it."""
    layer = nn.Conv2d(2, 2, 3, seed=0).astype(np.float64)
    real = layer.backward
    layer.backward = lambda dy: real(dy) * (1 + 1e-4)
    report = check_gradients(layer, distinct_input((1, 2, 4, 4)), tolerance=1e-7,
                             params=[])
    assert not report.ok


# -- the wiring layers (Add, Crop, Scale, PadTo) keep the same contract ----------------------

STRUCTURAL = {   # name -> (make the layer, its inputs)
    "Add": (lambda: nn.Add(), [(2, 3, 4, 5), (2, 3, 4, 5)]),
    "Crop": (lambda: nn.Crop((1, 2)), [(2, 3, 6, 9), (1, 1, 4, 5)]),
    "Scale": (lambda: nn.Scale(0.01), [(2, 3, 4, 5)]),
    "PadTo": (lambda: nn.PadTo(4), [(2, 3, 5, 7)]),
}


@pytest.mark.parametrize("name", list(STRUCTURAL))
def test_wiring_layer_backward_checks_its_grad(name):
    """Before forward: a clear error; after it, a grad of another shape than the output is
    refused (Crop used to broadcast a (N, 1, H, W) or a smaller dy into its zero map and
    return a wrong gradient without a word; Add passed any dy on)."""
    make, shapes = STRUCTURAL[name]
    layer = make()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones(shapes[0], np.float32))
    y = layer.forward(*(distinct_input(s, seed=i) for i, s in enumerate(shapes)))
    for bad in (y.shape[:3] + (y.shape[3] + 1,), y.shape[:1] + (1,) + y.shape[2:],
                y.shape[:2] + (y.shape[2] - 1, y.shape[3])):
        with pytest.raises(ValueError, match=f"{name}: backward got grad of shape"):
            layer.backward(np.ones(bad))
    layer.backward(np.ones(y.shape))                  # the right shape still goes through


@pytest.mark.parametrize("geometry", ["notes", "paper"])
def test_model_backward_refuses_a_grad_of_another_shape(geometry):
    """A whole FCN's last node is a Crop: a dy with H and W swapped, or one channel, was
    taken and gave gradients for every parameter."""
    from minifcn.models import FCN8s
    model = FCN8s(num_classes=4, width=1 / 32, geometry=geometry, seed=0)
    y = model.forward(np.zeros((1, 3, 37, 50), np.float32))
    assert y.shape == (1, 4, 37, 50)
    for bad in [(1, 4, 50, 37), (1, 1, 37, 50), (1, 4, 10, 10)]:
        with pytest.raises(ValueError, match="Crop: backward got grad"):
            model.backward(np.ones(bad, np.float32))


@pytest.mark.parametrize("make,match", [
    (lambda: nn.PadTo(0), "PadTo: multiple must be a positive int, got 0"),
    (lambda: nn.PadTo(-32), "PadTo: multiple"),
    (lambda: nn.PadTo(2.5), "PadTo: multiple"),
    (lambda: nn.PadTo("x"), "PadTo: multiple"),
    (lambda: nn.Crop(5), "Crop: offset must be a pair of non-negative ints, got 5"),
    (lambda: nn.Crop((1, 2, 3)), "Crop: offset"),
    (lambda: nn.Crop((-1, 0)), "Crop: offset"),
    (lambda: nn.Crop((0.5, 0)), "Crop: offset"),
    (lambda: nn.Scale("a"), "Scale: factor must be a finite number"),
    (lambda: nn.Scale(float("nan")), "Scale: factor"),
])
def test_wiring_layer_arguments_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wiring_layers_take_numpy_integers():
    assert nn.PadTo(np.int64(32)).multiple == 32
    assert nn.Crop((np.int32(5), 9)).offset == (5, 9)
