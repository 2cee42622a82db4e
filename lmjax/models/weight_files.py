"""Reading checkpoint files into NumPy: `.safetensors`, `.npz` and PyTorch's zip files.

`read_checkpoint` returns every array of a file by key; which arrays fill which
model variables is decided by the tables of `lmjax.models.weights`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

from lmjax.models.torch_zip import read_torch_zip

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = (".safetensors", ".npz", *TORCH_SUFFIXES)
_WRAPPERS = ("state_dict", "model", "module")  # nested dicts that hold the weights


def _to_numpy_dtype(name: str, key: str, value: np.ndarray) -> np.ndarray:
    if value.dtype == object:
        raise ValueError(f"{name}: entry {key!r} is not a numeric array")
    # Half floats are widened: NumPy arithmetic on them is slow (fp16) or absent (bf16,
    # fp8), and the model variables they fill are float32.
    if value.dtype.name in ("float16", "bfloat16") or value.dtype.name.startswith("float8"):
        return value.astype(np.float32)
    return value


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a checkpoint file, by key, as NumPy (bf16/fp16 widened to float32).

    Every format is read without PyTorch: `.pth`/`.pt`/`.bin` are `torch.save` zip
    files, unpickled by `lmjax.models.torch_zip`, which rebuilds tensors and dicts and
    refuses any other pickled global (no pickled code runs). The weights of a training
    checkpoint are taken from its nested "state_dict" / "model" / "module" dict, and a
    leading "module." (DataParallel) is stripped from the keys.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unknown suffix, entries that are not arrays (named), or a PyTorch
        file that is legacy, corrupt or pickles anything beyond tensors and dicts.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        state = load_file(str(path))
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except ValueError as err:  # object arrays need pickle: not weights
            raise ValueError(f"{path}: not a plain array archive ({err})") from None
    elif suffix in TORCH_SUFFIXES:
        state = read_torch_zip(path)
    else:
        raise ValueError(
            f"{path}: unknown checkpoint suffix {path.suffix!r}; known: {', '.join(SUFFIXES)}"
        )
    while True:  # unwrap {"state_dict": {...}, "meta": ...} and the like
        inner = [w for w in _WRAPPERS if isinstance(state.get(w), Mapping)]
        if not inner:
            break
        state = state[inner[0]]
    bad = sorted(k for k, v in state.items() if not isinstance(v, np.ndarray))
    if bad:
        kinds = ", ".join(f"{k} ({type(state[k]).__name__})" for k in bad[:5])
        raise ValueError(f"{path}: {len(bad)} entries are not arrays: {kinds}")
    out = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        out[name] = _to_numpy_dtype(str(path), key, value)
    return out
