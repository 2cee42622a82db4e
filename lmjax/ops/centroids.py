"""Host-side landmark centroids from segmentation maps (NumPy and SciPy).

The five coordinate methods of the lower-limb paper, for probability maps
`[B, H, W, K]` (NHWC, landmarks last, values in [0, 1]):

1. `"centroid"`: probability-weighted centroid of the whole channel.
2. `"largest_component"`: the largest connected component of the channel's
   support (`P > support_threshold`, default 0: every pixel with any
   probability), then the probability-weighted centroid inside it. The paper
   does not say how the probability map is binarised to find components; the
   support is the reading that keeps its statement that Methods 1-3 always
   return a coordinate. For sigmoid outputs that are never exactly zero, the
   support is the whole image and Method 2 equals Method 1 unless
   `support_threshold` is raised.
3. `"midpoint"`: keep pixels strictly above `(min + max) / 2` of the channel,
   then the largest component, then the probability-weighted centroid inside it.
4. `"threshold_opening"`: binarise at `P > threshold` (0.5), binary opening with
   a disc of radius `opening_radius` (2; 0 skips it, as the paper does for
   single-pixel masks), then the unweighted centroid of the largest component.
   Zero components is a missed detection; each component beyond the first is a
   false positive.
5. `"max_cluster"`: the pixels equal to the channel's maximum; the centroid of
   the largest connected cluster of them (a single pixel when the maximum is
   unique).

Components use 8-connectivity (`connectivity=2`, as `skimage.measure.label`);
the largest is the one with most pixels, ties going to the first in row-major
order. The whole batch is labelled in one `scipy.ndimage.label` call over a
`[B * K, H, W]` stack whose structuring element never links two channels, and
component sizes and centroids come from `np.bincount`: no per-region loops.
Results equal `skimage.measure.regionprops` centroids (`centroid` for binary
methods, `centroid_weighted` for probability-weighted ones) converted from
(row, col) to (x, y).

A channel with no positive probability (or an empty selection) is missed: NaN
coordinates, confidence 0. Confidence is otherwise the highest probability
among the pixels the centroid was computed from.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

METHODS = {
    "centroid": 1,
    "largest_component": 2,
    "midpoint": 3,
    "threshold_opening": 4,
    "max_cluster": 5,
}
# The binary-mask methods, whose components beyond the first are false positives
# (the paper reports them for Method 4 only: the others always give one coordinate).
FALSE_POSITIVE_METHODS = ("threshold_opening",)


class CentroidResult(NamedTuple):
    """Per-landmark detections from `extract_centroids`.

    Attributes:
      coords: float32 `[B, K, 2]` (x, y) in map pixels; NaN where missed.
      confidence: float32 `[B, K]`, the peak probability of the pixels used; 0
        where missed.
      n_components: int32 `[B, K]`, connected components in the binary image the
        method labels (Method 1: the support `P > 0`; Method 5: clusters of
        maximal pixels).
      missed: bool `[B, K]`, True where no coordinate could be computed.
      false_positives: int32 `[B, K]`, components beyond the first for the
        binary-mask methods (Method 4, `regionprops_centroids`); 0 for the
        others, which always report one coordinate.
    """

    coords: np.ndarray
    confidence: np.ndarray
    n_components: np.ndarray
    missed: np.ndarray
    false_positives: np.ndarray


def _stack(maps: ArrayLike) -> np.ndarray:
    """`[B, H, W, K]` -> float64 `[B * K, H, W]` (channel-major), after checks."""
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise ValueError(f"expected maps [B, H, W, K], got shape {maps.shape}")
    bad = int(np.size(maps) - np.count_nonzero(np.isfinite(maps)))
    if bad:
        raise ValueError(f"maps contain {bad} non-finite values; refusing to extract centroids")
    b, h, w, k = maps.shape
    return np.ascontiguousarray(np.moveaxis(maps, -1, 1), np.float64).reshape(b * k, h, w)


def _disc(radius: int) -> np.ndarray:
    """Disc footprint `(2r + 1, 2r + 1)`: offsets with `i^2 + j^2 <= r^2`."""
    i, j = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return i * i + j * j <= radius * radius


def _per_channel(footprint: np.ndarray) -> np.ndarray:
    """Lifts a 2-D footprint to `[3, ...]` for a `[N, H, W]` stack, never linking channels."""
    lifted = np.zeros((3, *footprint.shape), bool)
    lifted[1] = footprint
    return lifted


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening of each channel with a disc, as skimage's default mode.

    Outside the image counts as foreground for the erosion and background for
    the dilation, so a blob touching the border is not eroded by the border.
    """
    disc = _disc(radius)[None]
    eroded = ndimage.binary_erosion(mask, structure=disc, border_value=1)
    return ndimage.binary_dilation(eroded, structure=disc, border_value=0)


