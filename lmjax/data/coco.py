"""COCO keypoints JSON: `images`, `annotations` with `keypoints` triples, `categories`.

Visibility flag 0 means not labelled (a missing landmark); 1 (labelled but
occluded) and 2 (visible) both give a position. The flags are kept in
`meta["coco_visibility"]`. Category `skeleton` is ignored; flip pairs come from
a `flip_pairs` list of name pairs in the category when present.

Patches: every category without keypoints whose annotations carry polygon
`segmentation`s is a patch item named by the category's `name`, after the
keypoints (categories in file order). Each such annotation gives one image's
patch as a single polygon `[x1, y1, x2, y2, ...]`; its landmark is the polygon's
area centroid. The keypoint annotation's own segmentation is not read.

Hostile files: a `file_name` must stay inside the image folder (no absolute path,
no `..` out of it; `lmjax.data.limits` has the switch that allows it), the JSON
must be under the annotation size limit, and keypoints and boxes must be finite;
any other malformed structure is a LandmarkDataError naming the file.
"""

from __future__ import annotations

import pathlib

import numpy as np

from lmjax.data import limits
from lmjax.data.formats import ReadOptions, register_format
from lmjax.data.items import check_item, item_centroid
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record


def _patch_categories(doc: dict) -> list[dict]:
    """Categories without keypoints that have at least one polygon segmentation."""
    with_polygons = {
        a.get("category_id")
        for a in doc["annotations"]
        if isinstance(a.get("segmentation"), list) and a["segmentation"]
    }
    return [c for c in doc["categories"] if not c.get("keypoints") and c.get("id") in with_polygons]


def _read_patches(
    doc: dict, categories: list[dict], source: pathlib.Path
) -> tuple[dict, dict, list[str]]:
    """`({image_id: {name: [V, 2]}}, {image_id: error line}, warnings)`."""
    names = {c["id"]: str(c.get("name")) for c in categories}
    patches: dict = {}
    problems: dict = {}
    warnings: list[str] = []
    for ann in doc["annotations"]:
        name = names.get(ann.get("category_id"))
        if name is None:
            continue
        where = f"{source}: annotation {ann.get('id')}"
        seg, image_id = ann.get("segmentation"), ann.get("image_id")
        if not seg:
            continue  # no polygon: the patch is missing in this image
        if not isinstance(seg, list):
            warnings.append(f"{where}: {name!r} segmentation is not a polygon list; not read")
            continue
        if name in patches.get(image_id, {}):
            warnings.append(f"{where}: second {name!r} patch for image {image_id}; kept the first")
            continue
        if len(seg) != 1:
            problems.setdefault(
                image_id, f"{where}: patch {name!r} has {len(seg)} polygons, a patch is one"
            )
            continue
        try:
            flat = np.asarray(seg[0], np.float32)
            if flat.ndim != 1 or flat.size % 2:
                raise LandmarkDataError(f"{where}: patch {name!r} polygon has an odd length")
            vertices = check_item("patch", flat.reshape(-1, 2), name=name, source=where)
        except (LandmarkDataError, ValueError, TypeError) as e:
            problems.setdefault(
                image_id,
                str(e) if isinstance(e, LandmarkDataError) else f"{where}: patch {name!r}: {e}",
            )
            continue
        patches.setdefault(image_id, {})[name] = vertices
    return patches, problems, warnings


def _landmark_set(category: dict, source: str, patch_names: tuple[str, ...] = ()) -> LandmarkSet:
    names = tuple(category.get("keypoints") or ())
    if not names:
        raise LandmarkDataError(f"{source}: category {category.get('name')!r} has no keypoints")
    index = {n: i for i, n in enumerate(names)}
    try:
        pairs = tuple((index[a], index[b]) for a, b in category.get("flip_pairs", []))
    except KeyError as e:
        raise LandmarkDataError(f"{source}: flip pair names unknown keypoint {e}") from e
    try:
        return LandmarkSet(
            name=str(category.get("name", "coco")),
            names=names + patch_names,
            flip_pairs=pairs,
            kinds=("landmark",) * len(names) + ("patch",) * len(patch_names),
        )
    except ValueError as e:
        raise LandmarkDataError(f"{source}: {e}") from e


