"""Shared test fixtures and references.

- ``xp``: one test body, two backends. Runs under NumPy, and under CuPy where a usable GPU
  exists (marked ``gpu``; skipped with the reason from :mod:`minifcn.backend` otherwise).
- ``torch_grads``: the independent reference — run a ``torch.nn.functional`` op in float64
  with autograd and return its output and the gradients of ``<output, dy>``.
- ``assert_close``: relative error ``max|got - ref| / max|ref|`` within a dtype's tolerance
  (1e-10 for float64, 1e-5 for float32), the criterion of issue 2.
"""
from __future__ import annotations

import numpy as np
import pytest

from minifcn import backend

# The tolerances of issue 2: relative to max |ref|.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def _gpu_skip_reason() -> str:
    backend.gpu_available()
    return f"needs CuPy and a usable GPU: {backend._gpu_error or 'unavailable'}"


@pytest.fixture(scope="session", params=[
    "numpy",
    pytest.param("cupy", marks=pytest.mark.gpu),
])
def xp(request):
    """The array module a test body runs against (session-scoped so hypothesis accepts it)."""
    if request.param == "numpy":
        return np
    if not backend.gpu_available():
        pytest.skip(_gpu_skip_reason())
    import cupy
    return cupy


def to_np(a):
    """Any array (NumPy, CuPy, torch) -> a NumPy array; None stays None."""
    if a is None:
        return None
    if type(a).__module__.split(".")[0] == "torch":
        return a.detach().cpu().numpy()
    return backend.to_numpy(a)


def rel_error(got, ref) -> float:
    """``max|got - ref| / max|ref|`` (absolute when ref is all zeros)."""
    got = np.asarray(to_np(got), dtype=np.float64)
    ref = np.asarray(to_np(ref), dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != reference shape {ref.shape}"
    if got.size == 0:
        return 0.0
    scale = max(float(np.abs(ref).max()), 1e-300)
    if float(np.abs(ref).max()) == 0.0:
        scale = 1.0
    return float(np.abs(got - ref).max() / scale)


def assert_close(got, ref, dtype, what=""):
    """Assert ``rel_error(got, ref) <= RTOL[dtype]``; say which tensor failed and by how much."""
    tol = RTOL[np.dtype(dtype)]
    err = rel_error(got, ref)
    assert np.isfinite(err) and err <= tol, \
        f"{what}: relative error {err:.3e} > {tol:.0e} ({np.dtype(dtype).name})"


def assert_same_non_finite(got, ref, what=""):
    """``got`` has inf and NaN exactly where ``ref`` has them, and its finite values
    match (float64: rtol 1e-10)."""
    got, ref = to_np(got), to_np(ref)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref), err_msg=f"{what}: inf")
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-10, atol=1e-12, err_msg=what)


def assert_conv2d_non_finite_like_torch(x, w, dy):
    """conv2d (padding 1) and both of its gradients on operands holding an inf or NaN:
    inf and NaN exactly where float64 torch puts them, and its finite values."""
    import torch
    import torch.nn.functional as TF
    from minifcn.functional import conv2d, conv2d_backward
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = TF.conv2d(tx, tw, padding=1)
    ty.backward(torch.tensor(dy))
    got_y = conv2d(x, w, None, 1, 1)
    got_dx, got_dw, _ = conv2d_backward(dy, x, w, 1, 1)
    for name, got, ref in (("y", got_y, ty.detach().numpy()), ("dx", got_dx, tx.grad.numpy()),
                           ("dW", got_dw, tw.grad.numpy())):
        assert_same_non_finite(got, ref, name)


def torch_grads(fn, inputs: dict, dy=None):
    """Run ``fn(**tensors)`` in float64 torch with autograd; return ``(y, grads)``.

    ``inputs``: name -> NumPy array (or None). Every non-None array is upcast to float64 —
    the reference is the exact answer for the very values minifcn was given, so a float32
    result is measured against the truth, not against torch's own float32 rounding.
    ``dy``: the output gradient, or a function of y's shape that makes it; ``grads[name]``
    is d<y, dy>/d input (None if dy is None).
    """
    import torch
    tensors = {k: (None if v is None else
                   torch.tensor(np.asarray(to_np(v), dtype=np.float64), requires_grad=True))
               for k, v in inputs.items()}
    y = fn(**tensors)
    grads = {}
    if callable(dy):
        dy = dy(tuple(y.shape))
    if dy is not None:
        y.backward(torch.tensor(np.asarray(to_np(dy), dtype=np.float64)))
        grads = {k: (None if t is None else to_np(t.grad)) for k, t in tensors.items()}
    return to_np(y), grads


def torch_grads_random_dy(fn, inputs: dict, rng, dtype=np.float64):
    """:func:`torch_grads` with the output gradient drawn from ``rng`` at y's shape (one
    torch run): ``(y, dy, grads)``, ``dy`` in ``dtype`` for minifcn's side."""
    drawn = []
    y, grads = torch_grads(fn, inputs, lambda shape: drawn.append(
        rng.standard_normal(shape).astype(dtype)) or drawn[0])
    return y, drawn[0], grads


@pytest.fixture(scope="session", autouse=True)
def _torch_single_thread():
    """The reference problems are tiny; one thread avoids oversubscribing shared cores."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def pytest_runtest_setup(item):
    """Any test marked ``gpu`` is skipped, with the reason, where no GPU is usable: the one
    place that decides, so GPU fixtures and test bodies need not."""
    if item.get_closest_marker("gpu") is not None and not backend.gpu_available():
        pytest.skip(_gpu_skip_reason())
