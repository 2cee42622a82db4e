"""Restoring a trained run: into an abstract state, never initialising the model."""

from __future__ import annotations

import jax
import numpy as np

from lmjax.configs.phantom import get_config
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import loop, restore, setup


def _config():
    config = get_config("tiny")
    with config.unlocked():
        config.data.augment = ""
        config.train.steps = config.train.eval_every = config.train.log_every = 2
    return config


def test_abstract_build_is_the_built_state_without_its_arrays():
    config = _config()
    _, val, _ = setup.load_splits(config)
    lset = val.landmark_set
    mesh, live, _, _, _ = setup.build(config, lset.num_landmarks, lset, pretrained=False)
    _, abstract, eval_step = restore.abstract_build(config, lset.num_landmarks, lset)
    assert jax.tree.structure(abstract) == jax.tree.structure(live)
    for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(live), strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct)  # nothing was allocated
        assert (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)
    assert callable(eval_step)


def test_restored_from_the_abstract_state_equals_the_checkpoint(tmp_path):
    config = _config()
    loop.train(config, tmp_path, log=lambda *_: None)
    _, _, state, eval_step = restore.restore_trained(tmp_path)
    # The same checkpoint restored into an eagerly built live state.
    _, val, _ = setup.load_splits(config)
    lset = val.landmark_set
    _, live, _, _, _ = setup.build(config, lset.num_landmarks, lset, pretrained=False)
    expected = ckpt_lib.restore_state(ckpt_lib.Checkpointer(tmp_path, read_only=True), live)
    assert int(state.step) == 2
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch = {"image": np.zeros((config.train.batch_size, *config.data.input_size, 1), np.float32)}
    out = eval_step(state, batch)  # the eval step runs on the restored arrays
    assert np.isfinite(np.asarray(jax.tree.leaves(out)[0])).all()
