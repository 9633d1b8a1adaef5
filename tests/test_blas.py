"""``functional.blas.gemm``: ``C = A @ B`` and ``C += A @ B`` on views, against a naive
float64 triple loop — through NumPy's own CBLAS (where found) and through the matmul
fallback."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from minifcn.functional import blas


def naive(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            for k in range(a.shape[1]):
                out[i, j] += a[i, k] * b[k, j]
    return out


def _views(dtype):
    """(name, a, b): operands as a GEMM over im2col-free layouts meets them."""
    rng = np.random.default_rng(3)
    big = rng.standard_normal((30, 40)).astype(dtype)
    return [
        ("contiguous", np.ascontiguousarray(big[:5, :7]), np.ascontiguousarray(big[:7, :9])),
        ("rows of a wider array", big[2:7, 3:10], big[10:17, 5:14]),    # ld = 40
        ("transposed a", big[:7, 20:25].T, big[:7, :9]),                 # BLAS transposes
        ("transposed b", big[:5, :7], big[11:20, 30:37].T),
        ("rows that overlap (BLAS refuses ld < row length: matmul)", big[0, :5 * 7].reshape(5, 7),
         np.lib.stride_tricks.as_strided(big[0], (7, 9), (big.strides[1] * 2, big.strides[1]))),
        ("one row, one column", big[:1, :7], big[:7, 3:4]),
        ("inner size one", big[:5, :1], big[3:4, :9]),
    ]


@pytest.fixture(params=["cblas", "matmul"])
def path(request, monkeypatch):
    if request.param == "cblas":
        if not blas.CBLAS:
            pytest.skip("NumPy's BLAS exposes no 64-bit CBLAS symbols here: matmul only")
    else:
        monkeypatch.setattr(blas, "CBLAS", {})
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
def test_gemm_against_a_naive_loop(path, dtype, accumulate, monkeypatch):
    calls = []
    real_call = blas._call
    monkeypatch.setattr(blas, "_call", lambda *args: calls.append(1) or real_call(*args))
    for name, a, b in _views(dtype):
        base = np.random.default_rng(4).standard_normal((a.shape[0] + 2, b.shape[1] + 3))
        outer = base.astype(dtype)
        out = outer[1:1 + a.shape[0], 2:2 + b.shape[1]]            # a view, rows apart
        before = outer.copy()
        blas.gemm(a, b, out, accumulate=accumulate)
        ref = naive(a, b) + (before[1:1 + a.shape[0], 2:2 + b.shape[1]] if accumulate else 0)
        assert_close(out, ref, dtype, f"{name} [{path}]")
        untouched = np.ones(outer.shape, bool)
        untouched[1:1 + a.shape[0], 2:2 + b.shape[1]] = False
        np.testing.assert_array_equal(outer[untouched], before[untouched])   # nothing else
    # every case but the overlapping rows went to BLAS itself (none where it is disabled)
    assert len(calls) == (len(_views(dtype)) - 1 if path == "cblas" else 0)


def test_gemm_leaves_aliasing_and_read_only_outputs_to_matmul():
    """BLAS assumes ``out`` shares no memory with ``a`` or ``b``, and would write through
    a read-only view: both go to matmul, which copies, or refuses."""
    rng = np.random.default_rng(6)
    for dtype in (np.float32, np.float64):
        a = rng.standard_normal((16, 16)).astype(dtype)
        ref = naive(a, a)
        blas.gemm(a, a, a)                                   # out is a and b
        assert_close(a, ref, dtype, "gemm(a, a, a)")
        frozen = np.frombuffer(bytes(16 * 16 * np.dtype(dtype).itemsize), dtype).reshape(16, 16)
        with pytest.raises(ValueError, match="read-only"):
            blas.gemm(a, a, frozen)
        assert not frozen.any()


def test_gemm_refuses_shapes_that_do_not_fit():
    a, b = np.ones((3, 4)), np.ones((4, 5))
    with pytest.raises(ValueError, match=r"gemm: shapes \(3, 4\) @ \(4, 5\) -> \(3, 6\)"):
        blas.gemm(a, b, np.empty((3, 6)))
    with pytest.raises(ValueError, match="do not fit"):
        blas.gemm(a, np.ones((5, 5)), np.empty((3, 5)))


def test_layouts_blas_cannot_read_go_through_matmul():
    """A column stride that is not one element, or mixed dtypes: still the right answer."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 12))[:, ::2]                         # (4, 6), stride 2
    b = rng.standard_normal((6, 3)).astype(np.float32)
    out = np.zeros((4, 3))
    assert blas._layout(a, a.ctypes.data, 8) is None
    blas.gemm(a, b, out, accumulate=True)
    assert_close(out, naive(a, b), np.float64, "strided a, mixed dtypes")


@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
def test_a_transposed_or_misaligned_out_goes_through_matmul(monkeypatch, accumulate):
    """BLAS writes ``C`` row-major only, and every operand aligned to its dtype: an ``out``
    that is a transposed view, or an operand one byte off, must not reach it (``_call``
    not called), and the answer is still the product."""
    calls = []
    real_call = blas._call
    monkeypatch.setattr(blas, "_call", lambda *args: calls.append(1) or real_call(*args))
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((5, 4))
    start = rng.standard_normal((4, 3))
    out = start.copy().T                                          # (3, 4), columns contiguous
    blas.gemm(a, b, out, accumulate=accumulate)
    assert_close(out, naive(a, b) + (start.T if accumulate else 0), np.float64, "out.T")
    raw = np.zeros(3 * 5 * 8 + 1, np.uint8)
    a_off = raw[1:].view(np.float64).reshape(3, 5)                 # one byte off alignment
    a_off[...] = a
    assert a_off.ctypes.data % 8
    out = np.zeros((3, 4))
    blas.gemm(a_off, b, out, accumulate=accumulate)
    assert_close(out, naive(a, b), np.float64, "misaligned a")
    assert calls == []


def test_numpys_own_blas_is_found_where_numpy_ships_openblas():
    """NumPy's wheels link scipy-openblas (ILP64): there the CBLAS path must be found (and
    pass its self-check), or the implicit GEMM silently falls back to matmul + add."""
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:                                               # NumPy < 2
        pytest.skip("NumPy < 2 does not report its BLAS as a dict")
    if info.get("name") != "scipy-openblas" or "USE64BITINT" not in str(info):
        pytest.skip(f"NumPy built against {info.get('name')!r}")
    assert blas.uses_cblas(np.float32) and blas.uses_cblas(np.float64)
    assert not blas.uses_cblas(np.float16)
