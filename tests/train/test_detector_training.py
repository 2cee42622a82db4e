"""Detectors in the generic loop: ground-truth boxes from the batch's item geometry
(the "detection" loss kind's inputs) and item sizes from the pixel spacing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import configs, parallel
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


def test_a_tiny_heatmap_detector_learns_on_the_phantom():
    """Each class's best box (threshold 0: always reported) moves towards its item,
    and the share of items scored above the detection threshold rises, within 60
    steps of the generic train step."""
    overrides = [
        "model.backbone_options={'features': 8, 'num_levels': 3, 'upsample': 'resize'}",
        "model.score_threshold=0.0",
        "optim.warmup_steps=0",
        "optim.learning_rate=3e-3",
    ]
    config = configs.load(f"{CONFIG}:heatmap", [*SMALL, *overrides])
    train, _, _ = setup.load_splits(config)
    ls = train.landmark_set
    mesh, state, train_step, eval_step, _ = setup.build(config, ls.num_landmarks, ls)
    it = make_pipeline(train, input_size=(128, 128), batch_size=4, augment=None, seed=0)
    host = next(iter(it))
    keys = setup.device_keys(setup.task_spec(config), geometry=True)
    batch = parallel.shard_batch({k: host[k] for k in keys}, mesh)
    boxes, valid = map(np.asarray, batch_item_boxes(batch, ls.item_kinds))
    gt = (boxes[..., :2] + boxes[..., 2:]) / 2

    def centre_error_and_rate(state):
        out = eval_step(state, batch)
        coords, scores = np.asarray(out["coords"]), np.asarray(out["scores"])
        error = float(np.mean(np.linalg.norm(coords - gt, axis=-1)[valid]))
        return error, float(np.mean(scores[valid] >= 0.3))  # the config's threshold

    before, rate_before = centre_error_and_rate(state)
    for _ in range(60):
        state, metrics = train_step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    after, rate_after = centre_error_and_rate(state)
    assert after < 0.5 * before, (before, after)
    assert rate_after > rate_before + 0.2, (rate_before, rate_after)
