"""minifcn.io: weight files in and out.

The reference is torch's own serialisation: files are written by ``torch.save`` (zip and
legacy formats) and read back through ``minifcn.io.load``, then compared with the
tensors' ``.numpy()``. Hand-built files (a pickle that would run a command, a tensor that
points outside its storage, a big-endian archive) are checked against ``torch.load`` where
torch can read them, so the hand-built format itself is verified independently.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from minifcn import io as mio

torch = pytest.importorskip("torch")

LEGACY = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


def _save_torch(obj, path, legacy):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _ref(t):
    t = t.detach().resolve_conj().resolve_neg()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def _assert_same(got: dict, ref: dict):
    assert list(got) == list(ref)
    for k, t in ref.items():
        want = _ref(t)
        assert isinstance(got[k], np.ndarray), k
        assert got[k].dtype == want.dtype, (k, got[k].dtype, want.dtype)
        assert got[k].shape == want.shape, (k, got[k].shape, want.shape)
        assert got[k].flags.c_contiguous and got[k].flags.writeable, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)


def _tensor_zoo():
    g = torch.Generator().manual_seed(0)
    big = torch.randn(6, 7, generator=g)
    shared = torch.arange(12, dtype=torch.int64)
    return collections.OrderedDict([
        ("f32", torch.randn(3, 4, 2, 2, generator=g)),
        ("f64", torch.randn(5, generator=g, dtype=torch.float64)),
        ("f16", torch.randn(4, 3, generator=g).half()),
        ("bf16", torch.randn(7, generator=g).bfloat16()),
        ("i64", torch.arange(-5, 5)),
        ("i32", torch.arange(6, dtype=torch.int32).reshape(2, 3)),
        ("i8", torch.tensor([-128, 0, 127], dtype=torch.int8)),
        ("u8", torch.arange(250, 256, dtype=torch.uint8)),
        ("bool", torch.tensor([[True, False], [False, True]])),
        ("c64", torch.tensor([1 + 2j, -3j], dtype=torch.complex64)),
        ("transposed", big.t()),                       # non-contiguous
        ("permuted", torch.randn(2, 3, 4, generator=g).permute(2, 0, 1)),
        ("slice", big[2:5]),                           # view at a storage offset
        ("strided", big[1:, ::2]),                     # offset and strides
        ("column", big[:, 3]),
        ("shared_a", shared[:6]),                      # two views of one storage
        ("shared_b", shared.view(3, 4)[1:, 1:3]),
        ("expanded", torch.tensor([1.5, 2.5]).expand(3, 2)),   # stride 0
        ("scalar", torch.tensor(3.25)),                # 0-d
        ("scalar_int", torch.tensor(7)),
        ("empty", torch.empty(0, 3)),
        ("empty_view", big[3:3]),
        ("param", torch.nn.Parameter(torch.randn(2, 2, generator=g))),
        ("conj", torch.tensor([1 + 1j, 2 - 3j]).conj()),
        ("neg", torch.tensor([1 + 1j, 2 - 3j]).conj().imag),   # saved with the neg bit
    ])


@LEGACY
def test_torch_state_dict_round_trip(tmp_path, legacy):
    sd = _tensor_zoo()
    got = mio.load(_save_torch(sd, tmp_path / "zoo.pth", legacy))
    _assert_same(got, sd)
    # Views of one storage come out as independent arrays.
    got["shared_a"][0] = 99
    assert got["shared_b"][0, 0] == 5


@LEGACY
def test_module_state_dict(tmp_path, legacy):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1), torch.nn.BatchNorm2d(4),
        torch.nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, bias=False))
    net(torch.randn(2, 3, 5, 5))   # update batchnorm's running stats and counter
    sd = net.state_dict()
    got = mio.load(_save_torch(sd, tmp_path / "net.pt", legacy))
    _assert_same(got, sd)
    assert got["3.num_batches_tracked"].dtype == np.int64 and got["3.num_batches_tracked"].ndim == 0


@LEGACY
def test_checkpoint_unwraps_state_dict_and_keeps_scalars_as_meta(tmp_path, legacy):
    sd = collections.OrderedDict(w=torch.randn(2, 3), b=torch.zeros(3))
    ckpt = {"epoch": 12, "arch": "FCN32s", "best_mean_iu": np.float64(0.625), "lr": 1e-10,
            "model_state_dict": sd, "optim_state_dict": {"state": {}, "param_groups": []}}
    path = _save_torch(ckpt, tmp_path / "ckpt.pth", legacy)
    arrays, meta = mio.load(path, with_meta=True)
    _assert_same(arrays, sd)
    assert meta == {"epoch": 12, "arch": "FCN32s", "best_mean_iu": 0.625, "lr": 1e-10}
    assert mio.load_meta(path) == meta

    nested = _save_torch({"model": {"state_dict": sd}}, tmp_path / "nested.pth", legacy)
    _assert_same(mio.load(nested), sd)


def test_state_dict_number_leaves_become_0d_arrays(tmp_path):
    sd = collections.OrderedDict(w=torch.ones(2), step=5, scale=0.5, name="dropped",
                                 extra={"dropped": torch.ones(1)})
    got = mio.load(_save_torch(sd, tmp_path / "x.pth", False))
    assert list(got) == ["w", "step", "scale"]
    assert got["step"].shape == () and got["step"] == 5
    assert got["scale"].shape == () and got["scale"] == 0.5


def test_loading_does_not_import_torch(tmp_path):
    path = _save_torch({"w": torch.ones(2, 2)}, tmp_path / "w.pth", False)
    code = ("import sys; import minifcn.io as m; d = m.load(sys.argv[1]); "
            "assert d['w'].sum() == 4; print('torch' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=root,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------- hand-built torch files

class _Storage:
    """Pickles as a storage persistent id (the tensor data goes in a separate record)."""

    def __init__(self, key, numel, stype=None):
        self.key, self.numel, self.stype = key, numel, stype or torch.FloatStorage


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride))

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args + (False, collections.OrderedDict())


class _Evil:
    """Unpickling this calls ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Pickler(pickle.Pickler):
    def __init__(self, f, legacy=False):
        super().__init__(f, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            pid = ("storage", obj.stype, obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def _pickle_bytes(obj, legacy=False):
    buf = io.BytesIO()
    _Pickler(buf, legacy).dump(obj)
    return buf.getvalue()


def _write_zip(path, obj, storages, byteorder="little"):
    """A torch zip archive: ``storages`` is key -> raw bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _pickle_bytes(obj))
        zf.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")
    return path


def _legacy_header():
    return b"".join(pickle.dumps(v, protocol=2) for v in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}}))


def _write_legacy(path, obj, storages):
    """A legacy torch file: ``storages`` is key -> float32 array."""
    with open(path, "wb") as f:
        f.write(_legacy_header())
        f.write(_pickle_bytes(obj, legacy=True))
        f.write(pickle.dumps(sorted(storages), protocol=2))
        for key in sorted(storages):
            a = np.ascontiguousarray(storages[key], dtype="<f4")
            f.write(np.int64(a.size).astype("<i8").tobytes() + a.tobytes())
    return path


def test_hand_built_files_match_torch_load(tmp_path):
    # Validates the helpers above against torch itself: both readers agree.
    data = np.arange(12, dtype=np.float32)
    obj = collections.OrderedDict(t=_Tensor(_Storage("0", 12), 2, (3, 2), (1, 3)))
    for path in (_write_zip(tmp_path / "h.pth", obj, {"0": data.astype("<f4").tobytes()}),
                 _write_legacy(tmp_path / "h_legacy.pth", obj, {"0": data})):
        ref = torch.load(path, weights_only=True)
        _assert_same(mio.load(path), ref)


@pytest.mark.parametrize("legacy", [False, True])
def test_unsigned_integer_tensors_load(tmp_path, legacy):
    """torch 2.x pickles uint16/32/64 storages as torch.storage.UntypedStorage (rebuilt
    with _rebuild_tensor_v3 and a dtype): read, not refused as unsafe."""
    state = {"u16": torch.tensor([1, 2, 65535]).to(torch.uint16),
             "u32": torch.tensor([[7, 2 ** 32 - 1]]).to(torch.uint32),
             "u64": torch.tensor([3]).to(torch.uint64)}
    path = tmp_path / "u.pth"
    try:
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    except Exception as e:                   # a torch that cannot write these in that format
        pytest.skip(f"torch.save: {e}")
    got = mio.load(path)
    for k, t in state.items():
        want = np.asarray(t.tolist(), dtype={"u16": np.uint16, "u32": np.uint32,
                                               "u64": np.uint64}[k])
        assert got[k].dtype == want.dtype and np.array_equal(got[k], want), k


def test_float8_tensor_is_refused_as_unsupported_not_unsafe(tmp_path):
    path = tmp_path / "f8.pth"
    torch.save({"w": torch.zeros(2).to(torch.float8_e4m3fn)}, path)
    with pytest.raises(mio.WeightFileError, match=r"dtype torch\.float8_e4m3fn, which minifcn "
                                                  r"cannot read") as info:
        mio.load(path)
    assert not isinstance(info.value, mio.UnsafePickleError)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")     # deprecated in torch
def test_quantized_tensor_is_refused_as_unsupported_not_unsafe(tmp_path):
    path = tmp_path / "q.pth"
    q = torch.quantize_per_tensor(torch.tensor([0.5, 1.0]), 0.1, 0, torch.quint8)
    torch.save({"q": q}, path)
    with pytest.raises(mio.WeightFileError, match="holds a quantized tensor, which minifcn "
                                                  "cannot read") as info:
        mio.load(path)
    assert not isinstance(info.value, mio.UnsafePickleError)


def test_legacy_file_from_a_big_endian_host(tmp_path):
    """torch writes legacy storages little-endian on every host and ignores sys_info's
    little_endian when reading: a file whose sys_info says big-endian loads the same."""
    state = {"w": torch.tensor([1.0, 2.0, 3.0]), "n": torch.tensor([1, 2])}
    plain = tmp_path / "leg.pth"
    torch.save(state, plain, _use_new_zipfile_serialization=False)
    with open(plain, "rb") as f:
        magic, proto, info = pickle.load(f), pickle.load(f), pickle.load(f)
        rest = f.read()
    info["little_endian"] = False
    flipped = tmp_path / "leg_be.pth"
    with open(flipped, "wb") as g:
        for obj in (magic, proto, info):
            pickle.dump(obj, g, protocol=2)
        g.write(rest)
    ref = torch.load(flipped, weights_only=True)
    got = mio.load(flipped)
    for k in state:
        np.testing.assert_array_equal(got[k], ref[k].numpy())
        np.testing.assert_array_equal(got[k], state[k].numpy())


def test_big_endian_archive(tmp_path):
    data = np.linspace(-2, 2, 10)
    obj = {"t": _Tensor(_Storage("0", 10, torch.DoubleStorage), 1, (3, 3), (3, 1))}
    path = _write_zip(tmp_path / "be.pth", obj, {"0": data.astype(">f8").tobytes()}, "big")
    got = mio.load(path)["t"]
    np.testing.assert_array_equal(got, data[1:10].reshape(3, 3))
    assert got.dtype == np.float64 and got.dtype.isnative
    np.testing.assert_array_equal(got, torch.load(path, weights_only=True)["t"].numpy())


@pytest.mark.parametrize("size,stride,offset", [((10,), (1,), 0), ((2, 3), (3, 1), 1),
                                                ((2,), (5,), 0), ((1,), (1,), 4)])
def test_tensor_outside_its_storage_is_refused(tmp_path, size, stride, offset):
    obj = {"t": _Tensor(_Storage("0", 4), offset, size, stride)}
    path = _write_zip(tmp_path / "oob.pth", obj, {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(mio.WeightFileError, match="beyond its storage") as e:
        mio.load(path)
    assert str(path) in str(e.value)


def test_storage_record_shorter_than_declared(tmp_path):
    obj = {"t": _Tensor(_Storage("0", 8), 0, (8,), (1,))}
    path = _write_zip(tmp_path / "short.pth", obj, {"0": np.zeros(5, "<f4").tobytes()})
    with pytest.raises(mio.WeightFileError, match="beyond its storage"):
        mio.load(path)


def test_missing_storage_record(tmp_path):
    obj = {"t": _Tensor(_Storage("0", 2), 0, (2,), (1,))}
    path = _write_zip(tmp_path / "nostorage.pth", obj, {})
    with pytest.raises(mio.WeightFileError, match="missing") as e:
        mio.load(path)
    assert str(path) in str(e.value)


# ----------------------------------------------------------------- malicious files

def _payloads(marker):
    return {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "builtins.eval": _Evil(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Evil(subprocess.Popen, ["touch", str(marker)]),
        "builtins.exec": _Evil(exec, f"open({str(marker)!r}, 'w').close()"),
    }


def _global_name(evil):
    fn = evil.fn
    mod = "builtins" if fn.__module__ in (None, "builtins") else fn.__module__
    return f"{mod}.{fn.__qualname__}"


@pytest.mark.parametrize("which", ["os.system", "builtins.eval", "subprocess.Popen",
                                   "builtins.exec"])
@LEGACY
def test_malicious_pickle_is_refused_before_running(tmp_path, which, legacy):
    marker = tmp_path / "pwned"
    evil = _payloads(marker)[which]
    # A plausible state dict: a real tensor first, the payload after it.
    obj = collections.OrderedDict(
        weight=_Tensor(_Storage("0", 4), 0, (4,), (1,)), bias=evil)
    data = np.arange(4, dtype=np.float32)
    path = tmp_path / "evil.pth"
    if legacy:
        _write_legacy(path, obj, {"0": data})
    else:
        _write_zip(path, obj, {"0": data.tobytes()})
    # The sanity check: an unrestricted unpickler would really run it.
    with pytest.raises(mio.UnsafePickleError) as e:
        mio.load(path)
    assert not marker.exists(), "the payload ran"
    msg = str(e.value)
    assert str(path) in msg and _global_name(evil).split(".")[-1] in msg
    assert "allow-list" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, pickle.UnpicklingError)
    with pytest.raises(mio.UnsafePickleError):
        mio.load_meta(path)
    assert not marker.exists()


def test_the_payload_is_real(tmp_path):
    # The same bytes, given to plain pickle, do run: the refusal above is not vacuous.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(marker)["builtins.eval"], protocol=2))
    assert marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps(_payloads(marker)["os.system"], protocol=2))
    with pytest.raises(mio.UnsafePickleError, match="system"):
        mio.load(path)
    assert not marker.exists()


def test_whole_model_pickle_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Conv2d(1, 1, 1), path)
    with pytest.raises(mio.UnsafePickleError, match="state_dict"):
        mio.load(path)


def test_npz_object_array_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, ok=np.ones(2), bad=np.array([_payloads(marker)["os.system"]], dtype=object))
    with pytest.raises(mio.UnsafePickleError, match="object array") as e:
        mio.load(path)
    assert str(path) in str(e.value) and "'bad'" in str(e.value)
    assert not marker.exists()


# ----------------------------------------------------------------- .npz save / load

def test_npz_round_trip_with_dotted_keys_and_meta(tmp_path):
    rng = np.random.default_rng(0)
    arrays = collections.OrderedDict([
        ("conv1_1.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("conv1_1.bias", rng.standard_normal(4)),
        ("upscore.weight", np.asfortranarray(rng.standard_normal((2, 2, 4, 4)))),
        ("optim.momentum.conv1_1.weight", np.zeros((4, 3, 3, 3), np.float32)),
        ("count", np.int64(7)),
        ("flag", np.array([True, False])),
        ("empty", np.empty((0, 5), np.float16)),
        ("file", np.arange(3)),            # names that would clash with np.savez's arguments
        ("allow_pickle", np.arange(2)),
        ("a/b", np.arange(4, dtype=np.uint8)),
        ("scalar", 2.5),
    ])
    meta = {"iteration": 1200, "config": {"model": "fcn32s", "lr": 1e-4, "size": [61, 83]},
            "loss": np.float32(0.5), "history": np.array([1.0, 0.5])}
    path = tmp_path / "ckpt.npz"
    mio.save(path, arrays, meta=meta)
    got, got_meta = mio.load(path, with_meta=True)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        want = np.asarray(v)
        assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)
    assert got_meta == {"iteration": 1200, "loss": 0.5, "history": [1.0, 0.5],
                        "config": {"model": "fcn32s", "lr": 1e-4, "size": [61, 83]}}
    assert mio.load_meta(path) == got_meta
    assert mio.META_KEY not in mio.load(path)
    # numpy itself reads the file, without pickle.
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["conv1_1.weight"], arrays["conv1_1.weight"])


def test_npz_without_meta_and_from_numpy(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez_compressed(path, **{"a.weight": np.ones((2, 2)), "b": np.arange(3)})
    got, meta = mio.load(path, with_meta=True)
    assert meta == {} and mio.load_meta(path) == {}
    np.testing.assert_array_equal(got["a.weight"], np.ones((2, 2)))
    mio.save(tmp_path / "c.npz", got, compress=True)
    np.testing.assert_array_equal(mio.load(tmp_path / "c.npz")["b"], np.arange(3))


def test_save_accepts_device_arrays(tmp_path, xp):
    a = xp.arange(6, dtype=xp.float32).reshape(2, 3)
    mio.save(tmp_path / "dev.npz", {"w": a, "w.t": a.T})
    got = mio.load(tmp_path / "dev.npz")
    np.testing.assert_array_equal(got["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(got["w.t"], got["w"].T)


@pytest.mark.parametrize("arrays,match", [
    ({mio.META_KEY: np.ones(1)}, "reserved"),
    ({"": np.ones(1)}, "non-empty strings"),
    ({3: np.ones(1)}, "non-empty strings"),
    ({"x": np.array([{}], dtype=object)}, "dtype object"),
])
def test_save_rejects_bad_input(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        mio.save(tmp_path / "bad.npz", arrays)
    assert os.listdir(tmp_path) == []


def test_save_rejects_non_json_meta(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        mio.save(tmp_path / "m.npz", {"a": np.ones(1)}, meta={"f": object()})
    assert os.listdir(tmp_path) == []


def _boom(*args, **kwargs):
    raise OSError("simulated crash")


@pytest.mark.parametrize("where", ["write", "replace", "fsync"])
def test_save_is_atomic(tmp_path, monkeypatch, where):
    path = tmp_path / "w.npz"
    mio.save(path, {"w": np.arange(4.0)}, meta={"iteration": 1})
    before = path.read_bytes()
    if where == "write":
        calls = []
        real = np.lib.format.write_array

        def write_then_crash(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:        # crash after one member is written
                raise OSError("simulated crash")
            return real(*args, **kwargs)
        monkeypatch.setattr(np.lib.format, "write_array", write_then_crash)
    elif where == "replace":
        monkeypatch.setattr(os, "replace", _boom)
    else:
        monkeypatch.setattr(os, "fsync", _boom)
    with pytest.raises(OSError, match="simulated crash"):
        mio.save(path, {"w": np.zeros(1000), "v": np.ones(3)}, meta={"iteration": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.npz"], "a temporary file was left behind"
    np.testing.assert_array_equal(mio.load(path)["w"], np.arange(4.0))
    assert mio.load_meta(path) == {"iteration": 1}


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "w.npz"
    mio.save(path, {"w": np.ones(2)})
    mio.save(path, {"v": np.zeros(3)})
    assert list(mio.load(path)) == ["v"]
    assert os.listdir(tmp_path) == ["w.npz"]


# ----------------------------------------------------------------- bad input

def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError) as e:
        mio.load(path)
    assert str(path) in str(e.value)


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name,make,match", [
    ("empty.pth", lambda p: _write(p, b""), "empty file"),
    ("text.pth", lambda p: _write(p, b"hello, I am not weights\n"), "not a recognised"),
    ("one.npy", lambda p: (np.save(p, np.ones(3)), p)[1], "single-array"),
    ("wrong_magic.pth", lambda p: _write(p, pickle.dumps(123, protocol=2)), "magic"),
    ("list.pth", lambda p: (torch.save([torch.ones(1)], p), p)[1], "holds a list"),
    ("nothing.pth", lambda p: (torch.save({"a": "text", "b": None}, p), p)[1], "no tensors"),
    ("other.zip", lambda p: (zipfile.ZipFile(p, "w").writestr("readme.txt", "hi"), p)[1],
     "non-.npy"),
])
def test_bad_files_name_the_path(tmp_path, name, make, match):
    path = make(tmp_path / name)
    with pytest.raises(mio.WeightFileError, match=match) as e:
        mio.load(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_directory(tmp_path):
    with pytest.raises(mio.WeightFileError, match="directory"):
        mio.load(tmp_path)


@pytest.mark.parametrize("kind", ["zip", "legacy", "npz"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_truncated_files(tmp_path, kind, keep):
    sd = collections.OrderedDict((f"layer{i}.weight", torch.randn(64, 16)) for i in range(4))
    path = tmp_path / f"full.{kind}"
    if kind == "npz":
        mio.save(path, {k: v.numpy() for k, v in sd.items()})
    else:
        _save_torch(sd, path, kind == "legacy")
    data = path.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(mio.WeightFileError) as e:
        mio.load(cut)
    assert str(cut) in str(e.value)


class _TensorWithState(_Tensor):
    """A tensor whose pickle ends with BUILD, trying to rewrite the layout after checks."""

    def __reduce__(self):
        return super().__reduce__() + ((None, {"stride": (-1,), "offset": -3}),)


def test_build_cannot_rewrite_a_checked_tensor(tmp_path):
    obj = {"t": _TensorWithState(_Storage("0", 4), 0, (4,), (1,))}
    path = _write_zip(tmp_path / "build.pth", obj, {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(mio.WeightFileError, match="set state") as e:
        mio.load(path)
    assert str(path) in str(e.value)


def test_build_cannot_patch_the_rebuild_functions(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2; BUILD (None, {'__defaults__': ()}); POP; {}
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
               b"N}X\x0c\x00\x00\x00__defaults__)s\x86b0}.")
    path = tmp_path / "patch.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(mio.WeightFileError, match="set state"):
        mio.load(path)
    # Loading still works afterwards, defaults intact.
    sd = {"w": torch.ones(3)}
    _assert_same(mio.load(_save_torch(sd, tmp_path / "ok.pth", False)), sd)


class _TensorV1:
    """The tensor pickle of torch < 0.4: _rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return torch._utils._rebuild_tensor, self.args


@LEGACY
def test_old_rebuild_tensor_v1(tmp_path, legacy):
    data = np.arange(10, dtype=np.float32)
    obj = collections.OrderedDict(w=_TensorV1(_Storage("7", 10), 1, (3, 3), (3, 1)))
    path = tmp_path / "v1.pth"
    if legacy:
        _write_legacy(path, obj, {"7": data})
    else:
        _write_zip(path, obj, {"7": data.tobytes()})
    got = mio.load(path)
    np.testing.assert_array_equal(got["w"], data[1:].reshape(3, 3))
    _assert_same(got, torch.load(path, weights_only=True))


# -- a few bytes must not ask for gigabytes; every malformed file is one named error ----------

def _npz_with(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _npy_header(shape):
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return b.getvalue()


def _claim_size(path, member, size):
    """Rewrite ``member``'s uncompressed size in both zip headers: a lying archive."""
    import struct
    d = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    struct.pack_into("<I", d, info.header_offset + 22, size)
    i = d.find(b"PK\x01\x02")
    while i != -1:
        if d[i + 46:i + 46 + len(member)] == member.encode():
            struct.pack_into("<I", d, i + 24, size)
        i = d.find(b"PK\x01\x02", i + 1)
    open(path, "wb").write(bytes(d))
    return path


def _malformed(tmp_path, which):
    """The file for each case of test_malformed_files_are_one_named_error."""
    p = tmp_path / f"{which}.pth"
    if which == "expanded 2**40":        # 1.5 KB; torch.load gives a stride-0 view of 4 TiB
        torch.save({"a": torch.ones(1).expand(2 ** 40)}, p)
    elif which == "expanded 2**26":      # 256 MB from 4 bytes
        torch.save({"a": torch.ones(1).expand(2 ** 26)}, p)
    elif which == "stride 2**70":
        _write_zip(p, {"a": _Tensor(_Storage("0", 1), 0, (1,), (2 ** 70,))}, {"0": b"\0" * 4})
    elif which == "70 dimensions":
        _write_zip(p, {"a": _Tensor(_Storage("0", 1), 0, (1,) * 70, (1,) * 70)}, {"0": b"\0" * 4})
    elif which == "empty but huge":
        _write_zip(p, {"a": _Tensor(_Storage("0", 1), 0, (0, 2 ** 40, 2 ** 40), (1, 1, 1))},
                   {"0": b"\0" * 4})
    elif which == "member claims 4 GB":
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("archive/data.pkl", _pickle_bytes({"a": _Tensor(_Storage("0", 1), 0, (1,), (1,))}))
            zf.writestr("archive/byteorder", "little")
            zf.writestr("archive/data/0", b"\0" * 4)
        _claim_size(p, "archive/data/0", 0xFFFFFFF0)
    elif which == "pickle length 2**40":
        import struct
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("archive/data.pkl", b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 40) + b"abc")
            zf.writestr("archive/byteorder", "little")
    elif which == "npz shape 2**40":
        p = _npz_with(tmp_path / "shape.npz", {"a.npy": _npy_header((2 ** 40,)) + b"\0" * 16})
    elif which == "encrypted flag":
        torch.save({"a": torch.ones(2)}, p)
        d = bytearray(open(p, "rb").read())
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = d.find(sig)
            while i != -1:
                d[i + off] |= 1
                i = d.find(sig, i + 1)
        open(p, "wb").write(bytes(d))
    elif which == "member name not UTF-8":
        p = _npz_with(tmp_path / "name.npz", {"\u00e9.npy": _npy(np.ones(2))})
        data = open(p, "rb").read().replace("\u00e9".encode(), b"\xff\xff")
        open(p, "wb").write(data)
    elif which == "corrupt __meta__":
        p = _npz_with(tmp_path / "meta.npz", {"w.npy": _npy(np.ones(2)), "__meta__.npy": b"garbage"})
    elif which == "deep __meta__":
        p = _npz_with(tmp_path / "deep.npz", {"w.npy": _npy(np.ones(2)), "__meta__.npy": _npy(
            np.frombuffer(b"[" * 100000 + b"]" * 100000, np.uint8))})
    elif which == "__meta__ a list":
        p = _npz_with(tmp_path / "list.npz", {"w.npy": _npy(np.ones(2)),
                                              "__meta__.npy": _npy(np.frombuffer(b"[1, 2]", np.uint8))})
    return p


@pytest.mark.parametrize("which,match", [
    ("expanded 2**40", "expanded view this large is refused"),
    ("expanded 2**26", "expanded view this large is refused"),
    ("stride 2**70", "invalid layout"),
    ("70 dimensions", "invalid layout"),
    ("empty but huge", "cannot be built"),
    ("member claims 4 GB", "claims 4294967280 bytes"),
    ("pickle length 2**40", "corrupt pickle"),
    ("npz shape 2**40", "claims shape"),
    ("encrypted flag", "corrupt zip archive"),
    ("member name not UTF-8", "corrupt zip archive"),
    ("corrupt __meta__", "corrupt __meta__ entry"),
    ("deep __meta__", "corrupt __meta__ entry"),
    ("__meta__ a list", "not an object"),
])
def test_malformed_files_are_one_named_error(tmp_path, which, match):
    """Each of these was a MemoryError (or allocated the size a few bytes claimed), an
    OverflowError, a RuntimeError, or an error without the path. Now: a WeightFileError
    that names the file, before anything large is allocated."""
    import resource
    path = _malformed(tmp_path, which)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:      # room for 2 GB more than the process maps now:
        mapped = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
    limit = mapped + (2 << 30)                # a regression fails fast instead of zero-filling
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        with pytest.raises(mio.WeightFileError, match=match) as e:
            mio.load(path)
        with pytest.raises(mio.WeightFileError):
            mio.load_meta(path) if "meta" in which else mio.load(path)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert str(path) in str(e.value)


def test_small_expanded_view_still_loads(tmp_path):
    torch.save({"a": torch.arange(3.0).expand(1000, 3)}, tmp_path / "e.pth")
    np.testing.assert_array_equal(mio.load(tmp_path / "e.pth")["a"], np.tile(np.arange(3.0), (1000, 1)))


def test_ordered_dict_whose_methods_a_pickle_replaced(tmp_path):
    """BUILD on an OrderedDict can set attributes named ``get`` or ``items``; the reader
    uses dict's own methods, so such a file is read like any other (here: empty)."""
    p = tmp_path / "od.pth"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl",
                    b"\x80\x02ccollections\nOrderedDict\n)R}X\x03\x00\x00\x00getctorch\nTensor\nsb.")
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(mio.WeightFileError, match="holds no tensors"):
        mio.load(p)


def test_save_through_a_symlink_keeps_the_link(tmp_path):
    real, link = tmp_path / "real.npz", tmp_path / "link.npz"
    mio.save(real, {"a": np.zeros(1)})
    os.symlink(real, link)
    mio.save(link, {"a": np.full(1, 7.0)})
    assert link.is_symlink()
    assert mio.load(real)["a"][0] == 7.0


def test_save_honours_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        mio.save(tmp_path / "private.npz", {"a": np.ones(1)})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "private.npz").st_mode & 0o777 == 0o600


