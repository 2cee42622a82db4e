"""`lmjax benchmark` reports compile and step times, throughput and FLOPs."""

from __future__ import annotations

import pytest

from lmjax.benchmark import benchmark, fake_batch, format_benchmark
from lmjax.configs.phantom import get_config


def test_fake_batch_keeps_landmarks_inside():
    b = fake_batch(3, (20, 30), 5)
    assert b["image"].shape == (3, 20, 30, 1) and b["landmarks"].shape == (3, 5, 2)
    assert (b["landmarks"][..., 0] < 30).all() and (b["landmarks"][..., 1] < 20).all()


def test_benchmark_tiny_config():
    r = benchmark(get_config("tiny"), steps=3, warmup=1, num_landmarks=4)
    assert r["device_kind"] == "cpu" and r["global_batch"] == 4
    assert r["step_s_p10"] <= r["step_s_median"] <= r["step_s_p90"]
    assert r["images_per_s"] == pytest.approx(4 / r["step_s_median"])
    assert r["parameters"] > 10_000 and r["flops_per_image"] > 1e6
    assert "MFU not defined on CPU" in format_benchmark(r)
