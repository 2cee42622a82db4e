"""Reading checkpoint files into NumPy: `.safetensors`, `.npz` and PyTorch's files.

`read_checkpoint` returns every array of a file by key; which arrays fill which
model variables is decided by the tables of `lmjax.models.weights`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = (".safetensors", ".npz", *TORCH_SUFFIXES)
_WRAPPERS = ("state_dict", "model", "module")  # nested dicts that hold the weights


def _to_numpy_dtype(name: str, key: str, value: np.ndarray) -> np.ndarray:
    if value.dtype == object:
        raise ValueError(f"{name}: entry {key!r} is not a numeric array")
    # bf16/fp8 (ml_dtypes) are widened: NumPy arithmetic on them is slow or absent.
    if value.dtype.name == "bfloat16" or value.dtype.name.startswith("float8"):
        return value.astype(np.float32)
    return value


def _torch_state(path: pathlib.Path) -> Mapping:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path}: reading a PyTorch checkpoint needs PyTorch, which is not installed. "
            "Install it (pip install torch), or convert the file to safetensors once on a "
            "machine that has it:\n"
            "  import torch; from safetensors.torch import save_file\n"
            f"  sd = torch.load('{path.name}', map_location='cpu', weights_only=True)\n"
            "  sd = sd.get('state_dict', sd)\n"
            "  save_file({k: v.contiguous() for k, v in sd.items()}, 'weights.safetensors')"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects beyond tensors and plain containers
        raise ValueError(
            f"{path}: PyTorch cannot load it with weights_only=True ({err}); load it in a "
            "trusted session and save its state dict as safetensors"
        ) from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype in (torch.bfloat16, torch.float16):
                value = value.float()
            return value.numpy()
        return value

    def convert(d):
        return {k: convert(v) if isinstance(v, Mapping) else to_numpy(v) for k, v in d.items()}

    return convert(state)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a checkpoint file, by key, as NumPy (bf16/fp16 widened to float32).

    `.safetensors` and `.npz` are read with NumPy alone; `.pth`/`.pt`/`.bin` need
    PyTorch and are loaded with `weights_only=True` (no pickled code runs). The
    weights of a training checkpoint are taken from its nested "state_dict" /
    "model" / "module" dict, and a leading "module." (DataParallel) is stripped
    from the keys.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unknown suffix, or entries that are not arrays (named).
      ImportError: a PyTorch file without PyTorch (the message says how to convert).
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
        state = _torch_state(path)
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
