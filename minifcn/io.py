"""Reading and writing weights: ``.npz`` archives and torch ``.pth``/``.pt`` files.

``load(path)`` returns ``{name: numpy.ndarray}``; ``save(path, arrays)`` writes ``.npz``.
The format is recognised from the file's first bytes, not from its extension.

The formats
-----------
``.npz`` (NumPy)
    A zip archive with one ``<key>.npy`` member per array (the ``.npy`` header gives dtype,
    shape and order). :func:`save` writes it; :func:`load` reads it with
    ``allow_pickle=False``, so an object array in it is refused, never unpickled. The
    reserved key ``__meta__`` holds a uint8 array of UTF-8 JSON (see *Metadata* below).

torch zip format (``torch.save`` since torch 1.6)
    A zip archive whose members all lie under one folder ``<name>/``: ``data.pkl`` (the
    pickled object, usually a state dict), ``data/<key>`` (the raw bytes of each storage),
    ``byteorder`` (``little``/``big``; absent in old files, meaning little) and ``version``.
    Inside ``data.pkl`` a tensor is a call ``torch._utils._rebuild_tensor_v2(storage,
    storage_offset, size, stride, requires_grad, backward_hooks[, metadata])``, and the
    storage is a *persistent id* ``('storage', <storage class>, key, location, numel)``;
    the storage class (``torch.FloatStorage``, ...) gives the element type.

legacy torch format (before torch 1.6, and ``_use_new_zipfile_serialization=False``)
    Not an archive but pickles one after another in one file: the magic number
    ``0x1950a86a20f9469cfc6c``, the protocol version ``1001``, a dict of system info
    (``little_endian``, type sizes), the object pickle (persistent ids as above plus a sixth
    field, ``None`` or ``(view_key, offset, size)`` for a storage view, in elements), the
    list of storage keys, and then, for each key in that order, an 8-byte element count
    followed by the storage's raw bytes, both little-endian whatever ``little_endian`` says
    (torch converts on a big-endian host, and its reader ignores that field). The object
    pickle comes *before* the bytes, so
    tensors are described first and filled in afterwards. (The even older tar-based
    format of torch < 0.1.10 is recognised and refused.)

Loading never runs code from the file
-------------------------------------
A pickle is a small program: its ``GLOBAL`` opcode imports any name (``os.system``,
``builtins.eval``, ``subprocess.Popen``) and ``REDUCE`` calls it. So the torch readers
unpickle with a restricted :class:`pickle.Unpickler` whose ``find_class`` consults an
allow-list, as ``torch.load(weights_only=True)`` does, and never imports anything:

- the tensor-rebuild functions ``torch._utils._rebuild_tensor`` (torch < 0.4),
  ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state`` and ``torch._tensor._rebuild_from_type_v2`` (for
  plain tensors and parameters only). Each maps to a function of this module that merely
  records the tensor's layout;
- the storage classes (``torch.FloatStorage``, ``torch.cuda.HalfStorage``, ...,
  ``torch.storage.UntypedStorage``, whose element type comes from ``_rebuild_tensor_v3``'s
  dtype) and dtype names (``torch.float32``, ...), ``torch.Size``, ``torch.Tensor`` and
  ``torch.nn.parameter.Parameter``: inert markers of this module, not torch objects;
- ``collections.OrderedDict``, and, so that checkpoints holding a NumPy number (an
  accuracy, say) load, ``numpy.dtype`` of numeric kinds, the NumPy scalar constructor
  (which yields a plain Python number) and ``_codecs.encode`` for latin-1 text — all
  stand-ins written here. Every object handed out refuses the ``BUILD`` opcode, so a
  pickle cannot rewrite a tensor's layout after it was checked, nor patch a function.

A torch dtype with no NumPy twin (``torch.float8_e4m3fn``, ...) raises
:class:`WeightFileError` saying so. Any other global raises :class:`UnsafePickleError` (a ``ValueError`` and a
``pickle.UnpicklingError``) naming the file and the global, at the ``GLOBAL`` opcode,
i.e. before the call that would use it. Nothing is read from the storages until the whole
pickle has been parsed; then each tensor's offset, size and stride are checked against its
storage's size before ``as_strided`` reads it (a lying file cannot read outside the
buffer), and the tensor is copied out.

What ``load`` returns for a torch file
--------------------------------------
The pickled object must be a dict. If it holds its state dict under ``state_dict``,
``model_state_dict`` or ``model`` (a training checkpoint), that dict is used instead
(repeatedly, so ``{'model': {'state_dict': ...}}`` works). Of the chosen dict's entries,
tensors become NumPy arrays (copies, C-contiguous, the tensor's dtype; ``bfloat16``
becomes ``float32``, exactly), Python and NumPy numbers become 0-d arrays, and every other
entry (strings, ``None``, nested dicts or lists such as an optimizer state) is dropped.
Nothing else is renamed or flattened: a ``module.`` prefix left by ``DataParallel``
stays. The JSON-able entries (numbers, strings, booleans, ``None``) of the dicts that
were unwrapped — ``epoch``, ``arch``, ``best_mean_iu`` — are the file's metadata
(``load(path, with_meta=True)``, :func:`load_meta`).

Metadata and checkpoints
------------------------
``save(path, arrays, meta={...})`` stores ``meta`` (a JSON-able dict; NumPy numbers and
arrays are converted) as JSON in the reserved key ``__meta__``. ``load`` leaves that key
out of the arrays; ``load(path, with_meta=True)`` returns ``(arrays, meta)`` and
``load_meta(path)`` just the dict (``{}`` when there is none). A training checkpoint is
thus one ``.npz``: parameters and optimizer buffers as arrays under distinct key prefixes,
iteration and configuration in ``meta``.

Saving is atomic: the archive is written to a temporary file in the target's folder,
flushed and fsync'ed, then moved over the target with ``os.replace``; a crash or an error
part-way leaves the previous file as it was and removes the temporary file.

Which preprocessing each weight source needs (BGR, mean subtraction, ...) is a property of
the models, documented with them, not of the file format.
"""
from __future__ import annotations

