"""`lmjax export` and exported models: the same predictions as the workdir, without
the training code; metadata, provenance, refusals, the CLI, the API and ONNX."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import lmjax
from lmjax import conformal, exported, provenance, tta
from lmjax.data.types import LandmarkDataError
from lmjax.export import ExportError, export_workdir, zoom_about_centre
from lmjax.predict import run_predict
from lmjax.train import setup
from lmjax.train.restore import read_config
from tests.test_cli import run_cli
from tests.test_predict import _doc_coords, _phantom, images, workdir  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(workdir, tmp_path_factory) -> pathlib.Path:  # noqa: F811
    path = tmp_path_factory.mktemp("export") / "model.lmjax"
    export_workdir(workdir, path)
    return path


def _docs(results) -> dict[str, dict]:
    return {pathlib.Path(r["image"]).name: r for r in results}


def test_exported_predictions_equal_the_workdirs(workdir, model, images, tmp_path):  # noqa: F811
    by_workdir = _docs(run_predict(workdir, [str(images)], tmp_path / "w"))
    by_model = _docs(run_predict(model, [str(images)], tmp_path / "m"))
    assert sorted(by_model) == ["big.png", "eight.png", "sixteen.png", "small.png"]
    for name, doc in by_model.items():
        want = by_workdir[name]
        np.testing.assert_allclose(_doc_coords(doc), _doc_coords(want), rtol=0, atol=1e-3)
        conf = [p["confidence"] for p in doc["landmarks"]]
        np.testing.assert_allclose(conf, [p["confidence"] for p in want["landmarks"]], atol=1e-4)
        assert doc["image_size"] == want["image_size"] and doc["measurements"].keys() == (
            want["measurements"].keys()
        )
        stem = name.removesuffix(".png")
        for ext in (".json", ".png", ".labelme.json"):
            assert (tmp_path / "m" / f"{stem}{ext}").is_file()
        # The run's provenance, plus which file and its hash.
        origin = dict(doc["provenance"])
        assert origin.pop("exported_model") == str(model.resolve())
        assert origin.pop("exported_sha256") == provenance.file_sha256(model)
        assert origin == want["provenance"]
    assert (tmp_path / "m" / "predictions.csv").is_file()


def test_metadata_holds_what_the_runtime_needs(workdir, model):  # noqa: F811
    meta = exported.read_metadata(model)
    config = read_config(workdir)
    lset = setup.load_landmark_set(workdir, config)
    assert meta["format"] == exported.FORMAT and meta["format_version"] == 1
    with zipfile.ZipFile(model) as z:
        assert sorted(z.namelist()) == ["metadata.json", "program.bin"]
    assert meta["program"]["serialization"] == "jax.export"
    assert meta["program"]["platforms"] == ["cpu", "cuda"]
    assert meta["program"]["inputs"] == {"images": ["batch", 64, 64, 1]}
    prep = meta["preprocessing"]
    assert prep["input_size"] == [64, 64] and prep["cache_long_side"] == 80
    assert (prep["fit"], prep["normalize"]) == (config.data.fit, config.data.normalize)
    assert tuple(meta["landmark_set"]["names"]) == lset.names
    assert exported.read(model).landmark_set == lset
    assert meta["extractor"]["name"] == config.task.extractor
    assert meta["stages"] == ["global"] and meta["refine"] == {
        "in_workdir": False,
        "exported": False,
    }
    assert meta["conformal"] is None and meta["batch_size"] == config.train.batch_size
    run = provenance.run(workdir, meta["provenance"]["checkpoint_step"], stages=("global",))
    assert meta["provenance"] == run and run["weights_sha256"] is not None
    assert meta["config"]["data"]["input_size"] == [64, 64]


def test_the_program_takes_any_batch(model):
    m = exported.read(model)
    x = np.random.default_rng(0).normal(size=(3, 64, 64, 1)).astype(np.float32)
    coords, conf = m.run(x)
    assert coords.shape == (3, 16, 2) and conf.shape == (3, 16)
    one, one_conf = m.run(x[1:2])
    np.testing.assert_allclose(one[0], coords[1], atol=1e-4)
    np.testing.assert_allclose(one_conf[0], conf[1], atol=1e-6)


def test_the_runtime_never_imports_the_training_code(model, images):  # noqa: F811
    script = f"""
