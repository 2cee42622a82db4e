"""The train state: everything that changes during training, split once from the model.

The model is split once (`create_train_state`); the graphdef stays outside as a
static closure and the pure steps `merge` it with the state's arrays.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from lmjax.parallel import replicate


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; the graphdef is kept outside."""

    step: jax.Array  # int32 [], batches seen
    params: nnx.State  # the nnx.Param arrays, float32
    model_state: nnx.State  # every other variable: batch statistics, RNG counts
    opt_state: optax.OptState
    rng: jax.Array  # PRNG key; reseeds the model's RNG streams at each step
    lr_scale: jax.Array  # float32 [], multiplies the updates; set by reduce-on-plateau


def create_train_state(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    rng: int | jax.Array,
    *,
    mesh: Mesh | None = None,
) -> tuple[nnx.GraphDef, TrainState]:
    """Splits `model` once into `(graphdef, TrainState)`; replicated on `mesh` if given."""
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    step, one = jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32)
    state = TrainState(step, params, model_state, tx.init(params), key, one)
    if mesh is not None:
        state = replicate(state, mesh)  # also across processes
    return graphdef, state


def set_lr_scale(state: TrainState, scale: float, mesh: Mesh) -> TrainState:
    """A state with `lr_scale = scale` (called by the loop after an evaluation)."""
    return state.replace(lr_scale=replicate(np.float32(scale), mesh))


def cast(x: jax.Array, dtype: Any) -> jax.Array:
    """A floating array in `dtype`; other arrays (ints, PRNG keys) unchanged."""
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def merge(graphdef: nnx.GraphDef, params: Any, state: TrainState, train: bool, dtype: Any):
    """The model with `params` cast to the compute dtype, in train or eval mode."""
    params = jax.tree.map(lambda p: cast(p, dtype), params)
    # Fresh Variables (copy): updating batch statistics then neither touches the
    # caller's state objects nor crosses from the jit trace into the grad trace.
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    model.train() if train else model.eval()  # dropout and batch-norm behaviour
    streams = sorted({n.tag for _, n in nnx.iter_graph(model) if isinstance(n, nnx.RngStream)})
    if train and streams:
        # Dropout masks depend only on the state, so a resumed run repeats them.
        key = jax.random.fold_in(state.rng, state.step)
        keys = {t: jax.random.fold_in(key, i) for i, t in enumerate(streams)}
        nnx.reseed(model, policy="match_shape", **keys)
    return model
