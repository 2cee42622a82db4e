"""The HTML report: self-contained, consistent with the evaluation it shows, and
rendered by a real browser (headless Chromium) with one gallery card per image."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from lmjax import cli
from lmjax.report import browser, gallery, page, plots
from tests.test_predict import workdir  # noqa: F401  (the tiny trained run)


def _cli(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit:
        cli.run(["lmjax", *args])
    out = capsys.readouterr()
    assert exit.value.code == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def made(workdir, tmp_path_factory):  # noqa: F811
    """`lmjax report` of the tiny run: (html path, its evaluation JSON)."""
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMJAX_PROGRESS", "off")
        with pytest.raises(SystemExit) as exit:
            cli.run(["lmjax", "report", f"--workdir={workdir}",
                     f"--output={out / 'r.html'}", f"--json={out / 'r.json'}"])  # fmt: skip
    assert exit.value.code == 0
    return out / "r.html", json.loads((out / "r.json").read_text())


def test_report_is_self_contained_and_shows_the_evaluation(made):
    path, report = made
    text = path.read_text()
    # Nothing is fetched: every image is embedded, no external script or style.
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert not re.search(r"<link|<script [^>]*src|https?://", text)
    n = report["n_images"]
    assert text.count('<figure class="card"') == n == len(report["per_image"]["predicted"])
    assert report["provenance"]["weights_sha256"] in text
    assert f"{report['mre']:.3f}" in text and "SDR 2 mm (%)" in text
    # Worst first: the first card is the image of highest mean error.
    errors = plots.error_matrix(report)
    worst = report["per_image"]["images"][int(np.nanargmax(np.nanmean(errors, 1)))]
    first = re.search(r'<figure class="card"[^>]*><img[^>]*alt="([^"]*)"', text).group(1)
    assert first == worst


def test_sdr_curve_passes_through_the_reported_sdrs(made):
    _, report = made
    errors = plots.error_matrix(report)
    radii = [float(t) for t in report["sdr"]]
    np.testing.assert_allclose(plots.sdr_curve(errors, radii), list(report["sdr"].values()))
    curve = plots.sdr_curve(np.array([[0.5, 1.0, np.nan], [3.0, 12.0, 2.0]]), [0.0, 1.0, 2.9, 20])
    np.testing.assert_allclose(curve, [0.0, 40.0, 60.0, 100.0])


def test_evaluate_writes_the_same_page(made, workdir, tmp_path, capsys):  # noqa: F811
    _cli(capsys, "evaluate", f"--workdir={workdir}", f"--report={tmp_path / 'e.html'}")
    text = (tmp_path / "e.html").read_text()
    assert text.count('<figure class="card"') == made[1]["n_images"]


def test_training_logs_validation_overlays_to_tensorboard(workdir):  # noqa: F811
    from lmjax.train.logs import TENSORBOARD_DIR, TENSORBOARD_OVERLAYS
    from tests.train.test_logs import read_images

    images = read_images(workdir / TENSORBOARD_DIR)
    assert sorted(images) == [f"val/overlay/{i}" for i in range(TENSORBOARD_OVERLAYS)]
    step, pic = images["val/overlay/0"][0]
    assert step == 4 and pic.ndim == 3 and pic.std() > 10


def test_reports_without_per_image_errors_are_refused(capsys):
    with pytest.raises(ValueError, match="model 'sam_decoder'.*no per-image landmark errors"):
        page.render({"model": "sam_decoder", "unit": "mm"}, dataset=None)
    with pytest.raises(SystemExit) as exit:
        cli.run(["lmjax", "report", "--output=x.html"])
    assert exit.value.code == 2 and "--workdir is required" in capsys.readouterr().err


def test_gallery_orders_missed_then_mean_error():
    errors = np.array([[1.0, 2.0], [5.0, np.nan], [np.nan, np.nan], [0.5, 0.5]])
    assert gallery.image_order(errors, np.array([0, 0, 0, 1])).tolist() == [3, 1, 0, 2]


def test_classes_get_confusion_matrices_and_a_per_image_table():
    measurements = {
        "measurements": {"ANB": {"unit": "deg", "n": 3, "missed": 0, "mae": 1.0,
                                 "median": 1.0, "iqr": 0.5}},
        "classifications": {"ANB": {"labels": ["C1", "C2"], "confusion": [[2, 1], [0, 0]],
                                    "n": 3, "missed": 0, "accuracy": 2 / 3, "kappa": 0.0,
                                    "macro": {"f1": 0.4}}},
        "per_image": {"images": ["a", "b", "c"], "units": {"ANB": "deg"},
                      "predicted": {"ANB": [1.0, 2.0, None]}, "true": {"ANB": [1.5, 2.5, 3.0]},
                      "predicted_class": {"ANB": ["C1", "C2", None]},
                      "true_class": {"ANB": ["C1", "C1", "C2"]}},
    }  # fmt: skip
    text = page._measurements({"measurements": measurements})
    uri = re.search(r'alt="confusion ANB" class="confusion" src="data:image/png;base64,', text)
    assert uri and "0.667" in text and "<td>2.00 C2</td><td>2.50 C1</td>" in text
    assert "<td>- </td>" not in text and "<td>-</td><td>3.00 C2</td>" in text


def _chromium():
    path = browser.find_chromium()
    if path is None:
        pytest.skip(reason="no Chromium on this machine (Debian: apt-get install chromium)")
    return path


def test_browser_renders_the_report_without_console_errors(made, tmp_path):
    _chromium()
    path, report = made
    shown = browser.load(path)
    assert shown.console == []
    # The page's script ran to its end and counted the gallery's cards.
    assert re.search(r'<body[^>]*data-cards="(\d+)"', shown.dom).group(1) == str(report["n_images"])
    assert len(re.findall(r'<figure class="card"', shown.dom)) == report["n_images"]
    shot = tmp_path / "shot.png"
    assert browser.screenshot(path, shot, size=(1000, 900)).console == []
    with Image.open(shot) as im:
        assert im.size == (1000, 900)
        grey = np.asarray(im.convert("L"), np.float64)
    assert grey.std() > 10  # text, tables and plots, not a blank page
    # The gallery alone, as the screenshot script shows it: its thumbnails are painted.
    browser.screenshot(path, shot, size=(1000, 700), section="gallery-section")
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"), np.int32)
    assert (np.ptp(rgb, axis=-1) > 60).sum() > 200  # coloured landmark markers


def test_browser_reports_console_errors(tmp_path):
    _chromium()
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); nothing();</script></body></html>")
    messages = browser.load(bad).console
    assert any("boom" in m for m in messages)
    assert any("Uncaught ReferenceError: nothing is not defined" in m for m in messages)
