"""Lateral centre-edge angle and acetabular index on hand-built pelves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmjax.measurements.base import evaluate
from lmjax.measurements.hip import hip_definitions

LANDMARKS = ("femoral_head_centre", "sourcil_lateral", "sourcil_medial", "teardrop")
NAMES = tuple(f"{x}_{s}" for x in LANDMARKS for s in ("right", "left"))


def pelvis(lce_r, ai_r, lce_l, ai_l, tilt=0.0):
    """AP pelvis, patient's right on the image left, teardrops level, then tilted."""
    out = {"teardrop_right": np.array([900.0, 1200.0]), "teardrop_left": np.array([1100.0, 1200.0])}
    for side, lce, ai, lat in (("right", lce_r, ai_r, -1.0), ("left", lce_l, ai_l, 1.0)):
        lateral, cranial = np.array([lat, 0.0]), np.array([0.0, -1.0])
        head = np.array([1000.0 + lat * 250.0, 1150.0])
        t, a = math.radians(lce), math.radians(ai)
        edge = head + 60.0 * (math.sin(t) * lateral + math.cos(t) * cranial)
        out[f"femoral_head_centre_{side}"] = head
        out[f"sourcil_lateral_{side}"] = edge
        out[f"sourcil_medial_{side}"] = edge - 30.0 * (
            math.cos(a) * lateral + math.sin(a) * cranial
        )
    c, s = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    rot, centre = np.array([[c, -s], [s, c]]), np.array([1000.0, 1200.0])
    return {k: centre + rot @ (v - centre) for k, v in out.items()}


def measure(pts, reference="teardrop", spacing=(0.15, 0.15)):
    lm = np.array([[pts[n] for n in NAMES]], np.float64)
    out = {}
    for side in ("right", "left"):
        for d in hip_definitions(side, reference=reference):
            ev = evaluate(d, lm, NAMES, spacing)
            out[d.name] = (ev.values[0], ev.reasons[0])
    return out


@pytest.mark.parametrize("reference", ["teardrop", "heads"])
@pytest.mark.parametrize("tilt", [0.0, 8.0, -12.0])
def test_known_angles(reference, tilt):
    m = measure(pelvis(30.0, 8.0, 18.0, 14.0, tilt), reference)
    assert m["LCE_right"][0] == pytest.approx(30.0) and m["AI_right"][0] == pytest.approx(8.0)
    assert m["LCE_left"][0] == pytest.approx(18.0) and m["AI_left"][0] == pytest.approx(14.0)


def test_signs_uncovered_head_and_falling_roof():
    m = measure(pelvis(-10.0, -5.0, 40.0, 0.0))
    assert m["LCE_right"][0] == pytest.approx(-10.0) and m["AI_right"][0] == pytest.approx(-5.0)
    assert m["AI_left"][0] == pytest.approx(0.0, abs=1e-9)


def test_mirrored_pelvis_with_sides_swapped_reads_the_same():
    pts = pelvis(27.0, 6.0, 21.0, 11.0, tilt=5.0)
    swap = {"right": "left", "left": "right"}
    mirrored = {}
    for k, v in pts.items():
        base, side = k.rsplit("_", 1)
        mirrored[f"{base}_{swap[side]}"] = np.array([2000.0 - v[0], v[1]])
    a, b = measure(pts), measure(mirrored)
    for side in ("right", "left"):
        for x in ("LCE", "AI"):
            assert a[f"{x}_{side}"][0] == pytest.approx(b[f"{x}_{swap[side]}"][0], abs=1e-9)


def test_degenerate_references_and_points():
    pts = pelvis(30.0, 8.0, 30.0, 8.0)
    pts["teardrop_left"] = pts["teardrop_right"].copy()
    m = measure(pts)
    assert np.isnan(m["LCE_right"][0])
    assert m["LCE_right"][1] == "degenerate geometry: horizontal reference points coincide"
    pts = pelvis(30.0, 8.0, 30.0, 8.0)
    pts["teardrop_left"] = pts["teardrop_right"] + (0.0, 300.0)  # a vertical "horizontal"
    assert "closer to vertical" in measure(pts)["AI_left"][1]
    pts = pelvis(30.0, 8.0, 30.0, 8.0)
    pts["sourcil_lateral_right"] = pts["femoral_head_centre_right"].copy()
    m = measure(pts)
    assert m["LCE_right"][1] == "degenerate geometry: lateral sourcil and head centre coincide"
    assert m["LCE_left"][1] is None
    pts = pelvis(30.0, 8.0, 30.0, 8.0)
    pts["sourcil_medial_left"] = pts["sourcil_lateral_left"].copy()
    assert measure(pts)["AI_left"][1] == "degenerate geometry: medial and lateral sourcil coincide"


def test_missing_teardrop():
    pts = pelvis(30.0, 8.0, 30.0, 8.0)
    pts["teardrop_right"] = np.array([np.nan, np.nan])
    m = measure(pts)
    assert all(np.isnan(v) and r == "missing landmark: teardrop_right" for v, r in m.values())
    m = measure(pts, reference="heads")  # the other reference does not need it
    assert m["LCE_right"][0] == pytest.approx(30.0)


def test_definition_arguments():
    d = hip_definitions("left", reference="heads", include=("LCE",))
    assert [x.name for x in d] == ["LCE_left"]
    assert d[0].points == {
        "head": "femoral_head_centre_left",
        "sourcil_lateral": "sourcil_lateral_left",
        "ref_ipsi": "femoral_head_centre_left",
        "ref_contra": "femoral_head_centre_right",
    }
    with pytest.raises(ValueError):
        hip_definitions("left", reference="ischia")
    with pytest.raises(ValueError):
        hip_definitions("middle")
