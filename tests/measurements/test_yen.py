"""The YEN angle and its three classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmjax.measurements.base import evaluate
from lmjax.measurements.yen import yen_definition

NAMES = ("S", "M", "G")
DEF = yen_definition("S", "M", "G")


def case(angle, m=(1400.0, 1600.0)):
    """S up and back of M; G below M at `angle` degrees from M->S."""
    s = (700.0, 1000.0)
    base = math.atan2(s[1] - m[1], s[0] - m[0])
    t = base - math.radians(angle)
    return np.array([[s, m, (m[0] + 500 * math.cos(t), m[1] + 500 * math.sin(t))]])


def measure(lm, spacing=None):
    ev = evaluate(DEF, lm, NAMES, spacing)
    return ev.values[0], ev.classes[0], ev.reasons[0]


@pytest.mark.parametrize(
    "angle, cls",
    [
        (120.0, "I"),
        (117.0, "I"),
        (123.0, "I"),
        (116.9, "II"),
        (123.1, "III"),
        (150.0, "III"),
        (100.0, "II"),
    ],
)
def test_values_and_classes(angle, cls):
    value, got, reason = measure(case(angle), spacing=(0.1, 0.1))
    assert value == pytest.approx(angle) and got == cls and reason is None


def test_boundaries_on_values():
    assert DEF.classify(np.array([117.0, 123.0, 116.999, 123.001])).tolist() == [
        "I",
        "I",
        "II",
        "III",
    ]


def test_collinear_is_a_straight_angle():
    lm = np.array([[(0.0, 0.0), (10.0, 10.0), (20.0, 20.0)]])
    assert measure(lm)[:2] == (pytest.approx(180.0), "III")


def test_degenerate_and_missing():
    lm = np.array([[(0.0, 0.0), (10.0, 10.0), (10.0, 10.0)]])
    assert measure(lm)[2] == "degenerate geometry: G and M coincide"
    lm = np.array([[(0.0, 0.0), (np.nan, np.nan), (10.0, 10.0)]])
    v, c, r = measure(lm)
    assert np.isnan(v) and c is None and r == "missing landmark: M"


def test_mirror_invariant():
    lm = case(121.0)
    mirrored = lm.copy()
    mirrored[..., 0] = 3000.0 - mirrored[..., 0]
    assert measure(lm)[0] == pytest.approx(measure(mirrored)[0])
