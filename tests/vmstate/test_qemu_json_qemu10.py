"""``vmig analyze --format qemu-10.0`` against QEMU 10.0's own analyze-migration.py.

The script (GPL, never committed) comes from Debian trixie's QEMU source into
``~/.cache/vmig/peer/10.0`` (``vmig.testing.peer``); the streams are real QEMU 10.0 captures made
in the test (``qemu10.py``) plus the QEMU 7.2 fixtures (the 10.0 script reads those too). The
outputs must be byte-identical; the script's own flags (-f, -d, -m, -x) are accepted as is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from qemu10 import capture

from vmig.cli import main
from vmig.testing import fixtures

Q10_PRECOPY = ["pc-10.0-paused", "q35-10.0-smp2", "pc-10.0-running", "pc-10.0-guest", "pc-7.2-on-10.0",
               "pc-9.2-paused"]


@pytest.fixture(scope="module")
def peer10():
    from vmig.testing import peer

    try:
        peer.fetch_analyze_migration("10.0")
    except Exception as e:  # noqa: BLE001 - any fetch failure: fail under CI, else skip
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot fetch QEMU 10.0's analyze-migration.py under CI: {e!r}")
        pytest.skip(f"cannot fetch QEMU 10.0's analyze-migration.py: {e!r}")
    return peer


def vmig_out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc = main(["analyze", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def _fixture_file(tmp_path: Path, name: str) -> Path:
    p = tmp_path / f"{name}.bin"
    p.write_bytes(fixtures.load(name))
    return p


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.peer
@pytest.mark.parametrize("name", Q10_PRECOPY)
def test_qemu_10_format_equals_qemu_10_script(peer10, capsys, name: str) -> None:
    path, _ = capture(name)
    rc, want, err = peer10.run_peer(["-f", str(path)], version="10.0")
    assert rc == 0, err
    assert vmig_out(capsys, "-f", str(path), "--format", "qemu-10.0") == want
    rc, want_desc, err = peer10.run_peer(["-f", str(path), "-d", "desc"], version="10.0")
    assert rc == 0, err
    assert vmig_out(capsys, "-f", str(path), "-d", "desc") == want_desc


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.peer
def test_qemu_10_script_differs_from_7_2_on_a_10_capture(peer10, capsys) -> None:
    """The two dialects really differ on QEMU 10.0 streams (so the test above checks something)."""
    path, _ = capture("q35-10.0-smp2")
    ten = vmig_out(capsys, str(path), "--format", "qemu-10.0")
    seven = vmig_out(capsys, str(path), "--format", "qemu")
    assert ten != seven
    rc, want7, err = peer10.run_peer(["-f", str(path)], version="7.2")
    if rc == 0:  # QEMU 7.2's script reads this stream: vmig's qemu-7.2 output equals it
        assert seven == want7


@pytest.mark.peer
@pytest.mark.parametrize("name", ["pc-paused", "pc-guest", "q35-numa", "pc-running"])
def test_qemu_10_format_on_7_2_fixtures(peer10, capsys, tmp_path: Path, name: str) -> None:
    path = _fixture_file(tmp_path, name)
    rc, want, err = peer10.run_peer(["-f", str(path)], version="10.0")
    assert rc == 0, err
    assert vmig_out(capsys, "-f", str(path), "--format", "qemu-10.0") == want


def test_script_flags_are_accepted(capsys, tmp_path: Path) -> None:
    path = _fixture_file(tmp_path, "pc-paused")
    as_script = vmig_out(capsys, "-f", str(path), "-d", "state", "--format", "qemu")
    assert as_script == vmig_out(capsys, str(path), "--format", "qemu-7.2")
    desc = json.loads(vmig_out(capsys, "-f", str(path), "-d", "desc"))
    assert desc["page_size"] == 4096 and desc["devices"]
    assert main(["analyze", str(path), "-f", str(path)]) == 2
    assert "once" in capsys.readouterr().err


def test_memory_flag_lists_every_page_record(capsys, tmp_path: Path) -> None:
    """-m: one entry per page record of the stream (zero pages as the script writes them)."""
    from vmig.io.streams import iter_events
    from vmig.stream.events import RamRecords

    path = _fixture_file(tmp_path, "pc-paused")
    doc = json.loads(vmig_out(capsys, "-f", str(path), "-m"))
    mem = doc["ram (2)"]["memory"]
    pages: dict[str, int] = {}
    for ev in iter_events(str(path)):
        if isinstance(ev, RamRecords):
            b = ev.batch
            for i, t in enumerate(b.types()):
                if int(t) in (0x02, 0x08):
                    pages["%s (0x%016x)" % (b.blocks[int(b.block[i])].idstr, int(b.addr[i]))] = int(t)
    assert set(mem) == set(pages)
    zero = [k for k, t in pages.items() if t == 0x02]
    assert zero and all(mem[k].startswith("Filled with 0x") for k in zero)
    full = next(k for k, t in pages.items() if t == 0x08)
    assert len(mem[full].split()) == 4096


def test_extract_flag_writes_the_script_files(tmp_path: Path, monkeypatch) -> None:
    path = _fixture_file(tmp_path, "pc-paused")
    out = tmp_path / "x"
    out.mkdir()
    monkeypatch.chdir(out)
    assert main(["analyze", "-f", str(path), "-x"]) == 0
    assert (out / "state.json").exists() and (out / "desc.json").exists()
    assert (out / "pc.ram").stat().st_size == 512 << 20


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.peer
@pytest.mark.parametrize("name", ["pc-10.0-paused", "q35-10.0-smp2"])
def test_extract_flag_equals_qemu_10_script(peer10, tmp_path: Path, monkeypatch, name: str) -> None:
    """-x --format qemu-10.0 writes the files QEMU 10.0's script writes (-x), byte for byte."""
    import subprocess
    import sys

    path, _ = capture(name)
    theirs, mine = tmp_path / "script", tmp_path / "vmig"
    theirs.mkdir()
    mine.mkdir()
    script = peer10.fetch_analyze_migration("10.0")
    res = subprocess.run([sys.executable, str(script), "-f", str(path), "-x"], cwd=theirs,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    monkeypatch.chdir(mine)
    assert main(["analyze", "-f", str(path), "-x", "--format", "qemu-10.0"]) == 0
    want, got = _tree(theirs), _tree(mine)
    assert {"desc.json", "state.json", "pc.ram"} <= set(want)
    assert got.keys() == want.keys()
    for name_ in want:
        assert got[name_] == want[name_], name_
