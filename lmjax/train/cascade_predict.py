"""A finished cascade as one model for new images: detector -> per-class boxes -> SAM
prompts -> masks -> landmarks, outline polylines and patch polygons, all in the
original image's pixels (what `lmjax predict` writes for a cascade workdir)."""

from __future__ import annotations

import json
import pathlib
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.data import affine
from lmjax.data.embedding_cache import EmbeddingCache
from lmjax.data.mask_shapes import outline_polyline, patch_polygon
from lmjax.data.sam_preprocess import input_hw
from lmjax.data.types import Dataset
from lmjax.models.sam import postprocess_masks
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train.predictors import register_predictor

MODE = "cascade"
STATE_FILE = "cascade.json"  # the detector's workdir, written by the cascade's training
DETECTOR_FOLDER = "detector"


def detector_dir(workdir) -> pathlib.Path:
    """The detector workdir a cascade run recorded."""
    path = pathlib.Path(workdir) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; is {workdir} a cascade run?")
    det_dir = pathlib.Path(json.loads(path.read_text())["detector"])
    if not ckpt_lib.has_checkpoint(det_dir):
        raise FileNotFoundError(f"{det_dir}: the cascade's detector has no checkpoint")
    return det_dir


class CascadePredictor:
    """`predictor(dataset) -> (coords [N, K, 2], confidence [N, K], regions)` of a
    cascade workdir and its detector's `det_dir`; `regions[i]` lists image i's
    outlines and patches as `{"name", "kind", "points" [[x, y], ...], "score",
    "predicted_iou"}`.

    Landmarks are `cascade.landmark_reading` of the masks (soft centroid by
    default); confidence is the detector's class score, 0 where not found (NaN
    coordinates). Embeddings of new images go to a temporary folder, never to the
    workdir's cache.

    `from_workdir` raises ValueError when the detector's classes are not the items
    the decoder was trained on.
    """

    def __init__(self, config, sam, decoder, landmark_set, detector, *, log=None):
        """`sam`: the SAM model (its encoder embeds); `decoder`: `(graphdef, state)` of
        its trained `PromptedDecoder`; `detector`: `restore_trained`'s
        `(config, mesh, state, eval_step)`."""
        from lmjax.train import sam_steps

        self.config, self.model, self.landmark_set = config, sam, landmark_set
        graphdef, self.state = decoder
        self.detector = detector
        self.predict = sam_steps.make_predict_step(graphdef)
        self.log = log
        # Seconds spent per stage over all calls (what `lmjax benchmark` reports).
        self.timings = dict.fromkeys(("detector", "encoder", "decoder"), 0.0)

    @classmethod
    def from_workdir(cls, workdir, det_dir, *, log=None) -> CascadePredictor:
        from lmjax.train import sam_data
        from lmjax.train.restore import restore_trained
        from lmjax.train.setup import load_landmark_set

        config, model, graphdef, state = sam_data.restore(workdir)
        landmark_set = load_landmark_set(workdir, config)
        detector = restore_trained(det_dir)
        classes = load_landmark_set(det_dir, detector[0]).names
        if tuple(classes) != tuple(landmark_set.names):
            raise ValueError(
                f"{det_dir}: the detector's classes ({', '.join(classes[:3])}, ...) are not "
                f"the cascade's items ({', '.join(landmark_set.names[:3])}, ...)"
            )
        return cls(config, model, (graphdef, state), landmark_set, detector, log=log)

    def __call__(self, dataset: Dataset):
        from lmjax.train.detections import detect_dataset
        from lmjax.train.sam_data import input_side

        config, kinds = self.config, self.landmark_set.item_kinds
        t0 = time.perf_counter()
        boxes, scores = detect_dataset(*_det_args(self.detector), dataset)
        t1 = time.perf_counter()
        side = input_side(config)
        prep = {
            "mode": config.sam.preprocess,
            "resample": config.sam.resample,
            "input_size": side,
            "in_channels": 3,
        }
        with tempfile.TemporaryDirectory() as tmp:
            cache = EmbeddingCache(tmp, weights_id="predict", preprocessing=prep)
            embeddings, metas = cache.embed_dataset(
                self.model, dataset.records, batch_size=config.sam.embed_batch, log=self.log,
                return_meta=True,
            )  # fmt: skip
        t2 = time.perf_counter()
        n, k = boxes.shape[:2]
        coords = np.full((n, k, 2), np.nan, np.float32)
        conf = np.zeros((n, k), np.float32)
        regions: list[list[dict[str, Any]]] = []
        rg = [j for j, kd in enumerate(kinds) if kd != "landmark"]
        for i, meta in enumerate(metas):
            to_original = np.asarray(meta["to_original"], np.float64)
            prompts = affine.apply_boxes(boxes[i], np.linalg.inv(to_original))
            valid = np.isfinite(prompts).all(-1)
            out = _segment(self.predict, self.state, embeddings[i], prompts, valid, config)
            xy = affine.apply(out[config.cascade.landmark_reading].astype(np.float64), to_original)
            coords[i] = np.where(valid[:, None], xy, np.nan)
            conf[i] = np.where(valid, scores[i], 0.0)
            hw = tuple(int(v) for v in meta["original_hw"])
            regions.append(
                _regions(out, valid, rg, kinds, self.landmark_set.names, scores[i], hw, side)
            )
        t3 = time.perf_counter()
        for stage, seconds in zip(self.timings, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.timings[stage] += seconds
        return coords, conf, regions


def _det_args(restored):
    config, mesh, state, eval_step = restored
    return config, eval_step, mesh, state


def _segment(predict, state, embedding, prompts, valid, config):
    from lmjax.train.sam_eval import segment

    return segment(predict, state, embedding, prompts, valid, chunk=config.sam.eval_prompts)


_postprocess = jax.jit(
    postprocess_masks, static_argnames=("image_size", "input_size", "original_size")
)


def _regions(out, valid, columns, kinds, names, scores, hw, side) -> list[dict[str, Any]]:
    if not any(valid[j] for j in columns):
        return []
    # Every region column at once: one shape, so one compile per image size.
    low = jnp.asarray(np.nan_to_num(out["lowres"][columns], nan=-1e4))[..., None]
    masks = np.asarray(
        _postprocess(low, image_size=side, input_size=input_hw(hw, side), original_size=hw)[..., 0]
        > 0
    )
    shapes = []
    for m, j in zip(masks, columns, strict=True):
        if not valid[j]:
            continue
        shape = outline_polyline if kinds[j] == "outline" else patch_polygon
        points = shape(m)
        if len(points):
            shapes.append(
                {
                    "name": names[j],
                    "kind": kinds[j],
                    "points": np.round(points.astype(float), 2).tolist(),
                    "score": round(float(scores[j]), 4),
                    "predicted_iou": round(float(out["iou"][j]), 4),
                }
            )
    return shapes


def predictor(workdir, **kw) -> CascadePredictor:
    """The finished cascade in `workdir` as one model."""
    return CascadePredictor.from_workdir(workdir, detector_dir(workdir), **kw)


register_predictor(MODE, predictor)

__all__ = ["CascadePredictor", "detector_dir", "predictor"]
