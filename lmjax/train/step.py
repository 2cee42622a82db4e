"""Train state and the compiled train and eval steps.

The model is split once (`create_train_state`); the graphdef stays outside as a static
closure and the pure steps `nnx.merge` it with the state's arrays. Targets are rendered in
the step from `batch["landmarks"]`. Both steps are jitted with explicit shardings (state
replicated, batch split along `data`); the train step donates the state.

bf16 (`compute_dtype="bfloat16"`): params and images are cast to bf16 inside the step, so
forward and backward run in bf16; the state keeps fp32 params and moments, gradients return
in fp32 through the cast, and losses reduce in fp32.

Region losses (the fluoroscopy paper's segmentation-informed training) use two more
inputs: the model's `outputs["segmentation"]` (`[B, h, w, R + 1]` logits, channel 0
background) and the batch's `region_mask` (`[B, H, W]` int labels, 0 background,
r + 1 region r; resized to the maps' size by nearest sampling in the step). A loss
named `"segmentation/<name>"` applies map loss `<name>` (e.g. `dice_ce`, multiclass)
to the segmentation logits against the one-hot region labels; `REGION_LOSSES` take
the heatmap logits, regions (predicted or labelled, `TaskSpec.consistency_regions`),
the visibility and `TaskSpec.landmark_regions`.

A non-finite loss or gradient norm skips the update (`step` still counts the batch) and
shows in the metrics (`loss`, `skipped`): the loop reads metrics only every few steps, and
meanwhile one bad batch must not poison the state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from lmjax import xla_cpu
from lmjax.ops import centroids, extractors, targets
from lmjax.ops.losses import deep_supervision, get_loss
from lmjax.parallel import data_sharding, replicate, replicated
from lmjax.train.optim import param_path

MODES = ("heatmap", "segmentation", "coordinate")
TARGETS = ("gaussian", "circle", "square")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DIFFERENTIABLE = ("soft_argmax", "local_soft_argmax", "probability_centroid")
EXTRACTORS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    n: getattr(extractors, n) for n in ("hard_argmax", "sigmoid_argmax", *DIFFERENTIABLE)
}
# The lower-limb paper's methods 1-5 label connected components on the host: the eval
# step returns probabilities and `host_coordinates` finishes the job.
HOST_EXTRACTORS = tuple(centroids.METHODS)
COORD_LOSSES = ("coord_l1", "coord_l2", "coord_mse", "wing")  # (pred [B,K,2], target [B,K,2])
# (heatmap logits, regions, visibility, landmark_regions=...): landmarks inside their bones.
REGION_LOSSES = ("anatomical_consistency", "soft_anatomical_consistency")
# "segmentation/<map loss>": that loss on outputs["segmentation"] vs the region labels.
SEGMENTATION_PREFIX = "segmentation/"
CONSISTENCY_REGIONS = ("predicted", "label")
_MULTICLASS_LOSSES = ("dice", "dice_ce")  # take `multiclass`; region labels are exclusive


def base_loss(name: str) -> str:
    """The registered loss behind a configured name (`"segmentation/dice_ce"` -> `"dice_ce"`)."""
    return name.removeprefix(SEGMENTATION_PREFIX)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the step trains: targets, losses, coordinate extraction, precision.

    mode: "heatmap" (Gaussian targets), "segmentation" (mask targets on logits),
      "coordinate" (coordinate losses on `outputs["coords"]`, else on `extractor`).
    target: "gaussian" | "circle" | "square" (None: circle for segmentation, else
      gaussian), sized by `sigma`, `radius`, `side` in model-input pixels.
    losses: name -> weight. `COORD_LOSSES` compare coordinates; `"segmentation/<loss>"`
      compares `outputs["segmentation"]` with the one-hot `batch["region_mask"]`
      (`dice`/`dice_ce` default to `multiclass=True`); `REGION_LOSSES` check that
      each landmark's heatmap peak lies in its region; the others compare
      `outputs["heatmaps"]` (plus `outputs["deep_supervision"]`) with the target.
    loss_kwargs: name -> extra keyword arguments of that loss.
    extractor, extractor_kwargs: `EXTRACTORS` (on device) or `HOST_EXTRACTORS`
      (`lmjax.ops.centroids` methods, on the host) name and options.
    deep_supervision(_weights): also supervise those outputs (None: halving weights).
    compute_dtype: "float32" or "bfloat16" (params stay float32).
    landmark_regions: region index of each landmark (`LandmarkSet.regions`, -1 for
      none); needed by `REGION_LOSSES`.
    consistency_regions: where `REGION_LOSSES` read the regions: "predicted" (the
      model's `outputs["segmentation"]`, as the paper) or "label" (`region_mask`).
    """

    mode: str = "heatmap"
    target: str | None = None
    sigma: float = 2.0
    radius: float = 3.0
    side: float = 5.0
    losses: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"heatmap_mse": 1.0})
    loss_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    extractor: str = "hard_argmax"
    extractor_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    deep_supervision: bool = False
    deep_supervision_weights: tuple[float, ...] | None = None
    compute_dtype: str = "float32"
    landmark_regions: tuple[int, ...] | None = None
    consistency_regions: str = "predicted"

    def __post_init__(self) -> None:
        for what, value, known in (
            ("mode", self.mode, MODES),
            ("target", self.target_kind, TARGETS),
            ("extractor", self.extractor, (*EXTRACTORS, *HOST_EXTRACTORS)),
            ("compute_dtype", self.compute_dtype, tuple(DTYPES)),
            ("consistency_regions", self.consistency_regions, CONSISTENCY_REGIONS),
        ):
            if value not in known:
                raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")
        if not self.losses:
            raise ValueError("TaskSpec needs at least one loss")
        for name in self.losses:
            get_loss(base_loss(name))  # unknown names raise, listing the registered ones
            if name != base_loss(name) and base_loss(name) in (*COORD_LOSSES, *REGION_LOSSES):
                raise ValueError(
                    f"loss {name!r}: only map losses (dice, dice_ce, bce, ...) compare the "
                    "segmentation output with the region labels"
                )
        if self.landmark_regions is not None:
            object.__setattr__(self, "landmark_regions", tuple(map(int, self.landmark_regions)))

    @property
    def uses_region_losses(self) -> bool:
        return any(name in REGION_LOSSES for name in self.losses)

    @property
    def needs_segmentation(self) -> bool:
        """Whether the model must return `"segmentation"` logits."""
        seg = any(name.startswith(SEGMENTATION_PREFIX) for name in self.losses)
        return seg or (self.uses_region_losses and self.consistency_regions == "predicted")

    @property
    def needs_region_mask(self) -> bool:
        """Whether batches must carry `region_mask` (the loop ships it only then)."""
        seg = any(name.startswith(SEGMENTATION_PREFIX) for name in self.losses)
        return seg or (self.uses_region_losses and self.consistency_regions == "label")

    @property
    def target_kind(self) -> str:
        """The target renderer actually used."""
        return self.target or ("circle" if self.mode == "segmentation" else "gaussian")


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


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
    """A floating array in `dtype`; other arrays (ints, PRNG keys) unchanged."""
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def _merge(graphdef: nnx.GraphDef, params: Any, state: TrainState, train: bool, dtype: Any):
    """The model with `params` cast to the compute dtype, in train or eval mode."""
    params = jax.tree.map(lambda p: _cast(p, dtype), params)
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


