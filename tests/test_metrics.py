"""The confusion matrix and the paper's four metrics, against hand-counted examples.

Each example writes its pixels out, then the matrix n_ij that counting them by hand gives,
then the expected metrics as exact fractions of those counts (t_i = row sums, p_i = column
sums, IU_i = n_ii / (t_i + p_i - n_ii)).
"""
from __future__ import annotations

import json
from fractions import Fraction as F

import numpy as np
import pytest

from minifcn.metrics import ConfusionMatrix, format_metrics, metrics_from_matrix


def _close(got, expected):
    assert got == pytest.approx(float(expected), abs=1e-12), (got, expected)


def test_three_class_example_by_hand(xp):
    target = xp.asarray([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = xp.asarray([0, 0, 1, 0, 1, 1, 2, 2, 2, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = truth, columns = prediction
    assert cm.matrix.tolist() == [[3, 1, 0],
                                  [0, 2, 1],
                                  [1, 0, 2]]
    # t = (4, 3, 3), p = (4, 3, 3), n_ii = (3, 2, 2)
    m = cm.compute()
    _close(m["pixel_acc"], F(3 + 2 + 2, 10))
    _close(m["mean_acc"], (F(3, 4) + F(2, 3) + F(2, 3)) / 3)
    iu = [F(3, 4 + 4 - 3), F(2, 3 + 3 - 2), F(2, 3 + 3 - 2)]
    for got, want in zip(m["per_class_iou"], iu):
        _close(got, want)
    _close(m["mean_iou"], sum(iu) / 3)
    _close(m["fw_iou"], (4 * iu[0] + 3 * iu[1] + 3 * iu[2]) / 10)


def test_ignore_index_pixels_are_not_counted(xp):
    target = xp.asarray([[0, 1, 255], [255, 1, 0]])
    pred = xp.asarray([[0, 0, 1], [9, 1, 1]])        # 9 sits on an ignored pixel: fine
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1],
                                  [1, 1]]
    assert cm.compute()["pixel_acc"] == pytest.approx(0.5)


def test_custom_ignore_index():
    cm = ConfusionMatrix(2, ignore_index=-1)
    cm.update(np.array([0, 1, 1]), np.array([0, -1, 1]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]


def test_class_absent_from_truth_and_prediction_is_left_out():
    # 4 classes, class 3 never appears.
    target = np.array([0, 0, 1, 2, 2])
    pred = np.array([0, 1, 1, 2, 0])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0, 0],
                                  [0, 1, 0, 0],
                                  [1, 0, 1, 0],
                                  [0, 0, 0, 0]]
    m = cm.compute()
    iu = [F(1, 2 + 2 - 1), F(1, 1 + 2 - 1), F(1, 2 + 1 - 1)]
    assert m["per_class_iou"][3] is None
    for got, want in zip(m["per_class_iou"][:3], iu):
        _close(got, want)
    _close(m["mean_iou"], sum(iu) / 3)                      # n_cl = 3, not 4
    _close(m["mean_acc"], (F(1, 2) + F(1, 1) + F(1, 2)) / 3)
    _close(m["fw_iou"], (2 * iu[0] + 1 * iu[1] + 2 * iu[2]) / 5)
    json.dumps(m)                                           # None, not NaN: valid JSON


def test_class_predicted_but_absent_from_truth_counts_as_iou_zero():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 0, 1],
                                  [0, 2, 0],
                                  [0, 0, 0]]
    m = cm.compute()
    # t = (2, 2, 0), p = (1, 2, 1): IU = 1/2, 2/2, 0/1
    assert m["per_class_iou"] == [0.5, 1.0, 0.0]
    _close(m["mean_iou"], (F(1, 2) + 1 + 0) / 3)           # the false alarm counts
    _close(m["mean_acc"], (F(1, 2) + 1) / 2)                # class 2 has t = 0: left out
    _close(m["pixel_acc"], F(3, 4))
    _close(m["fw_iou"], (2 * F(1, 2) + 2 * 1 + 0 * 0) / 4)


def test_updates_accumulate():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(3, 7, 9))
    pred = rng.integers(0, 5, size=(3, 7, 9))
    one = ConfusionMatrix(5)
    one.update(pred, target)
    many = ConfusionMatrix(5)
    for k in range(3):
        many.update(pred[k], target[k])
    np.testing.assert_array_equal(one.matrix, many.matrix)
    many.reset()
    assert many.matrix.sum() == 0


def test_bincount_matches_a_plain_count_and_metrics_match_the_definitions(xp):
    rng = np.random.default_rng(1)
    k = 5
    target = rng.integers(0, k, size=(2, 13, 11))
    target[0, :3] = 255
    pred = rng.integers(0, k - 1, size=target.shape)        # class 4 never predicted
    cm = ConfusionMatrix(k)
    cm.update(xp.asarray(pred), xp.asarray(target))
    n = [[0] * k for _ in range(k)]
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist()):
        if t != 255:
            n[t][p] += 1
    assert cm.matrix.tolist() == n
    t = [sum(row) for row in n]
    p = [sum(n[i][j] for i in range(k)) for j in range(k)]
    iu = [F(n[i][i], t[i] + p[i] - n[i][i]) for i in range(k)]
    m = cm.compute()
    _close(m["pixel_acc"], F(sum(n[i][i] for i in range(k)), sum(t)))
    _close(m["mean_acc"], sum(F(n[i][i], t[i]) for i in range(k)) / k)
    _close(m["mean_iou"], sum(iu) / k)
    _close(m["fw_iou"], sum(t[i] * iu[i] for i in range(k)) / sum(t))


def test_nothing_counted_gives_none():
    m = ConfusionMatrix(3).compute()
    assert m["pixel_acc"] is None and m["mean_iou"] is None and m["per_class_iou"] == [None] * 3
    assert "-" in format_metrics(m)


@pytest.mark.parametrize("pred, target, message", [
    (np.zeros((2, 3), int), np.zeros((3, 2), int), "same shape"),
    (np.zeros(4, int), np.array([0, 1, 3, 255]), "target has values [3]"),
    (np.array([0, -1, 0, 0]), np.zeros(4, int), "pred has values [-1]"),
    (np.zeros(4, np.float32), np.zeros(4, int), "integer"),
])
def test_bad_arguments_are_refused(pred, target, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ConfusionMatrix(3).update(pred, target)


def test_metrics_from_matrix_refuses_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        metrics_from_matrix(np.zeros((2, 3)))


def test_format_metrics_lists_every_metric_and_class():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    text = format_metrics(cm.compute(), class_names=["background", "disc"])
    for word in ("pixel acc.", "mean acc.", "mean IU", "f.w. IU", "background", "disc", "class 2"):
        assert word in text
    assert "0.6667" in text                                 # pixel accuracy 2/3
