r"""Softmax cross-entropy over every pixel, with an ignored label.

For logits ``z (N, K, H, W)`` and labels ``t (N, H, W)``, at each pixel whose label is not
``ignore_index``::

    loss_pixel = -log softmax(z)[t] = logsumexp(z) - z[t]

computed stably as ``m + log(sum exp(z - m)) - z[t]`` with ``m = max z`` (no overflow for
logits of any size). ``reduction='sum'`` adds the pixel losses (the FCN paper's
un-normalised loss); ``'mean'`` divides by the number of non-ignored pixels.

Gradient: ``dloss/dz = softmax(z) - onehot(t)`` at counted pixels, 0 at ignored ones
(even where their logits are inf or NaN, as in the CUDA kernel; torch's product with a
zero weight gives NaN there), divided by the count for ``'mean'``. If every pixel is
ignored the loss and the gradient are 0 (torch's ``'mean'`` returns NaN there; a batch of
pure "void" should not poison training).

On the CPU the layer's forward keeps ``e = exp(z - m)`` and ``s = sum e`` (:class:`Softmax`),
so that its backward is one pass, ``e * ([t != ignore] * scale / s)``, and ``-scale`` at
each counted pixel's label: the gradient reuses the forward's exponentials in place,
where recomputing ``exp(log_softmax)`` cost two more passes over the logits.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from ._checks import check_array, check_ignore_index, shape_of
from ._select import all_finite, select

REDUCTIONS = ("mean", "sum")


def _check(logits, labels, ignore_index, reduction):
    if getattr(logits, "ndim", None) != 4:
        raise ValueError(f"logits must be a 4-D array (N, C, H, W), got {shape_of(logits)}")
    if logits.dtype.kind != "f":
        raise ValueError(f"logits must be floating-point, got dtype {logits.dtype}")
    n, k, h, w = logits.shape
    if k < 1:
        raise ValueError(f"logits must have at least one class (axis 1), got shape {tuple(logits.shape)}")
    if getattr(labels, "shape", None) != (n, h, w):
        raise ValueError(f"labels must have shape (N, H, W) = {(n, h, w)} to match logits "
                         f"{tuple(logits.shape)}, got {shape_of(labels)}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_ignore_index(ignore_index)
    xp = get_array_module(labels)
    bad = ((labels < 0) | (labels >= k)) & (labels != ignore_index)
    if bool(bad.any()):
        values = sorted({int(v) for v in xp.unique(labels[bad])[:5].tolist()})
        raise ValueError(f"labels must lie in [0, {k}) or equal ignore_index={ignore_index}; "
                         f"found {values} ({int(bad.sum())} pixels)")


def log_softmax(z, axis=1):
    """``z - logsumexp(z)`` along ``axis``, with the max subtracted first."""
    check_array(z, "log_softmax: z")
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    shifted -= xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted


def _label_index(labels, valid, k):
    """Flat indices into a C-ordered (N, K, H, W) array of ``[n, labels[n, h, w], h, w]``
    at the counted pixels, in C order of (n, h, w)."""
    n, h, w = labels.shape
    hw = h * w
    pixel = (np.arange(n, dtype=np.int64)[:, None] * (k * hw)
             + np.arange(hw, dtype=np.int64)[None, :])
    return (pixel + labels.reshape(n, hw).astype(np.int64) * hw)[valid.reshape(n, hw)]


class Softmax(NamedTuple):
    """What the CPU forward keeps for the backward: ``e = exp(z - max z)`` (N, K, H, W), C
    order, the logits' dtype; ``s = e.sum(axis=1)`` (N, 1, H, W); ``valid`` the counted
    pixels (N, H, W); ``at_label`` their labels' flat indices into ``e``."""
    e: np.ndarray
    s: np.ndarray
    valid: np.ndarray
    at_label: np.ndarray


def _softmax_loss(logits, labels, valid, keep_log_probs):
    """CPU: ``(sum of the counted pixels' losses in float64, Softmax, log_probs or None)``."""
    shifted = np.subtract(logits, logits.max(axis=1, keepdims=True),
                          out=np.empty(logits.shape, dtype=logits.dtype))     # C order
    at_label = _label_index(labels, valid, logits.shape[1])
    at_label_sum = float(shifted.reshape(-1)[at_label].sum(dtype=np.float64))   # sum of z[t] - m
    e = np.exp(shifted) if keep_log_probs else np.exp(shifted, out=shifted)
    s = e.sum(axis=1, keepdims=True)
    log_s = np.log(s)
    n, _, h, w = logits.shape
    # loss_pixel = log s - (z[t] - m)
    log_s_sum = float(log_s.reshape(n, h * w)[valid.reshape(n, h * w)].sum(dtype=np.float64))
    total = log_s_sum - at_label_sum
    log_probs = None
    if keep_log_probs:
        log_probs = shifted
        log_probs -= log_s
    return total, Softmax(e, s, valid, at_label), log_probs


