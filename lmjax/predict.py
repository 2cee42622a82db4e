"""`lmjax predict`: landmarks, measurements and review files for new radiographs.

Per image: `<stem>.json` (landmarks in original pixels, and mm when the spacing is
known; spacing, reading warnings, measurements), `<stem>.png` (windowed, numbered
landmarks) and `<stem>.labelme.json` (for review; corrected, it is training data);
`predictions.csv` has all images. Images are decoded once, a batch at a time, and
go through `predict_dataset` as in-memory records: the evaluation's resize, fit,
normalisation and mapping back through `to_original`."""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmjax import review as queue
from lmjax.data import affine, image_io
from lmjax.data.cache import cache_hw
from lmjax.data.labelme import natural_key, write_labelme
from lmjax.data.tabular import write_csv
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Radiograph, Record
from lmjax.measurements.report import measure_dataset
from lmjax.train.final_model import load_final

MAX_OVERLAY_SIDE = 2048
_COLOURS = ((255, 99, 71), (50, 205, 50), (30, 144, 255), (255, 215, 0), (238, 130, 238))


def collect_inputs(inputs: list[str]) -> list[pathlib.Path]:
    """Image files named by `inputs`, folders giving theirs in natural order; other
    files in a folder are skipped with a note on stderr, a file named twice counts once.

    Raises:
      LandmarkDataError: an input is missing, a named file is not an image file,
        or a folder holds no image files.
    """
    files: list[pathlib.Path] = []
    for path in map(pathlib.Path, inputs):
        if path.is_dir():
            found = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
            for p in found:
                if not image_io.is_image_file(p):  # also false for folders: not recursed
                    print(f"lmjax predict: {p}: not an image file; skipped", file=sys.stderr)
            found = [p for p in found if image_io.is_image_file(p)]
            if not found:
                raise LandmarkDataError(f"{path}: no image files")
            files += found
        elif not path.is_file():
            raise LandmarkDataError(f"{path}: no such file or folder")
        elif not image_io.is_image_file(path):
            raise LandmarkDataError(f"{path}: not an image file (DICOM, PNG, JPEG, BMP or TIFF)")
        else:
            files.append(path)
    first = {p.resolve(): p for p in reversed(files)}
    return [p for p in files if first[p.resolve()] is p]


def unique_stems(files: list[pathlib.Path]) -> list[str]:
    """File stems, with `_2`, `_3`, ... where they collide (ignoring case, as macOS
    and Windows file systems do)."""
    stems: list[str] = []
    for p in files:
        taken, n = {s.lower() for s in stems}, 1
        while (stem := p.stem if n == 1 else f"{p.stem}_{n}").lower() in taken:
            n += 1
        stems.append(stem)
    return stems


def _read(path: pathlib.Path) -> Radiograph | LandmarkDataError:
    try:
        return image_io.read_radiograph(path)
    except LandmarkDataError as e:
        return e


def _relative(path: pathlib.Path, start: pathlib.Path) -> str:
    """`path` relative to `start` with `/`, or absolute across Windows drives."""
    try:
        return pathlib.Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def measurement_lines(measured: dict[str, Any]) -> list[str]:
    """One text line per measurement: name, value with unit, class or why missing."""
    lines = []
    for name, m in measured.items():
        value = "-" if m.get("value") is None else f"{m['value']:.1f} {m.get('unit', '')}"
        tail = m.get("class") or m.get("reason") or ""
        lines.append(f"{name} {value} {tail}".strip())
    return lines


