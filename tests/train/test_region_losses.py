"""Region losses in the train step: segmentation logits and region labels reach the losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import parallel
from lmjax.ops.geometry import resize_nearest
from lmjax.train import TaskSpec, create_train_state, make_optimizer, make_train_step, setup
from tests.train import K, TinyNet, dot_batch

R = K  # one region per landmark: region k is a 5 x 5 square around landmark k
PROPOSED = {"segmentation/dice_ce": 1.0, "kl_heatmap": 0.1, "anatomical_consistency": 10.0}


class TinySegNet(nnx.Module):
    """Shared 5x5 conv; a heatmap head of K logits and a segmentation head of R + 1."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 16, (5, 5), rngs=rngs)
        self.heat = nnx.Conv(16, K, (5, 5), rngs=rngs)
        self.seg = nnx.Conv(16, R + 1, (5, 5), rngs=rngs)

    def __call__(self, images):
        x = jax.nn.relu(self.conv(images))
        return {"heatmaps": self.heat(x), "segmentation": self.seg(x)}


def region_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch = dot_batch(rng)
    b, h, w, _ = batch["image"].shape
    mask = np.zeros((b, h, w), np.int32)
    for i in range(b):
        for k in range(K):
            x, y = batch["landmarks"][i, k].astype(int)
            mask[i, max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = k + 1
    batch["region_mask"] = mask
    return batch


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh()


def _setup(mesh, task, model, lr=1e-2):
    tx, _ = make_optimizer({"name": "adam", "learning_rate": lr})
    graphdef, state = create_train_state(model, tx, 0, mesh=mesh)
    return state, make_train_step(graphdef, task, tx, mesh)


def test_region_losses_train(mesh):
    task = TaskSpec(sigma=1.0, losses=PROPOSED, landmark_regions=tuple(range(K)))
    state, step = _setup(mesh, task, TinySegNet(nnx.Rngs(0)))
    rng, history = np.random.default_rng(1), []
    for _ in range(40):
        state, metrics = step(state, parallel.shard_batch(region_batch(rng), mesh))
        history.append(metrics)
    history = jax.device_get(history)
    for name in PROPOSED:
        values = [m[f"loss_{name}"] for m in history]
        assert all(np.isfinite(values)), name
    dice = [m["loss_segmentation/dice_ce"] for m in history]
    kl = [m["loss_kl_heatmap"] for m in history]
    assert np.mean(dice[-5:]) < 0.7 * np.mean(dice[:5]), dice
    assert np.mean(kl[-5:]) < 0.8 * np.mean(kl[:5]), kl


def test_soft_consistency_reaches_the_segmentation_head(mesh):
    """The paper's hard loss has no gradient; the soft one trains both heads."""
    batch = parallel.shard_batch(region_batch(np.random.default_rng(0)), mesh)
    norms = {}
    for name in ("anatomical_consistency", "soft_anatomical_consistency"):
        task = TaskSpec(losses={name: 1.0}, landmark_regions=tuple(range(K)))
        state, step = _setup(mesh, task, TinySegNet(nnx.Rngs(0)))
        _, metrics = step(state, batch)
        norms[name] = float(metrics["grad_norm"])
    assert norms["anatomical_consistency"] == 0.0
    assert norms["soft_anatomical_consistency"] > 0.0


def test_label_regions_work_without_a_segmentation_head(mesh):
    task = TaskSpec(
        losses={"heatmap_mse": 1.0, "soft_anatomical_consistency": 1.0},
        landmark_regions=tuple(range(K)),
        consistency_regions="label",
    )
    assert task.needs_region_mask and not task.needs_segmentation
    state, step = _setup(mesh, task, TinyNet(nnx.Rngs(0)))
    _, metrics = step(state, parallel.shard_batch(region_batch(np.random.default_rng(0)), mesh))
    assert np.isfinite(float(metrics["loss_soft_anatomical_consistency"]))


@pytest.mark.parametrize(
    ("losses", "kwargs", "batch_keys", "message"),
    [
        (PROPOSED, {"landmark_regions": (0, 1, 2)}, None, "segmentation logits"),
        ({"anatomical_consistency": 1.0}, {}, None, "landmark_regions"),
        ({"anatomical_consistency": 1.0}, {"landmark_regions": (0, 1)}, None, "2 landmark_regions"),
        (
            {"segmentation/dice": 1.0},
            {},
            ("image", "landmarks", "visible"),
            "region_mask",
        ),
    ],
)
def test_missing_inputs_are_clear_errors(mesh, losses, kwargs, batch_keys, message):
    task = TaskSpec(losses=losses, **kwargs)
    # A plain heatmap model: no outputs["segmentation"] (the first case); the others
    # fail on the regions or the batch before the model's outputs matter.
    model = TinyNet(nnx.Rngs(0)) if "landmark_regions" in kwargs else TinySegNet(nnx.Rngs(0))
    state, step = _setup(mesh, task, model)
    batch = region_batch(np.random.default_rng(0))
    batch = {k: batch[k] for k in batch_keys or batch}
    with pytest.raises(ValueError, match=message):
        step(state, parallel.shard_batch(batch, mesh))


def test_task_spec_region_fields():
    task = TaskSpec(losses=PROPOSED, landmark_regions=[0, 1, -1])
    assert task.landmark_regions == (0, 1, -1)
    assert task.needs_segmentation and task.needs_region_mask
    assert setup.device_keys(task) == (*setup.DEVICE_KEYS, "region_mask")
    assert setup.device_keys(TaskSpec()) == setup.DEVICE_KEYS
    assert not TaskSpec(losses={"anatomical_consistency": 1.0}).needs_region_mask
    with pytest.raises(ValueError, match="only map losses"):
        TaskSpec(losses={"segmentation/coord_l1": 1.0})
    with pytest.raises(ValueError, match="known losses"):
        TaskSpec(losses={"segmentation/l7": 1.0})
    with pytest.raises(ValueError, match="known: predicted, label"):
        TaskSpec(consistency_regions="truth")


@pytest.mark.parametrize(("src", "dst"), [((8, 6), (4, 3)), ((8, 8), (2, 4)), ((4, 4), (8, 8))])
def test_resize_nearest_samples_pixel_centres(src, dst):
    labels = np.arange(np.prod(src)).reshape(1, *src).astype(np.int32)
    got = np.asarray(jax.jit(resize_nearest, static_argnums=1)(labels, dst))
    rows = ((np.arange(dst[0]) + 0.5) * src[0] / dst[0]).astype(int)
    cols = ((np.arange(dst[1]) + 0.5) * src[1] / dst[1]).astype(int)
    np.testing.assert_array_equal(got, labels[:, rows][:, :, cols])
    assert got.dtype == jnp.int32