def test_save_with_a_long_name_and_refused_names(tmp_path):
    long = tmp_path / ("x" * 240 + ".npz")
    mio.save(long, {"a": np.ones(1)})                   # the temporary name is truncated
    assert mio.load(long)["a"][0] == 1.0
    for bad in ("a\0b", "\ud800"):
        with pytest.raises(ValueError, match="NUL|Unicode"):
            mio.save(tmp_path / "n.npz", {bad: np.ones(1)})


@LEGACY
@pytest.mark.parametrize("extra", [{1, 2}, torch.device("cpu"), 1 + 2j, bytearray(b"x")],
                         ids=["set", "device", "complex", "bytearray"])
def test_checkpoint_with_harmless_extras_loads_like_torch(tmp_path, legacy, extra):
    """torch.load(weights_only=True) reads these beside a state dict; so does minifcn (they
    were refused as unsafe), dropping them like any entry that is not a tensor."""
    sd = {"w": torch.arange(4.0).reshape(2, 2)}
    path = _save_torch({"state_dict": sd, "x": extra}, tmp_path / "ck.pth", legacy)
    assert torch.load(path, weights_only=True)["x"] == extra
    arrays, meta = mio.load(path, with_meta=True)
    _assert_same(arrays, sd)
    assert "x" not in meta


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_bytearray_of_a_size_is_refused(tmp_path):
    """bytearray(10**12) would allocate a terabyte: only bytes or text are accepted."""
    p = tmp_path / "big.pth"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(_Reduce(bytearray, (10 ** 12,)), protocol=2))
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(mio.WeightFileError, match="bytearray"):
        mio.load(p)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(mio.WeightFileError, match="not a regular file"):
        mio.load(fifo)
