"""Several datasets as one (the MedSapiens generalist), the specialist's start from
it, and spacing from a reference distance (wrist width)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax import configs
from lmjax.data.mixture import check_sources, mixture_dataset, mixture_only, source_landmarks
from lmjax.data.reference_spacing import with_reference_spacing
from lmjax.data.types import Dataset, LandmarkSet, Record
from lmjax.train.setup import load_splits

MIXTURE = "experiments/configs/medsapiens_mixture.py"


def test_isbi_and_the_phantom_as_one_dataset(shared_data):
    config = configs.load(f"{MIXTURE}:generalist_cpu")
    train, val, test = load_splits(config)
    lset = train.landmark_set
    assert lset.num_landmarks == 19 + 16 and lset.names[0] == "isbi/sella"
    assert lset.names[19] == "phantom/sacral_promontory"
    assert all(a >= 19 and b >= 19 for a, b in lset.flip_pairs)  # the phantom's, shifted
    assert source_landmarks(lset) == {"isbi": list(range(19)), "phantom": list(range(19, 35))}
    by = {
        s: [r for r in test.records if r.meta["mixture_source"] == s] for s in ("isbi", "phantom")
    }
    assert len(by["isbi"]) == 150 and len(by["phantom"]) > 0  # test1 became "test"
    r = by["isbi"][0]
    assert r.visible[:19].any() and not r.visible[19:].any() and np.isnan(r.landmarks[19:]).all()
    # ISBI has no validation split: a tenth of its training images was carved out.
    n_val = sum(r.meta["mixture_source"] == "isbi" for r in val.records)
    assert n_val == 15 and not {r.name for r in val.records} & {r.name for r in train.records}
    spec = load_splits(configs.load(f"{MIXTURE}:specialist_phantom_cpu"))[0]
    assert spec.landmark_set == lset and {r.meta["mixture_source"] for r in spec.records} == {
        "phantom"
    }


@pytest.mark.parametrize(
    "sources, message",
    [
        ([{"name": "a"}], "at least two"),
        ([{"name": "a"}, {"name": "a"}], "unique name"),
        ([{"name": "a/b"}, {"name": "c"}], "unique name"),
        ([{"name": "a"}, {"name": "b", "dataa_dir": "x"}], "unknown keys \\['dataa_dir'\\]"),
    ],
)
def test_bad_mixtures_are_named(sources, message):
    with pytest.raises(ValueError, match=message):
        check_sources(sources)


def test_only_names_a_source():
    lset = LandmarkSet("s", ("a",))
    one = Dataset(lset, [Record(np.zeros((4, 4)), np.zeros((1, 2)), np.ones(1, bool))])
    mixed = mixture_dataset([{"name": "x"}, {"name": "y"}], lambda s: one)
    assert mixed.landmark_set.names == ("x/a", "y/a")
    with pytest.raises(ValueError, match="not one of the mixture's \\['x', 'y'\\]"):
        mixture_only(mixed, "z")


def test_reference_distance_sets_the_spacing():
    lset = LandmarkSet("hand", ("wrist_r", "wrist_u", "tip"))
    pts = np.array([[10, 10], [110, 10], [50, 200]], np.float32)
    missing = pts.copy()
    missing[1] = np.nan
    recs = [Record(np.zeros((4, 4)), p, np.isfinite(p).all(1), meta={"name": n})
            for p, n in ((pts, "a"), (missing, "b"))]  # fmt: skip
    ds = with_reference_spacing(Dataset(lset, recs), "wrist_r", "wrist_u", 50.0)
    assert ds.records[0].spacing == (0.5, 0.5)  # 100 px of wrist = 50 mm
    assert "50 mm" in ds.records[0].spacing_source
    assert ds.records[1].spacing is None and any("b: no wrist_r-wrist_u" in w for w in ds.warnings)
    with pytest.raises(ValueError, match="needs two of"):
        with_reference_spacing(ds, "wrist_r", "elbow", 50.0)


def test_a_specialist_starts_from_its_generalist(tmp_path, capsys):
    import jax

    from lmjax.train.restore import restore_trained
    from tests.test_cli import run_cli

    # Two small phantoms (the default one has 200 images to render and evaluate).
    two = "--config.data.mixture=" + json.dumps(
        [{"name": "first", "phantom_size": 24}, {"name": "second", "phantom_size": 16}]
    )
    common = [two, "--config.train.steps=2", "--config.train.eval_every=2",
              "--config.train.tensorboard=false"]  # fmt: skip
    gen, spec = tmp_path / "gen", tmp_path / "spec"
    code, out, err = run_cli(capsys, "train", f"--config={MIXTURE}:generalist_cpu",
                             f"--workdir={gen}", *common)  # fmt: skip
    assert code == 0, err
    report = json.loads((gen / "eval.json").read_text())
    assert set(report["per_dataset"]) == {"first", "second"} and "second: " in out
    code, out, err = run_cli(
        capsys, "train", f"--config={MIXTURE}:generalist_cpu", f"--workdir={spec}", *common,
        "--config.data.mixture_only=second", f"--config.train.init_from={gen}",
        "--config.optim.learning_rate=0", "--config.train.steps=1",
    )  # fmt: skip
    assert code == 0, err
    assert f"initialised from the best checkpoint of {gen}" in out
    assert set(json.loads((spec / "eval.json").read_text())["per_dataset"]) == {"second"}
    g, s = restore_trained(gen)[2].params, restore_trained(spec)[2].params
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(s), strict=True):
        np.testing.assert_array_equal(a, b)  # learning rate 0: exactly the generalist's
    # Another landmark set cannot start from it.
    other = ["--config=lmjax/configs/phantom.py:tiny", f"--workdir={tmp_path / 'other'}"]
    code, _, err = run_cli(capsys, "train", *other, f"--config.train.init_from={gen}")
    assert code == 2 and "a specialist keeps the mixture's set" in err
