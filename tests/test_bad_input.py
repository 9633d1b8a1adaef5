"""Bad input raises ValueError naming the parameter — never a NumPy broadcasting error,
an IndexError, a ZeroDivisionError, or a silently wrong answer.

Note that NumPy's own broadcasting error is *also* a ValueError, so every case asserts the
message with ``match=``: the name of the offending parameter must be in it.
"""
from __future__ import annotations

import numpy as np
import pytest

import minifcn.functional as F
from minifcn import nn


def _a(xp, *shape, dtype=np.float64):
    return xp.ones(shape, dtype=dtype)


# (id, call(xp), regex the message must match)
FUNCTIONAL = [
    # -- wrong ndim
    ("conv2d-input-3d", lambda xp: F.conv2d(_a(xp, 2, 5, 5), _a(xp, 3, 2, 3, 3)), r"input.*4-D"),
    ("conv2d-input-5d", lambda xp: F.conv2d(_a(xp, 1, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3)),
     r"input.*4-D"),
    ("conv2d-weight-3d", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3)), r"weight.*4-D"),
    ("conv_transpose2d-input-3d",
     lambda xp: F.conv_transpose2d(_a(xp, 2, 5, 5), _a(xp, 2, 3, 3, 3)), r"input.*4-D"),
    ("conv_transpose2d-weight-2d",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3)), r"weight.*4-D"),
    ("max_pool2d-input-3d", lambda xp: F.max_pool2d(_a(xp, 2, 5, 5), 2), r"input.*4-D"),
    ("im2col-x-2d", lambda xp: F.im2col(_a(xp, 5, 5), 2), r"x.*4-D"),
    ("col2im-col-4d", lambda xp: F.col2im(_a(xp, 1, 1, 3, 3), (3, 3)), r"col.*6-D"),
    ("loss-logits-3d", lambda xp: F.softmax_cross_entropy(_a(xp, 3, 2, 2),
                                                          xp.zeros((1, 2, 2), dtype=np.int64)),
     r"logits.*4-D"),
    # -- wrong dtype
    ("conv2d-int-input", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5, dtype=np.int64),
                                             _a(xp, 3, 2, 3, 3)), r"input.*floating"),
    ("max_pool2d-int-input", lambda xp: F.max_pool2d(_a(xp, 1, 2, 5, 5, dtype=np.int32), 2),
     r"input.*floating"),
    ("loss-float-labels", lambda xp: F.softmax_cross_entropy(_a(xp, 1, 3, 2, 2),
                                                             xp.zeros((1, 2, 2))),
     r"labels.*integer"),
    # -- channels that do not match the weight
    ("conv2d-channels", lambda xp: F.conv2d(_a(xp, 1, 3, 5, 5), _a(xp, 4, 2, 3, 3)),
     r"3 channels.*\(4, 2, 3, 3\)"),
    ("conv_transpose2d-channels",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3)),
     r"2 channels.*\(3, 2, 3, 3\)"),
    ("conv2d-bias-shape", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3),
                                              _a(xp, 4)), r"bias.*\(3,\)"),
    ("conv_transpose2d-bias-shape",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), _a(xp, 2)),
     r"bias.*\(3,\)"),
    # -- groups
    ("conv2d-in-channels-not-divisible-by-groups",
     lambda xp: F.conv2d(_a(xp, 1, 4, 5, 5), _a(xp, 3, 2, 3, 3), groups=3), r"groups.*3"),
    ("conv2d-out-channels-not-divisible-by-groups",
     lambda xp: F.conv2d(_a(xp, 1, 4, 5, 5), _a(xp, 3, 2, 3, 3), groups=2), r"groups.*2"),
    ("conv_transpose2d-channels-not-divisible-by-groups",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 4, 5, 5), _a(xp, 4, 1, 3, 3), groups=3),
     r"groups.*3"),
    ("conv2d-groups-0", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3), groups=0),
     r"groups"),
    ("conv2d-groups-negative",
     lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3), groups=-1), r"groups"),
    ("conv_transpose2d-groups-0",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), groups=0), r"groups"),
    # -- non-positive stride / kernel / dilation, negative padding
    ("conv2d-stride-0", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3), stride=0),
     r"stride"),
    ("conv2d-stride-negative-pair",
     lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3), stride=(1, -2)), r"stride"),
    ("conv2d-stride-float", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3),
                                                stride=1.5), r"stride"),
    ("conv2d-stride-triple", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3),
                                                 stride=(1, 1, 1)), r"stride"),
    ("conv2d-dilation-0",
     lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3), dilation=0), r"dilation"),
    ("conv2d-padding-negative",
     lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3), padding=-1), r"padding"),
    ("conv2d-kernel-0", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 0, 3)), r"kernel"),
    ("conv_transpose2d-stride-0",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), stride=0), r"stride"),
    ("conv_transpose2d-dilation-negative",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), dilation=(1, -1)),
     r"dilation"),
    ("conv_transpose2d-padding-negative",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), padding=(-1, 0)),
     r"padding"),
    ("conv_transpose2d-kernel-0",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 0)), r"kernel"),
    ("max_pool2d-kernel-0", lambda xp: F.max_pool2d(_a(xp, 1, 2, 5, 5), 0), r"kernel_size"),
    ("max_pool2d-stride-0", lambda xp: F.max_pool2d(_a(xp, 1, 2, 5, 5), 2, 0), r"stride"),
    ("max_pool2d-padding-negative", lambda xp: F.max_pool2d(_a(xp, 1, 2, 5, 5), 2, 2, -1),
     r"padding"),
    ("max_pool2d-padding-over-half-kernel",
     lambda xp: F.max_pool2d(_a(xp, 1, 2, 8, 8), 3, 1, 2), r"padding"),
    ("max_pool2d-dilation-0", lambda xp: F.max_pool2d(_a(xp, 1, 2, 5, 5), 2, 2, 0, 0),
     r"dilation"),
    ("im2col-kernel-0", lambda xp: F.im2col(_a(xp, 1, 1, 5, 5), 0), r"kernel_size"),
    ("im2col-padding-negative", lambda xp: F.im2col(_a(xp, 1, 1, 5, 5), 2, 1, -1), r"padding"),
    # -- output_padding >= max(stride, dilation)
    ("conv_transpose2d-output_padding-eq-stride",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), stride=2,
                                   output_padding=2), r"output_padding.*2"),
    ("conv_transpose2d-output_padding-stride1",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), output_padding=1),
     r"output_padding"),
    ("conv_transpose2d-output_padding-width-only",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), stride=(3, 2),
                                   dilation=(1, 1), output_padding=(2, 2)), r"output_padding"),
    ("conv_transpose2d-output_padding-negative",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), stride=2,
                                   output_padding=-1), r"output_padding"),
    # -- empty output size
    ("conv2d-empty-output", lambda xp: F.conv2d(_a(xp, 1, 2, 2, 5), _a(xp, 3, 2, 3, 3)),
     r"output size.*empty"),
    ("conv2d-empty-output-dilation",
     lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3), dilation=3),
     r"output size.*empty"),
    ("conv_transpose2d-empty-output",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 1, 1, 1), _a(xp, 1, 1, 1, 1), padding=1),
     r"output size.*empty"),
    ("max_pool2d-empty-output", lambda xp: F.max_pool2d(_a(xp, 1, 2, 1, 5), 2),
     r"output size.*empty"),
    ("im2col-empty-output", lambda xp: F.im2col(_a(xp, 1, 1, 2, 2), 3), r"output size.*empty"),
    ("col2im-image_size-mismatch", lambda xp: F.col2im(_a(xp, 1, 1, 3, 3, 2, 2), (3, 3)),
     r"image_size"),
    # -- algorithms / methods
    ("conv_transpose2d-subpixel-dilation",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), dilation=2,
                                   algorithm="subpixel"), r"subpixel.*dilation"),
    ("conv_transpose2d-subpixel-groups",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 1, 3, 3), groups=2,
                                   algorithm="subpixel"), r"subpixel.*groups"),
    ("conv_transpose2d-algorithm-unknown",
     lambda xp: F.conv_transpose2d(_a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3), algorithm="fft"),
     r"algorithm"),
    ("col2im-method-unknown", lambda xp: F.col2im(_a(xp, 1, 1, 2, 2, 2, 2), (3, 3), method="x"),
     r"method"),
    ("col2im-blocks-dilation",
     lambda xp: F.col2im(_a(xp, 1, 1, 2, 2, 1, 1), (3, 3), dilation=2, method="blocks"),
     r"blocks.*dilation"),
    # -- labels outside [0, C) other than ignore_index
    ("loss-label-eq-C", lambda xp: F.softmax_cross_entropy(
        _a(xp, 1, 3, 2, 2), xp.asarray(np.array([[[0, 1], [3, 255]]]))), r"labels.*\[0, 3\).*3"),
    ("loss-label-negative", lambda xp: F.softmax_cross_entropy(
        _a(xp, 1, 3, 2, 2), xp.asarray(np.array([[[0, -1], [2, 255]]]))), r"labels.*-1"),
    ("loss-label-254-uint8", lambda xp: F.softmax_cross_entropy(
        _a(xp, 1, 3, 2, 2), xp.asarray(np.array([[[0, 254], [2, 255]]], np.uint8))),
     r"labels.*254"),
    ("loss-backward-label-out-of-range", lambda xp: F.softmax_cross_entropy_backward(
        _a(xp, 1, 3, 2, 2), xp.asarray(np.array([[[0, 7], [2, 255]]]))), r"labels.*7"),
    ("loss-backward-log-probs-shape", lambda xp: F.softmax_cross_entropy_backward(
        _a(xp, 1, 3, 2, 2), xp.asarray(np.array([[[0, 1], [2, 255]]])),
        log_probs=_a(xp, 1, 3, 2, 1)), r"log_probs.*shape of logits"),
    ("loss-255-is-bad-when-ignore-is-other", lambda xp: F.softmax_cross_entropy(
        _a(xp, 1, 3, 2, 2), xp.asarray(np.array([[[0, 1], [2, 255]]])), ignore_index=-1),
     r"labels.*255"),
    ("loss-labels-shape", lambda xp: F.softmax_cross_entropy(
        _a(xp, 2, 3, 2, 2), xp.zeros((2, 2, 3), dtype=np.int64)), r"labels.*shape"),
    ("loss-reduction", lambda xp: F.softmax_cross_entropy(
        _a(xp, 1, 3, 2, 2), xp.zeros((1, 2, 2), dtype=np.int64), reduction="none"),
     r"reduction"),
    # -- dropout
    ("dropout-p-above-1", lambda xp: F.dropout(_a(xp, 1, 2, 3, 3), 1.5), r"\bp\b"),
    ("dropout-p-negative", lambda xp: F.dropout(_a(xp, 1, 2, 3, 3), -0.1), r"\bp\b"),
    ("dropout2d-3d-input", lambda xp: F.dropout(_a(xp, 2, 3, 3), 0.5, channelwise=True),
     r"4-D"),
    ("dropout-int-input", lambda xp: F.dropout(xp.ones((2, 3), dtype=np.int64), 0.3),
     r"dropout: input must be a floating-point array.*int64"),
    # -- weights and biases of the wrong kind
    ("conv2d-int-weight", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5),
                                              xp.ones((3, 2, 3, 3), dtype=np.int32)),
     r"weight must be a floating-point array.*int32"),
    ("conv_transpose2d-bool-weight", lambda xp: F.conv_transpose2d(
        _a(xp, 1, 2, 5, 5), xp.ones((2, 3, 3, 3), dtype=bool)), r"weight must be a floating"),
    ("conv2d-bias-list", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3),
                                             bias=[0.0] * 3), r"bias must be an array.*list"),
    ("conv2d-int-bias", lambda xp: F.conv2d(_a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3),
                                            bias=xp.zeros(3, dtype=np.int64)),
     r"bias must be a floating"),
    # -- backward with a grad_output of the wrong shape
    ("conv2d_backward-grad-shape", lambda xp: F.conv2d_backward(
        _a(xp, 1, 3, 4, 4), _a(xp, 1, 2, 5, 5), _a(xp, 3, 2, 3, 3)), r"grad_output"),
    ("conv_transpose2d_backward-grad-shape", lambda xp: F.conv_transpose2d_backward(
        _a(xp, 1, 3, 8, 8), _a(xp, 1, 2, 5, 5), _a(xp, 2, 3, 3, 3)), r"grad_output"),
    ("relu_backward-grad-shape", lambda xp: F.relu_backward(_a(xp, 1, 2, 3, 3),
                                                            _a(xp, 1, 2, 3, 4)), r"grad_output"),
    ("max_pool2d_backward-indices-shape", lambda xp: F.max_pool2d_backward(
        _a(xp, 1, 2, 3, 3), xp.zeros((1, 2, 3, 4), dtype=np.int32), (6, 6), 2), r"indices"),
    ("dropout_backward-grad-shape", lambda xp: F.dropout_backward(
        _a(xp, 2, 3, 4, 4), _a(xp, 2, 3, 4, 5)), r"grad_output|mask"),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in FUNCTIONAL])
