"""Softmax cross-entropy against ``torch.nn.functional.cross_entropy(ignore_index=255)``:
value and gradient, 'mean' and 'sum', float64 and float32, huge logits, all-ignored."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RTOL, assert_close, to_np
from minifcn import nn
from minifcn.functional import (log_softmax, softmax_cross_entropy,
                                softmax_cross_entropy_backward)
from minifcn.gradcheck import numerical_gradient

DTYPES = [np.float64, np.float32]


def torch_ce(logits, labels, reduction, ignore_index=255):
    """float64 torch reference: (loss, dloss/dlogits)."""
    z = torch.tensor(np.asarray(logits, dtype=np.float64), requires_grad=True)
    t = torch.tensor(np.asarray(labels, dtype=np.int64))
    loss = TF.cross_entropy(z, t, ignore_index=ignore_index, reduction=reduction)
    loss.backward()
    return float(loss.detach()), z.grad.numpy()


def make_case(rng, n, k, h, w, dtype, ignore_frac=0.2, scale=3.0, label_dtype=np.int64):
    logits = (scale * rng.standard_normal((n, k, h, w))).astype(dtype)
    labels = rng.integers(0, k, (n, h, w))
    labels[rng.random((n, h, w)) < ignore_frac] = 255
    return logits, labels.astype(label_dtype)


def check_ce(xp, logits, labels, reduction, ignore_index=255):
    dtype = logits.dtype
    loss = softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels), ignore_index, reduction)
    grad = softmax_cross_entropy_backward(xp.asarray(logits), xp.asarray(labels), ignore_index,
                                          reduction)
    ref_loss, ref_grad = torch_ce(logits, labels, reduction, ignore_index)
    assert type(loss) is float
    assert np.isfinite(loss) and np.isfinite(to_np(grad)).all()
    # Relative error, plus a floor of a few roundings of the terms that cancel: a pixel's
    # loss is logsumexp(z) - z_y, each of size ~max|z|, and its gradient softmax - onehot,
    # of size 1 (over the count, for 'mean'). A near-certain prediction (loss 1e-6 in
    # float32) cannot be closer than that to the exact value, whatever the code does.
    count = max(1, int((np.asarray(labels) != ignore_index).sum()))
    per_pixel = 1.0 / count if reduction == "mean" else 1.0
    eps = np.finfo(dtype).eps
    loss_floor = 4 * eps * float(np.abs(logits).max(initial=0.0)) * count * per_pixel
    assert abs(loss - ref_loss) <= RTOL[dtype] * abs(ref_loss) + loss_floor, (loss, ref_loss)
    # the gradient from scratch, and from the forward pass's log-probabilities (the layer's way)
    loss_again, log_probs = softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels),
                                                  ignore_index, reduction, return_log_probs=True)
    assert loss_again == loss
    grad_reusing = softmax_cross_entropy_backward(xp.asarray(logits), xp.asarray(labels),
                                                  ignore_index, reduction, log_probs=log_probs)
    for g in (grad, grad_reusing):
        assert g.dtype == dtype and g.shape == logits.shape
        err = float(np.abs(np.asarray(to_np(g), np.float64) - ref_grad).max(initial=0.0))
        assert err <= RTOL[dtype] * float(np.abs(ref_grad).max(initial=0.0)) + 4 * eps * per_pixel, \
            f"gradient ({reduction}): max error {err:.3e}"


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_cross_entropy_matches_torch(xp, reduction, dtype, label_dtype):
    logits, labels = make_case(np.random.default_rng(0), 3, 5, 7, 6, dtype,
                               label_dtype=label_dtype)
    check_ce(xp, logits, labels, reduction)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), k=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5),
       reduction=st.sampled_from(["mean", "sum"]), dtype=st.sampled_from(DTYPES),
       ignore_frac=st.sampled_from([0.0, 0.3, 0.9]), seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_random(xp, n, k, h, w, reduction, dtype, ignore_frac, seed):
    logits, labels = make_case(np.random.default_rng(seed), n, k, h, w, dtype, ignore_frac)
    if (labels == 255).all():
        labels[0, 0, 0] = 0           # torch's 'mean' is NaN when all are ignored (tested apart)
    check_ce(xp, logits, labels, reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype,scale", [(np.float64, 1e4), (np.float64, 1e30),
                                         (np.float64, 1e300), (np.float32, 1e4),
                                         (np.float32, 1e30)])    # float32 ends near 3.4e38
def test_cross_entropy_is_stable_for_huge_logits(xp, reduction, dtype, scale):
    """Logits ~1e4 and far beyond: exp would overflow; log-sum-exp must not."""
    logits, labels = make_case(np.random.default_rng(1), 2, 4, 3, 3, np.float64, scale=1.0)
    logits = (logits * scale).astype(dtype)
    check_ce(xp, logits, labels, reduction)


def test_cross_entropy_with_a_huge_winning_margin_is_exactly_zero_loss(xp):
    logits = np.zeros((1, 3, 1, 2))
    logits[0, 1] = 1e4
    labels = np.array([[[1, 1]]])
    assert softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels)) == 0.0
    wrong = np.array([[[0, 0]]])
    assert softmax_cross_entropy(xp.asarray(logits), xp.asarray(wrong)) == pytest.approx(1e4)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_gives_zero_loss_and_zero_gradient(xp, reduction):
    """Documented: 0 loss and 0 gradient (torch's 'mean' gives NaN here; 'sum' gives 0)."""
    logits = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    labels = np.full((2, 4, 4), 255)
    loss = softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels), reduction=reduction)
    grad = to_np(softmax_cross_entropy_backward(xp.asarray(logits), xp.asarray(labels),
                                                reduction=reduction))
    assert loss == 0.0 and type(loss) is float
    assert (grad == 0).all()
    if reduction == "sum":
        ref_loss, ref_grad = torch_ce(logits, labels, "sum")
        assert ref_loss == 0.0 and (ref_grad == 0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.filterwarnings("ignore:invalid value encountered")   # inf - inf in log_softmax
def test_ignored_pixels_get_zero_gradient_even_with_non_finite_logits(xp, bad):
    """Documented: ignored pixels add nothing, so their gradient is exactly 0, whatever
    their logits (the CUDA kernel's rule; torch multiplies by a zero weight and gives NaN
    there). Counted pixels match torch."""
    logits, labels = make_case(np.random.default_rng(5), 2, 4, 3, 5, np.float64)
    labels[0, 0, :3] = 255
    logits[0, :, 0, 0] = bad                         # one ignored pixel, all its logits
    logits[0, 1, 0, 1] = bad                         # another, one logit
    grad = to_np(softmax_cross_entropy_backward(xp.asarray(logits), xp.asarray(labels)))
    ignored = labels == 255
    assert (np.moveaxis(grad, 1, -1)[ignored] == 0).all()
    clean = np.where(ignored[:, None], 0.0, logits)  # torch's reference, ignored pixels tamed
    ref_loss, ref_grad = torch_ce(clean, labels, "mean")
    assert_close(grad, ref_grad, np.float64)
    loss = softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels))
    assert loss == pytest.approx(ref_loss, rel=1e-12)


