"""Evaluation of a train state on a dataset, through the eval step.

The code behind the validation of `lmjax train` and behind `lmjax evaluate`
(`evaluate_workdir`), so the logged numbers are the reported ones.
"""

from __future__ import annotations

import jax
import numpy as np

from lmjax import conformal, parallel, tta
from lmjax import evaluate as evaluation
from lmjax.data.types import Dataset, LandmarkDataError
from lmjax.task import HOST_EXTRACTORS, TaskSpec, host_coordinates, task_spec
from lmjax.train import ensemble, refine_stage
from lmjax.train.restore import read_config, restore_trained
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
            return host_coordinates(task, out["probs"], images.shape[1:3])[:2]
        return out["coords"], out["confidence"]

    return predict


def reader(eval_step, mesh, state_ref: list, tasks: dict[str, TaskSpec]):
    """`images -> {name: (coords, confidence, false positives or None)}` at the model
    input: the eval step's output read with the extractor of each task in `tasks`.

    An eval step built with these `readers` (`make_eval_step`) gives maps once and
    every extractor reads them; a plain one gives its own extractor's (or the
    model's) coordinates, read under the configured name. Collective like `predictor`.
    An ensemble's plain eval step also gives each member's reading, `member/<k>`
    (`ensemble.member_readings`, read with the first task's extractor).
    """

    def read(images: np.ndarray):
        batch = parallel.shard_batch({"image": images.astype(np.float32)}, mesh)
        out = parallel.host_rows(eval_step(state_ref[0], batch), mesh)
        readings = {}
        for name, task in tasks.items():
            if "probs" in out and name in HOST_EXTRACTORS:
                readings[name] = host_coordinates(task, out["probs"], images.shape[1:3])
            elif f"coords/{name}" in out:
                readings[name] = (out[f"coords/{name}"], out[f"confidence/{name}"], None)
            else:
                readings[name] = (out["coords"], out["confidence"], None)
        first = next(iter(tasks.values()))
        return readings | ensemble.member_readings(out, first, images.shape[1:3])

    return read


def gives_maps(config, eval_step, state) -> bool:
    """Whether an eval step built with `readers` returns maps for this model (it
    returns the model's own coordinates instead when it has them); traced, not run."""
    h, w = config.data.input_size
    images = jax.ShapeDtypeStruct((jax.device_count(), h, w, 1), np.float32)
    return "probs" in jax.eval_shape(eval_step, state, {"image": images})


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


def evaluate_state(
    config,
    eval_step,
    mesh,
    state,
    dataset: Dataset,
    *,
    cache_dir=None,
    extractor: str | None = None,
    thresholds: tuple[float, ...] = evaluation.DEFAULT_THRESHOLDS,
):
    """`(report, coords, confidence)` on `dataset`; with several processes every
    process calls it and gets the same result (each predicts a share, see
    `evaluation.predict_dataset`). `extractor` replaces the configured one (the
    eval step must have it among its `readers`); `thresholds` are the SDR radii.
    The report counts false positives for binary-mask extractors, unless test-time
    augmentation (flip, `train.tta_scales`; `lmjax.tta`) averages several readings.
    An ensemble's report adds `members`: each member's errors, read with the same
    augmentation in the same forward passes (`ensemble.member_report`)."""
    name = extractor or config.task.extractor
    read = reader(eval_step, mesh, [state], {name: task_spec(config, extractor=name)})
    inputs = _eval_input(config, cache_dir)
    augment = tta.wrapper(config, dataset.landmark_set)
    if augment is not None:
        read = tta.read_with(read, augment)
    readings = evaluation.read_dataset(read, dataset, **inputs)
    coords, conf, fp = readings[name]
    report = evaluation.error_report(coords, dataset, thresholds=thresholds, false_positives=fp)
    members = ensemble.member_report(
        readings, dataset, seed=config.train.seed, thresholds=thresholds
    )
    if members:
        report["members"] = members
    return report, coords, conf


def compare_extractors(
    config, eval_step, mesh, state, dataset: Dataset, names, *, thresholds, cache_dir=None
) -> dict[str, dict]:
    """`{name: error report}` of every extractor in `names` on the same maps: one
    forward pass per batch, read by each (the eval step must have them as `readers`)."""
    tasks = {name: task_spec(config, extractor=name) for name in names}
    read = reader(eval_step, mesh, [state], tasks)
    readings = evaluation.read_dataset(read, dataset, **_eval_input(config, cache_dir))
    return {
        name: evaluation.error_report(
            readings[name][0], dataset, thresholds=thresholds, false_positives=readings[name][2]
        )
        for name in names
    }


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


def _stage_summary(report: dict) -> dict:
    return {key: report[key] for key in ("mre", "sd", "median", "p95", "missed", "sdr")}


def _refined(workdir, config, landmark_set, dataset, coords, report, thresholds):
    """`(coords, report)` after the workdir's refinement stage; the report keeps the
    global model's summary under `stages` (and its `members`, labelled global)."""
    stage = refine_stage.load(workdir, config, landmark_set)
    refined, _ = stage(dataset, coords)
    out = evaluation.error_report(refined, dataset, thresholds=thresholds)
    out["stages"] = {"global": _stage_summary(report), "refine": _stage_summary(out)}
    if "members" in report:
        out["members_global"] = report["members"]
    return refined, out