def test_functional_bad_input(xp, call, match):
    with pytest.raises(ValueError, match=match):
        call(xp)


def _fwd(layer, *shape, dtype=np.float32):
    return lambda: layer.forward(np.ones(shape, dtype))


NN = [
    # -- constructors
    ("Conv2d-kernel-0", lambda: nn.Conv2d(3, 4, 0), r"kernel_size"),
    ("Conv2d-kernel-pair-0", lambda: nn.Conv2d(3, 4, (3, 0)), r"kernel_size"),
    ("Conv2d-stride-0", lambda: nn.Conv2d(3, 4, 3, stride=0), r"stride"),
    ("Conv2d-padding-negative", lambda: nn.Conv2d(3, 4, 3, padding=-1), r"padding"),
    ("Conv2d-dilation-0", lambda: nn.Conv2d(3, 4, 3, dilation=(1, 0)), r"dilation"),
    ("Conv2d-in-not-divisible-by-groups", lambda: nn.Conv2d(4, 6, 3, groups=3), r"groups.*3"),
    ("Conv2d-out-not-divisible-by-groups", lambda: nn.Conv2d(4, 6, 3, groups=4), r"groups.*4"),
    ("Conv2d-groups-0", lambda: nn.Conv2d(4, 4, 3, groups=0), r"groups"),
    ("Conv2d-groups-negative", lambda: nn.Conv2d(4, 4, 3, groups=-1), r"groups"),
    ("Conv2d-in_channels-0", lambda: nn.Conv2d(0, 4, 3), r"in_channels"),
    ("ConvTranspose2d-kernel-0", lambda: nn.ConvTranspose2d(3, 4, 0), r"kernel_size"),
    ("ConvTranspose2d-stride-negative", lambda: nn.ConvTranspose2d(3, 4, 3, stride=-2),
     r"stride"),
    ("ConvTranspose2d-padding-negative", lambda: nn.ConvTranspose2d(3, 4, 3, padding=(0, -1)),
     r"padding"),
    ("ConvTranspose2d-dilation-0", lambda: nn.ConvTranspose2d(3, 4, 3, dilation=0), r"dilation"),
    ("ConvTranspose2d-not-divisible-by-groups", lambda: nn.ConvTranspose2d(4, 6, 3, groups=4),
     r"groups.*4"),
    ("ConvTranspose2d-groups-0", lambda: nn.ConvTranspose2d(4, 4, 3, groups=0), r"groups"),
    ("ConvTranspose2d-output_padding-eq-stride",
     lambda: nn.ConvTranspose2d(3, 3, 4, stride=2, output_padding=2), r"output_padding"),
    ("ConvTranspose2d-output_padding-stride1",
     lambda: nn.ConvTranspose2d(3, 3, 3, output_padding=(0, 1)), r"output_padding"),
    ("ConvTranspose2d-output_padding-negative",
     lambda: nn.ConvTranspose2d(3, 3, 3, stride=2, output_padding=-1), r"output_padding"),
    ("ConvTranspose2d-subpixel-with-dilation",
     lambda: nn.ConvTranspose2d(3, 3, 3, dilation=2, algorithm="subpixel")
     .forward(np.ones((1, 3, 4, 4), np.float32)), r"subpixel"),
    ("MaxPool2d-kernel-0", lambda: nn.MaxPool2d(0), r"kernel_size"),
    ("MaxPool2d-stride-0", lambda: nn.MaxPool2d(2, 0), r"stride"),
    ("MaxPool2d-padding-negative", lambda: nn.MaxPool2d(2, 2, -1), r"padding"),
    ("MaxPool2d-dilation-0", lambda: nn.MaxPool2d(2, 2, 0, 0), r"dilation"),
    ("MaxPool2d-return_indices", lambda: nn.MaxPool2d(2, return_indices=True), r"return_indices"),
    ("Conv2d-int-dtype", lambda: nn.Conv2d(3, 4, 3, dtype=np.int32), r"Conv2d: dtype.*int32"),
    ("ConvTranspose2d-int-dtype", lambda: nn.ConvTranspose2d(3, 4, 3, dtype=np.int64),
     r"ConvTranspose2d: dtype.*int64"),
    ("ConvTranspose2d-unknown-algorithm", lambda: nn.ConvTranspose2d(3, 3, 4, algorithm="bogus"),
     r"algorithm must be one of.*'bogus'"),
    ("Dropout-forward-int", _fwd(nn.Dropout(0.3), 4, 5, dtype=np.int64),
     r"floating-point.*int64"),
    ("Dropout-p", lambda: nn.Dropout(1.5), r"\bp\b"),
    ("Dropout2d-p", lambda: nn.Dropout2d(-0.5), r"\bp\b"),
    ("SoftmaxCrossEntropy-reduction", lambda: nn.SoftmaxCrossEntropy(reduction="none"),
     r"reduction"),
    # -- forward
    ("Conv2d-forward-3d", _fwd(nn.Conv2d(3, 4, 3), 3, 5, 5), r"4-D"),
    ("Conv2d-forward-channels", _fwd(nn.Conv2d(3, 4, 3), 1, 2, 5, 5), r"3 input channels"),
    ("Conv2d-forward-empty-output", _fwd(nn.Conv2d(3, 4, 3), 1, 3, 2, 7),
     r"output size.*empty"),
    ("Conv2d-forward-int", _fwd(nn.Conv2d(3, 4, 3), 1, 3, 5, 5, dtype=np.int64), r"floating"),
    ("ConvTranspose2d-forward-5d", _fwd(nn.ConvTranspose2d(3, 4, 3), 1, 1, 3, 5, 5), r"4-D"),
    ("ConvTranspose2d-forward-channels", _fwd(nn.ConvTranspose2d(3, 4, 3), 1, 4, 5, 5),
     r"3 input channels"),
    ("ConvTranspose2d-forward-empty-output", _fwd(nn.ConvTranspose2d(1, 1, 1, padding=1),
                                                  1, 1, 1, 1), r"output size.*empty"),
    ("MaxPool2d-forward-3d", _fwd(nn.MaxPool2d(2), 3, 5, 5), r"4-D"),
    ("MaxPool2d-forward-empty-output", _fwd(nn.MaxPool2d(3), 1, 1, 2, 9), r"output size.*empty"),
    ("MaxPool2d-forward-padding-over-half", _fwd(nn.MaxPool2d(3, 1, 2), 1, 1, 8, 8), r"padding"),
    ("Dropout2d-forward-3d", _fwd(nn.Dropout2d(0.5), 3, 5, 5), r"4-D"),
    ("SoftmaxCrossEntropy-label-out-of-range", lambda: nn.SoftmaxCrossEntropy().forward(
        np.zeros((1, 3, 2, 2), np.float32), np.array([[[0, 3], [1, 255]]])), r"labels.*3"),
    ("SoftmaxCrossEntropy-label-negative", lambda: nn.SoftmaxCrossEntropy().forward(
        np.zeros((1, 3, 2, 2), np.float32), np.array([[[0, -2], [1, 255]]])), r"labels.*-2"),
    ("SoftmaxCrossEntropy-logits-3d", lambda: nn.SoftmaxCrossEntropy().forward(
        np.zeros((3, 2, 2), np.float32), np.zeros((1, 2, 2), np.int64)), r"logits"),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in NN])
