"""Persistent compilation cache and `lmjax compile-check` (abstract compile, no run)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from lmjax import compilation
from lmjax.benchmark import fake_batch, to_device
from lmjax.configs.phantom import get_config
from lmjax.train import setup

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "lmjax" / "configs" / "phantom.py"
# The tiny phantom U-Net shrunk further: one downsampling, 4 features, 32 x 32.
SHRINK = {"input_size": (32, 32), "num_levels": 2, "features": 4, "batch_size": 8}
SHRINK_FLAGS = [
    "--config.data.input_size=(32, 32)",
    "--config.model.num_levels=2",
    "--config.model.features=4",
    "--config.train.batch_size=8",
]


def shrunk_config():
    c = get_config("tiny")
    c.data.input_size = SHRINK["input_size"]
    c.model.num_levels = SHRINK["num_levels"]
    c.model.features = SHRINK["features"]
    c.train.batch_size = SHRINK["batch_size"]
    return c


def nbytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- persistent cache

CACHE_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from lmjax.compilation import count_cache_events, enable_persistent_cache

enable_persistent_cache(sys.argv[1], min_compile_time_s=0.0)

@jax.jit
def f(x):
    return jnp.sin(x) @ jnp.cos(x).T + 3.0

with count_cache_events() as counts:
    y = f(jnp.arange(12.0).reshape(3, 4))
print(json.dumps({**counts, "y": y.tolist()}))
"""


def run_cache_script(cache_dir: pathlib.Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CACHE_SCRIPT, str(cache_dir)],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_reads_the_persistent_cache(tmp_path):
    cache = tmp_path / "cache"
    first = run_cache_script(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert first["hits"] == 0 and first["misses"] >= 1
    assert any("jit_f" in name for name in entries), entries
    second = run_cache_script(cache)
    assert second["hits"] >= 1 and second["misses"] == 0
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(second["y"], np.sin(x) @ np.cos(x).T + 3.0, rtol=1e-5)
    assert second["y"] == first["y"]


def test_count_cache_events_counts_only_inside_the_block():
    with compilation.count_cache_events() as counts:
        jax.monitoring.record_event(compilation.CACHE_HIT_EVENT)
        jax.monitoring.record_event(compilation.CACHE_HIT_EVENT)
        jax.monitoring.record_event(compilation.CACHE_MISS_EVENT)
        jax.monitoring.record_event("/jax/some/other_event")
    jax.monitoring.record_event(compilation.CACHE_HIT_EVENT)
    assert counts == {"hits": 2, "misses": 1}


def test_enable_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cache_dir is empty"):
        compilation.enable_persistent_cache("")
    with pytest.raises(ValueError, match="must be >= 0"):
        compilation.enable_persistent_cache("/tmp/x", min_compile_time_s=-1.0)


# ---------------------------------------------------------------- compile check


class FakeStats:
    argument_size_in_bytes = 100
    output_size_in_bytes = 60
    alias_size_in_bytes = 50
    temp_size_in_bytes = 1000
    generated_code_size_in_bytes = 7


class FakeCompiled:
    def __init__(self, stats):
        self.stats = stats

    def memory_analysis(self):
        return self.stats


def test_memory_report_subtracts_donated_outputs_and_fit_verdict():
    m = compilation.memory_report(FakeCompiled(FakeStats()))
    assert m["total_bytes"] == 100 + 60 - 50 + 1000 + 7
    assert compilation.memory_report(FakeCompiled(None)) is None
    assert compilation.fits_in(m, 1117) is True
    assert compilation.fits_in(m, 1116) is False
    assert compilation.fits_in(m, None) is None and compilation.fits_in(None, 10) is None


def test_abstract_step_lowers_to_the_program_of_the_built_one():
    config = shrunk_config()
    step, state, batch, mesh = compilation.abstract_train_step(config, num_landmarks=3)
    # Nothing was allocated: the state is shapes with the step's replicated sharding.
    leaves = jax.tree.leaves(state)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert all(x.sharding.is_fully_replicated for x in leaves)
    assert batch["image"].shape == (8, 32, 32, 1) and batch["landmarks"].shape == (8, 3, 2)
    abstract = step.lower(state, batch).as_text()

    _, real_state, real_step, _, _ = setup.build(config, 3)
    real_batch = to_device(fake_batch(8, (32, 32), 3), mesh)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), real_state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state
    )
    assert real_step.lower(real_state, real_batch).as_text() == abstract


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # LLVM's optimisation level 0: compiling is all the command does; the memory
    # analysis and the cache's hits and misses do not depend on it.
    fast = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
    return subprocess.run(
        [sys.executable, "-m", "lmjax.cli", "compile-check", f"--config={CONFIG}:tiny", *args],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **fast, **(env or {})),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_cli_compile_check_on_8_fake_devices_fills_and_reads_the_cache(tmp_path):
    cache = tmp_path / "cache"
    out = run_cli(
        *SHRINK_FLAGS,
        "--devices=8",
        "--device_memory_gb=1",
        f"--output={tmp_path / 'a.json'}",
        env={"LMJAX_COMPILATION_CACHE": str(cache)},  # the flag's default
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "a.json").read_text())
    assert r["device_count"] == 8 and r["global_batch"] == 8 and r["fits"] is True
    assert r["compilation_cache"] == {"dir": str(cache), "hits": 0, "misses": 1}
    assert r["flops_per_step"] > 0 and r["flops_per_image"] == r["flops_per_step"] / 8

    # Per device: the replicated state (donated, so aliased by the new state) and
    # one eighth of the global batch.
    _, state, batch, _ = compilation.abstract_train_step(shrunk_config())
    m = r["memory"]
    assert m["alias_bytes"] == nbytes(state)
    assert m["argument_bytes"] == nbytes(state) + nbytes(batch) // 8
    assert m["total_bytes"] > m["argument_bytes"]
    assert "fits         yes" in out.stdout

    # The same program again, from the cache; 0.0001 GiB (105 kB) is too little.
    again = run_cli(
        *SHRINK_FLAGS,
        "--devices=8",
        "--device_memory_gb=0.0001",
        f"--compilation_cache_dir={cache}",
        f"--output={tmp_path / 'b.json'}",
    )
    assert again.returncode == 1, again.stderr[-3000:]
    r2 = json.loads((tmp_path / "b.json").read_text())
    assert r2["compilation_cache"]["hits"] == 1 and r2["compilation_cache"]["misses"] == 0
    assert r2["memory"] == m and r2["fits"] is False
    assert "fits         NO" in again.stdout


