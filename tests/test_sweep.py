"""`lmjax sweep`: grid parsing, mm values, the table and its tests (fake training),
and one real sweep of two radii through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax import sweep
from lmjax.configs.phantom import get_config
from lmjax.evaluate import error_report
from lmjax.train.setup import load_splits


def test_parse_grid_and_bad_syntax():
    assert sweep.parse_grid(["task.radius=1, 7,15", "config.optim.learning_rate=1e-3"]) == [
        ("task.radius", ["1", "7", "15"]),
        ("optim.learning_rate", ["1e-3"]),
    ]
    for bad, message in [
        ([], "at least one"),
        (["task.radius"], "is not FIELD=V1,V2"),
        (["task.radius="], "is not FIELD=V1,V2"),
        (["task.radius=1", "task.radius=2"], "given twice"),
    ]:
        with pytest.raises(sweep.SweepError, match=message):
            sweep.parse_grid(bad)


def test_mm_values_become_input_pixels_through_the_spacing():
    config = get_config("tiny")
    scale = sweep.mm_per_input_pixel(config)
    train = load_splits(config)[0]
    r = train.records[0]
    h = r.image.shape[0] if isinstance(r.image, np.ndarray) else None
    if h is not None:  # resize fit: rows of the input span the image's rows
        assert scale == pytest.approx(r.spacing[0] * h / config.data.input_size[0], rel=0.05)
    out = sweep.settings(config, sweep.parse_grid(["task.radius=2mm,3"]))
    assert out[0]["overrides"] == [f"task.radius={2.0 / scale:.6g}"]
    assert out[0]["values"]["task.radius"] == {"mm": 2.0, "px": round(2.0 / scale, 3)}
    assert out[1]["values"]["task.radius"] == {"px": 3.0, "mm": round(3.0 * scale, 3)}
    with pytest.raises(sweep.SweepError, match="not in pixels"):
        sweep.settings(config, sweep.parse_grid(["optim.learning_rate=2mm"]))


def test_run_sweep_tables_every_setting_and_tests_against_the_best(tmp_path):
    config = get_config("tiny")
    test = load_splits(config)[2]
    truth = test.landmarks()
    noise = {"3": 0.5, "5": 3.0}  # radius -> error of the fake model, in pixels
    seen = []

    def fake(run_config, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        seen.append((run_config.task.radius, run_dir.name))
        rng = np.random.default_rng(0)
        err = noise[f"{run_config.task.radius:g}"]
        return error_report(truth + rng.normal(0, err, truth.shape), test)

    result = sweep.run_sweep(config, tmp_path, sweep.parse_grid(["task.radius=3,5"]), fake)
    assert seen == [(3.0, "radius=3"), (5.0, "radius=5")]
    rows = {r["setting"]: r for r in result["rows"]}
    assert rows["radius=3"]["median"] < rows["radius=5"]["median"]
    assert rows["radius=3"]["radius (px)"] == 3.0
    assert result["tests"]["reference"] == "radius=3"
    worse = result["tests"]["overall"]["radius=5"]
    assert worse["p"] < 0.05 and worse["median_difference"] > 0
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["setting"] for r in saved["rows"]] == ["radius=3", "radius=5"]
    assert "radius=5" in sweep.format_sweep(result)


def test_every_extractor_of_a_setting_gets_a_row(tmp_path):
    from lmjax.extractor_table import comparison_report

    config = get_config("tiny")
    test = load_splits(config)[2]
    truth = test.landmarks()

    def fake(run_config, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        noise = 0.5 if run_config.task.radius == 3 else 3.0
        reps = {
            name: error_report(truth + np.random.default_rng(i).normal(0, noise, truth.shape), test)
            for i, name in enumerate(("midpoint", "centroid"))
        }
        return comparison_report(reps, "midpoint")

    result = sweep.run_sweep(config, tmp_path, sweep.parse_grid(["task.radius=3,5"]), fake)
    assert [(r["setting"], r["extractor"]) for r in result["rows"]] == [
        ("radius=3", "midpoint"), ("radius=3", "centroid"),
        ("radius=5", "midpoint"), ("radius=5", "centroid"),
    ]  # fmt: skip
    assert result["tests"]["reference"] == "radius=3"
    table = sweep.format_sweep(result)
    assert table.count("e-") == 1  # one test: the other setting's configured reading


def test_an_interrupted_setting_stops_the_sweep(tmp_path):
    config = get_config("tiny")
    out = sweep.run_sweep(
        config, tmp_path, [("task.radius", ["3", "5"])], lambda c, d: {"stopped_by": "SIGTERM"}
    )
    assert out == {"stopped_by": "SIGTERM", "setting": "radius=3"}
    assert not (tmp_path / "sweep.json").exists()


def test_sweep_command_trains_each_setting_once(tmp_path, capsys):
    from tests.test_cli import run_cli

    args = [
        "sweep",
        "--config=lmjax/configs/phantom.py:tiny",
        f"--workdir={tmp_path}",
        "--values=task.sigma=2,1.5mm",
        "--config.train.steps=3",
        "--config.train.eval_every=3",
        "--config.train.tensorboard=false",
        "--sdr_mm=3,6",
    ]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["setting"] for r in result["rows"]] == ["sigma=2", "sigma=1.5mm"]
    assert result["rows"][1]["sigma (mm)"] == 1.5 and "SDR@6" in result["rows"][0]
    for name in ("sigma=2", "sigma=1.5mm"):
        assert json.loads((tmp_path / name / "eval.json").read_text())["n_images"] > 0
    assert "sigma=1.5mm" in out and result["tests"]["reference"] in out
    # A second call resumes: every run is complete, nothing trains again.
    logs = (tmp_path / "sigma=2" / "metrics.jsonl").read_text()
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert (tmp_path / "sigma=2" / "metrics.jsonl").read_text() == logs


def test_sweep_command_refuses_bad_values(tmp_path, capsys):
    from tests.test_cli import run_cli

    code, _, err = run_cli(capsys, "sweep", f"--workdir={tmp_path}", "--values=task.radius")
    assert code == 2 and "is not FIELD=V1,V2" in err and err.count("\n") == 1
    code, _, err = run_cli(
        capsys, "sweep", f"--workdir={tmp_path}", "--values=optim.learning_rate=1mm"
    )
    assert code == 2 and "not in pixels" in err