import collections
import errno
import io
import json
import numbers
import os
import pickle
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from . import backend

__all__ = ["load", "load_meta", "save", "META_KEY", "WeightFileError", "UnsafePickleError"]

META_KEY = "__meta__"
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class WeightFileError(ValueError):
    """A weight file is missing a part, truncated, corrupt, or not a supported format."""


class UnsafePickleError(WeightFileError, pickle.UnpicklingError):
    """A pickle in a weight file asked for a global that is not on the allow-list."""


def _fail(path, what):
    return WeightFileError(f"{path}: {what}")


# --------------------------------------------------------------------------- dtypes

class _DType:
    """An element type as stored in a torch file: NumPy dtype string, or bfloat16."""
    __slots__ = ("name", "np_str", "itemsize")

    def __init__(self, name, np_str):
        self.name = name
        self.np_str = np_str            # 'bf16' is stored as uint16, widened on load
        self.itemsize = 2 if np_str == "bf16" else np.dtype(np_str).itemsize

    def file_dtype(self, byteorder):
        return np.dtype("u2" if self.np_str == "bf16" else self.np_str).newbyteorder(byteorder)

    def __repr__(self):
        return f"torch.{self.name}"


_DTYPE_NP = {
    "float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "bf16",
    "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1",
    "uint64": "u8", "uint32": "u4", "uint16": "u2", "uint8": "u1", "bool": "b1",
    "complex64": "c8", "complex128": "c16",
}
_DTYPES = {name: _DType(name, s) for name, s in _DTYPE_NP.items()}
_DTYPE_ALIASES = {"double": "float64", "float": "float32", "half": "float16",
                  "long": "int64", "int": "int32", "short": "int16",
                  "cfloat": "complex64", "cdouble": "complex128"}

_STORAGE_DTYPE = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}


class _Sealed:
    """Base of every object the unpickler hands out: the pickle ``BUILD`` opcode (which
    sets attributes or calls ``__setstate__``) cannot change one after it is made."""
    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"refusing to set state on {type(self).__name__}")


class _Safe(_Sealed):
    """One of this module's functions as the allow-list hands it out (a bare function
    would let ``BUILD`` rewrite its ``__defaults__`` for the whole process)."""
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class _Marker(_Sealed):
    """An inert stand-in for a torch class or dtype named in a pickle (not callable)."""
    __slots__ = ("kind", "value", "qualname")

    def __init__(self, kind, value, qualname):
        self.kind, self.value, self.qualname = kind, value, qualname

    def __repr__(self):
        return f"<{self.qualname}>"


# --------------------------------------------------------------------------- lazy refs

class _StorageRef(_Sealed):
    """A storage named by a persistent id: bytes [byte_offset, byte_offset+nbytes) of the
    root storage ``key``, read as ``dtype``. Nothing is read until materialisation."""
    __slots__ = ("key", "dtype", "byte_offset", "nbytes")

    def __init__(self, key, dtype, byte_offset, nbytes):
        self.key, self.dtype, self.byte_offset, self.nbytes = key, dtype, byte_offset, nbytes


