"""The `lmjax` command as a user runs it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmjax import cli


def lmjax(*args, cwd=None):
    """`python -m lmjax.cli ARGS...` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "lmjax.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`lmjax ARGS...` in this process: `(exit status, stdout, stderr)`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.run(["lmjax", *args])
    out = capsys.readouterr()
    return exit.value.code, out.out, out.err


def test_usage_and_unknown_command():
    # The module entry point, as `python -m lmjax.cli` and the `lmjax` script run it.
    out = lmjax("--help")
    assert out.returncode == 0 and "inspect" in out.stdout
    out = lmjax("trian")
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr


def test_inspect_writes_json(shared_data, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "inspect",
        f"--data_dir={shared_data / 'isbi2015'}",
        "--noread_images",
        f"--output={tmp_path / 's.json'}",
    )
    assert code == 0, err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n_images"] == 300 and s["n_landmarks"] == 19 and s["spacing"] == {"dataset": 300}
    assert "images       300" in out


def test_inspect_exit_status_one_when_a_file_is_unusable(shared_data, capsys):
    code, out, _ = run_cli(
        capsys, "inspect", f"--data_dir={shared_data / 'dicom'}", "--format=dicom"
    )
    assert code == 1
    assert "chrJapMulti.dcm: DICOM file has no pixel data" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data_dir=/no/such/dir"], "/no/such/dir: no such file or folder"),
        (["--data_dir=/tmp", "--spacing=0.1"], "--spacing needs row_mm,col_mm"),
        (["surplus"], "unexpected arguments: surplus"),
    ],
)
def test_mistakes_end_with_one_line(args, message, capsys):
    code, _, err = run_cli(capsys, "inspect", *args)
    assert code == 2
    assert err.startswith("lmjax inspect: error: ") and message in err
    assert err.count("\n") == 1


def test_measure_json_and_csv(shared_data, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "measure",
        f"--data_dir={shared_data / 'isbi2015'}",
        f"--output={tmp_path / 'm.json'}",
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert len(doc["images"]) == 300
    first = doc["images"][0]
    assert first["image"] == "001.jpg"
    assert set(first["measurements"]) == {"ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"}
    anb = first["measurements"]["ANB"]
    assert anb["unit"] == "deg" and anb["class"] in ("C1", "C2", "C3")
    sna, snb = first["measurements"]["SNA"]["value"], first["measurements"]["SNB"]["value"]
    assert anb["value"] == pytest.approx(sna - snb, abs=1e-6)
    labelme = shared_data / "hamedan_ceph_sample" / "labelme_farhadifar"
    code, _, err = run_cli(
        capsys, "measure", f"--data_dir={labelme}", f"--output={tmp_path / 'm.csv'}"
    )
    assert code == 0, err
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("image,ANB,ANB_class") and len(rows) == 6
    # No spacing in this sample: MW stays in pixels and gets no class, with the reason.
    assert "MW: pixel spacing unknown" in rows[1]


def test_measure_without_definitions_is_an_error(shared_data, capsys):
    code, _, err = run_cli(capsys, "measure", f"--data_dir={shared_data / 'dicom'}")
    assert code == 2 and "no measurement is defined for landmark set" in err


@pytest.mark.parametrize("preset", ["default", "lower_limb", "pelvis", "fluoroscopy", "medsapiens"])
def test_preview_shows_each_preset(preset, tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "preview", f"--augment={preset}", "--num_images=2", "--input_size=64",
        f"--output_dir={tmp_path}",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "preview.json").read_text())
    assert summary["augment"] == preset and (tmp_path / "preview.png").stat().st_size > 0


def test_preview_names_the_known_presets(tmp_path, capsys):
    code, _, err = run_cli(capsys, "preview", "--augment=knee", f"--output_dir={tmp_path}")
    assert code == 2 and "unknown augmentation preset 'knee'" in err and "fluoroscopy" in err
