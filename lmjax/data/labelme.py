"""LabelMe JSON: read annotated folders, write predictions that LabelMe opens.

Point shapes are landmarks (by label), line and linestrip shapes outlines,
polygons patches, and rectangles boxes. Images are paired with JSON files by file name, because the
`imagePath` inside real files is often stale (so no path from the file is ever opened).
A file over the annotation size limit (`lmjax.data.limits`), a shape that is not an
object, points that are not `[x, y]` pairs of finite numbers, and any other
malformed structure are LandmarkDataErrors naming the file.
"""

from __future__ import annotations

import json
import pathlib
import re
import warnings as pywarnings
from collections.abc import Sequence

import numpy as np

from lmjax.data import limits
from lmjax.data.formats import ReadOptions, register_format
from lmjax.data.items import check_item, item_centroid, item_set
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record

LABELME_VERSION = "5.0.1"
# LabelMe shape type -> item kind; a shape without a type is a polygon.
SHAPE_KINDS = {"point": "landmark", "line": "outline", "linestrip": "outline", "polygon": "patch"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


def natural_key(text: str) -> list:
    """Sort key that orders "l2" before "l10"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _same_image_name(a: str, b: str) -> bool:
    # "1.tif" names "001.tif": numbered files are often written without padding.
    sa, sb = pathlib.PurePath(a.replace("\\", "/")).stem, pathlib.PurePath(b).stem
    if sa.isdigit() and sb.isdigit():
        return int(sa) == int(sb)
    return sa == sb


def _find_image(json_path: pathlib.Path, image_dirs: list[pathlib.Path]) -> pathlib.Path | None:
    for folder in image_dirs:
        for suffix in _IMAGE_SUFFIXES:
            for candidate in (json_path.stem + suffix, json_path.stem + suffix.upper()):
                if (folder / candidate).is_file():
                    return folder / candidate
    return None


def _points(raw: object, path: pathlib.Path, label: str) -> np.ndarray:
    """A shape's points as float32 `[N, 2]` (N may be 0), or a LandmarkDataError."""
    try:
        arr = np.asarray(raw, np.float64)
    except (TypeError, ValueError, OverflowError):
        raise LandmarkDataError(f"{path}: shape {label!r} points are not numbers") from None
    if arr.ndim == 1 and arr.size == 2:  # one point written without its brackets
        arr = arr[None]
    if arr.size and (arr.ndim != 2 or arr.shape[1] != 2):
        raise LandmarkDataError(
            f"{path}: shape {label!r} points have shape {arr.shape}; each point is [x, y]"
        )
    if not limits.finite_float32(arr):  # NaN, Infinity, or beyond float32
        raise LandmarkDataError(f"{path}: shape {label!r} has a NaN or infinite coordinate")
    return arr.reshape(-1, 2).astype(np.float32)


def read_labelme_file(
    path: str | pathlib.Path,
    landmark_names: tuple[str, ...],
    *,
    kinds: tuple[str, ...] | None = None,
    strict: bool = False,
    warnings: list[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict]:
    """Reads one LabelMe JSON file.

    Args:
      path: the JSON file.
      landmark_names: the item labels, in the order of the `K` axis.
      kinds: the kind of each item (`LandmarkSet.kinds`); None when all are
        landmarks, and then line and polygon shapes are kept as plain shapes.
      strict: a duplicated label is an error instead of a warning.
      warnings: list that receives warning lines naming the file.

    Returns:
      `(landmarks [K, 2], polygons, boxes [N, 4], raw json)`; labels absent from
      the file are NaN, and an outline or patch item's landmark is its centroid.

    Raises:
      LandmarkDataError: naming the file: unreadable, over the size limit, not a
        LabelMe document, a malformed shape, an unknown point label, an item drawn
        as the wrong kind, or (with `strict`) a duplicated label.
    """
    path = pathlib.Path(path)
    warnings = [] if warnings is None else warnings
    doc = limits.read_json(path, "LabelMe JSON file")
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise LandmarkDataError(f"{path}: no 'shapes' list; not a LabelMe file")
    with limits.malformed(str(path), "LabelMe file"):
        return _read_shapes(doc, path, landmark_names, kinds, strict, warnings)


def _read_shapes(doc, path, landmark_names, kinds, strict, warnings):
    """`read_labelme_file`'s result from the parsed document `doc`."""
    index = {name: i for i, name in enumerate(landmark_names)}
    item_kinds = kinds or ("landmark",) * len(landmark_names)
    landmarks = np.full((len(landmark_names), 2), np.nan, np.float32)
    polygons: dict[str, np.ndarray] = {}
    boxes = []
    for i, shape in enumerate(doc["shapes"]):
        if not isinstance(shape, dict):
            raise LandmarkDataError(f"{path}: shape {i} is {type(shape).__name__}, not an object")
        label, shape_type = str(shape.get("label", "")), shape.get("shape_type") or "polygon"
        if not isinstance(shape_type, str):
            raise LandmarkDataError(f"{path}: shape {label!r} has shape_type {shape_type!r}")
        points = _points(shape.get("points", []), path, label)
        kind = SHAPE_KINDS.get(shape_type)
        if kind == "landmark" and label not in index:
            raise LandmarkDataError(f"{path}: point label {label!r} is not a landmark")
        if kind == "landmark" and not len(points):
            raise LandmarkDataError(f"{path}: point {label!r} has no coordinates")
        is_item = label in index and (kind == "landmark" or kinds is not None)
        if is_item:
            k = index[label]
            if kind != item_kinds[k]:
                raise LandmarkDataError(
                    f"{path}: {label!r} is a {item_kinds[k]} item but is drawn as a "
                    f"{shape_type} shape"
                )
            point = points[0] if kind == "landmark" else None
            if kind != "landmark":
                points = check_item(kind, points, name=label, source=str(path))
                if not len(points):
                    continue  # an empty shape: the item is missing
                point = item_centroid(kind, points)
            if np.isfinite(landmarks[k]).all():
                what = "point" if kind == "landmark" else f"{kind} (centroid)"
                msg = (
                    f"{path}: label {label!r} appears more than once; kept the first {what} "
                    f"({landmarks[k, 0]:.1f}, {landmarks[k, 1]:.1f}), ignored "
                    f"({point[0]:.1f}, {point[1]:.1f})"
                )
                if strict:
                    raise LandmarkDataError(msg)
                warnings.append(msg)
                continue
            landmarks[k] = point
            if kind != "landmark":
                polygons[label] = points
        elif shape_type == "rectangle" and len(points) == 2:
            lo, hi = points.min(0), points.max(0)
            boxes.append([lo[0], lo[1], hi[0], hi[1]])
        elif kind in ("outline", "patch") and len(points) >= 2:
            polygons[label] = points  # a shape the set has no item for, kept as read
        else:
            warnings.append(f"{path}: shape {label!r} of type {shape_type!r} is not used")
    return landmarks, polygons, np.asarray(boxes, np.float32).reshape(-1, 4), doc


def load_labelme(
    data_dir: str | pathlib.Path,
    *,
    image_dir: str | pathlib.Path | None = None,
    landmark_set: LandmarkSet | None = None,
    strict: bool = False,
) -> Dataset:
    """Reads a folder of LabelMe JSON files and pairs them with images.

    Args:
      data_dir: folder of `*.json` files.
      image_dir: where the images are; by default the JSON folder, then a sibling
        `images/` folder.
      landmark_set: the items to read; by default every label found, as
        landmarks, then outlines, then patches, each in natural order ("l2"
        before "l10"). A label drawn as two kinds of shape is an error.
      strict: duplicated labels are errors, not warnings, and a bad file (bad
        item geometry included) raises instead of being listed in `errors`.
    """
    root = pathlib.Path(data_dir)
    files = sorted(root.glob("*.json"), key=lambda p: natural_key(p.name))
    if not files:
        raise LandmarkDataError(f"{root}: no LabelMe .json files")
    dirs = [pathlib.Path(image_dir)] if image_dir else [root, root.parent / "images"]
    warnings: list[str] = []
    errors: list[str] = []
    labels: dict[str, tuple[str, str]] = {}  # label -> (kind, first file that has it)
    for f in files:
        try:
            doc = limits.read_json(f, "LabelMe JSON file")
        except LandmarkDataError:
            continue  # reported when the file is read below
        shapes = doc.get("shapes") if isinstance(doc, dict) else None
        for s in shapes if isinstance(shapes, list) else ():
            if not isinstance(s, dict):
                continue  # reported below
            label, shape_type = str(s.get("label")), s.get("shape_type") or "polygon"
            kind = SHAPE_KINDS.get(shape_type) if isinstance(shape_type, str) else None
            if kind is None:
                continue
            first = labels.setdefault(label, (kind, f.name))
            if first[0] != kind and landmark_set is None:
                raise LandmarkDataError(
                    f"{root}: label {label!r} is a {first[0]} in {first[1]} but a "
                    f"{shape_type} shape ({kind}) in {f.name}"
                )
    if landmark_set is None:
        kinds = {label: kind for label, (kind, _) in labels.items()}
        landmark_set = item_set(root.name, kinds, sort_key=natural_key)
    unknown = [
        f"{label!r} ({f})"
        for label, (kind, f) in labels.items()
        if kind == "landmark" and label not in landmark_set.names
    ]
    if unknown:
        raise LandmarkDataError(
            f"{root}: point labels {', '.join(unknown)} are not in landmark set "
            f"{landmark_set.name!r} ({landmark_set.num_landmarks} landmarks: "
            f"{', '.join(landmark_set.names[:5])}...)"
        )
    records = []
    for f in files:
        try:
            landmarks, polygons, boxes, doc = read_labelme_file(
                f,
                landmark_set.names,
                kinds=landmark_set.kinds,
                strict=strict,
                warnings=warnings,
            )
        except LandmarkDataError as e:
            if strict:
                raise
            errors.append(str(e))
            continue
        image = _find_image(f, dirs)
        if image is None:
            errors.append(f"{f}: no image named {f.stem}.* in {', '.join(map(str, dirs))}")
            continue
        stated = doc.get("imagePath")
        if isinstance(stated, str) and stated and not _same_image_name(stated, image.name):
            warnings.append(
                f"{f}: imagePath says {stated!r} but the file is paired by name with {image.name!r}"
            )
        records.append(
            Record(
                image=str(image),
                landmarks=landmarks,
                visible=None,
                polygons=polygons or None,
                boxes=boxes if len(boxes) else None,
                meta={"annotation": str(f)},
            )
        )
    for line in warnings:
        pywarnings.warn(line, stacklevel=2)
    return Dataset(landmark_set, records, name=root.name, warnings=warnings, errors=errors)


def write_labelme(
    path: str | pathlib.Path,
    landmarks: np.ndarray,
    landmark_names: tuple[str, ...],
    *,
    image_path: str,
    image_hw: tuple[int, int],
    scores: np.ndarray | None = None,
    regions: list[dict] | None = None,
    descriptions: Sequence[str] | None = None,
) -> None:
    """Writes landmarks as LabelMe point shapes; missing landmarks are left out.

    `scores` (per landmark) go into each shape's `description` so a reviewer can
    see which predictions to check first, followed by `descriptions[k]` (e.g. the
    conformal radius and the shape flag). `regions` (`{"name", "kind", "points"}`,
    optional "score") become linestrips (outlines) and polygons (patches), which
    this reader takes back as the same items.
    """
    shapes = []
    for k, name in enumerate(landmark_names):
        x, y = (float(v) for v in landmarks[k])
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        shape = {
            "label": name,
            "points": [[x, y]],
            "group_id": None,
            "description": " ".join(
                t
                for t in (
                    "" if scores is None else f"score={float(scores[k]):.4f}",
                    "" if descriptions is None else descriptions[k],
                )
                if t
            ),
            "shape_type": "point",
            "flags": {},
        }
        shapes.append(shape)
    for region in regions or ():
        shapes.append(
            {
                "label": region["name"],
                "points": [[float(x), float(y)] for x, y in region["points"]],
                "group_id": None,
                "description": f"score={region['score']:.4f}" if "score" in region else "",
                "shape_type": "linestrip" if region["kind"] == "outline" else "polygon",
                "flags": {},
            }
        )
    doc = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(image_hw[0]),
        "imageWidth": int(image_hw[1]),
    }
    pathlib.Path(path).write_text(json.dumps(doc, indent=2))


def _detect(path: pathlib.Path) -> bool:
    # Tried after COCO, so a folder whose only JSON is a COCO file is not LabelMe.
    return path.is_dir() and any(path.glob("*.json"))


def _read(path: pathlib.Path, options: ReadOptions) -> Dataset:
    return load_labelme(
        path,
        image_dir=options.image_dir,
        landmark_set=options.landmark_set,
        strict=options.strict,
    )


register_format(
    "labelme",
    read=_read,
    detect=_detect,
    description="a folder of LabelMe JSON files, point shapes as landmarks",
    layout="a folder of LabelMe JSON files; point shapes are landmarks, lines and "
    "linestrips outlines, polygons patches, rectangles boxes; images paired by file name "
    "in the same folder, `--image_dir`, or a sibling `images/`",
    priority=40,
)
