"""Optimisers and learning-rate schedules against torch.optim and hand-computed values.

The same starting weights and the same gradients go into minifcn's optimiser and into
``torch.optim.SGD`` / ``torch.optim.Adam`` (weight decay only in the weights' param group,
as the FCN solver does: never on biases); after every step the weights must agree.
"""
from __future__ import annotations

import numpy as np
import pytest

from minifcn import io
from minifcn.nn import Conv2d, ConvTranspose2d, Graph, ReLU
from minifcn.optim import SGD, Adam, learning_rate

torch = pytest.importorskip("torch")


def _model(seed=0):
    """conv (weight+bias) -> relu -> up (weight, frozen) -> score (weight+bias), float64."""
    rng = np.random.default_rng(seed)
    up = ConvTranspose2d(3, 3, 4, 2, 1, bias=False, dtype=np.float64)
    up.frozen.add("weight")
    g = Graph([
        ("conv", Conv2d(2, 3, 3, padding=1, dtype=np.float64), ["data"]),
        ("relu", ReLU(), ["conv"]),
        ("up", up, ["relu"]),
        ("score", Conv2d(3, 4, 1, dtype=np.float64), ["up"]),
    ])
    for name, layer, p in g.parameters():          # non-zero values everywhere, biases too
        layer.params[p] = rng.standard_normal(layer.params[p].shape)
    return g


def _set_grads(model, grads):
    for name, layer, p in model.parameters():
        layer.grads[p] = grads[name].copy()


def _grad_stream(model, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(v.shape) for k, v in model.params.items()}
            for _ in range(steps)]


def _torch_params(model):
    return {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}


def _torch_groups(tparams, frozen, weight_decay, bias_lr_mult=None):
    """Weights with weight decay, biases without; frozen parameters not given to torch.
    With ``bias_lr_mult``, the biases' group carries it as ``lr_mult``, which
    :func:`_step_alongside_torch` multiplies into that group's lr (Caffe's ``lr_mult``)."""
    decay = [p for k, p in tparams.items() if k not in frozen and not k.endswith(".bias")]
    no_decay = [p for k, p in tparams.items() if k not in frozen and k.endswith(".bias")]
    biases = {"params": no_decay, "weight_decay": 0.0}
    if bias_lr_mult is not None:
        biases["lr_mult"] = bias_lr_mult
    return [{"params": decay, "weight_decay": weight_decay}, biases]


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


LRS = [0.1, 0.05, 0.2, 0.01, 0.1, 0.03]


def _step_alongside_torch(model, opt, ref, tparams, seed, tol):
    """Steps ``opt`` and torch's optimizer ``ref`` on the same gradients at the learning
    rates ``LRS``; after each step every parameter must agree within ``tol``."""
    for step, (lr, grads) in enumerate(zip(LRS, _grad_stream(model, len(LRS), seed=seed))):
        _set_grads(model, grads)
        opt.step(lr)
        for group in ref.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        ref.step()
        for k, p in tparams.items():
            assert _rel(model.params[k], p.detach().numpy()) < tol, (step, k)


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.99, 0.1), (0.0, 0.05), (0.9, 0.0)])
def test_sgd_matches_torch(momentum, weight_decay):
    model = _model()
    frozen = set(model.frozen)
    assert frozen == {"up.weight"}
    start = {k: v.copy() for k, v in model.params.items()}
    tparams = _torch_params(model)
    ref = torch.optim.SGD(_torch_groups(tparams, frozen, weight_decay), lr=LRS[0],
                          momentum=momentum)
    opt = SGD(model, LRS[0], momentum=momentum, weight_decay=weight_decay)
    _step_alongside_torch(model, opt, ref, tparams, seed=1, tol=1e-12)
    # the frozen upsampling kernel never moved, though it had gradients every step
    np.testing.assert_array_equal(model.params["up.weight"], start["up.weight"])
    # and everything else did
    for k in start:
        if k != "up.weight":
            assert not np.array_equal(model.params[k], start[k]), k


@pytest.mark.parametrize("cls,kwargs", [(SGD, dict(momentum=0.9, weight_decay=0.1)),
                                        (SGD, dict(momentum=0.0)),
                                        (Adam, dict(weight_decay=1e-2))])
