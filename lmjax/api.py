"""Python API: a trained run as a callable that takes radiographs.

    >>> from lmjax import Predictor
    >>> predictor = Predictor.load(workdir)  # a folder written by lmjax train
    >>> result = predictor(image_path, spacing_mm=0.1)  # a file, a [H, W] array, or a list
    >>> result.landmarks_px.shape == (len(result.names), 2)
    True
    >>> result.landmarks_mm.shape == result.landmarks_px.shape
    True

The landmarks are those `lmjax predict` writes for the same image and options:
the same model stages (`lmjax.predict.load_model`: test-time augmentation,
ensemble average, refinement), the same rounding, measurements and conformal
radii; `Result.to_dict()` is the `<stem>.json` content.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmjax import predict, provenance
from lmjax.data import image_io
from lmjax.data.types import SPACING_NONE, LandmarkDataError, Radiograph, as_spacing

# A file path, or `[H, W]` pixels (bone bright; uint8 are read as 8-bit, others are
# scaled by their maximum as `lmjax.data.cache.unit_range` does for in-memory images).
Image = str | os.PathLike | np.ndarray
SpacingArg = float | Sequence[float] | None


@dataclasses.dataclass(frozen=True)
class Result:
    """One image's landmarks.

    Attributes:
      image: the file path, or `"<array i>"` for the i-th array of a call.
      names: `[K]` landmark names.
      landmarks_px: float64 `[K, 2]` (x, y) in pixels of the image as given, pixel
        centres on integers; NaN where the model gave no position.
      landmarks_mm: `[K, 2]` (x, y) in mm from the image origin, or None when the
        spacing is unknown.
      confidence: `[K]` the model's confidence per landmark.
      spacing_mm: `(row_mm, col_mm)` or None; `spacing_source` says where it came from.
      measurements: clinical measurements `{name: {"value", "unit", "class", ...}}`.
      radius_mm, radius_px: `[K]` conformal radius at `coverage` (`lmjax calibrate`),
        in the unit the run was calibrated in (the other is None); None without
        `conformal.json`. NaN: unbounded for that landmark.
      shape_score, implausible: `[K]` the shape check (`shape_model.json`), or None.
      warnings: problems found while reading the image.
      provenance: lmjax version, config and weights hashes, checkpoint step and the
        input's SHA-256 (`lmjax.provenance`).
    """

    image: str
    names: tuple[str, ...]
    landmarks_px: np.ndarray
    landmarks_mm: np.ndarray | None
    confidence: np.ndarray
    spacing_mm: tuple[float, float] | None
    spacing_source: str
    measurements: dict[str, Any]
    radius_mm: np.ndarray | None = None
    radius_px: np.ndarray | None = None
    coverage: float | None = None
    shape_score: np.ndarray | None = None
    implausible: np.ndarray | None = None
    warnings: tuple[str, ...] = ()
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    doc: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the `<stem>.json` content `lmjax predict` writes for this image."""
        import copy

        return copy.deepcopy(self.doc)


def _column(fields: list[dict[str, Any]], key: str, dtype=np.float64) -> np.ndarray | None:
    """`[K]` of one per-landmark field (None entries -> NaN), or None where absent."""
    if not fields or key not in fields[0]:
        return None
    return np.array([np.nan if f[key] is None else f[key] for f in fields], dtype)


