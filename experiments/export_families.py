"""Which model families `lmjax export` writes as StableHLO and as ONNX (jax2onnx).

For each family: the phantom's tiny config with that family's model block (as its
experiment config sets it, shrunk), trained 2 steps, exported both ways; the
exported programs are run on the same 3 random inputs and compared with the JAX
program (max abs difference of coordinates in px and of confidences).

    python experiments/export_families.py --output=experiments/results/export_families
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import tempfile
import time
import traceback

import numpy as np

from lmjax import exported
from lmjax.configs.phantom import get_config
from lmjax.export import export_workdir
from lmjax.train import loop

ROOT = pathlib.Path(__file__).resolve().parent


def _experiment(name: str, arg: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _models():
    hrnet = _experiment("phantom_hrnet", "mse_cpu").model
    vit = _experiment("isbi2015_vit_lora", "tiny_cpu").model
    vit.remat = False
    swin = _experiment("isbi2015_swin_unetr", "cpu").model
    vgg = _experiment("isbi2015_vgg", "unet").model
    return {"unet": None, "hrnet": hrnet, "vit_pose": vit, "swin_unetr": swin, "vgg": vgg}


def _config(model):
    c = get_config("tiny")
    if model is not None:
        c.model = model
        c.task.deep_supervision = False  # only the U-Net has deep supervision heads
    c.train.steps, c.train.eval_every, c.train.log_every = 2, 2, 2
    return c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default=str(ROOT / "results" / "export_families"))
    ap.add_argument("--families", default="")
    args = ap.parse_args()
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    models = _models()
    wanted = [f for f in args.families.split(",") if f] or list(models)
    rows = []
    x = np.random.default_rng(0).normal(size=(3, 64, 64, 1)).astype(np.float32)
    for family in wanted:
        row: dict = {"family": family}
        with tempfile.TemporaryDirectory() as tmp:
            work = pathlib.Path(tmp) / "run"
            try:
                c = _config(models[family])
                row["model"] = {k: v for k, v in c.model.to_dict().items() if k != "pretrained"}
                loop.train(c, work, log=lambda *_: None)
            except Exception as e:  # a family that does not train at 64x64 is a row too
                row["train_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            ref = None
            for fmt in ("stablehlo", "onnx"):
                path = pathlib.Path(tmp) / f"{fmt}.lmjax"
                t = time.perf_counter()
                try:
                    export_workdir(work, path, fmt=fmt, platforms=("cpu",))
                    coords, conf = exported.read(path).run(x)
                except Exception as e:
                    row[fmt] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:400]}
                    traceback.print_exc()
                    continue
                entry = {
                    "ok": True,
                    "export_s": round(time.perf_counter() - t, 1),
                    "bytes": path.stat().st_size,
                }
                if ref is None:
                    ref = (coords, conf)
                else:
                    entry["max_abs_coords_px"] = float(np.max(np.abs(coords - ref[0])))
                    entry["max_abs_confidence"] = float(np.max(np.abs(conf - ref[1])))
                    rel = np.abs(coords - ref[0]) / np.maximum(np.abs(ref[0]), 1.0)
                    entry["max_rel_coords"] = float(np.max(rel))
                row[fmt] = entry
        rows.append(row)
        print(json.dumps(row), flush=True)
    # A run of some families keeps the other families' rows of an earlier run.
    target = out / "export_families.json"
    earlier = json.loads(target.read_text())["rows"] if target.is_file() else []
    done = {r["family"] for r in rows}
    rows = [r for r in earlier if r["family"] not in done] + rows
    doc = {"machine": platform.node() or "unknown", "cpu_cores": 2, "rows": rows}
    target.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
