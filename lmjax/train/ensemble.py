"""Ensembles in one step: N members' states stacked and trained under `jax.vmap`.

With `config.train.ensemble = N > 1`, `lmjax.train.setup.build_state` builds member
k exactly as a single run with `train.seed = seed + k` would build its model and
state (initial parameters, optimizer state, RNG key), and stacks the N states along
a new leading axis of every `params`, `model_state`, `opt_state` and `rng` leaf
(`step` and `lr_scale` stay shared scalars, so the loop, the checkpoints and the
reduce-on-plateau schedule handle an ensemble like one model). Orbax saves and
restores the stacked state as it is; the best checkpoint is the ensemble's best
validation MRE. Members are replicated on the mesh like a single state, and the
batch is split along `data`, so the mesh logic is unchanged.

The train step is the single model's step (`lmjax.train.step.train_step_fn`)
`jax.vmap`ped over the members inside one `jax.jit` (state donated, the same
shardings); on CPUs (`train.ensemble_map="auto"`) the members instead run one
after the other inside that same program, which XLA:CPU executes faster than the
grouped convolutions vmap makes of theirs. Every member sees the same host batch; what differs:

  device augmentation  (`data.augment_on_device`) each member augments the batch
                       with its own key, `fold_in(rng_k, step)`, as a single run
                       seeded `seed + k` would: its own augmentation stream.
  host augmentation    the host pipeline augments once (seeded by `train.seed`),
                       so the members see the same augmented images and differ by
                       initialisation and their own dropout streams only.

Exact equivalence: member k after any number of steps equals (up to float
rounding of the batched convolutions) a single model built with `train.seed =
seed + k` and fed the same host batches, with or without device augmentation and
dropout. It is not a whole single run with `seed + k`: such a run would also draw
its data order, validation split and phantom with its seed; and with
`optim.plateau` the shared learning-rate scale follows the ensemble's validation
error, not the member's.

Metrics are the members' means (`skipped` their maximum), plus `member<k>_loss`.

The eval step runs every member on the batch and averages (`train.ensemble_average`):

  heatmap  the members' maps are averaged, then read by the configured extractor;
           logit maps (segmentation) are averaged as probabilities (sigmoid, mean,
           back to logits); heatmaps, already in probability units, as they are.
  coords   each member's coordinates are extracted and averaged, with their
           confidences.

A model that predicts coordinates itself is averaged in coordinates either way, and
host extractors (the lower-limb paper's Methods 1-5) always read the averaged maps.
Besides the ensemble's result the step returns the members' own, `members/coords`
`[B, N, K, 2]` and `members/confidence` `[B, N, K]` (or `members/probs` `[B, N, h,
w, K]` for host extractors), from which `lmjax.train.evaluation` reports each
member beside the ensemble (`member_report`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lmjax import metrics as metrics_lib
from lmjax import xla_cpu
from lmjax.ops import cpu_conv
from lmjax.parallel import data_sharding, replicated
from lmjax.task import DTYPES, TaskSpec, host_coordinates
from lmjax.train.state import TrainState, merge
from lmjax.train.step import eval_outputs, jit_train_step, train_step_fn

AVERAGES = ("heatmap", "coords")
MAPS = ("auto", "vmap", "unroll")
MEMBER = "member/"  # reading names of the members, `member/<k>`
# vmap axes of a stacked state: shared step and learning-rate scale.
MEMBER_AXES = TrainState(step=None, params=0, model_state=0, opt_state=0, rng=0, lr_scale=None)


def size(config) -> int:
    """The number of members, `config.train.ensemble` (1: a single model)."""
    return config.train.get("ensemble", 1)


def check_config(config, task: TaskSpec | None = None) -> None:
    """Raises ValueError for a bad `train.ensemble` / `train.ensemble_average`, or
    (given the `task`) an ensemble of a task it cannot average (detectors' boxes)."""
    n, average = size(config), config.train.get("ensemble_average", "heatmap")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"train.ensemble must be an integer >= 1, got {n!r}")
    if average not in AVERAGES:
        raise ValueError(f"train.ensemble_average must be one of {AVERAGES}, got {average!r}")
    if config.train.get("ensemble_map", "auto") not in MAPS:
        raise ValueError(
            f"train.ensemble_map must be one of {MAPS}, got {config.train.ensemble_map!r}"
        )
    if n > 1 and task is not None and task.needs_items:
        raise ValueError("train.ensemble > 1: detectors' boxes cannot be averaged")


def member_config(config, k: int):
    """The config of member k alone: `train.seed + k`, `train.ensemble = 1`."""
    member = config.copy_and_resolve_references()
    with member.unlocked():
        member.train.seed = int(config.train.seed) + k
        member.train.ensemble = 1
    return member


