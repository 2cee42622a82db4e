"""Low-rank adaptation (LoRA) of Linear layers, adapter-only files, and merging.

`apply_lora(model, {"qkv": 4, "proj": 8})` wraps every `nnx.Linear` stored under one
of those attribute names in a `LoRALinear`:

    y = base(x) + (alpha / rank) * dropout(x) @ A @ B,    A [in, rank], B [rank, out]

A is initialised as PyTorch's `kaiming_uniform_(a=sqrt(5))` (uniform in
+-1/sqrt(in)), B with zeros, so the adapted model equals the base model at init.
A and B are `LoRAParam`s (a subclass of `nnx.Param`): they train like any parameter,
and filters pick them out (`nnx.state(model, LoRAParam)`).

Freezing is the optimizer's job: `trainable_paths(model, "lora_and_head")` gives the
parameter paths that stay trainable (adapters and the `head` module), and
`lmjax.train.optim.make_optimizer(..., trainable=...)` zeroes the updates of the rest.

`save_lora` writes just the adapters (and the head, batch statistics included) to a
NumPy `.npz`; `load_lora` puts them into a freshly built model of the same config.
`merge_lora` folds `A @ B` into the base kernels and returns a plain model for export.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

TRAINABLE = ("all", "lora_and_head")
HEAD = "head"  # attribute name of the output head that trains with the adapters
_SEP = "/"


class LoRAParam(nnx.Param):
    """A LoRA adapter matrix: trainable, and selectable by type in filters."""


class LoRALinear(nnx.Module):
    """`base(x) + scale * dropout(x) @ lora_a @ lora_b` around an existing `nnx.Linear`."""

    def __init__(
        self,
        base: nnx.Linear,
        *,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = float(rank if alpha is None else alpha) / rank
        self.dtype = dtype
        d_in, d_out = base.in_features, base.out_features
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(rngs.params(), (d_in, rank), jnp.float32, -bound, bound)
        self.lora_a = LoRAParam(a.astype(base.param_dtype))
        self.lora_b = LoRAParam(jnp.zeros((rank, d_out), base.param_dtype))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def delta(self) -> jax.Array:
        """`scale * A @ B`, `[in, out]`: what merging adds to the base kernel."""
        return self.scale * (self.lora_a[...] @ self.lora_b[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base(x)
        a, b = self.lora_a[...], self.lora_b[...]
        dtype = self.dtype or y.dtype
        h = self.dropout(x).astype(dtype) @ a.astype(dtype)
        return y + (self.scale * (h @ b.astype(dtype))).astype(y.dtype)


def _children(model: nnx.Module, kind: type) -> Iterator[tuple[Any, str | int, Any]]:
    """`(parent, name, child)` for every child of type `kind` (collected before changes)."""
    found = []
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.List):
            found += [(node, i, c) for i, c in enumerate(node) if isinstance(c, kind)]
        elif isinstance(node, nnx.Module):
            found += [(node, k, c) for k, c in vars(node).items() if isinstance(c, kind)]
    return iter(found)


def _set(parent: Any, name: str | int, child: Any) -> None:
    if isinstance(name, int):
        parent[name] = child
    else:
        setattr(parent, name, child)


def apply_lora(
    model: nnx.Module,
    ranks: Mapping[str, int],
    *,
    alpha: Mapping[str, float] | None = None,
    dropout: float = 0.0,
    dtype: Any = None,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Wraps the Linears named in `ranks` (attribute names) in `LoRALinear`, in place.

    Args:
      model: any NNX module; every `nnx.Linear` held as attribute `name` of a
        module, for `name` in `ranks`, is adapted (e.g. "qkv", "proj").
      ranks: attribute name -> rank.
      alpha: attribute name -> alpha (default alpha = rank: scale 1).
      dropout: dropout rate on the adapter's input (train mode only).
      dtype: compute dtype of the adapter path (default: the input's).
    Returns:
      `model`.
    Raises:
      ValueError: a name in `ranks` (or `alpha`) matches no Linear.
    """
    alpha = dict(alpha or {})
    unknown_alpha = sorted(set(alpha) - set(ranks))
    if unknown_alpha:
        raise ValueError(f"lora_alpha names {unknown_alpha} have no rank in {dict(ranks)}")
    hits = {name: 0 for name in ranks}
    for parent, name, child in _children(model, nnx.Linear):
        if isinstance(name, str) and name in ranks:
            adapter = LoRALinear(
                child,
                rank=int(ranks[name]),
                alpha=alpha.get(name),
                dropout=dropout,
                dtype=dtype,
                rngs=rngs,
            )
            _set(parent, name, adapter)
            hits[name] += 1
    missing = sorted(n for n, count in hits.items() if count == 0)
    if missing:
        raise ValueError(f"no nnx.Linear named {missing} in {type(model).__name__} to adapt")
    return model


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with each adapter folded into its base kernel and removed.

    The result has the structure of the model without LoRA, so it exports (and
    runs) as the plain base model; its outputs equal the adapted model's in eval mode
    up to float rounding. `model` is left unchanged.
    """
    merged = nnx.clone(model)
    for parent, name, adapter in _children(merged, LoRALinear):
        base = adapter.base
        base.kernel[...] = base.kernel[...] + adapter.delta().astype(base.kernel[...].dtype)
        _set(parent, name, base)
    return merged


# ---------------------------------------------------------------- trainable sets


def trainable_filter(trainable: str, *, head: str = HEAD) -> nnx.filterlib.Filter:
    """The NNX filter of the trainable parameters for a `model.trainable` setting."""
    if trainable == "all":
        return nnx.Param
    if trainable == "lora_and_head":
        return nnx.All(nnx.Param, nnx.Any(LoRAParam, nnx.PathContains(head)))
    raise ValueError(f"unknown trainable setting {trainable!r}; known: {', '.join(TRAINABLE)}")


def trainable_paths(
    model: nnx.Module, trainable: str, *, head: str = HEAD
) -> frozenset[tuple[str | int, ...]] | None:
    """Parameter paths (as in `nnx.to_flat_state`) that train; None means all of them.

    Raises:
      ValueError: an unknown setting, or "lora_and_head" on a model without adapters.
    """
    filt = trainable_filter(trainable, head=head)
    if trainable == "all":
        return None
    if not jax.tree.leaves(nnx.state(model, LoRAParam)):
        raise ValueError(
            f"trainable={trainable!r} but {type(model).__name__} has no LoRA adapters "
            "(set model.lora_ranks)"
        )
    return frozenset(path for path, _ in nnx.to_flat_state(nnx.state(model, filt)))


# ---------------------------------------------------------------- adapter files


def adapter_filter(*, include_head: bool = True, head: str = HEAD) -> nnx.filterlib.Filter:
    """Adapters, plus every variable of the head (parameters and batch statistics)."""
    if not include_head:
        return LoRAParam
    return nnx.All(nnx.Not(nnx.RngState), nnx.Any(LoRAParam, nnx.PathContains(head)))


def _key(path: Sequence[str | int]) -> str:
    return _SEP.join(str(p) for p in path)


def save_lora(
    model: nnx.Module, path: str | os.PathLike, *, include_head: bool = True
) -> list[str]:
    """Writes the adapters (and the head) of `model` to `path` (`.npz`); returns the keys.

    Keys are parameter paths joined by "/" (`blocks/0/attn/qkv/lora_a`); values are
    float32 or the stored dtype. The base weights are not written.
    """
    flat = nnx.to_flat_state(nnx.state(model, adapter_filter(include_head=include_head)))
    if not any(isinstance(v, LoRAParam) for _, v in flat):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to save")
    arrays = {_key(p): np.asarray(jax.device_get(v[...])) for p, v in flat}
    with open(path, "wb") as f:  # a file object: numpy adds no ".npz" suffix
        np.savez(f, **arrays)
    return sorted(arrays)


def load_lora(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
    """Loads a `save_lora` file into `model` (built with the same config), in place.

    Raises:
      ValueError: the file and the model disagree on the keys or shapes (named).
    """
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    include_head = any(not k.endswith(("lora_a", "lora_b")) for k in arrays)
    flat = nnx.to_flat_state(nnx.state(model, adapter_filter(include_head=include_head)))
    by_key = {_key(p): (p, v) for p, v in flat}
    missing, extra = sorted(set(by_key) - set(arrays)), sorted(set(arrays) - set(by_key))
    if missing or extra:
        raise ValueError(
            f"{path}: adapter file does not match the model; missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    updates = []
    for key, (p, var) in by_key.items():
        value = arrays[key]
        if value.shape != var[...].shape:
            raise ValueError(f"{path}: {key} has shape {value.shape}, model {var[...].shape}")
        updates.append((p, var.replace(jnp.asarray(value, var[...].dtype))))
    nnx.update(model, nnx.from_flat_state(updates))
    return model
