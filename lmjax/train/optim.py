"""Optax optimizers and learning-rate schedules from a config, and reduce-on-plateau.

`make_optimizer(cfg)` returns `(tx, schedule)`: the optax transformation (weight
decay, the optimizer, clipping by global norm first) and the schedule it uses,
so the loop can log the learning rate. `cfg` is an `OptimConfig`, a mapping, or
an `ml_collections.ConfigDict`; unknown keys and names are errors.

Reduce-on-plateau is split between host and device on purpose. The validation
MRE exists only on the host, every few hundred steps, so `ReduceOnPlateau` is a
small host object fed with it; it returns a learning-rate scale that the loop
writes into `TrainState.lr_scale` (a replicated scalar) and the train step
multiplies the optax updates by it. Nothing is read back per step.
`optax.contrib.reduce_on_plateau` was not used: it needs the monitored value at
every `update` call, i.e. in every train step, where no validation MRE exists.

Per-parameter options of `make_optimizer` are functions of the parameter path (a
tuple of names and list indices, as `nnx.to_flat_state` writes it, e.g.
`("blocks", 3, "attn", "qkv", "kernel")`), so they apply to any pytree of params:
`lr_scale(path) -> float` multiplies that parameter's updates (layer-wise decay,
`layer_decay_scales`); `trainable(path) -> bool` leaves the others unchanged,
with no optimizer state for them (their updates are exact zeros).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step", "polynomial")
DECAY_MASKS = ("all", "matrices")
# Parameters that are tables rather than weights: never decayed under "matrices".
NO_DECAY_NAMES = ("pos_embed", "relative_position_bias_table", "cls_token")

ParamPath = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings; step counts are optimizer updates (train steps).

    name: "adam" (L2 `weight_decay` added to the gradient, as torch Adam), "adamw"
      (decoupled `weight_decay`), or "sgd" (`momentum`, `nesterov`; L2 decay).
    schedule: "constant"; "cosine" to `learning_rate * final_fraction` at
      `total_steps`; "step" multiplies by `factor` at each of `boundaries`;
      "polynomial" to `learning_rate * final_fraction` at `total_steps` with `power`.
      Every schedule starts with `warmup_steps` of linear warmup from 0.
    clip_norm: clip gradients to this global norm before anything else; None: off.
    plateau_*: `ReduceOnPlateau` defaults (patience 10 evaluations, factor 0.5).
    layer_decay: layer-wise learning-rate decay rate (e.g. 0.85), or None for off.
      The model numbers its layers; the caller turns that into `lr_scale` with
      `layer_decay_scales` and passes it to `make_optimizer`.
    weight_decay_mask: "all" decays every parameter; "matrices" only those with two
      or more dimensions (kernels, embeddings matrices) and not named in
      `NO_DECAY_NAMES`, so biases, norm scales and position tables are not pulled
      to zero (the BEiT/MAE/ViTPose practice).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    final_fraction: float = 0.0
    boundaries: Sequence[int] = ()
    factor: float = 0.1
    power: float = 1.0
    clip_norm: float | None = None
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    plateau_rtol: float = 1e-4
    plateau_cooldown: int = 0
    plateau_min_scale: float = 0.0
    layer_decay: float | None = None
    weight_decay_mask: str = "all"

    @classmethod
    def from_any(cls, cfg: OptimConfig | Mapping[str, Any] | Any) -> OptimConfig:
        """From an `OptimConfig`, a mapping or a `ConfigDict` (anything with `to_dict`)."""
        if isinstance(cfg, cls):
            return cfg
        if hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(
                f"unknown optimizer settings {unknown}; known: {', '.join(sorted(fields))}"
            )
        return cls(**dict(cfg))


def make_schedule(cfg: OptimConfig | Mapping[str, Any]) -> optax.Schedule:
    """The learning rate as a function of the update count (0 for the first update).

    Raises:
      ValueError: for an unknown schedule name (listing the known ones) or a
        decaying schedule without `total_steps`.
    """
    cfg = OptimConfig.from_any(cfg)
    lr, warm = cfg.learning_rate, cfg.warmup_steps
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; known: {', '.join(SCHEDULES)}")
    if cfg.schedule in ("cosine", "polynomial") and not cfg.total_steps:
        raise ValueError(f"schedule {cfg.schedule!r} needs total_steps")
    # Decay runs over the steps after the warmup; join_schedules hands the decay
    # schedule `step - warmup_steps`, so absolute boundaries are shifted here.
    decay_steps = max((cfg.total_steps or 0) - warm, 1)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.final_fraction)
    elif cfg.schedule == "step":
        # Multiplied by `factor` from step `b` on (step >= b), as torch's MultiStepLR.
        bounds = jnp.asarray([int(b) - warm for b in cfg.boundaries], jnp.int32)
        decay = lambda count: lr * cfg.factor ** jnp.sum(count >= bounds)
    else:
        decay = optax.polynomial_schedule(
            lr, lr * cfg.final_fraction, cfg.power, transition_steps=decay_steps
        )
    if warm <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def param_path(key_path: Sequence[Any]) -> ParamPath:
    """A JAX key path as a tuple of names and indices, without a Variable's `.value`."""
    out: list[str | int] = []
    for k in key_path:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(k.key)
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(k.idx)
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            out.append(k.key)
        else:
            out.append(str(k))
    if out and out[-1] == "value":  # nnx.Variable leaves flatten to `.value`
        out.pop()
    return tuple(out)


