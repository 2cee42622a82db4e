"""`lmjax predict`: landmarks, measurements and review files for new radiographs.

Per image: `<stem>.json` (landmarks in original pixels, and mm when the spacing is
known; spacing, reading warnings, measurements), `<stem>.png` (windowed, numbered
landmarks) and `<stem>.labelme.json` (for review; corrected, it is training data);
`predictions.csv` has all images, `provenance.json` beside it the run's version,
config and weights hashes and each image's SHA-256 (as `<stem>.json` has under
`provenance`, `lmjax.provenance`). Images are decoded once, a batch at a time (the
next batch decodes and the previous one is written while one is predicted), and
go through `predict_dataset` as in-memory records: the evaluation's resize, fit,
normalisation and mapping back through `to_original`."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np

from lmjax import progress, provenance
from lmjax import review as queue
from lmjax.anonymize import Anonymizer, write_name_map
from lmjax.data import image_io, limits
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Radiograph, Record
from lmjax.measurements.report import measure_dataset
from lmjax.predict_inputs import (  # noqa: F401  (collect_inputs, unique_stems: re-exported)
    OUTPUT_EXTENSIONS,
    Input,
    anonymized,
    collect_inputs,
    existing,
    from_doc,
    plan_inputs,
    relative,
    unique_stems,
)
from lmjax.predict_outputs import _write_tables, prediction_doc, write_outputs  # noqa: F401


def _read(path: pathlib.Path) -> tuple[Radiograph | LandmarkDataError, str | None]:
    """The radiograph (or why not) and the SHA-256 of the file's bytes."""
    try:
        rad = image_io.read_radiograph(path)
    except LandmarkDataError as e:
        return e, None
    return rad, provenance.file_sha256(path)


