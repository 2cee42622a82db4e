"""Dataset records, CSV rows and the comparison of two sets of measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax.data.isbi2015 import ISBI2015_LANDMARKS
from lmjax.measurements import compare, measure_dataset, to_csv_rows
from tests.measurements.test_cephalometric import CASE_001

NAMES = ISBI2015_LANDMARKS.names


def _two_images():
    lm = np.stack([CASE_001, CASE_001])
    lm[1, NAMES.index("gonion")] = np.nan
    return lm


def test_measure_dataset_records():
    res = measure_dataset(_two_images(), (0.1, 0.1), "isbi2015", ["a.jpg", "b.jpg"])
    assert [r["image"] for r in res] == ["a.jpg", "b.jpg"]
    assert list(res[0]["measurements"]) == ["ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"]
    sna = res[0]["measurements"]["SNA"]
    assert (
        set(sna) == {"value", "unit", "class"}
        and sna["unit"] == "deg"
        and sna["class"] in ("C1", "C2", "C3")
    )
    fhi = res[1]["measurements"]["FHI"]
    assert fhi == {
        "value": None,
        "unit": "ratio",
        "class": None,
        "reason": "missing landmark: gonion",
    }
    json.dumps(res, allow_nan=False)  # no NaN anywhere: missing is None


def test_measure_dataset_without_spacing():
    res = measure_dataset(_two_images(), None, ISBI2015_LANDMARKS, ["a", "b"])
    mw = res[0]["measurements"]["MW"]
    assert mw["unit"] == "px" and mw["class"] is None and "spacing unknown" in mw["reason"]
    assert res[0]["measurements"]["SNA"]["class"] is not None  # angles need no spacing
    with pytest.raises(ValueError, match="do not match 3 images"):
        measure_dataset(_two_images(), None, "isbi2015", ["a", "b", "c"])


def test_csv_rows():
    rows = to_csv_rows(measure_dataset(_two_images(), (0.1, 0.1), "isbi2015", ["a", "b"]))
    assert (
        list(rows[0])[:4] == ["image", "ANB", "ANB_class", "ANB_unit"]
        and list(rows[0])[-1] == "reasons"
    )
    assert rows[0]["reasons"] == "" and isinstance(rows[0]["SNA"], float)
    assert rows[1]["FHI"] == "" and rows[1]["FHI_class"] == ""
    assert "FHI: missing landmark: gonion" in rows[1]["reasons"]


def _rec(image, **m):
    return {
        "image": image,
        "measurements": {
            k: dict(zip(("value", "unit", "class"), v, strict=True)) for k, v in m.items()
        },
    }


def test_compare_numbers_and_classes():
    gt = [_rec("1", A=(179.0, "deg", "x"), R=(0.70, "ratio", "n")),
          _rec("2", A=(10.0, "deg", "y"), R=(0.60, "ratio", "lo")),
          _rec("3", A=(20.0, "deg", "y"), R=(0.80, "ratio", "hi")),
          _rec("4", A=(30.0, "deg", "y"), R=(None, "ratio", None))]  # fmt: skip
    pred = [_rec("1", A=(-179.0, "deg", "x"), R=(0.72, "ratio", "n")),
            _rec("2", A=(14.0, "deg", "x"), R=(0.60, "ratio", "lo")),
            _rec("3", A=(None, "deg", None), R=(0.70, "ratio", "n")),
            _rec("4", A=(30.0, "deg", "y"), R=(0.9, "ratio", "hi")),
            _rec("5", A=(1.0, "deg", "y"))]  # fmt: skip
    c = compare(pred, gt)
    assert c["images"] == 4 and c["unpaired"] == ["5"]
    a = c["measurements"]["A"]
    assert a["unit"] == "deg" and a["n"] == 3 and a["missed"] == 1
    assert a["median"] == pytest.approx(2.0)  # |179 - (-179)| wraps to 2; errors 2, 4, 0
    r = c["measurements"]["R"]
    assert r["n"] == 3 and r["missed"] == 0 and r["median"] == pytest.approx(0.02)
    ca = c["classifications"]["A"]
    assert ca["n"] == 3 and ca["missed"] == 1 and ca["accuracy"] == pytest.approx(2 / 3)
    assert ca["labels"] == ["x", "y"] and ca["confusion"] == [[1, 0], [1, 1]]
    assert ca["per_class"]["x"]["recall"] == 1.0 and ca["per_class"]["x"]["precision"] == 0.5
    assert ca["macro"]["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert ca["chance"] == pytest.approx((1 * 2 + 2 * 1) / 9) and ca["kappa"] < ca["accuracy"]
    json.dumps(c, allow_nan=False)


def test_compare_refuses_mixed_units_and_skips_type_numbers():
    gt = [
        _rec("1", MW=(3.0, "mm", "C1"), CPAK=(5.0, "type", "V")),
        _rec("2", MW=(30.0, "px", None), CPAK=(1.0, "type", "I")),
    ]
    c = compare(gt, gt)
    assert "mixed units" in c["measurements"]["MW"]["error"]
    assert "CPAK" not in c["measurements"] and c["classifications"]["CPAK"]["accuracy"] == 1.0


def test_compare_with_nothing_measured():
    gt = [_rec("1", A=(None, "deg", None))]
    c = compare(gt, gt)
    assert c["measurements"]["A"]["n"] == 0 and "A" not in c["classifications"]
