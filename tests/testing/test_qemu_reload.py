"""Real QEMU 7.2 loads committed fixtures back and reports the captured memory-device state.

Also exercises the lab driver itself (migrate_to_file / load_stream / HMP) on a paused VM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmig.testing import fixtures
from vmig.testing.qemu import Qemu, load_stream

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("name", ["pc-paused", "pc-guest"])
def test_fixture_reloads_with_same_memory_devices(name: str, qemu_bin: str, lab_dir: Path) -> None:
    man = fixtures.manifest(name)
    res = load_stream(fixtures.resolve_args(man["argv"], lab_dir), fixtures.load(name),
                      workdir=lab_dir, binary=qemu_bin)
    assert res.ok, res.stderr
    assert res.status is not None and res.status["status"] == "completed"
    assert res.memory_devices == man["query-memory-devices"]
    assert res.hmp_memory_devices == man["hmp-info-memory-devices"]


def test_mismatched_destination_is_rejected_with_qemus_message(qemu_bin: str, lab_dir: Path) -> None:
    args = fixtures.manifest("pc-paused")["argv"]
    moved = [a + ",memaddr=0x140000000" if a.startswith("virtio-mem-pci") else a for a in args]
    assert moved != args
    res = load_stream(moved, fixtures.load("pc-paused"), workdir=lab_dir, binary=qemu_bin)
    assert not res.ok
    assert "Property 'memaddr' changed from 0x100000000 to 0x140000000" in res.stderr
    assert res.returncode not in (None, 0)
    assert res.memory_devices == []


def test_driver_migrates_a_paused_vm_to_a_file(qemu_bin: str, lab_dir: Path) -> None:
    args = fixtures.manifest("pc-paused")["argv"]
    out = lab_dir / "out.bin"
    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        assert q.argv[0] == qemu_bin and "-qmp" in q.argv
        assert q.qmp("query-status")["status"] == "prelaunch"
        assert 'Memory device [virtio-mem]: "vm0"' in q.hmp("info memory-devices")
        info = q.migrate_to_file(out)
    assert info["status"] == "completed"
    data = out.read_bytes()
    assert data[:8] == b"QEVM\x00\x00\x00\x03"
    # header + CONFIGURATION + ram START are identical for the same command line; the number of
    # RAM PART sections is not (QEMU splits the pass on a time budget), so lengths may differ
    ref = fixtures.load("pc-paused")
    assert data[:0x1a] == ref[:0x1a]
    assert b'"vmsd_name": "virtio-mem"' in data[-120_000:]
    assert q.running is False