def test_nn_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("kwargs,match", [
    (dict(width="0.5"), r"width must be a positive finite number, got '0.5'"),
    (dict(width=float("inf")), r"width must be a positive finite number, got inf"),
    (dict(width=0), r"width must be a positive finite number, got 0"),
    (dict(num_classes=2.5), r"num_classes must be a positive int, got 2.5"),
    (dict(num_classes=True), r"num_classes must be a positive int, got True"),
])
def test_build_model_bad_arguments(kwargs, match):
    from minifcn.models import build_model
    with pytest.raises(ValueError, match=match):
        build_model("fcn8s", **kwargs)


def test_build_model_takes_numpy_counts():
    from minifcn.models import build_model
    model = build_model("fcn32s", num_classes=np.int64(3), width=np.float32(1 / 32))
    assert model.num_classes == 3 and type(model.num_classes) is int


def test_numpy_integer_counts_are_ints():
    """Counts that arrive as NumPy integers (read from an array, a config) are accepted
    wherever Python ints are, by the layer and by the functional op it calls."""
    layer = nn.Conv2d(np.int64(6), np.int64(6), 3, groups=np.int64(2), dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 6, 5, 5))
    ref = F.conv2d(x, layer.weight, layer.bias, groups=2)
    np.testing.assert_array_equal(layer.forward(x), ref)
    assert type(layer.groups) is int


