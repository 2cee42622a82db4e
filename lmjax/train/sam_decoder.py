"""SAM's mask decoder fine-tuned on cached image embeddings with box prompts: the
trainer of `task.mode = "sam_decoder"` (registered with `lmjax.train.trainers`).

The recipe (MedSAM's and the pelvis paper's, decoder only):
1. the frozen image encoder (`model.pretrained`, e.g. MedSAM converted with
   `lmjax convert`; random weights without one) embeds every image once; the
   embeddings are cached in bf16 (`lmjax.data.embedding_cache`);
2. each step takes `train.batch_size` images and `sam.prompts_per_image` visible
   items of each, prompts the decoder with their ground-truth boxes jittered in
   mm (`lmjax.train.sam_steps`) and minimises `task.losses` on mask token 0;
3. validation and `lmjax evaluate` prompt every visible item with its
   ground-truth box (oracle boxes) and report landmark errors in mm (soft and
   binary mask centroids, box centre) and outline/patch IoU at the original
   resolution (`lmjax.train.sam_eval`).

The workdir gets `config.json`, `landmarks.json`, checkpoints of the decoder
(best by validation mask IoU over every item) and, at the end,
`sam.safetensors`: the whole fine-tuned SAM in `segment_anything` names, which
`lmjax.models.sam_convert.load_sam` (and segment_anything) read.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from lmjax import configs
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import sam_eval, sam_steps
from lmjax.train.logs import RunLog
from lmjax.train.loop import TrainingError
from lmjax.train.sam_data import (
    build_sam,
    checkpointer,
    decoder_optimizer,
    decoder_state,
    embedding_cache,
    input_side,
    prompt_set,
    restore,
    weights_id,
)
from lmjax.train.setup import load_landmark_set, load_splits, save_landmark_set
from lmjax.train.trainers import Trainer, lazy, register_trainer

MODE = "sam_decoder"
_PROMPT_NAMES = {"jittered": "jittered GT", "oracle": "exact GT", "detector": "detector"}
EXPORT_FILE = "sam.safetensors"
REPORT_FILE = "eval.json"


def _check(config) -> None:
    if config.model.name != "sam":
        raise ValueError(f"task.mode {MODE!r} trains SAM; model.name is {config.model.name!r}")
    sam_steps.check_losses(config.task.losses)
    if config.sam.prompts_per_image < 1:
        raise ValueError(f"sam.prompts_per_image must be >= 1, got {config.sam.prompts_per_image}")
    # Checked here too, before the dataset is embedded (minutes for a ViT-B encoder).
    frame, known = config.sam.loss_frame, ", ".join(sam_steps.FRAMES)
    if frame not in sam_steps.FRAMES:
        raise ValueError(f"unknown sam.loss_frame {frame!r}; known: {known}")
    input_side(config)


def validate(config, predict, state, pset, dataset, prompts=("jittered",)) -> dict[str, Any]:
    """`sam_eval.score` for each prompt set in `prompts`, plus headlines from the first:
    `mre` (soft centroid), `iou` (mean outline/patch IoU) and `mask_iou` (mean IoU
    over every item, landmark discs included).

    Validation reads jittered boxes: with exact oracle boxes an empty mask's
    fallback, the box centre, is the answer itself. Checkpoints are ranked by
    `mask_iou`, never by MRE, which an empty mask (box-centre fallback) can win.
    """
    out: dict[str, Any] = {}
    for p in prompts:
        pred = sam_eval.predict_images(
            predict, state, pset, chunk=config.sam.eval_prompts, prompts=p,
            fraction=config.sam.jitter_fraction, seed=config.train.seed,
        )  # fmt: skip
        out[p] = sam_eval.score(pred, dataset)
    head = out[prompts[0]]
    lm = head.get("landmarks", {}).get("soft", {})
    out["mre"] = lm.get("mre", float("nan"))
    out["unit"] = lm.get("unit", "mm")
    out["iou"] = (head.get("regions") or {}).get("iou_mean")
    out["mask_iou"] = head.get("mask_iou")
    return out


def train(config, workdir, *, log=print, detect=None) -> dict[str, Any]:
    """Fine-tunes the decoder into `workdir` (resuming a run there); returns the last
    validation report.

    `detect(dataset, split) -> boxes [N, K, 4]` (original pixels, NaN where not
    found), the cascade's detector: its boxes then join the training prompts
    (`cascade.p_detector`) and are the validation prompts.
    """
    config = configs.resolve(config)
    _check(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log("resolved config:\n  " + configs.format_config(config).replace("\n", "\n  "))
    log(f"wrote {configs.save_json(config, workdir)}")
    train_ds, val_ds, _ = load_splits(config)
    save_landmark_set(workdir, train_ds.landmark_set)
    model, weights_id = build_sam(config, log=log)
    cache = embedding_cache(config, workdir, weights_id)
    train_set = prompt_set(train_ds, config, cache, model, log=log)
    val_set = prompt_set(val_ds, config, cache, model, log=log)
    prompts, p_detector = ("jittered",), 0.0
    if detect is not None:
        train_set = train_set.with_detector_boxes(detect(train_ds, "train"))
        val_set = val_set.with_detector_boxes(detect(val_ds, "val"))
        prompts, p_detector = ("detector",), config.cascade.p_detector
    tx = decoder_optimizer(config)
    graphdef, state = decoder_state(config, model, tx)
    k = min(config.sam.prompts_per_image, len(train_set.kinds))
    train_step = sam_steps.make_train_step(
        graphdef, tx, kinds=sam_eval.kind_ids(train_set.kinds), k=k,
        fraction=config.sam.jitter_fraction, losses=dict(config.task.losses),
        loss_kwargs={n: dict(v) for n, v in config.task.loss_kwargs.items()},
        loss_frame=config.sam.loss_frame, p_detector=p_detector,
        match_growth=config.cascade.match_growth,
    )  # fmt: skip
    predict = sam_steps.make_predict_step(graphdef)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(f"training the SAM mask decoder ({n_params:,} parameters) on {len(train_set)} images, "
        f"{k} prompts each; encoder frozen, embeddings cached")  # fmt: skip
    checkpoints = checkpointer(workdir, config)
    start = 0
    if checkpoints.latest_step() is not None:
        state, _, _, _ = checkpoints.restore(abstract_state=ckpt_lib.abstract_like(state))
        start = int(state.step)
        log(f"resumed from step {start} in {workdir}")
    history = RunLog(workdir, tensorboard=config.train.tensorboard)
    batch_size = config.train.batch_size
    report: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        for step in range(start + 1, config.train.steps + 1):
            # Image order depends on (seed, step) only, so a resumed run repeats it.
            rng = np.random.default_rng([config.train.seed, step])
            idx = rng.choice(len(train_set), batch_size, replace=len(train_set) < batch_size)
            state, metrics = train_step(state, train_set.batch(np.sort(idx)))
            last = step == config.train.steps
            if step % config.train.log_every == 0 or last:
                values = {n: float(v) for n, v in jax.device_get(metrics).items()}
                if values["skipped"] > 0 or not np.isfinite(values["loss"]):
                    raise TrainingError(
                        f"non-finite loss or gradient at step {step}; the last good "
                        f"checkpoint is step {checkpoints.latest_step()} in {workdir}"
                    )
                rate = config.train.log_every * batch_size * k / (time.perf_counter() - t0)
                log(f"step {step}/{config.train.steps}  loss {values['loss']:.4f}  "
                    f"dice {values['dice_score']:.3f}  {rate:.0f} prompts/s")  # fmt: skip
                history.write(step, "train", {**values, "prompts_per_s": rate})
                t0 = time.perf_counter()
            if step % config.train.eval_every == 0 or last:
                report = validate(config, predict, state, val_set, val_ds, prompts)
                iou, mask_iou = (
                    "-" if report[k] is None else f"{report[k]:.3f}" for k in ("iou", "mask_iou")
                )
                log(f"step {step}  val ({_PROMPT_NAMES[prompts[0]]} boxes) MRE {report['mre']:.3f} "
                    f"{report['unit']}  outline/patch IoU {iou}  "
                    f"mask IoU (all items) {mask_iou}")  # fmt: skip
                scalars = {k: report[k] or 0.0 for k in ("mre", "iou", "mask_iou")}
                history.write(step, "val", scalars)
                checkpoints.save(
                    step,
                    state,
                    data_state={"step": step},
                    config=config.to_dict(),
                    metrics={"val_mask_iou": report["mask_iou"] or 0.0, "val_mre": report["mre"]},
                )
    finally:
        checkpoints.wait()
        checkpoints.close()
        history.close()
    export(config, workdir, model, graphdef, state, log=log)
    return report


def export(config, workdir, model, graphdef, state, *, log=print) -> pathlib.Path:
    """Writes the whole SAM with the trained decoder as `segment_anything` safetensors."""
    from safetensors.numpy import save_file

    from lmjax.models.sam_convert import nnx_to_original

    view = nnx.merge(graphdef, state.params, state.model_state)
    nnx.update(model, nnx.state(view))
    path = pathlib.Path(workdir) / EXPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(nnx_to_original(model), str(tmp), metadata={"format": "segment_anything"})
    tmp.replace(path)
    log(f"wrote {path} (segment_anything layout)")
    return path


def evaluate_workdir(
    workdir, *, split=None, data_dir=None, ground_truth=None, log=print, detect=None
) -> dict[str, Any]:
    """`lmjax evaluate` of a SAM decoder run: oracle and jittered ground-truth boxes;
    with `detect` (a cascade's detector, `lmjax.train.cascade.detector`) its boxes
    first, and its detection report."""
    from lmjax.train.evaluation import dataset_for_split
    from lmjax.train.sam_data import embedding_cache as cache_for

    config, model, graphdef, state = restore(workdir)
    with config.unlocked():
        if data_dir is not None:
            config.data.data_dir = data_dir
        if ground_truth is not None:
            config.data.ground_truth = ground_truth
    name, dataset = dataset_for_split(config, split)
    trained = load_landmark_set(workdir, config)
    if dataset.landmark_set.names != trained.names:
        raise ValueError(
            f"the data's items ({', '.join(dataset.landmark_set.names[:4])}, ...) are not "
            f"the ones trained on ({', '.join(trained.names[:4])}, ...)"
        )
    cache = cache_for(config, workdir, weights_id(config))
    pset = prompt_set(dataset, config, cache, model, log=log)
    predict = sam_steps.make_predict_step(graphdef)
    prompts, extra = sam_eval.PROMPTS, {}
    described = {
        "oracle": "ground-truth boxes (the box around each item's drawn mask)",
        "jittered": "ground-truth boxes jittered as in training (fixed seed)",
    }
    if detect is not None:
        boxes = detect(dataset, name)
        pset = pset.with_detector_boxes(boxes)
        prompts = sam_eval.CASCADE_PROMPTS
        described = {"detector": f"the detector's per-class boxes ({detect.workdir})"} | described
        extra = {"detection": detect.report(boxes, dataset)}
    report = validate(config, predict, state, pset, dataset, prompts=prompts)
    report = {
        "split": name,
        "model": "sam",
        "task": config.task.mode,
        "checkpoint_step": int(state.step),
        "prompts": described,
        **extra,
        **report,
    }
    log(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    title = "cascade" if report.get("task") == "cascade" else "SAM decoder"
    lines = [f"{title} on {report['split']} (step {report['checkpoint_step']})"]
    if "detection" in report:
        from lmjax.detection_metrics import format_detection

        lines.append(format_detection(report["detection"]))
    for p in sam_eval.CASCADE_PROMPTS:
        if p not in report:
            continue
        r = report[p]
        for reading, s in r.get("landmarks", {}).items():
            miss = f" (missed {s['missed']})" if s["missed"] else ""
            lines.append(
                f"  {p:8s} landmarks {reading:10s} MRE {s['mre']:.3f} {s['unit']}{miss}  "
                f"median {s['median']:.3f}  SD {s['sd']:.3f}  SDR@2 {s['sdr'].get('2', 0):.1f}%"
                + (f", with misses {s['sdr_with_misses'].get('2', 0):.1f}%" if s["missed"] else "")
            )
        masks = [("landmark discs", r.get("landmark_masks"))]
        masks += [(kd, (r.get("regions") or {}).get(kd)) for kd in ("outlines", "patches")]
        for what, g in masks:
            if g and g["n"]:
                lines.append(
                    f"  {p:8s} {what:14s} IoU mean {g['iou_mean']:.3f}  "
                    f"median {g['iou_median']:.3f}  SD {g['iou_sd']:.3f}  (n {g['n']})"
                )
    return "\n".join(lines)


register_trainer(
    MODE,
    Trainer(
        train=train,
        evaluate=evaluate_workdir,
        benchmark=lazy("lmjax.sam_benchmark", "benchmark_sam"),
        format_benchmark=lazy("lmjax.sam_benchmark", "format_sam_benchmark"),
        compile_check=lazy("lmjax.sam_benchmark", "compile_check_sam"),
        format_compile_check=lazy("lmjax.sam_benchmark", "format_sam_compile_check"),
    ),
)

__all__ = ["MODE", "evaluate_workdir", "export", "restore", "train", "validate"]
