"""Detectors in the generic loop: ground-truth boxes from the batch's item geometry
(the "detection" loss kind's inputs) and item sizes from the pixel spacing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import configs
from lmjax.data.pipeline import make_pipeline
from lmjax.ops.detection_losses import batch_item_boxes
from lmjax.train import setup

CONFIG = "experiments/configs/pelvis_detector.py"
SMALL = ["data.input_size=(128, 128)", "data.phantom_size=16", "train.batch_size=4"]


@pytest.fixture(scope="module")
def batch_and_set():
    config = configs.load(CONFIG, SMALL)
    train, _, _ = setup.load_splits(config)
    it = make_pipeline(train, input_size=(128, 128), batch_size=4, augment=None, seed=0)
    return next(iter(it)), train


def test_item_sizes_follow_spacing_and_resize(batch_and_set):
    batch, train = batch_and_set
    # 256-px phantom images at 1.25 mm/px resized to 128: 2 mm -> 0.8 px
    np.testing.assert_allclose(batch["item_size_px"], np.full((4, 2), 0.8), rtol=1e-5)


def test_ground_truth_boxes_come_from_the_item_geometry(batch_and_set):
    batch, train = batch_and_set
    kinds = train.landmark_set.item_kinds
    boxes, valid = map(np.asarray, batch_item_boxes(jax.tree.map(jnp.asarray, batch), kinds))
    lm = train.landmark_set.landmark_indices
    vis = batch["visible"]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    inside = vis[:, lm] & np.all(batch["landmarks"][:, lm] > 1, axis=-1)
    np.testing.assert_allclose(centre[:, lm][inside], batch["landmarks"][:, lm][inside], atol=1e-4)
    np.testing.assert_allclose((boxes[..., 2] - boxes[..., 0])[:, lm][inside], 1.6, atol=1e-4)
    for k in train.landmark_set.patch_indices:
        v = batch["item_vertices"][:, k]
        for b in np.flatnonzero(valid[:, k]):
            pts = v[b][np.isfinite(v[b]).all(-1)]
            np.testing.assert_allclose(boxes[b, k, :2], np.clip(pts.min(0), 0, 127), atol=1e-4)
    assert (valid == (vis & np.isfinite(boxes).all(-1))).all() and not valid[~vis].any()
