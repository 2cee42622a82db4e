"""Each command's own flags, help and errors; the README's synopses; training on a folder."""

from __future__ import annotations

import json
import logging
import pathlib
import re
from importlib import metadata

import numpy as np
import pytest
from PIL import Image

from lmjax import cli, configs
from lmjax.cli import framework
from tests.test_cli import lmjax, run_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = f"{configs.DEFAULT}:tiny"


def own_flags(name: str) -> set[str]:
    command = cli.COMMANDS[name]
    fv = command.flag_values()
    names = {flag.name for flag in framework._flags_in_order(fv)}
    return names | ({"config.FIELD"} if command.config else set())


def listed_flags(help_text: str) -> set[str]:
    """The flags in the left column of a help text."""
    found = re.findall(r"^  --(?:\[no\])?([\w.]+|config\.FIELD)[=\s]", help_text + "\n", re.M)
    return set(found)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_lists_the_command_own_flags_only(name, capsys):
    code, out, err = run_cli(capsys, name, "--help")
    assert code == 0 and err == ""
    command = cli.COMMANDS[name]
    assert out.splitlines()[0] == f"usage: {command.synopsis}"
    assert command.description in out
    assert listed_flags(out) == own_flags(name)
    assert run_cli(capsys, name, "-h")[1] == out
    assert run_cli(capsys, "help", name)[1] == out


def test_commands_do_not_share_flags_they_do_not_take():
    assert "workdir" in own_flags("train") and "infer_batch" not in own_flags("train")
    assert "infer_batch" in own_flags("benchmark") and "workdir" not in own_flags("benchmark")
    assert own_flags("compare") == {
        "output",
        "verbosity",
        "alternative",
        "correction",
        "misses",
        "error_cap",
        "marks",
        "format",
        "resamples",
    }
    assert "data_dir" not in own_flags("compare")  # its --format is the table's, not data's
    for name in cli.COMMANDS:
        assert "verbosity" in own_flags(name)


def test_usage_version_and_no_command(capsys):
    for args in (["--help"], ["help"], ["-h"]):
        code, out, _ = run_cli(capsys, *args)
        assert code == 0 and all(f"  {name} " in out for name in cli.COMMANDS)
    code, out, err = run_cli(capsys)
    assert code == 2 and out == "" and "usage: lmjax COMMAND" in err
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out == f"lmjax {metadata.version('lmjax')}\n"


def test_unknown_command_is_one_line_and_the_usage(capsys):
    code, _, err = run_cli(capsys, "trian")
    assert code == 2
    assert err.splitlines()[0] == "lmjax: error: unknown command 'trian' (did you mean train?)"
    assert "usage: lmjax COMMAND" in err


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["train", "--workdri=x"],
            "lmjax train: error: unknown flag --workdri (did you mean --workdir?)",
        ),
        (["train", "--infer_batch=4"], "lmjax train: error: unknown flag --infer_batch"),
        (["benchmark", "--workdir=x"], "lmjax benchmark: error: unknown flag --workdir"),
        (
            ["inspect", "--config.train.steps=3"],
            "lmjax inspect: error: unknown flag --config.train.steps",
        ),
        (["benchmark", "--steps=many"], "lmjax benchmark: error: flag --steps=many:"),
        (["train", "surplus"], "lmjax train: error: unexpected arguments: surplus"),
        (["evaluate"], "lmjax evaluate: error: --workdir is required"),
    ],
)
def test_flag_mistakes_are_one_line_exit_2(args, line, capsys):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith(line) and err.count("\n") == 1


def test_config_mistakes_are_one_line_exit_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", f"--config={TINY}", "--config.train.stepz=3")
    assert code == 2 and err.count("\n") == 1
    assert "--config" in err and "config.train.stepz" in err and "did you mean steps" in err

    bad = tmp_path / "bad.py"
    bad.write_text(
        "from lmjax.configs import base\n\n"
        "def get_config(arg=''):\n"
        "    c = base.get_config()\n"
        "    c.train.stepz = 3\n"
        "    return c\n"
    )
    code, _, err = run_cli(capsys, "benchmark", f"--config={bad}")
    assert code == 2 and err.count("\n") == 1
    assert str(bad) in err and "config.train.stepz" in err and "did you mean steps" in err

    code, _, err = run_cli(capsys, "compile-check", f"--config={tmp_path / 'none.py'}")
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'none.py'}: no such config file" in err


