"""Host-side 3x3 affine builders (NumPy), composed per sample by the pipeline.

Matrices act on `(x, y, 1)` column vectors with pixel centres on integers and map
the current frame to the next one; `compose(a, b)` applies `a` first.
"""

from __future__ import annotations

import numpy as np


def identity() -> np.ndarray:
    return np.eye(3, dtype=np.float64)


def compose(*matrices: np.ndarray) -> np.ndarray:
    """The matrix that applies `matrices[0]` first, then `matrices[1]`, ..."""
    out = identity()
    for m in matrices:
        out = np.asarray(m, np.float64) @ out
    return out


def translate(tx: float, ty: float) -> np.ndarray:
    m = identity()
    m[0, 2], m[1, 2] = tx, ty
    return m


def scale(sx: float, sy: float | None = None, center: tuple[float, float] = (0.0, 0.0)):
    sy = sx if sy is None else sy
    cx, cy = center
    return compose(translate(-cx, -cy), np.diag([sx, sy, 1.0]), translate(cx, cy))


def rotate(angle_rad: float, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Rotation by `angle_rad` about `center` (positive turns x towards y)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    r = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    cx, cy = center
    return compose(translate(-cx, -cy), r, translate(cx, cy))


def shear(shx: float, shy: float = 0.0, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    m = np.array([[1.0, shx, 0.0], [shy, 1.0, 0.0], [0.0, 0.0, 1.0]])
    cx, cy = center
    return compose(translate(-cx, -cy), m, translate(cx, cy))


def hflip(width: int) -> np.ndarray:
    """Mirror about the vertical centre line of an image `width` pixels wide."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def resize(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Stretch the whole source image onto the destination (pixel edges aligned)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    # Pixel centres: x_dst + 0.5 = (x_src + 0.5) * sx.
    return compose(translate(0.5, 0.5), np.diag([sx, sy, 1.0]), translate(-0.5, -0.5))


def letterbox(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Uniform scale that fits the source inside the destination, centred, padded."""
    s = min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    pad_x = (dst_hw[1] - src_hw[1] * s) / 2.0
    pad_y = (dst_hw[0] - src_hw[0] * s) / 2.0
    return compose(translate(0.5, 0.5), np.diag([s, s, 1.0]), translate(pad_x - 0.5, pad_y - 0.5))


def apply(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Maps `[..., 2]` points through a 3x3 matrix; NaN stays NaN."""
    points = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return (points @ m[:2, :2].T + m[:2, 2]).astype(np.float32)


def apply_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`(x0, y0, x1, y1)` boxes `[..., 4]` through a 3x3 matrix: the box around the
    four mapped corners (exact for the axis-aligned fits); NaN stays NaN."""
    b = np.asarray(boxes, np.float64)
    corners = np.stack(
        [b[..., [0, 1]], b[..., [2, 1]], b[..., [0, 3]], b[..., [2, 3]]], axis=-2
    )  # [..., 4, 2]
    m = np.asarray(matrix, np.float64)
    moved = corners @ m[:2, :2].T + m[:2, 2]
    return np.concatenate([moved.min(-2), moved.max(-2)], axis=-1).astype(np.float32)
