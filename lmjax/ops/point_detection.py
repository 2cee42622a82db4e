"""Targets, losses and decoding of a per-class heatmap detector ("objects as points").

Follows CenterNet (Zhou, Wang and Kraehenbuehl 2019, "Objects as Points"): one heatmap
channel per class whose peak is the box centre, trained with the penalty-reduced pixel
focal loss (alpha 2, beta 4), and a (w, h) regression read at the centre, trained with
L1. Every class occurs at most once per image (the cascade's items), so decoding takes
each channel's maximum (no NMS), as `lmjax.ops.detection.top1_per_class` does for YOLO.

Departures from the paper, all for one object per class and full-resolution maps:
- The size is regressed as `log(w, h)` in input pixels (scale-free L1), sampled
  bilinearly at the exact centre rather than at the rounded peak pixel.
- There is no offset head: the Gaussian target is centred at the sub-pixel centre and
  scaled so that its sample at the nearest pixel is exactly 1 (the focal loss's
  positive). Its log is still a parabola with its vertex at the true centre, so
  `decode` refines the peak by a 3-point parabola fit of `log sigmoid(logits)` per
  axis, exact on such targets (a 3 x 3 centroid is biased toward the peak pixel by up
  to ~0.3 px for sigma >= 1).
- sigma is `max(min_sigma, min(w, h) * scale / 6)`, not the IoU-derived radius.

Conventions. Boxes are `(x0, y0, x1, y1)` in input pixels with pixel centres on integer
coordinates (as `lmjax.ops.item_masks.item_boxes_by_kind`). Maps are `[B, h, w, C]`,
`scale` map pixels per input pixel, and a point maps by the half-pixel convention
`map = (x + 0.5) * scale - 0.5`. All functions are pure jnp and jit-able (`shape` and
`scale` static where they size arrays).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

# Smallest box side in input pixels when taking logs (a zero-extent box stays finite).
MIN_SIZE = 1e-3


def _to_map(xy: jax.Array, scale: float) -> jax.Array:
    return (xy + 0.5) * scale - 0.5


def _from_map(xy: jax.Array, scale: float) -> jax.Array:
    return (xy + 0.5) / scale - 0.5


def _split_boxes(boxes: ArrayLike, valid: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(centre [B, C, 2], size [B, C, 2], ok [B, C])` in input pixels; invalid rows hold
    centre 0 and size 1, set before any arithmetic so no NaN reaches values or gradients."""
    boxes = jnp.asarray(boxes, jnp.float32)
    ok = jnp.asarray(valid, bool) & jnp.all(jnp.isfinite(boxes), axis=-1)
    safe = jnp.where(ok[..., None], boxes, jnp.asarray([0.0, 0.0, 1.0, 1.0]))
    centre = (safe[..., :2] + safe[..., 2:]) / 2
    size = jnp.maximum(safe[..., 2:] - safe[..., :2], MIN_SIZE)
    return centre, size, ok


def center_targets(
    boxes: ArrayLike,
    valid: ArrayLike,
    shape: tuple[int, int],
    scale: float,
    min_sigma: float = 1.0,
) -> jax.Array:
    """Gaussian centre heatmaps, one channel per class.

    With `c` the box centre in map pixels, `p0` the map pixel nearest to it (clipped into
    the map) and `sigma = max(min_sigma, min(w, h) * scale / 6)`:
    `t(p) = exp(-(|p - c|^2 - |p0 - c|^2) / (2 sigma^2))`, a Gaussian centred at `c`
    scaled so `t(p0) = 1` exactly, every other pixel `<= 1` (two pixels tie at 1 only
    when `c` lies exactly half-way between them).

    Args:
      boxes: `[B, C, 4]` input pixels.
      valid: `[B, C]` bool; False or a non-finite box gives an all-zero channel.
      shape: `(h, w)` of the maps.
      scale: map pixels per input pixel.
      min_sigma: smallest sigma, map pixels.

    Returns:
      `[B, h, w, C]` float32 in [0, 1].
    """
    h, w = shape
    centre, size, ok = _split_boxes(boxes, valid)
    c = _to_map(centre, scale)  # [B, C, 2]
    sigma = jnp.maximum(min_sigma, jnp.min(size, axis=-1) * scale / 6)
    inv = 0.5 / jnp.square(sigma)[..., None, :]  # [B, 1, C]

    def axis(c1: jax.Array, n: int) -> jax.Array:  # [B, C] -> [B, n, C]
        nearest = jnp.clip(jnp.floor(c1 + 0.5), 0, n - 1)
        d = jnp.arange(n, dtype=jnp.float32)[:, None] - c1[..., None, :]
        d0 = (nearest - c1)[..., None, :]
        return jnp.exp(-(jnp.square(d) - jnp.square(d0)) * inv)

    gx, gy = axis(c[..., 0], w), axis(c[..., 1], h)
    gy = gy * ok[..., None, :]
    return gy[..., :, None, :] * gx[..., None, :, :]