class Loaded(NamedTuple):
    """A trained workdir ready to predict (`load_model`)."""

    workdir: str
    # (Dataset, batch) -> (coords [N, K, 2] original pixels, confidence [N, K],
    # regions per image: None for map-head models)
    infer: Callable[..., tuple[np.ndarray, np.ndarray, list]]
    landmark_set: LandmarkSet
    config: Any
    uncertainty: queue.Uncertainty  # conformal radii and shape model, either None
    step: int | None  # the checkpoint step of the global model (None: not known here)
    stages: tuple[str, ...]  # "global", "flip_tta", "refine", ... (map heads)
    origin: dict[str, Any]  # `lmjax.provenance.run`: version, config and weights hashes
    # An exported model (`lmjax.exported`) has no config: its batch size comes from here.
    default_batch: int | None = None

    def batch(self, batch_size: int | None = None) -> int:
        """`batch_size` (default the config's) rounded up to a multiple of the devices,
        over which each batch is split."""
        n = jax.device_count()
        batch_size = batch_size or self.default_batch or self.config.train.batch_size
        return -(-batch_size // n) * n


def load_model(
    workdir: str | os.PathLike,
    *,
    flip_tta: bool = False,
    tta_scales: tuple[float, ...] | None = None,
) -> Loaded:
    """A trained workdir as `lmjax predict` and `lmjax.api.Predictor` use it: map heads
    through `lmjax.train.final_model.load_final` (every stage the run holds: TTA,
    ensemble average, refinement), other task modes through their registered
    predictor. `tta_scales` replaces the config's `train.tta_scales` (None: the config's).
    A file instead of a folder is a model written by `lmjax export` (`lmjax.exported`),
    run without the training code; its test-time augmentation is fixed at export.

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
      LandmarkDataError: a region model (`data.roi`), TTA for a task mode without it,
        or flip TTA without left/right pairs.
      ValueError: `conformal.json` or `shape_model.json` name other landmarks.
    """
    if pathlib.Path(workdir).is_file():
        from lmjax import exported

        if flip_tta or tta_scales:
            raise LandmarkDataError(
                f"{workdir}: an exported model's test-time augmentation is fixed when it "
                "is exported (lmjax export --flip_tta); --flip_tta and --tta_scales apply "
                "to --workdir only"
            )
        return Loaded(**exported.loaded_fields(workdir))
    from lmjax.train.final_model import load_final
    from lmjax.train.predictors import predictor_for
    from lmjax.train.restore import read_config

    config = read_config(workdir)
    custom = predictor_for(config.task.mode)
    if custom is not None:
        if flip_tta or tta_scales:
            raise LandmarkDataError(f"TTA is not available for task.mode {config.task.mode!r}")
        model = custom(workdir)
        infer, lset, step = (lambda dataset, _: model(dataset)), model.landmark_set, None
        stages: tuple[str, ...] = ()
    else:
        final = load_final(workdir, flip_tta=flip_tta, tta_scales=tta_scales)

        def infer(dataset, batch):
            coords, conf = final.predict(dataset, batch)
            return coords, conf, [None] * len(coords)

        lset, config, step, stages = final.landmark_set, final.config, final.step, final.stages
    if config.data.get("roi"):  # a region model needs its box, which only annotations give
        raise LandmarkDataError(
            f"{workdir}: trained on the crops of region {config.data.roi!r} (data.roi); "
            "predict takes whole images without region boxes: use lmjax evaluate"
        )
    unc = queue.load(workdir, lset.names)
    origin = provenance.run(workdir, step, stages=stages)
    return Loaded(str(workdir), infer, lset, config, unc, step, stages, origin)


class Prediction(NamedTuple):
    """One image's prediction, rounded once so that every file holds the same numbers."""

    coords: np.ndarray  # [K, 2] (x, y) original pixels, NaN where the model gave none
    confidence: np.ndarray  # [K]
    measurements: dict[str, Any]  # name -> {"value", "unit", "class", ...}
    regions: list[dict[str, Any]] | None  # a cascade's outlines and patches
    annotation: queue.Annotation  # radius and shape check per landmark (`lmjax.review`)


def predict_radiographs(model: Loaded, rads: list[Radiograph], batch: int) -> list[Prediction]:
    """Predicts decoded radiographs (one call of the model for all of them, in
    batches of `batch`); returns one `Prediction` per radiograph, in order."""
    if not rads:
        return []
    lset = model.landmark_set
    nan = np.full((lset.num_landmarks, 2), np.nan)
    # The bit depth gives the unit-range scaling of the file-based cache; 0 (an
    # array of unknown depth): scaled by its maximum (`lmjax.data.cache.unit_range`).
    # The spacing gives the refinement its fine images at `refine.spacing_mm`.
    records = [
        Record(r.pixels, nan, None, spacing=r.spacing, meta={"bit_depth": r.bit_depth or None})
        for r in rads
    ]
    coords, conf, regions = model.infer(Dataset(lset, records), batch)
    coords, conf = np.round(coords.astype(float), 3), np.round(conf.astype(float), 4)
    spacing = np.array([r.spacing or (np.nan, np.nan) for r in rads]).reshape(-1, 2)
    measured = measure_dataset(coords, spacing, lset, [r.path for r in rads])
    return [
        Prediction(
            xy, c, m["measurements"], shapes, queue.annotate(model.uncertainty, xy, c, r.spacing)
        )
        for r, xy, c, m, shapes in zip(rads, coords, conf, measured, regions, strict=True)
    ]


class Outcome(NamedTuple):
    """What `predict_files` did."""

    inputs: list[Input]  # every image found, in order, with its output name
    failed: dict[int, str]  # input index -> why it has no prediction (the reader's error)
    kept: int  # predictions an earlier run wrote whole (`skip_existing`)

    @property
    def written(self) -> int:
        return len(self.inputs) - len(self.failed) - self.kept


def predict_files(
    workdir: str | os.PathLike,
    inputs: list[str],
    output_dir: str | os.PathLike,
    *,
    batch_size: int | None = None,
    flip_tta: bool = False,
    review: bool = False,
    tta_scales: tuple[float, ...] | None = None,
    skip_existing: bool = False,
    anonymize_names: bool = False,
    anonymize_salt: str | None = None,
    name_map: str | os.PathLike | None = None,
    overlays: bool = True,
) -> Outcome:
    """Predicts landmarks for image files and folders with a trained workdir, writing
    each image's outputs as soon as its batch is predicted; memory stays flat in the
    number of images (only the plan and the failures are kept; the table is made at
    the end from the JSON files).

    Args:
      workdir: the training run's folder; its best checkpoint is used.
      inputs: image files (DICOM, PNG, JPEG, BMP, TIFF) and folders of them, searched
        recursively (`lmjax.predict_inputs`: the outputs keep the folders' layout).
      output_dir: gets the per-image files, `predictions.csv` and `provenance.json`.
      batch_size: default the config's; rounded up to a multiple of the devices.
      flip_tta: average with the mirrored image (also done when the config says so).
      tta_scales: multi-scale TTA factors replacing the config's `train.tta_scales`
        (None: the config's; `lmjax.tta.with_scale_tta`).
      review: also write `review.csv` and `review.json`, images and landmarks most
        doubtful first (`lmjax.review`).
      skip_existing: keep an image's outputs when an earlier run of the same model
        wrote them whole (`lmjax.predict_inputs.existing`), to resume a large job;
        the table, `provenance.json` and the review still list every image.
      anonymize_names: outputs named by a salted hash of the input's name, flat in
        `output_dir`, and no input path in any file (`lmjax.anonymize`).
      anonymize_salt: the hash's salt (None: random, drawn for this job only).
      name_map: with `anonymize_names`, also write this CSV of input -> output name.
      overlays: write each image's `<stem>.png` (the landmarks drawn on it); encoding
        a full-resolution PNG is most of the writing, so a large job that needs only
        the numbers runs faster without.

    A file that cannot be read or whose outputs cannot be written is noted on stderr
    and leaves nothing of its own behind; the others go on, and the failures are
    listed again at the end.

    With the workdir's `conformal.json` and `shape_model.json` each landmark gets
    its radius and shape check (`lmjax.review.annotate`).

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
      LandmarkDataError: a region model (`data.roi`), bad inputs (see
        `plan_inputs`), outputs that would overwrite inputs, flip TTA without
        left/right pairs, or no image predicted.
      ValueError: `name_map` or `anonymize_salt` without `anonymize_names`.
    """
    if (name_map or anonymize_salt) and not anonymize_names:
        raise ValueError("a name map and a salt go with anonymize_names")
    out = pathlib.Path(output_dir)
    planned = plan_inputs(inputs, exclude=out)
    if anonymize_names:
        planned = anonymized(planned, Anonymizer(anonymize_salt))
        if skip_existing and not anonymize_salt:
            print(
                "lmjax predict: a random salt names nothing an earlier job wrote; "
                "resume with that job's --anonymize_salt",
                file=sys.stderr,
            )
    sources = {item.path.resolve() for item in planned}
    for name in (f"{i.name}{ext}" for i in planned for ext in OUTPUT_EXTENSIONS):
        if (out / name).resolve() in sources:
            raise LandmarkDataError(f"{out / name}: the output would overwrite an input image")
    model = load_model(workdir, flip_tta=flip_tta, tta_scales=tta_scales)
    lset, unc = model.landmark_set, model.uncertainty
    _uncertainty_notes(workdir, unc, flip_tta, review)
    annotated = unc.radii is not None or unc.shape is not None
    batch = model.batch(batch_size)
    out.mkdir(parents=True, exist_ok=True)
    if name_map:
        write_name_map(name_map, ((str(i.path), i.name) for i in planned))
    failed: dict[int, str] = {}
    kept: set[int] = set()
    if skip_existing:
        kept = {
            k
            for k, item in enumerate(planned)
            if existing(out, item, model.origin, lset.names, overlays) is not None
        }
        if kept:
            print(f"lmjax predict: kept {len(kept)} existing predictions", file=sys.stderr)
    todo = [k for k in range(len(planned)) if k not in kept]
    chunks = [todo[s : s + batch] for s in range(0, len(todo), batch)]

    def write(k: int, item: Input, r: Radiograph, sha: str, p: Prediction) -> None:
        more = {
            "regions": p.regions,
            "uncertainty": p.annotation if annotated else None,
            "origin": {**model.origin, "input_sha256": sha},
            "alias": item.alias,
        }
        try:
            write_outputs(
                out, item.name, item.path, r, p.coords, p.confidence, lset,
                p.measurements, **more, overlay=overlays,
            )  # fmt: skip
        except (OSError, LandmarkDataError) as e:
            failed[k] = f"{item.path}: outputs not written ({limits.one_line(e)})"
            print(f"lmjax predict: skipped: {failed[k]}", file=sys.stderr)

    # Three stages overlap, one batch each: the next batch decodes and the previous
    # one is written while this one is predicted (the model releases the GIL, and so
    # do the JPEG decoder and the PNG encoder). At most three batches of
    # full-resolution images are alive, however many images there are.
    with (
        ThreadPoolExecutor(max_workers=min(batch, os.cpu_count() or 1)) as readers,
        ThreadPoolExecutor(max_workers=1) as writer,
        progress.Progress(len(todo), "predict", unit="image") as bar,
    ):
        decoding = [readers.submit(_read, planned[k].path) for k in chunks[0]] if chunks else []
        writing: list = []
        for c, ks in enumerate(chunks):
            read, hashes = zip(*(f.result() for f in decoding), strict=True)
            nxt = chunks[c + 1] if c + 1 < len(chunks) else []
            decoding = [readers.submit(_read, planned[k].path) for k in nxt]
            done = iter(
                predict_radiographs(model, [r for r in read if isinstance(r, Radiograph)], batch)
            )
            for f in writing:  # the previous batch: on disk before this one is queued
                f.result()
            bar.advance(len(writing))
            writing = []
            for k, r, sha in zip(ks, read, hashes, strict=True):
                if isinstance(r, LandmarkDataError):
                    failed[k] = str(r)
                    print(f"lmjax predict: skipped: {r}", file=sys.stderr)
                    bar.advance(1)
                    continue
                writing.append(writer.submit(write, k, planned[k], r, sha, next(done)))
            del read, done
        for f in writing:
            f.result()
        bar.advance(len(writing))
    if len(failed) == len(planned):
        errors = list(failed.values())
        many = f"none of the {len(errors)} images could be predicted; first: {errors[0]}"
        raise LandmarkDataError(errors[0] if len(errors) == 1 else many)
    _write_tables(out, planned, failed, model, review)
    if failed:
        print(
            f"lmjax predict: {len(failed)} of {len(planned)} images failed:\n"
            + "\n".join(f"  {failed[k]}" for k in sorted(failed)),
            file=sys.stderr,
        )
    return Outcome(planned, failed, len(kept))


def run_predict(
    workdir: str | os.PathLike,
    inputs: list[str],
    output_dir: str | os.PathLike,
    **options,
) -> list[dict[str, Any]]:
    """`predict_files`, then per input image, in order: its `<stem>.json` content, or
    `{"image", "error"}` when it has no prediction. `options` as `predict_files`'s.
    For a handful of images: the documents are all read back into memory."""
    done = predict_files(workdir, inputs, output_dir, **options)
    out = pathlib.Path(output_dir)
    return [
        {"image": item.alias or str(item.path), "error": done.failed[k]}
        if k in done.failed
        else json.loads((out / f"{item.name}.json").read_text())
        for k, item in enumerate(done.inputs)
    ]


def _uncertainty_notes(workdir, unc: queue.Uncertainty, flip_tta: bool, review: bool) -> None:
    """Notes on stderr where the radii or the review queue mean less than they say."""
    if review and unc.radii is None:
        print(
            f"lmjax predict: {workdir} has no conformal.json (train with "
            "data.calib_fraction > 0, or run lmjax calibrate); the review ranks by "
            f"{queue.basis(unc)}",
            file=sys.stderr,
        )
    if unc.radii is not None and flip_tta and "flip_tta" not in unc.radii.get("stages", []):
        print(
            "lmjax predict: the conformal radii were calibrated without flip TTA; "
            "their coverage is not guaranteed for these predictions",
            file=sys.stderr,
        )
