"""CSV annotations: one row per image, `image, <name>_x, <name>_y, ...`.

Optional `row_mm, col_mm` columns give the pixel spacing. An empty cell is a
missing landmark. Image paths are relative to the CSV file's folder and must stay
inside it (`lmjax.data.limits`); an infinite coordinate is an error.
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from lmjax.data import limits
from lmjax.data.formats import ReadOptions, register_format
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record, as_spacing

SPACING_COLUMNS = ("row_mm", "col_mm")


def _float(cell: str, where: str) -> float:
    cell = (cell or "").strip()
    if cell == "" or cell.lower() == "nan":
        return math.nan
    try:
        value = float(cell)
    except ValueError as e:
        raise LandmarkDataError(f"{where}: {cell[:40]!r} is not a number") from e
    if not limits.finite_float32(value):
        raise LandmarkDataError(f"{where}: {cell[:40]!r} is not a finite number")
    return value


def landmark_names_from_header(header: list[str], source: str) -> tuple[str, ...]:
    coords = [h for h in header[1:] if h not in SPACING_COLUMNS]
    names = []
    for h in coords:
        if not (h.endswith("_x") or h.endswith("_y")):
            raise LandmarkDataError(f"{source}: column {h!r} is neither <name>_x nor <name>_y")
        if h.endswith("_x"):
            names.append(h[:-2])
    missing = [f"{n}_y" for n in names if f"{n}_y" not in coords]
    if missing or len(coords) != 2 * len(names):
        raise LandmarkDataError(f"{source}: x and y columns do not pair up (missing {missing})")
    return tuple(names)


def load_csv(
    path: str | pathlib.Path,
    *,
    image_dir: str | pathlib.Path | None = None,
    landmark_set: LandmarkSet | None = None,
) -> Dataset:
    """Reads a landmark CSV file.

    Args:
      path: the CSV file, or a folder holding exactly one.
      image_dir: folder the `image` column is relative to (default: the CSV's).
      landmark_set: expected landmarks; by default the header's names.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise LandmarkDataError(f"{path}: expected one .csv file, found {len(found)}")
        path = found[0]
    base = pathlib.Path(image_dir) if image_dir else path.parent
    text = limits.read_text(path, "CSV file")
    with limits.malformed(str(path), "CSV file"):
        rows = list(csv.reader(text.splitlines()))
    if not rows or not rows[0] or rows[0][0].strip() != "image":
        raise LandmarkDataError(f"{path}: the first column must be 'image'")
    header = [h.strip() for h in rows[0]]
    names = landmark_names_from_header(header, str(path))
    if landmark_set is None:
        landmark_set = LandmarkSet(name=path.stem, names=names)
    elif tuple(landmark_set.names) != names:
        raise LandmarkDataError(
            f"{path}: columns name landmarks {list(names)}, "
            f"but the landmark set {landmark_set.name!r} has {list(landmark_set.names)}"
        )
    col = {h: i for i, h in enumerate(header)}
    records, errors = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{path}:{line}"
        if len(row) != len(header):
            errors.append(f"{where}: {len(row)} cells, header has {len(header)}")
            continue
        try:
            pts = [
                [_float(row[col[f"{n}_x"]], where), _float(row[col[f"{n}_y"]], where)]
                for n in names
            ]
            spacing = None
            if all(c in col for c in SPACING_COLUMNS):
                raw = [_float(row[col[c]], where) for c in SPACING_COLUMNS]
                spacing = as_spacing(raw)
        except LandmarkDataError as e:
            errors.append(str(e))
            continue
        image = limits.inside(base, row[0].strip(), source=where, field="image")
        if not image.is_file():
            errors.append(f"{where}: image {image} does not exist")
            continue
        records.append(
            Record(
                image=str(image),
                landmarks=np.asarray(pts, np.float32),
                visible=None,
                spacing=spacing,
                spacing_source="csv" if spacing else "none",
                meta={"annotation": where},
            )
        )
    return Dataset(landmark_set, records, name=path.stem, errors=errors)


def write_csv(
    path: str | pathlib.Path,
    images: list[str],
    landmarks: np.ndarray,
    landmark_names: tuple[str, ...],
    *,
    spacing: np.ndarray | None = None,
) -> None:
    """Writes `[N, K, 2]` landmarks; NaN becomes an empty cell."""
    rows = (
        (image, landmarks[i], None if spacing is None else spacing[i])
        for i, image in enumerate(images)
    )
    write_csv_rows(path, rows, landmark_names, spacing=spacing is not None)


def write_csv_rows(
    path: str | pathlib.Path,
    rows: Iterable[tuple[str, np.ndarray, Sequence[float] | None]],
    landmark_names: tuple[str, ...],
    *,
    spacing: bool = False,
) -> None:
    """`write_csv` from `(image, landmarks [K, 2], (row_mm, col_mm) or None)` rows,
    written as they come (a table of any length in constant memory)."""
    header = ["image"] + [f"{n}_{a}" for n in landmark_names for a in ("x", "y")]
    if spacing:
        header += list(SPACING_COLUMNS)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for image, landmarks, row_spacing in rows:
            marks = np.asarray(landmarks, np.float64).ravel()
            cells = ["" if not np.isfinite(v) else f"{float(v):.3f}" for v in marks]
            if spacing:
                values = (np.nan, np.nan) if row_spacing is None else row_spacing
                cells += ["" if not np.isfinite(v) else f"{float(v):g}" for v in values]
            out.writerow([image, *cells])


def _detect(path: pathlib.Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return path.is_dir() and len(list(path.glob("*.csv"))) == 1


def _read(path: pathlib.Path, options: ReadOptions) -> Dataset:
    return load_csv(path, image_dir=options.image_dir, landmark_set=options.landmark_set)


register_format(
    "csv",
    read=_read,
    detect=_detect,
    description="a CSV file, one row per image: image, <name>_x, <name>_y, ...",
    layout="`image, <name>_x, <name>_y, ...` with optional `row_mm, col_mm`; "
    "empty cells are missing landmarks",
    priority=20,
)
