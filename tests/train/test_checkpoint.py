"""Checkpointer: round trip, keep policy, errors, restoring onto another device topology."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmjax.train.checkpoint import Checkpointer, abstract_like, restore_config
from tests.train import REPO, run_on_fake_devices

CONFIG = {"model": {"name": "unet", "features": 8}, "lr": 1e-3, "seed": 0}


def make_state(scale: float = 1.0) -> dict:
    """A train-state-like pytree: params, Adam state, a Python int step, a typed key."""
    params = {
        "conv": {"kernel": scale * jnp.arange(24.0).reshape(2, 3, 4), "bias": jnp.ones((4,))},
        "head": {"kernel": jnp.full((4, 2), scale)},
    }
    return {
        "params": params,
        "opt_state": optax.adam(1e-3).init(params),
        "step": 7,
        "rng": jax.random.key(0),
    }


def assert_same_state(a: dict, b: dict) -> None:
    """Same structure and values; typed keys compared through their key data."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_state_grain_config_metrics(tmp_path):
    state = make_state()
    state["rng"], _ = jax.random.split(state["rng"])  # a key that is not the seed's
    dataset = grain.MapDataset.range(10).shuffle(seed=1).to_iter_dataset()
    it = iter(dataset)
    _ = [next(it) for _ in range(3)]
    saved_data = it.get_state()
    upcoming = [next(it) for _ in range(3)]

    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(10, state, data_state=saved_data, config=CONFIG, metrics={"val_mre": 2.5})
        ckpt.wait()
        restored, data, config, metrics = ckpt.restore(abstract_state=abstract_like(state))

    assert_same_state(restored, state)
    assert restored["step"] == 7
    assert config == CONFIG
    assert metrics == {"val_mre": 2.5}
    fresh = iter(dataset)
    fresh.set_state(data)
    assert [next(fresh) for _ in range(3)] == upcoming
    assert restore_config(tmp_path) == CONFIG


def test_keeps_latest_and_best(tmp_path):
    mre = {1: 3.0, 2: 0.5, 3: 2.0, 4: 1.5, 5: 1.0, 6: 0.9}
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for step, value in mre.items():
            ckpt.save(
                step,
                make_state(scale=step),
                data_state={"next_index": step},
                config=CONFIG,
                metrics={"val_mre": value},
            )
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5, 6]
        assert ckpt.latest_step() == 6
        assert ckpt.best_step() == 2
        state, data, _, metrics = ckpt.restore("best", abstract_state=abstract_like(make_state()))
    assert_same_state(state, make_state(scale=2))
    assert data == {"next_index": 2}
    assert metrics == {"val_mre": 0.5}

    # A new process sees the same steps on disk and keeps the policy going.
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        assert ckpt.best_step() == 2
        ckpt.save(7, make_state(), data_state={}, config=CONFIG, metrics={"val_mre": 0.1})
        ckpt.save(8, make_state(), data_state={}, config=CONFIG)  # no metrics this time
        ckpt.wait()
        assert ckpt.all_steps() == [6, 7, 8]
        assert ckpt.best_step() == 7


def test_max_mode_and_missing_metric(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=1, best_metric="sdr", best_mode="max") as ckpt:
        for step, sdr in ((1, 0.7), (2, 0.9), (3, 0.8)):
            ckpt.save(step, make_state(), data_state={}, config=CONFIG, metrics={"sdr": sdr})
        ckpt.save(4, make_state(), data_state={}, config=CONFIG, metrics={"loss": 0.1})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4]
        assert ckpt.best_step() == 2


def test_no_checkpoint_errors(tmp_path):
    assert restore_config(tmp_path) is None
    with Checkpointer(tmp_path) as ckpt:
        abstract = abstract_like(make_state())
        with pytest.raises(FileNotFoundError, match="no checkpoint found") as info:
            ckpt.restore(abstract_state=abstract)
        assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
        ckpt.save(1, make_state(), data_state={}, config=CONFIG)  # no metrics
        ckpt.wait()
        assert ckpt.best_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint with metric 'val_mre'"):
            ckpt.restore("best", abstract_state=abstract)
        with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 \(saved: \[1\]\)"):
            ckpt.restore(5, abstract_state=abstract)