def layer_decay_scales(
    layer_index: Callable[[ParamPath], int], num_layers: int, decay: float
) -> Callable[[ParamPath], float]:
    """`path -> decay ** (num_layers - layer_index(path))`, the ViT layer-wise decay.

    With blocks numbered 0 .. num_layers - 1, embeddings -1 and the head (and final
    norm) `num_layers`: the head gets 1, the last block `decay`, block i
    `decay ** (num_layers - i)`, the embeddings `decay ** (num_layers + 1)` (the
    scaling of BEiT/MAE and mmpose's `LayerDecayOptimWrapperConstructor`).
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {decay}")
    return lambda path: float(decay ** (num_layers - layer_index(path)))


def scale_by_path(scale: Callable[[ParamPath], float]) -> optax.GradientTransformation:
    """Multiplies each update by `scale(path)` (a constant per parameter)."""

    def update_fn(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda p, u: u * jnp.asarray(scale(param_path(p)), u.dtype), updates
        )
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def decay_mask(params: Any, mask: str) -> Any:
    """A pytree of bools like `params`: which parameters `weight_decay` applies to."""
    if mask not in DECAY_MASKS:
        raise ValueError(f"unknown weight_decay_mask {mask!r}; known: {', '.join(DECAY_MASKS)}")

    def decays(path, p) -> bool:
        names = param_path(path)
        return mask == "all" or (p.ndim >= 2 and not any(n in NO_DECAY_NAMES for n in names))

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    cfg: OptimConfig | Mapping[str, Any],
    *,
    lr_scale: Callable[[ParamPath], float] | None = None,
    trainable: Callable[[ParamPath], bool] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(tx, schedule)` for `cfg`; see `OptimConfig` for the names.

    lr_scale: `path -> factor` on the learning rate of each parameter (weight decay
      included, as a per-group learning rate does in PyTorch); required when
      `cfg.layer_decay` is set, see `layer_decay_scales`.
    trainable: `path -> bool`; parameters where it is False get zero updates and no
      optimizer state, and gradient clipping sees only the trainable ones (as if the
      frozen ones had no gradient). None: everything trains.

    Raises:
      ValueError: for an unknown optimizer or schedule name, listing the known ones,
        or `layer_decay` without `lr_scale`.
    """
    cfg = OptimConfig.from_any(cfg)
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.name!r}; known: {', '.join(OPTIMIZERS)}")
    if cfg.layer_decay is not None and lr_scale is None:
        raise ValueError(
            "optim.layer_decay needs the model's layer numbering: pass "
            "lr_scale=layer_decay_scales(model.layer_index, model.num_layers, decay)"
        )
    schedule = make_schedule(cfg)
    decay_mask(jnp.zeros(()), cfg.weight_decay_mask)  # unknown names fail here, not at init
    mask = (
        None
        if cfg.weight_decay_mask == "all"
        else (lambda params: decay_mask(params, cfg.weight_decay_mask))
    )
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=mask,
            )
        )
    else:
        if cfg.weight_decay:
            # Coupled L2: the decay joins the gradient before the moments/momentum.
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
        if cfg.name == "adam":
            parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
        else:
            parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    if lr_scale is not None:
        parts.append(scale_by_path(lr_scale))
    tx = optax.chain(*parts)
    if trainable is not None:

        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda p, _: "train" if trainable(param_path(p)) else "frozen", params
            )

        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


@dataclasses.dataclass
class ReduceOnPlateau:
    """Host-side learning-rate scale that drops when a validation metric stalls.

    Call `update(value)` once per evaluation with a metric where lower is better
    (the validation MRE). After `patience` evaluations in a row without a relative
    improvement of more than `rtol` over the best value, the scale is multiplied
    by `factor` (not below `min_scale`) and the count restarts; `cooldown`
    evaluations after a drop are ignored. Non-finite values count as no improvement.
    The fields are plain numbers, so `dataclasses.asdict` checkpoints it.
    """

    patience: int = 10
    factor: float = 0.5
    rtol: float = 1e-4
    cooldown: int = 0
    min_scale: float = 0.0
    scale: float = 1.0
    best: float = math.inf
    num_bad: int = 0
    cooldown_left: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"plateau factor must be in (0, 1), got {self.factor}")
        if self.patience < 1:
            raise ValueError(f"plateau patience must be at least 1, got {self.patience}")

    @classmethod
    def from_config(cls, cfg: OptimConfig | Mapping[str, Any]) -> ReduceOnPlateau:
        """Uses the `plateau_*` settings of an optimizer config."""
        cfg = OptimConfig.from_any(cfg)
        return cls(
            patience=cfg.plateau_patience,
            factor=cfg.plateau_factor,
            rtol=cfg.plateau_rtol,
            cooldown=cfg.plateau_cooldown,
            min_scale=cfg.plateau_min_scale,
        )

    def update(self, value: float) -> float:
        """Records one evaluation's metric; returns the (possibly reduced) scale."""
        value = float(value)
        if math.isfinite(value) and value < self.best * (1.0 - self.rtol):
            self.best, self.num_bad = value, 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.num_bad = 0
        elif self.num_bad >= self.patience:
            self.scale = max(self.scale * self.factor, self.min_scale)
            self.num_bad, self.cooldown_left = 0, self.cooldown
        return self.scale
