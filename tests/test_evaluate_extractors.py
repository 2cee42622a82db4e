"""`lmjax evaluate --extractor`, false positives and `--sdr_mm`: hand-made maps through
the real report code, and a tiny trained segmentation U-Net read by every extractor."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lmjax import cli, extractor_table, parallel
from lmjax.configs.phantom import get_config
from lmjax.data.types import Dataset, LandmarkSet, Record
from lmjax.evaluate import format_report
from lmjax.ops.centroids import METHODS
from lmjax.train import evaluation, loop
from tests.test_cli import run_cli

H, W = 48, 64
# Landmark "a" lives in the left half of each image, "b" in the right half.
A_EXTRA = (0, 1, 2, 3, 4)  # extra blobs beside landmark a, per record


def _disc(img: np.ndarray, x: float, y: float, r: float) -> None:
    yy, xx = np.mgrid[:H, :W]
    img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = 1.0


def _blob_dataset() -> Dataset:
    """Five images whose pixels are the probability maps themselves: a disc of radius
    4 on each landmark and smaller discs (radius 3) as known false positives.

    Record 2 has one extra blob beside b; record 3 draws b although b is not
    annotated (a false positive of an absent landmark); record 4 draws no b although
    it is annotated (a miss). So Method 4 must count 10 + 2 false positives and 1 miss.
    """
    lset = LandmarkSet("blobs", ("a", "b"))
    records = []
    for i, extra in enumerate(A_EXTRA):
        img = np.zeros((H, W), np.float32)
        a, b = (10.0, 10.0 + 5 * i), (50.0, 24.0)
        _disc(img, *a, 4)
        for j in range(extra):
            _disc(img, 24, 6 + 9 * j, 3)
        if i != 4:
            _disc(img, *b, 4)
        if i == 2:
            _disc(img, 56, 8, 3)
        pts = np.array([a, b if i != 3 else (np.nan, np.nan)], np.float32)
        records.append(Record(img, pts, None, (0.25, 0.25), "test", meta={"name": f"b{i}"}))
    return Dataset(lset, records, name="blobs")


def _blob_step(calls: list):
    """An eval step that returns the (normalised) input image as the maps: the left
    half as channel a, the right half as channel b. `calls` counts its calls."""

    def step(state, batch):
        calls.append(1)
        img = np.asarray(batch["image"])[..., 0]
        lo, hi = img.min(axis=(1, 2), keepdims=True), img.max(axis=(1, 2), keepdims=True)
        probs = (img - lo) / np.where(hi > lo, hi - lo, 1.0)  # undo the z-score
        left = np.arange(W) < W // 2
        maps = np.stack([probs * left, probs * ~left], axis=-1)
        return {"probs": jnp.asarray(maps, jnp.float32)}

    return step


def _blob_config(extractor: str = "threshold_opening"):
    config = get_config("tiny")
    with config.unlocked():
        config.data.input_size = (H, W)  # the identity: maps in original pixels
        config.train.batch_size = 2
        config.task.mode = "segmentation"
        config.task.losses = {"dice_ce": 1.0}
        config.task.extractor = extractor
    return config


def test_method_4_false_positives_of_hand_made_maps():
    ds, calls = _blob_dataset(), []
    mesh = parallel.make_mesh()
    report, coords, _ = evaluation.evaluate_state(_blob_config(), _blob_step(calls), mesh, None, ds)
    assert len(calls) == 3  # five images, two per batch
    # The largest component is the landmark's own disc, whose centroid is exact.
    assert report["mre"] == pytest.approx(0.0, abs=1e-4)
    assert report["missed"] == 1 and report["false_positives"] == 12
    per = {row["landmark"]: row for row in report["per_landmark"]}
    assert per["a"]["false_positives"] == sum(A_EXTRA) and per["a"]["missed"] == 0
    assert per["b"]["false_positives"] == 2 and per["b"]["missed"] == 1
    detection = report["detection"]
    assert detection["images_with_false_positives"] == 4  # records 1, 2, 3, 4
    assert detection["images_with_missed"] == 1
    assert [r["false_positives"] for r in detection["per_landmark"]] == [10, 2]
    text = format_report(report)
    assert "missed 1  false positives 12" in text
    assert text.splitlines()[1].split()[-2:] == ["missed", "false_positives"]


def test_extractors_without_false_positives_say_nothing_of_them():
    ds = _blob_dataset()
    mesh = parallel.make_mesh()
    report, _, _ = evaluation.evaluate_state(
        _blob_config("midpoint"), _blob_step([]), mesh, None, ds
    )
    assert "false_positives" not in report and "detection" not in report
    assert "false_positives" not in report["per_landmark"][0]
    text = format_report(report)
    assert "false positives" not in text and "missed 1" in text


def test_one_pass_read_by_every_method():
    ds, calls = _blob_dataset(), []
    mesh = parallel.make_mesh()
    names = tuple(METHODS)
    reports = evaluation.compare_extractors(
        _blob_config(), _blob_step(calls), mesh, None, ds, names, thresholds=(0.5, 1.0)
    )
    assert len(calls) == 3  # one forward pass per batch for all five methods
    assert [n for n in names if "false_positives" in reports[n]] == ["threshold_opening"]
    assert reports["threshold_opening"]["false_positives"] == 12
    # Methods 1-3 weigh the extra blobs into landmark a; Method 4 keeps its disc.
    assert reports["centroid"]["mre"] > 1.0 > reports["threshold_opening"]["mre"]
    table = extractor_table.comparison_report(reports, "threshold_opening")
    assert list(table["sdr_thresholds"]) == [0.5, 1.0]
    rows = {r["extractor"]: r for r in extractor_table.comparison_rows(table)}
    assert rows["threshold_opening"]["fp"] == 12 and "fp" not in rows["midpoint"]
    assert rows["midpoint"]["method"] == 3 and "sdr@0.5" in rows["midpoint"]
    text = extractor_table.format_comparison(table)
    line = next(s for s in text.splitlines() if s.startswith("midpoint"))
    assert line.split()[-1] == "1"  # misses shown; the fp cell left empty, not 0


# ---------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def seg_workdir(tmp_path_factory):
    """A tiny segmentation U-Net on the phantom (disc masks, Method 4 configured)."""
    config = get_config("tiny")
    with config.unlocked():
        config.data.augment = ""
        config.task.mode = "segmentation"
        config.task.target = "circle"
        config.task.radius = 4.0
        config.task.losses = {"dice_ce": 1.0}
        config.task.extractor = "threshold_opening"
        config.optim.learning_rate = 1e-2
        config.train.steps = config.train.eval_every = config.train.log_every = 30
    path = tmp_path_factory.mktemp("seg")
    loop.train(config, path, log=lambda *_: None)
    return path


def _cli(*args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def all_run(seg_workdir, tmp_path_factory):
    path = tmp_path_factory.mktemp("all") / "all.json"
    code, out = _cli("evaluate", f"--workdir={seg_workdir}", "--extractor=all", f"--output={path}")
    assert code == 0, out
    return json.loads(path.read_text()), out


def test_all_compares_every_extractor(all_run):
    report, out = all_run
    assert report["extractor"] == "all" and report["configured_extractor"] == "threshold_opening"
    assert list(report["extractors"]) == list(extractor_table.COMPARED)
    assert report["sdr_thresholds"] == [2.0, 2.5, 3.0, 4.0]
    methods = {name: r["method"] for name, r in report["extractors"].items()}
    assert methods == {**METHODS, "probability_centroid": None, "hard_argmax": None}
    with_fp = [n for n, r in report["extractors"].items() if "false_positives" in r]
    assert with_fp == ["threshold_opening"]
    # The device's float32 probability centroid is Method 1 on the same maps.
    one, soft = report["extractors"]["centroid"], report["extractors"]["probability_centroid"]
    assert soft["mre"] == pytest.approx(one["mre"], rel=1e-4)
    lines = out.splitlines()
    header = next(i for i, s in enumerate(lines) if s.startswith("extractor"))
    assert lines[header].split()[-2:] == ["fp", "missed"]
    rows = lines[header + 2 : header + 2 + len(extractor_table.COMPARED)]
    assert [s.split()[0] for s in rows] == list(extractor_table.COMPARED)


def _configured_copy(workdir, tmp_path, extractor: str):
    """The workdir as if trained with `extractor`: its plain `lmjax evaluate`."""
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("tensorboard", "cache"))
    config = json.loads((copy / "config.json").read_text())
    config["task"]["extractor"] = extractor
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _same_errors(alone: dict, row: dict) -> None:
    for key in ("n", "missed", "mre", "median", "iqr", "p95"):
        assert alone[key] == pytest.approx(row[key], rel=1e-5, abs=1e-6), key
    assert alone["sdr"] == pytest.approx(row["sdr"])
    assert alone.get("false_positives") == row.get("false_positives")
    assert alone.get("detection") == row.get("detection")
    a, b = (np.array(r["per_image"]["errors"], float) for r in (alone, row))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", extractor_table.COMPARED)
def test_each_row_equals_that_extractor_alone(name, seg_workdir, all_run, tmp_path):
    copy = _configured_copy(seg_workdir, tmp_path, name)
    alone = evaluation.evaluate_workdir(str(copy), log=lambda *_: None)
    _same_errors(alone, all_run[0]["extractors"][name])


def test_one_named_extractor_and_sdr_radii(seg_workdir, all_run, tmp_path):
    path = tmp_path / "midpoint.json"
    code, out = _cli(
        "evaluate",
        f"--workdir={seg_workdir}",
        "--extractor=midpoint",
        "--sdr_mm=1,5.5",
        f"--output={path}",
    )
    assert code == 0, out
    report = json.loads(path.read_text())
    assert report["extractor"] == "midpoint" and list(report["sdr"]) == ["1", "5.5"]
    assert {"sdr@1", "sdr@5.5"} <= set(report["per_landmark"][0])
    assert "SDR@1mm" in out and "SDR@2mm" not in out and "false positives" not in out
    row = all_run[0]["extractors"]["midpoint"]
    for key in ("mre", "median", "iqr", "p95", "missed"):
        assert report[key] == pytest.approx(row[key], rel=1e-5), key


@pytest.mark.parametrize("value", ["-1", "2,abc", "0", "nan", ""])
def test_bad_sdr_radii_are_one_line(value, capsys):
    code, out, err = run_cli(capsys, "evaluate", "--workdir=nowhere", f"--sdr_mm={value}")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("lmjax evaluate: error: --sdr_mm needs")


def test_unknown_extractor_is_one_line(capsys):
    code, _, err = run_cli(capsys, "evaluate", "--workdir=nowhere", "--extractor=median")
    assert code == 2 and err.count("\n") == 1
    assert "--extractor=median: unknown" in err and "threshold_opening" in err


def test_all_is_refused_on_a_coordinate_model(tmp_path, capsys):
    config = get_config("tiny")
    with config.unlocked():
        config.model = ml_collections.ConfigDict(
            {"name": "vgg_regression", "width": 1 / 16, "pretrained": ""}
        )
        config.task.mode = "coordinate"
        config.task.losses = {"coord_l1": 1.0}
        config.task.deep_supervision = False
        config.train.steps = config.train.eval_every = config.train.log_every = 1
    loop.train(config, tmp_path, log=lambda *_: None)
    code, out, err = run_cli(capsys, "evaluate", f"--workdir={tmp_path}", "--extractor=all")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--extractor=all reads probability maps" in err
    assert "'vgg_regression' (task.mode 'coordinate') predicts its coordinates" in err
