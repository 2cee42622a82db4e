"""`--anonymize_names`: salted hashes for output names, no input path in any file;
and a batch predict that meets bad files goes on, leaves nothing of them, exits 1."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import pathlib

import numpy as np
import tifffile
from PIL import Image

from lmjax import predict_outputs
from lmjax.anonymize import HASH_DIGITS, Anonymizer, anonymize_report
from tests.data.test_image_io import write_dicom
from tests.test_cli import run_cli
from tests.test_predict import _phantom, workdir  # noqa: F401  (the tiny trained run)

MARK = "DoeJohn4711"  # a patient's name as folders and files often carry it


def _png(path: pathlib.Path, index: int, hw=(72, 56)) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(_phantom(hw, index) / 4095 * 255).astype(np.uint8)).save(path)
    return path


def found_markers(folders, markers) -> list[tuple[str, str]]:
    """`(file, marker)` for every marker in the bytes of any file under `folders`,
    compared ignoring case; file names and folder names count too."""
    hits = []
    for folder in folders:
        for path in pathlib.Path(folder).rglob("*"):
            name = str(path.relative_to(folder)).lower()
            data = path.read_bytes().lower() if path.is_file() else b""
            hits += [(name, m) for m in markers if m.lower() in name]
            hits += [(name, m) for m in markers if m.lower().encode() in data]
    return hits


def test_hashes_are_keyed_by_the_salt():
    a = Anonymizer("pepper")
    expected = hmac.new(b"pepper", b"sub/x", hashlib.sha256).hexdigest()[:HASH_DIGITS]
    assert a.stem("sub/x") == Anonymizer("pepper").stem("sub/x") == expected
    assert Anonymizer("salt").stem("sub/x") != expected
    assert Anonymizer().stem("sub/x") != Anonymizer().stem("sub/x")  # a random salt each


def test_report_image_names_are_replaced_whole():
    report = {
        "model": "unet_1",
        "per_image": {"images": ["1", MARK], "errors": [[0.5], [1.5]]},
        "measurements": {"per_image": [{"image": MARK, "ANB": {"predicted": 2.0}}]},
    }
    a = Anonymizer("pepper")
    anon = anonymize_report(report, a)
    assert anon["model"] == "unet_1"  # "1" is replaced only where it is a name
    assert anon["per_image"] == {"images": [a.stem("1"), a.stem(MARK)], "errors": [[0.5], [1.5]]}
    assert anon["measurements"]["per_image"][0]["image"] == a.stem(MARK)
    assert MARK not in json.dumps(anon)


def test_predict_anonymized_writes_no_input_name(workdir, tmp_path, capsys):  # noqa: F811
    tree = tmp_path / f"ward_{MARK}"
    _png(tree / f"{MARK}_pelvis.png", 0)
    _png(tree / MARK / "followup.png", 1)
    # A DICOM known by its preamble, named "SURNAME.GIVEN", with a spacing warning.
    pixels = np.round(_phantom((64, 48), 2)).astype(np.uint16)
    write_dicom(tree / f"{MARK}.JOHN", pixels, PixelSpacing=["0", "0.1"])
    out = tmp_path / "out"
    args = ["predict", f"--workdir={workdir}", f"--output_dir={out}", "--review"]
    code, _, err = run_cli(capsys, *args, "--anonymize_names", "--anonymize_salt=pepper", str(tree))
    assert code == 0, err
    a = Anonymizer("pepper")
    names = [MARK, f"{MARK}_pelvis", f"{MARK}/followup"]  # planned order
    stems = [a.stem(n) for n in names]
    per_image = {f"{s}{ext}" for s in stems for ext in (".json", ".png", ".labelme.json")}
    tables = {"predictions.csv", "provenance.json", "review.csv", "review.json"}
    assert {p.name for p in out.iterdir()} == per_image | tables  # flat, no name map
    assert found_markers([out], [MARK, "ward_"]) == []
    dicom = json.loads((out / f"{stems[0]}.json").read_text())
    assert dicom["image"] == f"{stems[0]}.dcm"
    assert any("invalid PixelSpacing" in w and f"{stems[0]}.dcm" in w for w in dicom["warnings"])
    lm = json.loads((out / f"{stems[1]}.labelme.json").read_text())
    assert lm["imagePath"] == f"{stems[1]}.png" and lm["imageData"]  # the image travels along
    rows = [r["image"] for r in csv.DictReader((out / "predictions.csv").open())]
    assert rows == [f"{stems[0]}.dcm", f"{stems[1]}.png", f"{stems[2]}.png"]
    # Resumed with the same salt, with the mapping asked for (outside the outputs).
    mapping = tmp_path / "private" / "names.csv"
    code, _, err = run_cli(
        capsys, *args, "--anonymize_names", "--anonymize_salt=pepper", "--skip_existing",
        f"--name_map={mapping}", str(tree),
    )  # fmt: skip
    assert code == 0 and "kept 3 existing predictions" in err
    got = [(r["image"], r["output"]) for r in csv.DictReader(mapping.open())]
    expected = [f"{MARK}.JOHN", f"{MARK}_pelvis.png", f"{MARK}/followup.png"]
    assert got == [(str(tree / e), s) for e, s in zip(expected, stems, strict=True)]
    code, _, err = run_cli(capsys, *args, f"--name_map={mapping}", str(tree))
    assert code == 2 and "go with --anonymize_names" in err


def test_batch_predict_goes_on_after_bad_files(workdir, tmp_path, capsys, monkeypatch):  # noqa: F811
    folder = tmp_path / "in"
    _png(folder / "a.png", 0)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _png(folder / "c.png", 1, hw=(80, 60))  # its outputs fail half-way (a full disk)
    _png(folder / "d.png", 2)
    nan = np.ones((40, 30), np.float32)
    nan[5, 5] = np.nan
    tifffile.imwrite(folder / "e.tif", nan)  # refused when read, not later
    real = predict_outputs.draw_overlay

    def full_disk(grey, *args, **kw):
        if grey.shape == (80, 60):
            raise OSError(28, "No space left on device")
        return real(grey, *args, **kw)

    monkeypatch.setattr(predict_outputs, "draw_overlay", full_disk)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "predict", f"--workdir={workdir}", f"--output_dir={out}", str(folder)
    )
    assert code == 1
    assert f"wrote 2 of 5 predictions to {out}" in stdout
    tail = err[err.index("3 of 5 images failed:") :].splitlines()
    assert "b.png: unreadable image" in tail[1]
    assert "c.png: outputs not written" in tail[2] and "No space left" in tail[2]
    assert "e.tif: 1 pixels are NaN" in tail[3]
    written = {p.name for p in out.iterdir()}
    assert written == {
        *(f"{s}{ext}" for s in "ad" for ext in (".json", ".png", ".labelme.json")),
        "predictions.csv",
        "provenance.json",
    }
    rows = [r["image"] for r in csv.DictReader((out / "predictions.csv").open())]
    assert rows == ["../in/a.png", "../in/d.png"]
