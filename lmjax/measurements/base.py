"""Measurement definitions: named landmark roles, a pure function, optional classes.

A `MeasurementDef` maps the roles its function uses ("sella", "knee", ...) to the
landmark names of one landmark set, so the same function serves every set that
has the points. `evaluate` does the bookkeeping every measurement shares: it
picks the points out of `[N, K, 2]`, turns a missing landmark into a missing value
with the landmark named, scales pixels to millimetres, and classifies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lmjax.measurements import geometry

# What a measurement function returns: values `[N]` and reasons `[N]` (None or str).
FnResult = tuple[np.ndarray, np.ndarray]
MeasureFn = Callable[[Mapping[str, np.ndarray]], FnResult]

# Units that scale with pixel spacing; their values fall back to pixels without it.
LENGTH_UNITS = ("mm",)
# Values are rounded to this many decimals before classification, so that float
# noise in a value built to sit on a boundary (117.00000000000001) cannot flip a class.
CLASS_DECIMALS = 9


@dataclasses.dataclass(frozen=True)
class Interval:
    """A class: `label` for values between `lo` and `hi`, each end open or closed."""

    label: str
    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = False
    hi_closed: bool = False
    description: str = ""

    def contains(self, x: np.ndarray) -> np.ndarray:
        above = x >= self.lo if self.lo_closed else x > self.lo
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above & below


@dataclasses.dataclass(frozen=True)
class ClassBins:
    """Classes by thresholds: intervals that must tile the real line without overlap."""

    intervals: tuple[Interval, ...]

    def __post_init__(self):
        ivs = sorted(self.intervals, key=lambda i: (i.lo, not i.lo_closed))
        ok = ivs[0].lo == -math.inf and ivs[-1].hi == math.inf
        for a, b in zip(ivs, ivs[1:], strict=False):
            # Adjacent classes share their edge, closed on exactly one side.
            ok &= a.hi == b.lo and (a.hi_closed != b.lo_closed)
        if not ok:
            raise ValueError(f"class intervals do not tile the real line: {self.intervals}")

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(i.label for i in self.intervals)

    def classify(self, values: Any) -> np.ndarray:
        """Object array of labels, None where the value is NaN."""
        x = np.round(np.asarray(values, np.float64), CLASS_DECIMALS)
        out = np.full(x.shape, None, dtype=object)
        for iv in self.intervals:
            out[iv.contains(x) & np.isfinite(x)] = iv.label
        return out


def three_classes(
    normal: str, below: str, above: str, lo: float, hi: float, descriptions: Sequence[str] = ()
) -> ClassBins:
    """`normal` for lo <= x <= hi (both ends inclusive), `below` under lo, `above` over hi."""
    d = tuple(descriptions) or ("", "", "")
    return ClassBins(
        (
            Interval(normal, lo, hi, True, True, d[0]),
            Interval(below, -math.inf, lo, False, False, d[1]),
            Interval(above, hi, math.inf, False, False, d[2]),
        )
    )


@dataclasses.dataclass(frozen=True)
class MeasurementDef:
    """One measurement on one landmark set.

    Attributes:
      name: unique within a landmark set, e.g. "SNA" or "mLDFA_right".
      unit: "deg", "mm", "ratio" or "type" (a category number, e.g. CPAK I..IX as 1..9).
      points: role -> landmark name in the set; `fn` receives the roles.
      fn: `fn({role: [N, 2] float64})` -> `(values [N], reasons [N])`, points in mm
        (pixels when the spacing is unknown), y down; a reason (str) marks degenerate
        geometry and its value is ignored.
      classes: `ClassBins`, a callable `values -> labels`, or None.
      reference: citation of the definition and the class thresholds.
      description: one line of what is measured.
    """

    name: str
    unit: str
    points: Mapping[str, str]
    fn: MeasureFn
    classes: ClassBins | Callable[[np.ndarray], np.ndarray] | None = None
    reference: str = ""
    description: str = ""

    @property
    def class_labels(self) -> tuple[str, ...]:
        if isinstance(self.classes, ClassBins):
            return self.classes.labels
        return tuple(getattr(self.classes, "labels", ()))

    def classify(self, values: np.ndarray) -> np.ndarray:
        if self.classes is None:
            return np.full(np.shape(values), None, dtype=object)
        if isinstance(self.classes, ClassBins):
            return self.classes.classify(values)
        return np.asarray(self.classes(np.asarray(values, np.float64)), dtype=object)


@dataclasses.dataclass
class Evaluated:
    """A measurement over N images: values (NaN where missing), units, classes, reasons."""

    definition: MeasurementDef
    values: np.ndarray
    units: np.ndarray
    classes: np.ndarray
    reasons: np.ndarray


def evaluate(
    definition: MeasurementDef, landmarks: Any, names: Sequence[str], spacing: Any = None
) -> Evaluated:
    """Computes one measurement for every image.

    Args:
      definition: the measurement.
      landmarks: `[N, K, 2]` (x, y) in original pixels, NaN where missing.
      names: the K landmark names of the set.
      spacing: `[N, 2]` (row_mm, col_mm), one pair, or None; NaN rows are unknown.

    Returns:
      `Evaluated`; a value is NaN exactly where `reasons` says why ("missing landmark:
      gonion", a degenerate configuration, ...). Lengths are in "px" where the spacing
      is unknown, and such values get no class when the thresholds are in mm.
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[-1] != 2 or lm.shape[1] != len(names):
        raise ValueError(f"landmarks {lm.shape} do not match {len(names)} landmark names")
    n = lm.shape[0]
    index = {name: k for k, name in enumerate(names)}
    absent = [lmk for lmk in definition.points.values() if lmk not in index]
    if absent:
        raise KeyError(f"{definition.name}: landmark set has no {absent}")
    sp = geometry.spacing_table(spacing, n)
    known = np.isfinite(sp).all(axis=1)
    phys = geometry.to_physical(lm, sp)
    reasons = geometry.Reasons(n)
    # One reason naming every missing landmark of the measurement, in role order.
    finite = {lmk: np.isfinite(lm[:, index[lmk]]).all(axis=1) for lmk in definition.points.values()}
    missing_names = [
        [lmk for lmk in dict.fromkeys(definition.points.values()) if not finite[lmk][i]]
        for i in range(n)
    ]
    for i, miss in enumerate(missing_names):
        if miss:
            reasons.reason[i] = "missing landmark: " + ", ".join(miss)
    pts = {role: phys[:, index[lmk]] for role, lmk in definition.points.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        values, fn_reasons = definition.fn(pts)
    for i in range(n):
        if reasons.reason[i] is None and fn_reasons[i] is not None:
            reasons.reason[i] = fn_reasons[i]
    values = np.asarray(values, np.float64)
    # A function must say why it has no value; a bare NaN still never passes as one.
    reasons.require(np.isfinite(values), "degenerate geometry: value not computable")
    values, reason = reasons.finish(values)
    units = np.full(n, definition.unit, dtype=object)
    classes = definition.classify(values)
    if definition.unit in LENGTH_UNITS:
        units[~known] = "px"
        unclassed = ~known & np.isfinite(values) & (definition.classes is not None)
        classes[unclassed] = None
        for i in np.flatnonzero(unclassed):
            reason[i] = f"pixel spacing unknown: class thresholds are in {definition.unit}"
    return Evaluated(definition, values, units, classes, reason)
