"""Run logs: JSONL records and TensorBoard scalars that TensorBoard's reader can parse."""

from __future__ import annotations

import json
import struct

import pytest
from tensorboardX.proto import event_pb2

from lmjax.train.logs import TENSORBOARD_DIR, RunLog


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
