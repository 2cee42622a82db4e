"""Crash-exact resume: experiments/fault_injection.py in a small form (2 kills), and
the batch log it compares."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from lmjax.train import batch_log
from tests.train import REPO


def _fault_injection():
    path = REPO / "experiments" / "fault_injection.py"
    spec = importlib.util.spec_from_file_location("fault_injection", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # four training processes: start-up, one compilation, 6 steps each
def test_two_kills_resume_bit_for_bit(tmp_path, monkeypatch):
    fault_injection = _fault_injection()
    # The training processes inherit it: LLVM's optimisation level 0 compiles about 3x
    # faster, and both runs compile alike, which is all a bit-for-bit comparison needs.
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    # Seed 6 draws a kill once step 2 was fed and one during the first save after step 3.
    assert [(m["kind"], m["after_step"]) for m in fault_injection.plan(2, 6, 6)] == [
        ("step", 2),
        ("save", 3),
    ]
    # The tiny U-Net shrunk to 32 x 32 and two levels: the kills, not the model, matter.
    shrink = ("data.input_size=(32, 32)", "model.num_levels=2", "model.features=4")
    result = fault_injection.run(
        kills=2, seed=6, steps=6, save_every=2, root=tmp_path, log=lambda *_: None, extra=shrink
    )
    comparison = result["comparison"]
    assert comparison["identical"], comparison
    assert comparison["arrays_differing"] == [] and comparison["steps_with_different_batches"] == []
    assert comparison["steps_in_reference_log"] == 6 and comparison["arrays"] > 10
    kills = result["kills"]
    assert [k["kind"] for k in kills] == ["step", "save"]
    assert kills[0]["killed_at_step"] >= 2
    assert kills[1]["save_in_flight"], kills[1]
    assert result["tmp_folders_at_end"] == []  # the cut-short save was removed on restart
    assert "IDENTICAL" in fault_injection.table(result)


def test_a_different_final_state_or_data_order_is_found(tmp_path):
    fault_injection = _fault_injection()
    lines = [{"step": s, "index": [s, s + 1], "sha256": f"{s:064x}"} for s in (1, 2)]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        text = "".join(json.dumps(x) + "\n" for x in lines)
        (tmp_path / name / "batches.jsonl").write_text(text)
    lines[1]["index"] = [9, 9]
    (tmp_path / "b" / "batches.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    states = {
        tmp_path / "a": {"w": np.zeros(3, np.float32), "step": np.int32(2)},
        tmp_path / "b": {"w": np.array([0, 0, -0.0], np.float32), "step": np.int32(2)},
    }
    fault_injection._final_state = states.__getitem__
    c = fault_injection.compare(tmp_path / "a", tmp_path / "b", steps=2)
    # -0.0 == 0.0 as numbers, but not bit for bit.
    assert c["arrays_differing"] == ["w"] and c["steps_with_different_batches"] == [2]
    assert not c["identical"]


def test_batch_log_keeps_the_last_line_of_each_step_and_ends_a_cut_one(tmp_path, monkeypatch):
    monkeypatch.setenv(batch_log.ENV, "1")
    batch = {"image": np.ones((2, 4, 4, 1), np.float32), "index": np.array([3, -1], np.int32)}
    log = batch_log.BatchLog(tmp_path)
    log.write(1, batch, ("image",))
    log.write(2, batch, ("image",))
    log.close()
    path = batch_log.path(tmp_path)
    with path.open("a") as f:
        f.write('{"step": 3, "ind')  # a kill in the middle of a line
    log = batch_log.BatchLog(tmp_path)  # the resumed run repeats step 2
    log.write(2, batch, ("image",))
    log.write(3, batch, ("image",))
    log.close()
    read = batch_log.read(path)
    assert sorted(read) == [1, 2, 3]
    assert read[3]["index"] == [3, -1]
    assert read[3]["sha256"] == batch_log.digest({"image": batch["image"]})
    other = {"image": batch["image"] + 1, "index": batch["index"]}
    log = batch_log.BatchLog(tmp_path)
    log.write(3, other, ("image",))
    log.close()
    with pytest.raises(ValueError, match="step 3 was fed two different batches"):
        batch_log.read(path)


def test_batch_log_is_off_without_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(batch_log.ENV, raising=False)
    log = batch_log.BatchLog(tmp_path)
    log.write(1, {"index": np.zeros(1)}, ())
    log.close()
    assert not batch_log.path(tmp_path).exists()
