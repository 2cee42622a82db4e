"""The calibration split (disjoint, deterministic, refused with cross-validation) and
calibration end to end: train with a calibration split, conformal.json and the
shape model, evaluate's coverage, predict's radii and review queue."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil

import numpy as np
import pytest

from lmjax import cli, configs
from lmjax.configs.phantom import get_config
from lmjax.train import setup
from tests.test_cli import run_cli

TINY = f"{configs.DEFAULT}:tiny"


def _names(ds) -> list[str]:
    return [r.name for r in ds.records]


def test_calibration_split_is_disjoint_and_deterministic():
    config = get_config("tiny")
    before, val, test = setup.load_splits(config)
    assert setup.load_calibration(config) is None
    config.data.calib_fraction = 0.3
    train, val2, test2 = setup.load_splits(config)
    calib = setup.load_calibration(config)
    assert len(calib) == round(0.3 * len(before)) and len(train) + len(calib) == len(before)
    assert set(_names(train)) | set(_names(calib)) == set(_names(before))
    everything = [set(_names(d)) for d in (train, val2, test2, calib)]
    for i, a in enumerate(everything):
        for b in everything[i + 1 :]:
            assert not a & b
    assert _names(val2) == _names(val) and _names(test2) == _names(test)
    assert _names(setup.load_calibration(config)) == _names(calib)  # the same cut again
    config.train.seed = 1
    assert _names(setup.load_calibration(config)) != _names(calib)


def test_calibration_split_with_a_carved_validation_set():
    config = get_config("tiny")
    config.data.val_split = "none"  # no such split: validation is carved from train
    config.data.calib_fraction = 0.25
    train, val, _ = setup.load_splits(config)
    calib = setup.load_calibration(config)
    assert not set(_names(calib)) & (set(_names(train)) | set(_names(val)))
    assert len(train) + len(val) + len(calib) == 28


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"cv_folds": 3, "cv_fold": 0}, "cross-validation"),
        ({"calib_fraction": 0.01}, "need at least 2"),
        ({"calib_fraction": 1.0}, "must be in"),
    ],
)
def test_calibration_split_refusals(fields, message):
    config = get_config("tiny")
    config.data.calib_fraction = 0.2
    for key, value in fields.items():
        setattr(config.data, key, value)
    with pytest.raises(ValueError, match=message):
        setup.load_splits(config)


def test_bad_alpha_is_refused_before_training(tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "train", f"--config={TINY}", f"--workdir={tmp_path}",
        "--config.data.calib_fraction=0.3", "--config.conformal.alpha=1.5",
    )  # fmt: skip
    assert code == 2 and "conformal.alpha must be between 0 and 1" in err
    assert err.count("\n") == 1


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny run trained through `lmjax train` with a calibration split of 8 images."""
    workdir = tmp_path_factory.mktemp("calibrated")
    args = [
        "train", f"--config={TINY}", f"--workdir={workdir}", "--config.train.steps=4",
        "--config.train.eval_every=4", "--config.train.log_every=4",
        "--config.data.calib_fraction=0.3", "--config.conformal.alpha=0.2",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit:  # capsys is per test; pytest captures anyway
        cli.run(["lmjax", *args])
    assert exit.value.code == 0
    return workdir


def test_train_writes_radii_and_shape_model_and_evaluate_reports_coverage(calibrated, capsys):
    radii = json.loads((calibrated / "conformal.json").read_text())
    assert radii["alpha"] == 0.2 and radii["nominal"] == pytest.approx(0.8)
    assert radii["n_images"] == 8 and set(radii["n"].values()) == {8}
    assert all(r is not None and r > 0 for r in radii["radius"].values())
    assert radii["stages"][0] == "global"
    shape = json.loads((calibrated / "shape_model.json").read_text())
    assert shape["n_shapes"] == 20  # the 28 training images less the 8 calibration ones
    report = json.loads((calibrated / "eval.json").read_text())
    cov = report["conformal"]
    assert cov["nominal"] == pytest.approx(0.8) and cov["n"] == report["n"]
    assert set(cov["per_landmark"]) == set(radii["landmarks"])
    assert 0 <= cov["coverage"] <= 1 and cov["unit"] == report["unit"]
    assert [w["landmark"] for w in report["worst"]] == [
        r["landmark"] for r in sorted(report["per_landmark"], key=lambda r: -r["mre"])[:3]
    ]
    code, out, _ = run_cli(capsys, "evaluate", f"--workdir={calibrated}")
    assert code == 0 and "conformal radii: coverage" in out and "nominal 0.800" in out
    assert "worst landmarks" in out


def test_calibrate_command_rewrites_the_radii(calibrated, tmp_path, capsys):
    before = json.loads((calibrated / "conformal.json").read_text())
    work = tmp_path / "run"
    shutil.copytree(calibrated, work)
    (work / "conformal.json").unlink()
    code, out, err = run_cli(capsys, "calibrate", f"--workdir={work}")
    assert code == 0, err
    assert json.loads((work / "conformal.json").read_text())["radius"] == before["radius"]
    assert "conformal radii at 80%" in out


def test_calibrate_without_a_calibration_split_says_what_to_set(calibrated, tmp_path, capsys):
    work = tmp_path / "run"
    shutil.copytree(calibrated, work)
    config = json.loads((work / "config.json").read_text())
    config["data"]["calib_fraction"] = 0.0
    (work / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "calibrate", f"--workdir={work}")
    assert code == 2 and "data.calib_fraction" in err and err.count("\n") == 1


def _phantom_pngs(folder: pathlib.Path, n: int = 3) -> pathlib.Path:
    from PIL import Image

    from lmjax.data.phantom import render_phantom

    folder.mkdir()
    for i in range(n):
        img = render_phantom(11, i, image_size=(96, 80))[0]
        Image.fromarray(np.round(img / 4095 * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_predict_writes_radii_flags_and_the_review_queue(calibrated, tmp_path, capsys):
    images = _phantom_pngs(tmp_path / "images")
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", f"--workdir={calibrated}", f"--output_dir={out}", "--review",
        str(images),
    )  # fmt: skip
    assert code == 0, err
    radii = json.loads((calibrated / "conformal.json").read_text())
    doc = json.loads((out / "p0.json").read_text())
    for p in doc["landmarks"]:  # PNGs have no spacing; the radii are in the run's unit
        assert p[f"radius_{radii['unit']}"] == radii["radius"][p["name"]]
        assert p["coverage"] == pytest.approx(0.8)
        assert isinstance(p["implausible"], bool) and p["shape_score"] >= 0
    labelme = json.loads((out / "p0.labelme.json").read_text())
    assert all("r80=" in s["description"] and "shape=" in s["description"]
               for s in labelme["shapes"])  # fmt: skip
    review = json.loads((out / "review.json").read_text())
    assert [e["rank"] for e in review["images"]] == [1, 2, 3]
    assert "conformal radius" in review["review_score"]
    keys = [(e["missed"] > 0, e["implausible"] > 0, e["review_score"]) for e in review["images"]]
    assert keys == sorted(keys, reverse=True)
    for entry in review["images"]:
        marks = [(r["implausible"], r["review_score"]) for r in entry["landmarks"]]
        assert marks == sorted(marks, reverse=True)  # implausible first, then the score
    with (out / "review.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * len(doc["landmarks"])
    assert rows[0]["image"] == review["images"][0]["image"] and rows[0]["landmark_rank"] == "1"


def test_review_without_radii_ranks_by_shape_score(calibrated, tmp_path, capsys):
    work = tmp_path / "run"
    shutil.copytree(calibrated, work)
    (work / "conformal.json").unlink()
    images = _phantom_pngs(tmp_path / "images", n=2)
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", f"--workdir={work}", f"--output_dir={out}", "--review", str(images)
    )
    assert code == 0 and "no conformal.json" in err
    review = json.loads((out / "review.json").read_text())
    assert review["unit"] is None and review["review_score"].startswith("shape score")
    doc = json.loads((out / "p0.json").read_text())
    assert "radius_mm" not in doc["landmarks"][0] and "shape_score" in doc["landmarks"][0]
