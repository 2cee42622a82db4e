"""Evaluation of a train state on a dataset, through the eval step.

The code behind the validation of `lmjax train` and behind `lmjax evaluate`
(`evaluate_workdir`), so the logged numbers are the reported ones.
"""

from __future__ import annotations

import jax
import numpy as np

from lmjax import evaluate as evaluation
from lmjax import parallel
from lmjax.data.types import Dataset, LandmarkDataError
from lmjax.task import TaskSpec, host_coordinates, task_spec
from lmjax.train.restore import restore_trained
from lmjax.train.setup import load_config_dataset, load_landmark_set, load_splits


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


def _eval_input(config, cache_dir) -> dict:
    """The evaluation pipeline's settings: the training input without augmentation."""
    return dict(
        input_size=tuple(config.data.input_size),
        # per process: the global evaluation batch is the training batch
        batch_size=config.train.batch_size // jax.process_count(),
        fit=config.data.fit,
        normalize=config.data.normalize,
        cache_dir=cache_dir,
    )


def evaluate_state(config, eval_step, mesh, state, dataset: Dataset, *, cache_dir=None):
    """`(report, coords, confidence)` on `dataset`; with several processes every
    process calls it and gets the same result (each predicts a share, see
    `evaluation.predict_dataset`)."""
    predict = predictor(eval_step, mesh, [state], task_spec(config))
    if config.train.flip_tta and dataset.landmark_set.flip_pairs:
        predict = evaluation.with_flip_tta(predict, dataset.landmark_set.flip_permutation())
    coords, conf = evaluation.predict_dataset(predict, dataset, **_eval_input(config, cache_dir))
    return evaluation.error_report(coords, dataset), coords, conf


def segmentation_report(config, eval_step, mesh, state, dataset: Dataset, *, cache_dir=None):
    """IoU and Dice of a segmentation model's landmark masks on `dataset`
    (`evaluation.segmentation_overlap`), or None when the task does not segment
    landmarks or the model has no masks."""
    if not task_spec(config).head.scores_masks:
        return None
    keys = ("image", "landmarks", "visible")

    def overlap(batch):
        device_batch = parallel.shard_batch({k: batch[k] for k in keys}, mesh)
        return parallel.host_rows(eval_step(state, device_batch), mesh).get("overlap")

    return evaluation.segmentation_overlap(overlap, dataset, **_eval_input(config, cache_dir))


def dataset_for_split(config, split: str | None) -> tuple[str, Dataset]:
    """`(split name, dataset)`: `split`, or the config's test split when the data has
    one, else its validation split (held out of training as `lmjax train` did)."""
    _, val, test = load_splits(config)
    d = config.data
    name = split or (d.test_split if test is not None else d.val_split)
    if name == d.val_split:
        return name, val
    if test is not None and name == d.test_split:
        return name, test
    return name, load_config_dataset(config).split(name)


def evaluate_workdir(
    workdir: str,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    ground_truth: str | None = None,
    log=print,
) -> dict:
    """The report of `lmjax evaluate`: errors (and measurements, mask overlap) of the
    best checkpoint in `workdir` on a split of its data, or of `data_dir`."""
    config, mesh, state, eval_step = restore_trained(workdir)
    with config.unlocked():
        if data_dir is not None:
            config.data.data_dir = data_dir
        if ground_truth is not None:
            config.data.ground_truth = ground_truth
    name, dataset = dataset_for_split(config, split)
    trained = load_landmark_set(workdir, config)
    if dataset.landmark_set.num_landmarks != trained.num_landmarks:
        raise LandmarkDataError(
            f"the data has {dataset.landmark_set.num_landmarks} landmarks, the model "
            f"{trained.num_landmarks}"
        )
    report, coords, _ = evaluate_state(config, eval_step, mesh, state, dataset)
    measurements = evaluation.measurement_report(coords, dataset)
    if measurements is not None:
        report["measurements"] = measurements
    segmentation = segmentation_report(config, eval_step, mesh, state, dataset)
    if segmentation is not None:
        report["segmentation"] = segmentation
    if task_spec(config).needs_items:  # a detector: detection rate, box IoU
        from lmjax.detection_metrics import detection_report
        from lmjax.train.detections import detect_dataset

        boxes, _ = detect_dataset(config, eval_step, mesh, state, dataset)
        report["detection"] = detection_report(boxes, np.isfinite(boxes).all(-1), dataset)
    report = {
        "split": name,
        "ground_truth": config.data.ground_truth,
        "model": config.model.name,
        "checkpoint_step": int(state.step),
        **report,
    }
    log(f"{dataset.name} {name}  ({config.model.name}, step {int(state.step)})")
    log(evaluation.format_report(report))
    if "detection" in report:
        from lmjax.detection_metrics import format_detection

        log(format_detection(report["detection"]))
    for mname, m in report.get("measurements", {}).get("classifications", {}).items():
        if m.get("n"):
            log(f"{mname}: class accuracy {m['accuracy']:.3f}  macro F1 {m['macro']['f1']:.3f}")
    return report