def test_chunked_cpu_updates_match_torch(monkeypatch, cls, kwargs):
    """The CPU update runs each parameter in chunks (``CPU_UPDATE_CHUNK`` values): with
    chunks of 7, which split every parameter unevenly, still torch's result; plain SGD
    keeps no momentum buffer."""
    import minifcn.optim as optim
    monkeypatch.setattr(optim, "CPU_UPDATE_CHUNK", 7)
    model = _model()
    frozen = set(model.frozen)
    tparams = _torch_params(model)
    groups = _torch_groups(tparams, frozen, kwargs.get("weight_decay", 0.0))
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    ref = (torch.optim.SGD if cls is SGD else torch.optim.Adam)(groups, lr=LRS[0], **torch_kwargs)
    opt = cls(model, LRS[0], **kwargs)
    _step_alongside_torch(model, opt, ref, tparams, seed=3, tol=1e-10)
    if cls is SGD and not kwargs["momentum"]:
        assert not opt.state["momentum"]


def test_sgd_no_weight_decay_on_biases_by_hand():
    """One step from zero momentum: w -= lr (g + wd w) for weights, b -= lr g for biases."""
    model = _model()
    w0, b0 = model.params["conv.weight"].copy(), model.params["conv.bias"].copy()
    grads = _grad_stream(model, 1)[0]
    _set_grads(model, grads)
    SGD(model, 0.1, momentum=0.9, weight_decay=0.5).step()
    np.testing.assert_allclose(model.params["conv.weight"],
                               w0 - 0.1 * (grads["conv.weight"] + 0.5 * w0), rtol=1e-13)
    np.testing.assert_allclose(model.params["conv.bias"], b0 - 0.1 * grads["conv.bias"], rtol=1e-13)


@pytest.mark.parametrize("weight_decay,betas", [(0.0, (0.9, 0.999)), (1e-2, (0.8, 0.99))])
def test_adam_matches_torch(weight_decay, betas):
    model = _model()
    frozen = set(model.frozen)
    start = {k: v.copy() for k, v in model.params.items()}
    tparams = _torch_params(model)
    ref = torch.optim.Adam(_torch_groups(tparams, frozen, weight_decay), lr=LRS[0], betas=betas,
                           eps=1e-8)
    opt = Adam(model, LRS[0], betas=betas, eps=1e-8, weight_decay=weight_decay)
    _step_alongside_torch(model, opt, ref, tparams, seed=5, tol=1e-10)
    np.testing.assert_array_equal(model.params["up.weight"], start["up.weight"])


def test_adam_counts_each_parameters_own_updates_like_torch():
    """A parameter that gets no gradient for its first steps (a branch the loss did not
    reach yet) starts its bias correction at t = 1 when its first gradient comes, as in
    torch: its first move is a full lr-sized step, not one shrunk by (1-b1)/(1-b1^t)."""
    model = _model()
    tparams = _torch_params(model)
    frozen = set(model.frozen)
    ref = torch.optim.Adam(_torch_groups(tparams, frozen, 0.0), lr=LRS[0])
    opt = Adam(model, LRS[0])
    late = "score.bias"
    for step, (lr, grads) in enumerate(zip(LRS, _grad_stream(model, len(LRS), seed=9))):
        _set_grads(model, grads)
        if step < 2:
            del model.layers["score"].grads["bias"]
        before = model.params[late].copy()
        opt.step(lr)
        for group in ref.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        for k, p in tparams.items():
            p.grad = None if (k == late and step < 2) else torch.tensor(grads[k])
        ref.step()
        for k, p in tparams.items():
            assert _rel(model.params[k], p.detach().numpy()) < 1e-10, (step, k)
        if step == 2:       # its first update: |m / (1-b1)| / sqrt(v / (1-b2)) = 1 per value
            np.testing.assert_allclose(np.abs(model.params[late] - before), lr, rtol=1e-6)
    assert opt.updates[late] == len(LRS) - 2 and opt.updates["conv.weight"] == len(LRS)
    assert "up.weight" not in opt.updates                                 # frozen


def test_optimizer_state_without_update_counts_loads_as_before():
    """A checkpoint written before the per-parameter counts: every parameter with state is
    taken to have had every step (what the counts were then)."""
    model = _model()
    opt = Adam(model, 0.1)
    for grads in _grad_stream(model, 3, seed=2):
        _set_grads(model, grads)
        opt.step()
    old = {k: v for k, v in opt.state_dict().items() if not k.startswith("updates/")}
    opt2 = Adam(_model(), 0.1)
    opt2.load_state_dict(old)
    assert opt2.updates == opt.updates == {k: 3 for k in opt.state["m"]}