def softmax_cross_entropy(logits, labels, ignore_index=255, reduction="mean",
                          return_log_probs=False):
    """The loss as a Python float (accumulated in float64).

    With ``return_log_probs`` also returns ``log_softmax(logits)`` (None on the GPU, whose
    kernel never forms it), for :func:`softmax_cross_entropy_backward` to reuse."""
    _check(logits, labels, ignore_index, reduction)
    loss, log_probs, _ = _forward(logits, labels, ignore_index, reduction, keep="log_probs")
    return (loss, log_probs) if return_log_probs else loss


def _forward(logits, labels, ignore_index, reduction, keep="softmax"):
    """Checked arguments -> ``(loss, kept, count of counted pixels)``. ``kept``, for the
    backward, on the CPU: a :class:`Softmax` (``keep='softmax'``, the layer's) or
    ``log_softmax(logits)`` (``keep='log_probs'``); None on the GPU or with no pixel
    counted."""
    xp = get_array_module(logits)
    valid = labels != ignore_index
    count = int(valid.sum())
    kept = None
    if count == 0:
        total = 0.0
    elif xp is not np:
        from ..kernels import gpu_softmax_cross_entropy   # per-pixel loss, 0 where ignored
        total = float(gpu_softmax_cross_entropy(logits, labels, ignore_index).sum(dtype=np.float64))
    else:
        total, softmax, log_probs = _softmax_loss(logits, labels, valid, keep == "log_probs")
        kept = log_probs if keep == "log_probs" else softmax
    loss = total / count if reduction == "mean" and count > 0 else total
    return loss, kept, count


def softmax_cross_entropy_backward(logits, labels, ignore_index=255, reduction="mean",
                                   log_probs=None):
    """``dloss/dlogits = (softmax(z) - onehot(t)) * [t != ignore] / (count or 1)``.

    Shapes: logits (N, K, H, W), labels (N, H, W) -> gradient (N, K, H, W), logits' dtype.
    Why: a pixel's loss is ``logsumexp(z) - z[t]``; ``d logsumexp(z) / dz_k = softmax(z)_k``
    and ``d z[t] / dz_k = [k == t]``. Ignored pixels add nothing to the loss, so nothing
    to the gradient; ``'mean'`` divides the loss, hence the gradient, by the count.

    ``log_probs``: ``log_softmax(logits)`` if the caller has it (the forward pass's, from
    ``return_log_probs``); otherwise it is computed here.
    """
    _check(logits, labels, ignore_index, reduction)
    if log_probs is not None and getattr(log_probs, "shape", None) != logits.shape:
        raise ValueError(f"log_probs {shape_of(log_probs)} must have the shape "
                         f"of logits {tuple(logits.shape)}")
    return _backward(logits, labels, ignore_index, reduction, log_probs)


def _backward(logits, labels, ignore_index, reduction, log_probs=None, count=None):
    """Checked arguments -> the gradient. ``count``: the counted pixels, if the caller has
    it from the forward pass (on the GPU, counting is a host sync). ``log_probs``: the
    forward's ``log_softmax``, or its :class:`Softmax` (whose ``e`` becomes the gradient,
    in place)."""
    xp = get_array_module(logits)
    if isinstance(log_probs, Softmax):
        return _backward_from_softmax(log_probs, reduction, count)
    valid = labels != ignore_index
    if count is None:
        count = int(valid.sum())
    if xp is not np:
        from ..kernels import gpu_softmax_cross_entropy_backward
        denom = count if reduction == "mean" and count > 0 else 1
        return gpu_softmax_cross_entropy_backward(logits, labels, ignore_index, denom)
    if log_probs is None:
        kept = _softmax_loss(logits, labels, valid, False)[1]
    else:                              # softmax = exp(log_probs): already normalised (s = 1)
        e = np.exp(log_probs, out=np.empty(logits.shape, dtype=logits.dtype))   # C order
        n, k, h, w = logits.shape
        kept = Softmax(e, np.ones((n, 1, h, w), dtype=e.dtype), valid,
                       _label_index(labels, valid, k))
    return _backward_from_softmax(kept, reduction, count)


def _backward_from_softmax(kept, reduction, count):
    """The gradient from the forward's :class:`Softmax`, written over its ``e``:
    ``e * (valid * scale / s)`` (softmax, scaled, 0 at ignored pixels) in one pass, then
    ``-scale`` at each counted pixel's label."""
    e, s, valid, at_label = kept
    scale = 1.0 / count if reduction == "mean" and count > 0 else 1.0
    factor = np.divide(e.dtype.type(scale), s)
    factor *= valid[:, None]
    finite = all_finite(e)                    # e is NaN where a logit was inf or NaN
    np.multiply(e, factor, out=e)
    if not finite:                            # NaN * 0 is NaN: ignored pixels get 0 exactly
        select(e, e, valid[:, None], False)
    e.reshape(-1)[at_label] -= e.dtype.type(scale)
    return e
