"""Host extractors (the lower-limb paper's Methods 1-5) through the eval step and predictor."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import parallel
from lmjax.ops import targets
from lmjax.train import (
    TaskSpec,
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from lmjax.train.evaluation import predictor

K, H, W = 3, 32, 40


class MaskNet(nnx.Module):
    """Logits = gain * (image - 0.5), one channel per landmark; `pool` halves the maps."""

    def __init__(self, *, pool: bool = False):
        self.gain = nnx.Param(jnp.asarray(20.0))
        self.pool = pool

    def __call__(self, images):
        x = images[..., :K] if images.shape[-1] >= K else jnp.repeat(images, K, axis=-1)
        if self.pool:
            b, h, w, k = x.shape
            x = x.reshape(b, h // 2, 2, w // 2, 2, k).mean(axis=(2, 4))
        return {"heatmaps": self.gain[...] * (x - 0.5)}


def _images(centres: np.ndarray, radius: float) -> np.ndarray:
    masks = targets.circle_masks(jnp.asarray(centres), shape=(H, W), radius=radius)
    return np.array(masks, np.float32)  # [B, H, W, K]: landmark k drawn in channel k


def _predict(task, model):
    mesh = parallel.make_mesh()
    tx, _ = make_optimizer({"name": "adam", "learning_rate": 1e-3})
    graphdef, state = create_train_state(model, tx, 0, mesh=mesh)
    return make_eval_step(graphdef, task, mesh), mesh, state


@pytest.mark.parametrize("method", ["centroid", "midpoint", "threshold_opening", "max_cluster"])
def test_host_methods_find_circle_centres(method):
    centres = np.array([[[10.0, 8.0], [25.0, 20.0], [30.0, 6.0]]] * 2, np.float32)
    centres[1] += 2.0
    images = _images(centres, radius=3.0)
    task = TaskSpec(mode="segmentation", losses={"dice": 1.0}, extractor=method)
    eval_step, mesh, state = _predict(task, MaskNet())
    out = eval_step(state, parallel.shard_batch({"image": images}, mesh))
    assert set(out) == {"probs"}
    probs = np.asarray(out["probs"])
    assert probs.shape == (2, H, W, K) and probs.min() >= 0 and probs.max() <= 1
    coords, conf = predictor(eval_step, mesh, [state], task)(images)
    # Method 1 weighs the whole channel: sigmoid(-10) background pulls it slightly
    # towards the image centre. max_cluster keeps the disc's plateau of maxima.
    np.testing.assert_allclose(coords, centres, atol=0.05 if method == "centroid" else 1e-3)
    assert np.all(conf > 0.99)


def test_coarse_maps_come_back_in_input_pixels():
    centres = np.array([[[10.5, 8.5], [24.5, 20.5], [30.5, 6.5]]], np.float32)
    images = _images(centres, radius=4.0)
    task = TaskSpec(mode="segmentation", losses={"dice": 1.0}, extractor="midpoint")
    eval_step, mesh, state = _predict(task, MaskNet(pool=True))
    coords, _ = predictor(eval_step, mesh, [state], task)(images)
    np.testing.assert_allclose(coords, centres, atol=0.3)


class MaskAndCoordNet(MaskNet):
    """MaskNet plus a coordinate head that answers fixed points far from the discs."""

    def __call__(self, images):
        out = super().__call__(images)
        return {**out, "coords": jnp.broadcast_to(FIXED, (images.shape[0], K, 2))}


FIXED = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], jnp.float32)


def test_model_coordinates_win_over_a_host_extractor():
    # Segmentation-guided regression: the head's coordinates are the prediction; a
    # host method must not replace them with centroids of the masks.
    centres = np.array([[[10.0, 8.0], [25.0, 20.0], [30.0, 6.0]]], np.float32)
    task = TaskSpec(mode="segmentation", losses={"dice": 1.0}, extractor="midpoint")
    eval_step, mesh, state = _predict(task, MaskAndCoordNet())
    images = _images(centres, radius=3.0)
    out = eval_step(state, parallel.shard_batch({"image": images}, mesh))
    assert set(out) == {"coords", "confidence"}
    coords, conf = predictor(eval_step, mesh, [state], task)(images)
    np.testing.assert_allclose(coords[0], np.asarray(FIXED))
    np.testing.assert_array_equal(conf, 1.0)


def test_empty_map_is_a_missed_landmark():
    centres = np.array([[[10.0, 8.0], [25.0, 20.0], [30.0, 6.0]]], np.float32)
    images = _images(centres, radius=3.0)
    images[..., 1] = 0.0
    task = TaskSpec(mode="segmentation", losses={"dice": 1.0}, extractor="threshold_opening")
    eval_step, mesh, state = _predict(task, MaskNet())
    coords, conf = predictor(eval_step, mesh, [state], task)(images)
    assert np.all(np.isnan(coords[0, 1])) and conf[0, 1] == 0
    assert np.all(np.isfinite(coords[0, [0, 2]]))


def test_predictor_needs_the_task_for_a_host_extractor():
    task = TaskSpec(mode="segmentation", losses={"dice": 1.0}, extractor="midpoint")
    eval_step, mesh, state = _predict(task, MaskNet())
    images = _images(np.full((1, K, 2), 10.0, np.float32), radius=3.0)
    with pytest.raises(ValueError, match="host extractor needs the TaskSpec"):
        predictor(eval_step, mesh, [state])(images)


def test_unknown_extractor_lists_host_methods():
    with pytest.raises(ValueError, match="midpoint"):
        TaskSpec(extractor="nearest")


def test_host_extractor_cannot_feed_a_coordinate_loss():
    task = TaskSpec(mode="segmentation", losses={"coord_l1": 1.0}, extractor="midpoint")
    mesh = parallel.make_mesh()
    tx, _ = make_optimizer({"name": "adam", "learning_rate": 1e-3})
    graphdef, state = create_train_state(MaskNet(), tx, 0, mesh=mesh)
    step = make_train_step(graphdef, task, tx, mesh)
    batch = {
        "image": _images(np.full((1, K, 2), 10.0, np.float32), radius=3.0),
        "landmarks": np.full((1, K, 2), 10.0, np.float32),
        "visible": np.ones((1, K), bool),
    }
    with pytest.raises(ValueError, match="differentiable extractor"):
        step(state, parallel.shard_batch(batch, mesh))
