"""A new loss, loss input and dataset format are one function plus one registration:
each trains end to end without any edit to the step, the loop or the loaders."""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lmjax.configs import phantom
from lmjax.data.formats import ReadOptions, register_format, unregister_format
from lmjax.data.types import Dataset, LandmarkSet, Record
from lmjax.ops.losses import register_loss, unregister_loss
from lmjax.train import loop

SEEN: dict[str, tuple] = {}  # shapes each new loss was traced with


# ---- a new map loss and a new coordinate loss, as a user would write them


def abs_maps(pred, target, *, visible=None):
    SEEN["abs_maps"] = (pred.shape, target.shape)
    err = jnp.abs(pred.astype(jnp.float32) - jnp.nan_to_num(target)).mean(axis=(1, 2))
    vis = jnp.ones(err.shape, bool) if visible is None else visible
    return jnp.where(vis, err, 0.0).sum(-1) / jnp.maximum(vis.sum(-1), 1)


def huber_coords(pred, target, *, visible=None, delta=2.0):
    SEEN["huber_coords"] = (pred.shape, target.shape)
    d = jnp.where(visible[..., None], pred - jnp.nan_to_num(target), 0.0)
    a = jnp.abs(d)
    per = jnp.where(a < delta, 0.5 * a**2, delta * (a - 0.5 * delta))
    return per.sum((-1, -2)) / jnp.maximum(visible.sum(-1), 1)


# ---- a new dataset format: `points.txt` with "file x y x y ..." lines


def read_points(path: pathlib.Path, options: ReadOptions) -> Dataset:
    names = ("tip", "base", "side")
    records = []
    for line in (path / "points.txt").read_text().split("\n"):
        if line:
            file, *xy = line.split()
            xy = np.asarray(xy, np.float32).reshape(-1, 2)
            records.append(Record(image=str(path / file), landmarks=xy, visible=None))
    return Dataset(LandmarkSet(name="points", names=names), records, name=path.name)


@pytest.fixture
def registered():
    register_loss("abs_maps", kind="map")(abs_maps)
    register_loss("huber_coords", kind="coordinate")(huber_coords)
    register_format(
        "points",
        read=read_points,
        detect=lambda p: p.is_dir() and (p / "points.txt").is_file(),
        description="points.txt beside its images",
        layout="`points.txt`: `file x y x y x y` per image",
    )
    yield
    unregister_loss("abs_maps")
    unregister_loss("huber_coords")
    unregister_format("points")


def write_points_folder(root: pathlib.Path, n: int = 8) -> pathlib.Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        image = rng.integers(0, 60, (64, 64)).astype(np.uint8)
        xy = rng.uniform(10, 54, (3, 2))
        for x, y in xy.round().astype(int):
            image[y - 2 : y + 3, x - 2 : x + 3] = 255
        Image.fromarray(image).save(root / f"img{i}.png")
        lines.append(f"img{i}.png " + " ".join(f"{v:.1f}" for v in xy.ravel()))
    (root / "points.txt").write_text("\n".join(lines) + "\n")
    return root


def test_new_loss_kinds_and_format_train_without_other_edits(registered, tmp_path):
    (tmp_path / "points_data").mkdir()
    data = write_points_folder(tmp_path / "points_data")
    config = phantom.get_config("tiny")
    config.data.data_dir = str(data)  # the format is detected from the folder
    config.data.augment = ""
    config.data.val_fraction = 0.25
    config.task.losses = {"abs_maps": 1.0, "huber_coords": 0.01}
    config.task.deep_supervision = False
    config.model.deep_supervision = False
    config.train.steps, config.train.eval_every, config.train.log_every = 2, 2, 1
    config.train.tensorboard = False
    workdir = tmp_path / "run"
    report = loop.train(config, workdir, log=lambda *_: None)

    assert np.isfinite(report["mre"])
    names = json.loads((workdir / "landmarks.json").read_text())["names"]
    assert names == ["tip", "base", "side"]
    assert json.loads((workdir / "config.json").read_text())["data"]["data_dir"] == str(data)
    # The map loss got maps and rendered targets, the coordinate loss coordinates.
    assert SEEN["abs_maps"] == ((4, 64, 64, 3), (4, 64, 64, 3))
    assert SEEN["huber_coords"] == ((4, 3, 2), (4, 3, 2))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss_abs_maps" in r]
    assert len(train_rows) == 2
    for r in train_rows:
        total = r["loss_abs_maps"] + 0.01 * r["loss_huber_coords"]
        assert r["loss"] == pytest.approx(total, rel=1e-5)


def test_a_loss_kind_is_required_to_be_known():
    with pytest.raises(ValueError, match="unknown loss kind 'pixel'; known: map, coordinate"):
        register_loss("x", kind="pixel")
