"""Item sets: outlines and patches read from LabelMe and COCO next to landmarks."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from lmjax.data.coco import load_coco
from lmjax.data.inspect import format_summary, summarize
from lmjax.data.items import item_centroid
from lmjax.data.labelme import load_labelme
from lmjax.data.types import LandmarkDataError, LandmarkSet
from lmjax.train.setup import load_landmark_set, save_landmark_set

SQUARE = [[2.0, 2.0], [12.0, 2.0], [12.0, 12.0], [2.0, 12.0]]


def _png(path, hw=(20, 30)):
    Image.fromarray(np.zeros(hw, np.uint8)).save(path)


def _labelme(path, shapes):
    shapes = [{"label": lab, "points": pts, "shape_type": t} for lab, t, pts in shapes]
    path.write_text(json.dumps({"shapes": shapes, "imagePath": path.stem + ".png"}))
    _png(path.with_suffix(".png"))


def _folder(tmp_path):
    _labelme(
        tmp_path / "a.json",
        [
            ("l2", "point", [[1.0, 2.0]]),
            ("l10", "point", [[3.0, 4.0]]),
            ("line", "linestrip", [[0.0, 0.0], [4.0, 0.0], [4.0, 2.0]]),
            ("bone", "polygon", SQUARE),
            ("cup", "line", [[5.0, 5.0], [9.0, 5.0]]),
        ],
    )
    _labelme(tmp_path / "b.json", [("l2", "point", [[5.0, 6.0]]), ("bone", "polygon", SQUARE)])
    return load_labelme(tmp_path)


def test_labelme_item_set_geometry_and_centroids(tmp_path):
    ds = _folder(tmp_path)
    lset = ds.landmark_set
    assert lset.names == ("l2", "l10", "cup", "line", "bone")
    assert lset.kinds == ("landmark", "landmark", "outline", "outline", "patch")
    assert lset.landmark_indices.tolist() == [0, 1]
    assert lset.outline_indices.tolist() == [2, 3] and lset.patch_indices.tolist() == [4]
    assert (lset.radius_mm, lset.width_mm) == (2.0, 2.0)
    a, b = ds.records
    np.testing.assert_array_equal(a.polygons["line"], [[0, 0], [4, 0], [4, 2]])
    assert a.polygons["bone"].dtype == np.float32 and a.polygons["bone"].shape == (4, 2)
    np.testing.assert_allclose(a.landmarks, [[1, 2], [3, 4], [7, 5], [8 / 3, 2 / 3], [7, 7]])
    assert a.visible.all()
    assert b.visible.tolist() == [True, False, False, False, True]
    assert set(b.polygons) == {"bone"} and np.isnan(b.landmarks[2:4]).all()


def test_patch_centroid_is_the_area_centroid():
    # An L-shape (a 4x1 and a 1x3 bar): its vertex mean (5/3, 5/3) is not the area centroid.
    ell = np.array([[0, 0], [4, 0], [4, 1], [1, 1], [1, 4], [0, 4]], np.float32)
    np.testing.assert_allclose(item_centroid("patch", ell), [9.5 / 7, 9.5 / 7], atol=1e-6)
    np.testing.assert_allclose(item_centroid("outline", ell), ell.mean(0))


@pytest.mark.parametrize(
    "shape, match",
    [
        (("bad", "polygon", [[0.0, 0.0], [3.0, 3.0]]), r"b\.json: patch 'bad'"),
        (("bad", "linestrip", [[2.0, 2.0], [2.0, 2.0]]), r"b\.json: outline 'bad': zero length"),
        (("bad", "polygon", [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), r"b\.json: patch 'bad'.*area"),
    ],
)
def test_bad_item_geometry_names_file_and_item(tmp_path, shape, match):
    _labelme(tmp_path / "a.json", [("bad", shape[1], [[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])])
    _labelme(tmp_path / "b.json", [shape])
    with pytest.raises(LandmarkDataError, match=match) as err:
        load_labelme(tmp_path, strict=True)
    assert "\n" not in str(err.value)
    ds = load_labelme(tmp_path)
    assert len(ds.records) == 1 and len(ds.errors) == 1 and "b.json" in ds.errors[0]


def test_duplicate_and_conflicting_item_labels(tmp_path):
    _labelme(tmp_path / "a.json", [("bone", "polygon", SQUARE), ("bone", "polygon", SQUARE[:3])])
    with pytest.warns(UserWarning, match=r"a\.json: label 'bone' appears more than once"):
        ds = load_labelme(tmp_path)
    assert ds.records[0].polygons["bone"].shape == (4, 2)
    with pytest.raises(LandmarkDataError, match="appears more than once"):
        load_labelme(tmp_path, strict=True)
    _labelme(tmp_path / "b.json", [("bone", "linestrip", SQUARE)])
    with pytest.raises(LandmarkDataError, match=r"'bone' is a patch in a\.json but a linestrip"):
        load_labelme(tmp_path)
    given = LandmarkSet("s", ("bone",), kinds=("patch",))
    with pytest.warns(UserWarning, match="appears more than once"):
        ds = load_labelme(tmp_path, landmark_set=given, strict=False)
    assert any("b.json: 'bone' is a patch item but is drawn as a linestrip" in e for e in ds.errors)


def test_landmark_only_data_is_unchanged(tmp_path):
    _labelme(tmp_path / "a.json", [("l2", "point", [[1.0, 2.0]]), ("l10", "point", [[3.0, 4.0]])])
    ds = load_labelme(tmp_path)
    assert ds.landmark_set == LandmarkSet(tmp_path.name, ("l2", "l10"))
    assert ds.landmark_set.kinds is None and ds.landmark_set.item_kinds == ("landmark",) * 2
    assert ds.landmark_set.outline_indices.size == 0
    np.testing.assert_array_equal(ds.records[0].landmarks, [[1, 2], [3, 4]])
    assert ds.records[0].polygons is None
    text = format_summary(summarize(ds, read_images=False))
    assert not any(line.startswith("items") for line in text.splitlines())
    assert LandmarkSet("x", ("a",), kinds=("landmark",)).kinds is None


def test_item_set_validation():
    with pytest.raises(ValueError, match="kinds must be"):
        LandmarkSet("x", ("a", "b"), kinds=("landmark",))
    with pytest.raises(ValueError, match="joins a landmark and a patch"):
        LandmarkSet("x", ("a", "b"), flip_pairs=((0, 1),), kinds=("landmark", "patch"))
    with pytest.raises(ValueError, match="radius_mm must be > 0"):
        LandmarkSet("x", ("a",), radius_mm=0)


def test_coco_segmentation_polygons_are_patches(tmp_path):
    for i in (1, 2):
        _png(tmp_path / f"{i}.png")
    flat = [v for xy in SQUARE for v in xy]
    doc = {
        "images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}],
        "categories": [
            {"id": 1, "name": "pelvis", "keypoints": ["a", "b"]},
            {"id": 2, "name": "ball"},
            {"id": 3, "name": "box_only"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 0, 0, 0]},
            {"id": 11, "image_id": 2, "category_id": 1, "keypoints": [3, 4, 2, 5, 6, 1]},
            {"id": 12, "image_id": 1, "category_id": 2, "segmentation": [flat]},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = load_coco(tmp_path / "ann.json")
    assert ds.landmark_set.names == ("a", "b", "ball")
    assert ds.landmark_set.kinds == ("landmark", "landmark", "patch")
    one, two = ds.records
    np.testing.assert_allclose(one.landmarks[2], [7, 7])
    assert one.visible.tolist() == [True, False, True] and one.polygons["ball"].shape == (4, 2)
    assert two.visible.tolist() == [True, True, False] and two.polygons is None
    s = summarize(ds, read_images=False)
    assert s["items"] == {"landmark": 2, "outline": 0, "patch": 1}
    assert s["items_present"]["patch"] == {"ball": 1}

    doc["annotations"][2]["segmentation"] = [flat[:4]]
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = load_coco(tmp_path / "ann.json")
    assert len(ds.records) == 1 and len(ds.errors) == 1
    assert "ann.json: annotation 12: patch 'ball'" in ds.errors[0]


def test_inspect_summarises_items_by_kind(tmp_path):
    ds = _folder(tmp_path)
    s = summarize(ds)
    assert s["items"] == {"landmark": 2, "outline": 2, "patch": 1}
    assert s["items_present"]["outline"] == {"cup": 1, "line": 1}
    assert s["items_present"]["patch"] == {"bone": 2}
    assert s["items_present"]["landmark"] == {"l2": 2, "l10": 1}
    text = format_summary(s)
    assert "items        2 landmarks, 2 outlines, 1 patches" in text
    assert json.loads(json.dumps(s)) == s


def test_landmarks_json_round_trip_and_old_files(tmp_path):
    lset = LandmarkSet(
        "pelvis",
        ("a", "b", "l", "r"),
        flip_pairs=((2, 3),),
        kinds=("landmark", "landmark", "patch", "patch"),
        radius_mm=1.5,
        width_mm=3.0,
    )
    save_landmark_set(tmp_path, lset)
    assert load_landmark_set(tmp_path) == lset
    old = {"name": "old", "names": ["a", "b"], "flip_pairs": [[0, 1]], "regions": None}
    old["region_names"] = []
    (tmp_path / "landmarks.json").write_text(json.dumps(old))
    loaded = load_landmark_set(tmp_path)
    assert loaded == LandmarkSet("old", ("a", "b"), flip_pairs=((0, 1),))
    assert dataclasses.asdict(loaded)["kinds"] is None and loaded.radius_mm == 2.0