def _rescale(coords: jax.Array, maps: jax.Array, image: jax.Array, *, back: bool = False):
    """Model-input pixels -> pixels of `maps` (which may be coarser), or `back`."""
    # Pixel centres sit on integers, so the outer edge of pixel 0 is -0.5 in both.
    s = jnp.asarray([maps.shape[2] / image.shape[2], maps.shape[1] / image.shape[1]])
    return (coords + 0.5) / s - 0.5 if back else (coords + 0.5) * s - 0.5


def _render(task: TaskSpec, landmarks: jax.Array, visible: jax.Array, like: jax.Array, image):
    """Target `[B, h, w, K]` for maps like `like`; sizes scale with the maps' resolution."""
    coords, shape = _rescale(landmarks, like, image), like.shape[1:3]
    f = (like.shape[1] / image.shape[1] + like.shape[2] / image.shape[2]) / 2
    if task.target_kind == "gaussian":
        return targets.gaussian_heatmaps(coords, shape=shape, sigma=task.sigma * f, visible=visible)
    if task.target_kind == "circle":
        return targets.circle_masks(coords, shape=shape, radius=task.radius * f, visible=visible)
    return targets.square_masks(coords, shape=shape, side=task.side * f, visible=visible)


def _extract(task: TaskSpec, maps: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Coordinates `[B, K, 2]` in model-input pixels and confidence `[B, K]` from maps."""
    x = maps.astype(jnp.float32)
    if task.extractor == "probability_centroid":
        # The centroid needs non-negative mass: probabilities of logits, clipped heatmaps.
        x = jax.nn.sigmoid(x) if task.mode == "segmentation" else jnp.maximum(x, 0.0)
    coords, conf = EXTRACTORS[task.extractor](x, **task.extractor_kwargs)
    return _rescale(coords, maps, image, back=True), conf


def _mask_overlap(task: TaskSpec, logits: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Intersection and union pixel counts `[B, K, 2]` of thresholded masks and targets."""
    target = _render(task, batch["landmarks"], batch["visible"], logits, batch["image"]) > 0.5
    pred = logits > 0  # sigmoid > 0.5
    inter = jnp.sum(pred & target, axis=(1, 2), dtype=jnp.float32)
    union = jnp.sum(pred | target, axis=(1, 2), dtype=jnp.float32)
    return jnp.stack([inter, union], axis=-1)


def _map_scales(task: TaskSpec, outputs: Mapping[str, Any]) -> list[jax.Array]:
    """The maps to supervise, finest first: `[heatmaps]`, or with deep supervision."""
    maps, extra = outputs["heatmaps"], list(outputs.get("deep_supervision") or [])
    if task.deep_supervision and not extra:
        raise ValueError("task.deep_supervision is set but the model returns no deep_supervision")
    if not task.deep_supervision:
        return [maps]
    # Accept lists with or without the full-resolution output in front.
    return extra if extra[0].shape == maps.shape else [maps, *extra]


def resize_nearest(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """`[B, H, W, ...]` -> `[B, h, w, ...]` by nearest sampling (labels stay labels).

    Output pixel i reads input pixel `floor((i + 0.5) * H / h)`: pixel centres match,
    as in `_rescale`, so halving picks one pixel of every 2 x 2 block.
    """
    h, w = hw
    if x.shape[1:3] == (h, w):
        return x
    rows = jnp.floor((jnp.arange(h) + 0.5) * (x.shape[1] / h)).astype(jnp.int32)
    cols = jnp.floor((jnp.arange(w) + 0.5) * (x.shape[2] / w)).astype(jnp.int32)
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


def _segmentation(outputs: Mapping[str, Any], name: str) -> jax.Array:
    if "segmentation" not in outputs:
        raise ValueError(
            f"loss {name!r} needs the model's segmentation logits (outputs['segmentation'], "
            f"[B, H, W, R + 1]), but the model returns only {', '.join(sorted(outputs))}; "
            "build a model with a segmentation head (e.g. hrnet with num_regions > 0)"
        )
    return outputs["segmentation"]


def _region_mask(batch: Mapping[str, jax.Array], name: str) -> jax.Array:
    if "region_mask" not in batch:
        raise ValueError(
            f"loss {name!r} needs batch['region_mask'] (int [B, H, W] region labels); "
            "the dataset has no region masks or they were not shipped to the device"
        )
    return batch["region_mask"]


def _region_terms(task: TaskSpec, name: str, fn, kw, outputs, batch) -> jax.Array:
    """`[B]` for a `"segmentation/..."` loss or one of `REGION_LOSSES`."""
    if name.startswith(SEGMENTATION_PREFIX):
        logits = _segmentation(outputs, name)
        labels = resize_nearest(_region_mask(batch, name), logits.shape[1:3])
        # Labels outside [0, R] one-hot to zeros: they count as no region at all.
        onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
        if base_loss(name) in _MULTICLASS_LOSSES:
            kw.setdefault("multiclass", True)
        return fn(logits, onehot, **kw)
    maps = outputs["heatmaps"]
    if task.landmark_regions is None:
        raise ValueError(
            f"loss {name!r} needs TaskSpec.landmark_regions (the region of each landmark, "
            "LandmarkSet.regions); the landmark set declares none or it was not passed"
        )
    if len(task.landmark_regions) != maps.shape[-1]:
        raise ValueError(
            f"loss {name!r}: {len(task.landmark_regions)} landmark_regions for "
            f"{maps.shape[-1]} heatmaps"
        )
    if task.consistency_regions == "predicted":
        regions = _segmentation(outputs, name)
    else:
        regions = _region_mask(batch, name)
    regions = resize_nearest(regions, maps.shape[1:3])
    return fn(maps, regions, batch["visible"], landmark_regions=task.landmark_regions, **kw)


def _loss_terms(task: TaskSpec, outputs: Mapping[str, Any], batch: Mapping[str, jax.Array]):
    """Per-example loss `[B]` for each configured loss name."""
    image, lm, vis = batch["image"], batch["landmarks"], batch["visible"]
    terms = {}
    for name in task.losses:
        fn, kw = get_loss(base_loss(name)), dict(task.loss_kwargs.get(name, {}))
        if name.startswith(SEGMENTATION_PREFIX) or name in REGION_LOSSES:
            terms[name] = _region_terms(task, name, fn, kw, outputs, batch)
        elif name in COORD_LOSSES and "coords" in outputs:
            terms[name] = fn(outputs["coords"], lm, visible=vis, **kw)
        elif name in COORD_LOSSES and task.extractor in DIFFERENTIABLE:
            coords = _extract(task, outputs["heatmaps"], image)[0]
            terms[name] = fn(coords, lm, visible=vis, **kw)
        elif name in COORD_LOSSES:
            raise ValueError(
                f"coordinate loss {name!r} needs outputs['coords'] or a differentiable "
                f"extractor ({', '.join(DIFFERENTIABLE)}), not {task.extractor!r}"
            )
        else:
            # One scale through the wrapper is the loss itself (weight 1, no resize).
            scales = _map_scales(task, outputs)
            target = _render(task, lm, vis, scales[0], image)
            weights = task.deep_supervision_weights if len(scales) > 1 else None
            terms[name] = deep_supervision(fn, scales, target, weights=weights, visible=vis, **kw)
    return terms


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
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated.

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
            model = _merge(graphdef, freeze(params), state, True, dtype)
            outputs = model(batch["image"].astype(dtype))
            terms = {k: _valid_mean(v, valid) for k, v in _loss_terms(task, outputs, batch).items()}
            loss = sum(task.losses[k] * v for k, v in terms.items())
            # Keep the state's dtypes (bf16 compute may give bf16 statistics): no retrace.
            rest = nnx.split(model, nnx.Param, ...)[2]
            rest = jax.tree.map(lambda new, old: _cast(new, old.dtype), rest, state.model_state)
            return loss, (terms, rest)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
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

    rep, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(rep, data),
        out_shardings=(rep, rep),
        donate_argnums=0,
        compiler_options=xla_cpu.compiler_options(mesh),
    )


def make_eval_step(
    graphdef: nnx.GraphDef, task: TaskSpec, mesh: Mesh
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
    maps' resolution.
    """
    dtype = DTYPES[task.compute_dtype]

    def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        model = _merge(graphdef, state.params, state, False, dtype)
        outputs = model(batch["image"].astype(dtype))
        extra = {}
        if "landmarks" in batch and task.mode == "segmentation" and "heatmaps" in outputs:
            extra["overlap"] = _mask_overlap(task, outputs["heatmaps"], batch)
        on_host = task.extractor in HOST_EXTRACTORS
        if on_host and "heatmaps" in outputs and "coords" not in outputs:
            maps = outputs["heatmaps"].astype(jnp.float32)
            probs = jax.nn.sigmoid(maps) if task.mode == "segmentation" else jnp.clip(maps, 0, 1)
            return {"probs": probs, **extra}
        if "heatmaps" in outputs and not on_host:
            coords, conf = _extract(task, outputs["heatmaps"], batch["image"])
        else:
            conf = jnp.ones(outputs["coords"].shape[:-1], jnp.float32)
        coords = outputs["coords"].astype(jnp.float32) if "coords" in outputs else coords
        return {"coords": coords, "confidence": conf, **extra}

    data = data_sharding(mesh)
    return jax.jit(
        eval_step,
        in_shardings=(replicated(mesh), data),
        out_shardings=data,
        compiler_options=xla_cpu.compiler_options(mesh),
    )


def host_coordinates(
    task: TaskSpec, probs: np.ndarray, input_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """`(coords [B, K, 2] in model-input pixels, confidence [B, K])` by a host method.

    Missed landmarks (no component) are NaN with confidence 0.
    """
    result = centroids.extract_centroids(probs, task.extractor, **task.extractor_kwargs)
    h, w = probs.shape[1:3]
    scale = np.array([input_hw[1] / w, input_hw[0] / h], np.float32)
    return (result.coords + 0.5) * scale - 0.5, result.confidence
