"""Train and eval steps on a tiny dot-finding problem; optimizer and schedule builders."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from lmjax import parallel
from lmjax import task as task_lib
from lmjax.ops import targets
from lmjax.train import (
    OptimConfig,
    ReduceOnPlateau,
    TaskSpec,
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    set_lr_scale,
)
from tests.train import K, NormDropNet, TinyNet, dot_batch


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh()


def _setup(mesh, task, *, lr=1e-2, name="adam", model=None, seed=0):
    tx, schedule = make_optimizer({"name": name, "learning_rate": lr})
    graphdef, state = create_train_state(model or TinyNet(nnx.Rngs(seed)), tx, seed, mesh=mesh)
    return graphdef, state, make_train_step(graphdef, task, tx, mesh, schedule=schedule)


@pytest.fixture(scope="module")
def plain(mesh):
    """`new_state()` and the one compiled step of the default task with Adam 1e-2,
    for the tests that look at a step's mechanics rather than at what it learns."""
    tx, schedule = make_optimizer({"name": "adam", "learning_rate": 1e-2})
    graphdef, _ = create_train_state(TinyNet(nnx.Rngs(0)), tx, 0, mesh=mesh)
    step = make_train_step(graphdef, TaskSpec(), tx, mesh, schedule=schedule)
    return lambda: create_train_state(TinyNet(nnx.Rngs(0)), tx, 0, mesh=mesh)[1], step


def _train(mesh, state, step, n, seed=1):
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(n):
        state, metrics = step(state, parallel.shard_batch(dot_batch(rng), mesh))
        losses.append(metrics["loss"])  # device arrays: fetched once at the end
    return state, [float(x) for x in jax.device_get(losses)]


def _error(mesh, graphdef, task, state):
    """Mean radial error in pixels on a fixed held-out batch."""
    batch = parallel.shard_batch(dot_batch(np.random.default_rng(99)), mesh)
    coords = make_eval_step(graphdef, task, mesh)(state, batch)["coords"]
    return float(jnp.mean(jnp.linalg.norm(coords - batch["landmarks"], axis=-1)))


def test_heatmap_training_finds_the_dots(mesh):
    task = TaskSpec(sigma=1.0, extractor="hard_argmax")
    graphdef, state, step = _setup(mesh, task)
    before = _error(mesh, graphdef, task, state)
    state, losses = _train(mesh, state, step, 150)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    after = _error(mesh, graphdef, task, state)
    assert before > 3.0 and after < 1.0, (before, after)
    # Soft-argmax on the same heatmaps (in [0, 1]) needs a small temperature.
    soft = TaskSpec(sigma=1.0, extractor="soft_argmax", extractor_kwargs={"temperature": 0.02})
    assert _error(mesh, graphdef, soft, state) < 1.5


def test_segmentation_dice_ce_decreases(mesh):
    task = TaskSpec(mode="segmentation", radius=1.0, losses={"dice_ce": 1.0})
    graphdef, state, step = _setup(mesh, task, lr=3e-2)
    state, losses = _train(mesh, state, step, 40)
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.parametrize(
    ("losses", "extractor"),
    [
        ({"coord_l1": 1.0}, "soft_argmax"),
        ({"heatmap_mse": 1.0, "coord_l1": 0.1}, "soft_argmax"),
        ({"wing": 1.0}, "local_soft_argmax"),
    ],
)
def test_coordinate_loss_with_missing_landmark_has_finite_grads(mesh, losses, extractor):
    kwargs = {"temperature": 0.1}
    task = TaskSpec(mode="coordinate", losses=losses, extractor=extractor, extractor_kwargs=kwargs)
    _, state, step = _setup(mesh, task)
    batch = dot_batch(np.random.default_rng(0))
    batch["landmarks"][0, 1] = np.nan
    batch["visible"][0, 1] = False
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    metrics = jax.device_get(metrics)
    assert metrics["skipped"] == 0.0
    for key in ("loss", "grad_norm", *(f"loss_{name}" for name in losses)):
        assert np.isfinite(metrics[key]) and metrics[key] > 0, key
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))


def test_coordinate_loss_needs_a_differentiable_extractor(mesh):
    task = TaskSpec(mode="coordinate", losses={"coord_l1": 1.0}, extractor="hard_argmax")
    _, state, step = _setup(mesh, task)
    with pytest.raises(ValueError, match="differentiable extractor"):
        step(state, parallel.shard_batch(dot_batch(np.random.default_rng(0)), mesh))


def test_deep_supervision_runs(mesh):
    task = TaskSpec(sigma=1.0, deep_supervision=True)
    model = TinyNet(nnx.Rngs(0), deep_supervision=True)
    _, state, step = _setup(mesh, task, model=model)
    _, losses = _train(mesh, state, step, 3)
    assert all(math.isfinite(x) for x in losses)
    _, state, step = _setup(mesh, task)  # the plain model has no such output
    with pytest.raises(ValueError, match="deep_supervision"):
        step(state, parallel.shard_batch(dot_batch(np.random.default_rng(0)), mesh))