def test_shape_mismatch_names_the_key(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(), data_state={}, config=CONFIG)
        ckpt.wait()
        abstract = abstract_like(make_state())
        wide = jax.ShapeDtypeStruct(
            (4, 5), jnp.float32, sharding=abstract["params"]["head"]["kernel"].sharding
        )
        abstract["params"]["head"]["kernel"] = wide
        with pytest.raises(ValueError) as info:
            ckpt.restore(abstract_state=abstract)
    message = str(info.value)
    assert "params/head/kernel: checkpoint (4, 2) vs target (4, 5)" in message
    assert "conv" not in message  # only the mismatched leaf is named


def _tree(path) -> dict:
    """Every file and folder under `path` with its size and modification time."""
    return {
        str(q.relative_to(path)): (q.is_dir(), q.stat().st_size, q.stat().st_mtime_ns)
        for q in sorted(path.rglob("*"))
    }


def test_read_only_writes_nothing_and_spares_a_save_in_flight(tmp_path):
    mre = {1: 2.0, 2: 0.5, 3: 1.0}
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for step, value in mre.items():
            ckpt.save(
                step, make_state(step), data_state={}, config=CONFIG, metrics={"val_mre": value}
            )
    # What a training's unfinished save looks like; a writer would delete it on start.
    in_flight = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-123"
    (in_flight / "state").mkdir(parents=True)
    before = _tree(tmp_path)
    with Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.all_steps() == [1, 2, 3]  # the folder in flight is not a step
        assert reader.best_step() == 2 and reader.latest_step() == 3
        state, _, config, metrics = reader.restore(
            "best", abstract_state=abstract_like(make_state())
        )
        with pytest.raises(RuntimeError, match="read-only"):
            reader.save(5, make_state(), data_state={}, config=CONFIG)
    assert_same_state(state, make_state(2))
    assert config == CONFIG and metrics == {"val_mre": 0.5}
    assert _tree(tmp_path) == before  # nothing created, touched or removed
    with Checkpointer(tmp_path) as writer:
        writer.save(5, make_state(), data_state={}, config=CONFIG)  # waits for the clean-up
    assert not in_flight.exists()  # the writer's clean-up, which readers must not do


def test_read_only_takes_a_relative_workdir(tmp_path, monkeypatch, caplog):
    with Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, make_state(3.0), data_state={}, config=CONFIG)
    monkeypatch.chdir(tmp_path)
    with Checkpointer("run", read_only=True) as reader:
        state, _, _, _ = reader.restore(abstract_state=abstract_like(make_state()))
    assert_same_state(state, make_state(3.0))
    assert "read only" not in caplog.text and "read_only" not in caplog.text


def test_read_only_on_an_empty_workdir_creates_nothing(tmp_path):
    with Checkpointer(tmp_path / "run", read_only=True) as reader:
        assert reader.latest_step() is None and reader.best_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint found"):
            reader.restore(abstract_state=abstract_like(make_state()))
    assert list(tmp_path.iterdir()) == []


def test_read_only_retries_a_step_deleted_while_read(tmp_path, monkeypatch):
    import shutil

    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for step in (1, 2):
            ckpt.save(step, make_state(step), data_state={}, config=CONFIG)
    reader = Checkpointer(tmp_path, read_only=True)
    real = reader._restore_step

    def deleted_under_it(step, abstract_state):
        if step == 2:  # a training's keep policy removes it mid-read
            shutil.rmtree(tmp_path / "checkpoints" / "2")
        return real(step, abstract_state)

    monkeypatch.setattr(reader, "_restore_step", deleted_under_it)
    with reader:
        state, _, _, _ = reader.restore(abstract_state=abstract_like(make_state()))
    assert_same_state(state, make_state(1))  # the then newest finished step