import sys
from lmjax.predict import load_model, predict_radiographs
from lmjax.data.image_io import read_radiograph
m = load_model({str(model)!r})
(p,) = predict_radiographs(m, [read_radiograph({str(images / "eight.png")!r})], 2)
assert p.coords.shape == (16, 2)
heavy = ("lmjax.train", "lmjax.models", "lmjax.task", "flax", "optax", "orbax", "grain")
print(sorted(n for n in sys.modules if n.split(".")[0] in {{"flax", "optax", "orbax", "grain"}}
             or any(n == h or n.startswith(h + ".") for h in heavy)))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_predictor_loads_an_exported_file(workdir, model):  # noqa: F811
    pixels = np.round(_phantom((120, 100), 3) / 4095 * 255).astype(np.uint8)
    from_file = lmjax.Predictor.load(model)(pixels, spacing_mm=(0.5, 0.25))
    from_run = lmjax.Predictor.load(workdir)(pixels, spacing_mm=(0.5, 0.25))
    assert from_file.names == from_run.names
    np.testing.assert_allclose(from_file.landmarks_px, from_run.landmarks_px, atol=1e-3)
    np.testing.assert_allclose(from_file.landmarks_mm, from_file.landmarks_px * [0.25, 0.5])
    assert from_file.measurements.keys() == from_run.measurements.keys()
    assert from_file.provenance["checkpoint_step"] == from_run.provenance["checkpoint_step"]
    with pytest.raises(LandmarkDataError, match="fixed when it is exported"):
        lmjax.Predictor.load(model, flip_tta=True)


def test_bad_files_are_refused(tmp_path):
    other = tmp_path / "model.lmjax"
    other.write_bytes(b"not a zip")
    with pytest.raises(FileNotFoundError, match="not a model written by lmjax export"):
        lmjax.Predictor.load(other)
    with pytest.raises(LandmarkDataError, match="not a model written by lmjax export"):
        exported.read(other)
    newer = tmp_path / "newer.lmjax"
    with zipfile.ZipFile(newer, "w") as z:
        z.writestr("metadata.json", json.dumps({"format": exported.FORMAT, "format_version": 99}))
    with pytest.raises(LandmarkDataError, match="format 99 is newer"):
        exported.read(newer)


def test_flip_tta_is_in_the_program(workdir, images, tmp_path):  # noqa: F811
    path = tmp_path / "flip.lmjax"
    meta = export_workdir(workdir, path, flip_tta=True, platforms=("cpu",))
    assert meta["stages"] == ["global", "flip_tta"]
    files = [str(images / "eight.png"), str(images / "sixteen.png")]
    want = _docs(run_predict(workdir, files, tmp_path / "w", flip_tta=True))
    got = _docs(run_predict(path, files, tmp_path / "m"))
    for name in want:
        np.testing.assert_allclose(_doc_coords(got[name]), _doc_coords(want[name]), atol=1e-3)


def test_scale_tta_is_in_the_program(workdir, images, tmp_path):  # noqa: F811
    x = np.random.default_rng(2).normal(size=(2, 64, 48, 1)).astype(np.float32)
    for s in (0.75, 0.9, 1.1):  # the jnp zoom is SciPy's, to float rounding
        np.testing.assert_allclose(zoom_about_centre(x, s), tta.zoom_about_centre(x, s), atol=2e-6)
    path = tmp_path / "scales.lmjax"
    meta = export_workdir(workdir, path, flip_tta=True, tta_scales=(0.9, 1.1), platforms=("cpu",))
    assert meta["stages"] == ["global", "flip_tta", "scale_tta"]
    assert meta["tta_scales"] == [0.9, 1.1]
    files = [str(images / "eight.png"), str(images / "sixteen.png")]
    want = _docs(run_predict(workdir, files, tmp_path / "w", flip_tta=True, tta_scales=(0.9, 1.1)))
    got = _docs(run_predict(path, files, tmp_path / "m"))
    for name in want:
        np.testing.assert_allclose(_doc_coords(got[name]), _doc_coords(want[name]), atol=1e-3)


def test_what_cannot_be_exported_is_refused(workdir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["task"]["extractor"] = "centroid"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="extractor 'centroid' runs on the host"):
        export_workdir(run, tmp_path / "m.lmjax")
    assert not (tmp_path / "m.lmjax").exists()
    with pytest.raises(ExportError, match="format 'tflite'"):
        export_workdir(workdir, tmp_path / "m.lmjax", fmt="tflite")


