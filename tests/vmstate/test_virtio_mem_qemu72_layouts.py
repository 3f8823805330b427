"""virtio-mem payload layouts that no committed fixture has, captured live from QEMU 7.2.

* q35 with virtio-mem-pci behind a pcie-root-port: a PCI Express device, 4096-byte config space
  on the wire (spec virtio-mem.md §6.5 left this unverified).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmig.stream.decoder import decode
from vmig.stream.events import DeviceState
from vmig.testing.qemu import Qemu, require_qemu
from vmig.vmstate import virtio_mem as vm
from vmig.vmstate.machines import loads_vmdesc
from vmig.vmstate.pci import PCI_CAP_ID_EXP, pci_capabilities, pci_layout

pytestmark = pytest.mark.qemu

ROOT_PORT_ARGS = [
    "-machine", "pc-q35-7.2", "-accel", "tcg", "-m", "512M,maxmem=4G", "-display", "none",
    "-nodefaults", "-S",
    "-device", "pcie-root-port,id=rp0,chassis=1,slot=1,bus=pcie.0,addr=0x2",
    "-object", "memory-backend-ram,id=mem0,size=1G",
    "-device", "virtio-mem-pci,id=vm0,memdev=mem0,bus=rp0,requested-size=128M",
]


def test_pcie_device_has_4096_byte_config(tmp_path: Path) -> None:
    require_qemu()
    out = tmp_path / "rp.bin"
    with Qemu(ROOT_PORT_ARGS, workdir=tmp_path) as q:
        q.migrate_to_file(out)
        qmp = q.memory_devices()
    data = out.read_bytes()
    desc = loads_vmdesc(data)
    entry = [d for d in desc["devices"] if d["name"].endswith("/virtio-mem")][0]
    assert entry["name"] == "0000:00:02.0:00.0/virtio-mem"
    size = entry["fields"][0]["size"]
    sec = [e for e in decode(data) if isinstance(e, DeviceState) and e.idstr == entry["name"]][0]
    assert sec.length == size
    state = vm.decode_virtio_mem(sec.payload)
    assert len(state.pci.config) == 4096
    assert PCI_CAP_ID_EXP in [c for _, c in pci_capabilities(state.pci.config)]
    assert pci_layout(state.pci.config).msix_vectors == 0
    assert vm.encode_virtio_mem(state) == bytes(sec.payload)
    d = state.device
    want = qmp[0]["data"]
    assert (d.tmp.addr, d.tmp.region_size, d.tmp.block_size, d.requested_size, d.size) == (
        want["memaddr"], want["max-size"], want["block-size"], want["requested-size"], want["size"])
    # 3840 more config bytes than the conventional-PCI layout of s1.bin (45661 bytes)
    assert size == 45661 + 3840
