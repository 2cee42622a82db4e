"""The training loop: one readable pass through mesh, input, model, steps, evaluation.

Validation uses `lmjax.evaluate`, the code of `lmjax evaluate`, so the numbers
in the log are the numbers a user gets later. Metrics are fetched from the
device only every `log_every` steps.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from lmjax import evaluate as evaluation
from lmjax import models, parallel
from lmjax.data.datasets import load_dataset
from lmjax.data.device_augment import DeviceAugment
from lmjax.data.pipeline import make_pipeline, region_flip_table, resolve_augment
from lmjax.data.types import Dataset, LandmarkSet
from lmjax.models import weights
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import folds
from lmjax.train.logs import RunLog
from lmjax.train.optim import OptimConfig, ReduceOnPlateau, make_optimizer
from lmjax.train.step import (
    TaskSpec,
    create_train_state,
    host_coordinates,
    make_eval_step,
    make_train_step,
    set_lr_scale,
)

DEVICE_KEYS = ("image", "landmarks", "visible", "valid")
REGION_KEYS = ("region_mask",)  # shipped only when the task's losses read them
NORM_KEYS = ("pixel_norm",)  # shipped when the step augments (and then normalises)
LANDMARKS_FILE = "landmarks.json"
_PLATEAU_FIELDS = ("scale", "best", "num_bad", "cooldown_left")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, ...); the message says where."""


# ---------------------------------------------------------------- data


def load_config_dataset(config) -> Dataset:
    """Every record of the dataset `config.data` names (the phantom when no folder)."""
    d = config.data
    return load_dataset(
        d.data_dir or None,
        format=d.format or None,
        ground_truth=d.ground_truth,
        phantom_size=d.phantom_size,
        seed=config.train.seed,
    )


def load_splits(config) -> tuple[Dataset, Dataset, Dataset | None]:
    """Train, validation and (when present) test datasets from the config."""
    d = config.data
    ds = load_config_dataset(config)
    if not ds.records:
        raise ValueError(f"{d.data_dir or 'phantom'}: no usable records; {ds.errors[:3]}")
    splits = {r.split for r in ds.records}
    train = ds.split(d.train_split) if d.train_split in splits else ds
    test = ds.split(d.test_split) if d.test_split in splits else None
    cv = folds.cv_enabled(config)
    if cv:  # the held-out fold is the test set; validation comes from the rest
        keep, out = folds.held_out(train.records, config)
        train, test = (dataclasses.replace(train, records=r) for r in (keep, out))
    if d.val_split in splits and not cv:
        val = ds.split(d.val_split)
    else:  # hold out a deterministic part of the training records
        n_val = max(1, int(round(len(train.records) * d.val_fraction)))
        order = np.random.default_rng(config.train.seed).permutation(len(train.records))
        held = set(order[:n_val].tolist())
        val = dataclasses.replace(train, records=[train.records[i] for i in sorted(held)])
        train = dataclasses.replace(
            train, records=[r for i, r in enumerate(train.records) if i not in held]
        )
    return train, val, test


def device_keys(task: TaskSpec, *, augment_on_device: bool = False) -> tuple[str, ...]:
    """The batch entries the train step reads: `DEVICE_KEYS`, plus `REGION_KEYS` if
    needed, plus `NORM_KEYS` when the step augments."""
    return (
        DEVICE_KEYS
        + (REGION_KEYS if task.needs_region_mask else ())
        + (NORM_KEYS if augment_on_device else ())
    )


def augments_on_device(config) -> bool:
    """Whether the train step, not the host pipeline, augments (`config.data.augment`
    set and `config.data.augment_on_device`)."""
    return bool(config.data.get("augment_on_device", False)) and bool(config.data.augment)


