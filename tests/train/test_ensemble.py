"""Ensembles under jax.vmap: member k is the single model seeded seed + k; averaging."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lmjax import parallel
from lmjax.configs.phantom import get_config
from lmjax.task import TaskSpec
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import ensemble, evaluation, loop, restore, setup
from lmjax.train.final_model import load_final
from lmjax.train.state import create_train_state


def _config(**train):
    """The tests' phantom shrunk further (32x32, two levels): compiles in seconds."""
    config = get_config("tiny")
    with config.unlocked():
        config.data.input_size = (32, 32)
        config.model.features = 4
        config.model.num_levels = 2
        config.task.sigma = 1.5
        for key, value in train.items():
            setattr(config.train, key, value)
    return config


def _leaves(params):
    return jax.tree.leaves(jax.device_get(params))


def _quiet(*_):
    pass


def _augmenting_ensemble(how: str = "vmap"):
    # Device augmentation: each member draws its own stream from its own key.
    config = _config(ensemble=2, seed=3, ensemble_map=how)
    with config.unlocked():
        config.data.augment = "default"
        config.data.augment_on_device = True
    return config


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """Three batches and, for member k = 0, 1, the single model seeded seed + k trained
    on them: `(batches, [(losses, params) of k])`, the reference of both ensemble maps."""
    config = _augmenting_ensemble()
    train_ds, _, _ = setup.load_splits(config)
    lset = train_ds.landmark_set
    keys = setup.device_keys(setup.task_spec(config), augment_on_device=True)
    cache = str(tmp_path_factory.mktemp("cache"))
    pipeline = setup.make_train_pipeline(config, train_ds, cache_dir=cache)
    batches = [{k: b[k] for k in keys} for b in (next(pipeline) for _ in range(3))]
    runs = []
    for k in range(2):
        single = ensemble.member_config(config, k)
        mesh1, state1, step1, _, _ = setup.build(single, lset.num_landmarks, lset, log=_quiet)
        losses = []
        for batch in batches:
            state1, metrics1 = step1(state1, parallel.shard_batch(batch, mesh1))
            losses.append(float(metrics1["loss"]))
        runs.append((losses, _leaves(state1.params)))
    return batches, runs


@pytest.mark.parametrize("how", ["vmap", "unroll"])
def test_member_k_equals_the_single_model_seeded_seed_plus_k(single_runs, how):
    config = _augmenting_ensemble(how)
    batches, runs = single_runs
    lset = setup.load_splits(config)[0].landmark_set
    mesh, state, step, _, _ = setup.build(config, lset.num_landmarks, lset, log=_quiet)
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
        losses.append([float(metrics[f"member{k}_loss"]) for k in range(2)])
    assert int(state.step) == 3 and state.params is not None
    for k, (single_losses, single_params) in enumerate(runs):
        single = ensemble.member_config(config, k)
        assert single.train.seed == 3 + k and single.train.ensemble == 1
        np.testing.assert_allclose([row[k] for row in losses], single_losses, rtol=1e-5)
        member = ensemble.member_state(state, k)
        for got, want in zip(_leaves(member.params), single_params, strict=True):
            # vmap batches the convolutions (grouped), which rounds differently.
            scale = max(float(np.abs(want).max()), 1e-3)
            assert float(np.abs(got - want).max()) <= 1e-5 * scale
        if k == 1:  # the members really differ: initialisation and augmentation
            other = _leaves(ensemble.member_state(state, 0).params)
            gap = max(float(np.abs(a - b).max()) for a, b in zip(other, single_params, strict=True))
            assert gap > 1e-2


class _Maps(nnx.Module):
    """Outputs its parameter maps `[h, w, K]` for every image of the batch."""

    def __init__(self, maps: np.ndarray):
        self.maps = nnx.Param(jnp.asarray(maps, jnp.float32))

    def __call__(self, images):
        return {"heatmaps": jnp.broadcast_to(self.maps, (images.shape[0], *self.maps.shape))}


