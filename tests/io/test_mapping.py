"""vmig.io.mapping: the early mapping of STREAM arguments and its page-table warmer."""

from __future__ import annotations

import os
import threading

import pytest

from vmig.cli import main
from vmig.io import mapping
from vmig.io.streams import open_source
from vmig.testing import fixtures


def _warmers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "vmig-warm")


def test_early_mapping_is_adopted_by_the_reader_of_that_file(tmp_path):
    f = tmp_path / "s.bin"
    f.write_bytes(fixtures.load("pc-paused"))
    mapping.open_early(str(f))
    assert len(mapping._early) == 1
    with open_source(str(f)) as src:
        assert not mapping._early  # adopted, not mapped a second time
        assert bytes(src.mapped[:4]) == b"QEVM"
        assert src._file is not None and src._file.path == str(f)
    assert _warmers() == 0  # the warmer stopped with the source


def test_a_changed_file_is_not_adopted(tmp_path):
    f = tmp_path / "s.bin"
    f.write_bytes(fixtures.load("pc-paused"))
    mapping.open_early(str(f))
    with open(f, "ab") as fh:
        fh.write(b"\0")  # size and mtime change: the early mapping describes another file
    with open_source(str(f)) as src:
        assert bytes(src.mapped[-1:]) == b"\0"
    assert len(mapping._early) == 1
    mapping.close_early()
    assert not mapping._early and _warmers() == 0


@pytest.mark.parametrize("what", ["missing", "dir", "fifo", "empty", "-", "x.lz4"])
def test_open_early_ignores_what_it_cannot_map(tmp_path, what):
    p = tmp_path / what
    if what == "dir":
        p.mkdir()
    elif what == "fifo":
        os.mkfifo(p)
    elif what == "empty":
        p.write_bytes(b"")
    mapping.open_early(what if what in ("-",) else str(p))
    assert not mapping._early


def test_cli_maps_the_stream_early_and_leaves_nothing_behind(capsys):
    path = str(fixtures.path("pc-paused"))  # .lz4: not mapped (decompressed in chunks)
    assert main(["ram", path]) == 0
    assert not mapping._early and _warmers() == 0


def test_views_outlive_the_source(tmp_path):
    f = tmp_path / "s.bin"
    data = fixtures.load("pc-paused")
    f.write_bytes(data)
    with open_source(str(f)) as src:
        view = src.mapped[100:200]
        keep = memoryview(view)
    assert bytes(keep) == data[100:200]  # the mapping stays until its last view goes


def test_without_warmer_pages_are_still_dropped_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("VMIG_WARM", "0")
    f = tmp_path / "s.bin"
    f.write_bytes(os.urandom(1 << 20) * 80)
    mf = mapping.MappedFile.open(str(f))
    assert mf is not None and mf._thread is None
    sum(mf.mmap[i] for i in range(0, mf.size, 4096))  # touch every page
    mf.consumed(mf.size)
    assert mf._dropped >= mf.size - mapping.DROP_WINDOW
    mf.close()
