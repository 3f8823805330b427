"""Edited virtio-mem states load into real QEMU 7.2, and `vmig check --dest` predicts its errors.

Oracle: qemu-system-x86_64 7.2 started with the fixture's command line and
``-incoming defer`` + ``migrate-incoming exec:cat FILE`` (vmig.testing.qemu.load_stream), then
``query-memory-devices``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmig.analysis.edit import edit_virtio_mem
from vmig.analysis.virtio_mem import iter_stream_events
from vmig.checks.virtio_mem import VirtioMemChecker
from vmig.testing import fixtures
from vmig.testing.qemu import load_stream, require_qemu

pytestmark = pytest.mark.qemu
BS = 2 << 20


def _args(name: str, workdir: Path) -> list[str]:
    return fixtures.resolve_args(fixtures.manifest(name)["argv"], workdir)


def _sizes(result) -> list[int]:  # noqa: ANN001
    return [d["data"]["size"] for d in result.memory_devices]


def test_plug_edit_loads(tmp_path: Path) -> None:
    """pc-paused (nothing plugged) edited to plug blocks 0, 65 and 100..109: QEMU reports 12 blocks."""
    require_qemu()
    data = fixtures.load("pc-paused")

    def plug(s):  # noqa: ANN001
        bits = np.zeros_like(s.device.bitmap)
        bits[[0, 65]] = True
        bits[100:110] = True
        s.device.bitmap = bits
        s.device.size = 12 * BS

    edited = edit_virtio_mem(data, plug)
    assert edited != data and len(edited) == len(data)
    res = load_stream(_args("pc-paused", tmp_path), edited, workdir=tmp_path)
    assert res.ok, res.stderr
    assert _sizes(res) == [12 * BS]
    assert "  size: 25165824" in res.hmp_memory_devices


def test_unplug_edit_loads(tmp_path: Path) -> None:
    """pc-guest edited to unplug its last 10 plugged blocks: QEMU reports the smaller size."""
    require_qemu()
    data = fixtures.load("pc-guest")
    seen = {}

    def unplug(s):  # noqa: ANN001
        idx = np.flatnonzero(s.device.bitmap)
        seen["before"] = s.device.size
        s.device.bitmap[idx[-10:]] = False
        s.device.size -= 10 * BS

    edited = edit_virtio_mem(data, unplug)
    res = load_stream(_args("pc-guest", tmp_path), edited, workdir=tmp_path)
    assert res.ok, res.stderr
    assert _sizes(res) == [seen["before"] - 10 * BS]


def test_dest_memaddr_prediction_matches_qemu(tmp_path: Path) -> None:
    """QEMU started with another memaddr fails with exactly the lines vmig check predicts."""
    require_qemu()
    name = "pc-paused"
    args = _args(name, tmp_path)
    dest_args = [a + ",memaddr=0x140000000" if a.startswith("virtio-mem-pci,") else a for a in args]
    assert dest_args != args
    res = load_stream(dest_args, fixtures.load(name), workdir=tmp_path)
    assert not res.ok
    chk = VirtioMemChecker(["memaddr=0x140000000"])
    problems: list[str] = []
    for ev in iter_stream_events(str(fixtures.path(name))):
        problems += chk(ev) or []
    assert len(problems) == 1
    predicted = problems[0].split("destination would fail to load:\n", 1)[1].splitlines()
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    assert qemu_lines[: len(predicted)] == predicted