def _two_members(mode: str, maps: list[np.ndarray]):
    mesh = parallel.make_mesh()
    states = []
    for m in maps:
        graphdef, state = create_train_state(_Maps(m), optax.sgd(0.1), 0, mesh=mesh)
        states.append(state)
    task = TaskSpec(mode=mode, extractor="hard_argmax")
    return mesh, graphdef, task, ensemble.stack_states(states, mesh)


def test_heatmap_and_coordinate_averaging_on_a_constructed_case():
    h, w = 8, 8
    a, b = np.zeros((h, w, 1), np.float32), np.zeros((h, w, 1), np.float32)
    a[3, 2, 0], b[3, 6, 0] = 1.0, 0.8  # member 0 at x=2 (peak 1), member 1 at x=6 (0.8)
    mesh, graphdef, task, state = _two_members("heatmap", [a, b])
    batch = parallel.shard_batch({"image": np.zeros((2, h, w, 1), np.float32)}, mesh)
    heat = ensemble.make_eval_step(graphdef, task, mesh, average="heatmap")(state, batch)
    coords = ensemble.make_eval_step(graphdef, task, mesh, average="coords")(state, batch)
    # Heatmap averaging: the mean map peaks at member 0's landmark with height 0.5.
    np.testing.assert_allclose(heat["coords"], [[[2.0, 3.0]]] * 2)
    np.testing.assert_allclose(heat["confidence"], [[0.5]] * 2)
    # Coordinate averaging: halfway, with the mean confidence.
    np.testing.assert_allclose(coords["coords"], [[[4.0, 3.0]]] * 2)
    np.testing.assert_allclose(coords["confidence"], [[0.9]] * 2, rtol=1e-6)
    # Both give each member's own reading, batch first.
    members = np.asarray(heat["members/coords"])
    assert members.shape == (2, 2, 1, 2)
    np.testing.assert_allclose(members[:, 0], [[[2.0, 3.0]]] * 2)
    np.testing.assert_allclose(members[:, 1], [[[6.0, 3.0]]] * 2)
    np.testing.assert_allclose(heat["members/confidence"][0], [[1.0], [0.8]])


def test_logit_maps_are_averaged_as_probabilities():
    task = TaskSpec(mode="segmentation", extractor="hard_argmax")
    logits = jnp.array([[2.0, -1.0], [-3.0, 0.5]])[:, None, None, None, :]  # [N=2, 1,1,1, 2]
    avg = ensemble.average_maps(task, logits)
    p = jax.nn.sigmoid(logits).mean(axis=0)
    np.testing.assert_allclose(jax.nn.sigmoid(avg), p, rtol=1e-6)
    heat = ensemble.average_maps(TaskSpec(), logits)  # heatmaps: the plain mean
    np.testing.assert_allclose(heat, logits.mean(axis=0))


def test_ensemble_trains_reports_members_and_restores(tmp_path):
    config = get_config("tiny")
    with config.unlocked():
        config.data.augment = ""
        config.data.input_size = (32, 32)
        config.optim.learning_rate = 5e-3
        config.train.update(ensemble=2, ensemble_average="coords", steps=60, eval_every=60)
    _, val, _ = setup.load_splits(config)
    mesh, state, _, eval_step, _ = setup.build(config, val.landmark_set.num_landmarks)
    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state, val)
    lines = []
    after = loop.train(config, tmp_path, log=lines.append)
    assert after["mre"] <= 0.5 * before["mre"], (before["mre"], after["mre"])
    assert [m["member"] for m in after["members"]] == [0, 1]
    assert [m["seed"] for m in after["members"]] == [0, 1]
    assert all(
        np.isfinite(m["mre"]) and set(m["sdr"]) == set(after["sdr"]) for m in after["members"]
    )
    assert any(line.startswith("ensemble of 2") for line in lines)
    assert ckpt_lib.Checkpointer(tmp_path).best_step() == 60
    # The checkpoint holds the stacked state; evaluating it gives the logged report.
    config2, mesh2, restored, eval2 = restore.restore_trained(tmp_path)
    assert int(restored.step) == 60
    assert all(x.shape[0] == 2 for x in jax.tree.leaves(restored.params))
    again, _, _ = evaluation.evaluate_state(config2, eval2, mesh2, restored, val)
    assert again["mre"] == pytest.approx(after["mre"], rel=1e-5)
    assert [m["mre"] for m in again["members"]] == pytest.approx(
        [m["mre"] for m in after["members"]], rel=1e-5
    )
    # `predict` and `evaluate` read the run through load_final: the ensemble's average.
    final = load_final(tmp_path, tta_scales=(0.9,))
    assert final.stages == ("global", "scale_tta")
    coords, conf = final.predict(val)
    assert coords.shape == (len(val.records), val.landmark_set.num_landmarks, 2)
    assert np.isfinite(coords).all() and np.isfinite(conf).all()


