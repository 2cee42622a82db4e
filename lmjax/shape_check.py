"""Shape plausibility: is landmark k where the other landmarks say it should be?

A statistical shape model of the training split's landmarks (NumPy only):

1. Coordinates in mm per image where its spacing is known, else pixels. Scale is
   removed by the alignment below, so images of either kind mix; mm only undoes
   anisotropic pixels.
2. Generalized Procrustes alignment (similarity: shift, rotation, scale, no
   reflection) of the training shapes to a mean shape of unit RMS size, each
   shape aligned on its annotated landmarks only (missing ones are NaN).
3. For landmark k, the shape is aligned to the mean with k left out; k's residual
   from the mean position is a 2-D vector in mean-shape units. Its location and
   covariance over the training shapes are estimated robustly (trimmed at the
   97.5 % chi-square(2) quantile, with the consistency factor of that trim).
4. A landmark's `shape_score` is the Mahalanobis distance of its leave-k-out
   residual (about sqrt(chi-square(2)) for a typical shape). The fit that scores k
   downweights landmarks that are far off themselves (iteratively reweighted, weight
   min(1, (3 / d)^2)), so one misplaced landmark does not drag the alignment and
   make its neighbours look implausible.
5. `implausible` = score above a threshold: the 99th percentile of the training
   landmarks' scores, and never below sqrt(chi-square(2) 0.99) = 3.03, so at most
   about 1 % of training landmarks are flagged.

Shapes are `[N, K, 2]` (x, y) in original pixels, NaN where missing; spacing is
`[N, 2]` (row_mm, col_mm), NaN rows (or None) unknown.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

SHAPE_FILE = "shape_model.json"
FLAG_QUANTILE = 0.99
_TRIM = 0.975
_HUBER_C = 3.0  # reweighting starts about where chi-square(2) has 1 % left


class ShapeModel(NamedTuple):
    names: tuple[str, ...]
    mean: np.ndarray  # complex [K]: the mean shape, unit RMS size; NaN never annotated
    loc: np.ndarray  # complex [K]: robust location of the leave-k-out residual
    cov: np.ndarray  # [K, 2, 2]: its robust covariance (NaN: too few shapes)
    threshold: float  # score above which a landmark is implausible
    n_shapes: int
    train_flag_rate: float  # share of training landmarks flagged


def chi2_2_quantile(p: float) -> float:
    """The p-quantile of chi-square with 2 degrees of freedom: -2 ln(1 - p)."""
    return -2.0 * math.log(1.0 - p)


def _complex(coords: np.ndarray, spacing: Any) -> np.ndarray:
    """`[N, K]` complex x + iy, in mm for images with a spacing, else pixels."""
    c = np.asarray(coords, np.float64)
    if c.ndim != 3 or c.shape[-1] != 2:
        raise ValueError(f"landmarks must be [N, K, 2], got {c.shape}")
    sp = np.ones((c.shape[0], 2))
    if spacing is not None:
        given = np.asarray(spacing, np.float64).reshape(-1, 2)
        given = np.broadcast_to(given, (c.shape[0], 2))
        known = np.isfinite(given).all(1) & (given > 0).all(1)
        sp[known] = given[known]
    return c[..., 0] * sp[:, None, 1] + 1j * c[..., 1] * sp[:, None, 0]


def _fit(z: np.ndarray, target: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted similarity `a * z + b ~ target` over the last axis (`[..., K]`);
    complex `a` (scale and rotation) and `b` of shape `[...]`, NaN where fewer than
    2 landmarks carry weight or they coincide."""
    w = np.where(np.isfinite(z) & np.isfinite(target), w, 0.0)
    z0, t0 = np.where(w > 0, z, 0), np.where(w > 0, target, 0)
    with np.errstate(all="ignore"):
        sw = w.sum(-1)
        zb, tb = (w * z0).sum(-1) / sw, (w * t0).sum(-1) / sw
        zc, tc = z0 - zb[..., None], t0 - tb[..., None]
        den = (w * np.abs(zc) ** 2).sum(-1)
        a = (w * np.conj(zc) * tc).sum(-1) / den
        ok = ((w > 0).sum(-1) >= 2) & (den > 1e-12 * np.maximum(sw, 1e-300))
        a = np.where(ok, a, np.nan)
        return a, np.where(ok, tb - a * zb, np.nan)


