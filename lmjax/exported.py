"""Models written by `lmjax export`, run without the training code or the config.

An exported model is one zip file (`.lmjax` by convention) holding

    metadata.json   everything the runtime needs besides the program (below)
    program.bin     the serialized StableHLO program (`jax.export`), or
    model.onnx      the same computation as an ONNX graph (`lmjax export --format=onnx`)

The program maps model inputs `images` float32 `[B, H, W, 1]` (NHWC, any `B`) to
`coords` float32 `[B, K, 2]` ((x, y) in model-input pixels) and `confidence`
`[B, K]`: the network, the test-time augmentation it was exported with and the
landmark extraction (probability map -> coordinates) in one program. Around it
this module does in NumPy what `lmjax predict --workdir` does around the model:

1. decode the file (`lmjax.data.image_io`; DICOM, PNG, JPEG, BMP, TIFF);
2. scale to [0, 1] by the bit depth (`lmjax.data.cache.unit_range`) and shrink
   with Pillow's anti-aliased bilinear filter so that the longer side is at most
   `preprocessing.cache_long_side` (never enlarged; `lmjax.data.cache`);
3. map onto the input size by `preprocessing.fit` (`resize`: stretch, or
   `letterbox`: keep the aspect, centre, pad with 0) with bilinear interpolation
   (`lmjax.data.augment.warp`), pixel centres on integers, edges aligned;
4. normalise by `preprocessing.normalize` (`zscore`: mean and standard deviation
   of the whole step-2 image, the standard deviation at least 1e-6; `unit`: as is);
5. run the program and map its coordinates back through the inverse of steps 2-3
   to pixels of the image as given;
6. millimetres, when the spacing is known: `x_mm = x * col_mm`, `y_mm = y * row_mm`,
   the spacing `(row_mm, col_mm)` from the file (DICOM PixelSpacing, else
   ImagerPixelSpacing; `lmjax.data.image_io`) or given by the caller, which
   replaces the file's; unknown spacing stays unknown (pixels only).

`metadata.json` keys: `format`, `format_version`, `program` (file, serialization,
platforms, inputs and outputs), `preprocessing`, `landmark_set`, `spacing`,
`extractor`, `stages` (what the program holds: "global", "flip_tta", "scale_tta",
"refine"; `tta_scales` the zoom factors),
`refine` (whether the run has a refinement stage and whether the program holds
it: it then also takes `to_original` `[B, 3, 3]` (step 5's affine) and the image
at `refine.spacing_mm` (`lmjax.data.fine_images`: `fine` `[B, Hc, Wc, 1]`, any
canvas, `to_fine` `[B, 3, 3]`, `step` `[B]`) and gives coordinates in original
pixels, `program.coords_frame`), `conformal` and `shape_model` (the
run's `conformal.json` and `shape_model.json`, or null), `batch_size`, `config`
(the run's, for reference; the runtime never reads it) and `provenance`
(`lmjax.provenance.run` of the exported run).

This module imports jax (or onnxruntime for ONNX files), NumPy and `lmjax.data`'s
readers; never `lmjax.train` or `lmjax.models`.
"""

from __future__ import annotations

import json
import os
import pathlib
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from lmjax.data import affine, cache
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, landmark_set_from_dict

FORMAT = "lmjax-exported"
FORMAT_VERSION = 1
METADATA = "metadata.json"
PROGRAMS = {"jax.export": "program.bin", "onnx": "model.onnx"}
INPUT_NAME, OUTPUT_NAMES = "images", ("coords", "confidence")


class ExportedModel(NamedTuple):
    """An exported model read back (`read`)."""

    path: str
    metadata: dict[str, Any]
    landmark_set: LandmarkSet
    # (images float32 [B, H, W, 1] at the model input, and with a refinement stage
    # to_original, fine, to_fine, step) -> (coords [B, K, 2], confidence [B, K])
    run: Callable[..., tuple[np.ndarray, np.ndarray]]


