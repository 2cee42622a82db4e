"""Host-side augmentation: sampled geometry as one 3x3 affine (plus an optional
smooth elastic field), a single resample per sample, and photometric operations.

Geometry follows `lmjax.data.affine`: matrices map the current frame to the next
on `(x, y, 1)`, pixel centres on integers. Photometric operations act on images
scaled to [0, 1] and keep them there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from lmjax.data import affine

GAMMA_SAMPLING = ("log_uniform", "uniform")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, each with its own probability and range.

    Everything is off by default (probabilities 0). Geometric steps are drawn
    inside a group that runs with probability `p_affine`; each step then runs with
    its own probability. Angles are in degrees, translation is a fraction of the
    model input size, scale is a zoom factor (> 1 magnifies).

    Attributes:
      p_affine: probability that the affine group (rotation, scale, translation,
        shear) is applied at all.
      p_rotation, rotation: rotation by U(-rotation, rotation) degrees.
      p_scale, scale: zoom by U(scale[0], scale[1]).
      p_translation, translation: shift by U(-t, t) * size along each axis.
      p_shear, shear: horizontal shear by U(-shear, shear) degrees.
      p_flip: horizontal flip; swaps the landmark set's declared left/right pairs
        (a set without pairs refuses flips when the pipeline is built).
      p_flip_paired: flip probability that applies only to a set with declared
        pairs and is dropped for one without (`resolved_for`).
      p_elastic, elastic_alpha, elastic_grid: smooth displacement drawn as
        N(0, elastic_alpha) output pixels on `elastic_grid` x `elastic_grid`
        cubic B-spline control points.
      p_brightness, brightness: add U(-brightness, brightness).
      p_contrast, contrast: scale about the image mean by U(contrast).
      p_gamma, gamma, gamma_sampling: `x ** g` with g drawn from `gamma`,
        `log_uniform` (g and 1/g equally likely) or `uniform` (as MONAI's
        RandAdjustContrast).
      p_noise, noise_std: Gaussian noise with std U(noise_std).
      p_blur, blur_sigma: Gaussian blur with sigma U(blur_sigma) pixels.
      p_dropout, dropout_holes, dropout_size: set U{holes} boxes to 0, each side
        U(dropout_size) times the image side.
    """

    p_affine: float = 1.0
    p_rotation: float = 0.0
    rotation: float = 0.0
    p_scale: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    p_translation: float = 0.0
    translation: float = 0.0
    p_shear: float = 0.0
    shear: float = 0.0
    p_flip: float = 0.0
    p_flip_paired: float = 0.0
    p_elastic: float = 0.0
    elastic_alpha: float = 0.0
    elastic_grid: int = 5
    p_brightness: float = 0.0
    brightness: float = 0.0
    p_contrast: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    p_gamma: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    gamma_sampling: str = "log_uniform"
    p_noise: float = 0.0
    noise_std: tuple[float, float] = (0.0, 0.0)
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    p_dropout: float = 0.0
    dropout_holes: tuple[int, int] = (1, 4)
    dropout_size: tuple[float, float] = (0.05, 0.15)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name}={v} is not a probability")
            if isinstance(f.default, tuple):
                object.__setattr__(self, f.name, tuple(v))
                if len(v) != 2 or v[0] > v[1]:
                    raise ValueError(f"AugmentConfig.{f.name}={v} is not a (low, high) range")
        if self.elastic_grid < 2 or self.gamma[0] <= 0:
            raise ValueError("AugmentConfig needs elastic_grid >= 2 and gamma > 0")
        if self.gamma_sampling not in GAMMA_SAMPLING:
            raise ValueError(
                f"AugmentConfig.gamma_sampling={self.gamma_sampling!r}; known: {GAMMA_SAMPLING}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: AugmentConfig | None = None) -> AugmentConfig:
        """`base` (default: everything off) with the fields of `d` replaced; a
        `preset` key is `lmjax.data.augment_presets.from_dict`'s.

        Raises:
          ValueError: for an unknown key, naming it.
        """
        d = dict(d)
        base = cls() if base is None else base
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown augmentation options {unknown}; known: {sorted(names)}")
        return dataclasses.replace(base, **d)

    @property
    def flips(self) -> bool:
        return self.p_flip > 0.0

    def resolved_for(self, flip_pairs) -> AugmentConfig:
        """This config for a landmark set: `p_flip_paired` becomes `p_flip` when the
        set declares pairs and is dropped when it does not."""
        if self.p_flip_paired == 0.0:
            return self
        return dataclasses.replace(
            self, p_flip=self.p_flip_paired if flip_pairs else self.p_flip, p_flip_paired=0.0
        )

    def gamma_draw(self, u, exp=math.exp):
        """Gamma for a uniform draw `u` in [0, 1); `exp` is `jnp.exp` on the device."""
        lo, hi = self.gamma
        if self.gamma_sampling == "uniform":
            return lo + (hi - lo) * u
        # Log-uniform so that gamma and 1/gamma are equally likely in symmetric ranges.
        return exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)