def test_bfloat16_compute_keeps_float32_state(mesh):
    task = TaskSpec(sigma=1.0, compute_dtype="bfloat16")
    _, state, step = _setup(mesh, task)
    batch = parallel.shard_batch(dot_batch(np.random.default_rng(0)), mesh)
    assert "bf16" in step.lower(state, batch).as_text()  # the convolutions run in bf16
    state, losses = _train(mesh, state, step, 5)
    assert all(math.isfinite(x) for x in losses)
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_model_state_and_dropout(mesh, compute_dtype):
    task = TaskSpec(compute_dtype=compute_dtype)
    model = NormDropNet(nnx.Rngs(0, dropout=1))
    graphdef, state, step = _setup(mesh, task, model=model)
    stats = jax.device_get(state.model_state["norm"]["mean"][...])
    state, losses = _train(mesh, state, step, 3)
    assert all(math.isfinite(x) for x in losses)
    new_stats = state.model_state["norm"]["mean"][...]
    assert new_stats.dtype == jnp.float32 and not np.allclose(new_stats, stats)
    # Eval mode uses the running statistics and no dropout: repeatable.
    batch = parallel.shard_batch(dot_batch(np.random.default_rng(5)), mesh)
    evaluate = make_eval_step(graphdef, task, mesh)
    np.testing.assert_array_equal(
        evaluate(state, batch)["coords"], evaluate(state, batch)["coords"]
    )


def test_state_is_donated(mesh, plain):
    new_state, step = plain
    state = new_state()
    old_leaves = jax.tree.leaves(state.params)
    stepped, _ = step(state, parallel.shard_batch(dot_batch(np.random.default_rng(0)), mesh))
    assert all(leaf.is_deleted() for leaf in old_leaves)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(stepped.params))
    assert int(stepped.step) == 1


def test_no_implicit_transfers_in_the_step(mesh, plain):
    """The loop may run under `jax.transfer_guard("disallow")` (as big_vision does)."""
    new_state, step = plain
    state = new_state()
    batch = parallel.shard_batch(dot_batch(np.random.default_rng(0)), mesh)
    state = set_lr_scale(state, 0.5, mesh)
    with jax.transfer_guard("disallow"):
        for _ in range(2):
            state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))


def test_non_finite_loss_skips_the_update(mesh, plain):
    new_state, step = plain
    state = new_state()
    before = jax.device_get(state.params)
    batch = dot_batch(np.random.default_rng(0))
    batch["image"][0, 0, 0, 0] = np.inf
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    assert not np.isfinite(float(metrics["loss"])) and float(metrics["skipped"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)


def test_lr_scale_halves_the_update(mesh, plain):
    """Adam's first update has magnitude lr per weight, so lr_scale shows directly."""
    new_state, step = plain
    batch = parallel.shard_batch(dot_batch(np.random.default_rng(0)), mesh)
    deltas = []
    for scale in (1.0, 0.5):
        state = new_state()
        start = jax.device_get(state.params)
        state = set_lr_scale(state, scale, mesh)
        state, metrics = step(state, batch)
        assert float(metrics["learning_rate"]) == pytest.approx(1e-2 * scale)
        end = jax.device_get(state.params)
        deltas.append(
            max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), end, start)))
        )
    assert deltas[1] == pytest.approx(0.5 * deltas[0], rel=1e-3)


def test_coarse_maps_map_back_to_input_pixels():
    """Maps at half resolution: targets and coordinates go through the pixel-centre scaling."""
    landmarks = jnp.array([[[5.0, 9.0], [10.0, 6.0], [7.5, 8.5]]])
    image = jnp.zeros((1, 16, 16, 1))
    coarse = jnp.zeros((1, 8, 8, K))
    task = TaskSpec(sigma=1.0, extractor="soft_argmax", extractor_kwargs={"temperature": 1.0})
    maps = task_lib.render(task, landmarks, jnp.ones((1, K), bool), coarse, image)
    expected = targets.gaussian_heatmaps((landmarks + 0.5) / 2 - 0.5, shape=(8, 8), sigma=0.5)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    coords, _ = task_lib.extract(task, jnp.log(maps + 1e-30), image)
    np.testing.assert_allclose(coords, landmarks, atol=0.05)


# ----------------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "adam"},
        {"name": "adam", "weight_decay": 1e-4},
        {"name": "adamw", "weight_decay": 1e-2},
        {"name": "sgd", "momentum": 0.9},
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "clip_norm": 1.0},
        {"name": "sgd", "momentum": 0.0},
    ],
)
def test_each_optimizer_descends(cfg):
    tx, _ = make_optimizer({"learning_rate": 0.05, **cfg})
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    loss = lambda p: jnp.sum(p["w"] ** 2)
    opt_state = tx.init(params)
    for _ in range(20):
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.8 * 14.0


