"""PyTorch's zip checkpoints (`torch.save`) read into NumPy, without PyTorch.

Only tensors, parameters and (ordered) dicts are rebuilt: any other global the pickle
names is refused before it is looked up, so no pickled code runs.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _Refused(ValueError):
    """An error this module words itself (passed on as is, never re-wrapped)."""


class _StorageType:
    # Not the dtype itself: the pickle may call anything it holds, and this is inert.
    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: pathlib.Path, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.path, self.archive, self.prefix = path, archive, prefix
        self.big_endian = self._byteorder() == "big"
        self.storages: dict[str, np.ndarray] = {}

    def _byteorder(self) -> str:
        name = f"{self.prefix}/byteorder"
        if name not in self.archive.namelist():
            return "little"  # as PyTorch itself assumes for files without the record
        order = self.archive.read(name).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise _Refused(f"{self.path}: unknown byte order {order!r}")
        return order

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self.rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise _Refused(
            f"{self.path}: refuses to unpickle global {module}.{name}; "
            "only tensors and dicts are read"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"{self.path}: unknown persistent object {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Refused(f"{self.path}: storage of unknown type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            dtype = storage_type.dtype
            if len(raw) % dtype.itemsize or len(raw) // dtype.itemsize < int(numel):
                raise _Refused(
                    f"{self.path}: storage {key} holds {len(raw)} bytes, not {numel} x {dtype.name}"
                )
            data = np.frombuffer(raw, dtype)
            # Data is stored in the writer's byte order; swap when it differs from ours.
            if self.big_endian != (sys.byteorder == "big") and dtype.itemsize > 1:
                data = data.byteswap()
            self.storages[key] = data
        return self.storages[key]

    def rebuild_tensor(
        self, storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
    ):
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise _Refused(f"{self.path}: a tensor whose storage is not a stored array")
        dims = (storage_offset, *size, *stride)
        if len(size) != len(stride) or not all(type(d) is int and d >= 0 for d in dims):
            raise _Refused(f"{self.path}: bad tensor view {size} / {stride} @ {storage_offset}")
        if 0 in size:
            return np.zeros(size, storage.dtype)
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise _Refused(
                f"{self.path}: a tensor view (size {tuple(size)}, stride {tuple(stride)}, "
                f"offset {storage_offset}) reaches past its storage of {storage.size}"
            )
        return np.lib.stride_tricks.as_strided(
            storage[storage_offset:],
            shape=tuple(size),
            strides=[s * storage.itemsize for s in stride],
            writeable=False,
        ).copy()

    def rebuild_parameter(self, data, requires_grad, backward_hooks):
        if not isinstance(data, np.ndarray):
            raise _Refused(f"{self.path}: a parameter that is not a tensor")
        return data


def _prefix(path: pathlib.Path, archive: zipfile.ZipFile) -> str:
    prefixes = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl")]
    prefixes = [p for p in prefixes if p and "/" not in p]
    if len(prefixes) != 1:
        raise _Refused(f"{path}: not a PyTorch zip checkpoint (no single <dir>/data.pkl)")
    return prefixes[0]


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_torch_zip(path: str | os.PathLike) -> dict:
    """The dict a `torch.save` zip file holds, tensors as NumPy arrays (dtypes kept).

    Raises:
      ValueError: not a zip checkpoint (legacy `torch.save` files included), truncated or
        corrupt, a pickled global other than tensors and dicts, or a top level that is
        not a dict; the message is one line naming the file.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if head.startswith(b"PK"):
            raise ValueError(f"{path}: truncated or corrupt zip file") from None
        if head[:1] == b"\x80":  # a pickle: torch.save(..., _use_new_zipfile_serialization=False)
            raise ValueError(
                f"{path}: not a PyTorch zip checkpoint (the legacy pre-1.6 format); "
                "re-save it with a current torch.save or as safetensors"
            ) from None
        raise ValueError(f"{path}: not a PyTorch zip checkpoint") from None
    with archive:
        try:
            prefix = _prefix(path, archive)
            with archive.open(f"{prefix}/data.pkl") as pkl:
                state = _Unpickler(pkl, path, archive, prefix).load()
        except _Refused as err:
            raise ValueError(str(err)) from None
        except Exception as err:  # zip CRC / short reads, broken pickles: all one cause
            detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            message = f"{path}: truncated or corrupt PyTorch checkpoint ({detail})"
            raise ValueError(message) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    return _plain(state)
