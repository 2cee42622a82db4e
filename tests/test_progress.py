"""Progress reporting: plain lines in logs (no bar characters), bars only on a
terminal, silence in library calls and nested loops; the commands that report."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from lmjax import progress
from lmjax.data.inspect import summarize
from lmjax.data.phantom import phantom_dataset
from lmjax.predict import run_predict
from tests.test_cli import run_cli
from tests.test_cli_flags import TINY
from tests.test_predict import _phantom, workdir  # noqa: F401  (the tiny trained run)

# What a bar or a terminal control sequence would leave in a captured log.
BAR = re.compile(r"[\r\x1b\u2500-\u259f]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def every_line(monkeypatch):
    """No time limit between plain lines, so fast loops report too."""
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 0.0)
    monkeypatch.delenv("LMJAX_PROGRESS", raising=False)


def _count(n: int, stream, **kw) -> None:
    with progress.Progress(n, "work", unit="step", stream=stream, **kw) as bar:
        for _ in range(n):
            bar.advance()


def test_plain_lines_when_not_a_terminal(every_line):
    log = io.StringIO()
    with progress.shown():
        _count(20, log, every=5)
    lines = log.getvalue().splitlines()
    assert [line.split(" steps")[0] for line in lines] == [
        "work: 5/20", "work: 10/20", "work: 15/20", "work: 20/20", "work: 20/20",
    ]  # fmt: skip
    assert "(25%)" in lines[0] and "ETA" in lines[0] and "steps/s" in lines[0]
    assert lines[-1].endswith("(done)") and "ETA" not in lines[-1]
    assert not BAR.search(log.getvalue())


def test_silent_unless_shown_nested_off_or_fast(every_line, monkeypatch):
    log = io.StringIO()
    _count(20, log)  # a library call: nothing
    with progress.shown():
        with progress.Progress(3, "outer", stream=log) as outer:
            _count(20, log)  # inside another loop: nothing
            outer.advance(3)
        monkeypatch.setenv("LMJAX_PROGRESS", "off")
        _count(20, log)
        monkeypatch.delenv("LMJAX_PROGRESS")
        monkeypatch.setattr(progress, "MIN_INTERVAL_S", 60.0)
        _count(20, log)  # a loop faster than the interval writes nothing, not even its end
    assert [line.split(":")[0] for line in log.getvalue().splitlines()] == ["outer", "outer"]


def test_a_bar_on_a_terminal_and_lines_when_asked(every_line, monkeypatch):
    tty = Terminal()
    with progress.shown(), progress.Progress(4, "work", stream=tty) as bar:
        assert bar.mode == "bar"
        bar.advance(4)
    monkeypatch.setenv("LMJAX_PROGRESS", "plain")
    tty = Terminal()
    with progress.shown():
        _count(4, tty, every=2)
    assert tty.getvalue().startswith("work: 2/4 steps") and not BAR.search(tty.getvalue())


def test_track_counts_and_passes_items_through(every_line):
    log = io.StringIO()
    with progress.shown():
        assert list(progress.track(iter(range(3)), desc="gen", total=3, stream=log)) == [0, 1, 2]
    assert "gen: 3/3 items (100%)" in log.getvalue()


def test_predict_reports_images_and_evaluate_inside_stays_silent(
    workdir,  # noqa: F811
    tmp_path,
    capsys,
    every_line,
):
    for i in range(3):
        pixels = np.round(_phantom((64, 48), i) / 4095 * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    capsys.readouterr()
    with progress.shown():
        run_predict(workdir, [str(tmp_path)], tmp_path / "out", batch_size=2)
    err = capsys.readouterr().err
    assert "predict: 3/3 images (100%)" in err and "(done)" in err
    assert "evaluate:" not in err and not BAR.search(err)


def test_inspect_reports_images(every_line, capsys):
    with progress.shown():
        summarize(phantom_dataset(4, image_size=(32, 32)))
    err = capsys.readouterr().err
    assert "inspect: 4/4 images (100%)" in err and not BAR.search(err)


def test_train_says_where_tensorboard_logs_go(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "train", f"--config={TINY}", f"--workdir={tmp_path}", "--config.train.steps=2",
        "--config.train.eval_every=2", "--config.train.log_every=2",
    )  # fmt: skip
    assert code == 0, err
    hint = next(line for line in out.splitlines() if "TensorBoard" in line)
    assert f"tensorboard --logdir {tmp_path}" in hint
    assert (tmp_path / "tensorboard").is_dir() and not BAR.search(err + out)


def test_evaluate_reports_images(workdir, capsys, every_line):  # noqa: F811
    from lmjax.cli import _evaluate_workdir

    capsys.readouterr()
    with progress.shown():
        report = _evaluate_workdir(str(workdir), None, None)
    err = capsys.readouterr().err
    assert f"evaluate: {len(report['per_image']['images'])}/" in err and not BAR.search(err)