def focal_loss(
    logits: ArrayLike, target: ArrayLike, *, alpha: float = 2.0, beta: float = 4.0
) -> jax.Array:
    """Penalty-reduced pixel focal loss (CenterNet eq. 1), per example.

    With `p = sigmoid(logits)` and `N` the number of pixels where `target == 1` (at
    least 1): `(sum_pos (1 - p)^alpha (-log p) + sum_neg (1 - t)^beta p^alpha
    (-log(1 - p))) / N`, summed over pixels and classes. The logs are `log_sigmoid`,
    so no clamping of `p` is needed (CenterNet clamps to [1e-4, 1 - 1e-4]).

    Args:
      logits: `[B, h, w, C]`.
      target: `[B, h, w, C]` in [0, 1], peaks exactly 1 (`center_targets`).

    Returns:
      `[B]` float32.
    """
    x = jnp.asarray(logits, jnp.float32)
    t = jnp.asarray(target, jnp.float32)
    pos = t >= 1.0
    p = jax.nn.sigmoid(x)
    pos_term = jnp.power(1.0 - p, alpha) * -jax.nn.log_sigmoid(x)
    neg_term = jnp.power(1.0 - t, beta) * jnp.power(p, alpha) * -jax.nn.log_sigmoid(-x)
    per_pixel = jnp.where(pos, pos_term, neg_term)
    num_pos = jnp.sum(pos, axis=(1, 2, 3)).astype(jnp.float32)
    return jnp.sum(per_pixel, axis=(1, 2, 3)) / jnp.maximum(num_pos, 1.0)


def _bilinear(maps: jax.Array, xy: jax.Array) -> jax.Array:
    """Samples `maps [B, h, w, D]` at `xy [B, C, 2]` (map pixels) -> `[B, C, D]`.

    Bilinear, with the border clamped; differentiable in `maps` (and in `xy`).
    """
    b, h, w, d = maps.shape
    x = jnp.clip(xy[..., 0], 0.0, w - 1.0)
    y = jnp.clip(xy[..., 1], 0.0, h - 1.0)
    x0 = jnp.clip(jnp.floor(x), 0, max(w - 2, 0)).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, max(h - 2, 0)).astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    flat = maps.reshape(b, h * w, d)

    def at(yi: jax.Array, xi: jax.Array) -> jax.Array:
        return jnp.take_along_axis(flat, (yi * w + xi)[..., None], axis=1)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def size_loss(
    size_logits: ArrayLike, boxes: ArrayLike, valid: ArrayLike, scale: float
) -> jax.Array:
    """L1 on log box size at the box centre, per example.

    The predicted `log(w, h)` is sampled bilinearly from `size_logits` at each valid box's
    centre (map pixels); the target is `log(max(w, h, 1e-3))` of the box in input pixels.
    As CenterNet's `RegL1Loss`, the mean runs over valid objects and both sides; an
    example without valid objects gives 0.

    Args:
      size_logits: `[B, h, w, 2]` predicted `log(w, h)`, input pixels.
      boxes: `[B, C, 4]` input pixels; valid: `[B, C]` bool.
      scale: map pixels per input pixel.

    Returns:
      `[B]` float32.
    """
    centre, size, ok = _split_boxes(boxes, valid)
    pred = _bilinear(jnp.asarray(size_logits, jnp.float32), _to_map(centre, scale))
    err = jnp.sum(jnp.abs(pred - jnp.log(size)), axis=-1)  # [B, C]
    err = jnp.where(ok, err, 0.0)
    return jnp.sum(err, axis=-1) / jnp.maximum(2.0 * jnp.sum(ok, axis=-1), 1.0)