class Predictor:
    """A trained run that predicts landmarks: `Predictor.load(workdir_or_exported)(image)`."""

    def __init__(self, model: predict.Loaded, batch_size: int | None = None):
        self.model = model
        self._batch = model.batch(batch_size)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        flip_tta: bool = False,
        tta_scales: Sequence[float] | None = None,
        batch_size: int | None = None,
    ) -> Predictor:
        """The run in `path`, as `lmjax predict --workdir=path` (or `--model=path`)
        would use it.

        Args:
          path: a training workdir (the folder `lmjax train` wrote: `config.json`,
            `checkpoints/`), or a file written by `lmjax export` (run without the
            training code, `lmjax.exported`).
          flip_tta: also average with the mirrored image (workdirs only: an exported
            model's augmentation is fixed at export).
          tta_scales: multi-scale TTA factors replacing the config's (None: the
            config's; workdirs only).
          batch_size: images per forward pass (default the config's).

        Raises:
          FileNotFoundError: `path` is neither a workdir with a checkpoint nor an
            exported model.
          LandmarkDataError: TTA options for an exported model.
        """
        p = pathlib.Path(path)
        if p.is_file():
            from lmjax import exported

            if not exported.is_exported(p):
                raise FileNotFoundError(
                    f"{path}: not a model written by lmjax export, nor a training workdir"
                )
        elif not p.is_dir() or not ((p / "config.json").is_file() or (p / "checkpoints").is_dir()):
            raise FileNotFoundError(
                f"{path}: not a training workdir; Predictor.load takes the folder lmjax "
                "train wrote (config.json and checkpoints/) or a file lmjax export wrote"
            )
        scales = None if tta_scales is None else tuple(float(s) for s in tta_scales)
        return cls(predict.load_model(p, flip_tta=flip_tta, tta_scales=scales), batch_size)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.model.landmark_set.names)

    def __call__(
        self,
        images: Image | Sequence[Image],
        *,
        spacing_mm: SpacingArg | Sequence[SpacingArg] = None,
    ) -> Result | list[Result]:
        """Landmarks of one image (a `Result`) or of a list of them (a list, predicted
        in batches).

        Args:
          images: a file path (DICOM, PNG, JPEG, BMP, TIFF), a `[H, W]` array, or a
            list of them.
          spacing_mm: `(row_mm, col_mm)`, or one number for square pixels; for a file
            it replaces the spacing the file states; None: the file's (DICOM) or
            unknown. For a list of images: one for all, or a list with one per image
            (each a pair, a number or None; two plain numbers are one pair for all).

        Raises:
          LandmarkDataError: a file cannot be read, or a spacing is invalid.
          ValueError: an array that is not `[H, W]`.
        """
        single = isinstance(images, (str, os.PathLike, np.ndarray))
        items = [images] if single else list(images)
        spacings = _spacings(spacing_mm, len(items), per_item=not single)
        results: list[Result] = []
        # Decoded a batch at a time: full-resolution radiographs are large.
        for s in range(0, len(items), self._batch):
            read = [
                _radiograph(items[i], spacings[i], i)
                for i in range(s, min(s + self._batch, len(items)))
            ]
            rads = [r for r, _ in read]
            done = predict.predict_radiographs(self.model, rads, self._batch)
            results += [self._result(r, p, sha) for (r, sha), p in zip(read, done, strict=True)]
        return results[0] if single else results

    def _result(self, rad: Radiograph, p: predict.Prediction, sha: str) -> Result:
        unc = self.model.uncertainty
        annotated = unc.radii is not None or unc.shape is not None
        lset = self.model.landmark_set
        origin = {**self.model.origin, "input_sha256": sha}
        doc = predict.prediction_doc(
            rad.path, rad, p.coords, p.confidence, lset, p.measurements, p.regions,
            p.annotation if annotated else None, origin,
        )  # fmt: skip
        mm = None
        if rad.spacing is not None:  # (row_mm, col_mm): x goes with columns
            mm = p.coords * np.array([rad.spacing[1], rad.spacing[0]])
        fields = p.annotation.fields
        return Result(
            image=rad.path,
            names=tuple(lset.names),
            landmarks_px=p.coords,
            landmarks_mm=mm,
            confidence=p.confidence,
            spacing_mm=rad.spacing,
            spacing_source=rad.spacing_source,
            measurements=p.measurements,
            radius_mm=_column(fields, "radius_mm"),
            radius_px=_column(fields, "radius_px"),
            coverage=None if unc.radii is None else unc.radii["nominal"],
            shape_score=_column(fields, "shape_score"),
            implausible=_column(fields, "implausible", bool),
            warnings=tuple(rad.warnings),
            provenance=origin,
            doc=doc,
        )


def _spacings(spacing: Any, n: int, *, per_item: bool) -> list[Any]:
    """One spacing argument per image: a list of `n` given for a list of images, else
    the one value repeated."""
    many = per_item and isinstance(spacing, (list, tuple)) and len(spacing) == n
    if many and any(s is None or np.ndim(s) > 0 for s in spacing):
        return list(spacing)
    return [spacing] * n


def _as_spacing(value: SpacingArg, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = [value, value] if np.ndim(value) == 0 else list(value)
    out = as_spacing(pair)
    if out is None:
        raise LandmarkDataError(
            f"{what}: spacing_mm={value!r} is not one or two finite positive numbers "
            "(row_mm, col_mm)"
        )
    return out


def _radiograph(image: Image, spacing: SpacingArg, index: int) -> tuple[Radiograph, str]:
    """`(radiograph, SHA-256 of the input)`: a file read by `lmjax.data.image_io`, or
    an array wrapped as a radiograph."""
    if isinstance(image, np.ndarray):
        name = f"<array {index}>"
        if image.ndim != 2 or 0 in image.shape:
            raise ValueError(f"{name}: pixels of shape {image.shape}, not a [H, W] image")
        sp = _as_spacing(spacing, name)
        bits = 8 if image.dtype == np.uint8 else 0  # 0: unknown, scaled by the maximum
        source = SPACING_NONE if sp is None else "user"
        rad = Radiograph(image.astype(np.float32), sp, source, bits, path=name)
        return rad, provenance.array_sha256(image)
    sp = _as_spacing(spacing, str(image))
    return image_io.read_radiograph(image, spacing=sp), provenance.file_sha256(image)


__all__ = ["Predictor", "Result"]
