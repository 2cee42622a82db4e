"""One registry of model builders, looked up by name.

A builder is a function `fn(*, num_outputs, input_size, in_channels, rngs, **options)`
returning an `nnx.Module` that keeps the model call contract:

    model(images: [B, H, W, C]) -> dict
        "heatmaps":          [B, h, w, K] float32 maps or logits, at full resolution
                             (h, w = H, W) or coarser (vit_pose: H/4, W/4); the train
                             step renders targets at the maps' resolution
        "deep_supervision":  list of [B, h_i, w_i, K], finest first (only when enabled)

Other families add keys (e.g. "coords" [B, K, 2], "segmentation"); it stays a dict.
`input_size` is an int (square) or `(H, W)`; a family may use it to size itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

ModelBuilder = Callable[..., nnx.Module]
MODELS: dict[str, ModelBuilder] = {}

# Every builder takes these by keyword, so callers can build any model the same way.
_REQUIRED = ("num_outputs", "input_size", "in_channels", "rngs")


def register_model(name: str, *, override: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder under `name`; a taken name is an error unless `override`.

    The builder's signature is checked here, at import, rather than at first use: it
    must accept `num_outputs`, `input_size`, `in_channels` and `rngs` by keyword.
    """

    def decorate(fn: ModelBuilder) -> ModelBuilder:
        if name in MODELS and MODELS[name] is not fn and not override:
            raise ValueError(f"model {name!r} is already registered; pass override=True")
        params = inspect.signature(fn).parameters
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [a for a in _REQUIRED if a not in params and not has_var_kw]
        if missing:
            raise TypeError(f"builder for model {name!r} must accept {', '.join(missing)}")
        MODELS[name] = fn
        return fn

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def builder_options(name: str) -> tuple[str, ...] | None:
    """Keyword options of model `name` beyond the required ones; None if it takes any.

    Raises:
      ValueError: `name` is not registered.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    params = inspect.signature(MODELS[name]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return tuple(p for p in params if p not in _REQUIRED)


def build_model(name: str, **kwargs: Any) -> nnx.Module:
    """Builds the model registered as `name` with keyword arguments `kwargs`.

    Raises:
      ValueError: `name` is not registered (the message lists the known names).
      TypeError: an argument the builder does not accept, or a required one missing;
        the message names the model and the argument.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    fn = MODELS[name]
    sig = inspect.signature(fn)
    accepted = [p for p, v in sig.parameters.items() if v.kind is not v.VAR_KEYWORD]
    if len(accepted) == len(sig.parameters):  # no **kwargs: check names ourselves
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"model {name!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
                f"it accepts: {', '.join(accepted)}"
            )
    try:
        sig.bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"model {name!r}: {err}") from None
    return fn(**kwargs)


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (`nnx.Param` entries) in `model`.

    Works on abstract models from `nnx.eval_shape` too, since only shapes are read.
    """
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(math.prod(x.shape) for x in leaves)
