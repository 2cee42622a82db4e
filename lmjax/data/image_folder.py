"""Folders of images (DICOM or others) without annotations: `dicom` and `images`."""

from __future__ import annotations

import pathlib

import numpy as np

from lmjax.data import image_io
from lmjax.data.formats import ReadOptions, register_format
from lmjax.data.labelme import natural_key
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record


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


def _detect(path: pathlib.Path) -> bool:
    return path.is_dir() and any(image_io.is_image_file(p) for p in path.iterdir() if p.is_file())


def _read(path: pathlib.Path, options: ReadOptions) -> Dataset:
    return load_images_folder(path, options.landmark_set)


_LAYOUT = "a folder of images without annotations"

# Two names for one reader: "dicom" says what a user has, "images" is what is
# detected; they share a row of the format table.
register_format(
    "dicom",
    read=_read,
    detect=None,
    description="a folder of DICOM images without annotations",
    layout=_LAYOUT,
)
register_format(
    "images",
    read=_read,
    detect=_detect,
    description="a folder of images (DICOM, PNG, TIFF, ...) without annotations",
    # Last: any folder holding an image would match, annotated or not.
    priority=90,
    layout=_LAYOUT,
)