def _largest_component(
    mask: np.ndarray, probs: np.ndarray, *, weighted: bool, connectivity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid of each channel's largest connected component.

    Args:
      mask: bool `[N, H, W]`.
      probs: float64 `[N, H, W]`, the weights (when `weighted`) and confidences.
      weighted: probability-weighted centroid, else the plain pixel centroid.
      connectivity: 1 (4-neighbours) or 2 (8-neighbours).

    Returns:
      coords float64 `[N, 2]` (x, y), NaN where empty; confidence `[N]`;
      component count `[N]`.
    """
    n_chan, h, w = mask.shape
    structure = _per_channel(ndimage.generate_binary_structure(2, connectivity))
    labels, n = ndimage.label(mask, structure=structure)
    # Only foreground pixels matter; work on their flat indices.
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg]
    chan, pix = np.divmod(fg, h * w)
    ys, xs = np.divmod(pix, w)
    chan_of = np.zeros(n + 1, np.int64)
    chan_of[lab] = chan
    sizes = np.bincount(lab, minlength=n + 1)[1:]
    count = np.bincount(chan_of[1:], minlength=n_chan)
    # Sort components by (channel, size descending, label) and keep each
    # channel's first: the largest, ties to the first in row-major order.
    ids = np.arange(1, n + 1)
    order = np.lexsort((ids, -sizes, chan_of[1:]))
    chan_sorted = chan_of[1:][order]
    first = np.r_[True, chan_sorted[1:] != chan_sorted[:-1]] if n else np.zeros(0, bool)
    keep = np.zeros(n + 1, bool)
    keep[ids[order[first]]] = True
    sel = keep[lab]
    c, p = chan[sel], probs.ravel()[fg][sel]
    wts = p if weighted else np.ones_like(p)
    mass = np.bincount(c, weights=wts, minlength=n_chan)
    sx = np.bincount(c, weights=wts * xs[sel], minlength=n_chan)
    sy = np.bincount(c, weights=wts * ys[sel], minlength=n_chan)
    conf = np.zeros(n_chan)
    np.maximum.at(conf, c, p)
    ok = mass > 0
    safe = np.where(ok, mass, 1.0)
    coords = np.where(ok[:, None], np.stack([sx / safe, sy / safe], -1), np.nan)
    return coords, np.where(ok, conf, 0.0), count


def _whole_centroid(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Method 1 on a `[N, H, W]` stack: weighted centroid and peak; NaN where mass is 0."""
    h, w = probs.shape[1:]
    mass = probs.sum(axis=(1, 2))
    ok = mass > 0
    safe = np.where(ok, mass, 1.0)
    x = probs.sum(axis=1) @ np.arange(w) / safe
    y = probs.sum(axis=2) @ np.arange(h) / safe
    coords = np.where(ok[:, None], np.stack([x, y], -1), np.nan)
    return coords, np.where(ok, probs.max(axis=(1, 2)), 0.0)


def _result(coords, conf, count, shape, *, count_false_positives: bool) -> CentroidResult:
    """Packs `[B * K]` channel results into a `CentroidResult` of `[B, K]` arrays."""
    b, k = shape
    missed = ~np.isfinite(coords).all(axis=-1)
    fp = np.maximum(count - 1, 0) if count_false_positives else np.zeros_like(count)
    return CentroidResult(
        coords=coords.reshape(b, k, 2).astype(np.float32),
        confidence=conf.reshape(b, k).astype(np.float32),
        n_components=count.reshape(b, k).astype(np.int32),
        missed=missed.reshape(b, k),
        false_positives=fp.reshape(b, k).astype(np.int32),
    )


def extract_centroids(
    probs: ArrayLike,
    method: int | str,
    *,
    threshold: float = 0.5,
    opening_radius: int = 2,
    support_threshold: float = 0.0,
    connectivity: int = 2,
) -> CentroidResult:
    """Landmark coordinates from probability maps by one of the paper's five methods.

    Args:
      probs: `[B, H, W, K]` probabilities in [0, 1] (NumPy or device array).
      method: 1-5 or its name in `METHODS` (see the module docstring).
      threshold: Method 4's binarisation threshold (`P > threshold`).
      opening_radius: Method 4's opening disc radius in pixels; 0 skips it.
      support_threshold: Method 2's support (`P > support_threshold`).
      connectivity: 1 (4-neighbours) or 2 (8-neighbours) for components.

    Returns:
      A `CentroidResult` of `[B, K]` arrays and `[B, K, 2]` (x, y) coordinates.
    """
    number = METHODS.get(method, method) if isinstance(method, str) else method
    if number not in (1, 2, 3, 4, 5):
        raise ValueError(f"unknown centroid method {method!r}; use 1-5 or one of {list(METHODS)}")
    stack = _stack(probs)
    shape = (np.shape(probs)[0], np.shape(probs)[3])
    common = dict(probs=stack, connectivity=connectivity)
    if number == 1:
        coords, conf = _whole_centroid(stack)
        _, _, count = _largest_component(stack > 0, **common, weighted=False)
    elif number == 2:
        mask = stack > support_threshold
        coords, conf, count = _largest_component(mask, **common, weighted=True)
    elif number == 3:
        lo, hi = stack.min(axis=(1, 2)), stack.max(axis=(1, 2))
        mask = stack > (0.5 * (lo + hi))[:, None, None]
        coords, conf, count = _largest_component(mask, **common, weighted=True)
    elif number == 4:
        mask = stack > threshold
        if opening_radius > 0:
            mask = _open(mask, opening_radius)
        coords, conf, count = _largest_component(mask, **common, weighted=False)
    else:
        peak = stack.max(axis=(1, 2))[:, None, None]
        mask = (stack == peak) & (peak > 0)
        coords, conf, count = _largest_component(mask, **common, weighted=False)
    counts_fp = number in {METHODS[m] for m in FALSE_POSITIVE_METHODS}
    return _result(coords, conf, count, shape, count_false_positives=counts_fp)


def regionprops_centroids(
    masks: ArrayLike, *, threshold: float = 0.5, connectivity: int = 2
) -> CentroidResult:
    """Centroid of each binary channel's largest region (the cephalogram paper).

    The same numbers as labelling `masks > threshold` with
    `skimage.measure.label` and taking `regionprops(...).centroid` of the region
    with the largest area, converted to (x, y); computed batched without
    per-region loops.

    Args:
      masks: `[B, H, W, K]` binary masks or probabilities.
      threshold: foreground is `masks > threshold`.
      connectivity: 1 (4-neighbours) or 2 (8-neighbours).

    Returns:
      A `CentroidResult`; `false_positives` counts regions beyond the first.
    """
    stack = _stack(masks)
    coords, conf, count = _largest_component(
        stack > threshold, stack, weighted=False, connectivity=connectivity
    )
    shape = (np.shape(masks)[0], np.shape(masks)[3])
    return _result(coords, conf, count, shape, count_false_positives=True)
