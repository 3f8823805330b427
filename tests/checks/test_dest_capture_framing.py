"""``vmig check --dest-capture`` on captures whose framing differs: QEMU 7.2's lines (as it printed
them loading these pairs, see test_dest_capture_framing_qemu.py), one per line; the postcopy-ram
capability, which no stream records, comes from OTHER's manifest or --dest-postcopy-ram and is
named when unknown."""

from __future__ import annotations

import shutil

import pytest

from vmig.cli import main
from vmig.testing import fixtures

FAIL = "load of migration failed: Invalid argument"


@pytest.mark.parametrize(("stream", "dest", "line"), [
    ("pc-paused", "pc-nofooter", "Unknown savevm section type 126"),
    ("pc-nofooter", "pc-paused", "Missing section footer for ram"),
    ("pc-paused", "pc-noconfig", "Unknown savevm section type 7"),
    ("pc-noconfig", "pc-paused", "Configuration section missing"),
    ("postcopy-main", "pc-noconfig", "Unknown savevm section type 7"),
    ("postcopy-main", "pc-paused", "RAM postcopy is disabled but have 16 byte advise"),
    ("pc-novmdesc", "pc-paused", None),
    ("pc-paused", "postcopy-main", None),
])
def test_framing_pairs(capsys, stream, dest, line):
    rc = main(["check", str(fixtures.path(stream)), "--dest-capture", str(fixtures.path(dest))])
    out, err = capsys.readouterr()
    if line is None:
        assert rc == 0 and out.strip().endswith(": ok"), err
        return
    assert rc == 1
    assert err.strip().splitlines() == [
        f"destination: destination like {fixtures.path(dest)} would fail to load:", line, FAIL]


def test_postcopy_ram_unknown_is_named(tmp_path, capsys):
    other = tmp_path / "dest.bin.lz4"  # a capture with no manifest beside it
    shutil.copy(fixtures.path("postcopy-main"), other)
    src = str(fixtures.path("postcopy-main"))
    assert main(["check", src, "--dest-capture", str(other)]) == 1
    err = capsys.readouterr().err
    assert "cannot tell whether it enables postcopy-ram" in err
    assert "RAM postcopy is disabled but have 16 byte advise" in err
    assert main(["check", src, "--dest-capture", str(other), "--dest-postcopy-ram", "on"]) == 0
    capsys.readouterr()
    assert main(["check", src, "--dest-capture", str(other), "--dest-postcopy-ram", "off"]) == 1
    assert "would fail to load:\nRAM postcopy is disabled but have 16 byte advise\n" in capsys.readouterr().err
