"""`lmjax compare`: reports paired on images, Wilcoxon tests against scipy, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from lmjax.compare import CompareError, compare_reports, format_comparison, significance, wilcoxon
from lmjax.data.types import Dataset, LandmarkSet, Record
from lmjax.evaluate import error_report
from tests.test_cli import lmjax

N, K = 30, 4


def _dataset(spacing=(0.1, 0.1)) -> Dataset:
    rng = np.random.default_rng(0)
    lset = LandmarkSet("four", tuple(f"L{k}" for k in range(K)))
    records = [
        Record(
            np.zeros((100, 100), np.float32),
            rng.uniform(10, 90, (K, 2)).astype(np.float32),
            None,
            spacing,
            "test",
            meta={"name": f"img{i:02d}"},
        )
        for i in range(N)
    ]
    return Dataset(lset, records, name="four")


def _report(tmp_path, name, noise, *, seed, dataset=None, order=None, label=None):
    ds = dataset or _dataset()
    rng = np.random.default_rng(seed)
    pred = ds.landmarks() + rng.normal(0, noise, (N, K, 2))
    pred[0, 0] = np.nan  # a missed landmark stays out of the pairs
    report = error_report(pred, ds)
    if order is not None:  # the same images listed in another order
        report["per_image"]["images"] = [report["per_image"]["images"][i] for i in order]
        report["per_image"]["errors"] = [report["per_image"]["errors"][i] for i in order]
    if label:
        report["label"] = label
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path, pred


def test_wilcoxon_matches_scipy_and_drops_missing_pairs():
    rng = np.random.default_rng(1)
    a, b = rng.gamma(2.0, 1.0, 50), rng.gamma(2.0, 1.3, 50)
    b[3] = np.nan
    got = wilcoxon(a, b)
    ok = np.isfinite(b)
    ref = stats.wilcoxon(a[ok], b[ok])
    assert got["n"] == 49
    assert got["p"] == pytest.approx(ref.pvalue) and got["statistic"] == pytest.approx(
        ref.statistic
    )
    assert got["median_difference"] == pytest.approx(np.median(b[ok] - a[ok]))
    same = wilcoxon(a, a)
    assert np.isnan(same["p"]) and same["marks"] == ""
    assert np.isnan(wilcoxon([1.0], [2.0])["p"])


@pytest.mark.parametrize(
    ("p", "marks"), [(0.2, ""), (0.05, ""), (0.049, "*"), (0.009, "**"), (0.0009, "***")]
)
def test_significance_marks(p, marks):
    assert significance(p) == marks


def test_compare_pairs_images_and_tests_against_the_first(tmp_path):
    a, pred_a = _report(tmp_path, "a", 2.0, seed=1)
    b, pred_b = _report(tmp_path, "b", 6.0, seed=2, order=list(range(N))[::-1])
    result = compare_reports([a, b])
    assert result["n_images"] == N and result["unit"] == "mm" and result["reference"] == "a"
    gt = _dataset().landmarks()
    err_a = np.linalg.norm((pred_a - gt) * 0.1, axis=-1)
    err_b = np.linalg.norm((pred_b - gt) * 0.1, axis=-1)
    assert result["models"][0]["mre"] == pytest.approx(np.nanmean(err_a), abs=1e-4)
    assert result["models"][1]["mre"] == pytest.approx(np.nanmean(err_b), abs=1e-4)
    overall = result["tests"][0]["overall"]
    ref = stats.wilcoxon(np.round(err_a, 4).ravel()[1:], np.round(err_b, 4).ravel()[1:])
    assert overall["n"] == N * K - 1 and overall["p"] == pytest.approx(ref.pvalue)
    assert overall["marks"] == "***"
    row = result["per_landmark"][2]
    assert row["landmark"] == "L2" and row["b"] == pytest.approx(err_b[:, 2].mean(), abs=1e-4)
    text = format_comparison(result)
    assert "reference" in text and "***" in text and "L3" in text


def test_compare_refuses_what_cannot_be_paired(tmp_path):
    a, _ = _report(tmp_path, "a", 2.0, seed=1)
    with pytest.raises(CompareError, match="at least two"):
        compare_reports([a])
    px, _ = _report(tmp_path, "px", 2.0, seed=2, dataset=_dataset(spacing=None))
    with pytest.raises(CompareError, match="mix units"):
        compare_reports([a, px])
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"mre": 1.0, "unit": "mm"}))
    with pytest.raises(CompareError, match="no per-image errors"):
        compare_reports([a, bare])
    other = json.loads(a.read_text())
    other["per_image"]["images"] = [f"x{i}" for i in range(N)]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(CompareError, match="no image in common"):
        compare_reports([a, tmp_path / "other.json"])


def test_cli_compare_writes_json_and_fails_in_one_line(tmp_path):
    a, _ = _report(tmp_path, "a", 2.0, seed=1)
    b, _ = _report(tmp_path, "b", 3.0, seed=2)
    out = lmjax("compare", str(a), str(b), f"--output={tmp_path / 'c.json'}")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "c.json").read_text())["models"][1]["label"] == "b"
    assert "Wilcoxon" in out.stdout
    out = lmjax("compare", str(a), str(tmp_path / "missing.json"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not a readable JSON report" in out.stderr


def test_same_file_names_are_told_apart_by_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, _ = _report(tmp_path / "x", "test1", 2.0, seed=1)
    b, _ = _report(tmp_path / "y", "test1", 6.0, seed=2)
    result = compare_reports([a, b])
    assert [m["label"] for m in result["models"]] == ["x/test1", "y/test1"]
    assert result["reference"] == "x/test1" and result["tests"][0]["label"] == "y/test1"
    assert "reference" in format_comparison(result).splitlines()[3]
