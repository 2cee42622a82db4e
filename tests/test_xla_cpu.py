"""lmjax's XLA:CPU compile options: when they apply, what they change, that they keep numbers."""

import re
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from lmjax import parallel, xla_cpu
from lmjax.models import build_model
from lmjax.train import TaskSpec, create_train_state, make_optimizer, make_train_step

K = 3
ACCEPTED = xla_cpu._accepted(xla_cpu.YNN_FUSION_FLAG, xla_cpu.CPU_OPTIONS[xla_cpu.YNN_FUSION_FLAG])


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(xla_cpu.ENV, raising=False)
    return monkeypatch


def test_cpu_mesh_gets_the_options_when_jaxlib_knows_them(clean_env):
    expected = dict(xla_cpu.CPU_OPTIONS) if ACCEPTED else None
    assert xla_cpu.compiler_options(parallel.make_mesh()) == expected
    assert xla_cpu.compiler_options(jax.devices("cpu")) == expected


def test_other_platforms_and_empty_device_lists_get_none(clean_env):
    gpus = [SimpleNamespace(platform="gpu"), SimpleNamespace(platform="gpu")]
    assert xla_cpu.compiler_options(gpus) is None
    mixed = [SimpleNamespace(platform="cpu"), SimpleNamespace(platform="gpu")]
    assert xla_cpu.compiler_options(mixed) is None
    assert xla_cpu.compiler_options([]) is None


def test_user_flags_and_the_opt_out_win(clean_env):
    clean_env.setenv("XLA_FLAGS", f"--{xla_cpu.YNN_FUSION_FLAG}=LIBRARY_FUSION_TYPE_ELTWISE")
    assert xla_cpu.compiler_options(jax.devices("cpu")) is None
    clean_env.delenv("XLA_FLAGS")
    clean_env.setenv(xla_cpu.ENV, "0")
    assert xla_cpu.compiler_options(jax.devices("cpu")) is None


def test_unknown_options_are_dropped_not_fatal(clean_env):
    assert not xla_cpu._accepted("xla_cpu_no_such_option_exists", True)
    clean_env.setitem(xla_cpu.CPU_OPTIONS, "xla_cpu_no_such_option_exists", True)
    got = xla_cpu.compiler_options(jax.devices("cpu")) or {}
    assert "xla_cpu_no_such_option_exists" not in got


def _unet_step():
    model = build_model(
        "unet",
        features=16,
        num_levels=3,
        num_outputs=K,
        in_channels=1,
        input_size=(64, 48),
        rngs=nnx.Rngs(0),
    )
    # Plain SGD, so that the updated parameters compare the gradients themselves
    # (Adam's first step divides tiny gradients by their own size).
    tx, _ = make_optimizer({"name": "sgd", "learning_rate": 1.0, "momentum": 0.0})
    mesh = parallel.make_mesh()
    graphdef, state = create_train_state(model, tx, 0, mesh=mesh)
    step = make_train_step(graphdef, TaskSpec(sigma=1.5), tx, mesh)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(2, 64, 48, 1)).astype(np.float32),
        "landmarks": rng.uniform(3, 40, (2, K, 2)).astype(np.float32),
        "visible": np.ones((2, K), bool),
    }
    return step, state, parallel.shard_batch(batch, mesh)


def _library_fused_ops(hlo: str) -> set[str]:
    """Ops inside the computations that YNNPACK fusions call."""
    called = set(re.findall(r'calls=%([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo))
    ops = set()
    for block in hlo.split("\n\n"):
        header = block.lstrip().split(" ", 1)[0].lstrip("%")
        if header in called:
            ops |= set(re.findall(r"= \S+ (convolution|dot)\(", block))
    return ops


@pytest.mark.skipif(not ACCEPTED, reason="this jaxlib does not know the YNNPACK fusion option")
def test_convolutions_leave_ynnpack_and_the_step_is_unchanged(clean_env):
    step, state, batch = _unet_step()
    ours = step.lower(state, batch).compile()
    clean_env.setenv(xla_cpu.ENV, "0")
    step_default, _, _ = _unet_step()
    default = step_default.lower(state, batch).compile()
    assert not _library_fused_ops(ours.as_text()) & {"convolution", "dot"}
    assert "convolution" in _library_fused_ops(default.as_text())

    new_a, metrics_a = ours(jax.tree.map(lambda x: x.copy(), state), batch)
    new_b, metrics_b = default(jax.tree.map(lambda x: x.copy(), state), batch)
    np.testing.assert_allclose(float(metrics_a["loss"]), float(metrics_b["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