def test_bad_label_message_names_the_sizes():
    """The message says which labels were found and the valid range."""
    with pytest.raises(ValueError) as info:
        F.softmax_cross_entropy(np.zeros((1, 21, 1, 3)), np.array([[[0, 21, 300]]]))
    msg = str(info.value)
    assert "[0, 21)" in msg and "21" in msg and "300" in msg and "255" in msg


def test_bad_input_leaves_layer_usable():
    """A refused forward does not break the layer: the next good call works."""
    layer = nn.Conv2d(3, 4, 3, seed=0)
    with pytest.raises(ValueError):
        layer.forward(np.ones((1, 2, 5, 5), np.float32))
    y = layer.forward(np.ones((1, 3, 5, 5), np.float32))
    assert layer.backward(np.ones(y.shape, np.float32)).shape == (1, 3, 5, 5)


# -- the library's other entry points (an audit of the API found these accepted, or
#    failing deep inside, or, the first four, silently wrong) ---------------------------

def test_max_pool_backward_checks_the_winning_taps():
    """Taps outside the window (or not integers) used to drop the gradient silently: the
    sum of dx read 0.0 for ``tap + 10``."""
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    _, tap = F.max_pool2d(x, 2, return_indices=True)
    dy = np.ones(tap.shape)
    for bad, needle in ((tap + 10, r"indices must be taps 0 \.\. 3 of the 2x2 window, got "
                                   r"values from 1\d to 1\d"),
                        (tap - 5, r"indices must be taps 0 \.\. 3.*from -\d"),
                        (tap.astype(np.float64), r"indices must be an integer array")):
        with pytest.raises(ValueError, match=needle):
            F.max_pool2d_backward(dy, bad, (4, 4), 2)
    assert F.max_pool2d_backward(dy, tap, (4, 4), 2).sum() == 4          # the good taps pass


