"""``vmig rewrite --virtio-mem/--set/--drop`` edits of a real capture load into real QEMU 7.2
(the capture's command line, ``-incoming defer``), which reports the edited values in
``query-memory-devices``."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmig.cli import main
from vmig.io.decoding import decode_bytes
from vmig.stream.constants import MigCmd
from vmig.stream.events import Command
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


def test_plugged_edit_on_early_layout_loads_into_qemu10(lab_dir, capsys):
    """8.0+ machine types keep size and bitmap in ``virtio-mem-device-early``: a plugged= edit of
    a QEMU 10.0 capture (pc-i440fx-10.0) rewrites both sections and QEMU 10.0 loads it."""
    import os

    from vmig.testing.qemu import Qemu
    from vmig.testing.trixie import ensure_trixie_chroot, trixie_qemu_available

    if not trixie_qemu_available() and os.environ.get("VMIG_TRIXIE") != "1":
        pytest.skip("trixie chroot absent (set VMIG_TRIXIE=1 to build it)")
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    trixie = ensure_trixie_chroot()
    args = [("pc-i440fx-10.0" if a == "pc" else a) for a in fixtures.manifest(NAME)["argv"]]
    src = lab_dir / "q10.bin"
    with Qemu(args, workdir=lab_dir, chroot=trixie) as q:
        assert q.qmp("query-version")["qemu"]["major"] == 10
        assert q.migrate_to_file(src)["status"] == "completed"
    out = lab_dir / "edited.bin"
    assert main(["rewrite", str(src), str(out), "--virtio-mem", "0000:00:02.0:plugged=0-9"]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    secs = {s["idstr"]: s for s in __import__("json").loads(capsys.readouterr().out)["sections"]}
    assert "0000:00:02.0/virtio-mem-device-early" in secs
    res = load_stream(args, out, workdir=lab_dir / "load", chroot=trixie)
    assert res.ok, res.stderr
    assert [d["data"]["size"] for d in res.memory_devices] == [10 * BS]


def test_postcopy_stream_edit_loads(qemu_bin, lab_dir, capsys):
    """A postcopy capture (no trailer; device state inside the PACKAGED blob, decoded with the
    bundled pc-i440fx-7.2 schemas): requested-size through the model and a --set of another
    device; QEMU 7.2 with postcopy-ram loads it and reports the new requested-size."""
    src = lab_dir / "pc.bin"
    src.write_bytes(fixtures.load("postcopy-main"))
    out = lab_dir / "edited.bin"
    assert main(["rewrite", str(src), str(out), "--virtio-mem", "0:requested-size=640M",
                 "--set", "mc146818rtc.cmos_index=0x0c"]) == 0, capsys.readouterr().err
    args = fixtures.resolve_args(fixtures.manifest("postcopy-main")["argv"], lab_dir)
    res = load_stream(args, out, workdir=lab_dir, postcopy=True)
    assert res.ok, res.stderr
    [dev] = res.memory_devices
    assert dev["data"]["requested-size"] == 640 << 20


@pytest.mark.parametrize("name", ["pc-nofooter", "pc-noconfig", "pc-novmdesc"])
def test_drop_keeps_framing_qemu_loads(qemu_bin, lab_dir, capsys, name):
    """Dropped sections leave a stream QEMU's loader frames, with or without section footers,
    configuration section or trailer (each capture loaded into QEMU with its own command line)."""
    src = lab_dir / "in.bin"
    src.write_bytes(fixtures.load(name))
    out = lab_dir / "edited.bin"
    assert main(["rewrite", str(src), str(out), "--drop", "pcspk", "--drop", "dma (1)",
                 "--virtio-mem", "0:plugged=5-7"]) == 0, capsys.readouterr().err
    assert out.stat().st_size < src.stat().st_size
    args = fixtures.resolve_args(fixtures.manifest(name)["argv"], lab_dir)
    res = load_stream(args, out, workdir=lab_dir / "load")
    assert res.ok, res.stderr
    assert [d["data"]["size"] for d in res.memory_devices] == [3 * BS]


def _postcopy_dropped(lab_dir: Path, capsys, section: str) -> tuple[bytes, Path]:  # noqa: ANN001
    src = lab_dir / "pc.bin"
    data = fixtures.load("postcopy-main")
    src.write_bytes(data)
    out = lab_dir / "dropped.bin"
    assert main(["rewrite", str(src), str(out), "--drop", section]) == 0, capsys.readouterr().err
    assert out.stat().st_size < len(data)
    return data, out


def _load_postcopy(lab_dir: Path, stream: Path | bytes):  # noqa: ANN202
    args = fixtures.resolve_args(fixtures.manifest("postcopy-main")["argv"], lab_dir)
    return load_stream(args, stream, workdir=lab_dir / "load", postcopy=True,
                       inspect=lambda q: q.qmp("query-status"))


@pytest.mark.parametrize("section", ["serial", "0000:00:02.0/virtio-mem"])
def test_postcopy_drop_inside_packaged_loads(qemu_bin, lab_dir, capsys, section):
    """A device section dropped from postcopy-main's PACKAGED blob (blob length rewritten): QEMU
    7.2 with postcopy-ram loads the stream to completion and runs the blob's last command
    (POSTCOPY_RUN: the runstate leaves inmigrate; paused, as the destination has -S). The kept
    virtio-mem device has the source's state; a dropped one has the state the command line gives
    it (requested-size=256M, nothing plugged)."""
    _, out = _postcopy_dropped(lab_dir, capsys, section)
    res = _load_postcopy(lab_dir, out)
    assert res.ok, res.stderr
    assert res.status["status"] == "completed"
    assert res.inspected["status"] == "paused", res.inspected
    [dev] = res.memory_devices
    got = (dev["data"]["requested-size"], dev["data"]["size"])
    if section == "serial":
        [src] = fixtures.manifest("postcopy-main")["source-query-memory-devices"]
        assert got == (src["data"]["requested-size"], src["data"]["size"]) == (416 << 20, 416 << 20)
    else:
        assert "virtio-mem-pci,id=vm0,memdev=mem0,requested-size=256M" in fixtures.manifest("postcopy-main")["argv"]
        assert got == (256 << 20, 0)


def test_postcopy_drop_with_stale_blob_length_fails(qemu_bin, lab_dir, capsys):
    """The same cut with the PACKAGED command's old blob length kept: QEMU's loader reads past
    the blob into the next record and fails the load (so the test above can tell)."""
    data, out = _postcopy_dropped(lab_dir, capsys, "serial")
    [pkg] = [e.offset for e in decode_bytes(data) if isinstance(e, Command) and e.cmd == MigCmd.PACKAGED]
    new = out.read_bytes()
    assert new[pkg:pkg + 5] == data[pkg:pkg + 5] and new[pkg + 5:pkg + 9] != data[pkg + 5:pkg + 9]
    res = _load_postcopy(lab_dir, new[:pkg + 5] + data[pkg + 5:pkg + 9] + new[pkg + 9:])
    assert not res.ok
    assert "loadvm failed" in res.stderr, res.stderr
