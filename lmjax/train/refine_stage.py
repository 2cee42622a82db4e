"""The refinement stage as it predicts: a local model on fine patches around each
global estimate, its answer mapped back to original pixels.

A run's refinement lives in `<workdir>/refine/`: `refine.json` (the `refine`
config it was trained with, the per-landmark jitter and its validation numbers)
and Orbax checkpoints of the local model. One small U-Net serves every landmark:
it sees each landmark's patch and has one output channel per landmark, of which
patch k reads channel k. Patches are cut on the device from the image at
`refine.spacing_mm` (`lmjax.data.fine_images`) by one gather per batch
(`lmjax.ops.patches`); the whole refinement of a batch, every pass, is one jitted
program. Training is in `lmjax.train.refine`; this module never imports it.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lmjax.data.fine_images import load_fine
from lmjax.data.types import Dataset, LandmarkSet
from lmjax.models import build_model
from lmjax.ops import extractors, patches

STAGE_DIR = "refine"
SPEC_FILE = "refine.json"


def stage_dir(workdir) -> pathlib.Path:
    return pathlib.Path(workdir) / STAGE_DIR


def has_stage(workdir) -> bool:
    """Whether `workdir` holds a trained refinement stage."""
    from lmjax.train import checkpoint as ckpt_lib

    d = stage_dir(workdir)
    return (d / SPEC_FILE).is_file() and ckpt_lib.has_checkpoint(d)


def spec_of(refine_config) -> dict[str, Any]:
    """The `refine` config section as a plain dict, checked."""
    spec = dict(refine_config)
    if spec["patch_size"] < 8 or spec["patch_size"] % 2 ** (spec["num_levels"] - 1):
        raise ValueError(
            f"refine.patch_size {spec['patch_size']} must be at least 8 and divisible by "
            f"2**(refine.num_levels - 1) = {2 ** (spec['num_levels'] - 1)}"
        )
    if spec["passes"] < 1:
        raise ValueError(f"refine.passes must be at least 1, got {spec['passes']}")
    if not spec["spacing_mm"] > 0:
        raise ValueError(f"refine.spacing_mm must be positive, got {spec['spacing_mm']}")
    return spec


def build_local_model(spec: dict[str, Any], num_landmarks: int, seed: int = 0) -> nnx.Module:
    """The shared local U-Net: `[N, P, P, 1]` patches -> `[N, P, P, K]` logits."""
    p = spec["patch_size"]
    return build_model(
        "unet",
        num_outputs=num_landmarks,
        input_size=(p, p),
        in_channels=1,
        features=spec["features"],
        num_levels=spec["num_levels"],
        upsample="resize",
        deep_supervision=False,
        rngs=nnx.Rngs(seed),
    )


def make_optimizer(spec: dict[str, Any]) -> optax.GradientTransformation:
    steps = max(1, spec["steps"])
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, spec["learning_rate"], min(100, steps // 10 + 1), steps, spec["learning_rate"] * 0.01
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def window(spec: dict[str, Any]) -> int:
    """Side of the soft-argmax window: +-3 target sigmas, odd."""
    return 2 * math.ceil(3 * spec["sigma"]) + 1


def local_logits(graphdef, params, rest, patch_batch: jax.Array) -> jax.Array:
    """`[N, K, P, P, 1]` normalised patches -> `[N, P, P, K]`: patch k's channel k."""
    n, k, p = patch_batch.shape[:3]
    model = nnx.merge(graphdef, params, rest, copy=True)
    out = model(patch_batch.reshape(n * k, p, p, 1))["heatmaps"].reshape(n, k, p, p, -1)
    return jnp.einsum("nkhwj,kj->nhwk", out, jnp.eye(k, dtype=out.dtype))


def patch_frames_for(batch: dict[str, jax.Array], centres: jax.Array, size: int, **aug):
    """Frames (in canvas pixels) of patches centred on `centres` `[N, K, 2]` (original px)."""
    to_fine = batch["to_fine"][:, None]  # [N, 1, 3, 3]
    c = patches.apply_frames(centres, to_fine)
    return patches.patch_frames(c, size=size, step=batch["step"][:, None], **aug)


def refine_points(
    graphdef, params, rest, batch: dict[str, jax.Array], centres: jax.Array, spec: dict[str, Any]
) -> tuple[jax.Array, jax.Array]:
    """Every pass of the refinement of `centres` `[N, K, 2]` (original pixels).

    Returns:
      `(coords [N, K, 2] original pixels, confidence [N, K])`: the peak probability
      of the last pass's patch; NaN centres stay NaN.
    """
    size = spec["patch_size"]
    missing = ~jnp.isfinite(centres).all(-1)
    coords = jnp.where(missing[..., None], 0.0, centres)
    back = patches.invert_frames(batch["to_fine"])[:, None]
    conf = jnp.zeros(coords.shape[:2])
    for _ in range(spec["passes"]):
        frames = patch_frames_for(batch, coords, size)
        cut = patches.extract_patches(batch["fine"], frames, size=size)
        logits = local_logits(graphdef, params, rest, patches.normalize_patches(cut))
        uv, _ = extractors.local_soft_argmax(logits, window=window(spec), temperature=1.0)
        conf = jnp.max(jax.nn.softmax(logits.reshape(logits.shape[0], -1, logits.shape[-1]), 1), 1)
        coords = patches.apply_frames(patches.apply_frames(uv, frames), back)
    return jnp.where(missing[..., None], jnp.nan, coords), jnp.where(missing, 0.0, conf)