def test_config_from_config_dict():
    cfg = ml_collections.ConfigDict({"name": "sgd", "learning_rate": 0.5, "nesterov": True})
    assert OptimConfig.from_any(cfg) == OptimConfig(name="sgd", learning_rate=0.5, nesterov=True)
    tx, schedule = make_optimizer(cfg)
    assert float(schedule(7)) == 0.5


def test_adamw_decay_is_decoupled():
    tx, _ = make_optimizer({"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5})
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.zeros(1)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1 * 0.5 * 2.0], rtol=1e-6)


def test_clip_by_global_norm():
    tx, _ = make_optimizer({"name": "sgd", "momentum": 0.0, "learning_rate": 1.0, "clip_norm": 0.5})
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    updates, _ = tx.update({"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}, tx.init(params))
    np.testing.assert_allclose(optax.tree.norm(updates), 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"learning_rate": 0.1}, {0: 0.1, 1000: 0.1}),
        ({"learning_rate": 1.0, "warmup_steps": 4}, {0: 0.0, 1: 0.25, 4: 1.0, 50: 1.0}),
        (
            {"schedule": "cosine", "warmup_steps": 10, "total_steps": 110, "final_fraction": 0.1},
            # after warmup: 0.1 + 0.9 * (1 + cos(pi * t / 100)) / 2
            {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 500: 0.1},
        ),
        (
            {"schedule": "step", "boundaries": (10, 20), "factor": 0.1},
            {0: 1.0, 9: 1.0, 10: 0.1, 19: 0.1, 20: 0.01, 100: 0.01},
        ),
        (
            {"schedule": "polynomial", "total_steps": 100, "power": 2.0},
            {0: 1.0, 50: 0.25, 90: 0.01, 100: 0.0, 200: 0.0},
        ),
    ],
)
def test_schedules_match_hand_values(cfg, expected):
    schedule = make_schedule({"learning_rate": 1.0, **cfg})
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, abs=1e-6), step


def test_reduce_on_plateau_halves_after_patience():
    plateau = ReduceOnPlateau.from_config(OptimConfig())
    assert (plateau.patience, plateau.factor) == (10, 0.5)
    assert plateau.update(2.0) == 1.0
    assert plateau.update(1.5) == 1.0  # improvement resets the count
    scales = [plateau.update(1.6) for _ in range(10)]
    assert scales[:9] == [1.0] * 9 and scales[9] == 0.5
    assert [plateau.update(float("nan")) for _ in range(10)][-1] == 0.25
    assert plateau.update(1.0) == 0.25 and plateau.best == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_optimizer({"name": "lion"}), "known: adam, adamw, sgd"),
        (lambda: make_schedule({"schedule": "exp"}), "known: constant, cosine, step, polynomial"),
        (lambda: make_optimizer({"lr": 0.1}), "unknown optimizer settings"),
        (lambda: make_schedule({"schedule": "cosine"}), "needs total_steps"),
        (lambda: TaskSpec(mode="pose"), "known: heatmap, segmentation, coordinate"),
        (lambda: TaskSpec(extractor="argmin"), "known: hard_argmax, sigmoid_argmax, soft_argmax"),
        (lambda: TaskSpec(losses={"l7": 1.0}), "known losses"),
        (lambda: TaskSpec(compute_dtype="float16"), "known: float32, bfloat16"),
    ],
)
def test_unknown_names_list_the_known_ones(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mask_overlap_counts_match_numpy_discs():
    from lmjax import metrics

    task = TaskSpec(mode="segmentation", target="circle", radius=3.0, losses={"dice_ce": 1.0})
    h, w = 24, 32
    lm = np.array([[[8.0, 9.0], [20.0, 12.0], [np.nan, np.nan]]], np.float32)
    vis = np.isfinite(lm).all(-1)
    yy, xx = np.mgrid[:h, :w]

    def discs(centres, radius):
        d2 = (xx[..., None] - centres[:, 0]) ** 2 + (yy[..., None] - centres[:, 1]) ** 2
        return np.nan_to_num(d2, nan=np.inf)[None] <= radius**2

    pred = discs(lm[0] + [1.5, -1.0], 4.0)  # shifted and larger than the target
    logits = np.where(pred, 5.0, -5.0).astype(np.float32)
    batch = {"image": np.zeros((1, h, w, 1), np.float32), "landmarks": lm, "visible": vis}
    counts = np.asarray(task_lib.mask_overlap(task, jnp.asarray(logits), batch))
    target = discs(lm[0], 3.0)
    np.testing.assert_array_equal(counts[..., 0], (pred & target).sum((1, 2)))
    np.testing.assert_array_equal(counts[..., 1], (pred | target).sum((1, 2)))
    iou = counts[0, :2, 0] / counts[0, :2, 1]
    np.testing.assert_allclose(iou, metrics.mask_iou(pred, target)[0, :2], rtol=1e-6)
    assert counts[0, 2].tolist() == [0.0, 0.0]  # no landmark, no mask
