"""`lmjax.Predictor`: the README example as a doctest, and the same numbers as
`lmjax predict` for files, arrays and lists."""

from __future__ import annotations

import doctest
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import lmjax
from lmjax import api, conformal, shape_check
from lmjax.data.types import LandmarkDataError
from lmjax.predict import run_predict
from lmjax.train import setup
from lmjax.train.restore import read_config
from tests.data.test_image_io import write_dicom
from tests.test_predict import _phantom, workdir  # noqa: F401  (the tiny trained run)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """An 8-bit PNG (120 x 100) and a 12-bit DICOM with 0.5 mm spacing (H x W)."""
    folder = tmp_path_factory.mktemp("api_images")
    png = folder / "eight.png"
    Image.fromarray(np.round(_phantom((120, 100), 0) / 4095 * 255).astype(np.uint8)).save(png)
    dcm = write_dicom(
        folder / "ceph.dcm", _phantom((110, 90), 1).astype(np.uint16), PixelSpacing=[0.5, 0.5]
    )
    return {"png": png, "dcm": dcm}


@pytest.fixture(scope="module")
def predictor(workdir):  # noqa: F811
    return lmjax.Predictor.load(workdir)


def _run(examples: str, globs: dict) -> doctest.TestResults:
    test = doctest.DocTestParser().get_doctest(examples, globs, "example", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    return runner.summarize(verbose=False)


def test_the_readme_example_runs(workdir, files):  # noqa: F811
    section = README.read_text().split("### Python API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert block.count(">>>") >= 3
    block = block.replace('"runs/isbi_cpu"', repr(str(workdir)))
    block = block.replace('"ceph.dcm"', repr(str(files["dcm"])))
    assert _run(block, {}) == (0, block.count(">>>"))


def test_the_module_docstring_runs(workdir, files):  # noqa: F811
    globs = {"workdir": workdir, "image_path": files["dcm"]}
    assert _run(api.__doc__, globs).failed == 0


def test_a_file_gives_what_predict_writes(predictor, workdir, files, tmp_path):  # noqa: F811
    (doc,) = run_predict(workdir, [str(files["dcm"])], tmp_path)
    result = predictor(str(files["dcm"]))
    assert result.to_dict() == doc
    assert result.names == predictor.names and result.spacing_mm == (0.5, 0.5)
    k = len(result.names)
    assert result.landmarks_px.shape == (k, 2) and result.confidence.shape == (k,)
    np.testing.assert_allclose(result.landmarks_mm, result.landmarks_px * 0.5)
    xy = np.array([[p["x"], p["y"]] for p in doc["landmarks"]], float)
    np.testing.assert_array_equal(result.landmarks_px, xy)
    assert result.measurements == doc["measurements"]
    assert result.radius_mm is None and result.implausible is None  # no conformal.json
    json.dumps(result.to_dict())  # JSON-ready


def test_arrays_lists_and_spacing(predictor, files):
    pixels = np.asarray(Image.open(files["png"]))
    from_file = predictor(files["png"])
    from_array = predictor(pixels)
    assert from_array.image == "<array 0>" and from_array.landmarks_mm is None
    np.testing.assert_array_equal(from_array.landmarks_px, from_file.landmarks_px)
    both = predictor([files["png"], pixels], spacing_mm=[None, (0.2, 0.3)])
    assert isinstance(both, list) and [r.image for r in both] == [str(files["png"]), "<array 1>"]
    np.testing.assert_array_equal(both[0].landmarks_px, from_file.landmarks_px)
    assert both[0].spacing_mm is None and both[1].spacing_mm == (0.2, 0.3)
    assert both[1].spacing_source == "user"
    np.testing.assert_allclose(both[1].landmarks_mm, both[1].landmarks_px * [0.3, 0.2])
    square = predictor(pixels, spacing_mm=0.25)  # one number: square pixels
    assert square.spacing_mm == (0.25, 0.25)


def test_bad_inputs_are_named(predictor, tmp_path):
    with pytest.raises(
        FileNotFoundError, match="not a training workdir.*or a file lmjax export wrote"
    ):
        lmjax.Predictor.load(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"<array 0>: pixels of shape \(4, 5, 3\)"):
        predictor(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(LandmarkDataError, match="spacing_mm=-1"):
        predictor(np.zeros((40, 50), np.uint8), spacing_mm=-1)
    with pytest.raises(LandmarkDataError, match="missing.png: no such file"):
        predictor(str(tmp_path / "missing.png"))


def test_conformal_radii_and_shape_flags(workdir, files, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    config = read_config(run)
    train = setup.load_splits(config)[0]
    names = list(train.landmark_set.names)
    radius = {n: (None if i == 0 else 1.5 + i) for i, n in enumerate(names)}
    conformal.save({"landmarks": names, "radius": radius, "unit": "mm", "nominal": 0.9}, run)
    spacing = np.array([r.spacing or (np.nan, np.nan) for r in train.records])
    coords = np.stack([r.landmarks for r in train.records])
    shape_check.save(shape_check.fit(coords, spacing, names), run)
    result = lmjax.Predictor.load(run)(files["dcm"])
    assert result.coverage == 0.9 and result.radius_px is None
    assert np.isnan(result.radius_mm[0]) and result.radius_mm[1] == 2.5  # None: unbounded
    assert result.implausible.dtype == bool and result.implausible.shape == (len(names),)
    assert result.shape_score.shape == (len(names),)
    entry = result.to_dict()["landmarks"][1]
    assert entry["radius_mm"] == 2.5 and entry["coverage"] == 0.9 and "implausible" in entry
