"""QEMU 10.0 from the Debian trixie chroot (vmig.testing.qemu ``chroot=``): a 10.0 capture of a
``pc-i440fx-7.2`` VM loads into the host's QEMU 7.2, and the runner leaves no bind mounts behind.

Runs when the chroot exists (``~/.cache/vmig/trixie``) or ``VMIG_TRIXIE=1`` asks to build it
(debootstrap, ~40 s and ~380 MB); otherwise skipped: CI does not build it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmig.testing import fixtures
from vmig.testing.qemu import Qemu, load_stream, qemu_version

pytestmark = pytest.mark.qemu


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return [line.split()[4] for line in fh if line.split()[4].startswith(str(root) + "/")]


def test_qemu10_capture_loads_into_qemu72(trixie: Path, qemu_bin: str, lab_dir: Path) -> None:
    assert qemu_version(chroot=trixie).startswith("QEMU emulator version 10.0")
    args = [a.replace("pc", "pc-i440fx-7.2") if a == "pc" else a
            for a in fixtures.manifest("pc-paused")["argv"]]
    assert "pc-i440fx-7.2" in args
    out = lab_dir / "q10.bin"
    with Qemu(args, workdir=lab_dir, chroot=trixie) as q:
        assert q.argv[:2] == ["chroot", str(trixie)]
        assert q.qmp("query-version")["qemu"]["major"] == 10
        assert _mounts_under(trixie)  # /proc, /dev and the work folder are bound while it runs
        info = q.migrate_to_file(out)
    assert info["status"] == "completed"
    assert _mounts_under(trixie) == []
    data = out.read_bytes()
    assert data[:8] == b"QEVM\x00\x00\x00\x03" and b"pc-i440fx-7.2" in data[:40]
    res = load_stream(args, data, workdir=lab_dir, binary=qemu_bin)
    assert res.ok, res.stderr
    assert res.memory_devices == fixtures.manifest("pc-paused")["query-memory-devices"]
