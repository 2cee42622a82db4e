"""Metrics against hand computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lmjax import metrics as M

NAN = np.nan


def test_radial_errors_anisotropic_spacing_in_mm():
    # Image 0: (row_mm, col_mm) = (0.5, 0.1); dx = 30 px -> 3 mm, dy = 4 px -> 2 mm.
    # Image 1: isotropic 0.2 mm; (3, 4) px -> (0.6, 0.8) mm -> 1 mm.
    pred = np.array([[[0.0, 0.0]], [[3.0, 4.0]]])
    gt = np.array([[[30.0, 4.0]], [[0.0, 0.0]]])
    errors, unit = M.radial_errors(pred, gt, np.array([[0.5, 0.1], [0.2, 0.2]]))
    assert unit == "mm"
    np.testing.assert_allclose(errors, [[math.sqrt(13.0)], [1.0]])
    # A single (row_mm, col_mm) applies to every image; a list of tuples works too.
    np.testing.assert_allclose(M.radial_errors(pred, gt, (0.5, 0.1))[0][0], [math.sqrt(13.0)])
    np.testing.assert_allclose(M.radial_errors(pred, gt, [(0.5, 0.1), (0.2, 0.2)])[0], errors)


def test_unknown_spacing_reports_everything_in_pixels():
    pred = np.array([[[0.0, 0.0]], [[3.0, 4.0]]])
    gt = np.array([[[30.0, 4.0]], [[0.0, 0.0]]])
    expect_px = [[math.hypot(30.0, 4.0)], [5.0]]
    with pytest.warns(UserWarning, match="unknown for 1 of 2 images; all radial errors"):
        errors, unit = M.radial_errors(pred, gt, [(0.5, 0.1), None])
    assert unit == "px"
    np.testing.assert_allclose(errors, expect_px)
    with pytest.warns(UserWarning):
        _, unit = M.radial_errors(pred, gt, np.array([[0.5, 0.1], [NAN, NAN]]))
    assert unit == "px"
    with pytest.warns(UserWarning):  # non-positive spacing is invalid, never used
        _, unit = M.radial_errors(pred, gt, np.array([[0.5, 0.1], [0.0, 0.2]]))
    assert unit == "px"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spacing at all: plain pixels, no warning
        errors, unit = M.radial_errors(pred, gt, None)
    assert unit == "px"
    np.testing.assert_allclose(errors, expect_px)


def test_missing_gt_excluded_and_missed_detection_counted():
    pred = np.array([[[1.0, 1.0], [NAN, NAN], [5.0, 5.0], [NAN, NAN]]])
    gt = np.array([[[1.0, 3.0], [2.0, 2.0], [NAN, NAN], [NAN, NAN]]])
    errors, unit = M.radial_errors(pred, gt, [(1.0, 1.0)])
    np.testing.assert_array_equal(errors, [[2.0, np.inf, NAN, NAN]])
    s = M.summarize(errors, unit=unit)
    assert (s["n"], s["missed"], s["mre"], s["unit"]) == (1, 1, 2.0, "mm")
    assert s["sdr@2"] == 100.0  # the miss is reported apart, not folded into SDR


def test_sdr_boundary_is_a_hit():
    # 20 px * 0.1 mm = exactly 2.0 mm: a hit at the 2 mm threshold.
    errors, unit = M.radial_errors([[[20.0, 0.0]]], [[[0.0, 0.0]]], [(0.1, 0.1)])
    assert errors[0, 0] == 2.0
    assert M.summarize(errors, unit=unit)["sdr@2"] == 100.0
    # 3 px * 0.1 mm rounds to 0.30000000000000004 and still counts at 0.3.
    errors, unit = M.radial_errors([[[3.0, 0.0]]], [[[0.0, 0.0]]], [(0.1, 0.1)])
    assert M.summarize(errors, unit=unit, thresholds=(0.3,))["sdr@0.3"] == 100.0
    assert M.summarize([2.0001], unit="mm")["sdr@2"] == 0.0


def test_summarize_statistics():
    errors = np.array([[1.0, 2.0, NAN], [3.0, 4.0, 10.0]])
    s = M.summarize(errors, unit="mm")
    assert s["n"] == 5 and s["missed"] == 0
    assert s["mre"] == pytest.approx(4.0)
    assert s["sd"] == pytest.approx(math.sqrt((9 + 4 + 1 + 0 + 36) / 5))
    assert s["median"] == 3.0
    assert s["iqr"] == pytest.approx(4.0 - 2.0)
    assert s["p95"] == pytest.approx(4.0 + 0.8 * 6.0)  # linear between the top two
    assert [s[k] for k in ("sdr@2", "sdr@2.5", "sdr@3", "sdr@4")] == [40.0, 40.0, 60.0, 80.0]
    empty = M.summarize(np.full((2, 2), NAN), unit="px")
    assert empty["n"] == 0 and math.isnan(empty["mre"]) and math.isnan(empty["sdr@2"])


def test_per_landmark():
    errors = np.array([[1.0, NAN], [3.0, np.inf]])
    rows = M.per_landmark(errors, ["nasion", "sella"], unit="mm")
    assert rows[0]["landmark"] == "nasion" and rows[0]["mre"] == 2.0 and rows[0]["n"] == 2
    assert rows[1]["n"] == 0 and rows[1]["missed"] == 1
    with pytest.raises(ValueError, match="3 landmark names"):
        M.per_landmark(errors, ["a", "b", "c"], unit="mm")


def test_detection_counts():
    missed = np.array([[True, False], [False, False], [True, True]])
    fps = np.array([[0, 2], [0, 0], [1, 0]])
    c = M.detection_counts(missed, fps, ["a", "b"])
    assert (c["images"], c["missed"], c["false_positives"]) == (3, 3, 3)
    assert (c["images_with_missed"], c["images_with_false_positives"]) == (2, 2)
    assert c["per_landmark"] == [
        {"landmark": "a", "missed": 2, "false_positives": 1},
        {"landmark": "b", "missed": 1, "false_positives": 2},
    ]


def test_mask_iou_and_dice():
    pred = np.zeros((2, 4, 4, 2), bool)
    target = np.zeros((2, 4, 4, 2), bool)
    pred[0, :2, :2, 0] = True  # 4 pixels
    target[0, 1:3, :2, 0] = True  # 4 pixels, 2 shared
    target[1, :, :, 1] = True  # predicted nothing
    iou, dice = M.mask_iou(pred, target), M.mask_dice(pred, target)
    assert iou.shape == dice.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(2 / 6) and dice[0, 0] == pytest.approx(4 / 8)
    assert iou[1, 1] == 0.0 and dice[1, 1] == 0.0
    assert np.isnan(iou[0, 1]) and np.isnan(dice[1, 0])  # empty vs empty
    assert M.mask_iou(pred, target, empty=1.0)[0, 1] == 1.0
    assert M.mask_dice(pred[0], target[0]).shape == (2,)


def test_angle_errors_wrap():
    r = M.angle_errors([179.0, 10.0, 30.0, NAN, 5.0], [-179.0, 350.0, 25.0, 10.0, NAN])
    np.testing.assert_allclose(r["errors"], [-2.0, 20.0, 5.0, NAN, NAN])
    assert (r["n"], r["missed"]) == (3, 1)
    assert r["median"] == 5.0 and r["mae"] == pytest.approx(9.0)
    assert r["iqr"] == pytest.approx(12.5 - 3.5)


def test_classification_report_hand_computed():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    r = M.classification_report(y_true, y_pred, labels=[0, 1, 2, 3])
    np.testing.assert_array_equal(
        r["confusion"], [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    )
    pc = r["per_class"]
    assert pc[0]["precision"] == pytest.approx(2 / 3) and pc[0]["recall"] == pytest.approx(2 / 3)
    assert pc[1]["precision"] == pytest.approx(1 / 2) and pc[1]["recall"] == pytest.approx(1 / 2)
    assert pc[2]["precision"] == pytest.approx(3 / 4) and pc[2]["recall"] == pytest.approx(3 / 4)
    assert pc[2]["support"] == 4
    # A class never predicted nor present: 0, not NaN, and it still counts in the macro.
    assert pc[3] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro"]["precision"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 4)
    assert r["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 4)
    assert r["accuracy"] == pytest.approx(6 / 9) and r["n"] == 9
    auto = M.classification_report(["b", "a"], ["a", "a"])
    assert auto["labels"] == ["a", "b"] and auto["per_class"]["b"]["precision"] == 0.0
    assert M.classification_report([], [])["accuracy"] == 0.0


def test_format_table():
    rows = [
        {"landmark": "sella", "n": 3, "mre": 1.234},
        {"landmark": "nasion", "n": 10, "mre": NAN},
    ]
    assert M.format_table(rows, ["landmark", "n", "mre"]) == (
        "landmark   n   mre\n--------  --  ----\nsella      3  1.23\nnasion    10     -"
    )
