"""The compiled train and eval steps.

Both are pure functions of `(TrainState, batch)`, jitted with explicit shardings
(state replicated, batch split along `data`); the train step donates the state.
Targets are rendered in the step from `batch["landmarks"]`; what the losses are
fed comes from `lmjax.task`, by the kind each loss was registered with.

bf16 (`compute_dtype="bfloat16"`): params and images are cast to bf16 inside the step, so
forward and backward run in bf16; the state keeps fp32 params and moments, gradients return
in fp32 through the cast, and losses reduce in fp32.

A non-finite loss or gradient norm skips the update (`step` still counts the batch) and
shows in the metrics (`loss`, `skipped`): the loop reads metrics only every few steps, and
meanwhile one bad batch must not poison the state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from lmjax import xla_cpu
from lmjax.ops import cpu_conv
from lmjax.parallel import data_sharding, replicated
from lmjax.task import DTYPES, HOST_EXTRACTORS, TaskSpec, extract, loss_terms, mask_overlap
from lmjax.train.optim import param_path
from lmjax.train.state import TrainState, cast, merge


def _valid_mean(per_example: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of `[B]` over valid examples (0 when none is valid), in float32."""
    total = jnp.sum(jnp.where(valid, per_example.astype(jnp.float32), 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def make_train_step(
    graphdef: nnx.GraphDef,
    task: TaskSpec,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    schedule: optax.Schedule | None = None,
    augment: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]] | None = None,
    trainable: Callable[[tuple[str | int, ...]], bool] | None = None,
    cpu_conv_kernels: str = "auto",
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated.

    `train_step_fn`'s step (see there), with the state replicated and the batch split
    along `data`. `cpu_conv_kernels` (`train.cpu_conv_kernels`: auto | all | off)
    applies on CPU meshes only (`lmjax.ops.cpu_conv.effective`).
    """
    step = train_step_fn(
        graphdef,
        task,
        tx,
        schedule=schedule,
        augment=augment,
        trainable=trainable,
        cpu_conv_kernels=cpu_conv.effective(cpu_conv_kernels, mesh),
    )
    return jit_train_step(step, mesh)


def jit_train_step(step: Callable, mesh: Mesh) -> Callable:
    """`step(state, batch) -> (state, metrics)` jitted for `mesh`: state replicated
    and donated, batch split along `data`, metrics replicated."""
    rep, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(rep, data),
        out_shardings=(rep, rep),
        donate_argnums=0,
        compiler_options=xla_cpu.compiler_options(mesh),
    )


def train_step_fn(
    graphdef: nnx.GraphDef,
    task: TaskSpec,
    tx: optax.GradientTransformation,
    *,
    schedule: optax.Schedule | None = None,
    augment: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]] | None = None,
    trainable: Callable[[tuple[str | int, ...]], bool] | None = None,
    cpu_conv_kernels: str = "off",
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure, unjitted `train_step(state, batch) -> (state, metrics)` (an ensemble
    `jax.vmap`s it over its members, `lmjax.train.ensemble`).

    `batch` comes from `shard_batch`: `image` `[B, H, W, C]`, `landmarks` `[B, K, 2]`,
    `visible` `[B, K]`, optional `valid` `[B]`, and `region_mask` `[B, H, W]` int
    when `task.needs_region_mask` (others are ignored). Metrics are
    float32 device scalars: `loss`, unweighted `loss_<name>` per term, `grad_norm`,
    `skipped`, and `learning_rate` (schedule(step) * lr_scale) when `schedule` is given.
    `augment(batch, key)` (e.g. `lmjax.data.device_augment.DeviceAugment`), if given,
    first augments the batch with a key of `(state.rng, state.step)`.
    `trainable(path)` (the optimizer's, see `make_optimizer`), if given, marks the
    parameters that train; the others enter the loss through `stop_gradient`, so
    XLA drops their weight gradients (a LoRA model's frozen backbone costs only
    the activation gradients it needs) and their gradient is exactly zero.
    `cpu_conv_kernels` other than "off" differentiates the loss through
    `lmjax.ops.cpu_conv.with_cpu_convs` (faster weight gradients on XLA:CPU; give it
    only for CPU devices, see `cpu_conv.effective`).
    """
    dtype = DTYPES[task.compute_dtype]

    def freeze(params):
        if trainable is None:
            return params
        keep = lambda path, p: p if trainable(param_path(path)) else jax.lax.stop_gradient(p)
        return jax.tree_util.tree_map_with_path(keep, params)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        if augment is not None:  # keyed by the state alone, so a resumed run repeats it
            batch = augment(batch, jax.random.fold_in(state.rng, state.step))
        valid = batch.get("valid", jnp.ones(batch["image"].shape[:1], bool))

        def loss_fn(params):
            model = merge(graphdef, freeze(params), state, True, dtype)
            outputs = model(batch["image"].astype(dtype))
            terms = {k: _valid_mean(v, valid) for k, v in loss_terms(task, outputs, batch).items()}
            loss = sum(task.losses[k] * v for k, v in terms.items())
            # Keep the state's dtypes (bf16 compute may give bf16 statistics): no retrace.
            rest = nnx.split(model, nnx.Param, ...)[2]
            rest = jax.tree.map(lambda new, old: cast(new, old.dtype), rest, state.model_state)
            return loss, (terms, rest)

        grad_fn = jax.value_and_grad(
            cpu_conv.with_cpu_convs(loss_fn, cpu_conv_kernels), has_aux=True
        )
        (loss, (terms, model_state)), grads = grad_fn(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = (params, opt_state, model_state)
        old = (state.params, state.opt_state, state.model_state)
        params, opt_state, model_state = jax.lax.cond(ok, lambda: new, lambda: old)
        metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": 1.0 - ok}
        metrics |= {f"loss_{k}": v for k, v in terms.items()}
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step) * state.lr_scale
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def make_eval_step(
    graphdef: nnx.GraphDef,
    task: TaskSpec,
    mesh: Mesh,
    *,
    readers: Mapping[str, TaskSpec] | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
    """The jitted `eval_step(state, batch) -> {"coords", "confidence"}`, not donating.

    coords `[B, K, 2]` (x, y) in model-input pixels (the host maps them to the
    original image with `batch["to_original"]`): `outputs["coords"]` if the model
    has them, else the extractor's; confidence `[B, K]` from the extractor on the
    heatmaps (1 without heatmaps or with a host extractor). Both are sharded along
    `data`. With a host extractor and no `outputs["coords"]` it returns `{"probs"}`
    instead: maps `[B, h, w, K]` in [0, 1] (sigmoid of segmentation logits, clipped
    heatmaps) for `host_coordinates`.

    When the batch also carries `landmarks` and `visible` and the task segments
    (mode "segmentation", `outputs["heatmaps"]`), the result adds `overlap`
    `[B, K, 2]`: pixel counts of intersection and union of each predicted mask
    (sigmoid above 0.5) with the target mask rendered as in training, at the
    maps' resolution. A detector's result adds `boxes [B, K, 4]` (NaN where not
    found) and `scores [B, K]`, its confidence.

    `readers` (name -> the task with that extractor) read the same maps several
    ways in one forward pass (`lmjax evaluate --extractor`): when the model gives
    maps and no coordinates, the result is then `probs` (for the host extractors)
    and `coords/<name>`, `confidence/<name>` of each device extractor among them.
    """
    dtype = DTYPES[task.compute_dtype]

    def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        model = merge(graphdef, state.params, state, False, dtype)
        return eval_outputs(task, model(batch["image"].astype(dtype)), batch, readers)

    data = data_sharding(mesh)
    return jax.jit(
        eval_step,
        in_shardings=(replicated(mesh), data),
        out_shardings=data,
        compiler_options=xla_cpu.compiler_options(mesh),
    )


def eval_outputs(
    task: TaskSpec,
    outputs: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    readers: Mapping[str, TaskSpec] | None = None,
) -> dict[str, jax.Array]:
    """The eval step's result (see `make_eval_step`) from the model's `outputs`
    (an ensemble gives its averaged outputs, `lmjax.train.ensemble`)."""
    extra = {}
    if "landmarks" in batch and task.head.scores_masks and "heatmaps" in outputs:
        extra["overlap"] = mask_overlap(task, outputs["heatmaps"], batch)
    if readers and "heatmaps" in outputs and "coords" not in outputs:
        maps = outputs["heatmaps"]
        extra["probs"] = task.head.probabilities(maps.astype(jnp.float32))
        for name, reader in readers.items():
            if name not in HOST_EXTRACTORS:
                coords, conf = extract(reader, maps, batch["image"])
                extra[f"coords/{name}"], extra[f"confidence/{name}"] = coords, conf
        return extra
    on_host = task.extractor in HOST_EXTRACTORS
    if on_host and "heatmaps" in outputs and "coords" not in outputs:
        maps = outputs["heatmaps"].astype(jnp.float32)
        return {"probs": task.head.probabilities(maps), **extra}
    if "heatmaps" in outputs and not on_host:
        coords, conf = extract(task, outputs["heatmaps"], batch["image"])
    else:
        conf = jnp.ones(outputs["coords"].shape[:-1], jnp.float32)
    coords = outputs["coords"].astype(jnp.float32) if "coords" in outputs else coords
    if "boxes" in outputs:  # detectors: per-class top-1 boxes and their scores
        extra["boxes"] = outputs["boxes"].astype(jnp.float32)
        extra["scores"] = outputs["scores"].astype(jnp.float32)
        conf = extra["scores"]
    return {"coords": coords, "confidence": conf, **extra}
