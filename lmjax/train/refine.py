"""Training of the refinement stage after a global model (`lmjax train` with
`refine.enabled`, or `lmjax refine --workdir` on any finished map-head run).

Patches are centred on the ground truth moved by a random offset whose spread per
landmark is the global model's own error on the validation split (its RMS times
`refine.jitter_scale`, at least `refine.jitter_min_mm`), so the local model trains
on the mistakes it will be asked to correct; rotation, scale, gamma, contrast and
noise are drawn per patch inside the jitted step. Validation refines the global
model's actual validation predictions, and the checkpoint with the lowest
refined validation MRE is kept. The test split is never read here.

The local model trains on one device (its batches are small); the checkpoint holds
its parameters only, so an interrupted refinement starts again from step 0.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax import metrics
from lmjax.data.fine_images import load_fine
from lmjax.ops import patches, targets
from lmjax.ops.map_losses import kl_heatmap_loss
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import refine_stage as stage
from lmjax.train.restore import read_config
from lmjax.train.setup import load_landmark_set, load_splits


def jitter_mm(spec: dict[str, Any], global_pred, dataset) -> np.ndarray:
    """Per-landmark offset sigma `[K]` (mm; pixels without spacing) of training patches."""
    k = dataset.landmark_set.num_landmarks
    if spec["jitter_mm"] >= 0:
        return np.full((k,), float(spec["jitter_mm"]), np.float32)
    errors, _ = metrics.radial_errors(global_pred, dataset.landmarks(), dataset.spacings())
    errors = np.where(np.isposinf(errors), np.nan, errors)  # a miss says nothing of spread
    with np.errstate(invalid="ignore"):
        rms = np.sqrt(np.nanmean(np.square(errors), axis=0))
    rms = np.where(np.isfinite(rms), rms, np.nanmean(rms) if np.isfinite(rms).any() else 1.0)
    # An isotropic 2-D Gaussian of sigma s per axis has an RMS radial error of s * sqrt(2).
    sigma = spec["jitter_scale"] * rms / math.sqrt(2)
    return np.maximum(sigma, spec["jitter_min_mm"]).astype(np.float32)


def make_step(graphdef, tx, spec: dict[str, Any]):
    """The jitted `(params, rest, opt_state, batch, key) -> (params, opt_state, loss)`."""
    size = spec["patch_size"]
    rot, scl, inten = math.radians(spec["rotation"]), spec["scale"], spec["intensity"]

    def loss_fn(params, rest, batch, key):
        ks = jax.random.split(key, 6)
        b, k = batch["landmarks"].shape[:2]
        gt = patches.apply_frames(batch["landmarks"], batch["to_fine"][:, None])
        gt = jnp.where(batch["visible"][..., None], gt, 0.0)
        centres = gt + jax.random.normal(ks[0], (b, k, 2)) * batch["sigma"][..., None]
        frames = patches.patch_frames(
            centres,
            size=size,
            step=batch["step"][:, None],
            angle=jax.random.uniform(ks[1], (b, k), minval=-rot, maxval=rot),
            scale=jax.random.uniform(ks[2], (b, k), minval=1 - scl, maxval=1 + scl),
        )
        cut = patches.extract_patches(batch["fine"], frames, size=size)
        # Gamma on the unit-range pixels, then contrast and brightness on the z-scores.
        shape = (b, k, 1, 1, 1)
        gamma = jnp.exp(jax.random.uniform(ks[3], shape, minval=-0.35, maxval=0.4))
        x = patches.normalize_patches(jnp.maximum(cut, 0.0) ** gamma)
        gain = jax.random.uniform(ks[4], (2, *shape), minval=-inten, maxval=inten)
        x = x * (1 + gain[0]) + gain[1]
        uv = patches.apply_frames(gt, patches.invert_frames(frames))
        heat = targets.gaussian_heatmaps(
            uv, shape=(size, size), sigma=spec["sigma"], visible=batch["visible"]
        )
        logits = stage.local_logits(graphdef, params, rest, x)
        return kl_heatmap_loss(logits, heat, visible=batch["visible"]).mean()

    def step(params, rest, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 2))


def _batches(fine, dataset, sigma_mm: np.ndarray, spec, rng: np.random.Generator):
    """Endless host batches of `refine.batch_size` random training images."""
    gt = dataset.landmarks().astype(np.float32)
    visible = np.array([r.visible for r in dataset.records], bool)
    # mm -> canvas pixels: one over the canvas's mm per pixel, or through the resize
    # scale when the spacing is unknown (then sigma is in original pixels).
    mm = fine.mm_per_pixel
    scale = np.where(
        np.isfinite(mm), 1.0 / np.nan_to_num(mm, nan=1.0), np.abs(fine.to_fine[:, 0, 0])
    )
    scale = scale.astype(np.float32)
    n, b = len(dataset.records), spec["batch_size"]
    while True:
        idx = rng.choice(n, size=b, replace=n < b)
        batch = fine.take(idx)
        batch["landmarks"] = np.nan_to_num(gt[idx])
        batch["visible"] = visible[idx]
        batch["sigma"] = sigma_mm[None, :] * scale[idx, None]
        yield batch


def _mre(pred, dataset) -> tuple[float, str]:
    errors, unit = metrics.radial_errors(pred, dataset.landmarks(), dataset.spacings())
    return metrics.summarize(errors, unit=unit)["mre"], unit


def train_refine(workdir, *, refine_config=None, log=print) -> dict[str, Any]:
    """Trains `<workdir>/refine` after the global model in `workdir`; returns its
    summary (also in `refine/refine.json`): validation MRE before and after."""
    from lmjax.train.final_model import load_final

    started = time.time()
    config = read_config(workdir)
    spec = stage.spec_of(refine_config if refine_config is not None else config.refine)
    lset = load_landmark_set(workdir, config)
    train_ds, val_ds, _ = load_splits(config)
    cache_dir = config.data.cache_dir or str(pathlib.Path(workdir) / "cache")
    global_model = load_final(workdir, refine=False)
    val_global, _ = global_model.predict(val_ds)
    before, unit = _mre(val_global, val_ds)
    sigma = jitter_mm(spec, val_global, val_ds)
    log(
        f"refinement: global validation MRE {before:.3f} {unit}; patch jitter sigma "
        f"{sigma.min():.2f}-{sigma.max():.2f} {unit}"
    )
    fine_train = load_fine(train_ds.records, spec["spacing_mm"], cache_dir=cache_dir)
    fine_val = load_fine(val_ds.records, spec["spacing_mm"], cache_dir=cache_dir)
    model = stage.build_local_model(spec, lset.num_landmarks, seed=spec["seed"])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = stage.make_optimizer(spec)
    opt_state = tx.init(params)
    step_fn = make_step(graphdef, tx, spec)
    batches = _batches(fine_train, train_ds, sigma, spec, np.random.default_rng(spec["seed"]))
    key = jax.random.key(spec["seed"])
    out_dir = stage.stage_dir(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best = (math.inf, 0)
    history = []
    with ckpt_lib.Checkpointer(out_dir, max_to_keep=1) as checkpoints:
        for i in range(1, spec["steps"] + 1):
            params, opt_state, loss = step_fn(
                params, rest, opt_state, next(batches), jax.random.fold_in(key, i)
            )
            if i % spec["eval_every"] and i != spec["steps"]:
                continue
            refine = stage.RefineStage(spec, graphdef, params, rest, batch_size=spec["batch_size"])
            val_refined, _ = refine(val_ds, val_global, fine=fine_val)
            mre, _ = _mre(val_refined, val_ds)
            history.append({"step": i, "loss": float(loss), "val_mre": mre})
            log(f"refine step {i}: loss {float(loss):.4f}  validation MRE {mre:.3f} {unit}")
            if mre < best[0]:
                best = (mre, i)
            checkpoints.save(
                i,
                {"params": params, "rest": rest},
                data_state={},
                config={"refine": spec},
                metrics={"val_mre": mre},
            )
        checkpoints.wait()
    summary = {
        "refine": spec,
        "jitter_mm": [round(float(s), 4) for s in sigma],
        "unit": unit,
        "val_mre_global": before,
        "val_mre_refined": best[0],
        "best_step": best[1],
        "history": history,
        "seconds": round(time.time() - started, 1),
    }
    (out_dir / stage.SPEC_FILE).write_text(json.dumps(summary, indent=2))
    log(
        f"refinement: validation MRE {before:.3f} -> {best[0]:.3f} {unit} (step {best[1]}); "
        f"{summary['seconds']:.0f} s; {out_dir}"
    )
    return summary


__all__ = ["jitter_mm", "make_step", "train_refine"]
