"""A small progress bar on stderr for long CLI work (only on a TTY, only after one second).

Library code takes an optional ``progress(done)`` callback; the CLI passes a :class:`Progress`.
Nothing is printed when stderr is not a terminal, or before the work has run for ``delay``
seconds, so short commands and pipelines never see it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["Progress", "input_size", "with_progress", "DELAY"]

DELAY = 1.0  # seconds of silence before a bar appears (default of Progress)


def input_size(path: str) -> int | None:
    """Size of a regular uncompressed input file (for the progress bar), else None."""
    if path == "-" or path.endswith(".lz4"):
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def with_progress(events: Iterable[Any], path: str, label: str) -> Iterator[Any]:
    """Yield the decoder's ``events`` of the input ``path``, drawing how far the RAM records
    reach (a :class:`Progress` bar: TTY only, after a second); the bar is cleared at the end."""
    with Progress(input_size(path), label) as prog:
        for ev in events:
            if type(ev).__name__ == "RamRecords":
                prog(ev.offset + ev.length)
            yield ev


class Progress:
    """Callable progress reporter: ``p(done)`` updates, ``p.close()`` clears the line.

    Args:
        total: the amount of work (bytes) if known, else None (shows bytes done).
        label: a short prefix.
        stream: where to draw (stderr by default).
        delay: seconds of silence before the bar appears.
        enabled: force on/off; default: ``stream.isatty()``.
    """

    def __init__(self, total: int | None, label: str = "", *, stream: TextIO | None = None,
                 delay: float | None = None, enabled: bool | None = None) -> None:
        self.total = total if total and total > 0 else None
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.start = time.monotonic()
        self.delay = DELAY if delay is None else delay
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.delay or now - self._last < 0.1:
            return
        self._last = now
        mb = done / 1e6
        rate = mb / max(now - self.start, 1e-9)
        if self.total:
            frac = min(done / self.total, 1.0)
            width = 30
            fill = int(frac * width)
            text = f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% {mb:,.0f} MB {rate:,.0f} MB/s"
        else:
            text = f"\r{self.label} {mb:,.0f} MB {rate:,.0f} MB/s"
        self.stream.write(text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