def device_augment(config, landmark_set: LandmarkSet | None) -> DeviceAugment | None:
    """The step's augmentation for `config.data.augment`, or None when the host augments.

    A preset means what it means on the host (`resolve_augment`); flips swap the
    landmark set's pairs and relabel its regions.

    Raises:
      ValueError: flips without a landmark set (or one without pairs), or an
        elastic deformation, which only the host pipeline does.
    """
    if not augments_on_device(config):
        return None
    pairs = () if landmark_set is None else landmark_set.flip_pairs
    cfg = resolve_augment(config.data.augment, pairs)
    perm = table = None
    if cfg.flips:
        if landmark_set is None:
            raise ValueError("device augmentation with flips needs the landmark set")
        perm, table = landmark_set.flip_permutation(), region_flip_table(landmark_set)
    return DeviceAugment(cfg, flip_permutation=perm, region_table=table)


def make_train_pipeline(config, dataset: Dataset, *, cache_dir: str | None):
    """The training batch iterator exactly as `train` reads it (`lmjax benchmark` too).

    This process's share of `config.train.batch_size`. With device augmentation
    (`augments_on_device`) the host only decodes, fits and batches, and leaves the
    normalisation to the step (`pixel_norm`), which augments first.
    """
    on_device = augments_on_device(config)
    return make_pipeline(
        dataset,
        input_size=tuple(config.data.input_size),
        batch_size=config.train.batch_size // jax.process_count(),
        augment=None if on_device else (config.data.augment or None),
        seed=config.train.seed,
        cache_dir=cache_dir,
        fit=config.data.fit,
        normalize=config.data.normalize,
        num_threads=config.data.num_threads,
        defer_normalize=on_device,
    )


def task_spec(config, landmark_regions: tuple[int, ...] | None = None) -> TaskSpec:
    """The TaskSpec of `config.task`; `landmark_regions` (the landmark set's) unless the
    config names them (`config.task.landmark_regions`)."""
    t = config.task
    regions = t.get("landmark_regions", None) or landmark_regions
    extractor_kwargs = dict(t.get("extractor_kwargs", None) or {})
    if t.extractor in ("soft_argmax", "local_soft_argmax"):
        extractor_kwargs.setdefault("temperature", t.extractor_temperature)
    return TaskSpec(
        mode=t.mode,
        target=t.target,
        sigma=t.sigma,
        radius=t.radius,
        side=t.side,
        losses=dict(t.losses),
        extractor=t.extractor,
        extractor_kwargs=extractor_kwargs,
        deep_supervision=t.deep_supervision,
        compute_dtype=t.compute_dtype,
        loss_kwargs={k: dict(v) for k, v in (t.get("loss_kwargs", None) or {}).items()},
        landmark_regions=None if regions is None else tuple(regions),
        consistency_regions=t.get("consistency_regions", "predicted"),
    )


