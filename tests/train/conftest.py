"""Fixtures of the training tests."""

from __future__ import annotations

import errno
import os

import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler


@pytest.fixture
def disk_full(monkeypatch):
    """While `disk_full["on"]`, every Grain state write (the last item of a save, after
    the arrays) finds no space left on the device."""
    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn
    full = {"on": False}

    async def save_fn(self, x, directory):
        if full["on"] and "process_" in str(self._filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return await original(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", save_fn)
    return full