class _TensorRef(_Sealed):
    """A tensor as the pickle describes it; filled in from its storage afterwards."""
    __slots__ = ("storage", "dtype", "offset", "size", "stride", "conj", "neg")

    def __init__(self, storage, dtype, offset, size, stride, metadata=None):
        self.storage, self.dtype = storage, dtype
        self.offset, self.size, self.stride = offset, size, stride
        md = metadata if isinstance(metadata, Mapping) else {}
        self.conj, self.neg = bool(md.get("conj")), bool(md.get("neg"))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int_tuple(v, what):
    if not isinstance(v, (tuple, list)) or not all(_is_int(i) for i in v):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of ints, got {v!r}")
    return tuple(v)


def _tensor_ref(storage, storage_offset, size, stride, dtype, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"a tensor's storage must be a persistent storage id, "
                                     f"got {type(storage).__name__}")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise pickle.UnpicklingError(f"bad tensor storage offset {storage_offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"bad tensor size {size} / stride {stride}")
    return _TensorRef(storage, dtype, storage_offset, size, stride, metadata)


# The allowed rebuild functions. They only record; the signatures are torch's.
def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_ref(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _tensor_ref(storage, storage_offset, size, stride, getattr(storage, "dtype", None),
                       metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not (isinstance(dtype, _Marker) and dtype.kind == "dtype"):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3 needs a torch dtype, got {dtype!r}")
    return _tensor_ref(storage, storage_offset, size, stride, dtype.value, metadata)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    # Plain tensors and parameters with Python attributes; the attributes are dropped.
    if not (isinstance(func, _Safe) and func.fn in _REBUILDERS
            and isinstance(new_type, _Marker) and new_type.kind == "type"):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 is allowed only for plain "
                                     "tensors and parameters")
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2: args must be a tuple")
    return func(*args)


def _torch_size(dims=()):
    return _int_tuple(dims, "size")


# NumPy numbers (np.float64(0.87) saved as an accuracy) pickle as
# scalar(dtype('f8', False, True) + BUILD state, _codecs.encode(text, 'latin1')).
class _NumpyDType:
    __slots__ = ("dtype", "_built")

    def __init__(self, dtype):
        self.dtype, self._built = dtype, False

    def __setstate__(self, state):   # numpy's state tuple: only the byte order is used
        if self._built:
            raise pickle.UnpicklingError("NumPy dtype state set twice")
        self._built = True
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_dtype(name, align=False, copy=True):
    try:
        dt = np.dtype(name) if isinstance(name, str) and len(name) <= 8 else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise pickle.UnpicklingError(f"only numeric NumPy dtypes are allowed, got {name!r}")
    return _NumpyDType(dt)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes) \
            or len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("bad NumPy scalar in pickle")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()   # a plain Python number


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin1")


def _inert(kind, *allowed_types):
    """A stand-in for a harmless constructor torch's ``weights_only`` loader allows (a set,
    a ``torch.device``, a bytearray): checks its arguments' types and returns an inert
    marker, which :func:`_select` drops like any other non-tensor entry."""
    def make(*args):
        if not all(isinstance(a, allowed_types) and not isinstance(a, bool) for a in args):
            raise pickle.UnpicklingError(f"{kind}() of {args!r:.100}")
        return _Marker("value", kind, kind)
    return make


def _complex(real=0.0, imag=0.0):
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (real, imag)):
        raise pickle.UnpicklingError("complex() of something that is not a number")
    return complex(real, imag)


def _allowed_globals():
    inert = {
        # a bytearray is built from bytes or (str, encoding), never from an int (a size)
        "bytearray": _inert("bytearray", bytes, str),
        "set": _inert("set", list, tuple),
        "frozenset": _inert("frozenset", list, tuple),
        "complex": _complex,
    }
    g = {f"{module}.{name}": fn for name, fn in inert.items() for module in ("builtins", "__builtin__")}
    g["torch.device"] = _inert("torch.device", str, int)
    g.update({
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Size": _torch_size,
        "torch.Tensor": _Marker("type", "Tensor", "torch.Tensor"),
        "torch._tensor.Tensor": _Marker("type", "Tensor", "torch.Tensor"),
        "torch.nn.parameter.Parameter": _Marker("type", "Parameter", "torch.nn.Parameter"),
        "numpy.dtype": _numpy_dtype,
        "numpy.core.multiarray.scalar": _numpy_scalar,
        "numpy._core.multiarray.scalar": _numpy_scalar,
        "_codecs.encode": _codecs_encode,
    })
    g = {k: _Safe(v) if callable(v) and not isinstance(v, (type, _Marker)) else v
         for k, v in g.items()}
    for cls, dname in _STORAGE_DTYPE.items():
        for mod in ("torch", "torch.cuda"):
            g[f"{mod}.{cls}"] = _Marker("storage", _DTYPES[dname], f"{mod}.{cls}")
    # torch 2.x pickles the storage of some dtypes (uint16/32/64, float8) by this name
    g["torch.storage.UntypedStorage"] = _Marker("storage", _DTYPES["uint8"],
                                                "torch.storage.UntypedStorage")
    for name in list(_DTYPE_NP) + list(_DTYPE_ALIASES):
        g[f"torch.{name}"] = _Marker("dtype", _DTYPES[_DTYPE_ALIASES.get(name, name)],
                                     f"torch.{name}")
    return g