# ---------------------------------------------------------------- elastic field


def _bspline_weights(coords: np.ndarray, length: int, grid: int) -> np.ndarray:
    """`[N, grid]` cubic B-spline weights of control points spread over `length` px.

    Coordinates are clamped to the image so the field is constant outside it, and
    rows are normalised so the weights sum to one at the borders too.
    """
    u = np.clip(np.asarray(coords, np.float64), 0, length - 1) * (grid - 1) / max(length - 1, 1)
    t = np.abs(u[:, None] - np.arange(grid)[None, :])
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w / w.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class ElasticField:
    """A smooth displacement `d(q)` in output pixels, used as a backward map.

    Output pixel `q` samples the (affine-warped) input at `q + d(q)`, so a point
    `p` of that frame lands at the `q` solving `q + d(q) = p` (`invert`).

    Attributes:
      coef: `[2, grid, grid]` control displacements (dx, dy), rows then columns.
      out_hw: the output `(height, width)` the field spans.
    """

    coef: np.ndarray
    out_hw: tuple[int, int]

    def at(self, points: np.ndarray) -> np.ndarray:
        """Displacement `[N, 2]` (dx, dy) at `[N, 2]` (x, y) points."""
        g = self.coef.shape[1]
        wy = _bspline_weights(points[:, 1], self.out_hw[0], g)
        wx = _bspline_weights(points[:, 0], self.out_hw[1], g)
        return np.einsum("ki,cij,kj->kc", wy, self.coef, wx)

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """`(dx, dy)`, each float32 `[H, W]`, on the output pixel grid."""
        h, w = self.out_hw
        g = self.coef.shape[1]
        wy = _bspline_weights(np.arange(h), h, g)
        wx = _bspline_weights(np.arange(w), w, g)
        return tuple((wy @ c @ wx.T).astype(np.float32) for c in self.coef)  # type: ignore[return-value]

    def invert(self, points: np.ndarray, iters: int = 50, tol: float = 1e-4):
        """Solves `q + d(q) = p` by fixed-point iteration.

        Converges when the field's Jacobian norm is below one (a fold-free field);
        returns `(q, converged)`. NaN points stay NaN.
        """
        p = np.asarray(points, np.float64)
        ok = np.isfinite(p).all(axis=1)
        q = p.copy()
        err = 0.0
        for _ in range(iters):
            q_new = p.copy()
            q_new[ok] = p[ok] - self.at(q[ok])
            err = np.abs(q_new[ok] - q[ok]).max(initial=0.0)
            q = q_new
            if err < tol:
                break
        return q, bool(err < tol)


def random_elastic(rng: np.random.Generator, out_hw, alpha: float, grid: int) -> ElasticField:
    coef = rng.normal(0.0, alpha, size=(2, grid, grid))
    return ElasticField(coef=coef, out_hw=tuple(out_hw))