def test_an_optimizer_checks_each_gradient_before_moving_any_parameter():
    """A gradient of another shape was broadcast over the weight (shape (1,) for a
    (2, 1, 1, 1) weight: every value moved by the same step); now it is named, and no
    parameter moves."""
    from minifcn.optim import SGD
    model = nn.Graph([("conv", nn.Conv2d(1, 2, 1), ["data"])])
    before = {k: v.copy() for k, v in model.params.items()}
    opt = SGD(model, lr=0.1)
    grads = model.layers["conv"].grads
    grads["bias"] = np.ones(2)
    grads["weight"] = np.ones(1)
    with pytest.raises(ValueError, match=r"gradient of 'conv.weight'.*\(2, 1, 1, 1\)"):
        opt.step()
    grads["weight"] = np.ones((2, 1, 1, 1), np.complex128)
    with pytest.raises(ValueError, match=r"gradient of 'conv.weight' must be a float array"):
        opt.step()
    assert all(np.array_equal(model.params[k], before[k]) for k in before) and opt.steps == 0


@pytest.mark.parametrize("kwargs,needle", [
    ({"lr": "0.1"}, "lr"), ({"lr": None}, "lr"), ({"lr": float("inf")}, "lr"),
    ({"lr": True}, "lr"), ({"lr": 0.1, "weight_decay": float("nan")}, "weight_decay"),
    ({"lr": 0.1, "bias_lr_mult": float("inf")}, "bias_lr_mult"),
    ({"lr": 0.1, "momentum": "0.9"}, "momentum")])
