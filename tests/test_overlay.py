"""Readable overlays: distinct colours, outlined labels, truth against prediction,
measurement lines and the legend."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lmjax.data.isbi2015 import ISBI2015_LANDMARKS
from lmjax.overlay import PALETTE, colour, labels_for, overlay, segments_for


def test_palette_has_24_distinct_colours_bright_enough_for_a_dark_outline():
    assert len(set(PALETTE)) == len(PALETTE) == 24
    rgb = np.array(PALETTE, np.float64)
    closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2))
    assert closest > 40
    luma = rgb @ [0.299, 0.587, 0.114]
    assert luma.min() > 70  # a black outline stays visible around every colour
    assert colour(24) == colour(0)


def test_labels_are_short_names_or_numbers():
    assert labels_for(["S", "N"], 2) == ["S", "N"]
    assert labels_for(["sella", "lower_incisal_incision"], 2) == ["1", "2"]
    assert (
        labels_for(["sella", "lower_incisal_incision"], 2, "names")[1] == "lower_incisal_incision"
    )
    assert labels_for(None, 3) == ["1", "2", "3"]
    with pytest.raises(ValueError, match="2 landmark names for 3 landmarks"):
        labels_for(["a", "b"], 3)
    with pytest.raises(ValueError, match="labels must be auto, names or numbers"):
        labels_for(["a"], 1, "letters")


def test_measurement_lines_by_name_and_alias():
    found = {label: (i, j) for label, i, j in segments_for(ISBI2015_LANDMARKS.names)}
    assert found["S-N"] == (0, 1) and found["Go-Gn"] == (9, 8)
    numbered = [f"l{i}" for i in range(1, 20)]  # the Hamedan files' names
    assert segments_for(numbered) == segments_for(ISBI2015_LANDMARKS.names)
    assert segments_for(["a", "b"]) == []


def test_truth_cross_error_vector_and_outlined_label():
    grey = np.full((600, 600), 255, np.uint8)  # bright bone: a label needs its outline
    pred, truth = np.array([[450.0, 300.0]]), np.array([[150.0, 300.0]])
    pic = np.asarray(overlay(grey, pred, truth=truth, names=["S"])).astype(int)
    assert tuple(colour(0)) == (230, 25, 75)
    red = (pic[..., 0] > 140) & (pic[..., 1] < 40) & (pic[..., 2] < 90)
    black = (pic < 30).all(-1)
    # The error vector runs from the truth to the prediction, in the landmark's
    # colour, with a dark border above and below.
    assert red[300, 160:440].all() and black[299, 160:440].all() and black[301, 160:440].all()
    # The truth's cross (vertical bar) at x = 150.
    assert red[296:305, 150].all()
    # The label "S" right of the prediction's circle: the colour, outlined in black.
    label = np.s_[290:310, 455:470]
    assert red[label].sum() >= 5 and black[label].sum() >= 5
    # The legend (top right, since names are given) lists the landmark on black.
    assert black[2:20, 520:598].mean() > 0.5 and red[2:20, 400:598].any()
    # Without names: no legend.
    plain = np.asarray(overlay(grey, pred))
    assert (plain[2:20, 520:598] == 255).all()


def test_missed_prediction_marks_its_truth_in_red():
    grey = np.zeros((100, 100), np.uint8)
    pic = np.asarray(overlay(grey, np.array([[np.nan, np.nan]]), truth=np.array([[50.0, 50.0]])))
    assert tuple(pic[50, 50]) == (255, 0, 0)
