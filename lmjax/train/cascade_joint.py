"""The cascade's optional joint step: detector and SAM decoder trained end to end.

Not in the paper, where the stages are trained apart. One jitted step:
1. runs the detector on the batch's images and takes its detection loss;
2. maps each class's decoded top-1 box (differentiable in its values; which
   anchor or peak wins is a selection, so gradients flow through the winner
   only) into the SAM frame with the batch's `det_to_sam` affine, in jnp;
3. prompts the decoder with those boxes on the frozen, cached embeddings (items
   not found, or whose box is far from them, get jittered true boxes) and takes
   the mask losses;
4. minimises `L_det + lam * L_seg` over both models' parameters.

So segmentation error reaches box regression through the prompt encoder's Fourier
features. The detector runs in eval mode (batch statistics frozen) during joint
steps.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lmjax.task import loss_terms
from lmjax.train import sam_steps
from lmjax.train.state import merge

SAM_PREFIX = "sam_"


def boxes_through(boxes: jax.Array, matrices: jax.Array) -> jax.Array:
    """`(x0, y0, x1, y1)` boxes `[B, K, 4]` through per-image 3x3 affines `[B, 3, 3]`:
    the box around the four mapped corners; NaN stays NaN."""
    corners = jnp.stack(
        [boxes[..., [0, 1]], boxes[..., [2, 1]], boxes[..., [0, 3]], boxes[..., [2, 3]]], axis=-2
    )  # [B, K, 4, 2]
    a, t = matrices[:, None, None, :2, :2], matrices[:, None, None, :2, 2]
    moved = jnp.einsum("bkcij,bkcj->bkci", a, corners) + t
    return jnp.concatenate([moved.min(-2), moved.max(-2)], axis=-1)


def joint_loss(
    det_params,
    dec_params,
    det_state,
    dec_state,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    det_graphdef: nnx.GraphDef,
    dec_graphdef: nnx.GraphDef,
    task,
    lam: float,
    seg: Mapping[str, Any],
):
    """`(L_det + lam * L_seg, {"detection", "segmentation", "dice_score"})`.

    `batch`: the detector's keys (`image`, `landmarks`, `visible`, `item_size_px`,
    item geometry; its input frame), `det_to_sam` `[B, 3, 3]`, and the decoder's
    `PromptSet.batch` keys prefixed `sam_`. `seg`: `sam_steps.decoder_loss`'s
    keyword arguments (`kinds`, `k`, `fraction`, `losses`, `loss_kwargs`, ...).
    """
    detector = merge(det_graphdef, det_params, det_state, False, jnp.float32)
    outputs = detector(batch["image"])
    l_det = sum(task.losses[n] * jnp.mean(v) for n, v in loss_terms(task, outputs, batch).items())
    prompts = boxes_through(outputs["boxes"].astype(jnp.float32), batch["det_to_sam"])
    decoder = nnx.merge(dec_graphdef, dec_params, dec_state.model_state, copy=True)
    sam_batch = {k[len(SAM_PREFIX) :]: v for k, v in batch.items() if k.startswith(SAM_PREFIX)}
    l_seg, terms = sam_steps.decoder_loss(
        decoder, {**sam_batch, "detector_boxes": prompts}, key, p_detector=1.0, **seg
    )
    total = l_det + lam * l_seg
    return total, {"detection": l_det, "segmentation": l_seg, "dice_score": terms["dice_score"]}


def make_joint_step(
    det_graphdef: nnx.GraphDef,
    det_tx: optax.GradientTransformation,
    dec_graphdef: nnx.GraphDef,
    dec_tx: optax.GradientTransformation,
    *,
    task,
    lam: float = 1.0,
    **seg,
):
    """The jitted `step(det_state, dec_state, batch) -> (det_state, dec_state,
    metrics)` (states donated); each model keeps its own optimizer. A non-finite
    loss or gradient skips both updates and counts in `skipped`."""

    def step(det_state, dec_state, batch):
        key = jax.random.fold_in(dec_state.rng, dec_state.step)
        fn = lambda dp, cp: joint_loss(
            dp, cp, det_state, dec_state, batch, key, det_graphdef=det_graphdef,
            dec_graphdef=dec_graphdef, task=task, lam=lam, seg=seg,
        )  # fmt: skip
        (loss, terms), (g_det, g_dec) = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(
            det_state.params, dec_state.params
        )
        norm = optax.tree.norm((g_det, g_dec))
        ok = jnp.isfinite(loss) & jnp.isfinite(norm)

        def update(state, grads, tx):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            new = (optax.apply_updates(state.params, updates), opt_state)
            params, opt_state = jax.lax.cond(
                ok, lambda: new, lambda: (state.params, state.opt_state)
            )
            return state.replace(step=state.step + 1, params=params, opt_state=opt_state)

        metrics = {"loss": loss, "grad_norm": norm, "skipped": 1.0 - ok, **terms}
        metrics["detector_grad_norm"] = optax.tree.norm(g_det)
        metrics = {n: jnp.asarray(v, jnp.float32) for n, v in metrics.items()}
        return update(det_state, g_det, det_tx), update(dec_state, g_dec, dec_tx), metrics

    return jax.jit(step, donate_argnums=(0, 1))


JOINT_FOLDER = "joint"


def _detector_frame(det_config, dataset) -> dict[str, np.ndarray]:
    """Every record of `dataset` at the detector's input (no augmentation): the
    detection loss's keys and `to_original`, stacked in record order."""
    from lmjax.evaluate import eval_batches

    keys = ("image", "landmarks", "visible", "item_size_px", "item_vertices", "vertex_valid")
    rows: dict[str, list] = {}
    batches = eval_batches(
        dataset, tuple(det_config.data.input_size), det_config.train.batch_size,
        fit=det_config.data.fit, normalize=det_config.data.normalize,
    )  # fmt: skip
    order = []
    for batch in batches:
        ok = np.flatnonzero(batch["valid"])
        order += [int(i) for i in batch["index"][ok]]
        for key in (*keys, "to_original"):
            if key in batch:
                rows.setdefault(key, []).append(np.asarray(batch[key])[ok])
    inverse = np.argsort(order)
    return {k: np.concatenate(v)[inverse] for k, v in rows.items()}


