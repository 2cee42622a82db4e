"""Coordinate losses on `[B, K, 2]` (x, y); non-finite targets are masked too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax import Array

from lmjax.ops.loss_registry import _float, _mean_visible, register_loss


def _coord_delta(pred: Any, target: Any, visible: Any) -> tuple[Array, Array]:
    """`pred - target` `[B, K, 2]` with masked landmarks zeroed first, and the mask."""
    pred, target = _float(pred), _float(target)
    vis = jnp.isfinite(target).all(-1)
    if visible is not None:
        vis = vis & jnp.asarray(visible, bool)
    m = vis[..., None]
    return jnp.where(m, pred, 0.0) - jnp.where(m, target, 0.0), vis


@register_loss("coord_l1", kind="coordinate")
def coord_l1(pred: Array, target: Array, *, visible: Array | None = None) -> Array:
    """L1 distance `|dx| + |dy|` per landmark, mean over visible landmarks.

    Args:
      pred, target: `[B, K, 2]` (x, y); target NaN where missing.
      visible: bool `[B, K]`, or None for all finite targets.
    Returns:
      `[B]` loss per example, in coordinate units.
    """
    d, vis = _coord_delta(pred, target, visible)
    return _mean_visible(jnp.abs(d).sum(-1), vis)


@register_loss("coord_l2", kind="coordinate")
def coord_l2(pred: Array, target: Array, *, visible: Array | None = None) -> Array:
    """Euclidean distance per landmark, mean over visible landmarks; gradient 0 at 0.

    Args:
      pred, target: `[B, K, 2]` (x, y); target NaN where missing.
      visible: bool `[B, K]`, or None for all finite targets.
    Returns:
      `[B]` loss per example, in coordinate units.
    """
    d, vis = _coord_delta(pred, target, visible)
    d2 = jnp.sum(d**2, axis=-1)
    pos = d2 > 0
    dist = jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)
    return _mean_visible(dist, vis)


@register_loss("coord_mse", kind="coordinate")
def coord_mse(
    pred: Array,
    target: Array,
    *,
    visible: Array | None = None,
    scale: float | Sequence[float] = 1.0,
) -> Array:
    """Mean squared error of the coordinates, `(dx**2 + dy**2) / 2` per landmark.

    The mean over visible landmarks of that is PyTorch's `MSELoss` on the `2K`
    outputs of a regression network. `scale` divides the differences first, so with
    the input size `(W, H)` (or one number for a square input) the error is in
    units of the image size, as when a network regresses normalised coordinates.

    Args:
      pred, target: `[B, K, 2]` (x, y); target NaN where missing.
      visible: bool `[B, K]`, or None for all finite targets.
      scale: a number or `(sx, sy)`; differences are divided by it.
    Returns:
      `[B]` loss per example, in squared `scale` units.
    """
    d, vis = _coord_delta(pred, target, visible)
    d = d / jnp.asarray(scale, d.dtype)
    return _mean_visible(jnp.mean(d**2, axis=-1), vis)


@register_loss("wing", kind="coordinate")
def wing_loss(
    pred: Array,
    target: Array,
    *,
    visible: Array | None = None,
    w: float = 10.0,
    epsilon: float = 2.0,
) -> Array:
    """Wing loss (Feng et al., CVPR 2018) per coordinate, summed over x and y.

    `w ln(1 + |d|/epsilon)` for `|d| < w`, else `|d| - w + w ln(1 + w/epsilon)`.

    Args:
      pred, target: `[B, K, 2]` (x, y); target NaN where missing.
      visible: bool `[B, K]`, or None for all finite targets.
      w, epsilon: width (coordinate units) and curvature of the logarithmic part.
    Returns:
      `[B]` loss per example.
    """
    d, vis = _coord_delta(pred, target, visible)
    a = jnp.abs(d)
    c = w - w * jnp.log1p(w / epsilon)
    per = jnp.where(a < w, w * jnp.log1p(a / epsilon), a - c)
    return _mean_visible(per.sum(-1), vis)