def test_optimizer_settings_are_finite_numbers(kwargs, needle):
    from minifcn.optim import SGD
    model = nn.Graph([("conv", nn.Conv2d(1, 2, 1), ["data"])])
    with pytest.raises(ValueError, match=needle):
        SGD(model, **kwargs)


def test_optimizer_step_lr_and_state_are_checked():
    from minifcn.optim import Adam, learning_rate
    model = nn.Graph([("conv", nn.Conv2d(1, 2, 1), ["data"])])
    opt = Adam(model, lr=0.1)
    with pytest.raises(ValueError, match="eps"):
        Adam(model, lr=0.1, eps=None)
    for lr in (-1, float("nan")):
        with pytest.raises(ValueError, match="step: lr"):
            opt.step(lr=lr)
    good = {"steps": np.array(3), "updates/conv.weight": np.array(3),
            "m/conv.weight": np.zeros((2, 1, 1, 1)), "v/conv.weight": np.zeros((2, 1, 1, 1))}
    opt.load_state_dict(good)
    for bad, needle in ((dict(good, **{"m/conv.weight": np.zeros(3)}), r"'m/conv.weight' has shape"),
                        (dict(good, steps=np.array(-5)), "'steps' must be a whole number"),
                        (dict(good, **{"updates/conv.weight": np.array(-1)}), "'updates/conv.weight'"),
                        ({k: v for k, v in good.items() if k != "steps"}, "no 'steps'"),
                        (dict(good, nokind=np.zeros(1)), "'nokind' does not fit")):
        with pytest.raises(ValueError, match=needle):
            opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="power"):
        learning_rate(0.1, 10, 100, "poly", power=-1)
    with pytest.raises(ValueError, match="iteration"):
        learning_rate(0.1, -50, 100, "poly")


@pytest.mark.parametrize("value", [None, 1.5, "255", True])
def test_ignore_index_is_an_int(value):
    """None, 1.5 or '255' used to mean 'ignore nothing' without a word."""
    from minifcn.metrics import ConfusionMatrix
    logits, labels = np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2), np.int64)
    with pytest.raises(ValueError, match="ignore_index must be an int"):
        F.softmax_cross_entropy(logits, labels, ignore_index=value)
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: ignore_index must be an int"):
        nn.SoftmaxCrossEntropy(ignore_index=value)
    with pytest.raises(ValueError, match="ignore_index must be an int"):
        ConfusionMatrix(3, ignore_index=value)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(True)


