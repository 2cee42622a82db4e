"""Detection losses (kind "detection"): a detector's outputs against one ground-truth box
per item class, the boxes drawn from the batch's item geometry after augmentation.

`detection_term` is what the train step feeds such a loss (`lmjax.task.LOSS_INPUTS`):
boxes `[B, K, 4]` in model-input pixels around what each item's mask draws (a
landmark's disc of `radius_mm`, an outline's stroke `width_mm` wide, a patch's
polygon; `lmjax.ops.item_masks`), clipped to the image, and `valid [B, K]`. The
batch carries `item_size_px` `[B, 2]` (disc radius and stroke width in model-input
pixels, from the pixel spacing) and, for sets with outlines or patches,
`item_vertices` / `vertex_valid`; landmark-only sets use their landmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from lmjax.ops import detection, point_detection
from lmjax.ops.item_masks import item_boxes_by_kind, kind_ids
from lmjax.ops.loss_registry import register_loss


def batch_item_boxes(
    batch: Mapping[str, jax.Array], kinds: Sequence[str] | None
) -> tuple[jax.Array, jax.Array]:
    """`(boxes [B, K, 4], valid [B, K])` of every item of a batch, model-input pixels."""
    size = batch["item_size_px"].astype(jnp.float32)
    if "item_vertices" in batch:
        v, vv = batch["item_vertices"], batch["vertex_valid"]
    else:
        v, vv = batch["landmarks"][:, :, None, :], batch["visible"][..., None]
    k = v.shape[1]
    ids = kind_ids(kinds) if kinds else jnp.zeros((k,), jnp.int32)
    boxes = item_boxes_by_kind(
        v,
        vv,
        ids,
        radius=size[:, :1],
        width=size[:, 1:],
        visible=batch["visible"],
        shape=tuple(batch["image"].shape[1:3]),
    )
    return boxes, jnp.all(jnp.isfinite(boxes), axis=-1)


def detection_term(task, name, fn, kw, outputs, batch) -> jax.Array:
    """The inputs of a "detection" loss: `fn(outputs, boxes, valid, **kw) -> [B]`."""
    del name
    boxes, valid = batch_item_boxes(batch, task.item_kinds)
    return fn(outputs, boxes, valid, **kw)


@register_loss("yolo", kind="detection")
def yolo_loss(
    outputs: Mapping[str, jax.Array],
    boxes: jax.Array,
    valid: jax.Array,
    *,
    gains: Sequence[float] = (7.5, 0.5, 1.5),
    min_box_side: float | None = None,
    floor_targets: bool = False,
    topk: int = 10,
) -> jax.Array:
    """YOLO11's loss per image `[B]`: BCE + CIoU + DFL with the task-aligned assigner
    (`lmjax.ops.detection.detection_loss`), the gains box 7.5, cls 0.5, dfl 1.5.

    Item k is class k. Each image is normalised by its own target-score sum (a
    per-image mean; Ultralytics normalises by the batch's and scales by the batch
    size, which weighs images with more positives more). `min_box_side` floors GT
    sides for candidate selection (off in the paper's configuration).

    `floor_targets` widens the GT boxes themselves to `min_box_side` (the box the
    detector learns, not only its candidates): a box far below the stride has a
    near-zero IoU with any prediction, and TAL's IoU-scaled class targets and box
    weights then stay near zero, so its class never learns (measured on the pelvis
    phantom: 3-px landmark boxes, the candidate floor alone, 0 of 136 found after
    3000 steps). The centre, the landmark, is unchanged."""
    b, k = valid.shape
    labels = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
    if floor_targets and min_box_side:
        boxes = detection.floor_sides(boxes, min_box_side)
    safe = jnp.where(valid[..., None], boxes, 0.0)

    def one(dist, cls, lab, box, ok):
        loss, _ = detection.detection_loss(
            dist[None], cls[None], outputs["anchors"], outputs["strides"], lab[None],
            box[None], ok[None], gains=tuple(gains), min_box_side=min_box_side, topk=topk,
        )  # fmt: skip
        return loss

    return jax.vmap(one)(outputs["box_dist"], outputs["cls"], labels, safe, valid)


@register_loss("centernet", kind="detection")
def centernet_loss(
    outputs: Mapping[str, jax.Array],
    boxes: jax.Array,
    valid: jax.Array,
    *,
    size_weight: float = 0.1,
    min_sigma: float = 1.0,
) -> jax.Array:
    """The heatmap detector's loss per image `[B]`: penalty-reduced focal loss on
    per-class centre heatmaps plus `size_weight` x L1 on log box sizes
    (`lmjax.ops.point_detection.detector_loss`)."""
    safe = jnp.where(valid[..., None], boxes, jnp.nan)
    loss, _ = point_detection.detector_loss(
        outputs, safe, valid, size_weight=size_weight, scale=outputs["map_scale"],
        min_sigma=min_sigma,
    )  # fmt: skip
    return loss
