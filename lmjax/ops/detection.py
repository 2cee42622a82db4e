"""Box geometry for an anchor-free DFL detector (YOLO11 style): anchors, ltrb distances, DFL
decoding and loss, IoU/GIoU/CIoU, the task-aligned assigner (TOOD), the detection loss and
per-class top-1 decoding.

Boxes are `(x0, y0, x1, y1)`. Anchors are cell centres `(i + 0.5) * stride` in pixels. The
head predicts, per anchor, `4 * reg_max` logits laid out side-major (`[l bins, t bins, r bins,
b bins]`), whose DFL expectation is the (l, t, r, b) distance **in stride units**.

`dist2bbox`/`bbox2dist` are unit-agnostic: give anchors and boxes (or distances) in the same
unit. The DFL target convention is stride units, i.e. `bbox2dist(anchors / s, boxes / s,
reg_max)` with `s = strides[:, None]`. All functions are pure jnp and jit-able.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

EPS = 1e-7


def make_anchors(
    feature_hw: Sequence[tuple[int, int]], strides: Sequence[float]
) -> tuple[jax.Array, jax.Array]:
    """Anchor centres of all levels, row-major per level, levels concatenated.

    Args:
      feature_hw: `(h, w)` of each level's feature map.
      strides: the level strides in pixels (e.g. `(8, 16, 32)`).

    Returns:
      `anchors [A, 2]` as (x, y) = `((col + 0.5) * stride, (row + 0.5) * stride)` and
      `strides [A]`, with `A = sum(h * w)`.
    """
    points, per_anchor = [], []
    for (h, w), s in zip(feature_hw, strides, strict=True):
        ys, xs = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing="ij")
        points.append(jnp.stack([xs.ravel(), ys.ravel()], -1) * s)
        per_anchor.append(jnp.full((h * w,), s, jnp.float32))
    return jnp.concatenate(points).astype(jnp.float32), jnp.concatenate(per_anchor)


def dist2bbox(dist: jax.Array, anchors: jax.Array) -> jax.Array:
    """Distances `[..., 4]` (l, t, r, b) from anchors `[..., 2]` (broadcast) to boxes `[..., 4]`.

    Both in one unit: pixels (distances times stride) or stride units (anchors / stride).
    """
    lt, rb = dist[..., :2], dist[..., 2:]
    return jnp.concatenate([anchors - lt, anchors + rb], -1)


def bbox2dist(anchors: jax.Array, boxes: jax.Array, reg_max: int) -> jax.Array:
    """Boxes `[..., 4]` to (l, t, r, b) distances `[..., 4]` from anchors `[..., 2]`.

    Distances are clamped to `[0, reg_max - 1 - 0.01]` so that the two DFL bins around each
    target exist; for the DFL target pass anchors and boxes divided by the anchor stride.
    """
    dist = jnp.concatenate([anchors - boxes[..., :2], boxes[..., 2:] - anchors], -1)
    return jnp.clip(dist, 0.0, reg_max - 1 - 0.01)


def _split_bins(logits: jax.Array, ndim_target: int | None = None) -> jax.Array:
    """`[..., 4 * reg_max]` (side-major) or `[..., 4, reg_max]` to `[..., 4, reg_max]`."""
    if ndim_target is not None and logits.ndim == ndim_target + 1:
        return logits
    return logits.reshape(*logits.shape[:-1], 4, logits.shape[-1] // 4)


def dfl_decode(logits: jax.Array) -> jax.Array:
    """DFL expectation: `[..., 4 * reg_max]` side-major logits to `[..., 4]` distances.

    Each side is `sum_i i * softmax(logits_side)_i`, in bin (stride) units, in `[0, reg_max-1]`.
    """
    p = jax.nn.softmax(_split_bins(logits), axis=-1)
    return p @ jnp.arange(p.shape[-1], dtype=p.dtype)


def dfl_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Distribution focal loss (GFL): two-bin cross-entropy around a continuous target.

    With `tl = floor(t)`, `tr = tl + 1`, the loss per side is
    `-(tr - t) * log p[tl] - (t - tl) * log p[tr]`, minimal when the softmax puts exactly
    those weights on the two bins (so its expectation is `t`); the sides are averaged.

    Args:
      logits: `[..., 4, reg_max]` or `[..., 4 * reg_max]` (side-major).
      target: `[..., 4]` distances in bin units, within `[0, reg_max - 1]` (see `bbox2dist`).

    Returns:
      `[...]` loss per box. Differentiable in `logits`; the target carries no gradient.
    """
    logp = jax.nn.log_softmax(_split_bins(logits, target.ndim), axis=-1)
    reg_max = logp.shape[-1]
    target = jax.lax.stop_gradient(target)
    tl = jnp.clip(jnp.floor(target), 0, reg_max - 2).astype(jnp.int32)
    wl = (tl + 1) - target
    wr = 1.0 - wl
    lp_l = jnp.take_along_axis(logp, tl[..., None], -1)[..., 0]
    lp_r = jnp.take_along_axis(logp, tl[..., None] + 1, -1)[..., 0]
    return -(wl * lp_l + wr * lp_r).mean(-1)


