"""The loss registry: every loss is a plain function registered under a name and a kind.

The kind says what the training step feeds the loss (`lmjax.task` builds the inputs):

- "map": `fn(pred, target, *, visible=None, **kw) -> [B]`: the model's maps
  `[B, H, W, K]` (`outputs["heatmaps"]`, with deep supervision) against targets
  rendered on the device; `"segmentation/<name>"` applies it to
  `outputs["segmentation"]` against the one-hot region labels.
- "coordinate": `fn(pred, target, *, visible=None, **kw) -> [B]` on `[B, K, 2]`
  coordinates (`outputs["coords"]`, else a differentiable extractor's).
- "region": `fn(heatmap_logits, regions, visibility, *, landmark_regions, **kw) -> [B]`:
  landmarks against the regions (bones) they belong to.
- "detection": `fn(outputs, boxes, valid, **kw) -> [B]`: a detector's outputs
  against one ground-truth box per item, `[B, K, 4]` in model-input pixels
  (`lmjax.ops.detection_losses`).

Shared conventions (Optax style): one value per example, `visible` masks missing
landmarks without NaNs reaching values or gradients, arithmetic in at least float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array

LossFn = Callable[..., Array]
LOSS_KINDS = ("map", "coordinate", "region", "detection")
LOSSES: dict[str, LossFn] = {}
KINDS: dict[str, str] = {}


def register_loss(
    name: str, *, kind: str = "map", override: bool = False
) -> Callable[[LossFn], LossFn]:
    """Decorator adding a loss of `kind` (see the module docstring) under `name`.

    Raises:
      ValueError: an unknown kind, or a taken name without `override`.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(LOSS_KINDS)}")

    def decorate(fn: LossFn) -> LossFn:
        if name in LOSSES and LOSSES[name] is not fn and not override:
            raise ValueError(f"loss {name!r} is already registered; pass override=True")
        LOSSES[name], KINDS[name] = fn, kind
        return fn

    return decorate


def unregister_loss(name: str) -> LossFn:
    """Removes `name` from the registry (tests, notebooks); returns its function."""
    fn = get_loss(name)
    del LOSSES[name], KINDS[name]
    return fn


def get_loss(name: str) -> LossFn:
    """The registered loss called `name`; ValueError listing the known names if none."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def loss_kind(name: str) -> str:
    """The kind `name` was registered with; ValueError as `get_loss` if unknown."""
    get_loss(name)
    return KINDS[name]


def list_losses(kind: str | None = None) -> list[str]:
    """Registered loss names (of one kind), sorted."""
    return sorted(n for n in LOSSES if kind is None or KINDS[n] == kind)


def _float(x: Any) -> Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _visible(visible: Any, b: int, k: int) -> Array:
    if visible is None:
        return jnp.ones((b, k), bool)
    return jnp.broadcast_to(jnp.asarray(visible, bool), (b, k))


def _mean_visible(per_k: Array, vis: Array) -> Array:
    """`[B, K]` -> `[B]` mean over visible entries; 0 where none is visible."""
    total = jnp.where(vis, per_k, 0.0).sum(-1)
    return total / jnp.maximum(vis.sum(-1), 1).astype(total.dtype)


def _clean_maps(x: Array, vis: Array) -> Array:
    # Zero the channels of missing landmarks (possibly NaN) before any arithmetic:
    # a NaN that reaches the backward pass survives multiplication by a zero cotangent.
    return jnp.where(vis[:, None, None, :], x, 0.0)


def _flat(x: Array) -> Array:
    """`[B, H, W, K]` -> `[B, H*W, K]`."""
    return x.reshape(x.shape[0], -1, x.shape[-1])
