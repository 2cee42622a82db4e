"""The ISBI 2015 cephalometric challenge layout.

    RawImage/TrainingData/*.bmp|jpg|png        split "train"
    RawImage/Test1Data/*                       split "test1"
    RawImage/Test2Data/*                       split "test2"
    AnnotationsByMD/400_senior/NNN.txt         19 "x,y" lines, optionally 8 class lines
    AnnotationsByMD/400_junior/NNN.txt

Wang et al., "A benchmark for comparison of dental radiography analysis
algorithms", Medical Image Analysis 31 (2016); 0.1 mm per pixel.
"""

from __future__ import annotations

import pathlib

import numpy as np

from lmjax.data import limits
from lmjax.data.formats import ReadOptions, register_format
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record

ISBI2015_LANDMARKS = LandmarkSet(
    name="isbi2015",
    names=(
        "sella",
        "nasion",
        "orbitale",
        "porion",
        "subspinale",
        "supramentale",
        "pogonion",
        "menton",
        "gnathion",
        "gonion",
        "lower_incisal_incision",
        "upper_incisal_incision",
        "upper_lip",
        "lower_lip",
        "subnasale",
        "soft_tissue_pogonion",
        "posterior_nasal_spine",
        "anterior_nasal_spine",
        "articulare",
    ),
)
ISBI2015_SPACING = (0.1, 0.1)
SPLIT_FOLDERS = {"train": "TrainingData", "test1": "Test1Data", "test2": "Test2Data"}
GROUND_TRUTHS = ("senior", "junior", "mean")
IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png")


def read_isbi_annotation(path: str | pathlib.Path, num_landmarks: int = 19) -> np.ndarray:
    """Reads one annotation file into float32 `[K, 2]` (x, y).

    The official files append the challenge's 8 classification labels as single
    integers; only the first `num_landmarks` "x,y" lines are landmarks.

    Raises:
      LandmarkDataError: naming the file: unreadable, over the annotation size limit
        (`lmjax.data.limits`), a line that is not two finite numbers, or too few lines.
    """
    path = pathlib.Path(path)
    text = limits.read_text(path, "annotation")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    points = []
    for i, line in enumerate(lines[:num_landmarks]):
        parts = line.replace(";", ",").split(",")
        shown = line if len(line) <= 60 else line[:57] + "..."
        if len(parts) != 2:
            raise LandmarkDataError(f"{path}: line {i + 1} is {shown!r}, expected 'x,y'")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError as e:
            raise LandmarkDataError(f"{path}: line {i + 1} is {shown!r}, expected 'x,y'") from e
        if not limits.finite_float32((x, y)):  # nan, inf, or beyond float32
            raise LandmarkDataError(f"{path}: line {i + 1} is {shown!r}, not finite numbers")
        points.append((x, y))
    if len(points) != num_landmarks:
        raise LandmarkDataError(f"{path}: {len(points)} landmark lines, expected {num_landmarks}")
    return np.asarray(points, np.float32)


def is_isbi2015(data_dir: str | pathlib.Path) -> bool:
    root = pathlib.Path(data_dir)
    return (root / "RawImage").is_dir() and (root / "AnnotationsByMD").is_dir()


def load_isbi2015(
    data_dir: str | pathlib.Path,
    *,
    ground_truth: str = "senior",
    splits: tuple[str, ...] | None = None,
) -> Dataset:
    """Reads the ISBI 2015 folder.

    Args:
      data_dir: the folder holding `RawImage/` and `AnnotationsByMD/`.
      ground_truth: "senior", "junior" or "mean" (of the two doctors).
      splits: which of "train", "test1", "test2" to read; None reads those present.

    Returns:
      A Dataset whose records carry split, spacing 0.1 mm and, in `meta`, the
      annotation files used.
    """
    root = pathlib.Path(data_dir)
    if ground_truth not in GROUND_TRUTHS:
        raise ValueError(f"ground_truth must be one of {GROUND_TRUTHS}, got {ground_truth!r}")
    if not is_isbi2015(root):
        raise LandmarkDataError(
            f"{root}: not an ISBI 2015 folder (no RawImage/ and AnnotationsByMD/)"
        )
    if splits is None:
        splits = tuple(s for s, f in SPLIT_FOLDERS.items() if (root / "RawImage" / f).is_dir())
    unknown = [s for s in splits if s not in SPLIT_FOLDERS]
    if unknown:
        raise ValueError(f"unknown ISBI 2015 split {unknown}; known: {list(SPLIT_FOLDERS)}")
    doctors = ("senior", "junior") if ground_truth == "mean" else (ground_truth,)
    k = ISBI2015_LANDMARKS.num_landmarks
    records, errors, warnings = [], [], []
    for split in splits:
        folder = root / "RawImage" / SPLIT_FOLDERS[split]
        if not folder.is_dir():
            errors.append(f"{folder}: split {split!r} folder is missing")
            continue
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            errors.append(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        for image in images:
            files = [root / "AnnotationsByMD" / f"400_{d}" / f"{image.stem}.txt" for d in doctors]
            try:
                points = [read_isbi_annotation(f, k) for f in files]
            except LandmarkDataError as e:
                errors.append(f"{image}: {e}")
                continue
            landmarks = np.mean(points, axis=0).astype(np.float32)
            records.append(
                Record(
                    image=str(image),
                    landmarks=landmarks,
                    visible=None,
                    spacing=ISBI2015_SPACING,
                    spacing_source="dataset",
                    split=split,
                    meta={"annotations": [str(f) for f in files], "ground_truth": ground_truth},
                )
            )
    return Dataset(
        landmark_set=ISBI2015_LANDMARKS,
        records=records,
        name="isbi2015",
        warnings=warnings,
        errors=errors,
    )


def _read(path: pathlib.Path, options: ReadOptions) -> Dataset:
    return load_isbi2015(path, ground_truth=options.ground_truth)


register_format(
    "isbi2015",
    read=_read,
    detect=is_isbi2015,
    description="ISBI 2015 cephalometric challenge folder (RawImage/, AnnotationsByMD/)",
    layout="`RawImage/{TrainingData,Test1Data,Test2Data}/*.bmp|jpg|png`, "
    "`AnnotationsByMD/400_{senior,junior}/NNN.txt`; `--ground_truth=senior|junior|mean`",
    priority=10,
)
