"""PyTorch zip checkpoints read without PyTorch: dtypes, views, wrappers, refusals.

The files are written here in `torch.save`'s layout (zip of `<dir>/data.pkl` and
`<dir>/data/<key>`, tensors pickled as `torch._utils._rebuild_tensor_v2`), with stand-in
`torch` modules present only while pickling, so no test needs PyTorch.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shlex
import sys
import types
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest

from lmjax.models.torch_zip import read_torch_zip
from lmjax.models.weights import load_pretrained, read_checkpoint
from tests.models.test_weights import HAS_TORCH, _check_forward, _sapiens_ckpt, _tiny

STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
STORAGE_TYPES = {name: type(name, (), {"__module__": "torch"}) for name in STORAGE_NAMES.values()}


def _rebuild_tensor_v2(*args):  # pickled by reference only
    raise AssertionError


def _rebuild_parameter(*args):
    raise AssertionError


for _f in (_rebuild_tensor_v2, _rebuild_parameter):
    _f.__module__, _f.__qualname__ = "torch._utils", _f.__name__


class Storage:
    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data).ravel()


class Tensor:
    """A view (offset, size, stride in elements) into a Storage, reduced the way torch's is."""

    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.parameter = parameter

    @classmethod
    def of(cls, array: np.ndarray, parameter=False):
        array = np.array(array, order="C")  # ascontiguousarray would make 0-d 1-d
        stride = tuple(s // array.itemsize for s in array.strides)
        return cls(Storage(array), 0, array.shape, stride, parameter)

    def __reduce__(self):
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False)
        tensor = (_rebuild_tensor_v2, (*args, OrderedDict()))
        if not self.parameter:
            return tensor
        plain = Tensor(self.storage, self.offset, self.size, self.stride)
        return (_rebuild_parameter, (plain, True, OrderedDict()))


def _tensors(obj):
    if isinstance(obj, np.ndarray):
        return Tensor.of(obj)
    if isinstance(obj, dict):
        out = type(obj)((k, _tensors(v)) for k, v in obj.items())
        for name, value in getattr(obj, "__dict__", {}).items():  # a state dict's _metadata
            setattr(out, name, value)
        return out
    return obj


