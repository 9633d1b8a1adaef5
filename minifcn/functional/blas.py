r"""``C = A @ B`` and ``C += A @ B`` on matrices that are *views*: the two things BLAS's GEMM
takes and ``numpy.matmul`` does not pass on.

BLAS's ``?gemm`` computes ``C <- alpha * op(A) @ op(B) + beta * C`` on matrices given as a
pointer and a *leading dimension* (the distance between rows), so

- a matrix may be a window into a larger array: ``B = flat[:, off:off + L]`` (rows
  ``ldb`` apart, ``ldb`` the full row length) is read in place, not copied;
- ``beta = 1`` adds the product into ``C`` instead of overwriting it, with no temporary.

:func:`~minifcn.functional.implicit.conv_transpose2d_implicit` needs both: a transposed
convolution's sub-pixel phase is a sum over kernel taps of ``W_tap @ x_shifted``, where
``x_shifted`` is the padded input read from an offset (a view), and the sum runs in ``C``.

``numpy.matmul`` calls the same GEMM (``beta = 0``), so the product is NumPy's own. Where
NumPy's BLAS exposes its CBLAS entry points (the ILP64 OpenBLAS that NumPy's wheels ship,
``scipy_cblas_?gemm64_``) :func:`gemm` calls them through ``ctypes``; anywhere else (another
BLAS, another dtype, CuPy arrays, a layout BLAS refuses) it falls back to ``matmul`` into
``C`` (overwrite) or into a temporary that is then added (accumulate): the same numbers up
to rounding, one more pass over ``C``.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..backend import get_array_module
from ..openblas_core import numpy_blas_library

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SYMBOLS = {np.dtype(np.float32): ("scipy_cblas_sgemm64_", ctypes.c_float),
            np.dtype(np.float64): ("scipy_cblas_dgemm64_", ctypes.c_double)}


def _load_cblas():
    """``{dtype: ?gemm}`` from the BLAS NumPy itself is linked to, or ``{}``.

    ``dlsym`` on NumPy's extension module finds the symbols of the libraries it was
    linked against. Only the ``64_``-suffixed names are used: their integers are
    certainly 64-bit (a plain ``cblas_sgemm`` may be either, and a wrong guess corrupts
    the call; no numerical check could tell, since small sizes read the same either
    way). A one-off product against ``matmul`` must still pass."""
    lib = numpy_blas_library()
    if lib is None:
        return {}
    found = {}
    i64 = ctypes.c_int64
    for dtype, (name, real) in _SYMBOLS.items():
        fn = getattr(lib, name, None)
        if fn is None:
            continue
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, real,
                       ctypes.c_void_p, i64, ctypes.c_void_p, i64, real, ctypes.c_void_p, i64]
        fn.restype = None
        found[dtype] = fn
    if found and not _self_check(found):
        return {}
    return found


def _self_check(found):
    """One small strided, accumulating product per dtype against ``matmul``."""
    rng = np.random.default_rng(0)
    for dtype, fn in found.items():
        big = rng.standard_normal((4, 9)).astype(dtype)
        a, b = big[:3, 1:3], big[1:3, 2:7]                 # views, rows 9 apart
        c = np.ones((3, 5), dtype)
        _call(fn, a, b, c, 1.0)
        if not np.allclose(c, 1 + a @ b, rtol=1e-5, atol=1e-5):
            return False
    return True


def _operands(a, b, c):
    """``(address, (transpose flag, leading dimension))`` of ``a``, ``b`` and ``c`` as BLAS
    reads them in place, or None where it cannot (``c`` must not be transposed)."""
    item = c.itemsize
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data     # each asked once: ~1 us
    la, lb, lc = _layout(a, pa, item), _layout(b, pb, item), _layout(c, pc, item)
    if la is None or lb is None or lc is None or lc[0] != _NO_TRANS:
        return None
    return (pa, la), (pb, lb), (pc, lc)


def _call(fn, a, b, c, beta, operands=None):
    """``c <- a @ b + beta * c`` through BLAS; ``operands``: :func:`_operands` of the
    three, which must not be None."""
    (pa, (ta, lda)), (pb, (tb, ldb)), (pc, (_, ldc)) = operands or _operands(a, b, c)
    fn(_ROW_MAJOR, ta, tb, c.shape[0], c.shape[1], a.shape[1], 1.0,
       pa, lda, pb, ldb, beta, pc, ldc)


def _layout(m, address, item):
    """How BLAS can read the 2-D view ``m`` (its data at ``address``) in place:
    ``(no-transpose, row stride)`` if its rows are runs of unit stride, ``(transpose,
    column stride)`` if its columns are (a transposed view), else None. Strides in
    elements, and — BLAS checks it — no smaller than a run; the memory aligned to the
    dtype."""
    if address % item:
        return None
    for trans, (runs, run), (outer, inner) in ((_NO_TRANS, m.shape, m.strides),
                                               (_TRANS, m.shape[::-1], m.strides[::-1])):
        if (inner == item or run == 1) and outer >= 0 and outer % item == 0:
            ld = outer // item if runs > 1 else max(1, run)
            if ld >= max(1, run):
                return trans, ld
    return None


CBLAS = _load_cblas()     # {} where NumPy's BLAS is not reachable: matmul does it all


def uses_cblas(dtype):
    """Whether :func:`gemm` on this dtype goes to BLAS directly (else through matmul)."""
    return np.dtype(dtype) in CBLAS


def gemm(a, b, out, accumulate=False):
    """``out[...] = a @ b``, or ``out += a @ b`` with ``accumulate``: 2-D arrays, views
    welcome (``a`` and ``b`` may also be transposed views). Returns ``out``. An ``out``
    that overlaps ``a`` or ``b``, or is read-only, goes to matmul (which copies, or
    refuses)."""
    m, k = a.shape
    if b.shape[0] != k or out.shape != (m, b.shape[1]):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape} do not fit")
    fn = CBLAS.get(out.dtype) if type(out) is np.ndarray else None
    if (fn is not None and m and k and out.shape[1] and type(a) is np.ndarray
            and type(b) is np.ndarray and a.dtype == b.dtype == out.dtype
            and out.flags.writeable                 # else matmul refuses, as it should
            and not np.may_share_memory(out, a)     # BLAS assumes no aliasing
            and not np.may_share_memory(out, b)
            and (operands := _operands(a, b, out)) is not None):
        _call(fn, a, b, out, 1.0 if accumulate else 0.0, operands)
        return out
    xp = get_array_module(out)
    if accumulate:
        out += xp.matmul(a, b)
    elif xp is np:
        np.matmul(a, b, out=out)          # NumPy takes a strided ``out`` (copying if it must)
    else:
        out[...] = xp.matmul(a, b)        # whatever CuPy makes of a strided ``out``
    return out