def is_exported(path: str | os.PathLike) -> bool:
    """Whether `path` is a file written by `lmjax export`."""
    p = pathlib.Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        if METADATA not in z.namelist():
            return False
        try:
            return json.loads(z.read(METADATA)).get("format") == FORMAT
        except ValueError:
            return False


def write(path: str | os.PathLike, metadata: dict[str, Any], program: bytes) -> None:
    """Writes an exported model: `metadata` (with `program.serialization` naming the
    program's kind) and the program's bytes; atomically, so a reader never sees a
    partial file."""
    target = pathlib.Path(path)
    name = PROGRAMS[metadata["program"]["serialization"]]
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
    doc["program"] = {**metadata["program"], "file": name}
    partial = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(METADATA, json.dumps(doc, indent=2))
        z.writestr(name, program)
    os.replace(partial, target)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `metadata.json` of an exported model.

    Raises:
      LandmarkDataError: not an exported model, or one of a newer format.
    """
    if not is_exported(path):
        raise LandmarkDataError(f"{path}: not a model written by lmjax export")
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read(METADATA))
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise LandmarkDataError(
            f"{path}: exported model format {meta['format_version']} is newer than this "
            f"lmjax reads ({FORMAT_VERSION}); upgrade lmjax"
        )
    return meta


def read(path: str | os.PathLike) -> ExportedModel:
    """An exported model, ready to run (the program is deserialized, and compiled
    per batch size on first use).

    Raises:
      LandmarkDataError: not an exported model, or an ONNX one without onnxruntime.
    """
    meta = read_metadata(path)
    with zipfile.ZipFile(path) as z:
        blob = z.read(meta["program"]["file"])
    kind = meta["program"]["serialization"]
    run = _jax_program(blob) if kind == "jax.export" else _onnx_program(blob, path)
    return ExportedModel(str(path), meta, landmark_set_from_dict(meta["landmark_set"]), run)


def _jax_program(blob: bytes):
    import jax
    from jax import export

    from lmjax import xla_cpu

    program = export.deserialize(bytearray(blob))
    # The eval step's CPU options (`lmjax.xla_cpu`): other convolution kernels move
    # soft-argmax coordinates by up to ~1e-3 px.
    call = jax.jit(program.call, compiler_options=xla_cpu.compiler_options(jax.devices()[:1]))

    def run(*arrays: np.ndarray):
        coords, conf = call(*(np.asarray(a, np.float32) for a in arrays))
        return np.asarray(coords), np.asarray(conf)

    return run


def _onnx_program(blob: bytes, path):
    try:
        import onnxruntime
    except ImportError as e:
        raise LandmarkDataError(
            f"{path}: an ONNX model needs onnxruntime (pip install 'lmjax[onnx]')"
        ) from e
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])

    def run(images: np.ndarray):
        coords, conf = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.asarray(images, np.float32)})
        return np.asarray(coords), np.asarray(conf)

    return run


def model_input(
    pixels: np.ndarray, bit_depth: int | None, preprocessing: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """`(image float32 [H, W, 1], to_original float32 3x3)`: a decoded `[h, w]`
    image at the model input, as the evaluation pipeline makes it (steps 2-4 of the
    module doc; `lmjax.data.pipeline.Sampler.sample` without augmentation), and the
    affine from model-input pixels back to the given image's."""
    from lmjax.data.augment import warp

    hw = tuple(preprocessing["input_size"])
    img = cache.load_array(pixels, long_side=preprocessing["cache_long_side"], bit_depth=bit_depth)
    fit = affine.resize if preprocessing["fit"] == "resize" else affine.letterbox
    to_input = affine.compose(np.eye(3), fit(img.pixels.shape, hw), affine.identity())
    full = affine.compose(img.to_cache, to_input)
    out = warp(img.pixels, to_input, hw)
    norm = np.array([0.0, 1.0], np.float32)
    if preprocessing["normalize"] == "zscore":
        norm[:] = float(img.pixels.mean()), max(float(img.pixels.std()), 1e-6)
    out = (out - norm[0]) / norm[1]
    return out.astype(np.float32)[..., None], np.linalg.inv(full).astype(np.float32)


