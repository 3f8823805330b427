"""The layouts of newer QEMU, from real QEMU 10.0.13 captures (payloads stored in data/).

Captured with ``pc-i440fx-7.2``, ``-9.2``, ``-10.0`` and ``pc-q35-10.0`` machines on one 10.0
binary (spec virtio-mem.md §6.5): 7.2 layout (queue size 1024 on 10.0), 9.2 (early section, late
device part reduced, no MSI-X), 10.0 (early section + 2 MSI-X vectors). Oracle: the source QEMU's
query-memory-devices / HMP text at migration time, stored with the payloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import lz4.frame
import pytest

from vmig.analysis.virtio_mem import StreamDevice, hmp_text
from vmig.device.virtio_mem import VirtioMem
from vmig.vmstate import virtio_mem as vm
from vmig.vmstate.pci import PCI_CAP_ID_MSIX, pci_capabilities, pci_layout

DATA = Path(__file__).resolve().parents[1] / "data" / "virtio"
CAPTURES = sorted(p.name[: -len(".payloads.lz4")] for p in DATA.glob("*.payloads.lz4"))


def _load(name: str) -> dict:
    return json.loads(lz4.frame.decompress((DATA / f"{name}.payloads.lz4").read_bytes()))


def test_captures_present() -> None:
    assert len(CAPTURES) == 8


@pytest.mark.parametrize("name", CAPTURES)
def test_layout_and_roundtrip(name: str) -> None:
    doc = _load(name)
    machine = doc["machine"]
    newer = not machine.endswith("-7.2")
    secs = {s["idstr"].rsplit("/", 1)[1]: bytes.fromhex(s["payload"]) for s in doc["sections"]}
    assert ("virtio-mem-device-early" in secs) == newer
    late = secs["virtio-mem"]
    state = vm.decode_virtio_mem(late)
    assert vm.encode_virtio_mem(state) == late
    assert vm.measure_virtio_mem(late + b"\x7e") == len(late)
    vectors = pci_layout(state.pci.config).msix_vectors
    assert vectors == (2 if machine.endswith("-10.0") else 0)
    if vectors:
        caps = dict((cid, off) for off, cid in pci_capabilities(state.pci.config))
        assert caps[PCI_CAP_ID_MSIX] == 0x98  # spec §6.5
        assert len(state.msix.table) == 32 and len(state.msix.pba) == 1
        assert all("vector" in q for q in state.queues)
    assert [q.num for q in state.queues] == [1024]  # 10.0: queue size 1024 for every machine
    sec = vm.VirtioMemSection("0000:00:02.0", late, state)
    if newer:
        assert set(state.device) == {"usable_region_size", "requested_size"}
        early = secs["virtio-mem-device-early"]
        e = vm.decode_early(early)
        assert vm.encode_early(e) == early
        assert vm.early_payload_length(early + b"\x00\x00") == len(early)
        sec.early = e
    else:
        assert "tmp" in state.device
    want = doc["query-memory-devices"][0]["data"]
    # HMP text, given the id and memdev QEMU showed
    dev = VirtioMem.from_section(sec, memdev_id=want["memdev"].rsplit("/", 1)[1])
    assert (dev.addr, dev.node, dev.requested_size, dev.size, dev.region_size, dev.block_size) == (
        want["memaddr"], want["node"], want["requested-size"], want["size"], want["max-size"],
        want["block-size"])
    assert int(dev.bitmap.sum()) * dev.block_size == dev.size
    assert hmp_text([StreamDevice(sec, dev)], {sec.dev_path: want["id"]}) == doc["hmp"].replace("\r\n", "\n")