_ALLOWED = _allowed_globals()


# torch dtypes with no NumPy twin (a file holding one is refused as unsupported, not unsafe)
_UNSUPPORTED_DTYPE_PREFIXES = ("float8_", "float4_", "qint", "quint", "bits")
_UNSUPPORTED_DTYPES = {"complex32", "chalf", *(f"{u}int{b}" for u in ("", "u") for b in range(1, 8))}


def _refusal(path, module, name):
    full = f"{module}.{name}"
    hint = ""
    if (module == "torch" and (name in _UNSUPPORTED_DTYPES
                               or name.startswith(_UNSUPPORTED_DTYPE_PREFIXES))) or \
            full == "torch._utils._rebuild_qtensor":
        what = "a quantized tensor" if name == "_rebuild_qtensor" else f"a tensor of dtype {full}"
        return WeightFileError(
            f"{path}: holds {what}, which minifcn cannot read (it reads "
            f"{', '.join(sorted(_DTYPE_NP))}); convert it in torch first, e.g. "
            "{k: v.float() for k, v in state_dict.items()}")
    if module.startswith("__torch__"):
        hint = (" This looks like a TorchScript archive (torch.jit.save); save the "
                "model's state_dict() with torch.save instead.")
    elif module == "__main__" or module.startswith("torch.nn") or module.startswith("torch.optim"):
        hint = (" The file seems to hold a pickled Python object (e.g. a whole model saved "
                "with torch.save(model)); save model.state_dict() instead.")
    return UnsafePickleError(
        f"{path}: refusing to unpickle: it asks for the global {full!r}, which is not on "
        f"minifcn.io's allow-list (tensor-rebuild functions, storage classes, plain "
        f"containers). Nothing from the file was run.{hint}")


