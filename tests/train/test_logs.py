"""Run logs: JSONL records and TensorBoard scalars that TensorBoard's reader can parse."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from lmjax.train.logs import OVERLAY_SIDE, TENSORBOARD_DIR, RunLog, validation_overlays


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TFRecord event files under `logdir`: tag -> [(step, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_records_reach_jsonl_and_tensorboard(tmp_path):
    with RunLog(tmp_path) as log:
        log.write(10, "train", {"loss": 0.5, "images_per_s": 3.0})
        log.write(20, "train", {"loss": 0.25, "images_per_s": 3.5})
        log.write(20, "val", {"mre": 2.5, "sdr": {"2": 40.0, "4": 90.0}, "unit": "mm"})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 10, "loss": 0.5, "images_per_s": 3.0}
    assert lines[2]["val"]["sdr"]["2"] == 40.0 and lines[2]["val"]["unit"] == "mm"
    scalars = read_scalars(tmp_path / TENSORBOARD_DIR)
    assert scalars["train/loss"] == [(10, 0.5), (20, 0.25)]
    assert scalars["val/mre"] == [(20, 2.5)]
    assert scalars["val/sdr/2"] == [(20, 40.0)]
    assert "val/unit" not in scalars  # strings are not scalars


def test_appends_across_runs_and_can_skip_tensorboard(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.write(1, "train", {"loss": 1.0})
    with RunLog(tmp_path, tensorboard=False) as log:
        log.write(2, "train", {"loss": 0.5})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_missing_workdir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        RunLog(tmp_path / "absent")


def read_images(logdir) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Every image summary in the event files under `logdir`: tag -> [(step, RGB array)]."""
    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    with Image.open(io.BytesIO(value.image.encoded_image_string)) as im:
                        pixels = np.asarray(im.convert("RGB"))
                    assert pixels.shape[:2] == (value.image.height, value.image.width)
                    out.setdefault(value.tag, []).append((event.step, pixels))
    return out


def test_images_reach_tensorboard_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (12, 20, 3), dtype=np.uint8) for _ in range(2)]
    with RunLog(tmp_path) as log:
        log.images(7, "val/overlay", pics)
    (tmp_path / "quiet").mkdir()
    with RunLog(tmp_path / "quiet", tensorboard=False) as log:
        log.images(7, "val/overlay", pics)  # no TensorBoard: nothing, no error
    assert not (tmp_path / "quiet" / TENSORBOARD_DIR).exists()
    images = read_images(tmp_path / TENSORBOARD_DIR)
    assert sorted(images) == ["val/overlay/0", "val/overlay/1"]
    for i, pic in enumerate(pics):
        ((step, got),) = images[f"val/overlay/{i}"]
        assert step == 7 and np.array_equal(got, pic)  # PNG: lossless


def test_validation_overlays_draw_prediction_against_truth():
    from lmjax.configs.phantom import get_config
    from lmjax.train.setup import load_splits

    config = get_config("tiny")
    config.data.phantom_size = 12
    _, val, _ = load_splits(config)
    gt = val.landmarks()
    shifted = validation_overlays(val, gt + 6.0, n=2)
    exact = validation_overlays(val, gt, n=2)
    assert len(shifted) == 2 and shifted[0].dtype == np.uint8 and shifted[0].shape[2] == 3
    assert max(shifted[0].shape[:2]) <= OVERLAY_SIDE
    # The error vectors of the shifted prediction add drawn pixels.
    assert (shifted[0] != exact[0]).any()