def test_cli_compile_check_rejects_zero_devices():
    out = run_cli("--devices=0")
    assert out.returncode == 2
    assert "--devices must be at least 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation.default_cache_dir(on_by_default=True) == str(tmp_path / "lmjax" / "jax")
    assert compilation.default_cache_dir(on_by_default=False) == ""
    monkeypatch.delenv("XDG_CACHE_HOME")
    home = os.path.expanduser("~")
    assert compilation.user_cache_dir() == os.path.join(home, ".cache", "lmjax", "jax")
    for off in ("0", ""):
        monkeypatch.setenv(compilation.CACHE_ENV, off)
        assert compilation.default_cache_dir(on_by_default=True) == ""
    monkeypatch.setenv(compilation.CACHE_ENV, str(tmp_path / "mine"))
    assert compilation.default_cache_dir(on_by_default=False) == str(tmp_path / "mine")


@pytest.mark.parametrize(
    "env_value, flags, where",
    [
        (None, (), "xdg/lmjax/jax"),  # on by default, in the user's cache folder
        ("0", (), None),  # turned off
        (None, ("--compilation_cache_dir=0",), None),
        ("0", ("--compilation_cache_dir={tmp}/given",), "given"),  # the flag wins
    ],
)
def test_predict_keeps_the_compilation_cache_on_by_default(tmp_path, env_value, flags, where):
    # A run without a checkpoint: the command fails after the cache is set up.
    env = {k: v for k, v in os.environ.items() if k != compilation.CACHE_ENV}
    env |= {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "JAX_PLATFORMS": "cpu"}
    if env_value is not None:
        env[compilation.CACHE_ENV] = env_value
    flags = [f.format(tmp=tmp_path) for f in flags]
    out = subprocess.run(
        [sys.executable, "-m", "lmjax.cli", "predict", f"--workdir={tmp_path / 'run'}"]
        + [f"--output_dir={tmp_path / 'out'}", str(tmp_path / "x.png"), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_dir())
    if where is None:
        assert made == [], made
    else:
        assert made[-1] == where and all(where.startswith(m) for m in made), made
        assert (tmp_path / where).stat().st_mode & 0o777 == 0o700  # private: cached code