def _decode(v):
    return v.decode("ascii") if isinstance(v, bytes) else v


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles data only: every global and every persistent id is refused."""

    def __init__(self, file, path):
        super().__init__(file, encoding="utf-8")
        self._path = path

    def find_class(self, module, name):
        raise _refusal(self._path, module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


class _TorchUnpickler(_PlainUnpickler):
    """Allows the globals of ``_ALLOWED``; resolves storage persistent ids to refs."""

    def __init__(self, file, path, roots, legacy):
        super().__init__(file, path)
        self._roots = roots          # root key -> (dtype, declared nbytes)
        self._legacy = legacy

    def find_class(self, module, name):
        obj = _ALLOWED.get(f"{module}.{name}")
        if obj is None:
            raise _refusal(self._path, module, name)
        return obj

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or _decode(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.100}")
        n = 6 if self._legacy else 5
        if len(pid) != n:
            raise pickle.UnpicklingError(f"storage id must have {n} fields, got {pid!r:.100}")
        stype, key, _location, numel = pid[1], _decode(pid[2]), pid[3], pid[4]
        if not (isinstance(stype, _Marker) and stype.kind == "storage"):
            raise pickle.UnpicklingError(f"storage id names {stype!r}, not a storage class")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage id {pid!r:.100}")
        dtype = stype.value
        nbytes = numel * dtype.itemsize
        if key in self._roots:
            rdtype, rbytes = self._roots[key]
            self._roots[key] = (rdtype, max(rbytes, nbytes))
        else:
            self._roots[key] = (dtype, nbytes)
        view = pid[5] if self._legacy else None
        if view is None:
            return _StorageRef(key, dtype, 0, nbytes)
        if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1])
                and _is_int(view[2]) and view[1] >= 0 and view[2] >= 0):
            raise pickle.UnpicklingError(f"bad storage view {view!r:.100}")
        return _StorageRef(key, dtype, view[1] * dtype.itemsize, view[2] * dtype.itemsize)


def _unpickle(path, unpickler):
    try:
        return unpickler.load()
    except WeightFileError:
        raise
    except pickle.UnpicklingError as e:
        raise _fail(path, f"invalid pickle: {e}") from None
    except (EOFError, struct.error) as e:
        raise _fail(path, f"truncated pickle ({type(e).__name__}: {e})") from None
    except MemoryError:
        raise _fail(path, "corrupt pickle: it claims an object larger than memory allows "
                          "(a length field that the file cannot hold)") from None
    except RecursionError:
        raise _fail(path, "corrupt pickle: nested too deeply") from None
    except Exception as e:  # a malformed stream: TypeError, KeyError, UnicodeDecodeError, ...
        raise _fail(path, f"corrupt pickle ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- materialise

MAX_DIMS = 32                   # a tensor with more dimensions than this is refused
MAX_BROADCAST_BYTES = 64 << 20  # a view may copy out to more than its storage only this far


def _materialize(path, name, ref, buf, byteorder):
    """Copy tensor ``ref`` out of its root storage bytes ``buf`` (bounds-checked; any
    NumPy error on the way, e.g. a size NumPy cannot represent, is the file's fault)."""
    try:
        return _materialize_checked(path, name, ref, buf, byteorder)
    except WeightFileError:
        raise
    except (MemoryError, ValueError, OverflowError, TypeError) as e:
        raise _fail(path, f"tensor {name!r} cannot be built ({type(e).__name__}: {e})") from None


def _materialize_checked(path, name, ref, buf, byteorder):
    st, dt = ref.storage, ref.dtype
    if not (isinstance(st, _StorageRef) and _is_int(ref.offset) and ref.offset >= 0
            and len(ref.size) == len(ref.stride) and len(ref.size) <= MAX_DIMS
            and all(_is_int(n) and 0 <= n < 1 << 62 for n in ref.size + ref.stride + (ref.offset,))):
        raise _fail(path, f"tensor {name!r} has an invalid layout")
    if not isinstance(dt, _DType):
        raise _fail(path, f"tensor {name!r} has no element type")
    itemsize = dt.itemsize
    count = 1
    for n in ref.size:
        count *= n
    native = np.dtype("f4" if dt.np_str == "bf16" else dt.np_str)
    if count == 0:
        return np.zeros(ref.size, dtype=native)
    # The storage view, clipped to the bytes actually present.
    lo = st.byte_offset
    hi = min(st.byte_offset + st.nbytes, len(buf))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if lo > len(buf) or (last + 1) * itemsize > hi - lo:
        raise _fail(path, f"tensor {name!r} (offset {ref.offset}, size {ref.size}, stride "
                          f"{ref.stride}) reaches beyond its storage {st.key!r} "
                          f"({max(hi - lo, 0)} bytes of {dt!r}); the file is corrupt or truncated")
    # a view that repeats its storage (stride 0: torch's expand) is copied out in full;
    # a few bytes of storage must not turn into gigabytes of copy
    if count * native.itemsize > max(16 * (hi - lo), MAX_BROADCAST_BYTES):
        raise _fail(path, f"tensor {name!r} (size {ref.size}, stride {ref.stride}) would copy "
                          f"{count * native.itemsize} bytes out of a storage of {hi - lo}: "
                          "an expanded view this large is refused")
    base = np.frombuffer(buf, dtype=dt.file_dtype(byteorder), count=(hi - lo) // itemsize,
                         offset=lo)
    view = np.lib.stride_tricks.as_strided(
        base[ref.offset:], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride),
        writeable=False)
    if dt.np_str == "bf16":
        out = (view.astype(np.uint32) << 16).view(np.float32)
    elif dt.np_str == "b1":
        out = view.view(np.uint8) != 0      # any nonzero byte is True
    else:
        out = np.array(view, dtype=native, order="C")
    if ref.conj:
        out = np.conj(out)
    if ref.neg:
        out = np.negative(out)
    out = np.asarray(out).reshape(ref.size)   # 0-d results of ufuncs come back as scalars
    return out if out.flags.c_contiguous else out.copy()


def _fill(path, refs, read_root, byteorder, root_order):
    """Materialise ``refs`` (name -> _TensorRef), reading each root storage once."""
    by_root = collections.defaultdict(list)
    for name, ref in refs.items():
        by_root[ref.storage.key].append(name)
    out = {}
    for key in root_order:
        buf = read_root(key, key in by_root)   # also advances a sequential reader
        for name in by_root.pop(key, ()):
            out[name] = _materialize(path, name, refs[name], buf, byteorder)
    if by_root:
        raise _fail(path, f"storages {sorted(by_root)[:5]} are missing from the file")
    return out


# --------------------------------------------------------------------------- selection

