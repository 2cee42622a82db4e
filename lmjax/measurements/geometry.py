"""Vectorised plane geometry for measurements: `[N, 2]` points in, `[N]` values out.

Points are `(x, y)` with y pointing down the image, as every landmark in lmjax.
Measurement functions receive them already scaled to millimetres (x by col_mm, y
by row_mm) so that angles are right on anisotropic pixels too; with unknown
spacing they stay in pixels, which assumes square pixels.

Degenerate geometry (a zero-length direction) is never turned into a number:
functions collect a reason per image in a `Reasons` and the value becomes NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmjax.data.types import as_spacing

# Two points closer than this (mm, or px without spacing) are coincident: far below
# any annotation precision, far above float rounding of coordinates in the thousands.
EPS = 1e-6


class Reasons:
    """Why each of `n` images has no value; the first reason recorded wins."""

    def __init__(self, n: int):
        self.reason = np.full(n, None, dtype=object)

    def require(self, ok: np.ndarray, reason: str) -> None:
        """Records `reason` for the images where `ok` is False and nothing is recorded yet."""
        bad = ~np.asarray(ok, bool) & np.equal(self.reason, None)
        self.reason[bad] = reason

    def finish(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(values, reasons)` with NaN wherever a reason was recorded."""
        values = np.where(np.equal(self.reason, None), values, np.nan).astype(np.float64)
        return values, self.reason


def spacing_table(spacing: Any, n: int) -> np.ndarray:
    """`[N, 2]` (row_mm, col_mm) from None, one pair, or per-image pairs; NaN rows unknown."""
    out = np.full((n, 2), np.nan)
    if spacing is None:
        return out
    arr = np.asarray(spacing, dtype=object)
    if arr.shape == (2,) and all(v is not None and np.isscalar(v) for v in arr):
        rows: Sequence[Any] = [spacing] * n  # one (row_mm, col_mm) for every image
    else:
        rows = list(spacing)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} spacings for {n} images")
    for i, row in enumerate(rows):
        sp = None if row is None else as_spacing(np.asarray(row, np.float64).ravel().tolist())
        if sp is not None:
            out[i] = sp
    return out


def to_physical(points: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Scales `[N, ..., 2]` (x, y) pixels by `[N, 2]` (row_mm, col_mm); NaN rows keep pixels."""
    points = np.asarray(points, np.float64)
    scale = np.where(np.isfinite(spacing), spacing, 1.0)[:, ::-1]  # x by col_mm, y by row_mm
    return points * scale.reshape((scale.shape[0],) + (1,) * (points.ndim - 2) + (2,))


def length(v: np.ndarray) -> np.ndarray:
    """Euclidean length of `[N, 2]` vectors."""
    return np.hypot(v[..., 0], v[..., 1])


def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z of the 3-D cross product; positive when v turns clockwise from u on screen (y down)."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]


def angle_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unsigned angle in degrees, in [0, 180], between direction vectors `[N, 2]`.

    atan2 of (|cross|, dot) rather than arccos of a cosine: exact at 0 and 180,
    where arccos loses half the digits.
    """
    return np.degrees(np.arctan2(np.abs(cross(u, v)), dot(u, v)))


def signed_angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle in degrees, in (-180, 180], from u to v; positive clockwise on screen (y down)."""
    return np.degrees(np.arctan2(cross(u, v), dot(u, v)))


def nonzero(v: np.ndarray) -> np.ndarray:
    """True where the vector is longer than EPS (a usable direction)."""
    return length(v) > EPS


def unit(v: np.ndarray) -> np.ndarray:
    """`v / |v|`; rows of zero length give NaN (callers check `nonzero` first)."""
    n = length(v)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > EPS, v / np.where(n > EPS, n, 1.0), np.nan)
