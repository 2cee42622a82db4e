"""`lmjax export`: a trained run as one file that predicts without the training code.

The file format and the runtime are `lmjax.exported`. The program is the run's
eval step (`lmjax.train.step.make_eval_step`: network, ensemble average, the
configured extractor on the device) with the weights as constants, wrapped with
the flip and multi-scale TTA its config (or `flip_tta`, `tta_scales`) asks for
(`lmjax.tta`'s zoom written in jnp), serialized by `jax.export` with a symbolic
batch dimension; or, with `fmt="onnx"`, converted by jax2onnx
(`lmjax.export_onnx`). What the program cannot hold is refused here rather than
exported wrong: host extractors, region models, prompt-driven task modes. A
run's refinement stage (`<workdir>/refine`) joins the StableHLO program
(`refined_fn`: global model, map to original pixels, every refinement pass),
which then also takes the fine images; the ONNX form and `refine=False` hold the
global model only, and `metadata["refine"]` says which.
"""

from __future__ import annotations

import inspect
import math
import os
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmjax import exported, provenance, tta
from lmjax.data.types import LandmarkDataError

FORMATS = ("stablehlo", "onnx")
# Lowered for both, so one file runs on CPU and on NVIDIA GPUs.
DEFAULT_PLATFORMS = ("cpu", "cuda")


class ExportError(LandmarkDataError):
    """A run the exported program cannot represent faithfully."""


def _cache_long_side(input_size) -> int:
    """The evaluation pipeline's cache resolution (`make_dataset`'s default factor)."""
    from lmjax.data.pipeline import make_dataset

    factor = inspect.signature(make_dataset).parameters["cache_factor"].default
    return math.ceil(max(input_size) * factor)


def program_fn(workdir, *, flip_tta: bool = False, tta_scales=None):
    """`(fn, info)`: `fn(images [B, H, W, 1]) -> (coords [B, K, 2], confidence [B, K])`
    at the model input, with the restored weights closed over, and what the
    metadata needs (`config`, `landmark_set`, `stages`, `step`, `refine`).

    Raises:
      ExportError: a run the program cannot represent (see the module doc).
      FileNotFoundError: no checkpoint.
    """
    from lmjax.task import HOST_EXTRACTORS
    from lmjax.train import refine_stage, setup
    from lmjax.train.evaluation import gives_maps
    from lmjax.train.predictors import predictor_for
    from lmjax.train.restore import read_config, restore_trained

    config = read_config(workdir)
    if predictor_for(config.task.mode) is not None:
        raise ExportError(f"{workdir}: task.mode {config.task.mode!r} cannot be exported")
    if config.data.get("roi"):
        raise ExportError(
            f"{workdir}: trained on the crops of region {config.data.roi!r} (data.roi), "
            "which need region boxes at prediction time"
        )
    scales = tta.check_scales(config.train.tta_scales if tta_scales is None else tta_scales)
    config, _, state, eval_step = restore_trained(workdir)
    lset = setup.load_landmark_set(workdir, config)
    if gives_maps(config, eval_step, state) or config.task.extractor in HOST_EXTRACTORS:
        raise ExportError(
            f"{workdir}: extractor {config.task.extractor!r} runs on the host "
            f"(one of {', '.join(HOST_EXTRACTORS)}); the exported program holds device "
            "extractors only (task.extractor)"
        )
    if flip_tta and not lset.flip_pairs:
        raise ExportError(f"flip TTA: landmark set {lset.name!r} has no left/right pairs")
    flip = (flip_tta or bool(config.train.flip_tta)) and bool(lset.flip_pairs)
    perm = jnp.asarray(lset.flip_permutation()) if flip else None
    step = getattr(eval_step, "__wrapped__", eval_step)  # the plain function, traced anew
    params = jax.device_get(state)  # plain arrays: the program's constants

    def forward(images):
        out = step(params, {"image": images})
        return out["coords"].astype(jnp.float32), out["confidence"].astype(jnp.float32)

    def flipped(images):
        coords, conf = forward(images)
        if perm is None:
            return coords, conf
        # As `lmjax.evaluate.with_flip_tta`: the mirrored image, labels swapped back.
        fcoords, fconf = forward(images[:, :, ::-1])
        fcoords = fcoords[:, perm]
        fcoords = fcoords.at[..., 0].set(images.shape[2] - 1 - fcoords[..., 0])
        return (coords + fcoords) / 2, (conf + fconf[:, perm]) / 2

    def fn(images):
        coords, conf = flipped(images)
        if not scales:
            return coords, conf
        # As `lmjax.tta.with_scale_tta`: the mean over the input and its zooms.
        hw = images.shape[1:3]
        coords, conf = [coords], [conf]
        for s in scales:
            c, f = flipped(zoom_about_centre(images, s))
            coords.append(unzoom(c, s, hw))
            conf.append(f)
        return jnp.mean(jnp.stack(coords), 0), jnp.mean(jnp.stack(conf), 0)

    stages = ["global"] + (["flip_tta"] if flip else []) + (["scale_tta"] if scales else [])
    has_refine = refine_stage.has_stage(workdir)
    info = {
        "config": config,
        "landmark_set": lset,
        "stages": stages,
        "step": int(state.step),
        "refine": has_refine,
        "tta_scales": list(scales),
    }
    return fn, info