def test_bad_ensemble_settings_are_refused():
    for field, value in (
        ("ensemble", 0),
        ("ensemble", -2),
        ("ensemble_average", "median"),
        ("ensemble_map", "sideways"),
    ):
        config = _config(**{field: value})
        with pytest.raises(ValueError, match=f"train.{field}"):
            ensemble.check_config(config)


FAKE_DEVICES = """
import json
import os

import jax
import numpy as np
from flax import nnx

from lmjax import parallel
from lmjax.train import TaskSpec, create_train_state, ensemble, make_optimizer, make_train_step
from lmjax.compilation import CACHE_ENV, enable_persistent_cache
from tests.train import NormDropNet, dot_batch

if os.environ.get(CACHE_ENV):  # the suite's shared cache (tests/conftest.py)
    enable_persistent_cache(os.environ[CACHE_ENV], min_compile_time_s=0.5)
result = {}
task = TaskSpec(sigma=1.0)
tx, _ = make_optimizer({"learning_rate": 1e-2})
for n in (1, 8):
    mesh = parallel.make_mesh(n)
    jax.set_mesh(mesh)
    members = [create_train_state(NormDropNet(nnx.Rngs(k, dropout=10 + k)), tx, k, mesh=mesh)
               for k in range(2)]
    graphdef = members[0][0]
    state = ensemble.stack_states([s for _, s in members], mesh)
    step = ensemble.make_train_step(graphdef, task, tx, mesh)
    evaluate = ensemble.make_eval_step(graphdef, task, mesh)
    rng, losses = np.random.default_rng(1), []
    for _ in range(4):
        batch = parallel.shard_batch(dot_batch(rng), mesh)
        state, metrics = step(state, batch)
        losses.append([float(metrics[f"member{k}_loss"]) for k in range(2)])
    out = evaluate(state, batch)
    result[n] = {
        "losses": losses,
        "coords": np.asarray(out["coords"]).tolist(),
        "members": np.asarray(out["members/coords"]).tolist(),
        "shards": len(out["members/coords"].addressable_shards),
        "replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state)),
    }
    if n == 1:  # member 1 alone, on the same batches: the single model's step
        single = make_train_step(graphdef, task, tx, mesh)
        state1, rng, alone = members[1][1], np.random.default_rng(1), []
        for _ in range(4):
            state1, metrics = single(state1, parallel.shard_batch(dot_batch(rng), mesh))
            alone.append(float(metrics["loss"]))
        result["alone"] = alone
print(json.dumps(result))
"""


def test_eight_devices_train_an_ensemble_like_one():
    """Batch norm and dropout members: the same on 1 and 8 (fake) devices, and
    member 1 is the single model with its own init and dropout stream."""
    from tests.train import run_on_fake_devices

    result = run_on_fake_devices(FAKE_DEVICES)
    one, eight = result["1"], result["8"]
    assert one["replicated"] and eight["replicated"] and eight["shards"] == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(eight["members"], one["members"], atol=1e-4)
    np.testing.assert_allclose(eight["coords"], one["coords"], atol=1e-4)
    np.testing.assert_allclose([row[1] for row in one["losses"]], result["alone"], rtol=1e-5)
    assert one["losses"][0][0] != one["losses"][0][1]
