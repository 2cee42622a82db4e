"""Made-up inputs for measuring a config without its data: random batches with the
pipeline's device keys and synthetic landmark sets (`lmjax benchmark`,
`lmjax compile-check`)."""

from __future__ import annotations

import numpy as np

from lmjax.data.types import LandmarkSet
from lmjax.task import task_spec
from lmjax.train import setup


def fake_batch(
    batch_size: int,
    input_hw: tuple[int, int],
    num_landmarks: int,
    seed: int = 0,
    *,
    num_regions: int | None = None,
    pixel_norm: bool = False,
):
    """A host batch with the pipeline's device keys: random images and landmarks.

    Returns:
      image float32 `[B, H, W, 1]`, landmarks float32 `[B, K, 2]` inside the image,
      visible bool `[B, K]`, valid bool `[B]`; with `num_regions`, also region_mask
      int32 `[B, H, W]` of random labels in `0 .. num_regions` (0 background); with
      `pixel_norm`, the identity normalisation float32 `[B, 2]` that batches carry
      when the step augments (`config.data.augment_on_device`).
    """
    rng = np.random.default_rng(seed)
    h, w = input_hw
    xy = rng.uniform([4, 4], [w - 5, h - 5], (batch_size, num_landmarks, 2))
    batch = {
        "image": rng.standard_normal((batch_size, h, w, 1)).astype(np.float32),
        "landmarks": xy.astype(np.float32),
        "visible": np.ones((batch_size, num_landmarks), bool),
        "valid": np.ones((batch_size,), bool),
        # 2-mm discs and strokes at 0.5 mm/px, for detection losses
        "item_size_px": np.full((batch_size, 2), 4.0, np.float32),
    }
    if num_regions is not None:
        batch["region_mask"] = rng.integers(0, num_regions + 1, (batch_size, h, w), np.int32)
    if pixel_norm:
        batch["pixel_norm"] = np.tile(np.array([0.0, 1.0], np.float32), (batch_size, 1))
    return batch


FAKE_REGIONS = 2  # regions of the made-up landmark set when the config names none


def synthetic_landmark_set(num_landmarks: int, num_regions: int = 0) -> LandmarkSet:
    """`K` landmarks `lm0 ..`; with `num_regions`, landmark k belongs to region k mod R."""
    regions = None
    if num_regions:
        regions = tuple(i % num_regions for i in range(num_landmarks))
    return LandmarkSet(
        name="synthetic",
        names=tuple(f"lm{i}" for i in range(num_landmarks)),
        regions=regions,
        region_names=tuple(f"region{r}" for r in range(num_regions)),
    )


def landmark_set_for(config, num_landmarks: int | None = None, dataset=None) -> LandmarkSet:
    """The landmark set to build `config`'s model with, for fake batches.

    Without `num_landmarks`: the training split's (`dataset`, or read from the
    config). With it: `synthetic_landmark_set`, declaring `config.model.num_regions`
    (else `FAKE_REGIONS`) regions when the task has region or segmentation losses,
    so that those losses get their `landmark_regions` and the model its head.
    """
    if num_landmarks is None:
        return (dataset if dataset is not None else setup.load_splits(config)[0]).landmark_set
    task = task_spec(config)
    if not (task.needs_segmentation or task.uses_region_losses or task.needs_region_mask):
        return synthetic_landmark_set(num_landmarks)
    return synthetic_landmark_set(num_landmarks, config.model.get("num_regions") or FAKE_REGIONS)
