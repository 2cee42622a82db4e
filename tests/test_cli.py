"""The `lmjax` command as a user runs it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def lmjax(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lmjax.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_usage_and_unknown_command():
    out = lmjax("--help")
    assert out.returncode == 0 and "inspect" in out.stdout
    out = lmjax("trian")
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr


def test_inspect_writes_json(shared_data, tmp_path):
    out = lmjax(
        "inspect",
        f"--data_dir={shared_data / 'isbi2015'}",
        "--noread_images",
        f"--output={tmp_path / 's.json'}",
    )
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n_images"] == 300 and s["n_landmarks"] == 19 and s["spacing"] == {"dataset": 300}
    assert "images       300" in out.stdout


def test_inspect_exit_status_one_when_a_file_is_unusable(shared_data):
    out = lmjax("inspect", f"--data_dir={shared_data / 'dicom'}", "--format=dicom")
    assert out.returncode == 1
    assert "chrJapMulti.dcm: DICOM file has no pixel data" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data_dir=/no/such/dir"], "/no/such/dir: no such file or folder"),
        (["--data_dir=/tmp", "--spacing=0.1"], "--spacing needs row_mm,col_mm"),
        (["surplus"], "unexpected arguments: surplus"),
    ],
)
def test_mistakes_end_with_one_line(args, message):
    out = lmjax("inspect", *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
