"""Shared pieces of the training tests: a tiny NNX model and a dot-finding problem.

The model keeps the model call contract (`model(images) -> {"heatmaps": [B, H, W, K]}`)
without importing `lmjax.models`. Landmark k of an image is a single pixel of
brightness k + 1 on a black background, at a random pixel centre, so a two-layer
convolution can learn to find every landmark in about a hundred steps.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from flax import nnx

B, H, W, K = 8, 16, 16, 3


class TinyNet(nnx.Module):
    """Two 5x5 convolutions; optional deep-supervision output at half resolution."""

    def __init__(self, rngs: nnx.Rngs, *, features: int = 16, deep_supervision: bool = False):
        self.conv1 = nnx.Conv(1, features, (5, 5), rngs=rngs)
        self.conv2 = nnx.Conv(features, K, (5, 5), rngs=rngs)
        self.deep_supervision = deep_supervision

    def __call__(self, images: jax.Array) -> dict:
        maps = self.conv2(jax.nn.relu(self.conv1(images)))
        out = {"heatmaps": maps}
        if self.deep_supervision:
            b, h, w, k = maps.shape
            coarse = maps.reshape(b, h // 2, 2, w // 2, 2, k).mean(axis=(2, 4))
            out["deep_supervision"] = [maps, coarse]
        return out


class NormDropNet(nnx.Module):
    """Batch norm and dropout: non-parameter state and an RNG stream in the state."""

    def __init__(self, rngs: nnx.Rngs):
        # No bias before batch norm: its exact gradient is 0, and Adam would turn the
        # rounding noise in it into full-size steps that differ between shardings.
        self.conv1 = nnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.conv2 = nnx.Conv(8, K, (3, 3), rngs=rngs)

    def __call__(self, images):
        x = self.drop(jax.nn.relu(self.norm(self.conv1(images))))
        return {"heatmaps": self.conv2(x)}


def dot_batch(rng: np.random.Generator, batch_size: int = B) -> dict[str, np.ndarray]:
    """A batch in the pipeline's format: `image` [B, H, W, 1], `landmarks` [B, K, 2], ..."""
    landmarks = rng.integers(2, W - 2, (batch_size, K, 2)).astype(np.float32)
    image = np.zeros((batch_size, H, W, 1), np.float32)
    for b in range(batch_size):
        for k in range(K):
            x, y = landmarks[b, k].astype(int)
            image[b, y, x, 0] += k + 1.0
    return {
        "image": image,
        "landmarks": landmarks,
        "visible": np.ones((batch_size, K), bool),
        "valid": np.ones((batch_size,), bool),
    }


REPO = pathlib.Path(__file__).resolve().parents[2]


def run_on_fake_devices(code: str, num_devices: int = 8, timeout: float = 300) -> dict:
    """Runs `code` in a fresh Python with `num_devices` fake CPU devices.

    The device count is fixed when jax initialises its backend, and this pytest
    process already has, so the check runs in a subprocess. `code` must print one
    JSON object as its last line of output; it is returned parsed.
    """
    flags = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
    )
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
