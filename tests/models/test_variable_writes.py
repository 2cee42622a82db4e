"""Flax variable writes under tracing: Flax's values, in time linear in the trace."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx import variablelib

import lmjax.models  # noqa: F401  (installs the writes)
from lmjax.models import variable_writes


def _train_twice(dtype):
    x = jax.random.normal(jax.random.key(0), (4, 6, 5, 3)) * 3 + 1
    norm = nnx.BatchNorm(3, momentum=0.9, dtype=dtype, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.array([0.5, 2.0, -1.0])

    @nnx.jit
    def step(m, rngs, x):
        return m(x, use_running_average=False) + 0 * jax.random.normal(rngs.noise(), ())

    rngs = nnx.Rngs(noise=3)
    outs = [np.asarray(step(norm, rngs, x), np.float32) for _ in range(2)]
    return outs, norm.mean[...], norm.var[...], rngs.noise.count[...], rngs.noise()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_writes_give_flax_own_values(dtype, monkeypatch):
    ours = _train_twice(dtype)
    monkeypatch.setattr(variablelib.Variable, "set_value", variable_writes._flax_set_value)
    theirs = _train_twice(dtype)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(ours[3]) == 2 and not np.allclose(ours[1], 0.0)  # state did move


def test_partial_and_broadcast_writes_are_flax_own():
    @jax.jit
    def write(x):
        v = nnx.Variable(jnp.zeros((2, 3)))
        v[...] = x  # broadcast from (3,)
        v[0] = x * 2  # a row
        return v[...]

    np.testing.assert_array_equal(write(jnp.arange(3.0)), [[0, 2, 4], [0, 1, 2]])


def _trace_seconds(layers: int) -> float:
    def forward(x):
        rngs = nnx.Rngs(0)
        for _ in range(layers):
            norm = nnx.BatchNorm(8, rngs=rngs)
            x = jnp.tanh(norm(x, use_running_average=False)) + jax.random.normal(rngs.params())
        return x

    start = time.perf_counter()
    jax.eval_shape(forward, jax.ShapeDtypeStruct((2, 4, 4, 8), jnp.float32))
    return time.perf_counter() - start


def test_tracing_time_grows_linearly_with_depth():
    # Without the writes, 4x the layers cost 16-19x the time here (measured).
    small, large = _trace_seconds(25), _trace_seconds(100)
    assert large < 8 * small + 0.5, (small, large)
