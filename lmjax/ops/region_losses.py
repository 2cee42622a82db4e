"""Region losses: the segmentation-informed paper's anatomical consistency, landmarks
inside the regions (bones) they belong to."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from lmjax.ops.loss_registry import _flat, _float, register_loss


def _region_membership(regions: Any, landmark_regions: Any, soft: bool, from_logits: bool):
    """`[B, H, W, K]`: whether (or how likely) each pixel lies in landmark k's region.

    Region r of `LandmarkSet.regions` is label `r + 1` of a label map and channel
    `r + 1` of region scores (0 background); region -1 means no constraint.
    """
    lr = jnp.asarray(landmark_regions, jnp.int32)
    regions = jnp.asarray(regions)
    if jnp.issubdtype(regions.dtype, jnp.integer):  # label map [B, H, W]
        member = (regions[..., None] == lr + 1).astype(jnp.float32)
    elif soft:
        probs = jax.nn.softmax(_float(regions), axis=-1) if from_logits else _float(regions)
        member = jnp.take(probs, jnp.maximum(lr + 1, 0), axis=-1)
    else:
        member = (jnp.argmax(regions, axis=-1)[..., None] == lr + 1).astype(jnp.float32)
    return jnp.where(lr < 0, 1.0, member)


def _visibility_mae(v_hat: Array, gt_visibility: Any, absent_weight: float) -> Array:
    v = _float(gt_visibility)
    return jnp.mean(jnp.where(v > 0, 1.0, absent_weight) * jnp.abs(v_hat - v), axis=-1)


@register_loss("anatomical_consistency", kind="region")
def anatomical_consistency_loss(
    heatmap_logits: Array,
    regions: Array,
    gt_visibility: Array,
    *,
    landmark_regions: Any,
    threshold: float = 0.5,
    absent_weight: float = 2.0,
) -> Array:
    """Anatomical-consistency (visibility) loss of the segmentation-informed paper.

    Each landmark sits at the argmax of its heatmap; its visibility `v_hat` is 0
    when the peak sigmoid is not above `threshold`, 0.5 when it lies outside its
    region (argmax of `regions` there), 1 inside. The loss is the mean over all K
    of `weight * |v_hat - v|`: the visibility is the target, so absent landmarks
    are not masked. `v_hat` is piecewise constant, so the gradient is 0, as in the
    paper; `soft_anatomical_consistency_loss` trains through it.

    Args:
      heatmap_logits: `[B, H, W, K]`.
      regions: region scores `[B, H, W, R + 1]` (channel 0 background), or an int
        label map `[B, H, W]` (0 background, r + 1 region r); same H, W.
      gt_visibility: `[B, K]`, 1 (True) where the landmark is in the image, else 0.
      landmark_regions: int `[K]` region of each landmark, as `LandmarkSet.regions`
        (-1: no region, counts as inside).
      threshold: the peak sigmoid must exceed it for a landmark to count as predicted.
      absent_weight: weight where `gt_visibility` is 0 (the paper's 2), else 1.
    Returns:
      `[B]` loss per example.
    """
    flat = _flat(_float(heatmap_logits))
    # argmax of the logits = argmax of the sigmoid, without float32 ties where the
    # sigmoid saturates at 1.
    idx = jnp.argmax(flat, axis=1)
    predicted = jax.nn.sigmoid(jnp.max(flat, axis=1)) > threshold
    member = _flat(_region_membership(regions, landmark_regions, False, True))
    inside = jnp.take_along_axis(member, idx[:, None, :], axis=1)[:, 0]
    v_hat = jax.lax.stop_gradient(jnp.where(predicted, 0.5 + 0.5 * inside, 0.0))
    return _visibility_mae(v_hat, gt_visibility, absent_weight)


@register_loss("soft_anatomical_consistency", kind="region")
def soft_anatomical_consistency_loss(
    heatmap_logits: Array,
    regions: Array,
    gt_visibility: Array,
    *,
    landmark_regions: Any,
    regions_from_logits: bool = True,
    absent_weight: float = 2.0,
) -> Array:
    """Differentiable `anatomical_consistency_loss`.

    `v_hat = presence * (0.5 + 0.5 * inside)`: presence is the peak sigmoid, inside
    the region probability averaged under the heatmap's spatial softmax, so the
    extremes are the paper's 0, 0.5 and 1. Gradients reach the heatmaps and,
    through `regions`, the segmentation branch (stop_gradient it if unwanted).

    Args:
      heatmap_logits, regions, gt_visibility, landmark_regions, absent_weight: as in
        `anatomical_consistency_loss`.
      regions_from_logits: softmax the region scores first; False for probabilities.
    Returns:
      `[B]` loss per example.
    """
    flat = _flat(_float(heatmap_logits))
    presence = jax.nn.sigmoid(jnp.max(flat, axis=1))
    member = _region_membership(regions, landmark_regions, True, regions_from_logits)
    inside = jnp.sum(jax.nn.softmax(flat, axis=1) * _flat(member), axis=1)
    return _visibility_mae(presence * (0.5 + 0.5 * inside), gt_visibility, absent_weight)