def build(
    config,
    num_landmarks: int,
    landmark_set: LandmarkSet | None = None,
    *,
    pretrained: bool = True,
    log=print,
):
    """Model, optimizer, state and compiled steps on a mesh of all devices.

    `landmark_set` gives region losses their `landmark_regions` and, when the task
    needs a segmentation output and `config.model` does not set `num_regions`, the
    model its `num_regions`.

    `config.model.trainable` ("all" | "lora_and_head") and `config.optim.layer_decay`
    shape the optimizer: frozen parameters get no updates, and a model that numbers
    its layers (`layer_index`, `num_layers`, e.g. vit_pose) gets per-layer rates.

    With `config.data.augment_on_device` the train step augments each batch first
    (`device_augment`; flips need `landmark_set`); the eval step never augments.

    `config.model.pretrained` (a checkpoint file; "" for none), `pretrained_table`,
    `pretrained_strict` and `pretrained_ignore` load weights into the new model (see
    `lmjax.models.weights`; the summary goes to `log`) unless `pretrained` is False.
    """
    from lmjax.train.optim import layer_decay_scales

    mesh = parallel.make_mesh()
    trainable = config.model.get("trainable", "all")
    skip = ("name", "trainable", *weights.CONFIG_KEYS)
    kwargs = {k: v for k, v in config.model.to_dict().items() if k not in skip}
    if config.task.compute_dtype == "bfloat16":
        kwargs.setdefault("dtype", jax.numpy.bfloat16)
    task = task_spec(config, None if landmark_set is None else landmark_set.regions)
    if task.needs_segmentation and "num_regions" not in kwargs:
        if landmark_set is None or not landmark_set.num_regions:
            raise ValueError(
                f"losses {', '.join(task.losses)} need a segmentation output, but the "
                "landmark set declares no regions; set config.model.num_regions"
            )
        kwargs["num_regions"] = landmark_set.num_regions
    model = models.build_model(
        config.model.name,
        num_outputs=num_landmarks,
        input_size=tuple(config.data.input_size),
        in_channels=1,
        rngs=nnx.Rngs(config.train.seed),
        **kwargs,
    )
    if pretrained:
        weights.load_from_config(model, config.model, log=log)
    optim = OptimConfig.from_any({**config.optim.to_dict(), "total_steps": config.train.steps})
    lr_scale = None
    if optim.layer_decay is not None:
        if not hasattr(model, "layer_index"):
            raise ValueError(
                f"optim.layer_decay: model {config.model.name!r} has no layer numbering"
            )
        lr_scale = layer_decay_scales(model.layer_index, model.num_layers, optim.layer_decay)
    paths = models.lora.trainable_paths(model, trainable)
    tx, schedule = make_optimizer(
        optim, lr_scale=lr_scale, trainable=None if paths is None else paths.__contains__
    )
    graphdef, state = create_train_state(model, tx, config.train.seed, mesh=mesh)
    augment = device_augment(config, landmark_set)
    train_step = make_train_step(
        graphdef,
        task,
        tx,
        mesh,
        schedule=schedule,
        augment=augment,
        trainable=None if paths is None else paths.__contains__,
    )
    eval_step = make_eval_step(graphdef, task, mesh)
    return mesh, state, train_step, eval_step, optim


def predictor(eval_step, mesh, state_ref: list, task: TaskSpec | None = None):
    """`images -> (coords, confidence)` at the model input, through the eval step.

    `images` are this process's rows of the batch (see `parallel.shard_batch`); so
    are the predictions. With several processes every process must call it at the
    same time with the same number of images.
    `task` is needed when its extractor runs on the host (the step returns maps).
    """

    def predict(images: np.ndarray):
        batch = parallel.shard_batch({"image": images.astype(np.float32)}, mesh)
        out = parallel.host_rows(eval_step(state_ref[0], batch), mesh)
        if "probs" in out:
            if task is None:
                raise ValueError("a host extractor needs the TaskSpec in predictor()")
            return host_coordinates(task, out["probs"], images.shape[1:3])
        return out["coords"], out["confidence"]

    return predict


def evaluate_state(config, eval_step, mesh, state, dataset: Dataset, *, cache_dir=None):
    """`(report, coords, confidence)` on `dataset`; with several processes every
    process calls it and gets the same result (each predicts a share, see
    `evaluation.predict_dataset`)."""
    predict = predictor(eval_step, mesh, [state], task_spec(config))
    if config.train.flip_tta and dataset.landmark_set.flip_pairs:
        predict = evaluation.with_flip_tta(predict, dataset.landmark_set.flip_permutation())
    coords, conf = evaluation.predict_dataset(
        predict,
        dataset,
        input_size=tuple(config.data.input_size),
        # per process: the global evaluation batch is the training batch
        batch_size=config.train.batch_size // jax.process_count(),
        fit=config.data.fit,
        normalize=config.data.normalize,
        cache_dir=cache_dir,
    )
    return evaluation.error_report(coords, dataset), coords, conf


