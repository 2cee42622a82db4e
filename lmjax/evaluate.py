"""Evaluation in the original image frame: the code behind `lmjax evaluate` and the
validation of `lmjax train`, so both report the same numbers.

Predictions are made at the model input, mapped back through each sample's
`to_original` affine and compared with the annotations in millimetres (pixels,
named as such, when any spacing is unknown).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lmjax import metrics, progress
from lmjax.data import affine
from lmjax.data.pipeline import make_pipeline
from lmjax.data.types import Dataset

# (images [B, H, W, C]) -> (coords [B, K, 2] at the model input, confidence [B, K])
PredictFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# (coords, confidence, false positives [B, K] or None where the extractor has no notion of them)
Reading = tuple[np.ndarray, np.ndarray, np.ndarray | None]
# (images) -> {extractor name: Reading}: one forward pass read several ways
ReadFn = Callable[[np.ndarray], dict[str, Reading]]

DEFAULT_THRESHOLDS = (2.0, 2.5, 3.0, 4.0)


def with_flip_tta(predict: PredictFn, flip_permutation: np.ndarray) -> PredictFn:
    """Averages the prediction with that of the mirrored image, labels swapped back.

    `predict` may give extra axes between batch and landmarks (`[B, ..., K, 2]`,
    confidence `[B, ..., K]`, e.g. an ensemble's members, `lmjax.tta.read_with`).
    """

    def fn(images: np.ndarray):
        coords, conf = predict(images)
        fcoords, fconf = predict(images[:, :, ::-1])
        width = images.shape[2]
        fcoords = np.asarray(fcoords)[..., flip_permutation, :].copy()
        fcoords[..., 0] = width - 1 - fcoords[..., 0]
        return (np.asarray(coords) + fcoords) / 2, (
            np.asarray(conf) + np.asarray(fconf)[..., flip_permutation]
        ) / 2

    return fn


def predict_dataset(
    predict: PredictFn,
    dataset: Dataset,
    *,
    input_size: tuple[int, int],
    batch_size: int,
    fit: str = "resize",
    normalize: str = "zscore",
    cache_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in the original frame for every record, in record order.

    With several processes (`jax.process_count() > 1`) every process must call this
    with the same dataset: each predicts its share of the records
    (`records[process_index::process_count]`, `batch_size` images per batch and
    process, equal batch counts thanks to padding) and the rows are then exchanged,
    so every process returns the whole table. `predict` maps this process's images
    to their predictions (as `lmjax.train.evaluation.predictor` does).

    Returns:
      `(coords [N, K, 2], confidence [N, K])`; NaN where the model gave none.
    """
    readings = read_dataset(
        lambda images: {"": (*predict(images), None)},
        dataset,
        input_size=input_size,
        batch_size=batch_size,
        fit=fit,
        normalize=normalize,
        cache_dir=cache_dir,
    )
    n, k = len(dataset.records), dataset.landmark_set.num_landmarks
    coords, conf, _ = readings.get("", _unread(n, k))
    return coords, conf


def _unread(n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of records not predicted: NaN coordinates, confidence and false positives 0."""
    return (
        np.full((n, k, 2), np.nan, np.float32),
        np.zeros((n, k), np.float32),
        np.zeros((n, k), np.int32),
    )


def read_dataset(
    read: ReadFn,
    dataset: Dataset,
    *,
    input_size: tuple[int, int],
    batch_size: int,
    fit: str = "resize",
    normalize: str = "zscore",
    cache_dir: str | None = None,
) -> dict[str, Reading]:
    """`predict_dataset` for a `read` that reads each batch several ways (every
    extractor on the maps of one forward pass), with their false positives.

    Returns:
      `{name: (coords [N, K, 2] in the original frame, confidence [N, K], false
      positives [N, K] or None)}` for each name `read` gives; collective with
      several processes, like `predict_dataset`.
    """
    import jax

    from lmjax import parallel

    # Each process predicts only its share, rather than all of them the whole set:
    # the work splits over the nodes, and each process only ever reads back the rows
    # of its own images (the global output is not addressable from one process).
    n, k = len(dataset.records), dataset.landmark_set.num_landmarks
    tables: dict[str, tuple[np.ndarray, ...]] = {}
    counted: dict[str, bool] = {}  # whether the extractor has false positives at all
    filled = np.zeros((n,), bool)
    batches = eval_batches(
        dataset, input_size, batch_size, fit=fit, normalize=normalize, cache_dir=cache_dir
    )
    share = len(range(jax.process_index(), n, jax.process_count()))  # this process's images
    with progress.Progress(share, "evaluate", unit="image") as bar:
        for batch in batches:
            _read_batch(read, batch, tables, counted, n, k)
            filled[np.asarray(batch["index"])[np.asarray(batch["valid"], bool)]] = True
            bar.advance(int(np.sum(batch["valid"])))
    names = sorted(tables)  # the same order on every process
    merged = parallel.merge_process_rows(filled, *(a for name in names for a in tables[name]))
    return {
        name: (*merged[3 * j : 3 * j + 2], merged[3 * j + 2] if counted[name] else None)
        for j, name in enumerate(names)
    }


def _read_batch(read: ReadFn, batch, tables: dict, counted: dict, n: int, k: int) -> None:
    """One batch's readings into `tables` (`{name: (coords, conf, fps)}` over all N
    records) at the rows of its valid images, mapped back to the original frame."""
    for name, (pred, score, fp) in read(batch["image"]).items():
        coords, conf, fps = tables.setdefault(name, _unread(n, k))
        counted[name] = fp is not None
        for i in np.flatnonzero(batch["valid"]):
            idx = int(batch["index"][i])
            coords[idx] = affine.apply(np.asarray(pred[i], np.float32), batch["to_original"][i])
            conf[idx] = score[i]
            fps[idx] = 0 if fp is None else fp[i]


def eval_batches(dataset: Dataset, input_size, batch_size: int, **kw):
    """This process's share of `dataset` in evaluation batches (see `predict_dataset`)."""
    import jax

    return make_pipeline(
        dataset,
        input_size=input_size,
        batch_size=batch_size,
        train=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        **kw,
    )


def segmentation_overlap(
    overlap: Callable[[dict[str, np.ndarray]], np.ndarray],
    dataset: Dataset,
    *,
    input_size: tuple[int, int],
    batch_size: int,
    fit: str = "resize",
    normalize: str = "zscore",
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """IoU and Dice of the predicted landmark masks against the target masks.

    `overlap(batch)` gives intersection and union pixel counts `[B, K, 2]` for a
    host batch (the eval step's `overlap`), or None when the model has no masks.
    Landmarks not visible in the input are left out. Collective with several
    processes, like `predict_dataset`.

    Returns:
      None if `overlap` gave None, else a JSON-ready dict: `iou` and `dice` (means
      over the masks), `iou_pooled` (summed intersections over summed unions), `n`
      masks, and `per_landmark` (`iou` of each landmark; null where it has none).
    """
    from lmjax import parallel

    n, k = len(dataset.records), dataset.landmark_set.num_landmarks
    counts = np.full((n, k, 2), np.nan, np.float32)
    filled = np.zeros((n,), bool)
    batches = eval_batches(
        dataset, input_size, batch_size, fit=fit, normalize=normalize, cache_dir=cache_dir
    )
    for batch in batches:
        got = overlap(batch)
        if got is None:
            return None
        got = np.asarray(got, np.float32)
        for i in np.flatnonzero(batch["valid"]):
            idx = int(batch["index"][i])
            counts[idx] = np.where(batch["visible"][i][:, None], got[i], np.nan)
            filled[idx] = True
    (counts,) = parallel.merge_process_rows(filled, counts)
    inter, union = counts[..., 0], counts[..., 1]
    iou = inter / np.maximum(union, 1)
    dice = 2 * inter / np.maximum(union + inter, 1)
    with np.errstate(invalid="ignore"):
        per_landmark = np.nanmean(iou, axis=0) if n else np.full((k,), np.nan)
    return {
        "threshold": 0.5,
        "iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "iou_pooled": float(np.nansum(inter) / max(np.nansum(union), 1)),
        "n": int(np.isfinite(iou).sum()),
        "per_landmark": {
            name: (round(float(v), 4) if np.isfinite(v) else None)
            for name, v in zip(dataset.landmark_set.names, per_landmark, strict=True)
        },
    }


def error_report(
    pred: np.ndarray,
    dataset: Dataset,
    *,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    false_positives: np.ndarray | None = None,
) -> dict[str, Any]:
    """MRE, SD, median, IQR, p95, SDR and a per-landmark table against the records.

    `false_positives` `[N, K]`: components beyond the one a binary-mask extractor
    kept (None for extractors that always give one coordinate, which then say
    nothing about false positives).

    Returns:
      A JSON-ready dict: `n_images`, `unit`, `mre`, `sd`, `median`, `iqr`, `p95`,
      `missed`, `sdr` ({threshold: percent}), `per_landmark` and `per_image`
      (`images`, `landmarks` and `errors [N][K]`, null where missing), `worst`
      (the 3 landmarks of highest MRE, `worst_landmarks`). With
      `false_positives` also their total, a `false_positives` column per landmark
      and `detection` (`metrics.detection_counts` of the misses and false positives).
    """
    gt = dataset.landmarks()
    spacing = dataset.spacings()
    errors, unit = metrics.radial_errors(pred, gt, spacing)
    summary = metrics.summarize(errors, unit=unit, thresholds=thresholds)
    report = {
        "n_images": len(dataset.records),
        "unit": unit,
        **{key: summary[key] for key in ("mre", "sd", "median", "iqr", "p95", "missed", "n")},
        "sdr": {f"{t:g}": summary[metrics.sdr_key(t)] for t in thresholds},
        "per_landmark": metrics.per_landmark(
            errors, dataset.landmark_set.names, unit=unit, thresholds=thresholds
        ),
        # Paired tests between models (`lmjax compare`) need every single error.
        "per_image": {
            "images": [r.name for r in dataset.records],
            "landmarks": list(dataset.landmark_set.names),
            "errors": [
                [round(float(e), 4) if np.isfinite(e) else None for e in row] for row in errors
            ],
        },
    }
    report["worst"] = worst_landmarks(report["per_landmark"])
    by_source = _per_source(errors, dataset, unit, thresholds)
    if by_source:
        report["per_dataset"] = by_source
    if false_positives is not None:
        names = dataset.landmark_set.names
        # Any detection of a landmark without ground truth is a false positive too.
        absent = np.isnan(errors) & np.isfinite(pred).all(-1)
        fp = np.asarray(false_positives, np.int64) + absent
        detection = metrics.detection_counts(np.isposinf(errors), fp, names)
        report["false_positives"] = detection["false_positives"]
        for row, counts in zip(report["per_landmark"], detection["per_landmark"], strict=True):
            row["false_positives"] = counts["false_positives"]
        report["detection"] = detection
    return report


def worst_landmarks(per_landmark: list[dict[str, Any]], n: int = 3) -> list[dict[str, Any]]:
    """The `n` landmarks of highest MRE, worst first: `[{"landmark", "mre"}]`."""
    rows = [r for r in per_landmark if np.isfinite(r["mre"])]
    rows.sort(key=lambda r: -r["mre"])
    return [{"landmark": r["landmark"], "mre": r["mre"]} for r in rows[:n]]


def _per_source(errors, dataset: Dataset, unit: str, thresholds) -> dict[str, Any] | None:
    """A mixture's errors per dataset, each on its own landmarks and images."""
    from lmjax.data.mixture import source_landmarks

    groups = source_landmarks(dataset.landmark_set)
    if groups is None:
        return None
    out = {}
    for name, idx in groups.items():
        e = errors[:, idx]
        rows = ~np.isnan(e).all(axis=1)  # images of this dataset (NaN: no annotation)
        if not rows.any():
            continue  # e.g. a specialist's split holds none of the other datasets
        s = metrics.summarize(e[rows], unit=unit, thresholds=thresholds)
        out[name] = {
            "n_images": int(rows.sum()),
            **{k: s[k] for k in ("n", "missed", "mre", "sd", "median", "p95")},
            "sdr": {f"{t:g}": s[metrics.sdr_key(t)] for t in thresholds},
        }
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as the terminal shows it: overall line, then a per-landmark table."""
    unit = report["unit"]
    sdr = "  ".join(f"SDR@{t}{unit} {v:.1f}%" for t, v in report["sdr"].items())
    head = (
        f"{report['n_images']} images  MRE {report['mre']:.3f} {unit}  SD {report['sd']:.3f}  "
        f"median {report['median']:.3f}  p95 {report['p95']:.3f}  {sdr}"
    )
    if "false_positives" in report:  # both counted: zeros are measurements here
        head += f"  missed {report['missed']}  false positives {report['false_positives']}"
    elif report["missed"]:
        head += f"  missed {report['missed']}"
    seg = report.get("segmentation")
    if seg:
        head += (
            f"\nlandmark masks (sigmoid > {seg['threshold']:g}): IoU {seg['iou']:.3f}  "
            f"Dice {seg['dice']:.3f}  pooled IoU {seg['iou_pooled']:.3f}  over {seg['n']} masks"
        )
    for name, s in (report.get("per_dataset") or {}).items():
        head += (
            f"\n  {name}: {s['n_images']} images  MRE {s['mre']:.3f} {unit}  "
            f"median {s['median']:.3f}  SDR@{next(iter(s['sdr']))}{unit} "
            f"{next(iter(s['sdr'].values())):.1f}%"
        )
    rows = report["per_landmark"]
    sdr_cols = [metrics.sdr_key(float(t)) for t in report["sdr"]]
    cols = ["landmark", "n", "mre", "sd", "median", "p95", *sdr_cols]
    if "false_positives" in report:
        cols += ["missed", "false_positives"]
    worst = ", ".join(f"{w['landmark']} {w['mre']:.3f}" for w in report.get("worst") or ())
    tail = f"\nworst landmarks (MRE {unit}): {worst}" if worst else ""
    return head + "\n" + metrics.format_table(rows, cols) + tail


def measurement_report(pred: np.ndarray, dataset: Dataset) -> dict[str, Any] | None:
    """Clinical measurements from predicted vs annotated landmarks, or None when the
    landmark set defines none: median absolute error and IQR per measurement,
    accuracy and per-class and macro precision, recall and F1 per classification,
    and `per_image` predicted and true values and classes (`measurements.report.per_image`)."""
    from lmjax.measurements.report import compare, measure_dataset, per_image

    names = [r.name for r in dataset.records]
    spacing = dataset.spacings()
    gt = measure_dataset(dataset.landmarks(), spacing, dataset.landmark_set, names)
    if not any(r["measurements"] for r in gt):
        return None
    predicted = measure_dataset(pred, spacing, dataset.landmark_set, names)
    # Paired tests between models (`lmjax compare`) need every image's values.
    return {**compare(predicted, gt), "per_image": per_image(predicted, gt)}