def _zoom_axis(n: int, scale: float):
    """Bilinear taps along one axis of `lmjax.tta.zoom_about_centre` (computed in
    float64 here, as SciPy does): `(low, high, fraction, inside)`."""
    centre = (n - 1) / 2.0
    src = centre + (np.arange(n, dtype=np.float64) - centre) / scale
    low = np.clip(np.floor(src), 0, n - 1)
    high = np.minimum(low + 1, n - 1)
    inside = (src >= 0) & (src <= n - 1)  # SciPy's "constant": no blending past the edge
    return low.astype(np.int32), high.astype(np.int32), (src - low).astype(np.float32), inside


def zoom_about_centre(images, scale: float):
    """`lmjax.tta.zoom_about_centre` in jnp: `images [B, H, W, C]` zoomed by `scale`
    about the centre, bilinear, each image's minimum outside."""
    _, h, w, _ = images.shape
    y0, y1, fy, in_y = _zoom_axis(h, scale)
    x0, x1, fx, in_x = _zoom_axis(w, scale)
    fy, fx = fy[None, :, None, None], fx[None, None, :, None]
    rows = images[:, y0] * (1 - fy) + images[:, y1] * fy
    out = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    fill = jnp.min(images, axis=(1, 2, 3), keepdims=True)
    return jnp.where((in_y[:, None] & in_x[None, :])[None, :, :, None], out, fill)


def unzoom(coords, scale: float, input_hw):
    """`lmjax.tta.unzoom` in jnp."""
    h, w = input_hw
    centre = jnp.asarray([(w - 1) / 2.0, (h - 1) / 2.0], jnp.float32)
    return (coords - centre) / np.float32(scale) + centre


def refined_fn(workdir, info: dict[str, Any], global_fn):
    """`(fn, spec)`: the global program followed by every pass of the workdir's
    refinement stage (`lmjax.train.refine_stage.refine_points`), as one program:
    `fn(images, to_original [B, 3, 3], fine [B, Hc, Wc, 1], to_fine [B, 3, 3], step [B])
    -> (coords [B, K, 2] original pixels, confidence [B, K])`, the fine images as
    `lmjax.data.fine_images.load_fine` gives them (`FineImages.take`)."""
    from lmjax.ops import patches
    from lmjax.train import refine_stage

    stage = refine_stage.load(workdir, info["config"], info["landmark_set"])
    graphdef, spec = stage.graphdef, stage.spec
    params, rest = jax.device_get(stage.params), jax.device_get(stage.rest)

    def fn(images, to_original, fine, to_fine, step):
        coords, _ = global_fn(images)
        centres = patches.apply_frames(coords, to_original[:, None])
        batch = {"fine": fine, "to_fine": to_fine, "step": step}
        return refine_stage.refine_points(graphdef, params, rest, batch, centres, spec)

    return fn, spec