def segmentation_report(config, eval_step, mesh, state, dataset: Dataset, *, cache_dir=None):
    """IoU and Dice of a segmentation model's landmark masks on `dataset`
    (`evaluation.segmentation_overlap`), or None when the task does not segment
    landmarks or the model has no masks."""
    if config.task.mode != "segmentation":
        return None
    keys = ("image", "landmarks", "visible")

    def overlap(batch):
        device_batch = parallel.shard_batch({k: batch[k] for k in keys}, mesh)
        return parallel.host_rows(eval_step(state, device_batch), mesh).get("overlap")

    return evaluation.segmentation_overlap(
        overlap,
        dataset,
        input_size=tuple(config.data.input_size),
        batch_size=config.train.batch_size // jax.process_count(),
        fit=config.data.fit,
        normalize=config.data.normalize,
        cache_dir=cache_dir,
    )


def save_landmark_set(workdir: pathlib.Path, landmark_set: LandmarkSet) -> None:
    """`landmarks.json`: what the outputs mean, so inference never reads training data."""
    if jax.process_index() != 0:  # one writer in a multi-process run
        return
    path = pathlib.Path(workdir) / LANDMARKS_FILE
    path.write_text(json.dumps(dataclasses.asdict(landmark_set), indent=1) + "\n")


def load_landmark_set(workdir: str | pathlib.Path, config=None) -> LandmarkSet:
    """The landmark set a workdir was trained on (from its training data if unsaved)."""
    path = pathlib.Path(workdir) / LANDMARKS_FILE
    if path.exists():
        raw = json.loads(path.read_text())
        return LandmarkSet(
            name=raw["name"],
            names=tuple(raw["names"]),
            flip_pairs=tuple(tuple(p) for p in raw["flip_pairs"]),
            regions=None if raw["regions"] is None else tuple(raw["regions"]),
            region_names=tuple(raw["region_names"]),
        )
    if config is None:
        raise FileNotFoundError(f"{path}: missing")
    return load_splits(config)[0].landmark_set


# ---------------------------------------------------------------- the loop


def check_region_masks(dataset, shipped: tuple[str, ...], losses) -> None:
    """Raises ValueError if the step reads region masks and `dataset` has none."""
    if set(REGION_KEYS) & set(shipped) and dataset.records[0].region_mask is None:
        raise ValueError(
            f"losses {', '.join(losses)} need region masks; dataset {dataset.name!r} has none"
        )


