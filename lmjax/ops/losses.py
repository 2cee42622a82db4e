"""Training losses: pure jnp, jit/vmap-able, one value per example (Optax style).

- Heatmaps, masks and logits are NHWC `[B, H, W, K]`; coordinates `[B, K, 2]` (x, y).
- Every loss returns `[B]`; the caller reduces over the batch.
- `visible` (bool `[B, K]`, None for all) masks missing landmarks: each example
  averages over its visible landmarks, and one with none visible gives 0, never
  NaN. Masked inputs are replaced before any arithmetic, so the NaN coordinates of
  a missing landmark give neither NaN values nor NaN gradients. Coordinate losses
  also mask non-finite targets.
- Arithmetic runs in at least float32: bf16 outputs are not summed over pixels in bf16.

Losses are looked up by name with `get_loss`; `register_loss` adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import xlogy

LossFn = Callable[..., Array]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str, *, override: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator adding a loss to `LOSSES`; a taken name is an error unless `override`."""

    def decorate(fn: LossFn) -> LossFn:
        if name in LOSSES and LOSSES[name] is not fn and not override:
            raise ValueError(f"loss {name!r} is already registered; pass override=True")
        LOSSES[name] = fn
        return fn

    return decorate


def get_loss(name: str) -> LossFn:
    """The registered loss called `name`; ValueError listing the known names if none."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


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


@register_loss("heatmap_mse")
def heatmap_mse(pred: Array, target: Array, *, visible: Array | None = None) -> Array:
    """Mean squared error over pixels, then over visible landmarks.

    Args:
      pred, target: `[B, H, W, K]` heatmaps; target may be NaN where not visible.
      visible: bool `[B, K]`, or None for all.
    Returns:
      `[B]` loss per example.
    """
    pred, target = _float(pred), _float(target)
    vis = _visible(visible, pred.shape[0], pred.shape[-1])
    err = jnp.mean((pred - _clean_maps(target, vis)) ** 2, axis=(1, 2))
    return _mean_visible(err, vis)


@register_loss("dice")
def dice_loss(
    logits_or_probs: Array,
    target: Array,
    *,
    visible: Array | None = None,
    from_logits: bool = True,
    multiclass: bool = False,
    smooth: float = 1.0,
) -> Array:
    """Soft Dice `1 - (2|P.T| + smooth) / (|P| + |T| + smooth)` per example and channel.

    Args:
      logits_or_probs, target: `[B, H, W, C]`; target in [0, 1], one-hot if `multiclass`.
      visible: bool `[B, C]` channels to average over. With `multiclass`, False at
        channel 0 leaves the background out, as nnU-Net does.
      from_logits: apply sigmoid (softmax over C when `multiclass`) first.
      multiclass: channels are exclusive classes, not independent landmarks.
      smooth: keeps empty channels finite and drives their prediction to 0.
    Returns:
      `[B]` loss per example.
    """
    x, t = _float(logits_or_probs), _float(target)
    vis = _visible(visible, x.shape[0], x.shape[-1])
    if from_logits:
        x = jax.nn.softmax(x, axis=-1) if multiclass else jax.nn.sigmoid(x)
    t = _clean_maps(t, vis)
    inter = jnp.sum(x * t, axis=(1, 2))
    denom = jnp.sum(x, axis=(1, 2)) + jnp.sum(t, axis=(1, 2)) + smooth
    ok = denom > 0  # only false with smooth=0 and both empty: a perfect match
    dice = jnp.where(ok, (2.0 * inter + smooth) / jnp.where(ok, denom, 1.0), 1.0)
    return _mean_visible(1.0 - dice, vis)


@register_loss("bce")
def bce_loss(logits: Array, target: Array, *, visible: Array | None = None) -> Array:
    """Binary cross-entropy with logits, mean over pixels, then over visible channels.

    Args:
      logits, target: `[B, H, W, K]`; target in [0, 1].
      visible: bool `[B, K]`, or None for all.
    Returns:
      `[B]` loss per example.
    """
    x, t = _float(logits), _float(target)
    vis = _visible(visible, x.shape[0], x.shape[-1])
    t = _clean_maps(t, vis)
    per_px = -(t * jax.nn.log_sigmoid(x) + (1.0 - t) * jax.nn.log_sigmoid(-x))
    return _mean_visible(per_px.mean(axis=(1, 2)), vis)


@register_loss("dice_ce")
def dice_ce_loss(
    logits: Array,
    target: Array,
    *,
    visible: Array | None = None,
    multiclass: bool = False,
    smooth: float = 1.0,
) -> Array:
    """Soft Dice plus cross-entropy, weighted 1:1.

    Sigmoid channels: the cross-entropy is `bce_loss`, both terms masked by `visible`.
    `multiclass` (segmentation with background): cross-entropy over the C classes of
    each pixel, which couples the classes, so `visible` masks only the Dice term.

    Args:
      logits, target: `[B, H, W, C]`; target one-hot over C when `multiclass`.
      visible, multiclass, smooth: as in `dice_loss`.
    Returns:
      `[B]` loss per example.
    """
    dice = dice_loss(logits, target, visible=visible, multiclass=multiclass, smooth=smooth)
    if not multiclass:
        return dice + bce_loss(logits, target, visible=visible)
    x, t = _float(logits), _float(target)
    ce = -jnp.sum(t * jax.nn.log_softmax(x, axis=-1), axis=-1).mean(axis=(1, 2))
    return dice + ce


@register_loss("kl_heatmap")
def kl_heatmap_loss(logits: Array, target: Array, *, visible: Array | None = None) -> Array:
    """KL(target || spatial softmax of logits) per channel, in nats.

    The target is clipped at 0 and normalised to sum 1 per channel; a channel whose
    target sums to 0 (landmark outside the crop) is masked like a missing landmark.

    Args:
      logits, target: `[B, H, W, K]`.
      visible: bool `[B, K]`, or None for all.
    Returns:
      `[B]` loss per example.
    """
    x, t = _float(logits), _float(target)
    vis = _visible(visible, x.shape[0], x.shape[-1])
    t = _flat(jnp.maximum(_clean_maps(t, vis), 0.0))
    mass = t.sum(axis=1)
    vis = vis & (mass > 0)
    p = t / jnp.where(mass > 0, mass, 1.0)[:, None, :]
    log_q = jax.nn.log_softmax(_flat(x), axis=1)
    return _mean_visible(jnp.sum(xlogy(p, p) - p * log_q, axis=1), vis)


def _coord_delta(pred: Any, target: Any, visible: Any) -> tuple[Array, Array]:
    """`pred - target` `[B, K, 2]` with masked landmarks zeroed first, and the mask."""
    pred, target = _float(pred), _float(target)
    vis = jnp.isfinite(target).all(-1)
    if visible is not None:
        vis = vis & jnp.asarray(visible, bool)
    m = vis[..., None]
    return jnp.where(m, pred, 0.0) - jnp.where(m, target, 0.0), vis


@register_loss("coord_l1")
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


@register_loss("coord_l2")
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


@register_loss("coord_mse")
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


@register_loss("wing")
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


def _resize_target(t: Array, hw: tuple[int, int], mode: str) -> Array:
    b, h, w, k = t.shape
    oh, ow = hw
    if (oh, ow) == (h, w):
        return t
    if mode == "area" and h % oh == 0 and w % ow == 0:
        # Average pooling: the fraction of each coarse cell a mask covers.
        return t.reshape(b, oh, h // oh, ow, w // ow, k).mean(axis=(2, 4))
    if mode in ("area", "linear"):
        return jax.image.resize(t, (b, oh, ow, k), "linear", antialias=True)
    if mode == "nearest":
        return jax.image.resize(t, (b, oh, ow, k), "nearest")
    raise ValueError(f"unknown downsample mode {mode!r}; use 'area', 'linear' or 'nearest'")


def deep_supervision(
    loss_fn: LossFn,
    preds: Sequence[Array],
    target: Array,
    *,
    weights: Sequence[float] | None = None,
    downsample: str = "area",
    **kwargs: Any,
) -> Array:
    """Weighted sum of `loss_fn` over several decoder scales (nnU-Net convention).

    `preds[0]` is full resolution, later ones coarser; scale i weighs `2**-i` by
    default and the weights are normalised to sum 1, so the total stays on the scale
    of one loss. The target is downsampled to each `(h_i, w_i)`: "area" averages
    whole cells when the size divides (else antialiased linear resize; note that it
    lowers the peak of a small Gaussian), "linear" resizes, "nearest" picks pixels.

    Args:
      loss_fn: `(pred, target, **kwargs) -> [B]`.
      preds: `[B, h_i, w_i, K]`, finest first.
      target: `[B, H, W, K]` at the finest resolution.
      weights: one per output, or None for halving weights.
      downsample: "area", "linear" or "nearest".
      **kwargs: passed to `loss_fn` at every scale (e.g. `visible`).
    Returns:
      `[B]` loss per example.
    """
    if not preds:
        raise ValueError("deep_supervision needs at least one prediction")
    if weights is None:
        weights = [0.5**i for i in range(len(preds))]
    if len(weights) != len(preds):
        raise ValueError(f"{len(weights)} weights for {len(preds)} predictions")
    norm = sum(weights)
    target = _float(target)
    total = 0.0
    for wgt, pred in zip(weights, preds, strict=True):
        t = _resize_target(target, tuple(pred.shape[1:3]), downsample)
        total = total + (wgt / norm) * loss_fn(pred, t, **kwargs)
    return total


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


@register_loss("anatomical_consistency")
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


@register_loss("soft_anatomical_consistency")
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