def export_workdir(
    workdir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    fmt: str = "stablehlo",
    flip_tta: bool = False,
    tta_scales=None,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    refine: bool = True,
) -> dict[str, Any]:
    """Writes the run in `workdir` as an exported model (`lmjax.exported`) to `output`.

    Args:
      fmt: `stablehlo` (`jax.export`) or `onnx` (jax2onnx; `lmjax.export_onnx`).
      flip_tta: also average with the mirrored image (done anyway when the config
        says `train.flip_tta`).
      tta_scales: replaces the config's `train.tta_scales` (`lmjax.tta`; () none).
      platforms: what the StableHLO program is lowered for.
      refine: include the workdir's refinement stage when it has one (StableHLO
        only; the program then takes the fine images too and answers in original
        pixels, `lmjax.exported`).

    Returns:
      The metadata written.

    Raises:
      ExportError: a run the program cannot represent, or an unknown format.
      FileNotFoundError: no checkpoint.
    """
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} not in {FORMATS}")
    fn, info = program_fn(workdir, flip_tta=flip_tta, tta_scales=tta_scales)
    config, lset = info["config"], info["landmark_set"]
    h, w = (int(v) for v in config.data.input_size)
    k = lset.num_landmarks
    fused = info["refine"] and refine and fmt == "stablehlo"
    if fmt == "onnx":
        from importlib import metadata

        from lmjax import export_onnx

        blob = export_onnx.to_onnx_bytes(fn, (h, w))
        program = {
            "serialization": "onnx",
            "platforms": ["onnxruntime"],
            "opset": export_onnx.OPSET,
            "jax2onnx": metadata.version("jax2onnx"),
        }
    else:
        b, hc, wc = jax.export.symbolic_shape("b, hc, wc")
        args = [jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32)]
        spec = None
        if fused:
            fn, spec = refined_fn(workdir, info, fn)
            args += [
                jax.ShapeDtypeStruct((b, 3, 3), jnp.float32),
                jax.ShapeDtypeStruct((b, hc, wc, 1), jnp.float32),
                jax.ShapeDtypeStruct((b, 3, 3), jnp.float32),
                jax.ShapeDtypeStruct((b,), jnp.float32),
            ]
        lowered = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*args)
        blob = bytes(lowered.serialize())
        program = {"serialization": "jax.export", "platforms": list(lowered.platforms)}
    inputs = {exported.INPUT_NAME: ["batch", h, w, 1]}
    if fused:
        inputs |= {
            "to_original": ["batch", 3, 3],
            "fine": ["batch", "canvas_h", "canvas_w", 1],
            "to_fine": ["batch", 3, 3],
            "step": ["batch"],
        }
    program |= {
        "inputs": inputs,
        "outputs": {"coords": ["batch", k, 2], "confidence": ["batch", k]},
        "coords_frame": "original" if fused else "model_input",
        "dtype": "float32",
    }
    stages = info["stages"] + (["refine"] if fused else [])
    origin = provenance.run(workdir, info["step"], stages=tuple(stages))
    if info["refine"] and not fused:
        print(
            f"lmjax export: {workdir} has a refinement stage; the exported model is the "
            "global model only (its predictions are those of lmjax predict --workdir "
            "--norefine)",
            file=sys.stderr,
        )
    metadata = {
        "program": program,
        "preprocessing": {
            "input_size": [h, w],
            "layout": "NHWC, 1 channel",
            "unit_range": "pixels / (2**bit_depth - 1), clipped to [0, 1]; arrays of "
            "unknown depth by the smallest 8/10/12/14/16-bit maximum holding their maximum",
            "cache_long_side": _cache_long_side((h, w)),
            "cache_resize": "Pillow bilinear (anti-aliased), longer side at most "
            "cache_long_side, never enlarged, pixel edges aligned",
            "fit": str(config.data.fit),
            "interpolation": "bilinear, 0 outside the image",
            "normalize": str(config.data.normalize),
            "normalize_epsilon": 1e-6,
        },
        "landmark_set": _landmark_set_dict(lset),
        "spacing": {
            "order": ["row_mm", "col_mm"],
            "x_mm": "x * col_mm",
            "y_mm": "y * row_mm",
            "source": "the file's (DICOM PixelSpacing, else ImagerPixelSpacing), "
            "replaced by a spacing the caller gives; unknown: pixels only",
        },
        "extractor": {
            "name": str(config.task.extractor),
            "temperature": float(config.task.extractor_temperature),
            "kwargs": dict(config.task.get("extractor_kwargs", {})),
            "mode": str(config.task.mode),
            "compute_dtype": str(config.task.compute_dtype),
            "in_program": True,
        },
        "stages": stages,
        "tta_scales": info["tta_scales"],
        "refine": {
            "in_workdir": info["refine"],
            "exported": fused,
            **(_refine_meta(spec) if fused else {}),
        },
        "conformal": _read_json(workdir, "conformal.json"),
        "shape_model": _read_json(workdir, "shape_model.json"),
        "batch_size": int(config.train.batch_size),
        "config": _plain(config.to_dict()),
        "provenance": origin,
        "exported_with": {"jax": jax.__version__, "lmjax": provenance.version()},
    }
    calibrated = (metadata["conformal"] or {}).get("stages", [])
    if metadata["conformal"] is not None and ("refine" in calibrated) != fused:
        print(
            "lmjax export: the conformal radii were calibrated on other stages "
            f"({', '.join(calibrated)}) than exported; their coverage is not guaranteed",
            file=sys.stderr,
        )
    exported.write(output, metadata, blob)
    return metadata


def _refine_meta(spec: dict[str, Any]) -> dict[str, Any]:
    from lmjax.data.fine_images import CANVAS_MULTIPLE

    return {
        "spacing_mm": float(spec["spacing_mm"]),
        "passes": int(spec["passes"]),
        "patch_size": int(spec["patch_size"]),
        "fine_images": "each image resized (as the cache resize) to spacing_mm per pixel "
        "(geometric mean of row and column spacing; without a spacing, spacing_mm "
        "original pixels per sample), zero-padded on one canvas whose sides are "
        f"multiples of {CANVAS_MULTIPLE} (lmjax.data.fine_images.load_fine)",
    }


def _landmark_set_dict(lset) -> dict[str, Any]:
    import dataclasses

    return _plain(dataclasses.asdict(lset))


def _read_json(workdir, name: str):
    import json

    path = pathlib.Path(workdir) / name
    return json.loads(path.read_text()) if path.is_file() else None


def _plain(value):
    """JSON-ready: tuples as lists, NumPy scalars as numbers, non-finite as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = [
    "DEFAULT_PLATFORMS",
    "FORMATS",
    "ExportError",
    "export_workdir",
    "program_fn",
    "refined_fn",
    "unzoom",
    "zoom_about_centre",
]