def run_joint_stage(config, workdir, det_dir, *, log=print) -> pathlib.Path:
    """`cascade.joint_steps` joint steps from the staged cascade in `workdir` (its best
    decoder) and `det_dir` (its detector); writes a complete cascade run to
    `<workdir>/joint` (decoder checkpoint, and the joint detector in
    `<workdir>/joint/detector`), which evaluates and predicts like the staged one.
    Returns that folder."""
    from lmjax import configs
    from lmjax.ops.item_masks import kind_ids
    from lmjax.train import checkpoint as ckpt_lib
    from lmjax.train import sam_data
    from lmjax.train.cascade_predict import DETECTOR_FOLDER, STATE_FILE
    from lmjax.train.restore import read_config
    from lmjax.train.setup import build_state, load_landmark_set, load_splits, save_landmark_set

    out = pathlib.Path(workdir) / JOINT_FOLDER
    det_out = out / DETECTOR_FOLDER
    steps = config.cascade.joint_steps
    det_config = read_config(det_dir)
    lset = load_landmark_set(det_dir, det_config)
    det = build_state(det_config, lset.num_landmarks, lset, pretrained=False, log=lambda _: None)
    source = ckpt_lib.Checkpointer(det_dir, read_only=True)
    det_state = ckpt_lib.restore_state(source, det.state)
    _, model, dec_graphdef, dec_state = sam_data.restore(workdir)
    tx = sam_data.decoder_optimizer(config)
    train_ds, _, _ = load_splits(config)
    weights_id = sam_data.build_sam(config, log=lambda _: None)[1]
    cache = sam_data.embedding_cache(config, workdir, weights_id)
    pset = sam_data.prompt_set(train_ds, config, cache, model, log=log)
    frame = _detector_frame(det_config, train_ds)
    det_to_sam = np.stack(
        [
            np.linalg.inv(m) @ d
            for m, d in zip(pset.to_original, frame.pop("to_original"), strict=True)
        ]
    ).astype(np.float32)
    k_max = config.sam.prompts_per_image
    step_fn = make_joint_step(
        det.graphdef, det.tx, dec_graphdef, tx, task=det.task, lam=config.cascade.joint_weight,
        kinds=jnp.asarray(kind_ids(pset.kinds)), k=min(k_max, len(pset.kinds)),
        fraction=config.sam.jitter_fraction, losses=dict(config.task.losses),
        loss_kwargs={n: dict(v) for n, v in config.task.loss_kwargs.items()},
        loss_frame=config.sam.loss_frame, match_growth=config.cascade.match_growth,
    )  # fmt: skip
    log(f"joint stage: {steps} steps of detector and decoder end to end into {out}")
    for step in range(1, steps + 1):
        rng = np.random.default_rng([config.train.seed, 7, step])
        idx = np.sort(
            rng.choice(
                len(pset), config.train.batch_size, replace=len(pset) < config.train.batch_size
            )
        )
        batch = {k: v[idx] for k, v in frame.items()} | {"det_to_sam": det_to_sam[idx]}
        batch |= {f"{SAM_PREFIX}{k}": v for k, v in pset.batch(idx).items()}
        det_state, dec_state, metrics = step_fn(det_state, dec_state, batch)
        if step % config.train.log_every == 0 or step == steps:
            m = {n: float(v) for n, v in jax.device_get(metrics).items()}
            log(f"joint step {step}/{steps}  loss {m['loss']:.4f}  detection {m['detection']:.4f}  "
                f"segmentation {m['segmentation']:.4f}  skipped {m['skipped']:.0f}")  # fmt: skip
    for folder, cfg, state, ckpt in (
        (det_out, det_config, det_state, ckpt_lib.Checkpointer(det_out, max_to_keep=1)),
        (out, config, dec_state, sam_data.checkpointer(out, config)),
    ):
        folder.mkdir(parents=True, exist_ok=True)
        configs.save_json(cfg, folder)
        save_landmark_set(folder, lset)
        try:
            ckpt.save(int(state.step), state, data_state={"step": int(state.step)},
                      config=cfg.to_dict(), metrics={})  # fmt: skip
        finally:
            ckpt.wait()
            ckpt.close()
    (out / STATE_FILE).write_text(json.dumps({"detector": str(det_out.resolve())}, indent=2))
    return out


__all__ = ["boxes_through", "joint_loss", "make_joint_step", "run_joint_stage"]