# -------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One sample's sampled geometry.

    Attributes:
      matrix: 3x3 affine from the model-input frame (after the fit step) to the
        augmented output frame.
      flipped: whether a horizontal flip is part of `matrix` (labels must swap).
      field: optional elastic field applied after `matrix`.
    """

    matrix: np.ndarray
    flipped: bool = False
    field: ElasticField | None = None


def sample_geometry(
    cfg: AugmentConfig, rng: np.random.Generator, out_hw: tuple[int, int]
) -> Geometry:
    """Draws the geometric augmentation for one sample in the output frame."""
    h, w = out_hw
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    steps = []
    flipped = bool(rng.random() < cfg.p_flip)
    if flipped:
        steps.append(affine.hflip(w))
    if rng.random() < cfg.p_affine:
        if rng.random() < cfg.p_scale:
            steps.append(affine.scale(rng.uniform(*cfg.scale), center=centre))
        if rng.random() < cfg.p_rotation:
            angle = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
            steps.append(affine.rotate(angle, center=centre))
        if rng.random() < cfg.p_shear:
            steps.append(
                affine.shear(math.tan(math.radians(rng.uniform(-1, 1) * cfg.shear)), center=centre)
            )
        if rng.random() < cfg.p_translation:
            tx, ty = rng.uniform(-cfg.translation, cfg.translation, size=2)
            steps.append(affine.translate(tx * w, ty * h))
    field = None
    if rng.random() < cfg.p_elastic and cfg.elastic_alpha > 0:
        field = random_elastic(rng, out_hw, cfg.elastic_alpha, cfg.elastic_grid)
    return Geometry(matrix=affine.compose(*steps), flipped=flipped, field=field)


def warp(
    image: np.ndarray,
    matrix: np.ndarray,
    out_hw: tuple[int, int],
    *,
    field: ElasticField | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resamples `image` once so that source point p lands at `matrix @ p`.

    With `field`, output pixel q reads the source at `matrix^-1 (q + d(q))`; the
    affine and elastic parts still cost a single interpolation.

    Args:
      image: `[H, W]` array (float for order 1, integer labels for order 0).
      matrix: 3x3 source-to-output affine.
      out_hw: output `(height, width)`.
      field: optional elastic field on the output grid.
      order: 1 bilinear, 0 nearest neighbour.
      cval: value outside the source.
    """
    inv = np.linalg.inv(np.asarray(matrix, np.float64))
    kw = dict(order=order, mode="constant", cval=cval, prefilter=False)
    if field is None:
        # SciPy indexes (row, col): swap both axes of the (x, y) inverse affine.
        lin, off = inv[:2, :2][::-1, ::-1], inv[:2, 2][::-1]
        return ndimage.affine_transform(image, lin, offset=off, output_shape=tuple(out_hw), **kw)
    dx, dy = field.dense()
    ys, xs = np.mgrid[0 : out_hw[0], 0 : out_hw[1]].astype(np.float32)
    px, py = xs + dx, ys + dy
    sx = inv[0, 0] * px + inv[0, 1] * py + inv[0, 2]
    sy = inv[1, 0] * px + inv[1, 1] * py + inv[1, 2]
    return ndimage.map_coordinates(image, [sy, sx], **kw)


# ------------------------------------------------------------------ photometric


def coarse_dropout(
    image: np.ndarray, rng: np.random.Generator, holes: tuple[int, int], size: tuple[float, float]
) -> np.ndarray:
    """Sets U{holes} random boxes of the `[H, W]` image to 0 (in place on a copy)."""
    out = image.copy()
    h, w = image.shape[:2]
    for _ in range(rng.integers(holes[0], holes[1] + 1)):
        bh = max(1, round(rng.uniform(*size) * h))
        bw = max(1, round(rng.uniform(*size) * w))
        y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        out[y0 : y0 + bh, x0 : x0 + bw] = 0.0
    return out


def photometric(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, gamma, blur, noise, dropout on a [0, 1] `[H, W]` image.

    The result has the same shape and dtype and stays within [0, 1].
    """
    x = image.astype(np.float32, copy=True)
    if rng.random() < cfg.p_brightness:
        x += rng.uniform(-cfg.brightness, cfg.brightness)
    if rng.random() < cfg.p_contrast:
        m = x.mean()
        x = (x - m) * rng.uniform(*cfg.contrast) + m
    if rng.random() < cfg.p_gamma:
        g = cfg.gamma_draw(rng.random())
        x = np.clip(x, 0.0, 1.0) ** np.float32(g)
    if rng.random() < cfg.p_blur:
        x = ndimage.gaussian_filter(x, rng.uniform(*cfg.blur_sigma))
    if rng.random() < cfg.p_noise:
        x += rng.normal(0.0, rng.uniform(*cfg.noise_std), size=x.shape).astype(np.float32)
    np.clip(x, 0.0, 1.0, out=x)
    if rng.random() < cfg.p_dropout:
        x = coarse_dropout(x, rng, cfg.dropout_holes, cfg.dropout_size)
    return x.astype(image.dtype, copy=False)
