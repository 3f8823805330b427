"""``vmig rewrite --virtio-mem/--set/--drop`` edits of a real capture load into real QEMU 7.2
(the capture's command line, ``-incoming defer``), which reports the edited values in
``query-memory-devices``."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmig.cli import main
from vmig.testing import fixtures
from vmig.testing.qemu import load_stream

pytestmark = pytest.mark.qemu
BS = 2 << 20
NAME = "pc-paused"  # 1G backend, 2M blocks, requested-size 128M, nothing plugged


def _edited(lab_dir: Path, capsys, *edits: str) -> Path:  # noqa: ANN001
    src = lab_dir / "in.bin"
    src.write_bytes(fixtures.load(NAME))
    out = lab_dir / "edited.bin"
    assert main(["rewrite", str(src), str(out), *edits]) == 0, capsys.readouterr().err
    return out


def _load(lab_dir: Path, stream: Path) -> dict:
    args = fixtures.resolve_args(fixtures.manifest(NAME)["argv"], lab_dir)
    res = load_stream(args, stream, workdir=lab_dir / "load")
    assert res.ok, res.stderr
    [dev] = res.memory_devices
    return dev["data"]


def test_requested_size_edit_loads(qemu_bin, lab_dir, capsys):
    out = _edited(lab_dir, capsys, "--virtio-mem", "0000:00:02.0:requested-size=512M")
    data = _load(lab_dir, out)
    assert data["requested-size"] == 512 << 20
    assert data["size"] == 0


def test_plugged_edit_loads(qemu_bin, lab_dir, capsys):
    out = _edited(lab_dir, capsys, "--virtio-mem", "0000:00:02.0:plugged=0-63,100-119")
    data = _load(lab_dir, out)
    assert data["size"] == 84 * BS
    assert data["requested-size"] == 128 << 20


def test_set_edit_and_drop_load(qemu_bin, lab_dir, capsys):
    """A raw field edit QEMU reports back (the migrated requested_size), with a dropped section
    (the destination keeps its own reset state for it)."""
    out = _edited(lab_dir, capsys, "--set",
                  "0000:00:02.0/virtio-mem.virtio.decoded.device.requested_size=0x6000000",
                  "--drop", "pcspk")
    data = _load(lab_dir, out)
    assert data["requested-size"] == 0x6000000, data
