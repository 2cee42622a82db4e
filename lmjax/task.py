"""What is learned: targets, coordinate extraction and the loss inputs, from a config.

Pure functions of the model's outputs and the batch (no jit, no state): the train
and eval steps (`lmjax.train.step`) call them inside their traced functions.

Three registries, looked up by name, so that a new head or loss needs one
registration and no edit here:

- heads (`register_head`, `config.task.mode`): how a family's maps become
  landmarks: the default target, the non-negative mass a centroid reads, the
  probabilities a host extractor reads, and whether masks are scored (IoU).
- target renderers (`TARGETS`): gaussian, circle, square, drawn on the device.
- loss inputs (`LOSS_INPUTS`, by the kind a loss was registered with, see
  `lmjax.ops.loss_registry`): what each kind of loss is fed.

Region losses (the fluoroscopy paper's segmentation-informed training) use the
model's `outputs["segmentation"]` (`[B, h, w, R + 1]` logits, channel 0 background)
and the batch's `region_mask` (`[B, H, W]` int labels, 0 background, r + 1 region
r; resized to the maps' size by nearest sampling). A configured loss named
`"segmentation/<map loss>"` applies that map loss to the segmentation logits
against the one-hot region labels.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.ops import centroids, extractors, targets
from lmjax.ops.detection_losses import detection_term
from lmjax.ops.geometry import resize_nearest
from lmjax.ops.losses import deep_supervision, get_loss, loss_kind

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DIFFERENTIABLE = ("soft_argmax", "local_soft_argmax", "probability_centroid")
EXTRACTORS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    n: getattr(extractors, n) for n in ("hard_argmax", "sigmoid_argmax", *DIFFERENTIABLE)
}
# The lower-limb paper's methods 1-5 label connected components on the host: the eval
# step returns probabilities and `host_coordinates` finishes the job.
HOST_EXTRACTORS = tuple(centroids.METHODS)
TEMPERATURE_EXTRACTORS = ("soft_argmax", "local_soft_argmax")
SEGMENTATION_PREFIX = "segmentation/"
CONSISTENCY_REGIONS = ("predicted", "label")


class Head(NamedTuple):
    """How maps of one kind of head turn into landmarks (see the module docstring)."""

    target: str  # default target renderer
    mass: Callable[[jax.Array], jax.Array]  # non-negative mass for probability_centroid
    probabilities: Callable[[jax.Array], jax.Array]  # [0, 1] maps for host extractors
    scores_masks: bool = False  # the eval step reports mask IoU/Dice


HEADS: dict[str, Head] = {}


def register_head(name: str, head: Head, *, override: bool = False) -> Head:
    """Adds a head under `name` (a value of `config.task.mode`)."""
    if name in HEADS and HEADS[name] is not head and not override:
        raise ValueError(f"head {name!r} is already registered; pass override=True")
    HEADS[name] = head
    return head


def _clip01(x):
    return jnp.clip(x, 0.0, 1.0)


register_head("heatmap", Head("gaussian", lambda x: jnp.maximum(x, 0.0), _clip01))
register_head("segmentation", Head("circle", jax.nn.sigmoid, jax.nn.sigmoid, True))
# Coordinate mode: coordinate losses on outputs["coords"] (or on an extractor's).
register_head("coordinate", Head("gaussian", lambda x: jnp.maximum(x, 0.0), _clip01))


class Target(NamedTuple):
    render: Callable[..., jax.Array]  # (coords, *, shape, <size>, visible) -> [B, h, w, K]
    size: str  # the TaskSpec field giving its size in model-input pixels


TARGETS: dict[str, Target] = {
    "gaussian": Target(targets.gaussian_heatmaps, "sigma"),
    "circle": Target(targets.circle_masks, "radius"),
    "square": Target(targets.square_masks, "side"),
}


def base_loss(name: str) -> str:
    """The registered loss behind a configured name (`"segmentation/dice_ce"` -> `"dice_ce"`)."""
    return name.removeprefix(SEGMENTATION_PREFIX)


def _known(what: str, value: Any, known) -> None:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the step trains: targets, losses, coordinate extraction, precision.

    mode: a registered head (`HEADS`: "heatmap", "segmentation", "coordinate").
    target: a `TARGETS` name (None: the head's default), sized by `sigma`,
      `radius`, `side` in model-input pixels.
    losses: name -> weight; each name is a registered loss, or
      `"segmentation/<map loss>"` (see the module docstring).
    loss_kwargs: name -> extra keyword arguments of that loss.
    extractor, extractor_kwargs: `EXTRACTORS` (on device) or `HOST_EXTRACTORS`
      (`lmjax.ops.centroids` methods, on the host) name and options.
    deep_supervision(_weights): also supervise those outputs (None: halving weights).
    compute_dtype: "float32" or "bfloat16" (params stay float32).
    landmark_regions: region index of each landmark (`LandmarkSet.regions`, -1 for
      none); needed by region losses.
    consistency_regions: where region losses read the regions: "predicted" (the
      model's `outputs["segmentation"]`, as the paper) or "label" (`region_mask`).
    item_kinds: the kind of every item (`LandmarkSet.item_kinds`), which detection
      losses draw ground-truth boxes by; None: all landmarks.
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
    item_kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _known("mode", self.mode, tuple(HEADS))
        _known("target", self.target_kind, tuple(TARGETS))
        _known("extractor", self.extractor, (*EXTRACTORS, *HOST_EXTRACTORS))
        _known("compute_dtype", self.compute_dtype, tuple(DTYPES))
        _known("consistency_regions", self.consistency_regions, CONSISTENCY_REGIONS)
        if not self.losses:
            raise ValueError("TaskSpec needs at least one loss")
        for name in self.losses:
            kind = loss_kind(base_loss(name))  # unknown names list the registered ones
            if name != base_loss(name) and kind != "map":
                raise ValueError(
                    f"loss {name!r}: only map losses (dice, dice_ce, bce, ...) compare the "
                    "segmentation output with the region labels"
                )
        if self.landmark_regions is not None:
            object.__setattr__(self, "landmark_regions", tuple(map(int, self.landmark_regions)))

    def _kinds(self) -> list[str]:
        return [
            "segmentation" if n.startswith(SEGMENTATION_PREFIX) else loss_kind(n)
            for n in self.losses
        ]

    @property
    def uses_region_losses(self) -> bool:
        return "region" in self._kinds()

    @property
    def needs_segmentation(self) -> bool:
        """Whether the model must return `"segmentation"` logits."""
        seg = "segmentation" in self._kinds()
        return seg or (self.uses_region_losses and self.consistency_regions == "predicted")

    @property
    def needs_items(self) -> bool:
        """Whether batches must carry item geometry and sizes (detection losses)."""
        return "detection" in self._kinds()

    @property
    def needs_region_mask(self) -> bool:
        """Whether batches must carry `region_mask` (the loop ships it only then)."""
        seg = "segmentation" in self._kinds()
        return seg or (self.uses_region_losses and self.consistency_regions == "label")

    @property
    def target_kind(self) -> str:
        """The target renderer actually used."""
        return self.target or HEADS[self.mode].target

    @property
    def head(self) -> Head:
        return HEADS[self.mode]


def task_spec(
    config,
    landmark_regions: tuple[int, ...] | None = None,
    item_kinds: tuple[str, ...] | None = None,
    *,
    extractor: str | None = None,
) -> TaskSpec:
    """The TaskSpec of a resolved `config.task`; `landmark_regions` (the landmark set's)
    unless the config names them, and the landmark set's `item_kinds`. `extractor`
    replaces the configured one, with its default options (`extractor_kwargs` are
    the configured extractor's; the temperature is the config's)."""
    t = config.task
    regions = tuple(t.landmark_regions) or landmark_regions
    extractor = extractor or t.extractor
    extractor_kwargs = dict(t.extractor_kwargs) if extractor == t.extractor else {}
    if extractor in TEMPERATURE_EXTRACTORS:
        extractor_kwargs.setdefault("temperature", t.extractor_temperature)
    return TaskSpec(
        mode=t.mode,
        target=t.target or None,
        sigma=t.sigma,
        radius=t.radius,
        side=t.side,
        losses=dict(t.losses),
        extractor=extractor,
        extractor_kwargs=extractor_kwargs,
        deep_supervision=t.deep_supervision,
        deep_supervision_weights=tuple(t.deep_supervision_weights) or None,
        compute_dtype=t.compute_dtype,
        loss_kwargs={k: dict(v) for k, v in t.loss_kwargs.items()},
        landmark_regions=None if regions is None else tuple(regions),
        consistency_regions=t.consistency_regions,
        item_kinds=None if item_kinds is None else tuple(item_kinds),
    )


# ---------------------------------------------------------------- maps and coordinates


def rescale(coords: jax.Array, maps: jax.Array, image: jax.Array, *, back: bool = False):
    """Model-input pixels -> pixels of `maps` (which may be coarser), or `back`."""
    # Pixel centres sit on integers, so the outer edge of pixel 0 is -0.5 in both.
    s = jnp.asarray([maps.shape[2] / image.shape[2], maps.shape[1] / image.shape[1]])
    return (coords + 0.5) / s - 0.5 if back else (coords + 0.5) * s - 0.5


def render(task: TaskSpec, landmarks: jax.Array, visible: jax.Array, like: jax.Array, image):
    """Target `[B, h, w, K]` for maps like `like`; sizes scale with the maps' resolution."""
    coords, shape = rescale(landmarks, like, image), like.shape[1:3]
    f = (like.shape[1] / image.shape[1] + like.shape[2] / image.shape[2]) / 2
    target = TARGETS[task.target_kind]
    size = {target.size: getattr(task, target.size) * f}
    return target.render(coords, shape=shape, visible=visible, **size)


def extract(task: TaskSpec, maps: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Coordinates `[B, K, 2]` in model-input pixels and confidence `[B, K]` from maps."""
    x = maps.astype(jnp.float32)
    if task.extractor == "probability_centroid":
        x = task.head.mass(x)  # the centroid needs non-negative mass
    coords, conf = EXTRACTORS[task.extractor](x, **task.extractor_kwargs)
    return rescale(coords, maps, image, back=True), conf


def mask_overlap(task: TaskSpec, logits: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Intersection and union pixel counts `[B, K, 2]` of thresholded masks and targets."""
    target = render(task, batch["landmarks"], batch["visible"], logits, batch["image"]) > 0.5
    pred = logits > 0  # sigmoid > 0.5
    inter = jnp.sum(pred & target, axis=(1, 2), dtype=jnp.float32)
    union = jnp.sum(pred | target, axis=(1, 2), dtype=jnp.float32)
    return jnp.stack([inter, union], axis=-1)


def host_coordinates(
    task: TaskSpec, probs: np.ndarray, input_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`(coords [B, K, 2] in model-input pixels, confidence [B, K], false positives)`
    by a host method; false positives `[B, K]` only for the binary-mask methods
    (`centroids.FALSE_POSITIVE_METHODS`), else None: the others never have any.

    Missed landmarks (no component) are NaN with confidence 0.
    """
    result = centroids.extract_centroids(probs, task.extractor, **task.extractor_kwargs)
    h, w = probs.shape[1:3]
    scale = np.array([input_hw[1] / w, input_hw[0] / h], np.float32)
    fp = result.false_positives if task.extractor in centroids.FALSE_POSITIVE_METHODS else None
    return (result.coords + 0.5) * scale - 0.5, result.confidence, fp


# ---------------------------------------------------------------- loss inputs by kind


def _map_scales(task: TaskSpec, outputs: Mapping[str, Any]) -> list[jax.Array]:
    """The maps to supervise, finest first: `[heatmaps]`, or with deep supervision."""
    maps, extra = outputs["heatmaps"], list(outputs.get("deep_supervision") or [])
    if task.deep_supervision and not extra:
        raise ValueError("task.deep_supervision is set but the model returns no deep_supervision")
    if not task.deep_supervision:
        return [maps]
    # Accept lists with or without the full-resolution output in front.
    return extra if extra[0].shape == maps.shape else [maps, *extra]


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


def _map_term(task, name, fn, kw, outputs, batch) -> jax.Array:
    # One scale through the wrapper is the loss itself (weight 1, no resize).
    scales = _map_scales(task, outputs)
    target = render(task, batch["landmarks"], batch["visible"], scales[0], batch["image"])
    weights = task.deep_supervision_weights if len(scales) > 1 else None
    return deep_supervision(fn, scales, target, weights=weights, visible=batch["visible"], **kw)


def _segmentation_term(task, name, fn, kw, outputs, batch) -> jax.Array:
    logits = _segmentation(outputs, name)
    labels = resize_nearest(_region_mask(batch, name), logits.shape[1:3])
    # Labels outside [0, R] one-hot to zeros: they count as no region at all.
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if "multiclass" in inspect.signature(fn).parameters:  # region labels are exclusive
        kw.setdefault("multiclass", True)
    return fn(logits, onehot, **kw)


def _coordinate_term(task, name, fn, kw, outputs, batch) -> jax.Array:
    if "coords" in outputs:
        coords = outputs["coords"]
    elif task.extractor in DIFFERENTIABLE:
        coords = extract(task, outputs["heatmaps"], batch["image"])[0]
    else:
        raise ValueError(
            f"coordinate loss {name!r} needs outputs['coords'] or a differentiable "
            f"extractor ({', '.join(DIFFERENTIABLE)}), not {task.extractor!r}"
        )
    return fn(coords, batch["landmarks"], visible=batch["visible"], **kw)


def _region_term(task, name, fn, kw, outputs, batch) -> jax.Array:
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


# kind -> (task, name, loss fn, kwargs, outputs, batch) -> [B]
LOSS_INPUTS: dict[str, Callable[..., jax.Array]] = {
    "map": _map_term,
    "segmentation": _segmentation_term,
    "coordinate": _coordinate_term,
    "region": _region_term,
    "detection": detection_term,
}


def loss_terms(task: TaskSpec, outputs: Mapping[str, Any], batch: Mapping[str, jax.Array]):
    """Per-example loss `[B]` for each configured loss name."""
    terms = {}
    for name, kind in zip(task.losses, task._kinds(), strict=True):
        fn, kw = get_loss(base_loss(name)), dict(task.loss_kwargs.get(name, {}))
        terms[name] = LOSS_INPUTS[kind](task, name, fn, kw, outputs, batch)
    return terms
