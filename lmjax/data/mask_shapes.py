"""Binary masks back to item geometry: a patch's polygon and an outline's polyline, in
(x, y) pixels of the mask, as LabelMe and `Record.polygons` hold them."""

from __future__ import annotations

from collections import deque

import numpy as np
from skimage import measure, morphology

# Vertices closer than this (pixels) to the simplified line are dropped.
TOLERANCE = 0.5


def patch_polygon(mask: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """`[V, 2]` (x, y) vertices of the largest connected region's outer contour (at
    half-pixel accuracy, open: the last vertex is not the first); `[0, 2]` when the
    mask is empty."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros((0, 2), np.float32)
    labels = measure.label(mask, connectivity=2)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    region = np.pad(labels == largest, 1)  # a region touching the border still closes
    contour = max(measure.find_contours(region.astype(np.float32), 0.5), key=len)
    contour = measure.approximate_polygon(contour, tolerance) - 1.0
    if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
        contour = contour[:-1]
    return contour[:, ::-1].astype(np.float32)


def _farthest(start: tuple[int, int], pixels: set) -> tuple[tuple[int, int], dict]:
    """The skeleton pixel farthest from `start` (8-connected steps) and the BFS parents."""
    parent = {start: None}
    queue, last = deque([start]), start
    while queue:
        last = queue.popleft()
        y, x = last
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nxt = (y + dy, x + dx)
                if nxt in pixels and nxt not in parent:
                    parent[nxt] = last
                    queue.append(nxt)
    return last, parent


def outline_polyline(mask: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """`[V, 2]` (x, y) vertices along the middle of a stroke: the longest path through
    the skeleton of the largest connected region (from one end to the other);
    `[0, 2]` when the mask is empty."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros((0, 2), np.float32)
    labels = measure.label(mask, connectivity=2)
    largest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    skeleton = morphology.skeletonize(largest)
    pixels = set(zip(*np.nonzero(skeleton), strict=True))
    if not pixels:
        return np.zeros((0, 2), np.float32)
    # Two sweeps of breadth-first search find the ends of the longest path in a tree.
    end, _ = _farthest(next(iter(pixels)), pixels)
    other, parent = _farthest(end, pixels)
    path, node = [], other
    while node is not None:
        path.append(node)
        node = parent[node]
    line = np.asarray(path, np.float64)
    if len(line) > 2:
        line = measure.approximate_polygon(line, tolerance)
    return line[:, ::-1].astype(np.float32)


__all__ = ["outline_polyline", "patch_polygon"]
