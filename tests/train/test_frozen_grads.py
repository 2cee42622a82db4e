"""Frozen parameters enter the loss through stop_gradient: fewer FLOPs, same updates."""

import jax
import numpy as np
from flax import nnx

from lmjax import parallel
from lmjax.models import build_model
from lmjax.models.lora import trainable_paths
from lmjax.train import TaskSpec, create_train_state, make_optimizer, make_train_step

K = 3


def _setup(freeze: bool):
    model = build_model(
        "vit_pose",
        size="tiny",
        num_outputs=K,
        input_size=32,
        in_channels=1,
        rngs=nnx.Rngs(0),
        lora_ranks={"qkv": 4, "proj": 8},
    )
    paths = trainable_paths(model, "lora_and_head")
    tx, _ = make_optimizer({"name": "adam", "learning_rate": 1e-2}, trainable=paths.__contains__)
    mesh = parallel.make_mesh()
    graphdef, state = create_train_state(model, tx, 0, mesh=mesh)
    trainable = paths.__contains__ if freeze else None
    step = make_train_step(graphdef, TaskSpec(sigma=1.0), tx, mesh, trainable=trainable)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(4, 32, 32, 1)).astype(np.float32),
        "landmarks": rng.uniform(2, 29, (4, K, 2)).astype(np.float32),
        "visible": np.ones((4, K), bool),
    }
    return step, state, parallel.shard_batch(batch, mesh)


def _flops(step, state, batch) -> float:
    cost = step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def test_frozen_backbone_skips_its_weight_gradients():
    full, state_a, batch = _setup(freeze=False)
    frozen, state_b, _ = _setup(freeze=True)
    # The ViT's dense kernels dominate; their weight gradients are a large share.
    assert _flops(frozen, state_b, batch) < 0.95 * _flops(full, state_a, batch)


def test_frozen_step_gives_the_same_parameters_and_loss():
    full, state_a, batch = _setup(freeze=False)
    frozen, state_b, _ = _setup(freeze=True)
    for _ in range(2):
        state_a, ma = full(state_a, batch)
        state_b, mb = frozen(state_b, batch)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
        jax.device_get(state_a.params),
        jax.device_get(state_b.params),
    )
    # Clipping and logging see the trainable gradients only, as the optimizer does.
    assert float(mb["grad_norm"]) <= float(ma["grad_norm"])
