"""Knee alignment angles and CPAK types on hand-built legs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmjax.measurements.base import evaluate
from lmjax.measurements.cpak import ROLES, cpak_definitions, cpak_type, image_sides


def _dir(deg):
    t = math.radians(deg)
    return np.array([math.cos(t), math.sin(t)])


def right_leg(ldfa, mpta, tilt=0.0):
    """A patient's right leg as shown in an AP view (lateral = image left = -x).

    Mechanical axes vertical, the condylar tangent at `ldfa` from the femoral axis on
    the lateral side, the plateau tangent at `mpta` from the tibial axis medially;
    then everything rotated by `tilt` degrees about the knee.
    """
    knee = np.array([500.0, 1000.0])
    lat_dir = _dir(-90.0 - ldfa)  # `ldfa` from straight up, turning towards lateral (-x)
    med_dir = _dir(90.0 - mpta)  # `mpta` from straight down, turning towards medial (+x)
    c0, p0 = knee + (0, 8), knee + (0, 20)
    pts = {
        "femoral_head": knee + (0, -450),
        "femoral_condyle_lateral": c0 + 35 * lat_dir,
        "femoral_condyle_medial": c0 - 35 * lat_dir,
        "tibial_plateau_medial": p0 + 38 * med_dir,
        "tibial_plateau_lateral": p0 - 38 * med_dir,
        "knee_centre": knee,
        "ankle_medial": knee + (25, 400),
        "ankle_lateral": knee + (-25, 400),
    }
    c, s = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    rot = np.array([[c, -s], [s, c]])
    return {k: knee + rot @ (v - knee) for k, v in pts.items()}


def measure(pts, side="right", spacing=(0.2, 0.2)):
    names = [f"{r}_{side}" for r in ROLES]
    lm = np.array([[pts[r] for r in ROLES]], np.float64)
    out = {}
    for d in cpak_definitions(side):
        ev = evaluate(d, lm, names, spacing)
        out[d.name.rsplit("_", 1)[0]] = (ev.values[0], ev.classes[0], ev.reasons[0])
    return out


def test_angles_of_a_built_leg():
    m = measure(right_leg(87.0, 86.0))
    assert m["mLDFA"][0] == pytest.approx(87.0) and m["mMPTA"][0] == pytest.approx(86.0)
    assert m["aHKA"][:2] == (pytest.approx(-1.0), "neutral")
    assert m["JLO"][:2] == (pytest.approx(173.0), "apex_distal")
    assert m["CPAK"][:2] == (2.0, "II")


@pytest.mark.parametrize(
    "ldfa, mpta, cpak",
    [(89, 85, "I"), (87, 87, "II"), (85, 89, "III"), (92, 88, "IV"), (90, 90, "V"),
     (88, 92, "VI"), (95, 91, "VII"), (93, 93, "VIII"), (91, 95, "IX")],
)  # fmt: skip
def test_nine_cpak_types(ldfa, mpta, cpak):
    assert measure(right_leg(ldfa, mpta, tilt=7.0))["CPAK"][1] == cpak


@pytest.mark.parametrize(
    "ldfa, mpta, ahka_cls, jlo_cls",
    [(88, 86, "neutral", "apex_distal"), (86, 88, "neutral", "apex_distal"),
     (88.01, 86, "varus", "apex_distal"), (86, 88.01, "valgus", "apex_distal"),
     (88.5, 88.5, "neutral", "neutral"), (91.5, 91.5, "neutral", "neutral"),
     (88.49, 88.5, "neutral", "apex_distal"), (91.5, 91.51, "neutral", "apex_proximal")],
)  # fmt: skip
def test_class_boundaries_are_inclusive_for_neutral(ldfa, mpta, ahka_cls, jlo_cls):
    m = measure(right_leg(ldfa, mpta, tilt=-3.0))
    assert (m["aHKA"][1], m["JLO"][1]) == (ahka_cls, jlo_cls)


def test_cpak_type_table():
    got = cpak_type(
        np.array([-2.0, 2.0, -2.5, 2.5, np.nan]), np.array([177.0, 183.0, 176.9, 183.1, 180])
    )
    assert got[:4].tolist() == [5.0, 5.0, 1.0, 9.0] and np.isnan(got[4])


def test_left_leg_is_the_mirrored_right_leg():
    right = right_leg(86.0, 88.5, tilt=4.0)
    left = {k: np.array([2000.0 - v[0], v[1]]) for k, v in right.items()}
    mr, ml = measure(right, "right"), measure(left, "left")
    for key in mr:
        assert mr[key][0] == pytest.approx(ml[key][0], abs=1e-9) and mr[key][1] == ml[key][1]


def test_anisotropic_spacing_changes_angles_consistently():
    pts = right_leg(87.0, 87.0)
    # Stretching rows and columns alike leaves angles alone.
    assert measure(pts, spacing=(0.5, 0.5))["mLDFA"][0] == pytest.approx(87.0)
    # Pixels twice as tall as wide: the same pixel geometry is a different leg.
    assert measure(pts, spacing=(0.4, 0.2))["mLDFA"][0] != pytest.approx(87.0)


def test_degenerate_and_missing_points():
    pts = right_leg(87.0, 87.0)
    pts["femoral_head"] = pts["knee_centre"].copy()
    m = measure(pts)
    assert m["mLDFA"][2] == "degenerate geometry: zero-length femoral mechanical axis"
    assert np.isnan(m["CPAK"][0]) and m["CPAK"][1] is None and m["mMPTA"][2] is None
    pts = right_leg(87.0, 87.0)
    pts["tibial_plateau_medial"] = pts["tibial_plateau_lateral"].copy()
    assert measure(pts)["mMPTA"][2] == "degenerate geometry: tibial plateau points coincide"
    pts = right_leg(87.0, 87.0)
    pts["ankle_lateral"] = np.array([np.nan, np.nan])
    m = measure(pts)
    assert m["mLDFA"][2] is None and m["mLDFA"][0] == pytest.approx(87.0)
    for key in ("mMPTA", "aHKA", "JLO", "CPAK"):
        assert np.isnan(m[key][0]) and m[key][2] == "missing landmark: ankle_lateral_right"


def test_image_sides():
    assert image_sides("right") == {"lateral": "left", "medial": "right"}
    assert image_sides("left") == {"lateral": "right", "medial": "left"}
    assert image_sides("right", radiological=False) == {"lateral": "right", "medial": "left"}
    with pytest.raises(ValueError):
        image_sides("both")
    with pytest.raises(ValueError):
        cpak_definitions("up")


def test_custom_names():
    defs = cpak_definitions("left", {"knee_centre": "CK"})
    assert [d.name for d in defs] == [
        "mLDFA_left",
        "mMPTA_left",
        "aHKA_left",
        "JLO_left",
        "CPAK_left",
    ]
    assert (
        defs[0].points["knee_centre"] == "CK"
        and defs[0].points["femoral_head"] == "femoral_head_left"
    )
    assert "ankle_medial" not in defs[0].points