def test_parameter_without_gradient_is_not_updated():
    model = _model()
    before = {k: v.copy() for k, v in model.params.items()}
    grads = _grad_stream(model, 1)[0]
    _set_grads(model, grads)
    del model.layers["score"].grads["weight"]          # e.g. a layer the loss never reached
    for opt in (SGD(model, 0.1, weight_decay=0.1), Adam(model, 0.1, weight_decay=0.1)):
        opt.step()
    np.testing.assert_array_equal(model.params["score.weight"], before["score.weight"])
    assert not np.array_equal(model.params["score.bias"], before["score.bias"])


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_state_dict_round_trip_continues_identically(cls, tmp_path):
    """Save the optimiser's state half-way (through an .npz, as a checkpoint does), load it
    into a fresh optimiser on a copy of the model: both continue with identical weights."""
    model = _model()
    kwargs = {"momentum": 0.9} if cls is SGD else {}
    opt = cls(model, 0.05, weight_decay=1e-3, **kwargs)
    stream = _grad_stream(model, 6, seed=7)
    for grads in stream[:3]:
        _set_grads(model, grads)
        opt.step()
    path = tmp_path / "opt.npz"
    io.save(path, {**{f"w/{k}": v for k, v in model.params.items()},
                   **{f"o/{k}": v for k, v in opt.state_dict().items()}})
    saved = io.load(path)

    clone = _model(seed=123)                              # different weights, then loaded
    clone.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("w/")})
    opt2 = cls(clone, 0.05, weight_decay=1e-3, **kwargs)
    opt2.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("o/")})
    assert opt2.steps == 3
    for grads in stream[3:]:
        for m, o in ((model, opt), (clone, opt2)):
            _set_grads(m, grads)
            o.step()
    for k in model.params:
        np.testing.assert_array_equal(clone.params[k], model.params[k], err_msg=k)

    # without the state (fresh buffers, step count 0) the continuation differs
    fresh = _model(seed=123)
    fresh.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("w/")})
    opt3 = cls(fresh, 0.05, weight_decay=1e-3, **kwargs)
    for grads in stream[3:]:
        _set_grads(fresh, grads)
        opt3.step()
    assert not np.allclose(fresh.params["conv.weight"], model.params["conv.weight"])


def test_state_dict_that_does_not_fit_is_refused():
    model = _model()
    opt = SGD(model, 0.1)
    _set_grads(model, _grad_stream(model, 1)[0])
    opt.step()
    state = opt.state_dict()
    state["momentum/nonexistent.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="nonexistent.weight"):
        SGD(_model(), 0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="does not fit"):
        Adam(_model(), 0.1).load_state_dict(opt.state_dict())     # SGD buffers into Adam


@pytest.mark.parametrize("cls,kwargs", [(SGD, dict(momentum=0.99, weight_decay=5e-4)),
                                        (Adam, dict(weight_decay=1e-2))])
def test_bias_lr_mult_matches_torch_param_groups(cls, kwargs):
    """``bias_lr_mult=2`` (Caffe's ``lr_mult: 2`` on biases, the paper recipe's): torch with
    the biases in a param group of twice the lr; and the weights still at 1x."""
    model = _model()
    frozen = set(model.frozen)
    tparams = _torch_params(model)
    groups = _torch_groups(tparams, frozen, kwargs["weight_decay"], bias_lr_mult=2.0)
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    ref = (torch.optim.SGD if cls is SGD else torch.optim.Adam)(groups, lr=LRS[0], **torch_kwargs)
    opt = cls(model, LRS[0], bias_lr_mult=2.0, **kwargs)
    _step_alongside_torch(model, opt, ref, tparams, seed=7, tol=1e-10)


def test_bias_lr_mult_by_hand():
    """One plain SGD step: weights move by lr g, biases by 2 lr g."""
    model = _model()
    w0, b0 = model.params["conv.weight"].copy(), model.params["conv.bias"].copy()
    grads = _grad_stream(model, 1)[0]
    _set_grads(model, grads)
    SGD(model, 0.1, momentum=0.0, bias_lr_mult=2.0).step()
    np.testing.assert_allclose(model.params["conv.weight"], w0 - 0.1 * grads["conv.weight"],
                               rtol=1e-13)
    np.testing.assert_allclose(model.params["conv.bias"], b0 - 0.2 * grads["conv.bias"], rtol=1e-13)


def test_optimizer_arguments_checked():
    model = _model()
    with pytest.raises(ValueError, match="lr"):
        SGD(model, 0.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(model, 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        Adam(model, 0.1, weight_decay=-1)
    with pytest.raises(ValueError, match="bias_lr_mult"):
        SGD(model, 0.1, bias_lr_mult=0.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\)"),   # 1 - b1^t = 0: a division by 0
    (dict(betas=(0.9, 1.0)), r"betas\[1\]"),                        # 1 - b2^t = 0: NaN weights
    (dict(betas=(-0.5, 0.999)), r"betas\[0\]"),
    (dict(betas=0.9), "betas must be a pair"),
    (dict(eps=-1e-8), "eps"),
    (dict(eps=float("nan")), "eps"),
])
def test_adam_arguments_checked_as_torch_does(kwargs, match):
    """torch refuses these too (``Invalid beta parameter`` / ``Invalid epsilon value``, a
    TypeError for a scalar ``betas``)."""
    with pytest.raises((ValueError, TypeError)):
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match=match):
        Adam(_model(), 0.1, **kwargs)


