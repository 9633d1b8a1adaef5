"""``minifcn.gradcheck.check_gradients`` on every layer of ``minifcn.nn`` — and proof it can fail.

The reference is float64 central differences of ``L = <layer(x), g>``: no calculus is
shared with the backward passes under test. Inputs keep away from kinks (ReLU at 0,
max-pool ties), where a central difference straddles two slopes. A check that never
fails proves nothing, so deliberately wrong layers must be caught.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minifcn.gradcheck import check_gradients, numerical_gradient
from minifcn.nn import Conv2d, ConvTranspose2d, Dropout, Dropout2d, MaxPool2d, ReLU

SETTINGS = settings(max_examples=20, deadline=None)


def _input(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _assert_ok(report, wrt_input=True):
    assert report.ok, str(report)
    if wrt_input:                          # the input gradient was checked, not skipped
        assert "input" in report.errors, str(report)


# -- the checker itself, on a function whose derivative is known ----------------------------

def test_numerical_gradient_of_known_function():
    x = np.array([[0.5, -1.5], [2.0, 3.0]])
    grad = numerical_gradient(lambda: float(np.sum(x ** 3)), x)
    np.testing.assert_allclose(grad, 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, [[0.5, -1.5], [2.0, 3.0]])    # restored after probing


def test_refuses_float32_layer():
    with pytest.raises(ValueError, match="float64"):
        check_gradients(Conv2d(1, 1, 3, seed=0), _input(0, (1, 1, 4, 4)))


# -- every layer passes ----------------------------------------------------------------------

@SETTINGS
@given(st.integers(1, 2), st.sampled_from([1, 2]), st.integers(1, 2), st.integers(1, 3),
       st.integers(1, 2), st.integers(0, 2), st.integers(1, 2), st.booleans(),
       st.integers(0, 3), st.integers(0, 1000))
def test_conv2d(n, groups, cpg, k, s, p, d, bias, extra, seed):
    c = o = groups * cpg
    size = max(1, d * (k - 1) + 1 - 2 * p) + extra
    layer = Conv2d(c, o, k, s, p, d, groups, bias, dtype=np.float64, seed=seed)
    _assert_ok(check_gradients(layer, _input(seed, (n, c, size, size + 1))))


@SETTINGS
@given(st.integers(1, 2), st.sampled_from([1, 2]), st.integers(1, 2), st.integers(1, 4),
       st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.integers(0, 2),
       st.booleans(), st.sampled_from(["col2im", "subpixel", "fused", "implicit", "winograd"]),
       st.integers(1, 3),
       st.integers(0, 1000))
def test_conv_transpose2d(n, groups, cpg, k, s, p, d, op, bias, algorithm, size, seed):
    if algorithm in ("subpixel", "implicit", "winograd"):     # these: dilation 1, groups 1
        d, groups = 1, 1
    if algorithm == "winograd":                               # and this one k = 2s
        k = 2 * s
    op = op % max(s, d)
    out = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
    if out < 1:
        p = 0
    c, o = groups * cpg, groups * (3 - cpg)
    layer = ConvTranspose2d(c, o, k, s, p, op, groups, bias, d, dtype=np.float64, seed=seed,
                            algorithm=algorithm)
    _assert_ok(check_gradients(layer, _input(seed, (n, c, size, size + 1))))


def test_conv_transpose2d_fcn_upsampler():
    """FCN-8s's last upsampler (k16, s8, p4) and FCN-32s's (k64, s32, p16), sampled."""
    for k, s, p in ((16, 8, 4), (64, 32, 16)):
        layer = ConvTranspose2d(2, 2, k, s, p, dtype=np.float64, seed=k)
        _assert_ok(check_gradients(layer, _input(k, (1, 2, 2, 2)), max_checks=40))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 5), st.integers(0, 1000))
def test_relu_away_from_zero(c, size, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, size, size))
    x = np.sign(x) * (0.1 + np.abs(x))               # |x| >= 0.1, far from the kink
    x[x == 0] = 0.5
    _assert_ok(check_gradients(ReLU(), x))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(1, 2),
       st.booleans(), st.integers(0, 4), st.integers(0, 1000))
def test_maxpool_away_from_ties(k, s, p, d, ceil_mode, extra, seed):
    if 2 * p > k:                        # torch's limit: half the kernel
        p = 0
    size = d * (k - 1) + 1 + extra       # >= the dilated kernel: no window is all padding
    rng = np.random.default_rng(seed)
    shape = (2, 2, size, size + 1)
    # distinct values 0.01 apart: no ties, and a +-1e-6 probe never changes a winner
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01
    _assert_ok(check_gradients(MaxPool2d(k, s, p, d, ceil_mode=ceil_mode), x))


def test_maxpool_ceil_mode_partial_window():
    """5 wide, k2 s2: ceil_mode adds a third, one-pixel window at the edge."""
    x = np.random.default_rng(1).permutation(50).reshape(1, 2, 5, 5) * 0.01
    layer = MaxPool2d(2, 2, ceil_mode=True)
    assert layer.forward(x).shape == (1, 2, 3, 3)
    _assert_ok(check_gradients(layer, x))


@pytest.mark.parametrize("cls", [Dropout, Dropout2d])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5])
@pytest.mark.parametrize("training", [True, False])
def test_dropout(cls, p, training):
    layer = cls(p, seed=3).train(training)
    _assert_ok(check_gradients(layer, _input(3, (2, 3, 4, 4))))


# -- a wrong backward is caught ------------------------------------------------------------------

class DoubledInputGrad(Conv2d):
    """Returns 2x the right dx."""

    def backward(self, dy):
        return 2 * super().backward(dy)


class NoBiasGrad(Conv2d):
    """Forgets the bias gradient (reports zeros)."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["bias"] = np.zeros_like(self.grads["bias"])
        return dx