def test_small_layers_and_helpers_name_what_is_wrong():
    from minifcn import explain
    with pytest.raises(ValueError, match="Scale: input must be a floating-point array"):
        nn.Scale(0.5).forward(np.array([3]))                 # used to give [0]
    with pytest.raises(ValueError, match="Graph: needs at least one node"):
        nn.Graph([])
    with pytest.raises(ValueError, match="same Cin"):          # used to use weight[:2]
        explain.transposed_conv_by_stamping(np.ones((1, 2, 3, 3)), np.ones((3, 1, 2, 2)))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        F.conv_output_size(4, 2, 0)                           # ZeroDivisionError


def test_io_save_names_the_target_not_its_temporary_file(tmp_path):
    """A missing folder or a folder in the file's place named ``.x.npz.rpnu5lkh.tmp``."""
    from minifcn import io
    with pytest.raises(FileNotFoundError, match=f"no such folder .*{tmp_path.name}.no.*x.npz"):
        io.save(tmp_path / "no" / "x.npz", {"a": np.ones(2)})
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError, match=r"is a directory.*d\.npz"):
        io.save(tmp_path / "d.npz", {"a": np.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]        # no temporary left


def test_data_and_model_helpers_refuse_what_they_would_get_wrong():
    """A float image in 0..1 was preprocessed as if 0..255; noise=inf drew garbage images;
    a float loader state was truncated; bilinear_kernel(2.5) and an integer
    bilinear_weight (all zeros) came back without a word; dropout(rng=0) failed deep."""
    from minifcn.data import BatchLoader, SyntheticShapes, preprocess
    from minifcn.models.fcn import bilinear_kernel, bilinear_weight
    with pytest.raises(ValueError, match="image must be uint8"):
        preprocess(np.full((4, 4, 3), 0.5))
    for kwargs in ({"noise": float("inf")}, {"texture": float("nan")}):
        with pytest.raises(ValueError, match="noise and texture must be finite"):
            SyntheticShapes(2, size=(32, 32), **kwargs)
    loader = BatchLoader(SyntheticShapes(4, size=(32, 32)), batch_size=2)
    state = loader.state_dict()
    bad = dict(state, order=[float(i) + 0.5 for i in state["order"]])
    with pytest.raises(ValueError, match="whole numbers"):
        loader.load_state_dict(bad)
    loader.load_state_dict(state)                                 # the good one still loads
    with pytest.raises(ValueError, match="size must be a positive int"):
        bilinear_kernel(2.5)
    with pytest.raises(ValueError, match="dtype must be a float type"):
        bilinear_weight(2, 4, dtype=np.int64)
    with pytest.raises(ValueError, match="rng must be a random Generator"):
        F.dropout(np.ones((2, 2)), 0.5, rng=0)


def test_explain_and_load_state_dict_name_bad_arguments():
    from minifcn import explain
    with pytest.raises(ValueError, match="factor must be a positive int"):
        explain.upsampling_error(np.ones((8, 8)), 0)             # ZeroDivisionError
    with pytest.raises(ValueError, match="image must be 2-D"):
        explain.upsampling_error(np.ones((2, 8, 8)), 2)
    model = nn.Graph([("conv", nn.Conv2d(1, 2, 1), ["data"])])
    with pytest.raises(ValueError, match="state must be a dict.*got list"):
        model.load_state_dict([np.ones(2)])                       # 'unhashable type'
    with pytest.raises(ValueError, match="non-str keys"):
        model.load_state_dict({**model.state_dict(), 1: np.ones(2)})


def test_flags_and_dtypes_that_would_read_wrong():
    """``ceil_mode='no'`` and ``training='no'`` read as True; ``astype(int)`` made integer
    weights that only failed later, in forward."""
    x = np.ones((1, 1, 4, 4))
    with pytest.raises(ValueError, match="ceil_mode must be True or False"):
        F.max_pool2d(x, 2, ceil_mode="no")
    with pytest.raises(ValueError, match="training must be True or False"):
        F.dropout(x, 0.5, training="no")
    with pytest.raises(ValueError, match="Conv2d.astype: dtype must be a float type"):
        nn.Conv2d(1, 2, 1).astype(np.int32)
    model = nn.Graph([("conv", nn.Conv2d(1, 2, 1), ["data"])])
    with pytest.raises(ValueError, match="dtype must be a float type"):
        model.astype(np.complex64)
    assert model.astype(np.float32).params["conv.weight"].dtype == np.float32


def test_a_graph_node_must_be_a_layer_and_counts_must_be_counts():
    from minifcn.metrics import metrics_from_matrix
    with pytest.raises(ValueError, match="Graph: node 'f' is a function, not a layer"):
        nn.Graph([("f", lambda x: x, ["data"])])                  # AttributeError at forward
    for bad in (np.array([[1, -1], [0, 2]]), np.array([[1, np.nan], [0, 2]])):
        with pytest.raises(ValueError, match="pixel counts"):     # NaN metrics before
            metrics_from_matrix(bad)


_X = np.ones((1, 2, 4, 4), np.float32)
_LIST = _X.tolist()


@pytest.mark.parametrize("call,name", [
    pytest.param(lambda: F.relu_backward(_LIST, _X), "grad_output", id="relu_backward-dy"),
    pytest.param(lambda: F.relu_backward(_X, _LIST), "forward output", id="relu_backward-y"),
    pytest.param(lambda: F.dropout_backward(_LIST, _X), "grad_output", id="dropout_backward-dy"),
    pytest.param(lambda: F.dropout_backward(_X, _LIST), "mask", id="dropout_backward-mask"),
    pytest.param(lambda: F.log_softmax(_LIST), "z", id="log_softmax"),
    pytest.param(lambda: F.softmax_cross_entropy(_LIST, np.zeros((1, 4, 4), np.int64)),
                 "logits", id="softmax_cross_entropy"),
    pytest.param(lambda: F.conv2d(_X, np.ones((2, 2, 3, 3)).tolist()), "weight", id="conv2d-w"),
    pytest.param(lambda: nn.Add().forward(_X, _LIST), "second input", id="Add"),
    pytest.param(lambda: nn.Crop().forward(_LIST, _X), "Crop: input", id="Crop-x"),
    pytest.param(lambda: nn.Crop().forward(_X, _LIST), "reference map", id="Crop-ref"),
    pytest.param(lambda: nn.PadTo(8).forward(_LIST), "PadTo: input", id="PadTo"),
    pytest.param(lambda: nn.Scale(2).forward(_LIST), "Scale: input", id="Scale"),
])
def test_a_list_where_an_array_belongs_is_named(call, name):
    # before: AttributeError "'list' object has no attribute 'shape'" (Add, Crop, PadTo,
    # Scale, log_softmax) or a message about shape None
    with pytest.raises(ValueError, match=f"{name}.*a list, not an array"):
        call()


def test_crop_and_pad_need_4d_maps():
    with pytest.raises(ValueError, match=r"Crop: input must be a 4-D .* shape \(3, 3\)"):
        nn.Crop().forward(np.ones((3, 3)), _X)                    # IndexError before
    with pytest.raises(ValueError, match=r"PadTo: input must be a 4-D .* shape \(3,\)"):
        nn.PadTo(4).forward(np.ones(3))


def test_conv_transpose_layer_checks_its_algorithm_when_built():
    # before: only the first forward said so
    with pytest.raises(ValueError, match=r"ConvTranspose2d: algorithm 'winograd' .*kernel \(3, 3\)"):
        nn.ConvTranspose2d(2, 2, 3, stride=1, algorithm="winograd")
    with pytest.raises(ValueError, match=r"ConvTranspose2d: algorithm 'implicit' needs .*groups 2"):
        nn.ConvTranspose2d(2, 2, 4, stride=2, groups=2, algorithm="implicit")
    layer = nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1, algorithm="winograd", seed=0)
    assert layer.forward(_X).shape == (1, 3, 8, 8)