# -- learning-rate schedules, against values worked out by hand ---------------------------

@pytest.mark.parametrize("args,expected", [
    # fixed
    ((0.01, 0, 100, "fixed"), 0.01),
    ((0.01, 99, 100, "fixed"), 0.01),
    # poly: lr (1 - it/max)^0.9
    ((0.01, 0, 100, "poly"), 0.01),
    ((0.01, 50, 100, "poly"), 0.01 * 0.5 ** 0.9),            # 0.005358867...
    ((0.01, 75, 100, "poly"), 0.01 * 0.25 ** 0.9),           # 0.002872984...
    ((0.01, 100, 100, "poly"), 0.0),
    ((1e-10, 10, 40, "poly"), 1e-10 * 0.75 ** 0.9),
])
def test_schedules_by_hand(args, expected):
    assert learning_rate(*args) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_poly_hand_numbers():
    """The same, written as plain numbers (0.5 ** 0.9 = 0.535886731...)."""
    assert learning_rate(1.0, 50, 100, "poly") == pytest.approx(0.5358867312681466, rel=1e-12)
    assert learning_rate(1.0, 50, 100, "poly", power=1.0) == pytest.approx(0.5, rel=1e-12)
    assert learning_rate(1.0, 90, 100, "poly", power=2.0) == pytest.approx(0.01, rel=1e-12)


@pytest.mark.parametrize("it,schedule,expected", [
    (0, "fixed", 0.01 * 1 / 10),
    (4, "fixed", 0.01 * 5 / 10),
    (9, "fixed", 0.01),
    (10, "fixed", 0.01),
    (50, "fixed", 0.01),
    (0, "poly", 0.01 * 1 / 10),
    (4, "poly", 0.01 * 0.96 ** 0.9 * 5 / 10),
    (9, "poly", 0.01 * 0.91 ** 0.9),
    (10, "poly", 0.01 * 0.90 ** 0.9),
])
def test_warmup_by_hand(it, schedule, expected):
    """Linear warm-up over the first 10 iterations: (it + 1) / 10 of the schedule's lr."""
    assert learning_rate(0.01, it, 100, schedule, warmup=10) == pytest.approx(expected, rel=1e-12)


def test_unknown_schedule_refused():
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0.1, 0, 10, "cosine")


# -- on the GPU: one fused kernel per parameter, held to the NumPy updates ------------------

@pytest.mark.gpu
@pytest.mark.parametrize("kind,dtype", [("sgd", np.float64), ("sgd-plain", np.float64),
                                        ("adam", np.float64), ("sgd", np.float32),
                                        ("adam", np.float32)])
def test_fused_gpu_updates_match_numpy(kind, dtype):
    """The fused kernels against the NumPy updates; with float32 weights the gradients
    come as float64 (the NumPy update casts them, the kernel takes one dtype); plain SGD
    keeps no state on either device, so their checkpoints match."""
    import cupy
    from minifcn.models import FCN32s
    from minifcn.optim import Adam, SGD
    rng = np.random.default_rng(0)
    models = [FCN32s(num_classes=3, width=1 / 32, dtype=dtype, seed=1) for _ in range(2)]
    models[1].to("cuda")
    opts = [SGD(m, 0.1, momentum=0.0 if kind == "sgd-plain" else 0.9, weight_decay=1e-2)
            if kind.startswith("sgd") else Adam(m, 1e-2, weight_decay=1e-2) for m in models]
    for _ in range(3):
        grads = {name: rng.standard_normal(layer.params[p].shape)
                 for name, layer, p in models[0].parameters() if name not in models[0].frozen}
        for m, opt in zip(models, opts):
            for name, layer, p in m.parameters():
                if name in grads:
                    layer.grads[p] = grads[name] if m is models[0] else cupy.asarray(grads[name])
            opt.step()
    cpu, gpu = models[0].params, models[1].params
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for name in cpu:
        assert gpu[name].dtype == dtype, name
        np.testing.assert_allclose(cupy.asnumpy(gpu[name]), cpu[name], err_msg=name, **tol)
    assert sorted(opts[1].state_dict()) == sorted(opts[0].state_dict())
