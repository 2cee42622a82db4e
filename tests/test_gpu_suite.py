"""experiments/gpu/run_all.sh: the accelerator suite, run here in its CPU (tiny) mode.

The tiny run goes through the code an accelerator runs (probe, worker process,
`lmjax benchmark`'s measurements, the report) at 32x32 with tiny widths, and shares
the test suite's compilation cache so that a second run mostly loads programs. The
other tests exercise the parent's bookkeeping (budgets, out-of-memory retries,
goals) without compiling anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "experiments" / "gpu" / "run_all.sh"


def _load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", RUN_ALL.with_name("suite.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _load_suite()
suite_report = sys.modules["suite_report"]  # imported by suite.py from its folder
suite_rows = sys.modules["suite_rows"]

FINITE = (
    "train_images_per_s",
    "step_ms",
    "compile_s",
    "flops_per_image",
    "achieved_tflops",
    "infer_b1_images_per_s",
)


def run_all(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(RUN_ALL), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    # The conftest's cache: programs compiled by earlier runs are loaded, not compiled.
    cache = os.environ.get("LMJAX_COMPILATION_CACHE", "")
    on = [f"--compilation_cache={cache}"] if cache.strip() not in ("", "0") else []
    done = run_all("--out", str(out), *on)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "suite.json").read_text()), (out / "suite.md").read_text(), out


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.mark.slow  # five models built and compiled in a worker process (shared with the next)
def test_tiny_mode_measures_every_row(tiny):
    r, _, _ = tiny
    assert r["mode"] == "tiny" and r["device"]["backend"] == "cpu"  # chosen without a GPU
    assert r["device"]["device_kind"] and r["device"]["versions"]["jax"]
    assert list(r["rows"]) == list(suite.ITEMS)
    for name in ("unet", "hrnet", "vit_b_lora", "sam_decoder", "input"):
        row = r["rows"][name]
        assert row["status"] == "ok", (name, row.get("error"))
        assert row["input_size"] == list(suite_rows.TINY_SIZE)
        assert row["compute_dtype"] == "float32"
        assert all(finite(row[k]) and row[k] > 0 for k in FINITE), (name, row)
        # CPU: no peak FLOP/s and no memory statistics; both reported as null.
        assert row["mfu"] is None and "CPU" in row["mfu_note"]
        assert row["peak_memory_bytes"] is None
    for name in ("unet", "hrnet", "vit_b_lora", "input"):
        row = r["rows"][name]
        assert finite(row["infer_b32_images_per_s"]) and row["infer_batch"] == 32
    assert r["rows"]["sam_decoder"]["train_prompts_per_s"] == pytest.approx(
        32 * r["rows"]["sam_decoder"]["train_images_per_s"]
    )
    i = r["rows"]["input"]
    assert finite(i["pipeline_images_per_s"]) and finite(i["fed_images_per_s"])
    assert 0 <= i["input_wait_fraction"] <= 1 and i["augment"].startswith("on device")
    for name, goal in suite_report.GOALS.items():
        assert r["rows"][name]["goal_mfu"] == goal and r["rows"][name]["goal_pass"] is None
    t = r["rows"]["torch_unet"]
    if importlib.util.find_spec("torch") is None:
        assert t["status"] == "skipped" and "torch is not installed" in t["error"]
    else:
        assert t["status"] == "ok" and finite(t["train_images_per_s"]) and finite(t["loss"])
        assert t["parameters"] == r["rows"]["unet"]["parameters"]


@pytest.mark.slow
def test_tiny_mode_report_names_device_rows_and_null_mfu(tiny):
    r, md, out = tiny
    assert f"# lmjax accelerator suite: {r['device']['device_kind']} (cpu)" in md
    assert "MFU is null" in md and "Mode **tiny**" in md
    for name in ("unet", "hrnet", "vit_b_lora", "sam_decoder"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} | ok |"))
        assert "| n/a |" in line  # the goal cannot be judged without MFU
    assert "## Input pipeline" in md and "## PyTorch port" in md
    assert not (out / "rows").exists()  # the workers' hand-over folder is cleaned up


def test_a_row_over_its_budget_is_killed_and_recorded(tmp_path):
    # 1 s cannot even import JAX: the worker is killed, the report is still written.
    done = run_all("--out", str(tmp_path), "--items=unet", "--budget=unet=1", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads((tmp_path / "suite.json").read_text())["rows"]["unet"]
    assert row["status"] == "timeout" and "its budget, 1 s" in row["error"]
    md = (tmp_path / "suite.md").read_text()
    assert "| unet | **timeout** |" in md and "- unet: timeout: killed" in md


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit, match="unknown rows"):
        suite.parse_args(["--items=unet,resnet"])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        suite.parse_args(["--budget=unet"])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        suite.parse_args(["--batch=resnet=4"])


def _suite(tmp_path, *argv):
    args = suite.parse_args(list(argv))
    args.tiny = False
    return suite.Suite(args, {"backend": "gpu"}, tmp_path)


def test_out_of_memory_halves_the_batch_until_one(tmp_path):
    s = _suite(tmp_path, "--batch=hrnet=2")
    oom = {"status": "error", "error": "RESOURCE_EXHAUSTED: out of memory", "oom": True}
    assert s._finish("unet", dict(oom)) is False and s.batch["unet"] == 16  # 32 -> 16
    assert s._finish("hrnet", dict(oom)) is False and s.batch["hrnet"] == 1
    assert s._finish("hrnet", dict(oom)) is True  # batch 1: recorded, not retried
    assert s.rows["hrnet"]["status"] == "error"
    assert [a["batch"] for a in s.rows["hrnet"]["attempts"]] == [2, 1]
    assert s._command(["hrnet"])[-1] == "--batch=hrnet=1"


def test_goals_and_the_port_comparison():
    ok = {"status": "ok", "batch": 8, "flops_per_image": 1e12, "peak_tflops": 1000.0}
    rows = {
        "unet": ok | {"mfu": 0.41, "train_images_per_s": 400.0},
        "hrnet": ok | {"mfu": 0.2, "train_images_per_s": 100.0},
        "vit_b_lora": {"status": "timeout", "error": "killed"},
        "torch_unet": {
            "status": "ok",
            "batch": 8,
            "train_images_per_s": 200.0,
            "torch_device": "H",
        },
    }
    suite_report.add_goals_and_comparisons(rows)
    assert rows["unet"]["goal_pass"] is True and rows["hrnet"]["goal_pass"] is False
    assert rows["vit_b_lora"]["goal_pass"] is None  # not measured is not a pass
    t = rows["torch_unet"]
    assert t["lmjax_over_torch"] == pytest.approx(2.0)
    assert t["mfu_same_flops"] == pytest.approx(1e12 * 200 / 1e15)


def test_full_mode_configs_are_the_accelerator_settings():
    # The accelerator's configs are only built here (nothing compiles): the sizes,
    # dtypes and batches the GPU run measures, and the input row's device augmentation.
    rows = _load_rows()
    for name in ("unet", "hrnet", "vit_b_lora", "input"):
        c = rows.config_for(name, tiny=False)
        assert tuple(c.data.input_size) == (512, 512) and c.task.compute_dtype == "bfloat16"
        assert c.train.batch_size == rows.BATCH[name]
    assert rows.config_for("hrnet", tiny=False).model.width == 32
    vit = rows.config_for("vit_b_lora", tiny=False).model
    assert vit.size == "B" and vit.patch_size == 16 and vit.trainable == "lora_and_head"
    sam = rows.config_for("sam_decoder", tiny=False)
    assert sam.model.size == "vit_b" and tuple(sam.data.input_size) == (1024, 1024)
    assert sam.train.batch_size == 4 and sam.model.dtype == "bfloat16"
    i = rows.config_for("input", tiny=False)
    assert i.data.format == "phantom" and i.data.augment_on_device and i.data.augment
    assert rows.config_for("unet", tiny=False, batch=8).train.batch_size == 8


def _load_rows():
    spec = importlib.util.spec_from_file_location("gpu_items", RUN_ALL.with_name("suite_rows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_mode_report_names_the_peak_and_judges_the_goals():
    # The report an H100 run writes, from made-up figures: the branch CPU never takes.
    heat = {
        "status": "ok", "model": "unet", "input_size": [512, 512], "batch": 32,
        "compute_dtype": "bfloat16", "train_images_per_s": 400.0, "step_ms": 80.0,
        "compile_s": 30.0, "flops_per_image": 1e12, "achieved_tflops": 400.0,
        "peak_tflops": 989.4, "mfu": 0.41, "peak_memory_bytes": 3 * 2**30,
        "infer_b1_images_per_s": 100.0, "infer_b32_images_per_s": 1000.0,
    }  # fmt: skip
    rows = {
        "unet": heat,
        "hrnet": heat | {"model": "hrnet", "mfu": 0.2},
        "vit_b_lora": {"status": "timeout", "error": "killed at its budget, 70 s"},
        "torch_unet": {
            "status": "ok", "batch": 32, "train_images_per_s": 200.0, "step_ms": 160.0,
            "torch_device": "NVIDIA H100 80GB HBM3", "torch_version": "2.11.0",
            "compute_dtype": "bfloat16 autocast", "peak_memory_bytes": 2**30,
        },
    }  # fmt: skip
    suite_report.add_goals_and_comparisons(rows)
    device = {
        "backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "device_count": 1,
        "peak_name": "H100 SXM", "peak_bf16_tflops": 989.4, "versions": {"jax": "0.11.2"},
        "platform": "Linux",
    }  # fmt: skip
    md = suite_report.markdown(
        {"device": device, "rows": rows, "date": "2026-12-07", "command": "run_all.sh",
         "mode": "full", "wall_s": 400.0}
    )  # fmt: skip
    assert "H100 SXM bf16 dense peak, 989.4 TFLOP/s per device" in md
    lines = {ln.split(" | ")[0]: ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "| 41.0% | >= 40% | pass | 3.00 |" in lines["| unet"]
    assert "| 20.0% | >= 25% | FAIL |" in lines["| hrnet"]
    assert "| **timeout** |" in lines["| vit_b_lora"] and "not measured" in lines["| vit_b_lora"]
    assert "lmjax / PyTorch train images/s: **2.00**" in md
    assert "| 20.2% |" in md  # the port's MFU with XLA's FLOPs: 1e12 * 200 / 989.4e12
    assert "- vit_b_lora: timeout: killed at its budget, 70 s" in md


_FAKE_WORKER = """
import json, pathlib, sys
work, batch = pathlib.Path(sys.argv[1]), int(sys.argv[2])
if batch == 32:  # out of memory: the row says so and the worker stops, as suite.worker does
    row = {"status": "error", "error": "RESOURCE_EXHAUSTED: out of memory", "oom": True}
    (work / "unet.json").write_text(json.dumps(row))
    sys.exit(3)
(work / "unet.json").write_text(json.dumps({"status": "ok", "batch": batch,
                                            "train_images_per_s": 1.0}))
sys.exit(1)  # then dies while measuring hrnet, writing nothing
"""


def test_workers_are_restarted_after_out_of_memory_and_a_crash_is_recorded(tmp_path, monkeypatch):
    s = _suite(tmp_path)
    monkeypatch.setattr(
        s,
        "_command",
        lambda names: [sys.executable, "-c", _FAKE_WORKER, str(s.work),
                       str(s._current_batch("unet"))],
    )  # fmt: skip
    s.run_group(["unet", "hrnet"])
    assert s.workers == 2
    assert s.rows["unet"]["status"] == "ok" and s.rows["unet"]["batch"] == 16
    assert [a["batch"] for a in s.rows["unet"]["attempts"]] == [32]
    assert s.rows["hrnet"]["status"] == "error"
    assert "worker exited with 1 without a result" in s.rows["hrnet"]["error"]
