"""Which parameters weight decay pulls to zero."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmjax.train.optim import decay_mask, make_optimizer

PARAMS = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones((4,))},
    "norm": {"scale": jnp.ones((4,))},
    "pos_embed": jnp.ones((1, 2, 2, 4)),
    "blocks": [{"attn": {"relative_position_bias_table": jnp.ones((9, 2))}}],
}


def _step(name: str, mask: str):
    """Parameter change after one update with zero gradients: only the decay acts."""
    tx, _ = make_optimizer(
        {"name": name, "learning_rate": 0.1, "weight_decay": 0.5, "weight_decay_mask": mask}
    )
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    return jax.tree.map(lambda u: float(jnp.abs(u).max()), updates)


def test_matrices_mask_spares_biases_norms_and_tables():
    m = decay_mask(PARAMS, "matrices")
    assert m["conv"]["kernel"] and not m["conv"]["bias"] and not m["norm"]["scale"]
    assert not m["pos_embed"] and not m["blocks"][0]["attn"]["relative_position_bias_table"]
    assert all(jax.tree.leaves(decay_mask(PARAMS, "all")))


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_masked_decay_moves_only_kernels(name):
    moved = _step(name, "matrices")
    assert moved["conv"]["kernel"] > 0
    assert moved["conv"]["bias"] == moved["norm"]["scale"] == moved["pos_embed"] == 0.0
    everything = _step(name, "all")
    assert all(v > 0 for v in jax.tree.leaves(everything))


def test_adamw_masked_decay_value():
    # AdamW with zero gradient: update = -lr * wd * p on decayed parameters.
    moved = _step("adamw", "matrices")
    np.testing.assert_allclose(moved["conv"]["kernel"], 0.1 * 0.5, rtol=1e-6)


def test_unknown_mask_is_an_error():
    with pytest.raises(ValueError, match="unknown weight_decay_mask 'bias'.*all, matrices"):
        make_optimizer({"weight_decay_mask": "bias"})
    assert isinstance(make_optimizer({"weight_decay_mask": "all"})[0], optax.GradientTransformation)
