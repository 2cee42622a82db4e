"""`lmjax predict` end to end with a tiny trained model: files, formats, frames, errors."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from lmjax.configs.phantom import get_config
from lmjax.data import limits
from lmjax.data.labelme import load_labelme
from lmjax.data.phantom import render_phantom
from lmjax.data.tabular import load_csv
from lmjax.data.types import LandmarkDataError
from lmjax.overlay import overlay
from lmjax.predict import collect_inputs, run_predict, unique_stems
from lmjax.train import loop, restore, setup
from tests.data.test_image_io import write_dicom


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    config = get_config("tiny")
    config.train.steps = 4
    config.train.eval_every = 4
    config.train.log_every = 4
    path = tmp_path_factory.mktemp("run")
    loop.train(config, path, log=lambda *_: None)
    return path


@pytest.fixture(scope="module")
def landmark_set(workdir):
    config, *_ = restore.restore_trained(workdir)
    return setup.load_splits(config)[0].landmark_set


def _phantom(hw: tuple[int, int], index: int) -> np.ndarray:
    """A phantom radiograph in [0, 4095] of the given size."""
    return render_phantom(7, index, image_size=hw)[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pathlib.Path:
    """An 8-bit 300x200 and a 16-bit 150x260 PNG (H x W), and a 2x upscale pair."""
    folder = tmp_path_factory.mktemp("images")
    a = _phantom((300, 200), 0)
    Image.fromarray(np.round(a / 4095 * 255).astype(np.uint8)).save(folder / "eight.png")
    b = _phantom((150, 260), 1)
    Image.fromarray((b * 16).astype(np.uint16)).save(folder / "sixteen.png")
    small = np.round(_phantom((90, 70), 2) / 4095 * 255).astype(np.uint8)
    Image.fromarray(small).save(folder / "small.png")
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # pixel (i, j) -> 2x2 block
    Image.fromarray(big).save(folder / "big.png")
    return folder


@pytest.fixture(scope="module")
def predicted(workdir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    results = run_predict(workdir, [str(images)], out)
    return out, results


def _doc_coords(doc) -> np.ndarray:
    return np.array(
        [
            [np.nan if p["x"] is None else p["x"], np.nan if p["y"] is None else p["y"]]
            for p in doc["landmarks"]
        ]
    )


def test_json_png_labelme_and_csv_agree(predicted, images, landmark_set, tmp_path):
    out, results = predicted
    assert [pathlib.Path(r["image"]).name for r in results] == [
        "big.png",
        "eight.png",
        "sixteen.png",
        "small.png",
    ]
    sizes = {"eight": (300, 200), "sixteen": (150, 260), "small": (90, 70), "big": (180, 140)}
    rows = {r["image"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    review = tmp_path / "labels"
    review.mkdir()
    for stem, (h, w) in sizes.items():
        doc = json.loads((out / f"{stem}.json").read_text())
        assert doc == next(r for r in results if r["image"].endswith(f"{stem}.png"))
        assert doc["image_size"] == [h, w]
        assert doc["spacing"] is None and doc["spacing_source"] == "none"
        assert doc["warnings"] == []
        assert {"LCE_right", "LCE_left"} <= set(doc["measurements"])
        assert [p["name"] for p in doc["landmarks"]] == list(landmark_set.names)
        assert all("x_mm" not in p and 0 <= p["confidence"] for p in doc["landmarks"])
        xy = _doc_coords(doc)
        assert xy.shape == (landmark_set.num_landmarks, 2) and np.isfinite(xy).all()
        inside = (xy >= -0.5).all(1) & (xy[:, 0] <= w - 0.5) & (xy[:, 1] <= h - 0.5)
        assert inside.mean() >= 0.75
        with Image.open(out / f"{stem}.png") as pic:
            assert pic.size == (w, h) and pic.mode == "RGB"
        # The CSV row of the image, by its path relative to the output folder.
        row = rows[f"../{images.name}/{stem}.png"]
        csv_xy = [[float(row[f"{n}_x"]), float(row[f"{n}_y"])] for n in landmark_set.names]
        np.testing.assert_array_equal(csv_xy, xy)
        assert row["row_mm"] == "" and row["col_mm"] == ""
        shutil.copy(out / f"{stem}.labelme.json", review / f"{stem}.json")
        lm = json.loads((out / f"{stem}.labelme.json").read_text())
        assert (out / lm["imagePath"]).resolve() == (images / f"{stem}.png").resolve()
        assert [lm["imageHeight"], lm["imageWidth"]] == [h, w]
        # LabelMe shows 16-bit PNGs unwindowed, so those carry the windowed image.
        assert (lm["imageData"] is None) == (stem != "sixteen")
    # A reviewed LabelMe file is training data: JSON beside a sibling images/ folder.
    shutil.copytree(images, tmp_path / "images")
    ds = load_labelme(review, landmark_set=landmark_set)
    assert not ds.errors and not ds.warnings
    for record in ds.records:
        doc = json.loads((out / f"{pathlib.Path(record.image).stem}.json").read_text())
        np.testing.assert_array_equal(record.landmarks, _doc_coords(doc).astype(np.float32))
    # predictions.csv reads back as a CSV dataset, images found relative to it; they
    # lie outside the output folder, a path a reader follows only when allowed.
    with limits.changed(allow_outside_paths=True):
        back = load_csv(out / "predictions.csv", landmark_set=landmark_set)
    assert not back.errors and len(back.records) == 4


def _cell_centroids(images: np.ndarray):
    """A smooth stand-in for the model: landmark k is the intensity centroid of cell
    k of a 4x4 grid. An under-trained network's soft-argmax can jump between nearly
    equal heatmap peaks, which hides the frame mapping this test is about."""
    b, h, w, _ = images.shape
    img = images[..., 0] - images[..., 0].min(axis=(1, 2), keepdims=True)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for i in range(4):
        for j in range(4):
            cell = (slice(i * h // 4, (i + 1) * h // 4), slice(j * w // 4, (j + 1) * w // 4))
            m = img[(slice(None), *cell)] + 1e-6  # padding samples are all zero
            tot = m.sum(axis=(1, 2))
            cx = (m * xx[cell]).sum(axis=(1, 2)) / tot
            cy = (m * yy[cell]).sum(axis=(1, 2)) / tot
            out.append(np.stack([cx, cy], -1))
    return np.stack(out, 1), np.ones((b, 16), np.float32)


def test_predictions_are_in_the_original_frame(workdir, images, tmp_path, monkeypatch):
    from lmjax.train import final_model

    monkeypatch.setattr(final_model, "predictor", lambda *_: _cell_centroids)
    results = run_predict(workdir, [str(images / "small.png"), str(images / "big.png")], tmp_path)
    small, big = (_doc_coords(doc) for doc in results)
    # Pixel centres on integers: small pixel x covers big pixels 2x and 2x + 1.
    np.testing.assert_allclose(big, 2 * small + 0.5, atol=0.2)


def test_dicom_with_invalid_spacing(workdir, shared_data, tmp_path):
    dicom = shared_data / "dicom" / "RG1_UNCR.dcm"
    (doc,) = run_predict(workdir, [str(dicom)], tmp_path)
    assert doc["image_size"] == [1955, 1841]
    assert doc["spacing"] is None and doc["spacing_source"] == "none"
    assert any("invalid PixelSpacing" in w and "RG1_UNCR.dcm" in w for w in doc["warnings"])
    assert all("x_mm" not in p for p in doc["landmarks"])
    with Image.open(tmp_path / "RG1_UNCR.png") as pic:
        assert pic.size == (1841, 1955)
    lm = json.loads((tmp_path / "RG1_UNCR.labelme.json").read_text())
    assert lm["imageData"]  # LabelMe cannot open DICOM: the windowed image is embedded
    assert (tmp_path / lm["imagePath"]).resolve() == dicom.resolve()


def test_unreadable_dicom_alone_fails_with_the_readers_error(workdir, shared_data, tmp_path):
    with pytest.raises(LandmarkDataError, match=r"chrJapMulti\.dcm.*no pixel data"):
        run_predict(workdir, [str(shared_data / "dicom" / "chrJapMulti.dcm")], tmp_path)


def test_unreadable_image_among_others_and_spacing_in_mm(workdir, tmp_path, capsys):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    pixels = np.round(_phantom((120, 100), 3)).astype(np.uint16)
    # Rows 0.1 mm apart, columns 0.2 mm: x (a column index) goes with 0.2.
    spaced = write_dicom(tmp_path / "in" / "spaced.dcm", pixels, PixelSpacing=[0.1, 0.2])
    results = run_predict(workdir, [str(broken), str(spaced)], tmp_path / "out")
    assert "broken.png" in results[0]["error"] and "error" not in results[1]
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "out" / "broken.json").exists()
    doc = json.loads((tmp_path / "out" / "spaced.json").read_text())
    assert doc == results[1]
    assert doc["spacing"] == [0.1, 0.2] and doc["spacing_source"] == "PixelSpacing"
    for p in doc["landmarks"]:
        assert p["x_mm"] == round(p["x"] * 0.2, 4) and p["y_mm"] == round(p["y"] * 0.1, 4)
    (row,) = csv.DictReader((tmp_path / "out" / "predictions.csv").open())
    assert row["image"] == "../in/spaced.dcm" and (row["row_mm"], row["col_mm"]) == ("0.1", "0.2")


def test_folder_with_a_non_image_file(workdir, images, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(images / "small.png", folder / "x.png")
    (folder / "notes.txt").write_text("not an image")
    results = run_predict(workdir, [str(folder)], tmp_path / "out")
    assert len(results) == 1 and results[0]["image"].endswith("x.png")
    assert "notes.txt: not an image file; skipped" in capsys.readouterr().err
    with pytest.raises(LandmarkDataError, match="notes.txt: not an image file"):
        run_predict(workdir, [str(folder / "notes.txt")], tmp_path / "out")
    assert collect_inputs([str(folder), str(folder / "x.png")]) == [folder / "x.png"]
    (folder / "x.png").unlink()
    with pytest.raises(LandmarkDataError, match="in: no image files"):
        collect_inputs([str(folder)])


def test_missing_checkpoint(images, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        run_predict(tmp_path / "empty", [str(images / "small.png")], tmp_path / "out")


def test_bad_inputs_fail_before_the_model_is_loaded(tmp_path):
    with pytest.raises(LandmarkDataError, match="nothing.png: no such file or folder"):
        run_predict(tmp_path / "empty", [str(tmp_path / "nothing.png")], tmp_path)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(LandmarkDataError, match="would overwrite an input"):
        run_predict(tmp_path / "empty", [str(tmp_path / "a.png")], tmp_path)


def test_overlay_keeps_small_images_and_shrinks_large_ones():
    small = overlay(np.zeros((30, 20), np.uint8), np.array([[5.0, 7.0]]))
    assert small.size == (20, 30) and small.getpixel((5, 7)) == (0, 0, 0)
    big = overlay(np.zeros((4096, 1024), np.uint8), np.array([[511.5, 2047.5], [np.nan, 1.0]]))
    assert big.size == (512, 2048)
    pic = np.asarray(big)
    # The circle is drawn around the scaled point (255.5, 1023.5), radius 10.
    assert pic[1013:1035, 245:267].any() and not pic[:900].any()


def test_colliding_stems_get_a_suffix():
    paths = [pathlib.Path(p) for p in ("a/x.png", "b/x.dcm", "c/X.png", "d/y.png")]
    assert unique_stems(paths) == ["x", "x_2", "X_3", "y"]