class RefineStage:
    """A trained refinement: `stage(dataset, coords)` refines global coordinates."""

    def __init__(self, spec, graphdef, params, rest, *, cache_dir=None, batch_size=8):
        self.spec, self.graphdef = spec, graphdef
        self.params, self.rest = params, rest
        self.cache_dir, self.batch_size = cache_dir, batch_size
        self._run = jax.jit(
            lambda params, rest, batch, centres: refine_points(
                graphdef, params, rest, batch, centres, spec
            )
        )

    def __call__(self, dataset: Dataset, coords: np.ndarray, fine=None):
        """`(coords, confidence)` refined from `coords` `[N, K, 2]` (original pixels).
        `fine`: the dataset's `FineImages` when the caller has them (training)."""
        records, n, b = dataset.records, len(dataset.records), self.batch_size
        coords = np.asarray(coords, np.float32)
        out = np.full(coords.shape, np.nan, np.float32)
        conf = np.zeros(coords.shape[:2], np.float32)
        for s in range(0, n, b):
            idx = np.arange(s, min(s + b, n))
            pad = np.minimum(np.arange(s, s + b), n - 1)  # one shape: last row repeated
            if fine is None:
                rows = load_fine(
                    records[s : s + b], self.spec["spacing_mm"], cache_dir=self.cache_dir
                )
                take = pad - s
            else:
                rows, take = fine, pad
            got, c = self._run(self.params, self.rest, rows.take(take), coords[pad])
            out[idx], conf[idx] = np.asarray(got)[: len(idx)], np.asarray(c)[: len(idx)]
        return out, conf

    def wrap(self, predict_global: Callable[..., tuple[np.ndarray, np.ndarray]]):
        """A `predict(dataset, batch_size=None)` that refines `predict_global`'s answer."""

        def predict(dataset: Dataset, batch_size: int | None = None):
            coords, _ = predict_global(dataset, batch_size)
            return self(dataset, coords)

        return predict

    def fused(self, eval_step, state, mesh, config):
        """A `predict(dataset, batch_size=None)` running the global eval step, the map
        to original pixels and every refinement pass as one jitted program per batch.

        For global models whose eval step gives coordinates on the device (not a
        host extractor), without test-time augmentation, in one process; `load_final`
        composes the stages otherwise (two programs per batch, the same numbers).
        """
        from lmjax import parallel
        from lmjax.evaluate import eval_batches

        spec, graphdef = self.spec, self.graphdef

        from lmjax import xla_cpu

        # The eval step's own function: a nested jit may not carry compile options.
        step = getattr(eval_step, "__wrapped__", eval_step)

        def program(state, params, rest, images, to_original, fine):
            out = step(state, {"image": images})
            centres = patches.apply_frames(out["coords"], to_original[:, None])
            return refine_points(graphdef, params, rest, fine, centres, spec)

        run = jax.jit(program, compiler_options=xla_cpu.compiler_options(mesh))

        def predict(dataset: Dataset, batch_size: int | None = None):
            n, k = len(dataset.records), dataset.landmark_set.num_landmarks
            coords = np.full((n, k, 2), np.nan, np.float32)
            conf = np.zeros((n, k), np.float32)
            batches = eval_batches(
                dataset,
                tuple(config.data.input_size),
                batch_size or config.train.batch_size,
                fit=config.data.fit,
                normalize=config.data.normalize,
            )
            for batch in batches:
                index = np.asarray(batch["index"])
                valid = np.asarray(batch["valid"], bool)
                fine = load_fine(
                    [dataset.records[i] for i in index],
                    spec["spacing_mm"],
                    cache_dir=self.cache_dir,
                )
                images = parallel.shard_batch({"image": batch["image"].astype(np.float32)}, mesh)
                got, c = run(
                    state,
                    self.params,
                    self.rest,
                    images["image"],
                    np.asarray(batch["to_original"], np.float32),
                    fine.take(np.arange(len(index))),
                )
                coords[index[valid]] = np.asarray(got)[valid]
                conf[index[valid]] = np.asarray(c)[valid]
            return coords, conf

        return predict


def read_spec(workdir) -> dict[str, Any]:
    return json.loads((stage_dir(workdir) / SPEC_FILE).read_text())


def load(workdir, config, landmark_set: LandmarkSet) -> RefineStage:
    """The refinement stage of `workdir` (its best checkpoint)."""
    from lmjax.train import checkpoint as ckpt_lib

    saved = read_spec(workdir)
    spec = spec_of(saved["refine"])
    graphdef, params, rest = nnx.split(
        build_local_model(spec, landmark_set.num_landmarks), nnx.Param, ...
    )
    like = {"params": params, "rest": rest}
    checkpoints = ckpt_lib.Checkpointer(stage_dir(workdir), read_only=True)
    state = ckpt_lib.restore_state(checkpoints, like)
    cache_dir = config.data.cache_dir or None
    return RefineStage(spec, graphdef, state["params"], state["rest"], cache_dir=cache_dir)


__all__ = [
    "RefineStage",
    "build_local_model",
    "has_stage",
    "load",
    "refine_points",
    "spec_of",
    "stage_dir",
]
