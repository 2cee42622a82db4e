"""The report in a real browser: headless Chromium loads a page from disk, gives
back its DOM after the scripts ran, the console messages it logged, and a
screenshot. The browser test and `experiments/report/screenshot.py` both use it.

Chromium writes every console message (log, warning, error, uncaught exception,
a resource that failed to load) to stderr with `--enable-logging=stderr`, as
`...:CONSOLE...] "message", source: URL (line)`, without its level: the report
logs nothing, so any console message is a fault.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from typing import NamedTuple

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CONSOLE = re.compile(r'CONSOLE[^\]]*\] "(.*)", source: (.*)$')


class Rendered(NamedTuple):
    dom: str  # the page's DOM after loading, as HTML
    console: list[str]  # every console message, "message (source)"


def find_chromium() -> str | None:
    """`$LMJAX_CHROMIUM`, else the first of CANDIDATES on the PATH; None when absent."""
    env = os.environ.get("LMJAX_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def console_messages(stderr: str) -> list[str]:
    """The console messages in Chromium's stderr log."""
    out = []
    for line in stderr.splitlines():
        m = _CONSOLE.search(line)
        if m:
            out.append(f"{m.group(1)} ({m.group(2)})")
    return out


def _run(page: pathlib.Path, extra: list[str], *, timeout: float):
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(
            "no Chromium found (install the chromium package, or set LMJAX_CHROMIUM)"
        )
    url = pathlib.Path(page).resolve().as_uri()
    # A fresh profile per run: parallel runs must not share one (it is locked).
    with tempfile.TemporaryDirectory(prefix="lmjax_chromium_") as profile:
        args = [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # root in containers has no user namespace for the sandbox
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            url,
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done


def load(page: str | os.PathLike, *, timeout: float = 120) -> Rendered:
    """The DOM of `page` after its scripts ran, and its console messages."""
    done = _run(pathlib.Path(page), ["--dump-dom"], timeout=timeout)
    return Rendered(done.stdout, console_messages(done.stderr))


def screenshot(
    page: str | os.PathLike,
    output: str | os.PathLike,
    *,
    size: tuple[int, int] = (1280, 1600),
    section: str = "",
    timeout: float = 120,
) -> Rendered:
    """Writes a PNG of the top of `page` in a `size` (width, height) window; with
    `section` (an element id, e.g. "gallery-section") of a copy of the page that
    shows that section alone (headless Chromium paints nothing when scrolled to an
    anchor). Returns the console messages (no DOM)."""
    out = pathlib.Path(output).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = [f"--screenshot={out}", f"--window-size={size[0]},{size[1]}"]
    with tempfile.TemporaryDirectory(prefix="lmjax_page_") as tmp:
        page = pathlib.Path(page)
        if section:
            text = page.read_text(encoding="utf-8")
            hide = f"<style>body>*:not(#{section}){{display:none}}</style></head>"
            page = pathlib.Path(tmp) / page.name
            page.write_text(text.replace("</head>", hide, 1), encoding="utf-8")
        done = _run(page, extra, timeout=timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {done.stderr[-2000:]}")
    return Rendered("", console_messages(done.stderr))