def _peaks(heat: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per channel of `heat [B, h, w, C]` the hard-argmax pixel `(ix, iy)` ([B, C] int32
    each) and the sub-pixel offsets `[B, C, 2]` from a 3-point parabola fit of
    `log sigmoid(heat)` along the row and the column through it.

    The vertex of the parabola through `f(-1), f(0), f(1)` lies at
    `(f(-1) - f(1)) / (2 (f(-1) + f(1) - 2 f(0)))`; exact for a Gaussian-shaped
    sigmoid map. The offset is 0 where a neighbour is off the map or the fit is not
    concave, and clipped to [-0.5, 0.5] (the peak pixel is the nearest one).
    """
    b, h, w, c = heat.shape
    flat = heat.reshape(b, h * w, c)
    index = jnp.argmax(flat, axis=1)  # [B, C]
    iy, ix = index // w, index % w
    log_p = jax.nn.log_sigmoid(flat)

    def at(yi: jax.Array, xi: jax.Array) -> jax.Array:
        i = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
        return jnp.take_along_axis(log_p, i[:, None, :], axis=1)[:, 0]

    def vertex(lo: jax.Array, mid: jax.Array, hi: jax.Array, inside: jax.Array) -> jax.Array:
        den = lo + hi - 2.0 * mid
        ok = inside & (den < -1e-12)
        off = (lo - hi) / (2.0 * jnp.where(ok, den, -1.0))
        return jnp.where(ok, jnp.clip(off, -0.5, 0.5), 0.0)

    centre = at(iy, ix)
    dx = vertex(at(iy, ix - 1), centre, at(iy, ix + 1), (ix > 0) & (ix < w - 1))
    dy = vertex(at(iy - 1, ix), centre, at(iy + 1, ix), (iy > 0) & (iy < h - 1))
    return ix, iy, jnp.stack([dx, dy], axis=-1)


def decode(
    heat_logits: ArrayLike,
    size_logits: ArrayLike,
    scale: float,
    *,
    threshold: ArrayLike = 0.3,
    refine: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-class top-1 boxes from the detector's maps (no NMS).

    Per class: the peak pixel of the heat map (hard argmax), refined to sub-pixel by
    the parabola fit described in `_peaks` (`refine`), mapped back to input pixels;
    the size `exp(size_logits)` sampled bilinearly at the refined centre; the score
    `sigmoid` of the peak logit.

    Args:
      heat_logits: `[B, h, w, C]`; size_logits: `[B, h, w, 2]` log (w, h), input px.
      scale: map pixels per input pixel.
      threshold: scalar or `[C]` score threshold.
      refine: False keeps the peak on its pixel centre.

    Returns:
      As `lmjax.ops.detection.top1_per_class`: `boxes [B, C, 4]` input pixels (NaN
      where not found), `scores [B, C]` (whether or not they pass, for threshold
      sweeps) and `found [B, C]` = score >= threshold.
    """
    heat = jnp.asarray(heat_logits, jnp.float32)
    ix, iy, offset = _peaks(heat)
    peak = jnp.stack([ix, iy], axis=-1).astype(jnp.float32)
    if refine:
        peak = peak + offset
    b, h, w, c = heat.shape
    flat_index = iy * w + ix
    scores = jax.nn.sigmoid(jnp.take_along_axis(heat.reshape(b, h * w, c), flat_index[:, None], 1))
    scores = scores[:, 0]
    size = jnp.exp(_bilinear(jnp.asarray(size_logits, jnp.float32), peak))  # [B, C, 2]
    centre = _from_map(peak, scale)
    boxes = jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)
    found = scores >= jnp.asarray(threshold, scores.dtype)
    return jnp.where(found[..., None], boxes, jnp.nan), scores, found


def detector_loss(
    outputs: dict[str, jax.Array],
    boxes: ArrayLike,
    valid: ArrayLike,
    *,
    size_weight: float = 0.1,
    scale: float = 1.0,
    min_sigma: float = 1.0,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`focal_loss + size_weight * size_loss` per example (CenterNet's `wh_weight` 0.1).

    Args:
      outputs: the detector's dict with `"heat" [B, h, w, C]` and `"size" [B, h, w, 2]`.
      boxes: `[B, C, 4]` input pixels; valid: `[B, C]` bool.
      scale: map pixels per input pixel (`HeatmapDetector.scale`; 1 for a
        full-resolution backbone such as the U-Net).
      min_sigma, alpha, beta: as `center_targets` and `focal_loss`.

    Returns:
      `(loss [B], terms)` with `terms` holding `heat [B]`, `size [B]` and
      `num_objects [B]`.
    """
    heat = outputs["heat"]
    target = center_targets(boxes, valid, heat.shape[1:3], scale, min_sigma)
    heat_loss = focal_loss(heat, target, alpha=alpha, beta=beta)
    wh_loss = size_loss(outputs["size"], boxes, valid, scale)
    ok = jnp.asarray(valid, bool) & jnp.all(jnp.isfinite(jnp.asarray(boxes)), axis=-1)
    terms = dict(heat=heat_loss, size=wh_loss, num_objects=jnp.sum(ok, axis=-1))
    return heat_loss + size_weight * wh_loss, terms