def test_conformal_radii_travel_with_the_model(workdir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    names = list(setup.load_landmark_set(run).names)
    radius = {n: 1.0 + i for i, n in enumerate(names)}
    conformal.save({"landmarks": names, "radius": radius, "unit": "mm", "nominal": 0.9}, run)
    path = tmp_path / "model.lmjax"
    export_workdir(run, path, platforms=("cpu",))
    shutil.rmtree(run)  # the file alone carries them
    result = lmjax.Predictor.load(path)(np.zeros((50, 40), np.uint8) + 9, spacing_mm=0.5)
    assert result.coverage == 0.9 and result.radius_mm[2] == 3.0


def test_cli_export_then_predict_model(workdir, images, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "cli.lmjax"
    code, out, err = run_cli(
        capsys, "export", f"--workdir={workdir}", f"--output={path}", "--platforms=cpu"
    )
    assert code == 0, err
    assert f"wrote {path}: jax.export program (global, 16 landmarks, input 64x64) for cpu" in out
    args = [f"--model={path}", f"--output_dir={tmp_path / 'out'}", str(images / "small.png")]
    code, out, err = run_cli(capsys, "predict", *args)
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "small.json").read_text())
    assert doc["provenance"]["exported_sha256"] == provenance.file_sha256(path)
    code, _, err = run_cli(capsys, "predict", f"--output_dir={tmp_path}", str(images))
    assert code == 2 and "one of --workdir and --model" in err
    code, _, err = run_cli(capsys, "predict", f"--model={workdir}", f"--output_dir={tmp_path}", "x")
    assert code == 2 and "not a file (a training folder goes to --workdir)" in err
    code, _, err = run_cli(capsys, "export", f"--workdir={workdir}")
    assert code == 2 and "--workdir and --output are required" in err
    code, _, err = run_cli(
        capsys, "export", f"--workdir={workdir}", f"--output={path}", "--platforms=cpu,gpu"
    )
    assert code == 2 and "--platforms: unknown gpu; choose from cpu, cuda, rocm, tpu" in err


def test_onnx_export_agrees_with_jax(workdir, model, images, tmp_path):  # noqa: F811
    pytest.importorskip("jax2onnx", reason="ONNX export needs jax2onnx (pip install lmjax[onnx])")
    pytest.importorskip("onnxruntime", reason="ONNX models run on onnxruntime")
    path = tmp_path / "model.onnx.lmjax"
    meta = export_workdir(workdir, path, fmt="onnx")
    assert meta["program"]["serialization"] == "onnx"
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["metadata.json", "model.onnx"]
    jax_model, onnx_model = exported.read(model), exported.read(path)
    x = np.random.default_rng(1).normal(size=(3, 64, 64, 1)).astype(np.float32)
    (c1, f1), (c2, f2) = jax_model.run(x), onnx_model.run(x)
    np.testing.assert_allclose(c2, c1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f2, f1, rtol=1e-4, atol=1e-4)
    result = lmjax.Predictor.load(path)(str(images / "eight.png"))
    want = lmjax.Predictor.load(model)(str(images / "eight.png"))
    np.testing.assert_allclose(result.landmarks_px, want.landmarks_px, rtol=1e-4, atol=2e-3)


@pytest.fixture(scope="module")
def refined_run(workdir, tmp_path_factory) -> pathlib.Path:  # noqa: F811
    """The tiny run with a 3-step refinement stage (its numbers do not matter here)."""
    from lmjax.train import refine

    run = tmp_path_factory.mktemp("refined") / "run"
    shutil.copytree(workdir, run)
    spec = dict(read_config(run).refine)
    spec.update(spacing_mm=2.0, patch_size=16, features=4, num_levels=2, steps=3)
    spec.update(eval_every=3, batch_size=2, jitter_mm=4.0)
    refine.train_refine(run, refine_config=spec, log=lambda *_: None)
    return run


def test_the_refinement_stage_is_in_the_program(refined_run, tmp_path):
    path = tmp_path / "refined.lmjax"
    meta = export_workdir(refined_run, path, platforms=("cpu",))
    assert meta["stages"] == ["global", "refine"] and meta["refine"]["exported"]
    assert meta["program"]["coords_frame"] == "original"
    assert meta["provenance"]["refine_weights_sha256"] is not None
    # Two sizes and two spacings: fine images on canvases of different shapes.
    pixels = [np.round(_phantom(hw, i) / 4095 * 255).astype(np.uint8) for i, hw in
              enumerate([(120, 100), (200, 150)])]  # fmt: skip
    spacing = [(1.5, 1.5), (2.5, 2.0)]
    want = lmjax.Predictor.load(refined_run)(pixels, spacing_mm=spacing)
    got = lmjax.Predictor.load(path)(pixels, spacing_mm=spacing)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.landmarks_px, b.landmarks_px, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
    # The refinement reads the image at its spacing: another spacing, other patches.
    for model in (refined_run, path):
        finer = lmjax.Predictor.load(model)(pixels[0], spacing_mm=0.5)
        assert not np.allclose(finer.landmarks_px, got[0].landmarks_px, atol=1e-2)
    # The global model alone differs: the refinement was applied.
    plain = export_workdir(refined_run, tmp_path / "plain.lmjax", refine=False)
    assert plain["refine"] == {"in_workdir": True, "exported": False}
    assert plain["stages"] == ["global"]
    alone = lmjax.Predictor.load(tmp_path / "plain.lmjax")(pixels, spacing_mm=spacing)
    assert not np.allclose(alone[0].landmarks_px, got[0].landmarks_px, atol=1e-2)