def _normalise(shape: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        c = shape - np.nanmean(shape)
        return c / np.sqrt(np.nanmean(np.abs(c) ** 2))


def procrustes_mean(z: np.ndarray, *, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Generalized Procrustes alignment of complex shapes `[N, K]` (NaN missing).

    Returns `(mean [K], aligned [N, K])`: the mean of unit RMS size, centred, and
    every shape aligned to it on its own annotated landmarks.
    """
    w = np.isfinite(z).astype(np.float64)
    with np.errstate(all="ignore"):
        mean = _normalise(np.nanmean(np.stack([_normalise(s) for s in z]), axis=0))
    for _ in range(iterations):
        a, b = _fit(z, mean[None], w)
        aligned = a[:, None] * z + b[:, None]
        with np.errstate(all="ignore"):
            new = np.nanmean(aligned, axis=0)
        # Tie the orientation to the previous mean, so it does not drift.
        a0, b0 = _fit(new, mean, np.ones_like(w[0]))
        new = _normalise(a0 * new + b0)
        done = np.nanmax(np.abs(new - mean)) < 1e-10
        mean = new
        if done:
            break
    a, b = _fit(z, mean[None], w)
    return mean, a[:, None] * z + b[:, None]


def _leave_one_out(z: np.ndarray, mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    """`[N, K]` complex residual of each landmark from the mean after aligning the
    shape on the others (weights `w [N, K]`)."""
    k = z.shape[1]
    others = w[:, None, :] * (1.0 - np.eye(k))[None]  # [N, left out, K]
    a, b = _fit(np.broadcast_to(z[:, None, :], others.shape), mean[None, None], others)
    return a * z + b - mean[None]


def _robust_gaussian(r: np.ndarray) -> tuple[complex, np.ndarray]:
    """Location and covariance `[2, 2]` of complex residuals `[N]` (NaN left out),
    trimmed at the `_TRIM` chi-square(2) quantile and rescaled for the trim."""
    v = np.stack([r.real, r.imag], -1)
    v = v[np.isfinite(v).all(1)]
    if len(v) < 3:
        return complex(np.nan, np.nan), np.full((2, 2), np.nan)
    keep = np.ones(len(v), bool)
    cut = chi2_2_quantile(_TRIM)
    # E[d^2 | d^2 < cut] / 2 for chi-square(2): P(chi2_4 < cut) / P(chi2_2 < cut)
    factor = _TRIM / (1 - math.exp(-cut / 2) * (1 + cut / 2))
    for _ in range(10):
        loc = np.median(v[keep], axis=0) if keep.sum() < 5 else v[keep].mean(0)
        cov = np.cov(v[keep].T, bias=True) * (factor if not keep.all() else 1.0)
        cov = cov + np.eye(2) * (1e-9 + 1e-6 * np.trace(cov) / 2)
        d2 = np.einsum("ni,ij,nj->n", v - loc, np.linalg.inv(cov), v - loc)
        new = d2 <= cut
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    return complex(loc[0], loc[1]), cov


def _mahalanobis(r: np.ndarray, loc: np.ndarray, inv: np.ndarray) -> np.ndarray:
    d = r - loc[None]
    v = np.stack([d.real, d.imag], -1)
    with np.errstate(all="ignore"):
        return np.sqrt(np.einsum("nki,kij,nkj->nk", v, inv, v))


def _inverse(cov: np.ndarray) -> np.ndarray:
    out = np.full_like(cov, np.nan)
    ok = np.isfinite(cov).all((1, 2))
    out[ok] = np.linalg.inv(cov[ok])
    return out


def _scores(model: ShapeModel, z: np.ndarray) -> np.ndarray:
    """`[N, K]` Mahalanobis scores of complex shapes (see the module docstring)."""
    inv = _inverse(model.cov)
    usable = np.isfinite(model.mean) & np.isfinite(model.cov).all((1, 2))
    w = (np.isfinite(z) & usable[None]).astype(np.float64)
    u = w.copy()
    for _ in range(10):  # reweighting by how far each landmark is from the fit
        a, b = _fit(z, model.mean[None], u)
        d = _mahalanobis(a[:, None] * z + b[:, None] - model.mean[None], model.loc, inv)
        with np.errstate(all="ignore"):
            new = w * np.minimum(1.0, (_HUBER_C / np.where(np.isfinite(d), d, np.inf)) ** 2)
        if np.allclose(new, u, atol=1e-6):
            break
        u = new
    score = _mahalanobis(_leave_one_out(z, model.mean, u), model.loc, inv)
    # Fewer than two other annotated landmarks: nothing to say where k should be.
    enough = (w.sum(1, keepdims=True) - w) >= 2
    return np.where(enough & (w > 0), score, np.nan)


def fit(
    coords: np.ndarray, spacing: Any, names: Sequence[str], *, quantile: float = FLAG_QUANTILE
) -> ShapeModel:
    """The shape model of training landmarks `coords [N, K, 2]` (see the module).

    Raises:
      ValueError: fewer than 3 landmarks or 3 shapes with 3 landmarks annotated.
    """
    z = _complex(coords, spacing)
    n, k = z.shape
    if k != len(names):
        raise ValueError(f"{k} landmarks, {len(names)} names")
    if k < 3:
        raise ValueError(f"a shape check needs at least 3 landmarks, the set has {k}")
    z = z[np.isfinite(z).sum(1) >= 3]
    if len(z) < 3:
        raise ValueError(f"a shape check needs 3 shapes with 3 landmarks, got {len(z)} of {n}")
    mean, _ = procrustes_mean(z)
    resid = _leave_one_out(z, mean, np.isfinite(z).astype(np.float64))
    gauss = [_robust_gaussian(resid[:, j]) for j in range(k)]
    loc = np.array([g[0] for g in gauss])
    cov = np.stack([g[1] for g in gauss])
    model = ShapeModel(tuple(names), mean, loc, cov, math.inf, len(z), 0.0)
    s = _scores(model, z)
    s = s[np.isfinite(s)]
    floor = math.sqrt(chi2_2_quantile(quantile))
    threshold = max(floor, float(np.quantile(s, quantile))) if s.size else floor
    rate = float((s > threshold).mean()) if s.size else 0.0
    return model._replace(threshold=threshold, train_flag_rate=rate)


def score(model: ShapeModel, coords: np.ndarray, spacing: Any = None):
    """`(scores [N, K], implausible [N, K])` of landmarks `coords [N, K, 2]`; scores
    are NaN (and not flagged) where a landmark or too many others are missing."""
    z = _complex(coords, spacing)
    if z.shape[1] != len(model.names):
        raise ValueError(f"{z.shape[1]} landmarks, the shape model has {len(model.names)}")
    s = _scores(model, z)
    with np.errstate(invalid="ignore"):
        return s, np.isfinite(s) & (s > model.threshold)


def _pairs(c: np.ndarray) -> list:
    return [[float(v.real), float(v.imag)] if np.isfinite(v) else None for v in c]


def to_json(model: ShapeModel) -> dict[str, Any]:
    return {
        "method": "leave-one-out Procrustes residual, robust Mahalanobis distance",
        "names": list(model.names),
        "mean": _pairs(model.mean),
        "loc": _pairs(model.loc),
        "cov": [c.tolist() if np.isfinite(c).all() else None for c in model.cov],
        "threshold": model.threshold,
        "flag_quantile": FLAG_QUANTILE,
        "n_shapes": model.n_shapes,
        "train_flag_rate": model.train_flag_rate,
    }


def from_json(doc: dict[str, Any]) -> ShapeModel:
    def c(rows):
        return np.array([complex(*p) if p else complex(np.nan, np.nan) for p in rows])

    cov = np.stack([np.array(m) if m else np.full((2, 2), np.nan) for m in doc["cov"]])
    return ShapeModel(
        tuple(doc["names"]),
        c(doc["mean"]),
        c(doc["loc"]),
        cov,
        float(doc["threshold"]),
        int(doc["n_shapes"]),
        float(doc["train_flag_rate"]),
    )


def save(model: ShapeModel, workdir: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(workdir) / SHAPE_FILE
    path.write_text(json.dumps(to_json(model), indent=1) + "\n")
    return path


def load(workdir: str | pathlib.Path) -> ShapeModel | None:
    """`<workdir>/shape_model.json`, or None when the run has none."""
    path = pathlib.Path(workdir) / SHAPE_FILE
    return from_json(json.loads(path.read_text())) if path.exists() else None


__all__ = ["ShapeModel", "fit", "from_json", "load", "save", "score", "to_json"]
