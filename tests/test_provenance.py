"""Provenance: stable hashes, and the block in predict's files, the API and evaluate."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np
from PIL import Image

import lmjax
from lmjax import provenance
from lmjax.cli import _evaluate_workdir
from lmjax.predict import run_predict
from tests.test_predict import _phantom, workdir  # noqa: F401  (the tiny trained run)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hashes_are_stable_and_sensitive(tmp_path):
    assert provenance.canonical_sha256({"a": 1, "b": [1, 2]}) == provenance.canonical_sha256(
        {"b": [1, 2], "a": 1}
    )
    (tmp_path / "f.bin").write_bytes(b"x" * 3_000_000)  # more than one read chunk
    assert provenance.file_sha256(tmp_path / "f.bin") == _sha(b"x" * 3_000_000)
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert provenance.array_sha256(a) == _sha(a.tobytes())
    assert provenance.array_sha256(a.T) == _sha(np.ascontiguousarray(a.T).tobytes())
    # A folder: its files in sorted order, whatever order they were written in.
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, names in ((one, ("b", "a/c")), (two, ("a/c", "b"))):
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(name.encode())
    h = provenance.folder_sha256(one)
    assert h == provenance.folder_sha256(two) and provenance.folder_sha256(tmp_path / "no") is None
    (two / "b").write_bytes(b"changed")  # another size: the cached hash is not reused
    assert provenance.folder_sha256(two) != h
    (two / "b").write_bytes(b"b")
    os.rename(two / "b", two / "d")  # same bytes, another name
    assert provenance.folder_sha256(two) != h


def test_the_config_hash_ignores_formatting(workdir, tmp_path):  # noqa: F811
    doc = json.loads((workdir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(doc, indent=4, sort_keys=True))
    assert provenance.config_sha256(tmp_path) == provenance.config_sha256(workdir)
    doc["train"]["steps"] += 1
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert provenance.config_sha256(tmp_path) != provenance.config_sha256(workdir)


def _check_run(block: dict, run: pathlib.Path) -> None:
    assert block["lmjax_version"] == lmjax.__version__
    assert block["workdir"] == str(run.resolve())
    assert block["config_sha256"] == provenance.config_sha256(run)
    step = block["checkpoint_step"]
    assert (run / "checkpoints" / str(step) / "state").is_dir()
    assert block["weights_sha256"] == provenance.folder_sha256(
        run / "checkpoints" / str(step) / "state"
    )
    assert len(block["weights_sha256"]) == 64


def test_predict_json_sidecar_and_api(workdir, tmp_path):  # noqa: F811
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.round(_phantom((80, 64), 3) / 4095 * 255).astype(np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    results = run_predict(workdir, [str(images)], out)
    doc = json.loads((out / "a.json").read_text())
    assert doc == results[0] and "provenance" not in results[1]
    _check_run(doc["provenance"], workdir)
    file_sha = _sha((images / "a.png").read_bytes())
    assert doc["provenance"]["input_sha256"] == file_sha
    sidecar = json.loads((out / "provenance.json").read_text())
    assert sidecar["table"] == "predictions.csv"
    assert sidecar["input_sha256"] == {"../images/a.png": file_sha}  # the CSV's image column
    _check_run(sidecar, workdir)
    # The API: the same block for a file; an array's is the hash of its bytes.
    predictor = lmjax.Predictor.load(workdir)
    assert predictor(images / "a.png").provenance == {
        **sidecar_run(sidecar),
        "input_sha256": file_sha,
    }
    from_array = predictor(pixels)
    assert from_array.provenance["input_sha256"] == _sha(pixels.tobytes())
    assert from_array.to_dict()["provenance"] == from_array.provenance


def sidecar_run(sidecar: dict) -> dict:
    return {k: v for k, v in sidecar.items() if k not in ("table", "input_sha256")}


def test_the_evaluate_report_names_the_run(workdir, tmp_path):  # noqa: F811
    report = _evaluate_workdir(str(workdir), None, str(tmp_path / "report.json"))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["provenance"] == report["provenance"]
    _check_run(saved["provenance"], workdir)
    assert saved["provenance"]["checkpoint_step"] == saved["checkpoint_step"]
