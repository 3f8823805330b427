"""``vmig rewrite IMAGE.qcow2 OUT.qcow2 --snapshot NAME [--virtio-mem DEV:requested-size=SIZE]`` gives an image
that real QEMU 7.2 restores with ``-loadvm NAME`` (the capture's command line, ``-S``), reporting
the memory devices expected: the capture's QMP answer unchanged, or with the edited
``requested-size``. The input image is never modified; ``qemu-img check`` finds the copy clean.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import lz4.frame
import pytest

from vmig.cli import main
from vmig.testing import fixtures as fx
from vmig.testing.qemu import Qemu, require_qemu

pytestmark = pytest.mark.qemu
CDIR = fx.FIXTURES_DIR / "containers"
MAN = json.loads((CDIR / "savevm-2snap.json").read_text())
MiB = 1 << 20


def _loadvm_memory_devices(image: Path, snapshot: str, wd: Path) -> list:
    wd.mkdir(parents=True, exist_ok=True)
    shutil.copy(image, wd / "disk.qcow2")  # the manifest's -drive names @WORKDIR@/disk.qcow2
    argv = fx.resolve_args(MAN["argv"], wd) + ["-S", "-loadvm", snapshot]
    with Qemu(argv, workdir=wd) as q:
        deadline = time.monotonic() + 120
        while q.qmp("query-status")["status"] not in ("paused", "prelaunch") and time.monotonic() < deadline:
            time.sleep(0.2)
        return q.memory_devices()


@pytest.mark.parametrize(("snap", "requested"), [(MAN["snapshots"][0], None), (MAN["snapshots"][1], None),
                                                 (MAN["snapshots"][0], 500 * MiB)],
                         ids=["snap-300m-unchanged", "snap-100m-unchanged", "snap-300m-requested-500m"])
def test_rewritten_snapshot_restored_by_qemu(snap, requested, tmp_path, capsys):
    require_qemu()
    image = tmp_path / "in.qcow2"
    image.write_bytes(lz4.frame.decompress((CDIR / MAN["image"]["file"]).read_bytes()))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    out = tmp_path / "out.qcow2"
    argv = ["rewrite", str(image), str(out), "--snapshot", snap["name"]]
    if requested is not None:
        argv += ["--virtio-mem", f"0:requested-size={requested}"]
    assert main(argv) == 0, capsys.readouterr().err
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    if requested is None:
        assert out.read_bytes() == image.read_bytes()  # encode(decode(b)) == b, written in place
    subprocess.run(["qemu-img", "check", str(out)], check=True, capture_output=True)  # qemu-utils, with QEMU
    want = json.loads(json.dumps(snap["query-memory-devices"]))
    if requested is not None:
        want[0]["data"]["requested-size"] = requested
    got = _loadvm_memory_devices(out, snap["name"], tmp_path / "qemu")
    assert got == want
    assert main(["info", "memory-devices", str(out), "--snapshot", snap["name"], "--json",
                 "--id", "0000:00:02.0=vm0"]) == 0
    assert json.loads(capsys.readouterr().out) == want


def test_vm_state_writer_keeps_the_length():
    from vmig.errors import UsageError
    from vmig.io.containers.qcow2 import VmStateWriter

    disk = bytearray(64)
    w = VmStateWriter([(8, 4), (32, 4)], lambda off, b: disk.__setitem__(slice(off, off + len(b)), b), "x")
    w.write(b"abcdef")
    with pytest.raises(UsageError, match="longer than the snapshot"):
        w.write(b"ghi")
    assert bytes(disk[8:12]) == b"abcd" and bytes(disk[32:36]) == b"efgh"
    short = VmStateWriter([(0, 10)], lambda off, b: None, "y")
    short.write(b"12345")
    with pytest.raises(UsageError, match="has 5 bytes, the snapshot's has 10"):
        short.finish()


def test_rewrite_without_a_snapshot_choice_writes_nothing(tmp_path, capsys):
    image = tmp_path / "in.qcow2"
    image.write_bytes(lz4.frame.decompress((CDIR / MAN["image"]["file"]).read_bytes()))
    rc = main(["rewrite", str(image), str(tmp_path / "out.qcow2")])
    err = capsys.readouterr().err
    assert rc == 2 and "2 snapshots" in err and "--snapshot" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.qcow2"]