def _iou_parts(a: jax.Array, b: jax.Array, eps: float):
    """IoU plus the pieces GIoU/CIoU need; broadcasting `[..., 4]` pairs."""
    ax0, ay0, ax1, ay1 = jnp.moveaxis(a, -1, 0)
    bx0, by0, bx1, by1 = jnp.moveaxis(b, -1, 0)
    wa, ha = ax1 - ax0, ay1 - ay0 + eps
    wb, hb = bx1 - bx0, by1 - by0 + eps
    iw = jnp.maximum(jnp.minimum(ax1, bx1) - jnp.maximum(ax0, bx0), 0.0)
    ih = jnp.maximum(jnp.minimum(ay1, by1) - jnp.maximum(ay0, by0), 0.0)
    inter = iw * ih
    union = wa * ha + wb * hb - inter + eps
    cw = jnp.maximum(ax1, bx1) - jnp.minimum(ax0, bx0)  # enclosing box
    ch = jnp.maximum(ay1, by1) - jnp.minimum(ay0, by0)
    centre = ((bx0 + bx1 - ax0 - ax1) ** 2 + (by0 + by1 - ay0 - ay1) ** 2) / 4
    return inter / union, union, cw, ch, centre, (wa, ha, wb, hb)


def box_iou(a: jax.Array, b: jax.Array, eps: float = EPS) -> jax.Array:
    """Elementwise IoU of boxes `[..., 4]` (broadcasting) -> `[...]`; `eps` keeps it finite."""
    return _iou_parts(a, b, eps)[0]


def giou(a: jax.Array, b: jax.Array, eps: float = EPS) -> jax.Array:
    """Generalised IoU `IoU - (C - U) / C` (C: enclosing-box area), elementwise -> `[...]`.

    In `(-1, 1]`; 1 for identical boxes, approaching -1 for far-apart small boxes.
    """
    iou, union, cw, ch, _, _ = _iou_parts(a, b, eps)
    c_area = cw * ch + eps
    return iou - (c_area - union) / c_area


def ciou(a: jax.Array, b: jax.Array, eps: float = EPS) -> jax.Array:
    """Complete IoU (Zheng et al. 2020), elementwise over boxes `[..., 4]` -> `[...]`.

    `CIoU = IoU - rho^2 / c^2 - alpha * v`, with `rho` the centre distance, `c` the enclosing
    box diagonal, `v = 4 / pi^2 * (atan(w_b / h_b) - atan(w_a / h_a))^2` and
    `alpha = v / (v - IoU + 1 + eps)`. As in the paper's and the usual implementations,
    `alpha` is treated as a constant (stop-gradient); gradients flow through IoU, rho^2/c^2
    and v. Symmetric in `a`, `b`; in `[-1.5, 1]`.
    """
    iou, _, cw, ch, centre, (wa, ha, wb, hb) = _iou_parts(a, b, eps)
    c2 = cw**2 + ch**2 + eps
    v = (4 / math.pi**2) * (jnp.arctan(wb / hb) - jnp.arctan(wa / ha)) ** 2
    alpha = jax.lax.stop_gradient(v / (v - iou + (1 + eps)))
    return iou - (centre / c2 + alpha * v)