def test_max_pool_backward_names_padding_and_ceil_mode():
    dy, tap = np.ones((1, 1, 8, 8)), np.zeros((1, 1, 8, 8), np.int64)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: padding \(2, 2\) must be at most "
                                         r"half the kernel size \(3, 3\)"):
        F.max_pool2d_backward(dy, tap, (8, 8), 3, 1, padding=2)  # blamed input_size before
    with pytest.raises(ValueError, match="max_pool2d_backward: ceil_mode must be True or False"):
        F.max_pool2d_backward(dy, tap, (8, 8), 3, 1, padding=1, ceil_mode="no")


def test_load_state_dict_refuses_nan_or_inf_weights_and_keeps_its_own():
    model = nn.Graph([("conv", nn.Conv2d(1, 2, 1, seed=0), ["data"])])
    before = {k: v.copy() for k, v in model.params.items()}
    state = {k: v.copy() for k, v in before.items()}
    state["conv.weight"][0] = np.nan
    state["conv.bias"][:] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf: conv.weight: 1 of 2 values; "
                                         r"conv.bias: 2 of 2 values"):
        model.load_state_dict(state)                            # loaded silently before
    import torch                                                # a torch state dict too
    with pytest.raises(ValueError, match=r"NaN or inf: conv.weight: 1 of 2 values"):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
