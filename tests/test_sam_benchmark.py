"""`lmjax benchmark` and `lmjax compile-check` of SAM decoder configs, on the tiny
random SAM shrunk to 64 px (an 8 x 8 token grid).

Each train step takes about 10 s to compile on 2 CPU cores whatever its size, so the
benchmark times K = 90 only and the compile check compiles K = 32 only; together
they cover both of `PROMPTS`, and the CLI tests skip the decoder (`PROMPTS = ()`).
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from lmjax import configs, sam_benchmark
from lmjax.sam_benchmark import (
    ITEMS,
    benchmark_sam,
    compile_check_sam,
    fake_items,
    format_sam_benchmark,
    format_sam_compile_check,
)
from tests.test_cli import run_cli

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "experiments/configs/pelvis_sam_decoder.py"
SMALL = ["data.input_size=(64, 64)", "model.patch_size=8", "model.prompt_dim=32"]
CONFIG_PROMPT_DIM = 32


def tiny():
    return configs.load(f"{CONFIG}:tiny", overrides=SMALL)


@pytest.fixture(scope="module")
def result():
    return benchmark_sam(tiny(), steps=2, warmup=1, prompts=(90,))


@pytest.fixture(scope="module")
def check():
    return compile_check_sam(tiny(), prompts=(32,))


def finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_fake_items_lie_inside_the_image():
    items = fake_items(3, 64)
    v, valid = items["vertices"], items["vertex_valid"]
    assert v.shape == (3, sum(ITEMS.values()), sam_benchmark.MAX_VERTICES, 2)
    counts = valid.sum(-1)
    landmarks, outlines = ITEMS["landmark"], ITEMS["landmark"] + ITEMS["outline"]
    assert (counts[:, :landmarks] == 1).all()
    assert ((counts[:, landmarks:outlines] >= 2) & (counts[:, landmarks:outlines] <= 5)).all()
    assert ((counts[:, outlines:] >= 4) & (counts[:, outlines:] <= 8)).all()
    assert ((v[valid] >= 0) & (v[valid] <= 64)).all() and items["visible"].all()


def test_benchmark_reports_every_section(result):
    json.dumps(result)  # JSON-ready
    assert sam_benchmark.PROMPTS == (32, 90)
    for key in ("model", "parameters", "input_size", "backend", "device_kind", "device_count"):
        assert key in result
    assert {"platform", "versions", "steps", "warmup", "encoder", "decoder"} <= set(result)
    p = result["parameters"]
    assert p["total"] == p["image_encoder"] + p["prompt_encoder"] + p["mask_decoder"] > 0
    assert result["input_size"] == [64, 64] and result["embedding_shape"] == [
        8,
        8,
        CONFIG_PROMPT_DIM,
    ]
    assert result["data"] == "fake" and result["items"] == ITEMS
    e = result["encoder"]
    assert e["batch"] == 4 and finite_positive(e["images_per_s"])
    assert e["step_s_p10"] <= e["step_s_median"] <= e["step_s_p90"]
    sections = [e, *result["decoder"], *result["decoder_train"]]
    assert all(finite_positive(s["compile_s"]) for s in sections)
    assert [s["prompts"] for s in result["decoder"] + result["decoder_train"]] == [90, 90]
    text = format_sam_benchmark(result)
    for label in ("encoder ", "decoder K=90", "train   K=90", "images/s", "prompts/s"):
        assert label in text


def test_rates_count_every_prompt(result):
    dec = result["decoder"][0]
    assert dec["images"] == 1
    assert dec["prompts_per_s"] == pytest.approx(90 / dec["step_s_median"])
    train = result["decoder_train"][0]
    assert train["images"] == 4
    assert train["prompts_per_s"] == pytest.approx(4 * 90 / train["step_s_median"])
    assert train["images_per_s"] == pytest.approx(4 / train["step_s_median"])
    assert finite_positive(train["prompts_per_s"]) and finite_positive(dec["prompts_per_s"])


def test_train_step_work_grows_with_the_prompts(result, check):
    # The same step compiled for K = 32 (compile check) and K = 90 (benchmark).
    k90 = result["decoder_train"][0]["flops_per_call"]
    k32 = check["programs"][1]["flops"]
    if k90 is None or k32 is None:
        pytest.skip("this backend gives no cost analysis")
    assert 2.0 < k90 / k32 < 3.5  # 90 / 32 = 2.8 prompts, plus per-step overhead


def test_real_data_is_refused():
    with pytest.raises(ValueError, match="SAM benchmarks use fake inputs"):
        benchmark_sam(tiny(), data="real")


def test_compile_check_reports_memory_without_a_verdict(check):
    json.dumps(check)
    assert [(p["name"], p["prompts"]) for p in check["programs"]] == [
        ("encoder forward", None),
        ("decoder train step", 32),
    ]
    for p in check["programs"]:
        m = p["memory"]
        assert m is not None and m["total_bytes"] > 0 and m["argument_bytes"] > 0
        assert p["fits"] is None and p["compile_s"] > 0
    assert check["memory"] == max((p["memory"] for p in check["programs"]),
                                  key=lambda m: m["total_bytes"])  # fmt: skip
    # Parameters as in the benchmark, counted without allocating them.
    assert check["parameters"]["total"] > 0 and check["device_memory_bytes"] is None
    assert check["fits"] is None
    assert "unknown: pass --device_memory_gb" in format_sam_compile_check(check)


def test_compile_check_does_not_fit_in_a_kilobyte():
    r = compile_check_sam(tiny(), device_memory_gb=2**-20, prompts=())
    assert r["fits"] is False and r["device_memory_bytes"] == 1024
    assert "does NOT fit" in format_sam_compile_check(r)


def test_cli_benchmark_and_compile_check(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sam_benchmark, "PROMPTS", ())  # the encoder only: no train compile
    # The fixtures' model: its encoder program is read from the compilation cache.
    size = [f"--config.{o}" for o in SMALL]
    code, out, err = run_cli(
        capsys, "benchmark", f"--config={CONFIG}", *size, "--steps=1",
        f"--output={tmp_path / 'b.json'}",
    )  # fmt: skip
    assert code == 0, err
    assert "images/s at batch 4" in out
    assert json.loads((tmp_path / "b.json").read_text())["encoder"]["images_per_s"] > 0
    code, out, err = run_cli(
        capsys, "compile-check", f"--config={CONFIG}", *size, "--device_memory_gb=0.000001",
    )  # fmt: skip
    assert code == 1, err  # does not fit
    assert "fits         NO" in out
