"""PCI device state inside a virtio payload: vmstate "PCIDevice" v2 and the MSI-X state.

Mirrors QEMU 7.2 hw/pci/pci.c (``vmstate_pci_device``: an ``int32 le`` version, the config
space — 256 bytes for conventional PCI, 4096 for PCI Express — and four be32 INTx levels) and
hw/pci/msix.c (``msix_save``: the MSI-X table, 16 bytes per vector, then the pending-bit array,
ceil(N/8) bytes), as virtio-pci's ``save_config`` writes them: without a section or vmstate
header.

The stream carries no flag for "PCI Express" or "has N MSI-X vectors"; both are facts of the
device that QEMU knows from its own configuration. A reader recovers them from the config bytes
that come first (spec virtio-mem.md §6.5): a PCI Express capability (id 0x10) in the capability
list means a 4096-byte config space; an MSI-X capability (id 0x11) gives the vector count from
its message-control word. :func:`pci_layout` does that walk; :data:`PCI_DEVICE_STATE` is a
construct that reads the first 256 bytes, decides, and reads the rest.

Values: ``Container(version_id, config: bytes, irq_state: list[int])``; MSI-X:
``Container(table: bytes, pba: bytes)`` (raw little-endian device buffers, kept verbatim).
"""

from __future__ import annotations

from typing import Any

from construct import (
    Bytes,
    Construct,
    Container,
    ExplicitError,
    Int32ub,
    SizeofError,
    Struct,
    stream_read,
    stream_write,
)

from vmig.records import record

PCI_CONFIG_SPACE_SIZE = 256
PCIE_CONFIG_SPACE_SIZE = 4096
PCI_NUM_PINS = 4
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_MSIX_FLAGS_QSIZE = 0x07FF
MSIX_ENTRY_SIZE = 16
PCI_DEVICE_VMSD_VERSION = 2


@record(frozen=True)
class PciLayout:
    """Layout facts derived from a device's PCI config bytes.

    Attributes:
        express: the device is PCI Express (config space on the wire is 4096 bytes).
        msix_vectors: number of MSI-X vectors (0 = no MSI-X capability: no table, PBA or vectors).
        msix_cap: offset of the MSI-X capability in config space, or None.
    """

    express: bool
    msix_vectors: int
    msix_cap: int | None

    @property
    def config_size(self) -> int:
        return PCIE_CONFIG_SPACE_SIZE if self.express else PCI_CONFIG_SPACE_SIZE

    @property
    def msix_table_size(self) -> int:
        return MSIX_ENTRY_SIZE * self.msix_vectors

    @property
    def msix_pba_size(self) -> int:
        return (self.msix_vectors + 7) // 8


def pci_capabilities(config: bytes | memoryview) -> list[tuple[int, int]]:
    """List the (offset, capability id) pairs of the standard capability list.

    Follows the chain from the pointer at 0x34 when the status register says there is a list.
    Loops and pointers outside the 256-byte header are stopped at (QEMU never writes them; a
    crafted config must not hang the reader).
    """
    cfg = bytes(config[:PCI_CONFIG_SPACE_SIZE])
    if len(cfg) < PCI_CONFIG_SPACE_SIZE:
        return []
    status = int.from_bytes(cfg[PCI_STATUS : PCI_STATUS + 2], "little")
    if not status & PCI_STATUS_CAP_LIST:
        return []
    caps: list[tuple[int, int]] = []
    seen: set[int] = set()
    ptr = cfg[PCI_CAPABILITY_LIST] & 0xFC
    while ptr and ptr not in seen and 0x40 <= ptr <= PCI_CONFIG_SPACE_SIZE - 2:
        seen.add(ptr)
        caps.append((ptr, cfg[ptr]))
        ptr = cfg[ptr + 1] & 0xFC
    return caps


def pci_layout(config: bytes | memoryview) -> PciLayout:
    """Derive :class:`PciLayout` from the first 256 config bytes of a device."""
    cfg = bytes(config[:PCI_CONFIG_SPACE_SIZE])
    express = False
    msix_cap: int | None = None
    vectors = 0
    for off, cap_id in pci_capabilities(cfg):
        if cap_id == PCI_CAP_ID_EXP:
            express = True
        elif cap_id == PCI_CAP_ID_MSIX and msix_cap is None:
            msix_cap = off
            control = int.from_bytes(cfg[off + 2 : off + 4], "little")
            vectors = (control & PCI_MSIX_FLAGS_QSIZE) + 1
    return PciLayout(express=express, msix_vectors=vectors, msix_cap=msix_cap)


class _PciConfig(Construct):
    """The ``pci config`` buffer: 256 bytes, or 4096 if the first 256 show a PCIe capability."""

    def _parse(self, stream: Any, context: Any, path: str) -> bytes:
        head = stream_read(stream, PCI_CONFIG_SPACE_SIZE, path)
        if pci_layout(head).express:
            return head + stream_read(stream, PCIE_CONFIG_SPACE_SIZE - PCI_CONFIG_SPACE_SIZE, path)
        return head

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> bytes:
        data = bytes(obj)
        want = pci_layout(data).config_size
        if len(data) != want:
            raise ExplicitError(
                f"PCI config space must be {want} bytes for this device, got {len(data)}",
                path=path,
            )
        stream_write(stream, data, len(data), path)
        return data

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("PCI config size depends on its content", path=path)


#: vmstate "PCIDevice" v2 as virtio-pci saves it (no header): be32 version_id (``int32 le``:
#: the loader requires 0 < v <= its own), config space, irq_state[4] (be32 each, 0 or 1).
PCI_DEVICE_STATE = Struct(
    "version_id" / Int32ub,
    "config" / _PciConfig(),
    "irq_state" / Int32ub[PCI_NUM_PINS],
)


def msix_state(vectors: int) -> Construct:
    """The MSI-X state ``msix_save`` writes for a device with ``vectors`` vectors.

    Table entries keep their little-endian layout (addr lo, addr hi, data, vector control).
    """
    return Struct(
        "table" / Bytes(MSIX_ENTRY_SIZE * vectors),
        "pba" / Bytes((vectors + 7) // 8),
    )


def msix_entries(table: bytes) -> list[Container]:
    """Split a raw MSI-X table into entries (address, data, masked) for display."""
    out: list[Container] = []
    for i in range(0, len(table) - len(table) % MSIX_ENTRY_SIZE, MSIX_ENTRY_SIZE):
        lo, hi, data, ctrl = (int.from_bytes(table[i + k : i + k + 4], "little") for k in (0, 4, 8, 12))
        out.append(Container(address=(hi << 32) | lo, data=data, masked=bool(ctrl & 1)))
    return out