def stack_states(states: list[TrainState], mesh: Mesh) -> TrainState:
    """The members' states stacked along a new leading axis (replicated on `mesh`);
    `step` and `lr_scale` are the first member's (all start equal)."""
    first = states[0]

    def stack(trees):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

    members = [(s.params, s.model_state, s.opt_state, s.rng) for s in states]
    params, model_state, opt_state, rng = jax.jit(stack, out_shardings=replicated(mesh))(members)
    return first.replace(params=params, model_state=model_state, opt_state=opt_state, rng=rng)


def member_state(state: TrainState, k: int) -> TrainState:
    """Member k of a stacked state, as a single model's state."""
    take = lambda x: x[k]  # noqa: E731
    return state.replace(
        params=jax.tree.map(take, state.params),
        model_state=jax.tree.map(take, state.model_state),
        opt_state=jax.tree.map(take, state.opt_state),
        rng=state.rng[k],
    )


def reduce_metrics(per_member: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Members' metrics `[N]` -> float32 scalars: means, `skipped` the maximum (any
    member's skipped update shows), and each member's loss as `member<k>_loss`."""
    out = {k: jnp.max(v) if k == "skipped" else jnp.mean(v) for k, v in per_member.items()}
    n = per_member["loss"].shape[0]
    out |= {f"member{k}_loss": per_member["loss"][k] for k in range(n)}
    return out


def unrolls(how: str, mesh: Mesh) -> bool:
    """Whether members run as one call each (`train.ensemble_map`): "auto" unrolls on
    CPUs, where a vmapped convolution becomes a grouped one that runs slower per
    member than the single model's (`experiments/results/ensemble_cpu`)."""
    if how not in MAPS:
        raise ValueError(f"train.ensemble_map must be one of {MAPS}, got {how!r}")
    if how == "auto":
        return all(d.platform == "cpu" for d in mesh.devices.flat)
    return how == "unroll"


def _stack(outs: list, axes):
    """The members' outputs stacked as `jax.vmap` with `out_axes=axes` would give them."""
    if axes is None:
        return outs[0]
    if isinstance(axes, TrainState):
        fields = {f.name: getattr(axes, f.name) for f in dataclasses.fields(axes)}
        return TrainState(
            **{n: _stack([getattr(o, n) for o in outs], a) for n, a in fields.items()}
        )
    if isinstance(axes, tuple):
        return tuple(_stack([o[i] for o in outs], a) for i, a in enumerate(axes))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def over_members(fn, out_axes, *, unroll: bool):
    """`fn(member state, x)` for every member of a stacked state, outputs stacked
    along `out_axes`: `jax.vmap`, or with `unroll` one call per member in the same
    program (the single model's own computation, repeated)."""
    if not unroll:
        return jax.vmap(fn, in_axes=(MEMBER_AXES, None), out_axes=out_axes)

    def run(state: TrainState, x):
        n = jax.tree.leaves(state.rng)[0].shape[0]
        return _stack([fn(member_state(state, k), x) for k in range(n)], out_axes)

    return run


def make_train_step(
    graphdef: nnx.GraphDef, task: TaskSpec, tx, mesh: Mesh, *, how: str = "auto", **step_options
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted ensemble `train_step(state, batch) -> (state, metrics)`, state donated.

    `state` is stacked (`stack_states`); `batch` as for `make_train_step`, shared by
    the members; `how` is `train.ensemble_map` (`unrolls`); `step_options`
    (schedule, augment, trainable, cpu_conv_kernels) go to `train_step_fn`.
    """
    mode = step_options.pop("cpu_conv_kernels", "auto")  # as the single model's step
    step_options["cpu_conv_kernels"] = cpu_conv.effective(mode, mesh)
    single = train_step_fn(graphdef, task, tx, **step_options)
    members = over_members(single, (MEMBER_AXES, 0), unroll=unrolls(how, mesh))

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        state, per_member = members(state, batch)
        return state, reduce_metrics(per_member)

    return jit_train_step(train_step, mesh)


def average_maps(task: TaskSpec, maps: jax.Array) -> jax.Array:
    """Members' maps `[N, B, h, w, K]` -> their average `[B, h, w, K]` float32, in the
    units the extractors read: logits of the mean probability for sigmoid heads
    (clipped away from 0 and 1 so the logits stay finite), else the plain mean."""
    maps = maps.astype(jnp.float32)
    if task.head.probabilities is jax.nn.sigmoid:
        eps = float(jnp.finfo(jnp.float32).eps)
        p = jnp.clip(jnp.mean(jax.nn.sigmoid(maps), axis=0), eps, 1.0 - eps)
        return jnp.log(p) - jnp.log1p(-p)
    return jnp.mean(maps, axis=0)


def average_outputs(task: TaskSpec, outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Members' model outputs (leading axis N) -> one model's outputs: averaged
    `heatmaps` (`average_maps`) and `coords` (mean); nothing else is kept."""
    avg = {}
    if "heatmaps" in outputs:
        avg["heatmaps"] = average_maps(task, outputs["heatmaps"])
    if "coords" in outputs:
        avg["coords"] = jnp.mean(outputs["coords"].astype(jnp.float32), axis=0)
    return avg


def make_eval_step(
    graphdef: nnx.GraphDef,
    task: TaskSpec,
    mesh: Mesh,
    *,
    average: str = "heatmap",
    how: str = "auto",
    readers: Mapping[str, TaskSpec] | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
    """The jitted ensemble `eval_step(state, batch)`: `make_eval_step`'s result for
    the members' average (see the module docstring), plus `members/...` of each
    member (not with `readers`, which read the averaged maps). Not donating."""
    if average not in AVERAGES:
        raise ValueError(f"train.ensemble_average must be one of {AVERAGES}, got {average!r}")
    dtype = DTYPES[task.compute_dtype]

    def forward(state: TrainState, images: jax.Array) -> dict[str, jax.Array]:
        outputs = merge(graphdef, state.params, state, False, dtype)(images)
        return {k: outputs[k] for k in ("heatmaps", "coords") if k in outputs}

    def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        images = batch["image"].astype(dtype)
        outputs = over_members(forward, 0, unroll=unrolls(how, mesh))(state, images)
        result = eval_outputs(task, average_outputs(task, outputs), batch, readers)
        if readers:
            return result
        # Unused parts (a member's mask overlap, the averaged maps' extraction in
        # "coords" mode) are dropped by XLA.
        per = jax.vmap(lambda out: eval_outputs(task, out, batch))(outputs)
        if average == "coords" and "coords" in per:
            result["coords"] = jnp.mean(per["coords"], axis=0)
            result["confidence"] = jnp.mean(per["confidence"], axis=0)
        for key in ("coords", "confidence", "probs"):
            if key in per:  # batch first: the result is split along `data`
                result[f"members/{key}"] = jnp.moveaxis(per[key], 0, 1)
        return result

    data = data_sharding(mesh)
    return jax.jit(
        eval_step,
        in_shardings=(replicated(mesh), data),
        out_shardings=data,
        compiler_options=xla_cpu.compiler_options(mesh),
    )


# ---------------------------------------------------------------- members' reports


def member_readings(out: Mapping[str, np.ndarray], task: TaskSpec, input_hw) -> dict[str, Any]:
    """`{"member/<k>": (coords [B, K, 2], confidence [B, K], None)}` at the model input
    from an ensemble eval step's host rows (empty for a single model); host
    extractors read each member's `members/probs` with `task`."""
    if "members/coords" in out:
        coords, conf = out["members/coords"], out["members/confidence"]
        return {f"{MEMBER}{k}": (coords[:, k], conf[:, k], None) for k in range(coords.shape[1])}
    if "members/probs" in out:
        probs = out["members/probs"]
        return {
            f"{MEMBER}{k}": (*host_coordinates(task, probs[:, k], input_hw)[:2], None)
            for k in range(probs.shape[1])
        }
    return {}


def member_report(readings: Mapping[str, Any], dataset, *, seed: int, thresholds) -> list[dict]:
    """Each member's `{member, seed, mre, median, p95, missed, sdr}` from the
    readings `member/<k>` (coordinates in the original frame); [] if there are none."""
    names = sorted(
        (n for n in readings if n.startswith(MEMBER)), key=lambda n: int(n[len(MEMBER) :])
    )
    rows = []
    for name in names:
        errors, unit = metrics_lib.radial_errors(
            readings[name][0], dataset.landmarks(), dataset.spacings()
        )
        s = metrics_lib.summarize(errors, unit=unit, thresholds=thresholds)
        k = int(name[len(MEMBER) :])
        rows.append(
            {
                "member": k,
                "seed": seed + k,
                **{key: s[key] for key in ("mre", "median", "p95", "missed")},
                "sdr": {f"{t:g}": s[metrics_lib.sdr_key(t)] for t in thresholds},
            }
        )
    return rows


def format_members(report: Mapping[str, Any]) -> str:
    """One line per member under the ensemble's, e.g. `member 0 (seed 0)  MRE ...`."""
    unit = report["unit"]
    lines = [f"ensemble of {len(report['members'])}  MRE {report['mre']:.3f} {unit}"]
    for m in report["members"]:
        sdr = "  ".join(f"SDR@{t}{unit} {v:.1f}%" for t, v in m["sdr"].items())
        lines.append(f"  member {m['member']} (seed {m['seed']})  MRE {m['mre']:.3f}  {sdr}")
    return "\n".join(lines)
