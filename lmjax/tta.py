"""Test-time augmentation: predictions averaged over mirrored and rescaled inputs.

Multi-scale TTA (`train.tta_scales`, `lmjax predict --tta_scales`) predicts again
on the model input zoomed by each factor `s` about its centre `c = ((W - 1) / 2,
(H - 1) / 2)` (pixel centres on integers) *inside the same input size*: input
pixel `p` moves to `c + s (p - c)`. The compiled eval step keeps its one input
shape, so no scale costs a compile (scaling the input size instead would compile
once per scale and change the maps' resolution). A prediction `q` on the zoomed
image maps back exactly to `c + (q - c) / s`; the readings of every scale and of
the unscaled input are averaged with equal weights (coordinates and confidences).
`s > 1` crops the border: landmarks near the edge leave the view at that scale,
so keep the factors near 1 (0.9, 1.1). Zooming out (`s < 1`) fills the uncovered
border with each image's minimum (the background of a radiograph), since
normalised images have no fixed black value.

Flip TTA (`with_flip_tta`) averages with the mirrored image. `wrapper` composes
what a config asks for; `read_with` applies it to every reading of a multi-reading
function (an ensemble's members), sharing the forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

from lmjax.evaluate import PredictFn, ReadFn, with_flip_tta


def check_scales(values: Iterable | str | None) -> tuple[float, ...]:
    """Scale factors from a config value or flag: a sequence of numbers or a
    comma-separated string; 1 is dropped (the unscaled prediction is always in).

    Raises:
      ValueError: a factor that is not a positive finite number (one line).
    """
    if values is None:
        return ()
    if isinstance(values, str):
        values = [v for v in values.replace(" ", "").split(",") if v]
    scales = []
    for value in values:
        try:
            s = float(value)
        except (TypeError, ValueError):
            s = math.nan
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"tta_scales needs positive finite factors, got {value!r}")
        if s != 1.0 and s not in scales:
            scales.append(s)
    return tuple(scales)


def zoom_about_centre(images: np.ndarray, scale: float) -> np.ndarray:
    """`images [B, H, W, C]` zoomed by `scale` about the centre, same shape and dtype.

    Output pixel `q` reads input `c + (q - c) / scale` bilinearly; outside the input
    it is the image's minimum.
    """
    images = np.asarray(images)
    b, h, w, channels = images.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    out = np.empty_like(images)
    for i in range(b):
        fill = float(images[i].min()) if images[i].size else 0.0
        for ch in range(channels):
            out[i, :, :, ch] = ndimage.affine_transform(
                images[i, :, :, ch],
                np.full(2, 1.0 / scale),
                offset=centre * (1.0 - 1.0 / scale),
                order=1,
                mode="constant",
                cval=fill,
            )
    return out


def unzoom(coords: np.ndarray, scale: float, input_hw: tuple[int, int]) -> np.ndarray:
    """Coordinates `[..., 2]` (x, y) on a `zoom_about_centre`d input -> the unzoomed input."""
    h, w = input_hw
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0], np.float32)
    return (np.asarray(coords, np.float32) - centre) / np.float32(scale) + centre


def with_scale_tta(predict: PredictFn, scales: Iterable[float]) -> PredictFn:
    """Averages the prediction with those on the input zoomed by each of `scales`.

    `predict(images [B, H, W, C]) -> (coords [B, ..., K, 2], confidence [B, ..., K])`
    at the model input; the wrapper has the same contract. No scales: `predict`.
    """
    scales = check_scales(scales)
    if not scales:
        return predict

    def fn(images: np.ndarray):
        coords, conf = predict(images)
        coords, conf = [np.asarray(coords, np.float32)], [np.asarray(conf, np.float32)]
        for s in scales:
            c, f = predict(zoom_about_centre(images, s))
            coords.append(unzoom(c, s, images.shape[1:3]))
            conf.append(np.asarray(f, np.float32))
        return np.mean(coords, axis=0), np.mean(conf, axis=0)

    return fn


def wrapper(
    config, landmark_set, *, scales: Iterable[float] | None = None
) -> Callable[[PredictFn], PredictFn] | None:
    """The TTA `config` asks for, as `predict -> predict`, or None when none: flip
    (`train.flip_tta`, if the set has left/right pairs), then the scales
    (`scales` if given, else `train.tta_scales`)."""
    flip = bool(config.train.flip_tta) and bool(landmark_set.flip_pairs)
    scales = check_scales(config.train.get("tta_scales", ()) if scales is None else scales)
    if not flip and not scales:
        return None
    perm = landmark_set.flip_permutation() if flip else None

    def wrap(predict: PredictFn) -> PredictFn:
        if flip:
            predict = with_flip_tta(predict, perm)
        return with_scale_tta(predict, scales)

    return wrap


def read_with(read: ReadFn, wrap: Callable[[PredictFn], PredictFn]) -> ReadFn:
    """`read` with `wrap` applied to each of its readings, one forward pass per
    augmented input for all of them; false positives are not counted (None), as
    averaged readings have none."""
    names: list[str] = []

    def stacked(images: np.ndarray):
        readings = read(images)
        names[:] = sorted(readings)
        if len(names) == 1:  # one reading: its arrays as they are
            return readings[names[0]][:2]
        coords = np.stack([np.asarray(readings[n][0], np.float32) for n in names], axis=1)
        conf = np.stack([np.asarray(readings[n][1], np.float32) for n in names], axis=1)
        return coords, conf

    wrapped = wrap(stacked)

    def fn(images: np.ndarray):
        coords, conf = wrapped(images)
        if len(names) == 1:
            return {names[0]: (coords, conf, None)}
        return {n: (coords[:, j], conf[:, j], None) for j, n in enumerate(names)}

    return fn


__all__ = ["check_scales", "read_with", "unzoom", "with_scale_tta", "wrapper", "zoom_about_centre"]