def _json_scalar(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _select(path, obj):
    """Pick the state dict out of the unpickled object; return (leaves, meta). Read
    through ``dict``'s own methods: a pickle can set attributes on an OrderedDict (BUILD),
    ``get`` or ``items`` among them."""
    if not isinstance(obj, dict):
        raise _fail(path, f"holds a {type(obj).__name__}, not a dict of tensors (a state dict)")
    meta = {}
    for _ in range(8):
        inner = next((k for k in STATE_DICT_KEYS if isinstance(dict.get(obj, k), dict)), None)
        if inner is None:
            break
        for k, v in dict.items(obj):
            v = _json_scalar(v)
            plain = v is None or isinstance(v, (str, bool, int, float))
            if k != inner and isinstance(k, str) and plain:
                meta[k] = v
        obj = dict.__getitem__(obj, inner)
    refs, scalars = {}, {}
    for k, v in dict.items(obj):
        if not isinstance(k, str):
            continue
        if isinstance(v, _TensorRef):
            refs[k] = v
        elif isinstance(v, (numbers.Number, np.generic)) and not isinstance(v, _Marker):
            a = np.asarray(v)
            if a.dtype != object:           # an int past int64 has no array dtype: dropped
                scalars[k] = a
    if not refs and not scalars:
        keys = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(dict.items(obj))[:10])
        raise _fail(path, f"holds no tensors at the top level (entries: {keys or 'none'}); "
                          f"expected a state dict, or a checkpoint with one of the keys "
                          f"{', '.join(STATE_DICT_KEYS)}")
    return refs, scalars, meta, list(dict.keys(obj))


def _assemble(order, tensors, scalars):
    return {k: tensors[k] if k in tensors else scalars[k]
            for k in order if k in tensors or k in scalars}


# --------------------------------------------------------------------------- torch zip

def _load_torch_zip(path, zf, names, arrays_wanted=True):
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise _fail(path, "torch zip archive without exactly one <name>/data.pkl")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "<"
    if prefix + "byteorder" in names:
        bo = zf.read(prefix + "byteorder").strip()
        if bo not in (b"little", b"big"):
            raise _fail(path, f"unknown byteorder {bo!r}")
        byteorder = "<" if bo == b"little" else ">"
    roots = {}
    obj = _unpickle(path, _TorchUnpickler(io.BytesIO(zf.read(pkls[0])), path, roots, legacy=False))
    refs, scalars, meta, order = _select(path, obj)
    if not arrays_wanted:
        return None, meta

    def read_root(key, needed):
        if not needed:
            return None
        member = f"{prefix}data/{key}"
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise _fail(path, f"storage {member!r} is missing from the archive") from None
        # the declared size is allocated below: it must be one the file can hold
        # (stored: the bytes themselves; deflated: at most ~1032x, deflate's limit)
        limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else 1032)
        if info.compress_size > archive_size or info.file_size > limit:
            raise _fail(path, f"storage {member!r} claims {info.file_size} bytes, more than "
                              f"its {info.compress_size} stored bytes can hold: corrupt archive")
        buf = bytearray(info.file_size)
        with zf.open(info) as fh:
            view, got = memoryview(buf), 0
            while got < len(buf):
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
            fh.read(1)   # reach the end so the CRC is checked
        if got != len(buf):
            raise _fail(path, f"storage {member!r} is truncated")
        return buf

    archive_size = os.fstat(zf.fp.fileno()).st_size if hasattr(zf.fp, "fileno") else float("inf")
    needed = {r.storage.key for r in refs.values()}
    tensors = _fill(path, refs, read_root, byteorder, [k for k in roots if k in needed])
    return _assemble(order, tensors, scalars), meta


# --------------------------------------------------------------------------- legacy torch

def _load_torch_legacy(path, f, arrays_wanted=True):
    def plain():
        return _unpickle(path, _PlainUnpickler(f, path))

    magic = plain()
    if magic != _LEGACY_MAGIC:
        raise _fail(path, "a pickle, but not a torch file (wrong magic number)")
    protocol = plain()
    if protocol != _LEGACY_PROTOCOL:
        raise _fail(path, f"unsupported legacy torch protocol version {protocol!r}")
    plain()                        # sys_info: not needed (see the byte order below)
    # torch writes every legacy storage (its element count too) little-endian whatever the
    # host, and its own reader ignores sys_info's little_endian: so do we
    byteorder = "<"
    roots = {}
    obj = _unpickle(path, _TorchUnpickler(f, path, roots, legacy=True))
    keys = plain()
    try:
        keys = [_decode(k) for k in keys] if isinstance(keys, list) else None
    except UnicodeDecodeError:
        keys = None
    if keys is None or not all(isinstance(k, str) for k in keys):
        raise _fail(path, "corrupt storage key list")
    refs, scalars, meta, order = _select(path, obj)
    if not arrays_wanted:
        return None, meta
    unknown = [k for k in keys if k not in roots]
    if unknown:
        raise _fail(path, f"storage keys {unknown[:5]} are not used by the pickle")
    size = os.fstat(f.fileno()).st_size

    def read_root(key, needed):
        head = f.read(8)
        if len(head) != 8:
            raise _fail(path, f"truncated: storage {key!r} is missing")
        (count,) = struct.unpack(byteorder + "q", head)
        nbytes = count * roots[key][0].itemsize
        if count < 0 or nbytes > size - f.tell():
            raise _fail(path, f"truncated: storage {key!r} needs {nbytes} bytes, "
                              f"{size - f.tell()} left in the file")
        if not needed:
            f.seek(nbytes, os.SEEK_CUR)
            return None
        buf = bytearray(nbytes)
        if f.readinto(buf) != nbytes:
            raise _fail(path, f"truncated: storage {key!r}")
        return buf

    tensors = _fill(path, refs, read_root, byteorder, keys)
    return _assemble(order, tensors, scalars), meta