def test_other_ignore_index(xp):
    logits, labels = make_case(np.random.default_rng(3), 2, 4, 3, 5, np.float64)
    labels[labels == 255] = -1
    check_ce(xp, logits, labels, "mean", ignore_index=-1)


def test_mean_is_over_non_ignored_pixels(xp):
    logits = np.zeros((1, 2, 1, 4))                  # every pixel's loss is log 2
    labels = np.array([[[0, 1, 255, 255]]])
    assert softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels)) == pytest.approx(np.log(2))
    assert softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels),
                                 reduction="sum") == pytest.approx(2 * np.log(2))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_central_differences(reduction):
    """float64 central differences on the loss itself (an independent check of the formula)."""
    logits, labels = make_case(np.random.default_rng(4), 2, 4, 3, 3, np.float64)
    grad = softmax_cross_entropy_backward(logits, labels, reduction=reduction)
    num = numerical_gradient(lambda: softmax_cross_entropy(logits, labels, reduction=reduction),
                             logits, eps=1e-6)
    assert np.abs(grad - num).max() <= 1e-7 * max(np.abs(num).max(), 1.0)


def test_log_softmax_matches_torch(xp):
    z = np.random.default_rng(5).standard_normal((2, 5, 3, 3)) * 100
    np.testing.assert_allclose(to_np(log_softmax(xp.asarray(z))),
                               TF.log_softmax(torch.tensor(z), dim=1).numpy(), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_layer_forward_returns_float_and_backward_gradient(xp, reduction):
    logits, labels = make_case(np.random.default_rng(6), 2, 3, 4, 4, np.float32)
    crit = nn.SoftmaxCrossEntropy(reduction=reduction)
    loss = crit.forward(xp.asarray(logits), xp.asarray(labels))
    assert type(loss) is float
    assert crit(xp.asarray(logits), xp.asarray(labels)) == loss
    ref_loss, ref_grad = torch_ce(logits, labels, reduction)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_close(crit.backward(), ref_grad, np.float32, "SoftmaxCrossEntropy.backward")
    assert crit.counted == int((labels != 255).sum())


def test_layer_keeps_no_stale_state_after_a_refused_forward():
    logits, labels = make_case(np.random.default_rng(8), 1, 3, 2, 2, np.float64)
    crit = nn.SoftmaxCrossEntropy()
    crit.forward(logits, labels)
    bad = labels.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="labels"):
        crit.forward(logits, bad)
    assert crit.counted is None
    with pytest.raises(RuntimeError, match="before forward"):
        crit.backward()                  # not the previous call's gradient