RESTORE_ON_4_DEVICES = """
import json
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from lmjax.train.checkpoint import Checkpointer, abstract_like
from tests.train.test_checkpoint import make_state

assert jax.device_count() == 4, jax.devices()
mesh = jax.make_mesh((4,), ("data",))
abstract = abstract_like(make_state())
def target(x):
    if not isinstance(x, jax.ShapeDtypeStruct):
        return x
    # Split the leading axis over 'data' where it divides, else replicate.
    spec = P("data") if x.ndim and x.shape[0] % 4 == 0 else P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
abstract = jax.tree.map(target, abstract)
with Checkpointer(WORKDIR) as ckpt:
    state, data, config, _ = ckpt.restore(abstract_state=abstract)
bias = state["params"]["conv"]["bias"]
kernel = state["params"]["head"]["kernel"]
print(json.dumps({
    "bias": np.asarray(bias).tolist(),
    "bias_shards": [s.data.shape[0] for s in bias.addressable_shards],
    "kernel": np.asarray(kernel).tolist(),
    "kernel_devices": len(kernel.sharding.device_set),
    "rng": np.asarray(jax.random.key_data(state["rng"])).tolist(),
    "data": data,
    "config": config,
}))
"""


def test_restores_onto_another_device_count(tmp_path):
    state = make_state(scale=3.0)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, data_state={"next_index": 4}, config=CONFIG)
    code = RESTORE_ON_4_DEVICES.replace("WORKDIR", repr(str(tmp_path)))
    out = run_on_fake_devices(code, num_devices=4, timeout=120)
    assert out["bias"] == [1.0] * 4
    assert out["bias_shards"] == [1, 1, 1, 1]  # split over the 4-device 'data' axis
    assert out["kernel"] == np.full((4, 2), 3.0).tolist()
    assert out["kernel_devices"] == 4
    assert out["rng"] == np.asarray(jax.random.key_data(state["rng"])).tolist()
    assert out["data"] == {"next_index": 4}
    assert out["config"] == CONFIG


def test_data_state_of_another_process_layout_is_skipped(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(), data_state={"next_index": 3}, config=CONFIG)
        ckpt.wait()
        data_dir = tmp_path / "checkpoints" / "1" / "data"
        (data_dir / "process_0-of-1.json").rename(data_dir / "process_0-of-2.json")
        state, data, config, _ = ckpt.restore(abstract_state=abstract_like(make_state()))
    assert data is None  # the data restarts; the model state still restores
    assert_same_state(state, make_state())
    assert config == CONFIG


TWO_PROCESSES = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from lmjax.train.checkpoint import Checkpointer, abstract_like

pid = jax.process_index()
mesh = jax.make_mesh((2,), ("data",))
split, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
kernel = np.arange(12.0).reshape(4, 3)
state = {
    "kernel": jax.make_array_from_callback((4, 3), split, lambda i: kernel[i]),
    "rng": jax.jit(lambda: jax.random.key(3), out_shardings=same)(),
}
with Checkpointer(sys.argv[3]) as ckpt:
    ckpt.save(1, state, data_state={"next_index": 10 + pid}, config={"p": 1}, metrics={"mre": 1})
    ckpt.wait()
    restored, data, config, metrics = ckpt.restore(abstract_state=abstract_like(state))
full = multihost_utils.process_allgather(restored["kernel"], tiled=True)
print(json.dumps({"kernel": np.asarray(full).tolist(), "data": data, "config": config}))
"""


@pytest.mark.slow
def test_two_processes_keep_their_own_data_state(tmp_path):
    """Each process saves and gets back its own iterator state; JSON parts appear once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(i), str(port), str(tmp_path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    for pid, result in enumerate(results):
        assert result["data"] == {"next_index": 10 + pid}
        assert result["kernel"] == np.arange(12.0).reshape(4, 3).tolist()
        assert result["config"] == {"p": 1}
    step = tmp_path / "checkpoints" / "1"
    assert sorted(p.name for p in (step / "data").glob("*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    assert restore_config(tmp_path) == {"p": 1}