# --------------------------------------------------------------------------- npz

def _npz_meta(path, zf, names):
    member = META_KEY + ".npy"
    if member not in names:
        return {}
    try:
        raw = _read_npy_member(path, zf, member)
        meta = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
    except WeightFileError:
        raise
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as e:
        raise _fail(path, f"corrupt {META_KEY} entry ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise _fail(path, f"corrupt {META_KEY} entry: a JSON {type(meta).__name__}, not an object")
    return meta


def _read_npy_member(path, zf, member):
    """One ``.npy`` member of an ``.npz``, its header checked against the member's size
    first (NumPy allocates the array the header describes before reading a byte)."""
    info = zf.getinfo(member)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:                               # 3.0 (a UTF-8 header): NumPy's reader checks it
            shape, dtype = (), np.dtype(np.uint8)
        count = 1
        for n in shape:
            count *= n
        if not dtype.hasobject and count * dtype.itemsize > info.file_size:
            raise _fail(path, f"entry {member[:-len('.npy')]!r} claims shape {shape} of {dtype} "
                              f"({count * dtype.itemsize} bytes) in a member of "
                              f"{info.file_size} bytes: corrupt archive")
    with zf.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _load_npz(path, zf, names, arrays_wanted=True):
    bad = [n for n in names if not n.endswith(".npy")]
    if bad:
        raise _fail(path, f"zip archive with non-.npy members {bad[:5]}: neither an .npz "
                          f"nor a torch file")
    meta = _npz_meta(path, zf, names)
    if not arrays_wanted:
        return None, meta
    out = {}
    for n in names:
        key = n[: -len(".npy")]
        if key == META_KEY:
            continue
        try:
            out[key] = _read_npy_member(path, zf, n)
        except WeightFileError:
            raise
        except ValueError as e:
            if "allow_pickle" in str(e) or "Object arrays" in str(e):
                raise UnsafePickleError(
                    f"{path}: entry {key!r} is an object array, which only pickle can "
                    f"load; refused (nothing from the file was run)") from None
            raise _fail(path, f"entry {key!r}: {e}") from None
        except MemoryError:
            raise _fail(path, f"entry {key!r} is larger than memory allows") from None
    return out, meta


# --------------------------------------------------------------------------- dispatch

def _read(path, arrays_wanted):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "weight file not found", path)
    if os.path.isdir(path):
        raise _fail(path, "is a directory, not a weight file")
    if not os.path.isfile(path):        # a FIFO or a device would block or never end
        raise _fail(path, "is not a regular file")
    with open(path, "rb") as f:
        head = f.read(512)
        if not head:
            raise _fail(path, "empty file")
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            try:
                with zipfile.ZipFile(f) as zf:
                    names = zf.namelist()
                    if any(n.endswith("/data.pkl") for n in names):
                        return _load_torch_zip(path, zf, names, arrays_wanted)
                    return _load_npz(path, zf, names, arrays_wanted)
            except zipfile.BadZipFile as e:
                raise _fail(path, f"truncated or corrupt zip archive ({e})") from None
            except (EOFError, OSError, zipfile.LargeZipFile, zlib.error, NotImplementedError,
                    RuntimeError, UnicodeDecodeError) as e:   # encrypted; bad member names
                if isinstance(e, FileNotFoundError):
                    raise
                raise _fail(path, "truncated or corrupt zip archive "
                                  f"({type(e).__name__}: {e})") from None
        if head[:1] == b"\x80":
            f.seek(0)
            return _load_torch_legacy(path, f, arrays_wanted)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise _fail(path, "the tar-based torch format of torch < 0.1.10 is not supported; "
                              "re-save it with a newer torch")
        if head.startswith(b"\x93NUMPY"):
            raise _fail(path, "a single-array .npy file; load it with numpy.load, or save a "
                              "dict of arrays as .npz")
        raise _fail(path, "not a recognised weight file (expected .npz, a torch .pth/.pt zip "
                          f"archive or a legacy torch file); it starts with {head[:8]!r}")