def format_stages(report: dict) -> str:
    unit, lines = report["unit"], []
    for name, s in report["stages"].items():
        sdr = "  ".join(f"SDR@{t}{unit} {v:.1f}%" for t, v in s["sdr"].items())
        lines.append(f"  {name:<8} MRE {s['mre']:.3f} {unit}  median {s['median']:.3f}  {sdr}")
    return "stages:\n" + "\n".join(lines)


def evaluate_workdir(
    workdir: str,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    ground_truth: str | None = None,
    extractor: str | None = None,
    sdr_mm: tuple[float, ...] = evaluation.DEFAULT_THRESHOLDS,
    refine: bool = True,
    tta_scales: tuple[float, ...] | None = None,
    log=print,
) -> dict:
    """The report of `lmjax evaluate`: errors (and measurements, mask overlap) of the
    best checkpoint in `workdir` on a split of its data, or of `data_dir`.

    With a refinement stage in the workdir (and `refine`), the errors are those of
    the refined landmarks, and `stages` gives the global model's summary beside them.
    `tta_scales` replaces the config's `train.tta_scales` (multi-scale TTA).

    `extractor` reads the model's maps with that extractor instead of the configured
    one, or with `"all"` with every one of `extractor_table.COMPARED` (the report is
    then their comparison, `extractor_table.comparison_report`); either refuses a
    model that gives no maps. `sdr_mm` are the SDR radii (pixels without spacing).
    """
    from lmjax import extractor_table

    names = ()
    if extractor is not None:
        configured = read_config(workdir).task.extractor
        names = extractor_table.extractor_names(extractor, configured)
    config, mesh, state, eval_step = restore_trained(workdir, extractors=names)
    if names and not gives_maps(config, eval_step, state):
        raise ValueError(
            f"--extractor={extractor} reads probability maps, but model "
            f"{config.model.name!r} (task.mode {config.task.mode!r}) predicts its "
            "coordinates directly, so its eval step gives no maps to read"
        )
    with config.unlocked():
        if data_dir is not None:
            config.data.data_dir = data_dir
        if ground_truth is not None:
            config.data.ground_truth = ground_truth
        if tta_scales is not None:
            config.train.tta_scales = tuple(tta.check_scales(tta_scales))
    name, dataset = dataset_for_split(config, split)
    trained = load_landmark_set(workdir, config)
    if dataset.landmark_set.num_landmarks != trained.num_landmarks:
        raise LandmarkDataError(
            f"the data has {dataset.landmark_set.num_landmarks} landmarks, the model "
            f"{trained.num_landmarks}"
        )
    head = {
        "split": name,
        "ground_truth": config.data.ground_truth,
        "model": config.model.name,
        "checkpoint_step": int(state.step),
    }
    title = f"{dataset.name} {name}  ({config.model.name}, step {int(state.step)})"
    if extractor == extractor_table.ALL:
        reports = compare_extractors(
            config, eval_step, mesh, state, dataset, names, thresholds=sdr_mm
        )
        report = {**head, **extractor_table.comparison_report(reports, config.task.extractor)}
        log(title)
        log(extractor_table.format_comparison(report))
        return report
    report, coords, _ = evaluate_state(
        config, eval_step, mesh, state, dataset, extractor=extractor, thresholds=sdr_mm
    )
    if refine and refine_stage.has_stage(workdir):
        coords, report = _refined(workdir, config, trained, dataset, coords, report, sdr_mm)
    # The landmarks themselves, for overlays of the report's gallery (`lmjax.report`).
    report["per_image"]["predicted"] = [
        [[round(float(v), 2) if np.isfinite(v) else None for v in point] for point in row]
        for row in np.asarray(coords)
    ]
    measurements = evaluation.measurement_report(coords, dataset)
    if measurements is not None:
        report["measurements"] = measurements
    radii = conformal.load(workdir)
    # Radii calibrated on refined landmarks say nothing about the global ones.
    if radii is not None and "refine" in radii.get("stages", ()) and "stages" not in report:
        radii = None
    if radii is not None:  # achieved coverage of the calibrated radii beside the nominal
        report["conformal"] = conformal.coverage_entry(
            coords, dataset.landmarks(), dataset.spacings(), radii
        )
    segmentation = segmentation_report(config, eval_step, mesh, state, dataset)
    if segmentation is not None:
        report["segmentation"] = segmentation
    detector = task_spec(config).needs_items
    if detector:  # detection rate, box IoU (in place of the extractor's counts)
        from lmjax.detection_metrics import detection_report
        from lmjax.train.detections import detect_dataset

        boxes, _ = detect_dataset(config, eval_step, mesh, state, dataset)
        report["detection"] = detection_report(boxes, np.isfinite(boxes).all(-1), dataset)
    chosen = {"extractor": extractor} if extractor else {}
    report = {**head, **chosen, **report}
    log(title)
    log(evaluation.format_report(report))
    if "members" in report:
        log(ensemble.format_members(report))
    if "stages" in report:
        log(format_stages(report))
    if "conformal" in report:
        log(conformal.format_coverage(report["conformal"]))
    if detector:
        from lmjax.detection_metrics import format_detection

        log(format_detection(report["detection"]))
    for mname, m in report.get("measurements", {}).get("classifications", {}).items():
        if m.get("n"):
            log(f"{mname}: class accuracy {m['accuracy']:.3f}  macro F1 {m['macro']['f1']:.3f}")
    return report
