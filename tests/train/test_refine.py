"""The refinement stage: it must reduce the error of a deliberately coarse global model,
and predict/evaluate must use it."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lmjax.configs.phantom import get_config
from lmjax.train import loop, refine, refine_stage
from lmjax.train.evaluation import evaluate_workdir
from lmjax.train.final_model import load_final
from lmjax.train.restore import read_config
from lmjax.train.setup import load_landmark_set, load_splits

# Phantom pixels are ~1.6 mm; patches of 32 samples at 2 mm see +-32 mm.
REFINE = dict(
    spacing_mm=2.0, patch_size=32, features=8, num_levels=3, sigma=1.5, steps=150,
    eval_every=150, batch_size=4, learning_rate=3e-3, jitter_mm=8.0,
)  # fmt: skip


def _config():
    c = get_config("tiny")
    c.train.steps = 4  # the global model hardly matters: its estimates are replaced below
    c.train.eval_every = 4
    c.refine.update(REFINE)
    return c


@pytest.fixture(scope="module")
def refined(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    path = tmp_path_factory.mktemp("refine")
    loop.train(_config(), path, log=lambda *_: None)
    summary = refine.train_refine(path, log=lambda *_: None)
    return path, summary


def _mm_error(pred, dataset) -> float:
    gt, spacing = dataset.landmarks(), dataset.spacings()[:, None, ::-1]  # (col, row) mm
    return float(np.nanmean(np.linalg.norm((pred - gt) * spacing, axis=-1)))


def test_refinement_corrects_a_deliberately_coarse_estimate(refined):
    path, summary = refined
    config = read_config(path)
    _, val, _ = load_splits(config)
    stage = refine_stage.load(path, config, load_landmark_set(path, config))
    gt, spacing = val.landmarks(), val.spacings()[:, None, ::-1]
    # A coarse global model: every estimate off by ~10 mm in a random direction.
    coarse = gt + np.random.default_rng(0).normal(0, 8.0, gt.shape) / spacing
    refined_coords, conf = stage(val, coarse)
    assert _mm_error(refined_coords, val) < 0.4 * _mm_error(coarse, val)
    assert np.all((conf >= 0) & (conf <= 1))
    # A missing estimate stays missing.
    coarse[0, 1] = np.nan
    again, conf = stage(val, coarse)
    assert np.isnan(again[0, 1]).all() and conf[0, 1] == 0
    # A second pass re-centres on the first answer: it must not undo it.
    twice = refine_stage.RefineStage(
        {**stage.spec, "passes": 2}, stage.graphdef, stage.params, stage.rest
    )
    coarse[0, 1] = gt[0, 1] + 3.0
    two, _ = twice(val, coarse)
    assert _mm_error(two, val) < 0.4 * _mm_error(coarse, val)
    saved = json.loads((path / "refine" / "refine.json").read_text())
    assert saved["val_mre_refined"] == summary["val_mre_refined"]
    assert saved["jitter_mm"] == [8.0] * val.landmark_set.num_landmarks


def test_final_model_runs_global_then_refinement(refined):
    path, summary = refined
    final = load_final(path)
    assert final.stages[-1] == "refine"
    # The phantom model's soft-argmax runs on the device: global + refine in one program.
    assert "fused" in final.predict.__qualname__
    _, val, _ = load_splits(final.config)
    coords, _ = final.predict(val)
    plain, _ = load_final(path, refine=False).predict(val)
    config = read_config(path)
    stage = refine_stage.load(path, config, load_landmark_set(path, config))
    np.testing.assert_allclose(coords, stage(val, plain)[0], atol=1e-4)
    # The checkpoint kept is the best validation one: the same split gives its number.
    np.testing.assert_allclose(_mm_error(coords, val), summary["val_mre_refined"], rtol=1e-3)


def test_jitter_follows_the_global_errors_with_a_floor():
    spec = {"jitter_mm": -1.0, "jitter_scale": 2.0, "jitter_min_mm": 0.5}

    class Data:
        class landmark_set:  # noqa: N801
            num_landmarks = 2

        @staticmethod
        def landmarks():
            return np.zeros((4, 2, 2), np.float32)

        @staticmethod
        def spacings():
            return np.ones((4, 2), np.float32)

    pred = np.zeros((4, 2, 2), np.float32)
    pred[:, 0, 0] = 3.0  # landmark 0 is 3 mm off on every image; landmark 1 exact
    sigma = refine.jitter_mm(spec, pred, Data)
    np.testing.assert_allclose(sigma, [2.0 * 3.0 / np.sqrt(2), 0.5], rtol=1e-6)
    fixed = refine.jitter_mm({**spec, "jitter_mm": 1.25}, pred, Data)
    np.testing.assert_allclose(fixed, [1.25, 1.25])


@pytest.mark.parametrize(
    "field, value, message",
    [("patch_size", 30, "divisible"), ("passes", 0, "passes"), ("spacing_mm", 0.0, "positive")],
)
def test_bad_refine_settings_are_refused(field, value, message):
    spec = dict(get_config("tiny").refine)
    spec[field] = value
    with pytest.raises(ValueError, match=message):
        refine_stage.spec_of(spec)


def test_refine_command_and_evaluate_with_and_without_the_stage(refined, tmp_path, capsys):
    from tests.test_cli import run_cli

    path, _ = refined
    code, _, err = run_cli(capsys, "refine", f"--workdir={path}", "--config.train.steps=3")
    assert code == 2 and "only --config.refine.FIELD" in err
    code, _, err = run_cli(capsys, "refine", f"--workdir={tmp_path}")
    assert code == 2 and "no checkpoint" in err
    code, out, _ = run_cli(capsys, "evaluate", f"--workdir={path}", "--split=val")
    assert code == 0 and "stages:" in out and "refine" in out
    code, out, _ = run_cli(capsys, "evaluate", f"--workdir={path}", "--split=val", "--norefine")
    assert code == 0 and "stages:" not in out
    code, _, err = run_cli(capsys, "evaluate", f"--workdir={path}", "--tta_scales=0,1.1")
    assert code == 2 and "--tta_scales" in err
    scaled = evaluate_workdir(str(path), split="val", tta_scales=(0.9, 1.1), log=lambda *_: None)
    assert "stages" in scaled and np.isfinite(scaled["mre"])
    report = evaluate_workdir(str(path), split="val", log=lambda *_: None)
    plain = evaluate_workdir(str(path), split="val", refine=False, log=lambda *_: None)
    assert report["stages"]["global"]["mre"] == pytest.approx(plain["mre"])
    assert report["stages"]["refine"]["mre"] == pytest.approx(report["mre"])


def test_train_command_runs_global_refinement_and_calibration(tmp_path, capsys):
    from tests.test_cli import run_cli

    # The module's refinement settings (fewer steps): the programs compiled for the
    # fixture's run are read from the compilation cache, not compiled again.
    settings = REFINE | dict(enabled="true", steps=3, eval_every=3)
    refine_args = [f"--config.refine.{k}={v}" for k, v in settings.items()]
    code, out, err = run_cli(
        capsys,
        "train",
        f"--config={pathlib.Path(__file__).parents[2] / 'lmjax/configs/phantom.py'}:tiny",
        f"--workdir={tmp_path}",
        "--config.train.steps=2",
        "--config.train.eval_every=2",
        "--config.data.calib_fraction=0.3",
        *refine_args,
    )
    assert code == 0, err
    assert "refinement: validation MRE" in out
    assert (tmp_path / "refine" / "refine.json").is_file()
    conformal = json.loads((tmp_path / "conformal.json").read_text())
    assert "refine" in conformal["stages"]  # radii of the refined landmarks
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["stages"]) == {"global", "refine"} and "conformal" in report
    plain = evaluate_workdir(str(tmp_path), refine=False, log=lambda *_: None)
    assert "conformal" not in plain  # the radii belong to the refined landmarks