class UnflippedKernelGrad(ConvTranspose2d):
    """A plausible slip: the weight gradient with the kernel taps flipped."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["weight"] = self.grads["weight"][:, :, ::-1, ::-1].copy()
        return dx


class MaxPoolToFirstTap(MaxPool2d):
    """Routes every gradient to the top-left tap of its window instead of the winner."""

    def backward(self, dy):
        self._tap = np.zeros_like(self._tap)
        return super().backward(dy)


@pytest.mark.parametrize("layer, x, culprit", [
    (DoubledInputGrad(2, 3, 3, padding=1, dtype=np.float64, seed=0), (2, 2, 5, 5), "input"),
    (NoBiasGrad(2, 3, 3, dtype=np.float64, seed=0), (2, 2, 5, 5), "bias"),
    (UnflippedKernelGrad(2, 3, 3, 2, 1, dtype=np.float64, seed=0), (1, 2, 3, 3), "weight"),
    (MaxPoolToFirstTap(2), (1, 2, 4, 4), "input"),
])
@pytest.mark.parametrize("max_checks", [None, 10])
def test_wrong_backward_fails(layer, x, culprit, max_checks):
    shape = x
    x = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape) * 0.01
    report = check_gradients(layer, x, max_checks=max_checks)
    assert not report.ok, f"a wrong {culprit} gradient passed: {report}"
    assert report.errors[culprit] > 1e-2, str(report)
    assert report.errors[f"{culprit} (direction)"] > 1e-2, str(report)
    assert "FAILED" in str(report)
    others = {k: v for k, v in report.errors.items() if not k.startswith(culprit)}
    assert all(v <= report.tolerance for v in others.values()), str(report)


class OneTapRowOff(ConvTranspose2d):
    """A localized slip: the weight gradient of one row of kernel taps 1.5x too large."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["weight"][:, :, 0, :] *= 1.5
        return dx


@pytest.mark.parametrize("seed", range(6))
def test_sampled_check_still_catches_a_localized_bug(seed):
    """FCN's k64 s32 upsampler has 16,384 weight taps; 40 sampled entries miss a wrong row
    of taps (1.6% of them) about half the time, the one-direction check never."""
    layer = OneTapRowOff(2, 2, 64, 32, 16, bias=False, dtype=np.float64, seed=1)
    report = check_gradients(layer, _input(seed, (1, 2, 2, 2)), max_checks=40, seed=seed)
    assert report.errors["weight (direction)"] > 10 * report.tolerance, str(report)
    assert not report.ok                  # (a right gradient's direction error is ~1e-10)


def test_inplace_and_frozen_and_inputless_layers_can_be_checked():
    """An in-place ReLU (each forward gets a copy), a layer with a frozen weight (no
    gradient to compare: skipped) and one that returns no input gradient."""
    x = _input(3, (1, 2, 4, 5))
    x[np.abs(x) < 0.05] = 0.5                             # away from the kink
    _assert_ok(check_gradients(ReLU(inplace=True), x))
    conv = Conv2d(2, 3, 3, padding=1, dtype=np.float64, seed=0)
    conv.frozen.add("weight")
    report = check_gradients(conv, x)
    _assert_ok(report)
    assert "weight" not in report.errors and "bias" in report.errors
    conv = Conv2d(2, 3, 3, padding=1, dtype=np.float64, seed=0)
    conv.need_input_grad = False
    report = check_gradients(conv, x)
    _assert_ok(report, wrt_input=False)
    assert "input" not in report.errors and "weight" in report.errors


def test_a_backward_that_returns_nothing_fails_and_an_empty_report_is_not_ok():
    """A ReLU whose backward returned None used to pass every check here: the input check
    was skipped and a report with no errors was 'ok'. Now it is an error, unless the
    layer says it computes no input gradient, and an empty report is not ok."""
    from minifcn.gradcheck import GradcheckReport

    class Silent(ReLU):
        def backward(self, dy):
            super().backward(dy)
            return None
    with pytest.raises(ValueError, match="Silent.backward returned no input gradient"):
        check_gradients(Silent(), _input(4, (1, 2, 3, 3)))
    assert not GradcheckReport(tolerance=1e-6).ok
    assert GradcheckReport({"input": 1e-9}, 1e-6).ok