def load(path, *, with_meta=False):
    """Read a weight file into ``{name: numpy.ndarray}``; never runs code from it.

    ``path``: an ``.npz`` (written by :func:`save` or ``numpy.savez``) or a torch file
    (zip or legacy format); the format is recognised from the content. For a torch
    checkpoint the state dict under ``state_dict``/``model_state_dict``/``model`` is
    returned (see the module docstring for what is kept and dropped).

    ``with_meta=True`` returns ``(arrays, meta)``: the ``__meta__`` JSON of an ``.npz``,
    or the scalar entries around a torch checkpoint's state dict (``{}`` if none).

    Raises ``FileNotFoundError`` if the file is missing, :class:`UnsafePickleError` if a
    pickle asks for a global off the allow-list, and :class:`WeightFileError` (a
    ``ValueError``) naming the path for any other malformed, truncated or unknown file.
    """
    arrays, meta = _read(path, True)
    return (arrays, meta) if with_meta else arrays


def load_meta(path) -> dict:
    """The metadata of a weight file (``{}`` if it has none), without reading the tensors."""
    return _read(path, False)[1]


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray) or backend._is_cupy_array(o):
        return backend.to_numpy(o).tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_then_replace(path, write):
    """Call ``write(tmp)`` on a new file beside ``path`` (in its folder), then move it over
    ``path`` (``os.replace``): ``path`` is the old file or the whole new one, never half of
    one, and a symbolic link at ``path`` is itself replaced, not the file it points to
    (resolve it first to write through it). The new file takes the mode of the file it
    replaces, or what ``open()`` gives a new one. On any error the new file is removed and
    ``path`` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):                       # named as the target, not the temporary file
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"no such folder {folder} to write", path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:100] + ".", suffix=".tmp",
                               dir=folder)
    os.close(fd)
    try:
        write(tmp)
        try:
            if os.path.exists(path):
                mode = os.stat(path).st_mode & 0o7777
            else:                       # what open() would give a new file: 0o666 less umask
                mode = 0o666 & ~_umask()
            os.chmod(tmp, mode)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    """The process's umask, read without changing it where the system tells it (Linux);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def save(path, arrays, *, meta=None, compress=False):
    """Write ``arrays`` (name -> NumPy/CuPy array or number) to ``path`` as ``.npz``, atomically.

    Names are any non-empty strings (dots are fine: ``conv1_1.weight``) except the
    reserved ``__meta__``. CuPy arrays are copied to the host. Object arrays are refused
    (they would need pickle). ``meta``: a JSON-able dict stored as UTF-8 JSON under
    ``__meta__`` (NumPy numbers and arrays are converted to plain numbers and lists).
    ``compress=True`` deflates the members (smaller, slower). The file is written exactly
    at ``path`` (no ``.npz`` suffix is added).

    The archive goes to a temporary file beside ``path``, is flushed and fsync'ed, then
    replaces ``path`` with ``os.replace``; on any error the temporary file is removed and
    an existing ``path`` is left untouched.
    """
    path = os.fspath(path)
    if not isinstance(path, str):
        raise ValueError(f"save: path must be a str or os.PathLike of str, got {path!r}")
    if not isinstance(arrays, Mapping):
        raise ValueError(f"save({path!r}): arrays must be a dict of name -> array, "
                         f"got {type(arrays).__name__}")
    prepared = {}
    for k, v in arrays.items():
        if not isinstance(k, str) or not k or "\0" in k:
            raise ValueError(f"save({path!r}): array names must be non-empty strings without "
                             f"NUL characters, got {k!r}")
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"save({path!r}): array name {k!r} is not valid Unicode "
                             "(a lone surrogate)") from None
        if k == META_KEY:
            raise ValueError(f"save({path!r}): {META_KEY!r} is reserved for metadata; "
                             "pass meta=... instead")
        a = np.asarray(backend.to_numpy(v))
        if a.dtype.hasobject:
            raise ValueError(f"save({path!r}): array {k!r} has dtype object, which .npz "
                             "can only hold through pickle; refused")
        prepared[k + ".npy"] = a
    if meta is not None:
        if not isinstance(meta, Mapping):
            raise ValueError(f"save({path!r}): meta must be a dict, got {type(meta).__name__}")
        try:
            text = json.dumps(dict(meta), default=_json_default, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"save({path!r}): meta is not JSON-serialisable: {e}") from None
        prepared[META_KEY + ".npy"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    path = os.path.realpath(path)      # through a symlink: replace its target, keep the link
    folder = os.path.dirname(path)

    def write_npz(tmp):
        with open(tmp, "wb") as f:
            mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            with zipfile.ZipFile(f, "w", compression=mode, allowZip64=True) as zf:
                for member, a in prepared.items():
                    with zf.open(member, "w", force_zip64=a.nbytes > (1 << 30)) as fh:
                        np.lib.format.write_array(fh, a, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())

    write_then_replace(path, write_npz)
    try:  # make the rename itself durable (POSIX; best effort elsewhere)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
