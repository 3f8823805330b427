"""``EarlyWriteback``: the ranges it hands to the kernel cover exactly what was written, once
per threshold of bytes, per file; a file closed early gets its pending range started; the
advice never changes a byte of the file."""

from __future__ import annotations

import os

from vmig.io import output
from vmig.io.output import EarlyWriteback


def test_ranges_started_per_threshold(tmp_path, monkeypatch) -> None:
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, off: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append((fd, off, length))
        real(fd, off, length, advice)

    monkeypatch.setattr(output.os, "posix_fadvise", spy)
    wb = EarlyWriteback(threshold=3 * 4096)
    a = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT)
    b = os.open(tmp_path / "b", os.O_RDWR | os.O_CREAT)
    page = bytes(range(256)) * 16
    for i, fd in enumerate([a, b, a, a, b]):  # a gets pages 0, 2, 3; b gets pages 1, 4
        os.pwrite(fd, page, i * 4096)
        wb.wrote(fd, i * 4096, 4096)
    assert calls == [(a, 0, 4 * 4096)]  # a reached the threshold: its whole written span
    wb.forget(b)
    assert calls[1:] == [(b, 4096, 4 * 4096)]
    wb.forget(b)  # nothing pending any more
    assert len(calls) == 2
    os.pwrite(a, page, 8 * 4096)
    wb.wrote(a, 8 * 4096, 4096)  # a new span starts after a start
    wb.forget(a)
    assert calls[2:] == [(a, 8 * 4096, 4096)]
    for fd in (a, b):
        os.close(fd)
    assert (tmp_path / "a").read_bytes()[8 * 4096:] == page
    assert (tmp_path / "b").read_bytes()[4 * 4096:] == page
