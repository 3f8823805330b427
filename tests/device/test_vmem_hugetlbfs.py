"""Device model vs. real QEMU 7.2 for a virtio-mem device over a hugetlbfs ``memory-backend-file``.

The test mounts hugetlbfs (2 MiB pages) in a scratch folder, reserves enough huge pages, runs
QEMU 7.2 with ``memory-backend-file,mem-path=<mount>`` under a virtio-mem device and compares with
:func:`machine_from_argv` on the same command line: the default block size
(``query-memory-devices``), the refusal of a block size below the huge page size (QEMU's line,
exact), and the RAMBlock page size QEMU writes into the stream against
:meth:`Machine.ram_block_page_size`: QEMU writes it only with postcopy-ram on, which needs a return
path, so the source migrates through a recording relay to a destination QEMU 7.2 on the same
command line (which checks the page size too), and ``vmig ram --json`` reads the recording. Needs root; a host that cannot
provide the pages fails under ``CI=true`` and skips elsewhere. Everything is undone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from relay import relay_class

from vmig.device.cmdline import machine_from_argv
from vmig.device.hostmem import mem_path_page_size
from vmig.errors import DeviceError
from vmig.units import MiB

pytestmark = pytest.mark.qemu

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
HUGE = 2 * MiB
PAGES = 600  # two QEMUs (source, destination) with a 512 MiB backend each: 2 x 256 pages reserved


def _unavailable(msg: str) -> None:
    if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        pytest.fail(f"CI=true and hugetlbfs unavailable: {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def hugetlbfs(tmp_path: Path):
    """A hugetlbfs mount with ``PAGES`` free 2 MiB pages; unmounted and pages restored after."""
    if os.geteuid() != 0:
        _unavailable("needs root to reserve huge pages and mount hugetlbfs")
    before = int(NR_HUGEPAGES.read_text())
    mnt = tmp_path / "hugetlbfs"
    mnt.mkdir()
    mounted = False
    try:
        try:
            NR_HUGEPAGES.write_text(f"{before + PAGES}\n")
        except OSError as e:
            _unavailable(f"writing {NR_HUGEPAGES}: {e}")
        got = int(NR_HUGEPAGES.read_text())
        if got < before + PAGES:
            _unavailable(f"kernel gave {got - before} of {PAGES} 2 MiB huge pages ({NR_HUGEPAGES})")
        res = subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={HUGE // MiB}M", "none", str(mnt)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            _unavailable(f"mount -t hugetlbfs: {res.stderr.strip()}")
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=True)
        NR_HUGEPAGES.write_text(f"{before}\n")


def _argv(mnt: Path, block_size: str | None = None) -> list[str]:
    bs = f",block-size={block_size}" if block_size else ""
    return ["-machine", "pc-i440fx-7.2", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
            "-m", "512M,maxmem=2G", "-object", f"memory-backend-file,id=mem0,size=512M,mem-path={mnt}",
            "-device", f"virtio-mem-pci,id=vm0,memdev=mem0{bs}"]


def test_mem_path_page_size_probe(hugetlbfs, tmp_path):
    assert mem_path_page_size(str(hugetlbfs)) == HUGE
    assert mem_path_page_size(str(hugetlbfs / "not-yet-created")) == HUGE  # QEMU creates it there
    assert mem_path_page_size(str(tmp_path)) is None  # not hugetlbfs: base pages
    with pytest.raises(DeviceError, match="mem-path"):
        mem_path_page_size(str(tmp_path / "missing" / "file"))


def test_default_block_size_like_qemu(hugetlbfs, qemu_bin, lab_dir):
    from vmig.testing.qemu import Qemu

    argv = _argv(hugetlbfs)
    model = machine_from_argv(argv)
    dev = model.devices[0]
    assert dev.block_size == HUGE  # max(huge page size, 1 MiB), not the THP rule
    with Qemu(argv, workdir=lab_dir, binary=qemu_bin) as q:
        assert q.qmp("query-memory-devices") == model.qmp("query-memory-devices")
        qom = q.qmp("qom-get", {"path": "/machine/peripheral/vm0", "property": "block-size"})
        assert qom == model.qom_get("/machine/peripheral/vm0", "block-size") == HUGE


def test_stream_ram_block_page_size_like_qemu(hugetlbfs, qemu_bin, lab_dir):
    from vmig.testing.qemu import Qemu

    argv = _argv(hugetlbfs)
    model = machine_from_argv(argv)
    dev = model.devices[0]
    relay_cls, free_port = relay_class()
    stream, rp = lab_dir / "main.bin", lab_dir / "rp.bin"
    (lab_dir / "src").mkdir()
    (lab_dir / "dst").mkdir()
    dport = free_port()
    with Qemu(argv, workdir=lab_dir / "src", binary=qemu_bin) as src, \
            Qemu(argv, workdir=lab_dir / "dst", binary=qemu_bin, incoming=f"tcp:127.0.0.1:{dport}") as dst:
        # QEMU writes a block's page size into the RAM setup list only with postcopy-ram on
        dst.set_migration({"postcopy-ram": True})
        src.set_migration({"postcopy-ram": True})
        relay = relay_cls(dport, stream, rp)
        try:
            src.qmp("migrate", {"uri": f"tcp:127.0.0.1:{relay.port}"})
            assert src.wait_migration(300)["status"] == "completed"
            assert dst.wait_migration(300)["status"] == "completed"
            assert dst.qmp("query-memory-devices") == model.qmp("query-memory-devices")
        finally:
            src.stop()
            dst.stop()
            relay.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-m", "vmig", "ram", "--json", str(stream)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    blocks = {b["idstr"]: b for b in json.loads(res.stdout)["blocks"]}
    assert model.ram_block(dev) in blocks, sorted(blocks)
    assert blocks[model.ram_block(dev)]["page_size"] == model.ram_block_page_size(dev) == HUGE
    assert blocks["pc.ram"]["page_size"] == model.host.page_size  # main RAM: base pages


def test_block_size_below_huge_page_refused_like_qemu(hugetlbfs, qemu_bin, lab_dir):
    argv = _argv(hugetlbfs, block_size="1M")
    res = subprocess.run([qemu_bin, *argv], capture_output=True, text=True, timeout=120, cwd=lab_dir)
    assert res.returncode != 0
    qemu_line = res.stderr.strip().splitlines()[-1].split(": ", 2)[-1]
    with pytest.raises(DeviceError) as e:
        machine_from_argv(argv)
    assert str(e.value) == qemu_line, res.stderr
    assert qemu_line == "'block-size' property has to be at least the page size (0x200000)"
