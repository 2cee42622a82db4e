"""Scoring a SAM decoder with box prompts: landmarks in mm, outlines and patches by IoU
at the original resolution.

Prompts are ground-truth boxes ("oracle": the box around what each item's mask
draws), optionally jittered as in training with a fixed key, so the numbers
measure the segmenter alone; a detector's boxes replace them in the cascade.
Every visible item is prompted; an item that is absent from an image has no
prompt, a NaN landmark and `visible` False.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmjax import metrics
from lmjax.data import affine
from lmjax.detection_metrics import sdr_with_misses
from lmjax.models.sam import postprocess_masks
from lmjax.ops.item_masks import KIND_IDS, item_boxes_by_kind, item_masks, kind_ids
from lmjax.train.sam_steps import jitter_boxes

LANDMARK_READINGS = ("soft", "binary", "box_centre")
PROMPTS = ("jittered", "oracle")  # the first is the headline
CASCADE_PROMPTS = ("detector", "jittered", "oracle")


def prompt_boxes(pset, i: int, kinds, *, prompts: str, fraction: float, seed: int):
    """`(boxes [K, 4], valid [K])` of image `i` in the model frame: the detector's
    ("detector", valid where it found the class), else the true boxes, exact
    ("oracle") or jittered with a key fixed by `seed` and `i` ("jittered")."""
    if prompts == "detector":
        if pset.detector_boxes is None:
            raise ValueError("prompts 'detector' need a PromptSet with detector_boxes")
        boxes = np.asarray(pset.detector_boxes[i], np.float32)
        return boxes, np.isfinite(boxes).all(axis=-1)
    if prompts not in ("oracle", "jittered"):
        raise ValueError(f"unknown prompts {prompts!r}: detector, jittered or oracle")
    b = pset.batch([i])
    boxes = item_boxes_by_kind(
        b["vertices"], b["vertex_valid"], kinds, radius=b["radius"][:, None],
        width=b["width"][:, None], visible=b["visible"],
    )  # fmt: skip
    if prompts == "jittered":
        key = jax.random.fold_in(jax.random.key(seed), i)
        boxes = jitter_boxes(
            key, boxes, jnp.broadcast_to(kinds, boxes.shape[:2]),
            jitter=jnp.asarray(b["jitter"]), shift=jnp.asarray(b["shift"]), fraction=fraction,
        )  # fmt: skip
    boxes = np.asarray(boxes[0])
    return boxes, np.isfinite(boxes).all(axis=-1)


@partial(jax.jit, static_argnames=("input_hw", "original_hw", "side"))
def _mask_iou(low, vertices, vertex_valid, kind, radius, width, *, input_hw, original_hw, side):
    """IoU `[P]` of thresholded logits `[P, h, w]` upsampled to the original image with
    the items' masks drawn there (landmark discs included)."""
    logits = postprocess_masks(
        low[..., None], image_size=side, input_size=input_hw, original_size=original_hw
    )[..., 0]
    pred = logits > 0  # [P, H0, W0]
    target = item_masks(
        vertices[None], vertex_valid[None], kind, shape=original_hw, radius=radius, width=width
    )[0]
    target = jnp.moveaxis(target, -1, 0) > 0.5
    inter = jnp.sum(pred & target, axis=(1, 2))
    union = jnp.sum(pred | target, axis=(1, 2))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), jnp.nan)