def test_readme_synopses_are_the_commands_synopses():
    readme = (REPO / "README.md").read_text()
    lines = [
        line.removeprefix("    ")
        for line in readme.splitlines()
        if line.startswith("    lmjax ") and "[" in line  # examples have no brackets
    ]
    seen = set()
    for line in lines:
        name = line.split()[1]
        assert name in cli.COMMANDS, line
        assert line == cli.COMMANDS[name].synopsis
        seen.add(name)
    assert seen == set(cli.COMMANDS)


def test_log_levels_hide_library_info_below_verbosity_1():
    orbax = logging.getLogger("orbax")
    before = orbax.level
    with framework.log_levels(0):
        assert not orbax.isEnabledFor(logging.INFO)
        assert not logging.getLogger("absl").isEnabledFor(logging.INFO)
        assert orbax.isEnabledFor(logging.WARNING)
    with framework.log_levels(1):
        assert orbax.isEnabledFor(logging.INFO)
    assert orbax.level == before


def test_version_of_the_installed_script():
    out = lmjax("--version")
    assert out.returncode == 0 and out.stdout == f"lmjax {metadata.version('lmjax')}\n"


def labelme_folder(root: pathlib.Path, n: int = 8) -> pathlib.Path:
    from lmjax.data.labelme import write_labelme

    root.mkdir()
    names = ("sella", "nasion", "menton")
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 60, (64, 64), dtype=np.uint8)
        points = rng.uniform(8, 56, (3, 2)).astype(np.float32)
        for x, y in points.astype(int):
            image[y - 2 : y + 3, x - 2 : x + 3] = 255
        Image.fromarray(image).save(root / f"case{i}.png")
        write_labelme(
            root / f"case{i}.json", points, names, image_path=f"case{i}.png", image_hw=(64, 64)
        )
    return root


@pytest.mark.slow
def test_train_on_a_labelme_folder(tmp_path, capsys, caplog):
    folder = labelme_folder(tmp_path / "my_cephs")
    workdir = tmp_path / "run"
    code, out, err = run_cli(
        capsys,
        "train",
        f"--data_dir={folder}",
        "--spacing=0.2,0.2",
        f"--config={TINY}",
        "--config.train.steps=2",
        "--config.train.eval_every=2",
        "--config.train.log_every=1",
        "--config.data.val_fraction=0.25",
        f"--workdir={workdir}",
    )
    assert code == 0, err
    names = json.loads((workdir / "landmarks.json").read_text())["names"]
    assert sorted(names) == ["menton", "nasion", "sella"]
    data = json.loads((workdir / "config.json").read_text())["data"]
    assert data["data_dir"] == str(folder) and data["spacing"] == [0.2, 0.2]
    report = json.loads((workdir / "eval.json").read_text())
    assert report["unit"] == "mm" and report["split"] == "val"
    assert f"on {folder} into {workdir}" in out
    assert out.rstrip().endswith(f"on val; outputs in {workdir}")
    library_info = [
        r for r in caplog.records if r.levelno < logging.WARNING and r.name.startswith("absl")
    ]
    assert library_info == []


def test_training_error_is_exit_1_and_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    from lmjax.train import loop

    def diverge(config, workdir, **_):
        raise loop.TrainingError("non-finite loss or gradient at or before step 3")

    monkeypatch.setattr(loop, "train", diverge)
    args = ("train", f"--config={TINY}", f"--workdir={tmp_path}")
    code, _, err = run_cli(capsys, *args)
    assert code == 1
    assert err == "lmjax train: error: non-finite loss or gradient at or before step 3\n"

    def bug(config, workdir, **_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(loop, "train", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(list(args))


def test_data_dir_replaces_the_config_dataset(tmp_path):
    from lmjax.cli import model_commands

    command = cli.COMMANDS["train"]
    config = configs.resolve(
        {"data": {"data_dir": "/isbi", "format": "isbi2015", "image_dir": "/isbi/img"}}
    )

    def train_config(*args):
        inv = framework.parse(command, command.flag_values(), list(args))
        return model_commands.with_data_flags(config, inv).data

    assert train_config().format == "isbi2015"  # no data flag: the config's dataset
    data = train_config("--data_dir=/mine", "--ground_truth=mean", "--strict")
    assert (data.data_dir, data.format, data.image_dir, data.spacing) == ("/mine", "", "", ())
    assert data.ground_truth == "mean" and data.strict
    # A format given for the folder stays, as a flag or as a config override.
    assert train_config("--data_dir=/mine", "--format=csv").format == "csv"
    kept = train_config("--data_dir=/mine", "--config.data.image_dir=/isbi/img")
    assert kept.image_dir == "/isbi/img"
