"""Shared fixtures: the real data folder and small helpers."""

from __future__ import annotations

import os
import pathlib

import pytest


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
