"""Named datasets: find the format of a folder and read it into a Dataset.

Spacing precedence for a record: the `spacing` argument (the user's), then what
the annotation format states (ISBI 2015's 0.1 mm, CSV spacing columns), then the
image file's own tags (DICOM), else unknown.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from lmjax.data import image_io
from lmjax.data.coco import load_coco
from lmjax.data.isbi2015 import is_isbi2015, load_isbi2015
from lmjax.data.labelme import load_labelme, natural_key
from lmjax.data.tabular import load_csv
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record, as_spacing

FORMATS = ("phantom", "isbi2015", "labelme", "csv", "coco", "dicom", "images")


def detect_format(data_dir: str | pathlib.Path) -> str:
    """Guesses the annotation format of a folder or file; raises when none fits."""
    path = pathlib.Path(data_dir)
    if not path.exists():
        raise LandmarkDataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        if path.suffix.lower() == ".json":
            return "coco"
        raise LandmarkDataError(f"{path}: a file must be .csv or COCO .json")
    if is_isbi2015(path):
        return "isbi2015"
    if len(list(path.glob("*.csv"))) == 1:
        return "csv"
    jsons = sorted(path.glob("*.json"))
    if len(jsons) == 1 and _is_coco(jsons[0]):
        return "coco"
    if jsons:
        return "labelme"
    if any(image_io.is_image_file(p) for p in path.iterdir() if p.is_file()):
        return "images"
    nested = sorted(d.name for d in path.iterdir() if d.is_dir() and any(d.glob("*.json")))
    hint = f"; annotation folders inside: {', '.join(nested)}" if nested else ""
    raise LandmarkDataError(
        f"{path}: no images or annotations found (formats: {', '.join(FORMATS[1:])}){hint}"
    )


def _is_coco(path: pathlib.Path) -> bool:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and "annotations" in doc and "categories" in doc


def load_images_folder(data_dir: str | pathlib.Path, landmark_set: LandmarkSet | None = None):
    """Images (DICOM or others) without annotations, for prediction or inspection."""
    root = pathlib.Path(data_dir)
    files = sorted(
        (p for p in root.iterdir() if p.is_file() and image_io.is_image_file(p)),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise LandmarkDataError(f"{root}: no image files")
    lset = landmark_set or LandmarkSet(name=root.name, names=())
    k = lset.num_landmarks
    records = [
        Record(image=str(p), landmarks=np.full((k, 2), np.nan, np.float32), visible=None)
        for p in files
    ]
    return Dataset(lset, records, name=root.name)


def resolve_file_spacing(dataset: Dataset) -> Dataset:
    """Fills unknown record spacing from the image files' own tags (DICOM headers).

    Reads headers only; unreadable files are reported in `dataset.errors` and
    stay in the dataset so that the reader reports them again where they are used.
    """
    for record in dataset.records:
        if record.spacing is not None or not isinstance(record.image, str):
            continue
        try:
            info = image_io.read_spacing(record.image)
        except LandmarkDataError as e:
            dataset.errors.append(str(e))
            continue
        record.spacing, record.spacing_source = info.spacing, info.source
        dataset.warnings.extend(info.warnings)
    return dataset


def load_dataset(
    data_dir: str | pathlib.Path | None = None,
    *,
    format: str | None = None,  # noqa: A002 - mirrors the command-line flag
    ground_truth: str = "senior",
    image_dir: str | pathlib.Path | None = None,
    landmark_set: LandmarkSet | None = None,
    spacing: tuple[float, float] | None = None,
    strict: bool = False,
    phantom_size: int = 200,
    seed: int = 0,
) -> Dataset:
    """Reads a dataset as the training loader sees it.

    Args:
      data_dir: a folder or annotation file; None gives the built-in phantom.
      format: one of FORMATS; detected from the folder when None.
      ground_truth: ISBI 2015 ground truth: "senior", "junior" or "mean".
      image_dir: where images are, for LabelMe, CSV and COCO.
      landmark_set: expected landmarks (LabelMe, CSV, images).
      spacing: `(row_mm, col_mm)` for every image, overriding files and formats.
      strict: duplicated LabelMe labels are errors.
      phantom_size, seed: size and seed of the phantom.

    Raises:
      LandmarkDataError: the folder has no data of the format, or its landmark
        count does not match `landmark_set`.
    """
    if data_dir is None or format == "phantom":
        from lmjax.data.phantom import phantom_dataset

        return phantom_dataset(phantom_size, seed=seed)
    if format is None:
        format = detect_format(data_dir)  # noqa: A001
    if format not in FORMATS:
        raise LandmarkDataError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if format == "isbi2015":
        ds = load_isbi2015(data_dir, ground_truth=ground_truth)
    elif format == "labelme":
        ds = load_labelme(data_dir, image_dir=image_dir, landmark_set=landmark_set, strict=strict)
    elif format == "csv":
        ds = load_csv(data_dir, image_dir=image_dir, landmark_set=landmark_set)
    elif format == "coco":
        ds = load_coco(data_dir, image_dir=image_dir)
    else:
        ds = load_images_folder(data_dir, landmark_set)
    if landmark_set is not None and ds.landmark_set.names != landmark_set.names:
        raise LandmarkDataError(
            f"{data_dir}: {ds.landmark_set.num_landmarks} landmarks "
            f"{list(ds.landmark_set.names)[:5]}..., expected {landmark_set.num_landmarks} "
            f"of landmark set {landmark_set.name!r}"
        )
    if spacing is not None:
        user = as_spacing(spacing)
        if user is None:
            raise LandmarkDataError(f"spacing {spacing} is not two positive finite numbers")
        for r in ds.records:
            r.spacing, r.spacing_source = user, "user"
    return resolve_file_spacing(ds)
