"""Cross-validation: fold assignment, leave-one-group-out, splits, the per-fold run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax import configs
from lmjax.configs.phantom import get_config
from lmjax.data.types import Record
from lmjax.train import folds, setup
from tests.test_cli import run_cli


def _records(names, meta=None):
    return [
        Record(np.zeros((4, 4), np.float32), np.zeros((1, 2)), None, meta={"name": n, **(m or {})})
        for n, m in zip(names, meta or [None] * len(names), strict=True)
    ]


def _config(**data):
    c = get_config("tiny")
    with c.unlocked():
        for k, v in data.items():
            setattr(c.data, k, v)
    return c


def test_k_fold_deals_every_record_once_and_evenly():
    recs = _records([f"r{i}" for i in range(11)])
    fold, names = folds.assign_folds(recs, _config(cv_folds=3))
    assert names == ["fold 0", "fold 1", "fold 2"]
    assert sorted(np.bincount(fold).tolist()) == [3, 4, 4]
    again, _ = folds.assign_folds(recs, _config(cv_folds=3))
    np.testing.assert_array_equal(fold, again)
    held = [folds.held_out(recs, _config(cv_folds=3, cv_fold=i))[1] for i in range(3)]
    assert sorted(r.name for h in held for r in h) == sorted(r.name for r in recs)


def test_leave_one_group_out_by_pattern_and_by_key():
    names = ["specB_01", "specA_01", "specB_02", "specC_01", "specA_02"]
    recs = _records(names)
    fold, groups = folds.assign_folds(recs, _config(cv_group_pattern=r"^(spec\w)_"))
    assert groups == ["specA", "specB", "specC"]
    assert fold.tolist() == [1, 0, 1, 2, 0]
    keep, out = folds.held_out(recs, _config(cv_group_pattern=r"^(spec\w)_", cv_fold=1))
    assert [r.name for r in out] == ["specB_01", "specB_02"] and len(keep) == 3
    recs = _records(names, [{"specimen": n[4]} for n in names])
    _, groups = folds.assign_folds(recs, _config(cv_group_key="specimen"))
    assert groups == ["A", "B", "C"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cv_folds": 2, "cv_group_pattern": "x"}, "either data.cv_folds"),
        ({"cv_folds": 1}, "from 2 to the 4"),
        ({"cv_folds": 9}, "from 2 to the 4"),
        ({"cv_group_pattern": "^r"}, "at least 2 groups"),
        ({"cv_group_pattern": "^zz"}, "does not match"),
        ({"cv_group_key": "specimen"}, "no 'specimen'"),
        ({"cv_folds": 2, "cv_fold": 2}, r"cv_fold must be in 0\.\.1"),
    ],
)
def test_bad_settings_are_clear_errors(data, message):
    recs = _records(["r0", "r1", "r2", "r3"])
    with pytest.raises(ValueError, match=message):
        folds.held_out(recs, _config(**data))


def test_load_splits_holds_out_the_fold_as_test():
    config = _config(cv_folds=4, cv_fold=1)
    train, val, test = setup.load_splits(config)
    names = [{r.name for r in d.records} for d in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # The pool is the training split; its own validation split is not used.
    pool = {r.name for r in setup.load_splits(_config())[0].records}
    assert names[0] | names[1] | names[2] == pool
    assert len(names[2]) == round(len(pool) / 4)


def test_summary_matches_numpy():
    reports = [
        {"mre": 1.0, "unit": "mm", "n_images": 2, "sdr": {"2": 80.0},
         "per_image": {"errors": [[0.5, 1.5], [1.0, None]]}},
        {"mre": 3.0, "unit": "mm", "n_images": 1, "sdr": {"2": 40.0},
         "per_image": {"errors": [[3.0, 3.0]]}},
    ]  # fmt: skip
    s = folds.summarize_folds(reports, ["a", "b"])
    assert s["mre_mean"] == 2.0 and s["mre_sd"] == 1.0 and s["sdr_mean"] == {"2": 60.0}
    assert s["pooled_mre"] == pytest.approx(np.mean([0.5, 1.5, 1.0, 3.0, 3.0]))
    assert s["n_errors"] == 5 and [f["fold"] for f in s["folds"]] == ["a", "b"]


def test_pooled_report_keeps_every_error_and_miss():
    reports = [
        {"unit": "mm", "sdr": {"2": 0.0}, "missed": 1,
         "per_image": {"images": ["a"], "landmarks": ["p", "q"], "errors": [[1.0, None]]}},
        {"unit": "mm", "sdr": {"2": 0.0}, "missed": 0,
         "per_image": {"images": ["b"], "landmarks": ["p", "q"], "errors": [[3.0, 2.5]]}},
    ]  # fmt: skip
    r = folds.pooled_report(reports)
    assert r["per_image"]["images"] == ["a", "b"] and r["n_images"] == 2
    assert r["mre"] == pytest.approx(6.5 / 3) and r["n"] == 3 and r["missed"] == 1
    assert r["sdr"] == {"2": pytest.approx(100 / 3)}


def test_refit_config_turns_cross_validation_off():
    final = folds.refit_config(_config(cv_folds=5, cv_refit=True))
    assert not folds.cv_enabled(final) and not final.data.cv_refit
    assert final.train.steps == _config().train.steps
    with pytest.raises(ValueError, match="cv_refit needs cross-validation"):
        folds.refit_config(_config(cv_refit=True))


def test_train_runs_every_fold_and_writes_the_summary(tmp_path, capsys):
    # In this process, with the tiny U-Net shrunk to 32 x 32 and two levels: the
    # three runs (two folds, the refit) are the point, not the model or a new process.
    config = configs.DEFAULT
    status, stdout, err = run_cli(
        capsys,
        "train",
        f"--config={config}:tiny",
        f"--workdir={tmp_path}",
        "--config.data.cv_folds=2",
        "--config.data.cv_refit=true",
        "--config.data.input_size=(32, 32)",
        "--config.model.num_levels=2",
        "--config.model.features=4",
        "--config.train.steps=4",
        "--config.train.eval_every=4",
        "--config.data.augment=",
        "--config.train.tensorboard=false",
    )
    assert status == 0, err[-2000:]
    summary = json.loads((tmp_path / "cv_summary.json").read_text())
    assert summary["n_folds"] == 2 and summary["unit"] == "mm"
    reports = [json.loads((tmp_path / f"fold_{i}" / "eval.json").read_text()) for i in (0, 1)]
    assert summary["mre_mean"] == pytest.approx(np.mean([r["mre"] for r in reports]))
    held = [set(r["per_image"]["images"]) for r in reports]
    assert held[0] and held[1] and not held[0] & held[1]
    assert "cross-validation over 2 folds" in stdout
    # cv_refit: one more run on every training record, tested once on the test split.
    final = json.loads((tmp_path / "final" / "eval.json").read_text())
    test_names = {r.name for r in setup.load_splits(_config())[2].records}
    assert set(final["per_image"]["images"]) == test_names
    assert not test_names & (held[0] | held[1])
    assert summary["final"]["mre"] == final["mre"] and "final model on" in stdout
