r"""Check any layer's hand-written backward pass against float64 central differences.

For a layer ``f`` and a fixed random ``g`` shaped like its output, take the scalar
``L(x, θ) = <f(x; θ), g>``. Then ``dL/dx = f.backward(g)`` and ``dL/dθ = f.grads[θ]``, and
each can be estimated without any calculus:

    dL/dx_i ≈ (L(x + ε e_i) - L(x - ε e_i)) / (2ε)          (error O(ε²))

``check_gradients`` compares the two, entry by entry, for the input and every parameter;
and, since probing entry by entry may be limited to a sample (``max_checks``), also along
one random direction ``v`` through *every* entry of each tensor at once:

    <dL/dθ, v> ≈ (L(θ + ε v) - L(θ - ε v)) / (2ε)

(its error is reported relative to ``|dL/dθ| |v|``). Use it on your own layer::

    from minifcn.gradcheck import check_gradients
    report = check_gradients(MyLayer().astype(np.float64), x.astype(np.float64))
    assert report.ok, report

Run it in float64 and away from kinks (ReLU at 0, max-pool ties): the estimate straddles
the kink there and disagrees with either one-sided derivative. Randomness (dropout) is
held fixed by restoring the layer's ``rng`` state before every evaluation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from .backend import to_numpy


def numerical_gradient(f, x, eps=1e-6, indices=None):
    """Central-difference gradient of the scalar function ``f`` at ``x`` (modified in place
    and restored). ``indices``: flat positions to probe (default: all); others are 0."""
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient needs a C-contiguous array it can perturb in place")
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in (range(flat.size) if indices is None else indices):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


@dataclass
class GradcheckReport:
    """Per tensor ('input', or a parameter name): the largest relative error found."""
    errors: dict = field(default_factory=dict)
    tolerance: float = 0.0

    @property
    def ok(self) -> bool:
        """Every error within the tolerance, and something was checked (a report with no
        errors passed nothing)."""
        return bool(self.errors) and all(e <= self.tolerance for e in self.errors.values())

    def __str__(self):
        rows = ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())
        return f"gradcheck {'passed' if self.ok else 'FAILED'} (tolerance {self.tolerance:.0e}): {rows}"


def _relative_error(analytic, numeric):
    scale = max(np.abs(numeric).max(initial=0.0), np.abs(analytic).max(initial=0.0), 1e-12)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def check_gradients(layer, x, *, eps=1e-6, tolerance=1e-6, max_checks=None, seed=0,
                    params=None, wrt_input=True):
    """Compare ``layer.backward`` (and ``layer.grads``) with central differences.

    layer: anything with ``forward(x)``, ``backward(dy)``, ``params`` and ``grads`` dicts
    (a layer of :mod:`minifcn.nn` or a whole model). Its arrays must be float64. Every
    forward gets a copy of the input, so in-place layers can be checked too.
    max_checks: probe at most this many random entries per tensor (all if None); the
    one-direction check (``"<name> (direction)"`` in the report) covers every entry anyway.
    params: names to check (default: the parameters of ``layer.params`` not in
    ``layer.frozen``, which get no gradient).
    wrt_input: also check the input gradient. A layer that returns none fails the check,
    unless it says it computes none (``need_input_grad = False``): then it is skipped.
    Returns a :class:`GradcheckReport`; ``report.ok`` says whether all errors are within
    ``tolerance`` (relative to the largest gradient entry of each tensor).
    """
    x = np.array(to_numpy(x), dtype=np.float64, copy=True)
    frozen = getattr(layer, "frozen", ())
    names = [n for n in layer.params if n not in frozen] if params is None else list(params)
    for name in names:
        if layer.params[name].dtype != np.float64:
            raise ValueError(f"gradcheck: parameter {name!r} is {layer.params[name].dtype}; "
                             "convert the layer to float64 first (layer.astype(np.float64))")
    rng = np.random.default_rng(seed)
    rng_state = copy.deepcopy(layer.rng.bit_generator.state) if hasattr(layer, "rng") else None

    def forward(inp):
        if rng_state is not None:
            layer.rng.bit_generator.state = copy.deepcopy(rng_state)
        return to_numpy(layer.forward(inp.copy()))     # an in-place layer writes the copy

    y = forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    analytic = {name: to_numpy(layer.grads[name]).copy() for name in names}
    if wrt_input and dx is None and getattr(layer, "need_input_grad", True):
        raise ValueError(f"gradcheck: {type(layer).__name__}.backward returned no input "
                         "gradient (None), and the layer does not set need_input_grad = "
                         "False: nothing to check the input gradient against")
    wrt_input = wrt_input and dx is not None
    if wrt_input:
        analytic["input"] = to_numpy(dx).copy()

    def loss():
        return float(np.vdot(forward(x), g))

    def probe(size):
        if max_checks is None or max_checks >= size:
            return None
        return rng.choice(size, max_checks, replace=False)

    report = GradcheckReport(tolerance=tolerance)
    targets = ([("input", x)] if wrt_input else []) + [(n, layer.params[n]) for n in names]
    for name, arr in targets:
        idx = probe(arr.size)
        numeric = numerical_gradient(loss, arr, eps, idx)
        got = analytic[name]
        if idx is not None:
            mask = np.zeros(arr.size, bool)
            mask[idx] = True
            got = np.where(mask.reshape(arr.shape), got, 0.0)
        report.errors[name] = _relative_error(got, numeric)
        report.errors[f"{name} (direction)"] = _directional_error(loss, arr, analytic[name],
                                                                  rng, eps)
    return report


def _directional_error(loss, arr, grad, rng, eps):
    """``|<grad, v> - (L(arr + eps v) - L(arr - eps v)) / 2eps| / (|grad| |v|)`` for one
    random direction ``v``: every entry of ``arr`` moves at once (restored afterwards)."""
    v = rng.standard_normal(arr.shape)
    old = arr.copy()
    try:
        arr[...] = old + eps * v
        plus = loss()
        arr[...] = old - eps * v
        minus = loss()
    finally:
        arr[...] = old
    numeric = (plus - minus) / (2 * eps)
    scale = max(float(np.linalg.norm(grad) * np.linalg.norm(v)), 1e-12)
    return abs(float(np.vdot(grad, v)) - numeric) / scale
