"""Named datasets: find the format of a folder and read it into a Dataset.

Spacing precedence for a record: the `spacing` argument (the user's), then what
the annotation format states (ISBI 2015's 0.1 mm, CSV spacing columns), then the
image file's own tags (DICOM), else unknown.
"""

from __future__ import annotations

import pathlib

from lmjax.data import builtin_formats, image_io  # noqa: F401  (registers the formats)
from lmjax.data.formats import ReadOptions, detect_format, get_format, list_formats
from lmjax.data.image_folder import load_images_folder
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, as_spacing

__all__ = ["detect_format", "load_dataset", "load_images_folder", "resolve_file_spacing"]

PHANTOM = "phantom"


def __getattr__(name: str):
    # FORMATS is computed on access so that it includes formats registered later.
    if name == "FORMATS":
        return tuple(list_formats())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
      format: a registered format (`list_formats()`); detected from the folder
        when None.
      ground_truth, image_dir, landmark_set, strict, phantom_size, seed: passed
        to the format's reader as `ReadOptions` (see there); `landmark_set` is
        also checked against what the reader returns.
      spacing: `(row_mm, col_mm)` for every image, overriding files and formats.

    Raises:
      LandmarkDataError: the folder has no data of the format, or its landmark
        count does not match `landmark_set`.
    """
    options = ReadOptions(
        ground_truth=ground_truth,
        image_dir=image_dir,
        landmark_set=landmark_set,
        strict=strict,
        phantom_size=phantom_size,
        seed=seed,
    )
    made = format is not None and get_format(format).layout is None
    if made or data_dir is None:
        # Made, not read (a phantom): there are no files to check or take spacing from.
        return get_format(format if made else PHANTOM).read(None, options)
    spec = get_format(format if format is not None else detect_format(data_dir))
    ds = spec.read(pathlib.Path(data_dir), options)
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
