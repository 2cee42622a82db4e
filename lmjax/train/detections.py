"""A trained detector's per-class boxes on a dataset, in the original image.

The detector's eval step (`lmjax.train.step.make_eval_step`) returns per-class
top-1 boxes in model-input pixels; they come back to the original image through
each image's `to_original` affine (all four corners, so any affine fit works).
"""

from __future__ import annotations

import numpy as np

from lmjax import parallel
from lmjax.data import affine
from lmjax.data.types import Dataset
from lmjax.evaluate import eval_batches


def detect_dataset(config, eval_step, mesh, state, dataset: Dataset, *, cache_dir=None):
    """`(boxes [N, K, 4], scores [N, K])`: boxes in original pixels, NaN where the
    class was not found. Boxes are clipped to the image (the model input); one
    wholly outside counts as not found. One process only (the cascade's stages run
    on one host).

    Raises:
      ValueError: the model is not a detector (its eval step returns no boxes).
    """
    n, k = len(dataset.records), dataset.landmark_set.num_landmarks
    boxes = np.full((n, k, 4), np.nan, np.float64)
    scores = np.zeros((n, k), np.float32)
    batches = eval_batches(
        dataset,
        tuple(config.data.input_size),
        config.train.batch_size,
        fit=config.data.fit,
        normalize=config.data.normalize,
        cache_dir=cache_dir,
    )
    h, w = (int(v) for v in config.data.input_size)
    for batch in batches:
        images = parallel.shard_batch({"image": batch["image"].astype(np.float32)}, mesh)
        out = parallel.host_rows(eval_step(state, images), mesh)
        if "boxes" not in out:
            raise ValueError(
                f"model {config.model.name!r} is not a detector: its outputs have no boxes"
            )
        for i in np.flatnonzero(batch["valid"]):
            idx = int(batch["index"][i])
            boxes[idx] = affine.apply_boxes(_inside(out["boxes"][i], h, w), batch["to_original"][i])
            scores[idx] = np.asarray(out["scores"][i])
    return boxes, scores


def _inside(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boxes `[K, 4]` clipped to the `h x w` input; one left without area is not found
    (NaN): a prompt outside the image cannot segment anything there."""
    b = np.asarray(boxes, np.float64).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
    empty = ~((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    b[empty] = np.nan
    return b


__all__ = ["detect_dataset"]
