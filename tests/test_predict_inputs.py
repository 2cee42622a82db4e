"""`lmjax predict` on folder trees (the outputs keep their layout) and resuming a
job with --skip_existing."""

from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from lmjax import predict
from lmjax.predict_inputs import plan_inputs
from tests.data.test_image_io import write_dicom
from tests.test_cli import run_cli
from tests.test_predict import _phantom, workdir  # noqa: F401  (the tiny trained run)


def _png(path: pathlib.Path, index: int = 0) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(_phantom((72, 56), index) / 4095 * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path) -> pathlib.Path:
    """in/{a.png, notes.txt, .DS_Store, .hidden/h.png, sub/{b.png, B.tif, x.png,
    deeper/c.dcm, loop -> in}}, and other/x.png beside it."""
    root = tmp_path / "in"
    _png(root / "a.png", 0)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    _png(root / ".hidden" / "h.png", 1)
    _png(root / "sub" / "b.png", 2)
    Image.open(root / "sub" / "b.png").save(root / "sub" / "B.tif")
    _png(root / "sub" / "x.png", 3)
    (root / "sub" / "deeper").mkdir()
    write_dicom(root / "sub" / "deeper" / "c.dcm", (_phantom((60, 50), 4)).astype(np.uint16))
    os.symlink(root, root / "sub" / "loop")
    _png(tmp_path / "other" / "x.png", 5)
    return root


def test_folders_are_searched_recursively_with_names_per_folder(tree, capsys):
    planned = plan_inputs([str(tree), str(tree.parent / "other" / "x.png"), str(tree / "a.png")])
    got = [(i.path.relative_to(tree.parent).as_posix(), i.name) for i in planned]
    assert got == [
        ("in/a.png", "a"),
        ("in/sub/B.tif", "sub/B"),  # natural order: capitals first
        ("in/sub/b.png", "sub/b_2"),  # b and B collide where case is ignored
        ("in/sub/x.png", "sub/x"),
        ("in/sub/deeper/c.dcm", "sub/deeper/c"),
        ("other/x.png", "x"),  # its own folder at the top: no clash with sub/x
    ]
    err = capsys.readouterr().err
    assert "notes.txt: not an image file; skipped" in err and ".DS_Store" not in err
    # An output folder inside the input folder is not searched (its overlays are PNGs).
    _png(tree / "out" / "a.png")
    assert all("out/" not in i.name for i in plan_inputs([str(tree)], exclude=tree / "out"))


def test_predict_keeps_the_layout(workdir, tree, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    results = predict.run_predict(workdir, [str(tree)], out)
    assert len(results) == 5 and all("error" not in r for r in results)
    for name in ("a", "sub/B", "sub/b_2", "sub/x", "sub/deeper/c"):
        doc = json.loads((out / f"{name}.json").read_text())
        lm = json.loads((out / f"{name}.labelme.json").read_text())
        # LabelMe resolves imagePath against the folder of its JSON file.
        image = ((out / name).parent / lm["imagePath"]).resolve()
        assert image == pathlib.Path(doc["image"]).resolve() and (out / f"{name}.png").is_file()
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert rows[4]["image"] == "../in/sub/deeper/c.dcm"
    assert not list(out.rglob(".*.tmp"))  # the JSON's temporary file was renamed


def test_skip_existing_resumes(workdir, tree, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "out"
    first = predict.run_predict(workdir, [str(tree)], out)
    (out / "sub" / "b_2.png").unlink()  # cut short before its JSON: not complete
    doc = json.loads((out / "sub" / "x.json").read_text())
    doc["provenance"]["weights_sha256"] = "0" * 64  # another model's prediction
    (out / "sub" / "x.json").write_text(json.dumps(doc))
    _png(tree / "sub" / "new.png", 6)
    predicted = []
    real = predict.predict_radiographs

    def counting(model, rads, batch):
        predicted.extend(pathlib.Path(r.path).name for r in rads)
        return real(model, rads, batch)

    monkeypatch.setattr(predict, "predict_radiographs", counting)
    capsys.readouterr()
    results = predict.run_predict(workdir, [str(tree)], out, skip_existing=True)
    assert sorted(predicted) == ["b.png", "new.png", "x.png"]
    assert "kept 3 existing predictions" in capsys.readouterr().err
    names = [pathlib.Path(r["image"]).name for r in results]
    assert names == ["a.png", "B.tif", "b.png", "new.png", "x.png", "c.dcm"]
    assert results[0] == first[0]  # a kept one comes back as it was written
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 6  # every image, kept or new
    sidecar = json.loads((out / "provenance.json").read_text())
    assert len(sidecar["input_sha256"]) == 6 and all(sidecar["input_sha256"].values())
    # Nothing left to do: nothing is predicted, and the CLI says so.
    predicted.clear()
    code, out_text, err = run_cli(
        capsys, "predict", f"--workdir={workdir}", f"--output_dir={out}", "--skip_existing",
        str(tree),
    )  # fmt: skip
    assert code == 0 and predicted == [] and "kept 6 existing predictions" in err


def test_outputs_stream_and_decoded_images_are_let_go(workdir, tmp_path, monkeypatch):  # noqa: F811
    """A large job holds a few batches: the one predicted, the next one decoding and
    the previous one being written; every batch before those is on disk, not in memory."""
    import gc
    import weakref

    folder = tmp_path / "many"
    for i in range(9):
        _png(folder / f"img{i}.png", i)
    out = tmp_path / "out"
    seen, alive_before = [], []
    real = predict.predict_radiographs

    def watching(model, rads, batch):
        gc.collect()
        alive_before.append(sum(r() is not None for r in seen))
        done = [p for p in out.glob("img*.json") if not p.name.endswith(".labelme.json")]
        # every image before the previous batch is written (that one may be in flight)
        assert len(seen) - 2 <= len(done) <= len(seen), (done, len(seen))
        seen.extend(weakref.ref(r) for r in rads)
        return real(model, rads, batch)

    monkeypatch.setattr(predict, "predict_radiographs", watching)
    results = predict.run_predict(workdir, [str(folder)], out, batch_size=2)
    assert len(results) == 9 and all("error" not in r for r in results)
    assert len(alive_before) == 5  # batches of 2
    # only the previous batch's images, being written, are still referenced (the next
    # batch's are decoding): memory does not grow with the number of images
    assert max(alive_before) <= 2, alive_before
    assert sorted(p.name for p in out.glob("img*.png")) == [f"img{i}.png" for i in range(9)]


def test_nooverlays_writes_no_png_and_resumes_without_them(workdir, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "in"
    for i in range(3):
        _png(folder / f"img{i}.png", i)
    out = tmp_path / "out"
    args = ["predict", f"--workdir={workdir}", f"--output_dir={out}", "--nooverlays"]
    code, text, err = run_cli(capsys, *args, str(folder))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("img")) == [
        f"img{i}{ext}" for i in range(3) for ext in (".json", ".labelme.json")
    ]
    with_png = json.loads((out / "img0.json").read_text())
    # the same model's outputs without overlays are whole for a run without overlays ...
    code, text, err = run_cli(capsys, *args, "--skip_existing", str(folder))
    assert code == 0 and "kept 3 existing predictions" in err, err
    assert json.loads((out / "img0.json").read_text()) == with_png
    # ... but not for one that draws them: those are predicted again, with their PNGs
    code, text, err = run_cli(capsys, *args[:-1], "--skip_existing", str(folder))
    assert code == 0 and "kept" not in err, err
    assert sorted(p.name for p in out.glob("img*.png")) == [f"img{i}.png" for i in range(3)]