def segment(predict, state, embedding, boxes, valid, *, chunk: int) -> dict[str, np.ndarray]:
    """The predict step's outputs for one image's prompts `boxes [K, 4]` (model frame,
    `valid [K]`), `chunk` at a time, padded so that every call has one shape."""
    k = len(boxes)
    pad = -(-k // chunk) * chunk
    boxes = np.concatenate([boxes, np.full((pad - k, 4), np.nan, np.float32)])
    valid = np.concatenate([valid, np.zeros(pad - k, bool)])
    outs = [
        jax.device_get(
            predict(
                state,
                embedding[None],
                boxes[None, s : s + chunk],
                valid[None, s : s + chunk],
            )  # fmt: skip
        )
        for s in range(0, pad, chunk)
    ]
    return {key: np.concatenate([o[key][0] for o in outs])[:k] for key in outs[0]}


def predict_images(predict, state, pset, *, chunk: int, prompts: str, fraction: float, seed=0):
    """Per image: landmarks (each reading) in original pixels `[N, K, 2]`, mask IoU
    `[N, K]` at the original resolution for every item (landmark discs too; NaN where
    absent), the decoder's predicted IoU, and whether the soft reading found a mask."""
    n, k = pset.visible.shape
    kinds = kind_ids(pset.kinds)
    coords = {r: np.full((n, k, 2), np.nan, np.float32) for r in LANDMARK_READINGS}
    iou = np.full((n, k), np.nan, np.float32)
    score = np.full((n, k), np.nan, np.float32)
    found = np.zeros((n, k), bool)
    for i in range(n):
        boxes, valid = prompt_boxes(pset, i, kinds, prompts=prompts, fraction=fraction, seed=seed)
        out = segment(predict, state, pset.embeddings[i], boxes, valid, chunk=chunk)
        ok = valid
        for r in LANDMARK_READINGS:
            xy = affine.apply(out[r].astype(np.float64), pset.to_original[i])
            coords[r][i] = np.where(ok[:, None], xy, np.nan)
        found[i] = ok & out["found_soft"]
        score[i] = np.where(ok, out["iou"], np.nan)
        # Every item at once (a fixed shape: one compile per image size).
        got = _mask_iou(
            jnp.asarray(out["lowres"]),
            jnp.asarray(pset.vertices_original[i]),
            jnp.isfinite(jnp.asarray(pset.vertices_original[i])).all(-1),
            kinds,
            float(pset.radius_original[i]),
            float(pset.width_original[i]),
            input_hw=tuple(int(v) for v in pset.input_hw[i]),
            original_hw=tuple(int(v) for v in pset.original_hw[i]),
            side=pset.side,
        )
        # Identified items only: a miss is counted by the detection rate, and an
        # absent item found anyway has no mask to overlap.
        iou[i] = np.where(ok & pset.visible[i], np.asarray(got), np.nan)
    return {"coords": coords, "iou": iou, "predicted_iou": score, "found": found}


def _landmark_summary(coords, dataset, columns, thresholds) -> dict[str, Any]:
    gt = dataset.landmarks()[:, columns]
    errors, unit = metrics.radial_errors(coords[:, columns], gt, dataset.spacings())
    s = metrics.summarize(errors, unit=unit, thresholds=thresholds)
    names = [dataset.landmark_set.names[c] for c in columns]
    return {
        "unit": unit,
        **{k: s[k] for k in ("n", "missed", "mre", "sd", "median", "iqr", "p95")},
        "sdr": {f"{t:g}": s[metrics.sdr_key(t)] for t in thresholds},
        "sdr_with_misses": sdr_with_misses(errors, thresholds),
        "per_landmark": metrics.per_landmark(errors, names, unit=unit, thresholds=thresholds),
    }


def _region_summary(iou, dataset, columns) -> dict[str, Any]:
    v = iou[:, columns]
    finite = v[np.isfinite(v)]
    names = [dataset.landmark_set.names[c] for c in columns]
    per_item = {
        name: float(np.nanmean(v[:, j])) if np.isfinite(v[:, j]).any() else None
        for j, name in enumerate(names)
    }
    if not finite.size:
        return {"n": 0, "iou_mean": None, "iou_median": None, "iou_sd": None, "per_item": per_item}
    return {
        "n": int(finite.size),
        "iou_mean": float(finite.mean()),
        "iou_median": float(np.median(finite)),
        "iou_sd": float(finite.std()),
        "per_item": per_item,
    }


def score(pred, dataset, *, thresholds=metrics.DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """The report of one prompt set: landmark errors per reading, region IoU."""
    kinds = dataset.landmark_set.item_kinds
    lm = [j for j, kd in enumerate(kinds) if kd == "landmark"]
    rg = [j for j, kd in enumerate(kinds) if kd != "landmark"]
    out: dict[str, Any] = {}
    if lm:
        out["landmarks"] = {
            r: _landmark_summary(pred["coords"][r], dataset, lm, thresholds)
            for r in LANDMARK_READINGS
        }
        out["soft_fallbacks"] = int(
            (np.stack([r.visible for r in dataset.records])[:, lm] & ~pred["found"][:, lm]).sum()
        )
    if lm:
        out["landmark_masks"] = _region_summary(pred["iou"], dataset, lm)
    out["mask_iou"] = _region_summary(pred["iou"], dataset, list(range(len(kinds))))["iou_mean"]
    if rg:
        out["regions"] = _region_summary(pred["iou"], dataset, rg)
        for kd, plural in (("outline", "outlines"), ("patch", "patches")):
            cols = [j for j in rg if kinds[j] == kd]
            if cols:
                out["regions"][plural] = _region_summary(pred["iou"], dataset, cols)
    return out


__all__ = ["KIND_IDS", "PROMPTS", "predict_images", "score", "segment"]
