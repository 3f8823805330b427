"""``vmig check --dest-capture OTHER`` predicts what QEMU 7.2 says when the stream is loaded into
the VM that wrote OTHER (same command line): both are run on the same pairs of captures."""

from __future__ import annotations

import pytest

from vmig.cli import main
from vmig.testing import fixtures
from vmig.testing.qemu import load_stream


@pytest.mark.parametrize("stream, dest", [
    ("pc-paused", "q35-numa"),   # machine type
    ("pc-guest", "pc-paused"),   # a section the destination lacks (serial)
    ("pc-paused", "pc-guest"),   # loads
    ("q35-numa", "pc-guest"),    # machine type the other way round
])
def test_dest_capture_prediction_matches_qemu(qemu_bin, lab_dir, capsys, stream, dest):
    args = fixtures.resolve_args(fixtures.manifest(dest)["argv"], lab_dir)
    res = load_stream(args, fixtures.load(stream), workdir=lab_dir)
    rc = main(["check", str(fixtures.path(stream)), "--dest-capture", str(fixtures.path(dest))])
    out, err = capsys.readouterr()
    if res.ok:
        assert rc == 0 and out.strip().endswith(": ok")
        return
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    assert rc == 1
    assert err.strip().endswith("would fail to load:\n" + "\n".join(qemu_lines)), err


@pytest.mark.parametrize("change", [
    ("requested-size=128M", "requested-size=128M,block-size=4M"),
    ("requested-size=128M", "requested-size=128M,memaddr=0x180000000"),
    ("memory-backend-ram,id=mem0,size=1G", "memory-backend-ram,id=mem0,size=2G"),
])
def test_dest_capture_with_another_virtio_mem_config(qemu_bin, lab_dir, capsys, change):
    """The destination differs only in its virtio-mem device: capture it, then compare
    vmig's prediction with QEMU loading pc-paused there."""
    from vmig.testing.qemu import Qemu

    args = [a.replace(*change) for a in fixtures.manifest("pc-paused")["argv"]]
    assert args != fixtures.manifest("pc-paused")["argv"]
    q = Qemu(args, workdir=lab_dir / "capture")
    q.start()
    try:
        q.migrate_to_file(lab_dir / "dest.bin")
    finally:
        q.stop()
    res = load_stream(args, fixtures.load("pc-paused"), workdir=lab_dir / "load")
    assert not res.ok
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    rc = main(["check", str(fixtures.path("pc-paused")), "--dest-capture", str(lab_dir / "dest.bin")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.endswith("would fail to load:\n" + "\n".join(qemu_lines)), (err, qemu_lines)
