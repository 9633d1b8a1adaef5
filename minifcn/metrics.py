r"""The confusion matrix, and the four segmentation metrics of the FCN paper.

Let ``n_ij`` be the number of pixels of true class ``i`` predicted as class ``j``,
``t_i = sum_j n_ij`` the pixels of class ``i``, and ``p_i = sum_j n_ji`` the pixels
predicted as ``i``. The intersection over union of class ``i`` is

    IU_i = n_ii / (t_i + p_i - n_ii)

and the paper's metrics (Long, Shelhamer, Darrell 2015, section 5) are

    pixel accuracy     sum_i n_ii / sum_i t_i
    mean accuracy      (1/n_cl) sum_i n_ii / t_i
    mean IU            (1/n_cl) sum_i IU_i
    frequency-weighted IU   (sum_k t_k)^-1  sum_i t_i IU_i

**Classes that are absent** are the one choice to make, since the paper's ``n_cl`` counts
every class and a class with no pixels anywhere has IU = 0/0:

- mean IU averages over the classes present in the truth *or* the prediction
  (``t_i + p_i > 0``). A class that is predicted but absent from the truth has IU 0
  and counts: a false alarm is an error.
- mean accuracy averages over the classes present in the truth (``t_i > 0``); accuracy
  of a class with no pixels is undefined.
- per-class IU is ``None`` for classes absent from both (``None`` rather than NaN, so
  the dict goes to JSON as it is); f.w. IU gives such classes weight 0 anyway.

This is what the FCN reference code computes (a NaN-skipping mean over the same 0/0
classes). Pixels whose label is ``ignore_index`` (255, VOC's void) are not counted at all.
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy
from .functional._checks import check_ignore_index

METRIC_NAMES = {"pixel_acc": "pixel acc.", "mean_acc": "mean acc.", "mean_iou": "mean IU",
                "fw_iou": "f.w. IU"}


class ConfusionMatrix:
    """Accumulates ``n_ij`` over any number of ``update(pred, target)`` calls.

    ``matrix[i, j]`` = pixels of true class ``i`` predicted as ``j`` (int64, NumPy).
    ``pred`` and ``target`` are integer arrays of one shape (NumPy or CuPy: the counting
    runs where they live, only the ``K x K`` counts come back to the host).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = check_ignore_index(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[...] = 0

    def update(self, pred, target) -> None:
        """Count the pixels of one prediction (class indices) against its labels."""
        xp = get_array_module(pred, target)
        pred, target = xp.asarray(pred), xp.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
        for name, a in (("pred", pred), ("target", target)):
            if a.dtype.kind not in "iu":
                raise ValueError(f"{name} must be an integer array of class indices, got dtype {a.dtype}")
        k = self.num_classes
        valid = target != self.ignore_index
        t = target[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        for name, a in (("target", t), ("pred", p)):
            bad = (a < 0) | (a >= k)
            if bool(bad.any()):
                values = sorted(int(v) for v in to_numpy(xp.unique(a[bad]))[:5])
                raise ValueError(f"{name} has values {values} outside [0, {k})"
                                 + (f" (other than ignore_index={self.ignore_index})" if name == "target" else ""))
        counts = xp.bincount(t * k + p, minlength=k * k)     # pixel (i, j) -> bin i*k + j
        self.matrix += to_numpy(counts).reshape(k, k)

    def compute(self) -> dict:
        """``pixel_acc``, ``mean_acc``, ``mean_iou``, ``fw_iou`` (floats) and ``per_class_iou``
        (a list, ``None`` for classes absent from truth and prediction). With no pixels
        counted at all, every value is ``None``."""
        return metrics_from_matrix(self.matrix)


def metrics_from_matrix(matrix) -> dict:
    """The paper's four metrics (and per-class IU) from a confusion matrix ``n_ij``."""
    n = np.asarray(matrix, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] != n.shape[1]:
        raise ValueError(f"a confusion matrix is square (K, K), got shape {n.shape}")
    if not (np.isfinite(n).all() and (n >= 0).all()):
        raise ValueError("a confusion matrix holds pixel counts: every entry finite and >= 0")
    diag = np.diag(n)            # n_ii
    t = n.sum(axis=1)            # t_i: pixels of class i
    p = n.sum(axis=0)            # p_i: pixels predicted as i
    union = t + p - diag
    present = union > 0          # in the truth or in the prediction
    in_truth = t > 0
    iou = np.divide(diag, union, out=np.zeros_like(diag), where=present)
    total = t.sum()
    if total == 0:
        return {"pixel_acc": None, "mean_acc": None, "mean_iou": None, "fw_iou": None,
                "per_class_iou": [None] * len(diag)}
    acc = np.divide(diag, t, out=np.zeros_like(diag), where=in_truth)
    return {
        "pixel_acc": float(diag.sum() / total),
        "mean_acc": float(acc[in_truth].mean()),
        "mean_iou": float(iou[present].mean()),
        "fw_iou": float((t * iou).sum() / total),
        "per_class_iou": [float(v) if ok else None for v, ok in zip(iou, present)],
    }


def format_metrics(metrics: dict, class_names=None) -> str:
    """A small text table of the four metrics and the per-class IU, for printing."""
    def num(v):
        return "   -  " if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:6.4f}"

    lines = [f"{label:<12}{num(metrics.get(key))}" for key, label in METRIC_NAMES.items() if key in metrics]
    per_class = metrics.get("per_class_iou")
    if per_class is not None:
        names = list(class_names) if class_names is not None else []
        names += [f"class {i}" for i in range(len(names), len(per_class))]
        width = max([12] + [len(s) + 2 for s in names[:len(per_class)]])
        lines.append("")
        lines.append(f"{'class':<{width}}IU")
        lines += [f"{names[i]:<{width}}{num(v)}" for i, v in enumerate(per_class)]
    return "\n".join(lines)
