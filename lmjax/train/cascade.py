"""The detector -> SAM cascade: the trainer of `task.mode = "cascade"` (registered with
`lmjax.train.trainers`).

Stages, each an `lmjax train` config, run by one `lmjax train` of the cascade:
1. the detector (`cascade.detector`): a trained detector's workdir, or a detector
   config `PATH[:ARG]`, trained into `<workdir>/detector` unless it finished there;
2. its per-class boxes on the training and validation images (original pixels);
3. SAM's decoder fine-tuned on cached embeddings with prompts that are the
   detector's boxes (`cascade.p_detector` of them, where near their item) and
   jittered true boxes otherwise (`lmjax.train.sam_decoder`), validated and
   checkpointed through the whole cascade (the detector's boxes as prompts).

The finished workdir evaluates and predicts as one model: detector -> boxes ->
SAM prompts -> masks -> landmarks (soft and binary mask centroids, box centres)
and outline/patch masks. `<workdir>/cascade.json` records the detector's workdir.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from lmjax import configs
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import sam_decoder, sam_eval
from lmjax.train.cascade_predict import DETECTOR_FOLDER, STATE_FILE, detector_dir
from lmjax.train.trainers import Trainer, lazy, register_trainer, trainer_for

MODE = "cascade"


def check(config) -> None:
    """Raises ValueError on a cascade section that cannot work."""
    c = config.cascade
    if not c.detector:
        raise ValueError(
            "cascade.detector is empty: name a trained detector's workdir or a detector "
            "config PATH[:ARG]"
        )
    if not 0.0 <= c.p_detector <= 1.0:
        raise ValueError(f"cascade.p_detector must be in [0, 1], got {c.p_detector}")
    if c.joint_steps < 0:
        raise ValueError(f"cascade.joint_steps must be >= 0, got {c.joint_steps}")
    if c.match_growth <= 0:
        raise ValueError(f"cascade.match_growth must be > 0, got {c.match_growth}")
    if c.landmark_reading not in sam_eval.LANDMARK_READINGS:
        raise ValueError(
            f"cascade.landmark_reading must be one of {', '.join(sam_eval.LANDMARK_READINGS)}, "
            f"got {c.landmark_reading!r}"
        )


def _finished(workdir: pathlib.Path, steps: int) -> bool:
    if not ckpt_lib.has_checkpoint(workdir):
        return False
    checkpoints = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        return (checkpoints.latest_step() or 0) >= steps
    finally:
        checkpoints.close()


def detector_stage(config, workdir, *, log=print, train: bool = True) -> pathlib.Path:
    """The detector's workdir: `cascade.detector` if it is one, else
    `<workdir>/detector`, trained there from the config `cascade.detector` names
    (resumed if it stopped early) when `train`."""
    spec = config.cascade.detector
    given = pathlib.Path(spec)
    if given.is_dir():
        if not ckpt_lib.has_checkpoint(given):
            raise FileNotFoundError(f"cascade.detector {spec}: no checkpoint; train it first")
        return given.resolve()
    folder = pathlib.Path(workdir) / DETECTOR_FOLDER
    if not train:
        if not ckpt_lib.has_checkpoint(folder):
            raise FileNotFoundError(f"{folder}: no detector checkpoint")
        return folder.resolve()
    det_config = configs.load(spec)
    if det_config.task.mode == MODE or det_config.model.name == "sam":
        raise ValueError(
            f"cascade.detector {spec}: a {det_config.model.name} config, not a detector"
        )
    if _finished(folder, det_config.train.steps):
        log(f"detector stage: finished in {folder}")
    else:
        log(f"detector stage: training {spec} into {folder}")
        trainer_for(det_config).train(det_config, folder, log=log)
    return folder.resolve()


def detector(det_dir: pathlib.Path, *, log=print):
    """`detect(dataset, split) -> boxes [N, K, 4]` (original pixels, NaN where not
    found) of the detector in `det_dir`.

    Raises (from `detect`):
      ValueError: the data's items are not the detector's classes.
    """
    from lmjax.detection_metrics import detection_report, format_detection
    from lmjax.train.detections import detect_dataset
    from lmjax.train.restore import restore_trained
    from lmjax.train.setup import load_landmark_set

    config, mesh, state, eval_step = restore_trained(det_dir)
    classes = load_landmark_set(det_dir, config).names

    def detect(dataset, split: str):
        names = dataset.landmark_set.names
        if tuple(names) != tuple(classes):
            raise ValueError(
                f"{det_dir}: the detector's {len(classes)} classes ({', '.join(classes[:3])}, "
                f"...) are not the data's {len(names)} items ({', '.join(names[:3])}, ...)"
            )
        boxes, _ = detect_dataset(config, eval_step, mesh, state, dataset)
        return boxes

    def report(boxes, dataset):
        return detection_report(boxes, np.isfinite(boxes).all(-1), dataset)

    detect.report = report
    detect.format = format_detection
    detect.workdir = det_dir
    return detect


def train(config, workdir, *, log=print) -> dict[str, Any]:
    """Every stage into `workdir` (each resumes where it stopped); returns the last
    validation report (through the whole cascade)."""
    config = configs.resolve(config)
    check(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    det_dir = detector_stage(config, workdir, log=log)
    (workdir / STATE_FILE).write_text(json.dumps({"detector": str(det_dir)}, indent=2))
    detect = detector(det_dir, log=log)

    def logged(dataset, split):
        boxes = detect(dataset, split)
        log(f"detector on {split}:\n" + detect.format(detect.report(boxes, dataset)))
        return boxes

    report = sam_decoder.train(config, workdir, log=log, detect=logged)
    if config.cascade.joint_steps > 0:
        from lmjax.train.cascade_joint import run_joint_stage

        joint = run_joint_stage(config, workdir, det_dir, log=log)
        log(f"joint stage done: evaluate or predict with --workdir={joint}")
    return report


def evaluate_workdir(
    workdir, *, split=None, data_dir=None, ground_truth=None, log=print
) -> dict[str, Any]:
    """`lmjax evaluate` of a cascade: detection, then SAM prompted by the detector's
    boxes (the headline), jittered true boxes and exact true boxes."""
    detect = detector(detector_dir(workdir), log=log)
    return sam_decoder.evaluate_workdir(
        workdir,
        split=split,
        data_dir=data_dir,
        ground_truth=ground_truth,
        log=log,
        detect=detect,
    )


register_trainer(
    MODE,
    Trainer(
        train=train,
        evaluate=evaluate_workdir,
        benchmark=lazy("lmjax.cascade_benchmark", "benchmark_cascade"),
        format_benchmark=lazy("lmjax.cascade_benchmark", "format_cascade_benchmark"),
    ),
)

__all__ = [
    "MODE",
    "check",
    "detector",
    "detector_dir",
    "detector_stage",
    "evaluate_workdir",
    "train",
]
