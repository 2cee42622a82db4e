"""Data parallelism on 8 fake CPU devices gives the training of 1 device.

The same global batches, the same initial state: the loss trajectory, the batch
statistics and the evaluated coordinates must match whether the batch is split
over 8 devices or sits on one. Runs in a subprocess, where the fake devices can
still be requested before jax starts.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.train import run_on_fake_devices

SCRIPT = """
import json

import jax
import numpy as np
from flax import nnx

from lmjax import parallel
from lmjax.train import TaskSpec, create_train_state, make_eval_step, make_optimizer
from lmjax.train import make_train_step
from tests.train import NormDropNet, TinyNet, dot_batch

assert jax.device_count() == 8, jax.devices()
result = {}
for name, build in (("tiny", TinyNet), ("norm_dropout", NormDropNet)):
    for n in (1, 8):
        mesh = parallel.make_mesh(n)
        jax.set_mesh(mesh)  # as the training loop does
        task = TaskSpec(sigma=1.0)
        tx, _ = make_optimizer({"learning_rate": 1e-2})
        graphdef, state = create_train_state(build(nnx.Rngs(0, dropout=1)), tx, 0, mesh=mesh)
        step = make_train_step(graphdef, task, tx, mesh)
        rng, losses = np.random.default_rng(1), []
        for _ in range(5):
            batch = parallel.shard_batch(dot_batch(rng), mesh)
            state, metrics = step(state, batch)
            losses.append(metrics["loss"])
        coords = make_eval_step(graphdef, task, mesh)(state, batch)["coords"]
        result[f"{name}/{n}"] = {
            "losses": [float(x) for x in losses],
            "coords": np.asarray(coords).tolist(),
            "model_state": [np.asarray(x).tolist() for x in jax.tree.leaves(state.model_state)
                            if jax.numpy.issubdtype(x.dtype, np.floating)],
            "batch_shards": len(batch["image"].addressable_shards),
            "shard_shape": list(batch["image"].addressable_shards[0].data.shape),
            "state_replicated": all(x.sharding.is_fully_replicated
                                    for x in jax.tree.leaves(state)),
            "coords_shards": len(coords.addressable_shards),
        }
try:
    parallel.shard_batch(dot_batch(np.random.default_rng(0), batch_size=12), mesh)
except ValueError as error:
    result["error"] = str(error)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def result():
    return run_on_fake_devices(SCRIPT)


@pytest.mark.parametrize("model", ["tiny", "norm_dropout"])
def test_eight_devices_train_like_one(result, model):
    one, eight = result[f"{model}/1"], result[f"{model}/8"]
    assert (one["batch_shards"], eight["batch_shards"]) == (1, 8)
    assert eight["shard_shape"] == [1, 16, 16, 1]
    assert one["state_replicated"] and eight["state_replicated"]
    assert eight["coords_shards"] == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    assert eight["losses"][-1] < eight["losses"][0]
    np.testing.assert_allclose(eight["coords"], one["coords"], atol=1e-4)
    for a, b in zip(eight["model_state"], one["model_state"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_indivisible_batch_names_sizes_and_fix(result):
    message = result["error"]
    assert "global batch size 12" in message and "8 devices" in message
    assert "multiple of 8" in message and "16" in message