def load_coco(
    path: str | pathlib.Path,
    *,
    image_dir: str | pathlib.Path | None = None,
    category_id: int | None = None,
) -> Dataset:
    """Reads a COCO keypoints file (one annotation per image and category).

    Args:
      path: the JSON file, or a folder holding exactly one.
      image_dir: folder the `file_name`s are relative to (default: the JSON's,
        then its `images/` subfolder).
      category_id: which category to read when the file has several.

    Raises:
      LandmarkDataError: naming the file: unreadable, over the size limit, not a
        COCO keypoints document, malformed, or a `file_name` outside the image
        folder. Problems of single annotations go to the dataset's `errors`.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        if len(found) != 1:
            raise LandmarkDataError(f"{path}: expected one COCO .json file, found {len(found)}")
        path = found[0]
    doc = limits.read_json(path, "COCO JSON file")
    if not isinstance(doc, dict) or not all(
        k in doc for k in ("images", "annotations", "categories")
    ):
        raise LandmarkDataError(f"{path}: needs 'images', 'annotations' and 'categories'")
    with limits.malformed(str(path), "COCO file"):
        return _read_doc(doc, path, image_dir, category_id)


def _read_doc(doc: dict, path: pathlib.Path, image_dir, category_id) -> Dataset:
    """`load_coco`'s dataset from the parsed document `doc` of `path`."""
    cats = [c for c in doc["categories"] if c.get("keypoints")]
    if category_id is not None:
        cats = [c for c in cats if c.get("id") == category_id]
    if len(cats) != 1:
        raise LandmarkDataError(
            f"{path}: {len(cats)} keypoint categories match; choose one with category_id"
        )
    cat = cats[0]
    patch_cats = _patch_categories(doc)
    patch_names = tuple(str(c.get("name")) for c in patch_cats)
    lset = _landmark_set(cat, str(path), patch_names)
    k = lset.num_landmarks - len(patch_names)
    patches, problems, patch_warnings = _read_patches(doc, patch_cats, path)
    root = pathlib.Path(image_dir) if image_dir else path.parent  # file_names stay inside
    dirs = [root] if image_dir else [root, root / "images"]
    images = {im["id"]: im for im in doc["images"]}
    records, errors, warnings, seen = [], [], patch_warnings, set()
    for ann in doc["annotations"]:
        if ann.get("category_id") != cat.get("id"):
            continue
        where = f"{path}: annotation {ann.get('id')}"
        im = images.get(ann.get("image_id"))
        if im is None:
            errors.append(f"{where}: image_id {ann.get('image_id')} is not in 'images'")
            continue
        if im["id"] in seen:
            warnings.append(f"{where}: second annotation for {im['file_name']}; kept the first")
            continue
        kp = np.asarray(ann.get("keypoints", []), np.float64)  # float32 only once checked
        if kp.size != 3 * k:
            errors.append(f"{where}: {kp.size // 3} keypoints, category has {k}")
            continue
        kp = kp.reshape(k, 3)
        if not np.isin(kp[:, 2], (0, 1, 2)).all():
            errors.append(f"{where}: visibility flags {kp[:, 2].tolist()} are not 0, 1 or 2")
            continue
        flags = kp[:, 2].astype(np.int32)
        if not limits.finite_float32(kp[flags > 0, :2]):
            errors.append(f"{where}: a labelled keypoint has a NaN or infinite coordinate")
            continue
        box = ann.get("bbox")
        if box and not (np.shape(box) == (4,) and limits.finite_float32(box)):
            errors.append(f"{where}: bbox {box!r} is not four finite numbers")
            continue
        names = [limits.inside(d, im["file_name"], source=where, field="file_name") for d in dirs]
        image = next((f for f in names if f.is_file()), None)
        if image is None:
            errors.append(f"{where}: image {im['file_name']} not found in {[str(d) for d in dirs]}")
            continue
        if im["id"] in problems:
            errors.append(problems[im["id"]])
            continue
        seen.add(im["id"])
        found = patches.get(im["id"], {})
        centroids = [
            item_centroid("patch", found[n]) if n in found else (np.nan,) * 2 for n in patch_names
        ]
        records.append(
            Record(
                image=str(image),
                landmarks=np.concatenate([kp[:, :2], np.reshape(centroids, (-1, 2))]).astype(
                    np.float32
                ),
                visible=np.concatenate([flags > 0, np.isin(patch_names, list(found))]),
                polygons=found or None,
                boxes=None
                if not box
                else np.asarray([[box[0], box[1], box[0] + box[2], box[1] + box[3]]], np.float32),
                meta={"annotation": where, "coco_visibility": flags},
            )
        )
    keypointed = {
        a.get("image_id") for a in doc["annotations"] if a.get("category_id") == cat["id"]
    }
    for image_id in sorted(set(patches) - keypointed, key=str):
        warnings.append(
            f"{path}: image {image_id} has patches but no keypoint annotation; not read"
        )
    return Dataset(lset, records, name=path.stem, warnings=warnings, errors=errors)


def is_coco_file(path: pathlib.Path) -> bool:
    """A readable JSON object with `annotations` and `categories` (within the size limit)."""
    try:
        doc = limits.read_json(path, "COCO JSON file")
    except LandmarkDataError:
        return False
    return isinstance(doc, dict) and "annotations" in doc and "categories" in doc


def _detect(path: pathlib.Path) -> bool:
    # Any .json file given by name is taken as COCO, so that a bad one is
    # reported by the COCO reader rather than as an unknown format.
    if path.is_file():
        return path.suffix.lower() == ".json"
    if not path.is_dir():
        return False
    jsons = list(path.glob("*.json"))
    return len(jsons) == 1 and is_coco_file(jsons[0])


def _read(path: pathlib.Path, options: ReadOptions) -> Dataset:
    return load_coco(path, image_dir=options.image_dir)


register_format(
    "coco",
    read=_read,
    detect=_detect,
    description="a COCO keypoints JSON file",
    layout="COCO keypoints JSON; visibility 0 is missing; polygon segmentations of "
    "categories without keypoints are patches named by category",
    priority=30,
)
