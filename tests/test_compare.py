"""`lmjax compare`: per-image and per-landmark Wilcoxon tests against SciPy, Holm and
Bonferroni, misses, bootstrap effect sizes, measurements, marks, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from lmjax import paired_stats as ps
from lmjax.compare import CompareError, compare_reports, format_comparison
from lmjax.data.isbi2015 import ISBI2015_LANDMARKS
from lmjax.data.types import Dataset, LandmarkSet, Record
from lmjax.evaluate import error_report, measurement_report
from tests.measurements.test_cephalometric import CASE_001
from tests.test_cli import run_cli

N, K = 30, 4
FEW = {"resamples": 200}  # bootstrap CIs are not what most tests check


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
    pred[0, 0] = np.nan  # missed by every model: no evidence either way
    report = error_report(pred, ds)
    if order is not None:  # the same images listed in another order
        report["per_image"]["images"] = [report["per_image"]["images"][i] for i in order]
        report["per_image"]["errors"] = [report["per_image"]["errors"][i] for i in order]
    if label:
        report["label"] = label
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path, pred


def _hand(tmp_path, name, errors, *, measurements=None, landmarks=None):
    """A minimal report from an `[N, K]` error table, NaN written as null."""
    errors = np.asarray(errors, np.float64)
    report = {
        "unit": "mm",
        "sdr": {"2": 0.0},
        "per_image": {
            "images": [f"i{i}" for i in range(errors.shape[0])],
            "landmarks": landmarks or [f"L{k}" for k in range(errors.shape[1])],
            "errors": [[None if np.isnan(e) else float(e) for e in row] for row in errors],
        },
    }
    if measurements is not None:
        report["measurements"] = {"per_image": measurements}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


# ---------------------------------------------------------------- statistics


def test_signed_rank_matches_scipy_and_drops_missing_pairs():
    rng = np.random.default_rng(1)
    a, b = rng.gamma(2.0, 1.0, 50), rng.gamma(2.0, 1.3, 50)
    b[3] = np.nan
    got = ps.signed_rank(a, b, **FEW)
    ok = np.isfinite(b)
    ref = stats.wilcoxon(b[ok] - a[ok])
    assert got["n"] == 49 and got["zeros"] == 0
    assert got["p"] == pytest.approx(ref.pvalue)
    assert got["statistic"] == pytest.approx(ref.statistic)
    assert got["median_difference"] == pytest.approx(np.median(b[ok] - a[ok]))
    assert np.isnan(ps.signed_rank(a, a, **FEW)["p"])  # no difference: no test
    assert np.isnan(ps.signed_rank([1.0], [2.0], **FEW)["p"])


def test_alternative_less_means_the_model_errs_less():
    rng = np.random.default_rng(2)
    ref = rng.gamma(2.0, 1.0, 40)
    better = ref * rng.uniform(0.5, 0.95, 40)  # the model's errors are smaller
    for alt in ps.ALTERNATIVES:
        got = ps.signed_rank(ref, better, alternative=alt, **FEW)
        assert got["p"] == pytest.approx(stats.wilcoxon(better - ref, alternative=alt).pvalue)
    assert ps.signed_rank(ref, better, alternative="less", **FEW)["p"] < 1e-6
    assert ps.signed_rank(ref, better, alternative="greater", **FEW)["p"] > 0.99
    assert ps.signed_rank(ref, better, **FEW)["model_lower"] is True
    with pytest.raises(ValueError, match="unknown alternative 'smaller'"):
        ps.signed_rank(ref, better, alternative="smaller")


def test_holm_and_bonferroni_on_known_vectors():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm, by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03,
    # 0.06, 0.04, then the running maximum makes the last 0.06.
    np.testing.assert_allclose(ps.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(ps.bonferroni(p), [0.04, 0.16, 0.12, 0.02])
    # 0.011 * 2 = 0.022 would undercut 0.01 * 3 = 0.03: Holm keeps the order.
    np.testing.assert_allclose(ps.holm([0.01, 0.011, 0.02]), [0.03, 0.03, 0.03])
    np.testing.assert_allclose(ps.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    # A test that could not run is outside the family: m = 2 here, not 3.
    np.testing.assert_allclose(ps.holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(ps.bonferroni([0.01, np.nan, 0.04]), [0.02, np.nan, 0.08])
    np.testing.assert_allclose(ps.adjust(p, "none"), p)
    with pytest.raises(ValueError, match="unknown correction"):
        ps.adjust(p, "sidak")


def test_bootstrap_ci_contains_the_median_and_is_reproducible():
    d = np.random.default_rng(3).normal(0.4, 1.0, 60)
    lo, hi = ps.bootstrap_ci(d, resamples=2000, seed=0)
    assert lo < np.median(d) < hi and hi - lo < 1.5
    assert ps.bootstrap_ci(d, resamples=2000, seed=0) == (lo, hi)
    got = ps.signed_rank(np.zeros(60), d, resamples=2000, seed=0)
    assert tuple(got["ci"]) == (lo, hi)
    mean_ci = ps.bootstrap_ci(d, statistic="mean", resamples=2000)
    assert mean_ci[0] < d.mean() < mean_ci[1]
    # The seed is what makes it reproducible (medians of 60 values take few
    # distinct values, so the mean shows another seed's other resamples).
    assert ps.bootstrap_ci(d, statistic="mean", resamples=2000, seed=1) != mean_ci


def test_misses_penalized_count_against_the_model_dropped_do_not():
    rng = np.random.default_rng(4)
    ref = rng.uniform(1.0, 3.0, 30)
    model = ref - 0.1 - rng.uniform(0, 0.05, 30)  # better wherever it found the landmark
    model[:8] = np.nan  # ... but it missed 8 of them
    runs = {}
    for policy in ("penalize", "drop"):
        r, m, rm, mm = ps.apply_misses(ref, model, policy)
        assert rm.sum() == 0 and mm.sum() == 8
        runs[policy] = ps.signed_rank(r, m, alternative="less", **FEW)
    assert runs["drop"]["n"] == 22 and runs["penalize"]["n"] == 30
    assert runs["drop"]["p"] < 1e-4 < runs["penalize"]["p"]
    assert runs["penalize"]["median_difference"] > runs["drop"]["median_difference"]
    # Penalized: each miss outranks every found difference, with the model's sign.
    penalty = 2 * max(ref.max(), np.nanmax(model)) + 1
    alt = np.where(np.isnan(model), penalty, model)
    assert runs["penalize"]["p"] == pytest.approx(
        stats.wilcoxon(alt - ref, alternative="less").pvalue
    )
    capped = ps.apply_misses(ref, model, "cap", 0.0)  # a cap of 0 makes misses wins
    assert ps.signed_rank(*capped[:2], alternative="less", **FEW)["p"] < runs["drop"]["p"]
    with pytest.raises(ValueError, match="needs --error_cap"):
        ps.apply_misses(ref, model, "cap")


def test_pooled_landmarks_overstate_what_the_per_image_test_shows(tmp_path):
    # On each image the model is a little worse on 15 landmarks and better on 4,
    # with the image means alternating in sign: pooled as 228 independent errors
    # the model looks significantly worse, but over the 12 images (the units that
    # were sampled) nothing is shown. The old pooled test reported the former.
    rng = np.random.default_rng(0)
    n, k = 12, 19
    ref = rng.uniform(1, 3, (n, k))
    d = np.empty((n, k))
    for i in range(n):
        d[i, :15] = 0.1 + rng.uniform(0, 0.02, 15)
        d[i, 15:] = ((-1) ** i * 0.02 * k - d[i, :15].sum()) / 4 + rng.uniform(-0.01, 0.01, 4)
    model = ref + d
    a, b = _hand(tmp_path, "a", ref), _hand(tmp_path, "b", model)
    overall = compare_reports([a, b], **FEW)["tests"][0]["overall"]
    pooled = stats.wilcoxon((model - ref).ravel())
    assert pooled.pvalue < 0.05
    assert overall["n"] == n and overall["p"] > 0.05
    assert overall["p"] == pytest.approx(stats.wilcoxon(model.mean(1) - ref.mean(1)).pvalue)


# ---------------------------------------------------------------- reports


def test_compare_pairs_images_and_tests_per_image(tmp_path):
    a, pred_a = _report(tmp_path, "a", 2.0, seed=1)
    b, pred_b = _report(tmp_path, "b", 6.0, seed=2, order=list(range(N))[::-1])
    result = compare_reports([a, b], **FEW)
    assert result["n_images"] == N and result["unit"] == "mm" and result["reference"] == "a"
    gt = _dataset().landmarks()
    err_a = np.round(np.linalg.norm((pred_a - gt) * 0.1, axis=-1), 4)
    err_b = np.round(np.linalg.norm((pred_b - gt) * 0.1, axis=-1), 4)
    assert result["models"][0]["mre"] == pytest.approx(np.nanmean(err_a), abs=1e-4)
    assert result["models"][1]["mre"] == pytest.approx(np.nanmean(err_b), abs=1e-4)
    # Per image now, not pooled: n is the 30 images, not the 119 landmark pairs.
    overall = result["tests"][0]["overall"]
    ref = stats.wilcoxon(np.nanmean(err_b, axis=1) - np.nanmean(err_a, axis=1))
    assert overall["n"] == N and overall["p"] == pytest.approx(ref.pvalue)
    assert overall["p_corrected"] == overall["p"]  # a family of one test
    assert overall["marks"] == "***" and overall["both_missing"] == 1
    l0 = result["tests"][0]["per_landmark"]["L0"]
    assert l0["n"] == N - 1 and l0["p"] == pytest.approx(
        stats.wilcoxon(err_b[1:, 0] - err_a[1:, 0]).pvalue
    )
    raw = [result["tests"][0]["per_landmark"][f"L{k}"]["p"] for k in range(K)]
    holm = [result["tests"][0]["per_landmark"][f"L{k}"]["p_corrected"] for k in range(K)]
    np.testing.assert_allclose(holm, ps.holm(raw))
    row = result["per_landmark"][2]
    assert row["landmark"] == "L2" and row["b"] == pytest.approx(err_b[:, 2].mean(), abs=1e-4)
    text = format_comparison(result)
    assert "L3" in text and "***" in text and "e-" in text  # p in scientific notation
    assert "Measurements not compared: no per-image measurements in a, b" in text


def test_corrections_span_every_compared_model(tmp_path):
    a, _ = _report(tmp_path, "a", 2.0, seed=1)
    b, _ = _report(tmp_path, "b", 2.5, seed=2)
    c, _ = _report(tmp_path, "c", 2.2, seed=3)
    result = compare_reports([a, b, c], correction="bonferroni", **FEW)
    assert result["families"]["overall"]["tests"] == 2
    assert result["families"]["per_landmark"]["tests"] == 2 * K
    for t in result["tests"]:
        assert t["overall"]["p_corrected"] == pytest.approx(min(1, 2 * t["overall"]["p"]))
        for lm in t["per_landmark"].values():
            assert lm["p_corrected"] == pytest.approx(min(1, 2 * K * lm["p"]))


def test_misses_are_counted_and_policies_change_the_result(tmp_path):
    rng = np.random.default_rng(5)
    ref = rng.uniform(1, 3, (20, 2))
    model = ref - 0.2
    model[:6, 0] = np.nan  # the better model missed 6 landmarks the reference found
    a, b = _hand(tmp_path, "a", ref), _hand(tmp_path, "b", model)
    pen = compare_reports([a, b], alternative="less", **FEW)
    drop = compare_reports([a, b], alternative="less", misses="drop", **FEW)
    cap = compare_reports([a, b], alternative="less", misses="cap", error_cap=50.0, **FEW)
    for r in (pen, drop, cap):
        t = r["tests"][0]
        assert t["overall"]["missed_model"] == 6 and t["overall"]["affected"] == 6
        assert t["per_landmark"]["L0"]["affected"] == 6
        assert t["per_landmark"]["L1"]["affected"] == 0
    assert drop["models"][1]["missed"] == 6  # no "missed" in the report: nulls counted
    lm = {name: r["tests"][0]["per_landmark"]["L0"] for name, r in [("p", pen), ("d", drop)]}
    assert lm["d"]["n"] == 14 and lm["p"]["n"] == 20
    assert lm["d"]["p"] < 0.001 < lm["p"]["p"]
    assert cap["tests"][0]["per_landmark"]["L0"]["p"] > lm["d"]["p"]
    text = format_comparison(drop)
    assert "misses dropped" in text and "affected" in text


def test_measurements_compared_against_the_truth(tmp_path):
    n = 12
    truth = np.linspace(10, 40, n)
    truth[0] = 179.0
    true_class = ["x" if v < 25 else "y" for v in truth]
    ref_pred = truth + np.linspace(-0.5, 0.5, n)
    ref_pred[0] = -179.0  # 2 degrees from 179, across the wrap
    model_pred = truth + np.linspace(1.0, 3.0, n)
    model_class = ["y" if c == "x" else "x" for c in true_class]
    model_class[:5] = true_class[:5]
    model_class[5] = None  # no class: counts as wrong

    def block(pred, classes):
        return {
            "images": [f"i{i}" for i in range(n)],
            "units": {"A": "deg"},
            "predicted": {"A": [None if np.isnan(v) else float(v) for v in pred]},
            "true": {"A": truth.tolist()},
            "predicted_class": {"A": classes},
            "true_class": {"A": true_class},
        }

    errors = np.ones((n, 2))
    model_pred[3] = np.nan  # a missed angle
    a = _hand(tmp_path, "a", errors, measurements=block(ref_pred, true_class))
    b = _hand(tmp_path, "b", errors, measurements=block(model_pred, model_class))
    result = compare_reports([a, b], **FEW)
    meas = result["measurements"]
    assert [r["kind"] for r in meas["rows"]] == ["value", "class"]
    ea = np.abs((ref_pred - truth + 180) % 360 - 180)
    eb = np.abs(model_pred - truth)
    assert ea[0] == pytest.approx(2.0)
    assert meas["rows"][0]["values"] == pytest.approx([np.median(ea), np.nanmedian(eb)])
    value = result["tests"][0]["measurements"]["A (value)"]
    penalty = 2 * max(ea.max(), np.nanmax(eb)) + 1
    expected = stats.wilcoxon(np.where(np.isnan(eb), penalty, eb) - ea).pvalue
    assert value["p"] == pytest.approx(expected) and value["missed_model"] == 1
    cls = result["tests"][0]["measurements"]["A (class)"]
    assert meas["rows"][1]["values"] == pytest.approx([1.0, 5 / 12])
    assert cls["ref_only"] == 7 and cls["model_only"] == 0
    assert cls["p"] == pytest.approx(stats.binomtest(0, 7, 0.5).pvalue)
    assert cls["error_rate_difference"] == pytest.approx(7 / 12)
    assert result["families"]["measurements"]["tests"] == 2
    text = format_comparison(result)
    assert "McNemar exact" in text and "accuracy" in text


def test_evaluate_reports_per_image_measurements():
    lset = ISBI2015_LANDMARKS
    records = [
        Record(
            np.zeros((8, 8), np.float32),
            CASE_001.astype(np.float32),
            None,
            (0.1, 0.1),
            "test",
            meta={"name": f"c{i}"},
        )
        for i in range(2)
    ]
    ds = Dataset(lset, records, name="two")
    pred = np.stack([CASE_001, CASE_001 + 3.0]).astype(np.float32)
    pred[1, 0] = np.nan
    block = measurement_report(pred, ds)["per_image"]
    assert len(block["images"]) == 2 and block["units"]["SNA"] == "deg"
    assert block["true"]["SNA"][0] == pytest.approx(block["predicted"]["SNA"][0])
    assert block["true_class"]["SNA"][0] == block["predicted_class"]["SNA"][0] is not None
    assert block["predicted"]["SNA"][1] is None  # sella (landmark 0) was missed
    json.dumps(block, allow_nan=False)


def test_paper002_marks_follow_the_paper():
    def t(p, lower):
        return {"p": p, "model_lower": lower}

    # Reference better than all three (p < 0.05) -> bold; symbols at p < 0.05 / 3.
    got = ps.paper002_marks([t(0.01, False), t(0.03, False), t(0.001, False)])
    assert got["reference"] == {"bold": True, "symbols": "*^"}
    assert not any(m["bold"] for m in got["models"])
    got = ps.paper002_marks([t(0.02, True), t(0.2, False)])
    assert got["models"][0]["bold"] and not got["reference"]["bold"]
    assert got["reference"]["symbols"] == "*"  # 0.02 < 0.05 / 2
    assert [ps.paper002_symbol(i) for i in range(3)] == ["*", "+", "^"]


def test_paper002_marks_in_markdown_and_text(tmp_path):
    rng = np.random.default_rng(6)
    ref = rng.uniform(2, 4, (25, 2))
    a = _hand(tmp_path, "a", ref)
    b = _hand(tmp_path, "b", ref * 0.5)  # clearly better
    result = compare_reports([a, b], marks="paper002", **FEW)
    mre = f"{result['models'][1]['mre']:.3f}"
    md = format_comparison(result, "markdown")
    assert f"| **{mre}** |" in md
    assert f"{result['models'][0]['mre']:.3f}\\*" in md  # the symbol sits on the reference
    assert f"{mre}b" in format_comparison(result, "text")


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
    renamed = _hand(tmp_path, "renamed", np.ones((N, K)), landmarks=list("ABCD"))
    with pytest.raises(CompareError, match="renamed: other landmarks than a"):
        compare_reports([a, renamed])
    with pytest.raises(CompareError, match="unknown alternative 'sideways'"):
        compare_reports([a, a], alternative="sideways")
    with pytest.raises(CompareError, match="needs --error_cap"):
        compare_reports([a, a], misses="cap")


def test_cli_compare_flags_json_and_one_line_errors(tmp_path, capsys):
    a, _ = _report(tmp_path, "a", 2.0, seed=1)
    b, _ = _report(tmp_path, "b", 3.0, seed=2)
    out_json = tmp_path / "c.json"
    code, out, err = run_cli(
        capsys,
        "compare",
        str(a),
        str(b),
        "--alternative=greater",
        "--correction=bonferroni",
        "--misses=cap",
        "--error_cap=20",
        "--marks=paper002",
        "--format=markdown",
        "--resamples=300",
        f"--output={out_json}",
    )
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["settings"] == {
        "alternative": "greater",
        "correction": "bonferroni",
        "misses": "cap",
        "error_cap": 20.0,
        "marks": "paper002",
        "resamples": 300,
        "seed": 0,
        "confidence": 0.95,
    }
    overall = result["tests"][0]["overall"]
    assert {"n", "p", "p_corrected", "median_difference", "ci", "affected"} <= set(overall)
    assert "| model |" in out and "Wilcoxon" in out and "one-sided" in out
    for args, message in [
        ([str(a)], "compare needs at least two reports"),
        ([str(a), str(b), "--alternative=sideways"], "flag --alternative=sideways"),
        ([str(a), str(b), "--error_cap=3"], "--error_cap only applies with --misses=cap"),
        ([str(a), str(tmp_path / "missing.json")], "not a readable JSON report"),
    ]:
        code, _, err = run_cli(capsys, "compare", *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_same_file_names_are_told_apart_by_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, _ = _report(tmp_path / "x", "test1", 2.0, seed=1)
    b, _ = _report(tmp_path / "y", "test1", 6.0, seed=2)
    result = compare_reports([a, b], **FEW)
    assert [m["label"] for m in result["models"]] == ["x/test1", "y/test1"]
    assert result["reference"] == "x/test1" and result["tests"][0]["label"] == "y/test1"
    assert "against x/test1" in format_comparison(result).splitlines()[0]
