"""What `lmjax predict` writes per image and per job.

Per image, `<stem>.json`, `<stem>.png` and `<stem>.labelme.json` are written under
temporary names and renamed together, so a failure leaves nothing half-written; the
job's `predictions.csv` and `provenance.json` are rebuilt from the JSON files at the
end, so memory does not grow with the number of images."""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from lmjax import review as queue
from lmjax.anonymize import scrub_text
from lmjax.data import image_io
from lmjax.data.labelme import write_labelme
from lmjax.data.tabular import write_csv_rows
from lmjax.data.types import LandmarkSet, Radiograph
from lmjax.overlay import measurement_lines, segments_for
from lmjax.overlay import overlay as draw_overlay
from lmjax.predict_inputs import from_doc, output_extensions, relative

# zlib level 1: a full-size cephalogram overlay encodes 4x faster than Pillow's default
# 6 (0.24 vs 0.94 s) for 7 % more bytes; encoding was half of predict's time per image.
PNG_COMPRESS_LEVEL = 1


def prediction_doc(
    path: pathlib.Path | str,
    rad: Radiograph,
    coords: np.ndarray,
    conf: np.ndarray,
    lset: LandmarkSet,
    measured: dict[str, Any],
    regions: list[dict[str, Any]] | None = None,
    uncertainty: queue.Annotation | None = None,
    origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `<stem>.json` content of one image (also `lmjax.api.Result.to_dict()`):
    `coords` `[K, 2]` (original pixels, NaN where the model gave none) and `conf`
    `[K]` per landmark, in mm too when the spacing is known; `regions` and
    `uncertainty` as in `write_outputs`; `origin`: the `provenance` block
    (`lmjax.provenance`: version, config, checkpoint and input hashes)."""
    landmarks = []
    for name, (x, y), c in zip(lset.names, coords.tolist(), conf.tolist(), strict=True):
        ok = bool(np.isfinite(x) and np.isfinite(y))
        entry = {"name": name, "x": x if ok else None, "y": y if ok else None, "confidence": c}
        if rad.spacing is not None:  # (row_mm, col_mm): x goes with columns
            entry["x_mm"] = round(x * rad.spacing[1], 4) if ok else None
            entry["y_mm"] = round(y * rad.spacing[0], 4) if ok else None
        if uncertainty is not None:
            entry.update(uncertainty.fields[len(landmarks)])
        landmarks.append(entry)
    doc = {
        "image": str(path),
        "image_size": list(rad.shape),
        "spacing": list(rad.spacing) if rad.spacing is not None else None,
        "spacing_source": rad.spacing_source,
        "landmark_set": lset.name,
        "landmarks": landmarks,
        "measurements": measured,
        "warnings": list(rad.warnings),
    }
    if regions is not None:
        doc["regions"] = regions
    if origin is not None:
        doc["provenance"] = origin
    return doc


def write_outputs(
    out: pathlib.Path,
    stem: str,
    path: pathlib.Path,
    rad: Radiograph,
    coords: np.ndarray,
    conf: np.ndarray,
    lset: LandmarkSet,
    measured: dict[str, Any],
    regions: list[dict[str, Any]] | None = None,
    uncertainty: queue.Annotation | None = None,
    origin: dict[str, Any] | None = None,
    alias: str | None = None,
    overlay: bool = True,
) -> dict[str, Any]:
    """Writes `<stem>.json`, `.png` (the overlay, unless `overlay` is False) and
    `.labelme.json` for `coords` `[K, 2]` (original pixels, NaN where the model gave
    none) and, from a cascade, `regions` (outline polylines and patch polygons:
    `{"name", "kind", "points", "score", ...}`, kept in the JSON under "regions",
    LabelMe linestrips and polygons); returns the JSON. `stem` may name a subfolder
    of `out` (made as needed). Each file is written under a temporary name and
    renamed when all are complete, the JSON last, so that a failure leaves nothing
    of this image and the JSON marks the others done.
    `uncertainty` (`lmjax.review.annotate`) adds each landmark's radius and shape check
    to the JSON, the LabelMe description and the overlay; `origin` is the JSON's
    `provenance` block. `alias` (`--anonymize_names`) replaces the image's path in
    every file, its reading warnings included; the LabelMe file then carries the
    windowed image, since its imagePath leads nowhere."""
    doc = prediction_doc(
        alias or path, rad, coords, conf, lset, measured, regions, uncertainty, origin
    )
    if alias is not None:
        names = {rad.path: alias, str(path): alias, path.name: alias}
        doc["warnings"] = [scrub_text(w, names) for w in doc["warnings"]]
    target = out / f"{stem}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    grey = image_io.to_display_uint8(rad)
    drawn = {}
    if uncertainty is not None:
        drawn = {"radii_px": uncertainty.ellipse_px, "implausible": uncertainty.implausible}
    lines = measurement_lines(measured)
    drawn |= {"names": lset.names, "segments": segments_for(lset.names)}
    # The JSON is renamed last: its presence marks the others complete.
    exts = [e for e in output_extensions(overlay) if e != ".json"] + [".json"]
    files = {e: out / f"{stem}{e}" for e in exts}
    partial = {e: f.with_name(f".{f.name}.tmp") for e, f in files.items()}
    try:
        if overlay:
            draw_overlay(grey, coords, lines, regions or (), **drawn).save(
                partial[".png"], format="PNG", compress_level=PNG_COMPRESS_LEVEL
            )
        _write_review_labelme(
            partial[".labelme.json"], path, rad, grey, coords, conf, lset, regions,
            uncertainty, image_path=alias or relative(path, target.parent),
            embed=alias is not None,
        )  # fmt: skip
        partial[".json"].write_text(json.dumps(doc, indent=2))
        for e in exts:
            os.replace(partial[e], files[e])
    finally:
        for tmp in partial.values():
            tmp.unlink(missing_ok=True)
    return doc


def _write_review_labelme(
    review, path, rad, grey, coords, conf, lset, regions, uncertainty, *, image_path, embed
) -> None:
    # LabelMe resolves imagePath against the folder of the JSON file. Outlines and
    # patches are their shapes there, not points.
    points = np.where(np.array([k == "landmark" for k in lset.item_kinds])[:, None], coords, np.nan)
    write_labelme(
        review, points, lset.names, image_path=image_path, image_hw=rad.shape, scores=conf,
        regions=regions, descriptions=None if uncertainty is None else uncertainty.descriptions,
    )  # fmt: skip
    # LabelMe opens images with Pillow and shows them unwindowed: DICOM fails and
    # deeper than 8-bit images look black, so those get the windowed image embedded.
    if not embed:
        try:
            with Image.open(path):
                embed = rad.bit_depth > 8
        except Exception:
            embed = True
    if embed:
        doc_lm, png = json.loads(review.read_text()), io.BytesIO()
        Image.fromarray(grey).save(png, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        doc_lm["imageData"] = base64.b64encode(png.getvalue()).decode("ascii")
        review.write_text(json.dumps(doc_lm, indent=2))


def _write_tables(out: pathlib.Path, planned, failed: dict[int, str], model, review) -> None:
    """`predictions.csv`, `provenance.json` and the review of every image with a
    prediction, new or kept, read back from its `<name>.json`."""
    lset, unc = model.landmark_set, model.uncertainty
    items, inputs_sha = [], {}

    def rows():
        for k, item in enumerate(planned):
            if k in failed:
                continue
            doc = json.loads((out / f"{item.name}.json").read_text())
            coords, conf, spacing = from_doc(doc)
            image = item.alias or relative(item.path, out)
            inputs_sha[image] = (doc.get("provenance") or {}).get("input_sha256")
            if review:
                ann = queue.annotate(unc, coords, conf, spacing)
                items.append((image, lset.names, coords, conf, ann))
            yield image, coords, spacing or (np.nan, np.nan)

    table = out / "predictions.csv"
    write_csv_rows(table, rows(), lset.names, spacing=True)
    # Beside the CSV, which stays a plain table: the run and each row's input hash.
    sidecar = {**model.origin, "table": table.name, "input_sha256": inputs_sha}
    (out / "provenance.json").write_text(json.dumps(sidecar, indent=2))
    if review:
        queue.write_review(out, unc, items)
