"""Shared fixtures: the real data folder and small helpers.

Every test process, and every `lmjax` process a test starts, shares one persistent
JAX compilation cache (`$LMJAX_TEST_COMPILATION_CACHE`, default
`.pytest_cache/jax` in the checkout): the suite trains the same tiny models in
many tests and processes, and a program compiled once is then read, not compiled
again. Tests of the cache itself pass their own folder.
"""

from __future__ import annotations

import os
import pathlib

import pytest

_CACHE = os.environ.get("LMJAX_TEST_COMPILATION_CACHE") or str(
    pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"
)
os.environ.setdefault("LMJAX_COMPILATION_CACHE", _CACHE)  # the CLI's default


def pytest_configure(config):
    from lmjax.compilation import enable_persistent_cache

    # Before the first compile of this process: JAX opens the cache only once.
    enable_persistent_cache(_CACHE, min_compile_time_s=0.5)


def shared_data_dir() -> pathlib.Path | None:
    """`$LMJAX_DATA` (set by .ci/run), else `../shared/data` beside the checkout."""
    env = os.environ.get("LMJAX_DATA")
    if env:
        return pathlib.Path(env)
    guess = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real radiographs; tests that need them skip with a reason elsewhere."""
    path = shared_data_dir()
    if path is None or not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail("LMJAX_DATA is not set or missing; CI must provide the shared data")
        pytest.skip(reason="real data not available: set LMJAX_DATA to the shared data folder")
    return path
