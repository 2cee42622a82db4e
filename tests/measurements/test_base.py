"""Definitions, classes and the shared evaluation: missing landmarks, units, spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmjax.measurements import geometry as g
from lmjax.measurements.base import ClassBins, Interval, MeasurementDef, evaluate, three_classes


def _angle_def(unit: str = "deg") -> MeasurementDef:
    def fn(p):
        r = g.Reasons(len(p["o"]))
        u, v = p["a"] - p["o"], p["b"] - p["o"]
        r.require(g.nonzero(u), "degenerate geometry: a and o coincide")
        r.require(g.nonzero(v), "degenerate geometry: b and o coincide")
        return r.finish(g.angle_between(u, v))

    return MeasurementDef(
        "ang", unit, {"o": "O", "a": "A", "b": "B"}, fn, three_classes("n", "lo", "hi", 40, 50)
    )


def _dist_def() -> MeasurementDef:
    def fn(p):
        r = g.Reasons(len(p["a"]))
        return r.finish(g.length(p["b"] - p["a"]))

    return MeasurementDef(
        "dist", "mm", {"a": "A", "b": "B"}, fn, three_classes("n", "lo", "hi", 1, 2)
    )


NAMES = ("O", "A", "B")


def test_three_classes_boundaries_are_inclusive_for_normal():
    bins = three_classes("C1", "C3", "C2", 3.2, 5.7)
    got = bins.classify([3.2, 5.7, 3.1999, 5.7001, 4.0, -100.0, 100.0, np.nan])
    assert got.tolist() == ["C1", "C1", "C3", "C2", "C1", "C3", "C2", None]


def test_classes_ignore_float_noise_at_a_boundary():
    bins = three_classes("I", "II", "III", 117.0, 123.0)
    assert bins.classify([117.0 - 1e-12, 123.0 + 1e-12]).tolist() == ["I", "I"]
    # but a real difference still counts
    assert bins.classify([117.0 - 1e-6, 123.0 + 1e-6]).tolist() == ["II", "III"]


def test_class_bins_must_tile_the_line():
    with pytest.raises(ValueError, match="tile"):
        ClassBins((Interval("a", -math.inf, 0.0), Interval("b", 1.0, math.inf)))  # gap
    with pytest.raises(ValueError, match="tile"):
        ClassBins(
            (Interval("a", -math.inf, 0.0, hi_closed=True), Interval("b", 0.0, math.inf, True))
        )
    with pytest.raises(ValueError, match="tile"):
        ClassBins((Interval("a", -math.inf, 0.0), Interval("b", 0.0, math.inf)))  # 0 in none


def test_evaluate_angle_and_class():
    lm = np.array([[[0, 0], [10, 0], [0, 10]], [[0, 0], [10, 0], [10, 10]]], np.float32)
    ev = evaluate(_angle_def(), lm, NAMES, (0.1, 0.1))
    np.testing.assert_allclose(ev.values, [90.0, 45.0])
    assert ev.classes.tolist() == ["hi", "n"]
    assert ev.reasons.tolist() == [None, None] and ev.units.tolist() == ["deg", "deg"]


def test_missing_landmark_gives_missing_with_its_name():
    lm = np.array([[[0, 0], [np.nan, np.nan], [np.nan, np.nan]]], np.float32)
    ev = evaluate(_angle_def(), lm, NAMES)
    assert np.isnan(ev.values[0]) and ev.classes[0] is None
    assert ev.reasons[0] == "missing landmark: A, B"


def test_coincident_points_give_missing_with_a_reason():
    lm = np.array([[[5, 5], [5, 5], [0, 10]]], np.float32)
    ev = evaluate(_angle_def(), lm, NAMES)
    assert np.isnan(ev.values[0]) and ev.classes[0] is None
    assert ev.reasons[0] == "degenerate geometry: a and o coincide"


def test_collinear_points_give_a_straight_angle_not_a_gap():
    lm = np.array([[[0, 0], [10, 0], [-7, 0]], [[0, 0], [10, 0], [3, 0]]], np.float32)
    ev = evaluate(_angle_def(), lm, NAMES)
    assert ev.values.tolist() == [180.0, 0.0]


def test_bare_nan_from_a_function_still_gets_a_reason():
    d = MeasurementDef(
        "bad",
        "deg",
        {"a": "A"},
        lambda p: (np.full(len(p["a"]), np.nan), np.full(len(p["a"]), None)),
    )
    ev = evaluate(d, np.zeros((1, 3, 2)), NAMES)
    assert np.isnan(ev.values[0]) and ev.reasons[0].startswith("degenerate geometry")


def test_anisotropic_spacing_is_applied_before_angles():
    # (10, 10) px is 45 deg on square pixels; with rows of 0.2 mm and columns of
    # 0.1 mm it is (1 mm, 2 mm), atan(2) from the x axis.
    lm = np.array([[[0, 0], [10, 0], [10, 10]]], np.float32)
    ev = evaluate(_angle_def(), lm, NAMES, np.array([[0.2, 0.1]]))
    assert ev.values[0] == pytest.approx(math.degrees(math.atan(2.0)))


def test_lengths_fall_back_to_px_without_spacing_and_lose_their_class():
    lm = np.array([[[0, 0], [0, 0], [15, 0]]] * 2, np.float32)
    ev = evaluate(_dist_def(), lm, NAMES, np.array([[0.1, 0.1], [np.nan, np.nan]]))
    np.testing.assert_allclose(ev.values, [1.5, 15.0])
    assert ev.units.tolist() == ["mm", "px"]
    assert ev.classes.tolist() == ["n", None]
    assert ev.reasons[1] == "pixel spacing unknown: class thresholds are in mm"


def test_spacing_forms():
    assert np.isnan(g.spacing_table(None, 2)).all()
    np.testing.assert_allclose(g.spacing_table((0.2, 0.1), 2), [[0.2, 0.1], [0.2, 0.1]])
    t = g.spacing_table([None, (0.1, 0.1), (0.0, 0.1)], 3)
    assert np.isnan(t[0]).all() and np.isnan(t[2]).all() and t[1].tolist() == [0.1, 0.1]
    with pytest.raises(ValueError, match="3 spacings for 2 images"):
        g.spacing_table([(0.1, 0.1)] * 3, 2)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        evaluate(_angle_def(), np.zeros((1, 2, 2)), NAMES)
    with pytest.raises(KeyError, match="has no"):
        evaluate(_angle_def(), np.zeros((1, 2, 2)), ("O", "A"))