def predict_dataset(
    model: ExportedModel, dataset: Dataset, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(coords [N, K, 2] in original pixels, confidence [N, K])` for in-memory
    records (`Record.image` an array, `meta["bit_depth"]` its depth or None)."""
    prep, refine = model.metadata["preprocessing"], model.metadata.get("refine") or {}
    n, k = len(dataset.records), model.landmark_set.num_landmarks
    coords = np.full((n, k, 2), np.nan, np.float32)
    conf = np.zeros((n, k), np.float32)
    for s in range(0, n, batch_size):
        chunk = dataset.records[s : s + batch_size]
        inputs = [model_input(r.image, r.meta.get("bit_depth"), prep) for r in chunk]
        # One shape per batch size: a short last batch is padded, as evaluation does.
        images = np.zeros((batch_size, *inputs[0][0].shape), np.float32)
        images[: len(inputs)] = np.stack([x for x, _ in inputs])
        back = np.tile(np.eye(3, dtype=np.float32), (batch_size, 1, 1))
        back[: len(inputs)] = np.stack([m for _, m in inputs])
        if refine.get("exported"):  # the program answers in original pixels
            from lmjax.data.fine_images import load_fine

            fine = load_fine(chunk, refine["spacing_mm"])
            # Padding rows repeat the last image, as the refinement's own batches do.
            rows = fine.take(np.minimum(np.arange(batch_size), len(chunk) - 1))
            pred, score = model.run(images, back, rows["fine"], rows["to_fine"], rows["step"])
            coords[s : s + len(chunk)] = pred[: len(chunk)]
        else:
            pred, score = model.run(images)
            for i in range(len(chunk)):
                coords[s + i] = affine.apply(np.asarray(pred[i], np.float32), back[i])
        conf[s : s + len(chunk)] = score[: len(chunk)]
    return coords, conf


def loaded_fields(path: str | os.PathLike) -> dict[str, Any]:
    """The fields of `lmjax.predict.Loaded` for an exported model, so that `lmjax
    predict --model` and `lmjax.Predictor.load` run it as they run a workdir."""
    model = read(path)
    meta = model.metadata

    def infer(dataset: Dataset, batch: int):
        coords, conf = predict_dataset(model, dataset, batch)
        return coords, conf, [None] * len(coords)

    return {
        "workdir": str(path),
        "infer": infer,
        "landmark_set": model.landmark_set,
        "config": None,
        "uncertainty": uncertainty(model),
        "step": meta["provenance"].get("checkpoint_step"),
        "stages": tuple(meta["stages"]),
        "origin": origin(model),
        "default_batch": meta["batch_size"],
    }


def uncertainty(model: ExportedModel):
    """The run's conformal radii and shape model as the file carries them
    (`lmjax.review.Uncertainty`, either None).

    Raises:
      ValueError: they name other landmarks than the model's.
    """
    from lmjax import review
    from lmjax.shape_check import from_json

    meta, names = model.metadata, tuple(model.landmark_set.names)
    shape = None if meta.get("shape_model") is None else from_json(meta["shape_model"])
    unc = review.Uncertainty(meta.get("conformal"), shape)
    found = {
        "conformal": unc.radii and unc.radii["landmarks"],
        "shape_model": shape and shape.names,
    }
    for what, got in found.items():
        if got and tuple(got) != names:
            raise ValueError(f"{model.path}: {what} landmarks {list(got)} differ from the model's")
    return unc


def origin(model: ExportedModel) -> dict[str, Any]:
    """The provenance of predictions: the exported run's, plus the file and its SHA-256."""
    from lmjax import provenance

    return {
        **model.metadata["provenance"],
        "exported_model": str(pathlib.Path(model.path).resolve()),
        "exported_sha256": provenance.file_sha256(model.path),
    }


__all__ = [
    "FORMAT",
    "ExportedModel",
    "is_exported",
    "loaded_fields",
    "model_input",
    "origin",
    "predict_dataset",
    "read",
    "read_metadata",
    "uncertainty",
    "write",
]