def top1_per_class(
    scores: jax.Array, boxes: jax.Array, thresholds: jax.Array | float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-class top-1 decoding (no NMS; every class occurs at most once per image).

    Args:
      scores: `[B, A, C]` probabilities.
      boxes: `[B, A, 4]` decoded boxes.
      thresholds: `[C]` per-class or scalar score threshold.

    Returns:
      `boxes [B, C, 4]` of each class's best anchor (NaN where not found), `scores [B, C]` the
      best score (returned whether or not it passes, for threshold sweeps) and
      `found [B, C]` = best score >= threshold.
    """
    idx = jnp.argmax(scores, axis=1)  # [B, C]
    best = jnp.max(scores, axis=1)
    found = best >= jnp.asarray(thresholds, best.dtype)
    picked = jnp.take_along_axis(boxes, idx[..., None], axis=1)  # [B, C, 4]
    return jnp.where(found[..., None], picked, jnp.nan), best, found


def floor_sides(boxes: jax.Array, min_side: float) -> jax.Array:
    """Widens box sides shorter than `min_side` to `min_side`, about the box centre."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = jnp.maximum(boxes[..., 2:] - boxes[..., :2], min_side) / 2
    return jnp.concatenate([centre - half, centre + half], -1)


def task_aligned_assign(
    scores: jax.Array,
    pred_boxes: jax.Array,
    anchors: jax.Array,
    gt_labels: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    min_box_side: float | None = None,
    eps: float = 1e-9,
) -> dict[str, jax.Array]:
    """Task-aligned label assignment (TOOD, as used by YOLOv8/YOLO11). No gradient flows.

    1. Candidates of a GT are the anchors whose centres lie strictly inside it. With
       `min_box_side`, GT sides shorter than it are first widened to it about the box centre,
       for candidate selection only (IoUs and targets use the real box). That floor is the
       later Ultralytics fix for boxes smaller than the stride (issues #4848, #19514, PR
       #25912, where it is `stride[1]` = 16 px); it is off (`None`) in the paper's setup.
    2. Alignment metric `t = s^alpha * IoU^beta` with `s` the predicted probability of the GT's
       class and IoU the CIoU of the GT and the predicted box clamped at 0 (as Ultralytics
       v8+); zero outside candidates.
    3. The `topk` candidates by `t` become positives of the GT (candidates always rank above
       non-candidates, so a GT with fewer than `topk` candidates takes them all, even at t=0).
    4. An anchor claimed by several GTs keeps the claimant with the highest IoU.
    5. Target score of a positive: one-hot label times `t * max_IoU_gt / max_t_gt` (max over
       the GT's positives), then max over GTs per anchor.

    Args:
      scores: `[B, A, C]` class probabilities (sigmoid).
      pred_boxes: `[B, A, 4]` predicted boxes, pixels.
      anchors: `[A, 2]` anchor centres, pixels.
      gt_labels: `[B, M]` int class ids (any value where padded).
      gt_boxes: `[B, M, 4]` pixels.
      gt_valid: `[B, M]` bool; False rows (padding) assign nothing.

    Returns:
      dict with `target_labels [B, A]` (-1 on background), `target_boxes [B, A, 4]` (zeros on
      background), `target_scores [B, A, C]`, `fg [B, A]` bool and `gt_index [B, A]` (-1 on
      background).
    """
    scores, pred_boxes, gt_boxes = map(jax.lax.stop_gradient, (scores, pred_boxes, gt_boxes))
    _, num_anchors, num_classes = scores.shape
    valid = gt_valid.astype(bool)[..., None]  # [B, M, 1]
    cand = gt_boxes if min_box_side is None else floor_sides(gt_boxes, min_box_side)
    lo = jnp.minimum(*jnp.moveaxis(anchors - cand[:, :, None, :2], -1, 0))  # [B, M, A]
    hi = jnp.minimum(*jnp.moveaxis(cand[:, :, None, 2:] - anchors, -1, 0))
    in_gt = (jnp.minimum(lo, hi) > eps) & valid  # centre strictly inside

    overlaps = jnp.maximum(ciou(gt_boxes[:, :, None], pred_boxes[:, None]), 0.0)
    overlaps = jnp.where(in_gt, overlaps, 0.0)
    labels = jnp.clip(gt_labels, 0, num_classes - 1).astype(jnp.int32)
    cls_score = jnp.take_along_axis(jnp.swapaxes(scores, 1, 2), labels[..., None], axis=1)
    metric = jnp.where(in_gt, cls_score**alpha * overlaps**beta, 0.0)  # [B, M, A]

    k = min(topk, num_anchors)
    _, top_idx = jax.lax.top_k(jnp.where(in_gt, metric, -1.0), k)  # [B, M, k]
    hit = jnp.zeros(metric.shape, bool)
    hit = jax.vmap(jax.vmap(lambda h, i: h.at[i].set(True)))(hit, top_idx)
    pos = hit & in_gt

    claims = pos.sum(1, keepdims=True)  # [B, 1, A]
    best_gt = jnp.argmax(jnp.where(pos, overlaps, -1.0), axis=1)  # [B, A]
    is_best = jnp.arange(pos.shape[1])[None, :, None] == best_gt[:, None, :]
    pos = jnp.where(claims > 1, is_best & pos, pos)

    fg = pos.any(1)  # [B, A]
    gt_index = jnp.where(fg, jnp.argmax(pos, axis=1), -1)
    safe = jnp.maximum(gt_index, 0)
    target_labels = jnp.where(fg, jnp.take_along_axis(labels, safe, axis=1), -1)
    target_boxes = jnp.take_along_axis(gt_boxes, safe[..., None], axis=1)
    target_boxes = jnp.where(fg[..., None], target_boxes, 0.0)

    metric = jnp.where(pos, metric, 0.0)
    max_metric = metric.max(-1, keepdims=True)  # [B, M, 1]
    max_iou = jnp.where(pos, overlaps, 0.0).max(-1, keepdims=True)
    norm = (metric * max_iou / (max_metric + eps)).max(1)  # [B, A]
    target_scores = jax.nn.one_hot(target_labels, num_classes) * norm[..., None]
    return dict(
        target_labels=target_labels,
        target_boxes=target_boxes,
        target_scores=target_scores,
        fg=fg,
        gt_index=gt_index,
    )


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def detection_loss(
    box_dist_logits: jax.Array,
    cls_logits: jax.Array,
    anchors: jax.Array,
    strides: jax.Array,
    gt_labels: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    reg_max: int = 16,
    gains: tuple[float, float, float] = (7.5, 0.5, 1.5),
    min_box_side: float | None = None,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv8/YOLO11 detection loss: TAL targets, then CIoU box, BCE class and DFL terms.

    With `T = max(sum(target_scores), 1)` over the whole batch and `w` = an anchor's target
    score summed over classes (zero on background):
    `cls = sum BCE(cls_logits, target_scores) / T`, `box = sum w * (1 - CIoU) / T`,
    `dfl = sum w * dfl_loss / T`; `loss = gains . (box, cls, dfl)`. CIoU and the DFL targets
    are computed in stride units, as in Ultralytics.

    Per-image mean: Ultralytics returns this same normalised sum multiplied by the batch size
    (then accumulates to a nominal batch of 64 with weight decay scaled to match). This
    function does not multiply, so `ultralytics_loss = batch_size * loss`: a per-image mean,
    with gradients equal up to that constant factor (immaterial for Adam-type optimisers
    apart from epsilon).

    Args:
      box_dist_logits: `[B, A, 4 * reg_max]` side-major DFL logits.
      cls_logits: `[B, A, C]`.
      anchors: `[A, 2]` and strides `[A]` from `make_anchors` (pixels).
      gt_labels, gt_boxes, gt_valid: `[B, M]`, `[B, M, 4]` pixels, `[B, M]` bool (padding).
      min_box_side, topk, alpha, beta: passed to `task_aligned_assign`.

    Returns:
      `(loss, terms)` with scalar `terms` box, cls, dfl (before gains) and num_fg.
      Under `jax.jit`, `reg_max`, `gains`, `topk` and `min_box_side` should be static.
    """
    s = strides[:, None].astype(jnp.float32)
    grid = anchors / s
    pred = dist2bbox(dfl_decode(box_dist_logits), grid)  # [B, A, 4] stride units
    assign = task_aligned_assign(
        jax.nn.sigmoid(cls_logits),
        pred * s,
        anchors,
        gt_labels,
        gt_boxes,
        gt_valid,
        topk=topk,
        alpha=alpha,
        beta=beta,
        min_box_side=min_box_side,
    )
    target_scores = assign["target_scores"]
    total = jnp.maximum(target_scores.sum(), 1.0)
    cls = _bce_with_logits(cls_logits, target_scores).sum() / total

    fg = assign["fg"]
    weight = jnp.where(fg, target_scores.sum(-1), 0.0)  # [B, A]
    target = assign["target_boxes"] / s
    box = (weight * (1.0 - ciou(pred, target))).sum() / total
    dist = bbox2dist(grid, target, reg_max)
    dfl = (weight * dfl_loss(box_dist_logits, dist)).sum() / total

    loss = gains[0] * box + gains[1] * cls + gains[2] * dfl
    return loss, dict(box=box, cls=cls, dfl=dfl, num_fg=fg.sum())
