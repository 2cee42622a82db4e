"""Regions of interest: boxes, the region's dataset, the crop in the input pipeline
(predictions map back to the full image) and training one region end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax.data import cache
from lmjax.data.pipeline import make_pipeline
from lmjax.data.roi import roi_box, roi_dataset, roi_long_side
from lmjax.data.types import Dataset, LandmarkSet, Record

PROC = dict(process_index=0, process_count=1, num_threads=1)
HIP = ["femoral_head_right", "greater_trochanter_right", "lesser_trochanter_right"]


def test_roi_box_is_square_grown_and_centred():
    box = roi_box(np.array([[10.0, 20.0], [30.0, 30.0], [np.nan, np.nan]]), margin=0.25, min_side=4)
    # 20 x 10 points: side 20 * (1 + 2 * 0.25) = 30, centred on (20, 25).
    np.testing.assert_allclose(box, [5.0, 10.0, 35.0, 40.0])
    assert roi_box(np.full((2, 2), np.nan), margin=0.1, min_side=4) is None
    one = roi_box(np.array([[50.0, 50.0]]), margin=0.5, min_side=16)
    np.testing.assert_allclose(one, [42.0, 42.0, 58.0, 58.0])


def _image_with_dots(points, hw=(200, 300)):
    img = np.zeros(hw, np.float32)
    for x, y in points:
        img[int(round(y)) - 5 : int(round(y)) + 6, int(round(x)) - 5 : int(round(x)) + 6] = 1.0
    return img


def _toy(n=3):
    lset = LandmarkSet("toy", ("a", "b", "c", "d"), flip_pairs=((0, 3),))
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        pts = np.array([[40, 40], [80, 60], [250, 150], [260, 170]], np.float32) + rng.normal(
            0, 3, (4, 2)
        )
        vis = np.ones(4, bool)
        if i == n - 1:  # the region's landmarks missing: the record is left out
            pts[1:3] = np.nan
            vis[1:3] = False
        records.append(Record(_image_with_dots(pts[vis]), pts.astype(np.float32), vis,
                              spacing=(0.5, 0.5), meta={"name": f"r{i}"}))  # fmt: skip
    return Dataset(lset, records, name="toy")


def test_region_dataset_keeps_its_landmarks_and_boxes():
    ds = roi_dataset(_toy(), {"right": ["b", "c"], "ends": ["a", "d"]}, "right", margin=0.1)
    assert ds.landmark_set.names == ("b", "c") and ds.landmark_set.flip_pairs == ()
    assert len(ds.records) == 2  # the third has no landmark of the region
    r = ds.records[0]
    assert r.landmarks.shape == (2, 2) and r.meta["roi_name"] == "right"
    x0, y0, x1, y1 = r.meta["roi"]
    assert x0 < r.landmarks[:, 0].min() and x1 > r.landmarks[:, 0].max()
    assert x1 - x0 == pytest.approx(y1 - y0)
    ends = roi_dataset(_toy(), {"ends": ["a", "d"]}, "ends")
    assert ends.landmark_set.flip_pairs == ((0, 1),)  # pairs inside the region survive


@pytest.mark.parametrize(
    "groups, roi, message",
    [
        ({"right": ["b"]}, "left", "not one of data.roi_groups"),
        ({"right": ["b", "zz"]}, "right", "unknown landmarks \\['zz'\\]"),
        ({"right": []}, "right", "unknown landmarks"),
    ],
)
def test_region_mistakes_are_named(groups, roi, message):
    with pytest.raises(ValueError, match=message):
        roi_dataset(_toy(), groups, roi)


def test_the_crop_fills_the_input_and_maps_back_to_the_full_image():
    ds = roi_dataset(_toy(), {"right": ["b", "c"]}, "right", margin=0.2)
    b = next(make_pipeline(ds, input_size=(64, 64), batch_size=2, train=False,
                           normalize="unit", **PROC))  # fmt: skip
    for i, rec in enumerate(ds.records):
        x0, y0, x1, y1 = rec.meta["roi"]
        # Box edges onto input edges: a pixel-centre point p lands at
        # (p - box0) * 64 / side - 0.5 in the input.
        expect = (rec.landmarks - [x0, y0]) * 64 / (x1 - x0) - 0.5
        np.testing.assert_allclose(b["landmarks"][i], expect, atol=1e-3)
        back = b["landmarks"][i] @ b["to_original"][i][:2, :2].T + b["to_original"][i][:2, 2]
        np.testing.assert_allclose(back, rec.landmarks, atol=1e-3)
        # The image is the crop: the dots sit at the landmarks in the input.
        for x, y in b["landmarks"][i]:
            assert b["image"][i, int(round(y)), int(round(x)), 0] > 0.3


def test_the_cache_keeps_the_region_sharp():
    rec = Record("x.png", np.zeros((1, 2), np.float32), np.ones(1, bool),
                 meta={"roi": (0.0, 0.0, 500.0, 500.0)})  # fmt: skip
    img = cache.CachedImage(np.zeros((160, 128)), np.eye(3), (2500, 2000), None)
    assert roi_long_side(rec, img, 160) == 800  # 500 px of 2500 keep 160 px
    big = Record("x.png", rec.landmarks, rec.visible, meta={"roi": (0.0, 0.0, 10.0, 10.0)})
    assert roi_long_side(big, img, 160) == 2500  # never above the original
    plain = Record("x.png", rec.landmarks, rec.visible)
    assert roi_long_side(plain, img, 160) == 160


def test_training_one_region_reports_its_landmarks_on_the_full_image(tmp_path, capsys):
    from tests.test_cli import run_cli

    code, out, err = run_cli(
        capsys,
        "train",
        "--config=lmjax/configs/phantom.py:tiny",
        f"--workdir={tmp_path}",
        "--config.data.roi_groups.hip=" + ",".join(HIP),
        "--config.data.roi=hip",
        "--config.train.steps=3",
        "--config.train.eval_every=3",
        "--config.train.tensorboard=false",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["per_image"]["landmarks"] == HIP and report["unit"] == "mm"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "film.png")
    film = str(tmp_path / "film.png")
    code, _, err = run_cli(
        capsys, "predict", f"--workdir={tmp_path}", f"--output_dir={tmp_path / 'p'}", film
    )
    assert code == 2 and "data.roi" in err
