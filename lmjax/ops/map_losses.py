"""Map losses: heatmaps, masks and logits `[B, H, W, K]` against rendered targets,
and deep supervision over several decoder scales."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import xlogy

from lmjax.ops.loss_registry import (
    LossFn,
    _clean_maps,
    _flat,
    _float,
    _mean_visible,
    _visible,
    register_loss,
)


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
    squared: bool = False,
) -> Array:
    """Soft Dice `1 - (2|P.T| + smooth) / (|P| + |T| + smooth)` per example and channel.

    Args:
      logits_or_probs, target: `[B, H, W, C]`; target in [0, 1], one-hot if `multiclass`.
      visible: bool `[B, C]` channels to average over. With `multiclass`, False at
        channel 0 leaves the background out, as nnU-Net does.
      from_logits: apply sigmoid (softmax over C when `multiclass`) first.
      multiclass: channels are exclusive classes, not independent landmarks.
      smooth: keeps empty channels finite and drives their prediction to 0.
      squared: sums of squares in the denominator (`|P|^2 + |T|^2`, MONAI's
        `squared_pred`, which MedSAM trains with).
    Returns:
      `[B]` loss per example.
    """
    x, t = _float(logits_or_probs), _float(target)
    vis = _visible(visible, x.shape[0], x.shape[-1])
    if from_logits:
        x = jax.nn.softmax(x, axis=-1) if multiclass else jax.nn.sigmoid(x)
    t = _clean_maps(t, vis)
    inter = jnp.sum(x * t, axis=(1, 2))
    p = (lambda a: a * a) if squared else (lambda a: a)
    denom = jnp.sum(p(x), axis=(1, 2)) + jnp.sum(p(t), axis=(1, 2)) + smooth
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


@register_loss("heatmap_ncc")
def heatmap_ncc_loss(
    pred: Array, target: Array, *, visible: Array | None = None, eps: float = 1e-6
) -> Array:
    """`1 - NCC(pred, target)` per channel: the fluoroscopy paper's NCC baseline.

    NCC is the Pearson correlation over the pixels of one channel, so the loss is 0
    for any positive affine copy of the target (scale and offset are free), 1 for
    an uncorrelated map and 2 for a negated one. `eps` keeps a constant channel
    (no variance, e.g. a landmark outside the crop's target) finite.

    Args:
      pred, target: `[B, H, W, K]` heatmaps.
      visible: bool `[B, K]`, or None for all.
    Returns:
      `[B]` loss per example.
    """
    x, t = _float(pred), _float(target)
    vis = _visible(visible, x.shape[0], x.shape[-1])
    x, t = _flat(_clean_maps(x, vis)), _flat(_clean_maps(t, vis))
    x = x - x.mean(axis=1, keepdims=True)
    t = t - t.mean(axis=1, keepdims=True)
    norm = jnp.sqrt((x * x).sum(axis=1) * (t * t).sum(axis=1) + eps)
    return _mean_visible(1.0 - (x * t).sum(axis=1) / norm, vis)


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
