"""Progress of long loops: a bar with ETA on a terminal, plain lines in logs.

Library loops (predict per image, evaluation per batch, inspect, the decode and
embedding caches) report through `track` or `Progress`; nothing is shown unless a
command turned reporting on with `shown()` (the `lmjax` commands do; so can a
script or notebook). Then, on stderr:

- a terminal gets a rich bar (done/total, rate, elapsed, ETA), cleared at the end;
- anything else (a log file, a pipe, a CI job) gets plain lines, one every `every`
  items (default a tenth of the total) but at most one per `min_interval_s`, and a
  last line with the total time, so logs stay readable and a short loop (a
  validation pass of a few seconds) writes nothing at all.

Only the outermost loop reports: one inside another (evaluation batches inside
predict's images) stays silent. With several JAX processes only process 0 reports.
`LMJAX_PROGRESS=off` silences everything, `=plain` forces lines on a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
MIN_INTERVAL_S = 5.0
_state = {"shown": 0, "depth": 0}


@contextlib.contextmanager
def shown(on: bool = True) -> Iterator[None]:
    """Reports progress inside the block (`on=False`: silences it)."""
    before = _state["shown"]
    _state["shown"] = 1 if on else 0
    try:
        yield
    finally:
        _state["shown"] = before


def _primary() -> bool:
    # jax is only asked when a program already imported it: this module stays light.
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """Counts items of one loop; a context manager. `advance(n)` after each step.

    Args:
      total: items expected, or None when unknown (no ETA then).
      desc: what is done, e.g. "predict"; starts each line.
      unit: the items' name, e.g. "image", "batch".
      every: a plain line every this many items (default `total // 10`, at least 1).
      min_interval_s: at most one plain line per this many seconds (None: `MIN_INTERVAL_S`).
      stream: where to write (default stderr); a TTY stream gets the bar.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "item",
        every: int | None = None,
        min_interval_s: float | None = None,
        stream: IO[str] | None = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.every = every or max(1, (total or 100) // 10)
        self.min_interval_s = MIN_INTERVAL_S if min_interval_s is None else min_interval_s
        mode = os.environ.get("LMJAX_PROGRESS", "").lower()
        self.active = bool(_state["shown"]) and _state["depth"] == 0 and mode != "off"
        self.active = self.active and _primary()
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.mode = None if not self.active else ("bar" if tty and mode != "plain" else "plain")
        self._bar: Any = None
        self._start = self._last_line = time.perf_counter()
        self._next = self.every
        self._printed = False

    def __enter__(self) -> Progress:
        _state["depth"] += 1
        if self.mode == "bar":
            from rich import progress as rp
            from rich.console import Console

            columns = (
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TextColumn(self.unit + "s"),
                rp.TimeElapsedColumn(),
                rp.TextColumn("ETA"),
                rp.TimeRemainingColumn(),
            )
            console = Console(file=self.stream)
            self._bar = rp.Progress(*columns, console=console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.desc, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        """`n` more items done."""
        self.done += n
        if self.mode == "bar":
            self._bar.advance(self._task, n)
        elif self.mode == "plain" and self.done >= self._next:
            self._next = (self.done // self.every + 1) * self.every
            now = time.perf_counter()
            if now - self._last_line >= self.min_interval_s:
                self._last_line = now
                self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{self.desc}: {self.done}{of} {self.unit}s"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {rate:.2f} {self.unit}s/s, elapsed {_duration(elapsed)}"
        if not final and self.total is not None and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        print(text + (" (done)" if final else ""), file=self.stream, flush=True)
        self._printed = True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.mode == "plain" and self._printed:  # only a loop that reported ends
            self._line(time.perf_counter(), final=True)
        self.mode = None

    def __exit__(self, *exc) -> None:
        _state["depth"] -= 1
        self.close()


def track(
    items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "item", **kw
) -> Iterator[T]:
    """Yields `items`, counting one per item (`Progress` for the options)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, **kw) as bar:
        for item in items:
            yield item
            bar.advance()


__all__ = ["MIN_INTERVAL_S", "Progress", "shown", "track"]
