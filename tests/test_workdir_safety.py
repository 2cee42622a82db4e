"""`lmjax evaluate` and `lmjax predict` execute nothing from a workdir: they read its
JSON config as data, even from inside the workdir and with code planted there; and
they write nothing into it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lmjax.configs.phantom import get_config
from lmjax.data.phantom import render_phantom
from lmjax.train import loop

# Each planted piece of code would leave its marker file if it ran.
PLANTED = {
    "config.py": "open({marker!r}, 'w').write('config.py')\n"
    "def get_config(arg=''):\n    raise SystemExit('a workdir config.py was executed')\n",
    "numpy.py": "open({marker!r}, 'w').write('numpy.py')\n",  # would shadow numpy from cwd
    "sitecustomize.py": "open({marker!r}, 'w').write('sitecustomize.py')\n",
}
CODE_STRING = "__import__('os').system('touch {marker}')"


def _lmjax() -> str:
    # The installed command: unlike `python -m`, it does not put the cwd on sys.path.
    found = shutil.which("lmjax", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("the lmjax command is not installed beside this Python")
    return found


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_evaluate_and_predict_run_nothing_from_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    config = get_config("tiny")
    with config.unlocked():
        config.data.augment = ""
        config.train.steps = config.train.eval_every = config.train.log_every = 2
    loop.train(config, workdir, log=lambda *_: None)
    markers = []
    for name, code in PLANTED.items():
        markers.append(workdir / f"RAN_{name}")
        (workdir / name).write_text(code.format(marker=str(markers[-1])))
    saved = json.loads((workdir / "config.json").read_text())
    markers.append(workdir / "RAN_json_string")
    code = CODE_STRING.format(marker=markers[-1])
    saved["paper"] = code  # free text, shown, never evaluated
    saved["model"]["pretrained"] = code  # a weights path: not read when restoring
    (workdir / "config.json").write_text(json.dumps(saved))
    image = tmp_path / "x.png"
    Image.fromarray(
        np.round(render_phantom(7, 0, image_size=(96, 80))[0] / 4095 * 255).astype(np.uint8)
    ).save(image)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    before = _tree(workdir)
    for args in (
        ["evaluate", f"--workdir={workdir}"],
        ["predict", f"--workdir={workdir}", f"--output_dir={tmp_path / 'out'}", str(image)],
    ):
        out = subprocess.run(
            [_lmjax(), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert not [m.name for m in markers if m.exists()], args
    assert (tmp_path / "out" / "x.json").is_file()
    assert _tree(workdir) == before  # nothing in the run was written, touched or removed
