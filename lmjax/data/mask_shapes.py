"""Binary masks back to item geometry: a patch's polygon and an outline's polyline, in
(x, y) pixels of the mask, as LabelMe and `Record.polygons` hold them."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
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


def _skeleton_graph(skeleton: np.ndarray):
    """`(ys, xs, graph)`: the skeleton's pixels and their 8-neighbour adjacency."""
    ys, xs = np.nonzero(skeleton)
    index = np.full(skeleton.shape, -1, np.int64)
    index[ys, xs] = np.arange(len(ys))
    rows, cols = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each undirected edge once
        ny, nx = ys + dy, xs + dx
        ok = (ny < skeleton.shape[0]) & (nx >= 0) & (nx < skeleton.shape[1])
        ok[ok] = skeleton[ny[ok], nx[ok]]
        rows.append(index[ys[ok], xs[ok]])
        cols.append(index[ny[ok], nx[ok]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ys), len(ys)))
    return ys, xs, graph.tocsr()


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
    ys, xs, graph = _skeleton_graph(skeleton)
    if not len(ys):
        return np.zeros((0, 2), np.float32)
    # Two sweeps of breadth-first search find the ends of the longest path in a tree.
    end = csgraph.breadth_first_order(graph, 0, directed=False, return_predecessors=False)[-1]
    order, parent = csgraph.breadth_first_order(graph, end, directed=False)
    path, node = [], order[-1]
    while node >= 0:
        path.append(node)
        node = parent[node]
    line = np.stack([ys[path], xs[path]], axis=-1).astype(np.float64)
    if len(line) > 2:
        line = measure.approximate_polygon(line, tolerance)
    return line[:, ::-1].astype(np.float32)


__all__ = ["outline_polyline", "patch_polygon"]