def overlay(
    grey: np.ndarray,
    coords: np.ndarray,
    lines: list[str] = (),
    regions: list[dict] = (),
    *,
    radii_px: np.ndarray | None = None,
    implausible: np.ndarray | None = None,
) -> Image.Image:
    """RGB uint8 `[H, W]` image with landmark k circled and numbered k + 1, outlines
    and patches (`regions`: `{"kind", "points"}`) drawn as lines, and the
    measurement `lines` in the top-left corner; downscaled (points too) to at most
    MAX_OVERLAY_SIDE. `radii_px` `[K, 2]` (x, y semi-axes in original pixels, NaN:
    none) draws each landmark's conformal radius as a thin ellipse of its colour;
    landmarks flagged in `implausible` `[K]` get a red cross and a "!"."""
    pic = Image.fromarray(grey).convert("RGB")
    src_hw = grey.shape[:2]
    dst_hw = cache_hw(src_hw, MAX_OVERLAY_SIDE)
    scale = affine.resize(src_hw, dst_hw)
    if dst_hw != src_hw:
        pic = pic.resize(dst_hw[::-1], Image.BILINEAR)
        coords = affine.apply(coords, scale)
    axes = None
    if radii_px is not None:  # semi-axes scale with the image sides
        axes = np.asarray(radii_px, np.float64) * [dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]]
    draw = ImageDraw.Draw(pic)
    r = max(2, max(dst_hw) // 200)
    for k, region in enumerate(regions):
        points = [tuple(p) for p in affine.apply(np.asarray(region["points"]), scale).tolist()]
        if region["kind"] == "patch" and len(points) > 2:
            points.append(points[0])
        if len(points) > 1:
            draw.line(points, fill=_COLOURS[(k + 2) % len(_COLOURS)], width=max(1, r // 2))
    font = ImageFont.load_default(size=max(10, 3 * r))
    for k, (x, y) in enumerate(np.asarray(coords, np.float64)):
        if np.isfinite(x) and np.isfinite(y):
            colour = _COLOURS[k % len(_COLOURS)]
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=max(1, r // 2))
            flagged = implausible is not None and bool(implausible[k])
            label = f"{k + 1}!" if flagged else str(k + 1)
            draw.text((x + r + 1, y - r), label, fill=colour, font=font)
            if axes is not None and np.isfinite(axes[k]).all():
                ax, ay = axes[k]
                draw.ellipse([x - ax, y - ay, x + ax, y + ay], outline=colour, width=1)
            if flagged:
                c = 2 * r
                for end in ((x - c, y - c, x + c, y + c), (x - c, y + c, x + c, y - c)):
                    draw.line(end, fill=(255, 0, 0), width=max(1, r // 2))
    step = max(10, 3 * r) + 2
    for i, line in enumerate(lines):
        y = 2 + i * step
        draw.rectangle(draw.textbbox((4, y), line, font=font), fill=(0, 0, 0))
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
    return pic


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
) -> dict[str, Any]:
    """Writes `<stem>.json`, `.png`, `.labelme.json` for `coords` `[K, 2]` (original
    pixels, NaN where the model gave none) and, from a cascade, `regions` (outline
    polylines and patch polygons: `{"name", "kind", "points", "score", ...}`, kept
    in the JSON under "regions", LabelMe linestrips and polygons); returns the JSON.
    `uncertainty` (`lmjax.review.annotate`) adds each landmark's radius and shape check
    to the JSON, the LabelMe description and the overlay."""
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
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2))
    grey = image_io.to_display_uint8(rad)
    drawn = {}
    if uncertainty is not None:
        drawn = {"radii_px": uncertainty.ellipse_px, "implausible": uncertainty.implausible}
    lines = measurement_lines(measured)
    overlay(grey, coords, lines, regions or (), **drawn).save(out / f"{stem}.png")
    review, rel = out / f"{stem}.labelme.json", _relative(path, out)
    # LabelMe resolves imagePath against the folder of the JSON file. Outlines and
    # patches are their shapes there, not points.
    points = np.where(np.array([k == "landmark" for k in lset.item_kinds])[:, None], coords, np.nan)
    write_labelme(
        review, points, lset.names, image_path=rel, image_hw=rad.shape, scores=conf,
        regions=regions, descriptions=None if uncertainty is None else uncertainty.descriptions,
    )  # fmt: skip
    # LabelMe opens images with Pillow and shows them unwindowed: DICOM fails and
    # deeper than 8-bit images look black, so those get the windowed image embedded.
    try:
        with Image.open(path):
            embed = rad.bit_depth > 8
    except Exception:
        embed = True
    if embed:
        doc_lm, png = json.loads(review.read_text()), io.BytesIO()
        Image.fromarray(grey).save(png, format="PNG")
        doc_lm["imageData"] = base64.b64encode(png.getvalue()).decode("ascii")
        review.write_text(json.dumps(doc_lm, indent=2))
    return doc


def _model(workdir, flip_tta: bool, tta_scales: tuple[float, ...] | None = None):
    """`(infer, landmark_set, config)` of a trained workdir: `infer(dataset, batch) ->
    (coords, confidence, regions)`; regions per image are None for map-head models,
    which predict through `lmjax.train.final_model.load_final`.
    `tta_scales` replaces the config's `train.tta_scales` (None: the config's)."""
    from lmjax.train.predictors import predictor_for
    from lmjax.train.restore import read_config

    config = read_config(workdir)
    custom = predictor_for(config.task.mode)
    if custom is not None:
        if flip_tta or tta_scales:
            raise LandmarkDataError(f"TTA is not available for task.mode {config.task.mode!r}")
        model = custom(workdir)
        return (lambda dataset, _: model(dataset)), model.landmark_set, config
    # Every stage the run holds (TTA, ensemble average, refinement), as evaluate uses it.
    final = load_final(workdir, flip_tta=flip_tta, tta_scales=tta_scales)

    def infer(dataset, batch):
        coords, conf = final.predict(dataset, batch)
        return coords, conf, [None] * len(coords)

    lset, config = final.landmark_set, final.config
    return infer, lset, config


def run_predict(
    workdir: str | os.PathLike,
    inputs: list[str],
    output_dir: str | os.PathLike,
    *,
    batch_size: int | None = None,
    flip_tta: bool = False,
    review: bool = False,
    tta_scales: tuple[float, ...] | None = None,
) -> list[dict[str, Any]]:
    """Predicts landmarks for image files and folders with a trained workdir.

    Args:
      workdir: the training run's folder; its best checkpoint is used.
      inputs: image files (DICOM, PNG, JPEG, BMP, TIFF) and folders of them.
      output_dir: gets the per-image files and `predictions.csv`.
      batch_size: default the config's; rounded up to a multiple of the devices.
      flip_tta: average with the mirrored image (also done when the config says so).
      tta_scales: multi-scale TTA factors replacing the config's `train.tta_scales`
        (None: the config's; `lmjax.tta.with_scale_tta`).
      review: also write `review.csv` and `review.json`, images and landmarks most
        doubtful first (`lmjax.review`).

    With the workdir's `conformal.json` and `shape_model.json` each landmark gets
    its radius and shape check (`lmjax.review.annotate`).

    Returns:
      Per input image, in order: its `<stem>.json` content, or `{"image", "error"}`
      when it could not be read (also noted on stderr).

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
      LandmarkDataError: a region model (`data.roi`), bad inputs (see
        `collect_inputs`), outputs that would overwrite inputs, flip TTA without
        left/right pairs, or no readable image.
    """
    files = collect_inputs(inputs)
    stems = unique_stems(files)
    out = pathlib.Path(output_dir)
    sources = {p.resolve() for p in files}
    for name in (f"{s}{ext}" for s in stems for ext in (".json", ".png", ".labelme.json")):
        if (out / name).resolve() in sources:
            raise LandmarkDataError(f"{out / name}: the output would overwrite an input image")
    infer, lset, config = _model(workdir, flip_tta, tta_scales)
    if config.data.get("roi"):  # a region model needs its box, which only annotations give
        raise LandmarkDataError(
            f"{workdir}: trained on the crops of region {config.data.roi!r} (data.roi); "
            "predict takes whole images without region boxes: use lmjax evaluate"
        )
    unc = queue.load(workdir, lset.names)
    _uncertainty_notes(workdir, unc, flip_tta, review)
    annotated = unc.radii is not None or unc.shape is not None
    items = []  # the review queue's (image, names, coords, confidence, annotation)
    n = jax.device_count()  # the batch is split over the devices
    batch = -(-(batch_size or config.train.batch_size) // n) * n
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    rows: list[tuple[str, np.ndarray, Any]] = []
    nan = np.full((lset.num_landmarks, 2), np.nan)
    # Threads decode; one batch at a time bounds the memory of full-resolution images.
    with ThreadPoolExecutor(max_workers=min(batch, os.cpu_count() or 1)) as pool:
        for s in range(0, len(files), batch):
            read = list(pool.map(_read, files[s : s + batch]))
            ok = [r for r in read if isinstance(r, Radiograph)]
            # The bit depth gives the unit-range scaling of the file-based cache.
            records = [Record(r.pixels, nan, None, meta={"bit_depth": r.bit_depth}) for r in ok]
            coords, conf, regions = infer(Dataset(lset, records), batch)
            # Rounded once, so the JSON, LabelMe and CSV files hold the same numbers.
            coords, conf = np.round(coords.astype(float), 3), np.round(conf.astype(float), 4)
            spacing = np.array([r.spacing or (np.nan, np.nan) for r in ok]).reshape(-1, 2)
            measured = measure_dataset(coords, spacing, lset, [r.path for r in ok])
            done = iter(zip(coords, conf, measured, regions, strict=True))
            for path, stem, r in zip(files[s : s + batch], stems[s : s + batch], read, strict=True):
                if isinstance(r, LandmarkDataError):
                    print(f"lmjax predict: skipped: {r}", file=sys.stderr)
                    results.append({"image": str(path), "error": str(r)})
                    continue
                xy, c, m, shapes = next(done)
                ann = queue.annotate(unc, xy, c, r.spacing)
                more = {"regions": shapes, "uncertainty": ann if annotated else None}
                results.append(
                    write_outputs(out, stem, path, r, xy, c, lset, m["measurements"], **more)
                )
                rows.append((_relative(path, out), xy, r.spacing or (np.nan, np.nan)))
                items.append((rows[-1][0], lset.names, xy, c, ann))
    if not rows:
        errors = [r["error"] for r in results]
        many = f"none of the {len(errors)} images could be read; first: {errors[0]}"
        raise LandmarkDataError(errors[0] if len(errors) == 1 else many)
    images, coords, spacing = zip(*rows, strict=True)
    table = out / "predictions.csv"
    write_csv(table, list(images), np.stack(coords), lset.names, spacing=np.array(spacing))
    if review:
        queue.write_review(out, unc, items)
    return results


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