def train(config, workdir: str | pathlib.Path, *, log=print) -> dict[str, Any]:
    """Trains (or resumes) into `workdir`; returns the final validation report.

    On SIGTERM the current step is checkpointed and the report carries
    `stopped_by: "SIGTERM"`.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = config.data.cache_dir or str(workdir / "cache")
    train_ds, val_ds, _ = load_splits(config)
    k = train_ds.landmark_set.num_landmarks
    save_landmark_set(workdir, train_ds.landmark_set)
    mesh, state, train_step, eval_step, optim = build(config, k, train_ds.landmark_set, log=log)
    shipped = device_keys(task_spec(config), augment_on_device=augments_on_device(config))
    check_region_masks(train_ds, shipped, config.task.losses)
    jax.set_mesh(mesh)
    batches = make_train_pipeline(config, train_ds, cache_dir=cache_dir)
    plateau = ReduceOnPlateau.from_config(optim)
    checkpoints = ckpt_lib.Checkpointer(workdir, max_to_keep=config.train.keep)
    start = 0
    if checkpoints.latest_step() is not None:
        state, data_state, _, metrics = checkpoints.restore(
            abstract_state=ckpt_lib.abstract_like(state)
        )
        batches.set_state(data_state)
        for key in _PLATEAU_FIELDS:
            if metrics and f"plateau_{key}" in metrics:
                setattr(plateau, key, type(getattr(plateau, key))(metrics[f"plateau_{key}"]))
        start = int(state.step)
        log(f"resumed from step {start} in {workdir}")

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(signal="SIGTERM"))
    history = RunLog(workdir, tensorboard=config.train.get("tensorboard", True))
    report: dict[str, Any] = {}
    try:
        t0, seen, skipped = time.perf_counter(), 0, None
        for step in range(start + 1, config.train.steps + 1):
            batch = next(batches)
            device_batch = parallel.shard_batch({k: batch[k] for k in shipped}, mesh)
            state, metrics = train_step(state, device_batch)
            skipped = metrics["skipped"] if skipped is None else skipped + metrics["skipped"]
            seen += config.train.batch_size
            last = step == config.train.steps
            stopping = stop["signal"] is not None
            if jax.process_count() > 1:
                # SIGTERM reaches the processes at different steps, but they have to stop
                # at the same one (evaluation and checkpointing are collective); they
                # agree at log steps, so that the other steps stay free of host syncs.
                at_log = step % config.train.log_every == 0 or last
                stopping = at_log and parallel.any_process(stopping)
            if step % config.train.log_every == 0 or last or stopping:
                values = {name: float(v) for name, v in jax.device_get(metrics).items()}
                if float(skipped) > 0 or not np.isfinite(values["loss"]):
                    raise TrainingError(
                        f"non-finite loss or gradient at or before step {step} "
                        f"(loss {values['loss']}); the last good checkpoint is "
                        f"step {checkpoints.latest_step()} in {workdir}"
                    )
                rate = seen / (time.perf_counter() - t0)
                eta = (config.train.steps - step) * config.train.batch_size / rate
                log(
                    f"step {step}/{config.train.steps}  loss {values['loss']:.5f}  "
                    f"{rate:.1f} img/s  eta {eta:.0f}s"
                )
                history.write(step, "train", {**values, "images_per_s": rate})
                t0, seen = time.perf_counter(), 0
            if step % config.train.eval_every == 0 or last or stopping:
                report, _, _ = evaluate_state(
                    config, eval_step, mesh, state, val_ds, cache_dir=cache_dir
                )
                scale = plateau.update(report["mre"])
                state = set_lr_scale(state, scale, mesh)
                log(
                    f"step {step}  val MRE {report['mre']:.3f} {report['unit']}  "
                    f"SDR@2 {report['sdr']['2']:.1f}%  lr scale {scale:g}"
                )
                keys = ("mre", "sd", "median", "p95", "sdr", "unit")
                history.write(step, "val", {key: report[key] for key in keys})
                checkpoints.save(
                    step,
                    state,
                    data_state=batches.get_state(),
                    config=config.to_dict(),
                    metrics={
                        "val_mre": report["mre"],
                        **{f"plateau_{key}": getattr(plateau, key) for key in _PLATEAU_FIELDS},
                    },
                )
            if stopping:
                why = stop["signal"] or "SIGTERM"  # or another process's signal
                log(f"{why}: saved step {step} in {workdir}; exiting")
                report["stopped_by"] = why
                break
    finally:
        checkpoints.wait()
        checkpoints.close()
        history.close()
        signal.signal(signal.SIGTERM, previous)
    return report


def restore_trained(workdir: str | pathlib.Path, *, which: str = "best"):
    """`(config, mesh, state, eval_step)` from a workdir's best (or latest) checkpoint.

    Raises:
      FileNotFoundError: the workdir has no checkpoint (one line, for the CLI).
    """
    import ml_collections

    saved = ckpt_lib.restore_config(workdir)
    if saved is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint found; train with lmjax train first")
    config = ml_collections.ConfigDict(saved)
    landmark_set = load_landmark_set(workdir, config)
    mesh, state, _, eval_step, _ = build(
        config, landmark_set.num_landmarks, landmark_set, pretrained=False
    )
    checkpoints = ckpt_lib.Checkpointer(workdir, max_to_keep=config.train.keep)
    try:
        step = "best" if which == "best" and checkpoints.best_step() is not None else None
        state, _, _, _ = checkpoints.restore(step, abstract_state=ckpt_lib.abstract_like(state))
    finally:
        checkpoints.close()
    return config, mesh, state, eval_step