def save_torch_zip(path, obj, *, prefix="archive", byteorder="little"):
    """`torch.save(obj, path)` for dicts of arrays / Tensor views; byteorder None: no record."""
    storages: dict[int, tuple[str, Storage]] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if not isinstance(o, Storage):
                return None
            key = storages.setdefault(id(o), (str(len(storages)), o))[0]
            kind = STORAGE_TYPES[STORAGE_NAMES[o.data.dtype]]
            return ("storage", kind, key, "cpu", o.data.size)

    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")
    vars(fake_torch).update(STORAGE_TYPES, _utils=fake_utils)
    vars(fake_utils).update(
        _rebuild_tensor_v2=_rebuild_tensor_v2, _rebuild_parameter=_rebuild_parameter
    )
    buf = io.BytesIO()
    with pytest.MonkeyPatch.context() as mp:  # the pickler checks each global imports
        mp.setitem(sys.modules, "torch", fake_torch)
        mp.setitem(sys.modules, "torch._utils", fake_utils)
        Pickler(buf, protocol=2).dump(_tensors(obj))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", buf.getvalue())
        if byteorder:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, storage in storages.values():
            data = storage.data
            if (byteorder or "little") != sys.byteorder:
                data = data.byteswap()
            z.writestr(f"{prefix}/data/{key}", data.tobytes())
        z.writestr(f"{prefix}/version", "3\n")
    return path


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(3, 4)).astype(np.float32)
    return {
        "f32": f,
        "f16": f.astype(np.float16),
        "bf16": f.astype(ml_dtypes.bfloat16),
        "f64": f.astype(np.float64),
        "i64": rng.integers(-(2**40), 2**40, size=(2, 3, 2)),
        "i32": np.arange(5, dtype=np.int32),
        "i16": np.arange(-3, 3, dtype=np.int16),
        "i8": np.arange(-3, 3, dtype=np.int8),
        "u8": np.arange(200, 206, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "num_batches_tracked": np.array(7, np.int64),  # 0-d, as in BatchNorm state dicts
        "empty": np.zeros((0, 3), np.float32),
    }


@pytest.mark.parametrize(
    "prefix,byteorder", [("archive", "little"), ("w", None), ("archive", "big")]
)
def test_every_dtype_reads_back_exactly(tmp_path, prefix, byteorder):
    arrays = _arrays()
    path = save_torch_zip(tmp_path / "w.pth", arrays, prefix=prefix, byteorder=byteorder)
    out = read_torch_zip(path)
    assert sorted(out) == sorted(arrays)
    for key, want in arrays.items():
        assert out[key].dtype == want.dtype and out[key].shape == want.shape, key
        assert out[key].tobytes() == want.tobytes(), key  # bit-exact, bf16 included
        assert out[key].flags.writeable and out[key].flags.c_contiguous


def test_views_strides_offsets_and_parameters(tmp_path):
    base = np.arange(24, dtype=np.float32)
    shared = Storage(base)
    weight = Tensor(shared, 0, (4, 6), (6, 1))
    transposed = Tensor(shared, 0, (6, 4), (1, 6))  # weight.t(): not contiguous
    tail = Tensor(shared, 10, (2, 3), (3, 1))  # a slice further into the storage
    strided = Tensor(shared, 1, (3, 2), (8, 3))
    bias = Tensor.of(np.ones(4, np.float32), parameter=True)
    out = read_torch_zip(
        save_torch_zip(
            tmp_path / "w.pt",
            {"w": weight, "wt": transposed, "tail": tail, "strided": strided, "b": bias},
        )
    )
    np.testing.assert_array_equal(out["w"], base.reshape(4, 6))
    np.testing.assert_array_equal(out["wt"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(out["tail"], base[10:16].reshape(2, 3))
    np.testing.assert_array_equal(out["strided"], [[1, 4], [9, 12], [17, 20]])
    np.testing.assert_array_equal(out["b"], np.ones(4))
    out["wt"][0, 0] = -1  # copies: one tensor's edit leaves the others alone
    assert out["w"][0, 0] == 0


def test_read_checkpoint_unwraps_strips_and_widens(tmp_path):
    arrays = _arrays()
    state = OrderedDict(("module." + k, arrays[k]) for k in ("f32", "f16", "bf16", "i64"))
    state._metadata = OrderedDict({"": {"version": 1}})  # what nn.Module.state_dict() adds
    ckpt = {"state_dict": state, "epoch": 3, "meta": {"lr": [0.1, 0.01]}, "note": "x"}
    out = read_checkpoint(save_torch_zip(tmp_path / "w.bin", ckpt))
    assert sorted(out) == ["bf16", "f16", "f32", "i64"]
    for key in ("f16", "bf16"):
        assert out[key].dtype == np.float32
        np.testing.assert_array_equal(out[key], arrays[key].astype(np.float32))
    np.testing.assert_array_equal(out["f32"], arrays["f32"])
    assert out["i64"].dtype == np.int64
    with pytest.raises(ValueError, match=r"w\.pt: 1 entries are not arrays: epoch \(int\)"):
        read_checkpoint(save_torch_zip(tmp_path / "w.pt", {"w": arrays["f32"], "epoch": 3}))


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(
    "payload,name", [(_System, r"(os|posix|nt)\.system"), (_Eval, r"(__builtin__|builtins)\.eval")]
)
def test_pickled_code_is_refused_and_never_runs(tmp_path, payload, name):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(payload(marker)))  # the payload works when unpickled freely
    assert marker.exists()
    marker.unlink()
    path = save_torch_zip(
        tmp_path / "evil.pth", {"w": np.ones(2, np.float32), "x": payload(marker)}
    )
    with pytest.raises(ValueError, match=rf"evil\.pth: refuses to unpickle global {name}; "):
        read_checkpoint(path)
    with pytest.raises(ValueError) as err:
        read_torch_zip(path)
    assert "\n" not in str(err.value) and "only tensors and dicts are read" in str(err.value)
    assert not marker.exists()


def test_broken_files_are_named_in_one_line(tmp_path):
    good = save_torch_zip(tmp_path / "good.pth", _arrays())
    raw = good.read_bytes()
    cases = {
        "short.pth": (raw[: len(raw) // 2], "truncated or corrupt zip file"),
        "text.pth": (b"not a checkpoint at all", "not a PyTorch zip checkpoint"),
        "legacy.pt": (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), "legacy pre-1.6"),
    }
    flipped = bytearray(raw)
    at = raw.index(np.ascontiguousarray(_arrays()["f32"]).tobytes())
    flipped[at] ^= 0xFF  # storage bytes no longer match the zip's CRC
    cases["crc.pth"] = (bytes(flipped), "truncated or corrupt PyTorch checkpoint")
    with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as z:
        z.writestr("archive/data/0", b"\0" * 4)
    cases["nopkl.pth"] = (None, r"not a PyTorch zip checkpoint \(no single <dir>/data.pkl\)")
    for name, (data, message) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError) as err:
            read_checkpoint(tmp_path / name)
        text = str(err.value)
        assert text.startswith(str(tmp_path / name) + ": "), text
        assert "\n" not in text, text
        assert re.search(message, text), (name, text)


def test_a_view_past_its_storage_is_refused(tmp_path):
    storage = Storage(np.arange(4, dtype=np.float32))
    for view in (Tensor(storage, 2, (3,), (1,)), Tensor(storage, 0, (2, 2), (1, 3))):
        path = save_torch_zip(tmp_path / "over.pth", {"w": view})
        with pytest.raises(ValueError, match=r"over\.pth: a tensor view .* reaches past its"):
            read_torch_zip(path)
    with pytest.raises(ValueError, match=r"lone\.pth: holds a ndarray, not a dict of tensors"):
        read_torch_zip(save_torch_zip(tmp_path / "lone.pth", np.zeros(2, np.float32)))


def test_the_writer_leaves_torch_as_it_was(tmp_path):
    missing = object()
    before = sys.modules.get("torch", missing), sys.modules.get("torch._utils", missing)
    save_torch_zip(tmp_path / "w.pth", {"w": np.zeros(1, np.float32)})
    assert (sys.modules.get("torch", missing), sys.modules.get("torch._utils", missing)) == before
    if not HAS_TORCH:
        with pytest.raises(ImportError):
            import torch  # noqa: F401


def test_load_pretrained_from_a_pth_without_torch(tmp_path):
    ck = _sapiens_ckpt()
    state = OrderedDict(("module." + k, v) for k, v in ck.items())
    path = save_torch_zip(tmp_path / "sapiens.pth", {"state_dict": state, "epoch": 12})
    model = _tiny()
    report = load_pretrained(model, path, "vit_sapiens")
    assert report.ok, report.summary()
    assert report.skipped == ["head.final_layer.weight"]
    _check_forward(model, ck)
