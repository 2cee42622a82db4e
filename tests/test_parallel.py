"""Mesh, shardings and `shard_batch`, in this process and on 8 fake CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lmjax import parallel
from tests.train import run_on_fake_devices


def _batch(b: int) -> dict[str, np.ndarray]:
    return {
        "image": np.arange(b * 4 * 4, dtype=np.float32).reshape(b, 4, 4, 1),
        "landmarks": np.full((b, 3, 2), np.nan, np.float32),
        "visible": np.zeros((b, 3), bool),
        "index": np.arange(b, dtype=np.int32),
    }


def test_mesh_spans_all_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count()
    assert parallel.num_data_shards(mesh) == jax.device_count()


@pytest.mark.parametrize("n", [0, 10_000])
def test_mesh_rejects_impossible_device_counts(n):
    with pytest.raises(ValueError, match="devices are available"):
        parallel.make_mesh(n)


def test_shard_batch_gives_global_arrays():
    mesh = parallel.make_mesh()
    local = _batch(2 * jax.device_count())
    batch = parallel.shard_batch(local, mesh)
    assert set(batch) == set(local)
    for key, value in batch.items():
        assert isinstance(value, jax.Array)
        assert value.sharding == parallel.data_sharding(mesh)
        assert value.dtype == local[key].dtype and value.shape == local[key].shape
        np.testing.assert_array_equal(np.asarray(value), local[key])


def test_shard_batch_rejects_malformed_batches():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="scalar"):
        parallel.shard_batch({"image": np.zeros((1, 2, 2, 1)), "step": np.int32(3)}, mesh)
    with pytest.raises(ValueError, match="different leading sizes"):
        parallel.shard_batch({"image": np.zeros((2, 2, 2, 1)), "index": np.zeros(3)}, mesh)
    with pytest.raises(ValueError, match="empty"):
        parallel.shard_batch({}, mesh)


SCRIPT = """
import json

import jax
import numpy as np

from lmjax import parallel

mesh = parallel.make_mesh()
batch = {"image": np.arange(8 * 2, dtype=np.float32).reshape(8, 2),
         "visible": np.ones((8, 3), bool)}
out = parallel.shard_batch(batch, mesh)
image = out["image"]
result = {
    "devices": jax.device_count(),
    "mesh_size": int(mesh.devices.size),
    "data_sharded": image.sharding == parallel.data_sharding(mesh),
    "shards": sorted((s.index[0].start, s.data.shape[0], s.device.id)
                     for s in image.addressable_shards),
    "values": np.asarray(image).tolist(),
    "replicated": parallel.replicated(mesh).is_fully_replicated,
    "small_mesh": int(parallel.make_mesh(2).devices.size),
}
try:
    parallel.shard_batch({"image": np.zeros((6, 2), np.float32)}, mesh)
except ValueError as error:
    result["error"] = str(error)
print(json.dumps(result))
"""


def test_eight_fake_devices():
    result = run_on_fake_devices(SCRIPT)
    assert result["devices"] == result["mesh_size"] == 8
    assert result["data_sharded"] and result["replicated"]
    # One row per device, in order, covering the batch.
    assert [(start, rows) for start, rows, _ in result["shards"]] == [(i, 1) for i in range(8)]
    assert len({device for *_, device in result["shards"]}) == 8
    assert result["values"] == np.arange(16).reshape(8, 2).tolist()
    assert result["small_mesh"] == 2
    message = result["error"]
    assert "global batch size 6" in message and "8 devices" in message
    assert "multiple of 8" in message