def test_layer_checks_and_counts_once_per_step(monkeypatch):
    """The backward reuses the forward's check and count (each a host sync on the GPU)."""
    import minifcn.functional.loss as loss_mod
    checks = []
    real = loss_mod._check
    monkeypatch.setattr(loss_mod, "_check", lambda *a: (checks.append(1), real(*a))[1])
    logits, labels = make_case(np.random.default_rng(7), 2, 3, 4, 4, np.float64)
    crit = nn.SoftmaxCrossEntropy()
    crit.forward(logits, labels)
    grad = crit.backward()
    assert len(checks) == 1
    assert_close(grad, torch_ce(logits, labels, "mean")[1], np.float64)


@pytest.mark.parametrize("layout", ["fortran", "h-w swapped view", "channels-last view"])
def test_logits_in_any_memory_order(layout):
    """The gradient is built in C order whatever the logits' layout: the one-hot must land
    in the returned array, not in a reshaped copy of it (layer and function both)."""
    logits, labels = make_case(np.random.default_rng(16), 2, 4, 5, 3, np.float64)
    if layout == "fortran":
        z = np.asfortranarray(logits)
    elif layout == "h-w swapped view":
        z = np.ascontiguousarray(logits.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    else:
        z = np.ascontiguousarray(logits.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not z.flags.c_contiguous
    check_ce(np, z, labels, "mean")
    crit = nn.SoftmaxCrossEntropy()
    crit.forward(z, labels)
    assert_close(crit.backward(), torch_ce(logits, labels, "mean")[1], np.float64, "layer")


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)])
def test_empty_batch_or_image(xp, shape):
    """No pixel at all: loss 0 and an empty gradient of the logits' shape (torch: NaN)."""
    z = xp.zeros(shape, dtype=np.float32)
    t = xp.zeros((shape[0],) + shape[2:], dtype=np.int64)
    for reduction in ("mean", "sum"):
        assert softmax_cross_entropy(z, t, reduction=reduction) == 0.0
        grad = softmax_cross_entropy_backward(z, t, reduction=reduction)
        assert grad.shape == shape and grad.dtype == np.float32


def test_loss_does_not_modify_inputs(xp):
    logits, labels = make_case(np.random.default_rng(7), 2, 3, 4, 4, np.float64)
    zl, tl = xp.asarray(logits), xp.asarray(labels)
    softmax_cross_entropy(zl, tl)
    softmax_cross_entropy_backward(zl, tl)
    np.testing.assert_array_equal(to_np(zl), logits)
    np.testing.assert_array_equal(to_np(tl), labels)


def test_zero_classes_is_a_clear_error():
    """No classes at all: a ValueError naming the class axis (it was NumPy's 'zero-size
    array to reduction operation maximum')."""
    from minifcn.functional import softmax_cross_entropy
    with pytest.raises(ValueError, match="at least one class"):
        softmax_cross_entropy(np.zeros((1, 0, 2, 2)), np.full((1, 2, 2), 255))
