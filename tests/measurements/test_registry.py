"""Which measurements each landmark set gets."""

from __future__ import annotations

import numpy as np
import pytest

from lmjax.data.phantom import phantom_dataset
from lmjax.data.types import LandmarkSet
from lmjax.measurements import definitions_for, measure_dataset
from lmjax.measurements.cpak import ROLES

ISBI8 = ["ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"]


def names(defs):
    return [d.name for d in defs]


def test_isbi_and_numbered_sets():
    assert names(definitions_for("isbi2015")) == ISBI8
    hamedan = definitions_for("hamedan")
    assert names(hamedan) == ISBI8
    assert hamedan[0].points == {
        "sella": "l1",
        "nasion": "l2",
        "subspinale": "l5",
        "supramentale": "l6",
    }
    upper = LandmarkSet.numbered("x", 19, prefix="L")
    assert names(definitions_for(upper)) == ISBI8
    # No YEN on ISBI: it has neither M nor G, and no stand-in is invented.
    assert "YEN" not in names(definitions_for("isbi2015"))


def test_partial_sets_get_only_what_they_can_compute():
    lset = LandmarkSet("part", ("sella", "nasion", "subspinale", "supramentale"))
    assert names(definitions_for(lset)) == ["ANB", "SNB", "SNA"]


def test_yen_sets():
    lset = LandmarkSet("ceph6", ("S", "M", "G", "N", "SL", "IL"))
    defs = definitions_for(lset)
    assert names(defs) == ["YEN"] and defs[0].points == {"S": "S", "M": "M", "G": "G"}
    lset = LandmarkSet("x", ("sella_point", "mx", "gx"))
    defs = definitions_for(
        lset, {"sella": "sella_point", "anterior_maxilla_midpoint": "mx", "symphysis_centre": "gx"}
    )
    assert names(defs) == ["YEN"]


def test_leg_sets():
    lset = LandmarkSet("legs", tuple(f"{r}_{s}" for s in ("left", "right") for r in ROLES))
    assert names(definitions_for(lset)) == [
        f"{m}_{s}" for s in ("right", "left") for m in ("mLDFA", "mMPTA", "aHKA", "JLO", "CPAK")
    ]


def test_hip_reference_choice():
    base = tuple(
        f"{x}_{s}"
        for x in ("femoral_head_centre", "sourcil_lateral", "sourcil_medial")
        for s in ("right", "left")
    )
    with_tears = LandmarkSet("h", base + ("teardrop_right", "teardrop_left"))
    d = {x.name: x for x in definitions_for(with_tears)}
    assert set(d) == {"LCE_right", "AI_right", "LCE_left", "AI_left"}
    assert d["AI_right"].points["ref_contra"] == "teardrop_left"
    d = {x.name: x for x in definitions_for(with_tears, hip_reference="heads")}
    assert d["AI_right"].points["ref_contra"] == "femoral_head_centre_left"
    d = {x.name: x for x in definitions_for(LandmarkSet("h", base))}
    assert d["LCE_left"].points["ref_contra"] == "femoral_head_centre_right"


def test_phantom_gets_lce_from_its_pelvis_names():
    defs = definitions_for("phantom")
    assert names(defs) == ["LCE_right", "LCE_left"]  # no medial sourcil: no AI
    assert defs[0].points["sourcil_lateral"] == "acetabulum_lateral_right"
    ds = phantom_dataset(6, image_size=(96, 96), missing_rate=0.0)
    res = measure_dataset(
        ds.landmarks(),
        [r.spacing for r in ds.records],
        ds.landmark_set,
        [r.name for r in ds.records],
    )
    values = np.array(
        [[r["measurements"][n]["value"] for n in ("LCE_right", "LCE_left")] for r in res], float
    )
    # The phantom's acetabular roof covers its head: clearly positive, below 90.
    assert np.isfinite(values).all() and (values > 10).all() and (values < 80).all()


def test_unknown_set_name():
    with pytest.raises(KeyError, match="unknown landmark set"):
        definitions_for("isbi2016")
