"""Annotation formats: ISBI 2015, LabelMe, CSV and COCO, on real files and bad ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lmjax.data.coco import load_coco
from lmjax.data.isbi2015 import ISBI2015_LANDMARKS, load_isbi2015, read_isbi_annotation
from lmjax.data.labelme import load_labelme, read_labelme_file, write_labelme
from lmjax.data.tabular import load_csv, write_csv
from lmjax.data.types import LandmarkDataError, LandmarkSet


def _png(path, h=20, w=30):
    Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
    return path


# ISBI 2015 -------------------------------------------------------------------


def test_isbi_real_folder(shared_data):
    ds = load_isbi2015(shared_data / "isbi2015")
    assert len(ds) == 300 and not ds.errors
    assert ds.landmark_set.num_landmarks == 19
    assert {r.split for r in ds.records} == {"train", "test1"}
    assert len(ds.split("train")) == 150 and len(ds.split("test1")) == 150
    first = ds.records[0]
    assert first.name == "001.jpg"
    np.testing.assert_array_equal(first.landmarks[0], [835, 996])
    assert all(r.spacing == (0.1, 0.1) for r in ds.records)


def test_isbi_ground_truth_mean_is_average_of_doctors(shared_data):
    root = shared_data / "isbi2015"
    senior = load_isbi2015(root, ground_truth="senior", splits=("train",)).landmarks()
    junior = load_isbi2015(root, ground_truth="junior", splits=("train",)).landmarks()
    mean = load_isbi2015(root, ground_truth="mean", splits=("train",)).landmarks()
    np.testing.assert_allclose(mean, (senior + junior) / 2, atol=1e-4)
    assert np.abs(senior - junior).max() > 0


def _isbi_tree(tmp_path, lines, image="001.bmp"):
    (tmp_path / "RawImage" / "TrainingData").mkdir(parents=True)
    for doctor in ("senior", "junior"):
        d = tmp_path / "AnnotationsByMD" / f"400_{doctor}"
        d.mkdir(parents=True)
        (d / "001.txt").write_text("\n".join(lines) + "\n")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "RawImage" / "TrainingData" / image)
    return tmp_path


def test_isbi_accepts_trailing_class_lines_and_bmp(tmp_path):
    lines = [f"{i},{2 * i}" for i in range(19)] + ["1", "2", "3", "1", "2", "3", "1", "2"]
    ds = load_isbi2015(_isbi_tree(tmp_path, lines))
    assert len(ds) == 1 and ds.records[0].split == "train"
    np.testing.assert_array_equal(ds.records[0].landmarks[5], [5, 10])


def test_isbi_short_file_is_an_error_naming_it(tmp_path):
    ds = load_isbi2015(_isbi_tree(tmp_path, ["1,2"] * 18))
    assert len(ds) == 0
    assert "001.txt" in ds.errors[0] and "18 landmark lines, expected 19" in ds.errors[0]
    with pytest.raises(LandmarkDataError, match=r"line 1 is 'a,b'"):
        (tmp_path / "bad.txt").write_text("a,b\n")
        read_isbi_annotation(tmp_path / "bad.txt")


def test_isbi_bad_arguments(tmp_path, shared_data):
    with pytest.raises(LandmarkDataError, match="not an ISBI 2015 folder"):
        load_isbi2015(tmp_path)
    with pytest.raises(ValueError, match="ground_truth must be one of"):
        load_isbi2015(shared_data / "isbi2015", ground_truth="average")
    with pytest.raises(ValueError, match="unknown ISBI 2015 split"):
        load_isbi2015(shared_data / "isbi2015", splits=("test3",))


# LabelMe ---------------------------------------------------------------------


def test_labelme_real_sample_documented_problems(shared_data):
    root = shared_data / "hamedan_ceph_sample"
    with pytest.warns(UserWarning):
        ds = load_labelme(root / "labelme_mollabashi")
    assert len(ds) == 5 and not ds.errors
    assert ds.landmark_set.names == tuple(f"l{i}" for i in range(1, 20))
    text = "\n".join(ds.warnings)
    assert "002.json: label 'l11' appears more than once; kept the first point" in text
    assert "050.json: imagePath says '55.tif'" in text
    assert "150.json: imagePath says '157.tif'" in text
    # "1.tif" for 001.tif is the same numbered image, not a mismatch.
    assert "001.json" not in text
    assert all(r.image.endswith(".tif") for r in ds.records)
    with pytest.raises(LandmarkDataError, match=r"002\.json: label 'l11' appears more than once"):
        load_labelme(root / "labelme_mollabashi", strict=True)


def test_labelme_annotators_disagree_by_about_nine_pixels(shared_data):
    root = shared_data / "hamedan_ceph_sample"
    with pytest.warns(UserWarning):
        a = load_labelme(root / "labelme_mollabashi").landmarks()
    # farhadifar/002.json labels anterior nasal spine "l17" a second time: the
    # reader keeps the first l17, warns, and leaves l18 missing.
    with pytest.warns(UserWarning, match=r"002\.json: label 'l17' appears more than once"):
        ds = load_labelme(root / "labelme_farhadifar")
    b = ds.landmarks()
    assert np.isnan(b[1, 17]).all() and int((~np.isfinite(b[..., 0])).sum()) == 1
    d = np.linalg.norm(a - b, axis=-1)
    assert 5 < np.nanmedian(d) < 15


def test_labelme_roundtrip_missing_and_shapes(tmp_path):
    names = ("a", "b", "c")
    pts = np.array([[1.5, 2.0], [np.nan, np.nan], [7.0, 8.25]], np.float32)
    _png(tmp_path / "img1.png")
    write_labelme(tmp_path / "img1.json", pts, names, image_path="img1.png", image_hw=(20, 30))
    doc = json.loads((tmp_path / "img1.json").read_text())
    assert doc["imageHeight"] == 20 and [s["label"] for s in doc["shapes"]] == ["a", "c"]
    doc["shapes"].append(
        {"label": "femur", "points": [[0, 0], [5, 0], [5, 5]], "shape_type": "polygon"}
    )
    doc["shapes"].append({"label": "box", "points": [[9, 9], [3, 2]], "shape_type": "rectangle"})
    (tmp_path / "img1.json").write_text(json.dumps(doc))
    ds = load_labelme(tmp_path, landmark_set=LandmarkSet("t", names))
    rec = ds.records[0]
    np.testing.assert_array_equal(rec.landmarks[[0, 2]], pts[[0, 2]])
    assert np.isnan(rec.landmarks[1]).all() and rec.visible.tolist() == [True, False, True]
    assert rec.polygons["femur"].shape == (3, 2)
    np.testing.assert_array_equal(rec.boxes, [[3, 2, 9, 9]])


def test_labelme_bad_files(tmp_path):
    with pytest.raises(LandmarkDataError, match="no LabelMe .json files"):
        load_labelme(tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(LandmarkDataError, match=r"x\.json: not a readable LabelMe JSON"):
        read_labelme_file(tmp_path / "x.json", ("a",))
    (tmp_path / "y.json").write_text(
        json.dumps({"shapes": [{"label": "a", "points": [[1, 1]], "shape_type": "point"}]})
    )
    ds = load_labelme(tmp_path)
    assert any("x.json" in e for e in ds.errors)
    assert any("y.json: no image named y.*" in e for e in ds.errors)


# CSV -------------------------------------------------------------------------


def test_csv_roundtrip_with_spacing_and_missing(tmp_path):
    for i in range(2):
        _png(tmp_path / f"im{i}.png")
    pts = np.array([[[1, 2], [3, 4]], [[np.nan, np.nan], [5.5, 6.25]]], np.float32)
    spacing = np.array([[0.1, 0.2], [np.nan, np.nan]])
    write_csv(tmp_path / "lm.csv", ["im0.png", "im1.png"], pts, ("p", "q"), spacing=spacing)
    ds = load_csv(tmp_path)
    assert ds.landmark_set.names == ("p", "q")
    np.testing.assert_array_equal(ds.landmarks(), pts)
    assert ds.records[0].spacing == (0.1, 0.2) and ds.records[1].spacing is None
    assert ds.records[1].visible.tolist() == [False, True]


def test_csv_bad_input(tmp_path):
    (tmp_path / "a.csv").write_text("img,p_x,p_y\n")
    with pytest.raises(LandmarkDataError, match="first column must be 'image'"):
        load_csv(tmp_path / "a.csv")
    (tmp_path / "a.csv").write_text("image,p_x,q_y\n")
    with pytest.raises(LandmarkDataError, match="do not pair up"):
        load_csv(tmp_path / "a.csv")
    _png(tmp_path / "i.png")
    (tmp_path / "a.csv").write_text("image,p_x,p_y\ni.png,1,zz\nmissing.png,1,2\n")
    ds = load_csv(tmp_path / "a.csv")
    assert len(ds) == 0
    assert "a.csv:2: 'zz' is not a number" in ds.errors[0]
    assert "missing.png does not exist" in ds.errors[1]
    with pytest.raises(LandmarkDataError, match="landmark set 'other'"):
        load_csv(tmp_path / "a.csv", landmark_set=LandmarkSet("other", ("z",)))


# COCO ------------------------------------------------------------------------


def _coco(tmp_path, keypoints, flip=None):
    _png(tmp_path / "a.png")
    cat = {"id": 1, "name": "hip", "keypoints": ["l", "r", "c"]}
    if flip:
        cat["flip_pairs"] = flip
    doc = {
        "images": [{"id": 7, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "keypoints": keypoints,
                "bbox": [1, 2, 10, 5],
            }
        ],
        "categories": [cat],
    }
    (tmp_path / "k.json").write_text(json.dumps(doc))
    return tmp_path / "k.json"


def test_coco_visibility_flags_and_flip_pairs(tmp_path):
    ds = load_coco(_coco(tmp_path, [1, 2, 2, 3, 4, 1, 0, 0, 0], flip=[["l", "r"]]))
    rec = ds.records[0]
    assert rec.visible.tolist() == [True, True, False]
    np.testing.assert_array_equal(rec.landmarks[:2], [[1, 2], [3, 4]])
    assert np.isnan(rec.landmarks[2]).all()
    assert ds.landmark_set.flip_pairs == ((0, 1),)
    np.testing.assert_array_equal(rec.boxes, [[1, 2, 11, 7]])
    assert rec.meta["coco_visibility"].tolist() == [2, 1, 0]


def test_coco_bad_input(tmp_path):
    ds = load_coco(_coco(tmp_path, [1, 2, 2]))
    assert "1 keypoints, category has 3" in ds.errors[0]
    (tmp_path / "k.json").write_text(json.dumps({"images": []}))
    with pytest.raises(LandmarkDataError, match="needs 'images', 'annotations' and 'categories'"):
        load_coco(tmp_path / "k.json")


def test_isbi_landmark_set_is_declared_once():
    assert ISBI2015_LANDMARKS.names[0] == "sella" and ISBI2015_LANDMARKS.names[-1] == "articulare"
    with pytest.raises(ValueError, match="declares no left/right flip pairs"):
        ISBI2015_LANDMARKS.flip_permutation()
