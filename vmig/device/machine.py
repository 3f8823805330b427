"""A pc / q35 machine as far as memory devices go: placement, QOM access, monitor views.

Mirrors hw/i386/pc.c + pc_piix.c / pc_q35.c (RAM split below/above 4 GiB, the device-memory
region), hw/mem/memory-device.c (pre-plug checks and first-fit address assignment),
qom/qom-qmp-cmds.c (qom-get / qom-set errors), hw/core/machine-hmp-cmds.c
(``info memory-devices``) and monitor/hmp-cmds.c (``qom-set`` with size suffixes), as specified in
spec/virtio-mem.md §7 (QEMU 7.2, verified values).

No I/O: :meth:`Machine.qmp` and :meth:`Machine.hmp` take a command and return what QEMU would
answer (a Python value, or a :class:`QmpError` carrying QEMU's ``desc``).
"""

from __future__ import annotations

import shlex
from typing import Any

from vmig.device.state import MigrationState
from vmig.device.versions import Behaviour
from vmig.device.virtio_mem import (
    HostInfo,
    MemoryBackend,
    VirtioMem,
    VirtioMemProperties,
)
from vmig.errors import DeviceError, UsageError
from vmig.records import field, record
from vmig.units import GiB, MiB, parse_size

__all__ = ["Machine", "QmpError", "round_up"]

AMD_HT_START = 0xFD00000000
AMD_ABOVE_1TB_START = 1 << 40


class QmpError(DeviceError):
    """A QMP command failed; ``str(e)`` is QEMU's error ``desc``; ``error_class`` its class."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


def round_up(v: int, align: int) -> int:
    return -(-v // align) * align


@record
class _Slot:
    device: VirtioMem
    pci_path: str


#: Drivers that create a PCIe port with one downstream slot (devices behind it: ``<port>:00.0``).
PCIE_PORTS = frozenset({"pcie-root-port", "ioh3420"})
#: Bridges whose buses the model does not place devices on (dev-paths behind them differ).
PCI_BRIDGES = frozenset({"pci-bridge", "pcie-pci-bridge", "x3130-upstream", "xio3130-downstream",
                         "pxb", "pxb-pcie"})


@record
class _PciBus:
    """A PCI bus: its dev-path prefix and the functions in use (devfn -> ``driver,id=...``)."""

    path: str  # "0000:00" for the root bus, "0000:00:04.0" behind a root port
    port: bool = False  # a PCIe port's downstream bus: one slot (0)
    used: dict[int, str] = field(default_factory=dict)

    def dev_path(self, devfn: int) -> str:
        slot, fn = divmod(devfn, 8)
        return f"{self.path}:{slot:02x}.{fn:x}"


def parse_pci_addr(text: str) -> int:
    """``addr=`` of a PCI device: ``slot[.function]``, each hex with or without ``0x``."""
    slot, _, fn = text.partition(".")
    try:
        s, f = int(slot, 16), int(fn, 16) if fn else 0
    except ValueError:
        raise DeviceError(f"Property 'addr' doesn't take value '{text}'") from None
    if not (0 <= s < 32 and 0 <= f < 8):
        raise DeviceError(f"Property 'addr' doesn't take value '{text}'")
    return s * 8 + f


class Machine:
    """A QEMU x86 machine with its memory devices (virtio-mem-pci).

    Args:
        machine: ``pc``, ``q35``, ``pc-i440fx-7.2``, ``pc-q35-8.0`` …
        ram_size: ``-m`` size in bytes.
        maxmem: ``-m ...,maxmem=`` in bytes (None = no device memory).
        slots: ``-m ...,slots=``.
        numa_nodes: number of ``-numa node`` entries (0 = none).
        qemu_version: binary version (``"7.2"``, ``"10.0"`` …).
        host: host facts (THP size, page size, mlock).
        amd_cpu: CPU vendor AMD (the default TCG CPU qemu64 is); matters for the 1 TiB relocation.
        phys_bits: guest physical address bits (40 for TCG's qemu64).
        incoming: started with ``-incoming`` (runstate INMIGRATE).
        max_ram_below_4g: ``-machine max-ram-below-4g=`` (None: the machine's default).
    """

    def __init__(
        self,
        machine: str = "pc",
        ram_size: int = 512 * MiB,
        maxmem: int | None = None,
        *,
        slots: int = 0,
        numa_nodes: int = 0,
        qemu_version: str = "7.2",
        host: HostInfo | None = None,
        amd_cpu: bool = True,
        phys_bits: int = 40,
        incoming: bool = False,
        max_ram_below_4g: int | None = None,
    ) -> None:
        self.behaviour = Behaviour.for_qemu(qemu_version, machine)
        self.max_ram_below_4g = max_ram_below_4g
        self.warnings: list[str] = []  # warn_report lines (e.g. an alignment above the expected one)
        self.firmware_reset_pending = False  # a refused reset's reboot still to come (see cont)
        self.ram_size = ram_size
        self.maxmem = maxmem if maxmem is not None else ram_size
        if self.maxmem < ram_size:
            raise DeviceError(
                f"invalid value of maxmem: maximum memory size (0x{self.maxmem:x}) must be at least "
                f"the initial memory size (0x{ram_size:x})"
            )
        self.slots = slots
        self.numa_nodes = numa_nodes
        self.host = host or HostInfo()
        self.amd_cpu = amd_cpu
        self.phys_bits = phys_bits
        # default size of the 64-bit PCI hole after device memory (i440fx 2 GiB, q35 32 GiB)
        self.pci_hole64_size = 2 * GiB if self.behaviour.machine_family == "pc" else 32 * GiB
        self.migration = MigrationState()
        self.migration.inmigrate = incoming
        self.backends: dict[str, MemoryBackend] = {}
        self._slots: list[_Slot] = []
        self._anon = 0
        # PCI placement (QEMU's pci_bus_devfn): the chipset's functions, then devices in
        # command-line order, each at its addr= or the lowest slot whose function 0 is free.
        if self.behaviour.machine_family == "pc":
            self.pci_root = "pci.0"
            chipset = {0: "i440FX", 8: "PIIX3", 9: "piix3-ide", 11: "PIIX4_PM"}
        else:
            self.pci_root = "pcie.0"
            chipset = {0: "mch", 0xF8: "ICH9-LPC", 0xFA: "ich9-ahci", 0xFB: "ICH9-SMB"}
        self._buses: dict[str, _PciBus] = {self.pci_root: _PciBus("0000:00", used=dict(chipset))}
        self._pci_paths: dict[str, tuple[str, int]] = {}
        self._bridges: dict[str, str] = {}
        self.below_4g, self.above_4g = self._split_ram()
        self.device_memory_base, self.device_memory_size = self._device_memory()

    # -- layout -----------------------------------------------------------------------------------
    def _split_ram(self) -> tuple[int, int]:
        ram = self.ram_size
        if self.behaviour.machine_family == "pc":
            # pc_init1: low = max-ram-below-4g (3.5 GiB by default); with gigabyte_align at most
            # 3 GiB once RAM reaches it
            low = self.max_ram_below_4g or 0xE0000000
            if ram >= low:
                low = min(low, 0xC0000000)
        else:
            # pc_q35_init: 2 GiB low from 2.75 GiB of RAM, else 2.75 GiB; max-ram-below-4g caps it
            low = 0x80000000 if ram >= 0xB0000000 else 0xB0000000
            low = min(low, self.max_ram_below_4g or 1 << 32)
        low = min(low, ram)
        return low, ram - low

    def _max_used_gpa(self, above_4g_start: int) -> int:
        """``pc_max_used_gpa``: last byte of the 64-bit PCI hole that follows device memory."""
        hole64_start = above_4g_start + self.above_4g
        if self.maxmem > self.ram_size:
            hole64_start = round_up(hole64_start, GiB) + self.maxmem - self.ram_size + GiB * self.slots
        return round_up(hole64_start, GiB) + self.pci_hole64_size - 1

    def _device_memory(self) -> tuple[int, int]:
        above_4g_start = 4 * GiB
        # AMD vCPUs, 7.1+ machines: RAM above 4G moves to 1 TiB if the layout reaches the
        # HyperTransport hole below 1 TiB (pc_memory_init, enforce_amd_1tb_hole)
        if self.amd_cpu and self.behaviour.machine_version >= (7, 1) \
                and self._max_used_gpa(above_4g_start) >= AMD_HT_START:
            above_4g_start = AMD_ABOVE_1TB_START
        max_used = self._max_used_gpa(above_4g_start)
        limit = (1 << self.phys_bits) - 1
        if limit < max_used:
            raise DeviceError(
                f"Address space limit 0x{limit:x} < 0x{max_used:x} phys-bits too low ({self.phys_bits})"
            )
        if self.maxmem <= self.ram_size:
            return 0, 0
        size = self.maxmem - self.ram_size + GiB * self.slots  # aligned-DIMM machines
        return round_up(above_4g_start + self.above_4g, GiB), size

    # -- objects ----------------------------------------------------------------------------------
    def add_backend(self, id: str, size: int, **kw: Any) -> MemoryBackend:
        """``-object memory-backend-ram,id=...,size=...`` (kw: kind, share, page_size, prealloc)."""
        if id in self.backends:
            raise DeviceError(f"attempt to add duplicate property '{id}' to object (type 'container')")
        b = MemoryBackend(id=id, size=size, **kw)
        self.backends[id] = b
        return b

    @property
    def devices(self) -> list[VirtioMem]:
        """Memory devices in plug order."""
        return [s.device for s in self._slots]

    def device(self, path: str) -> VirtioMem:
        """Resolve a QOM path (``vm0``, ``/machine/peripheral/vm0``, anon paths) to a device.

        Raises:
            QmpError: "Device '...' not found" (class DeviceNotFound).
        """
        for s in self._slots:
            d = s.device
            if path in (d.qom_path, d.id) and path:
                return d
            if path.lstrip("/") and d.qom_path.endswith("/" + path.lstrip("/")):
                return d
        raise QmpError(f"Device '{path}' not found", "DeviceNotFound")

    def _used_region_size(self) -> int:
        return sum(d.region_size for d in self.devices)

    def device_add(
        self,
        memdev: str | None,
        id: str | None = None,
        *,
        node: int = 0,
        memaddr: int = 0,
        block_size: int = 0,
        requested_size: int = 0,
        prealloc: bool = False,
        unplugged_inaccessible: str | None = None,
        early_migration: bool | None = None,
        dynamic_memslots: bool = False,
        vectors: int | None = None,
        bus: str | None = None,
        addr: str | None = None,
    ) -> VirtioMem:
        """``-device virtio-mem-pci,...``: property setters, memory-device pre-plug, realize.

        Raises:
            DeviceError: QEMU's message for the first check that fails.
        """
        beh = self.behaviour
        if memdev is not None and memdev not in self.backends:
            raise DeviceError(f"Device '{memdev}' not found")  # QEMU 7.2's link-property lookup
        if block_size:
            VirtioMem.check_block_size_property(block_size, beh)
        backend = self.backends.get(memdev) if memdev is not None else None
        props = VirtioMemProperties(
            memdev=backend, id=id, node=node, memaddr=memaddr, block_size=block_size,
            requested_size=requested_size, prealloc=prealloc,
            unplugged_inaccessible=unplugged_inaccessible, early_migration=early_migration,
            dynamic_memslots=dynamic_memslots, vectors=vectors,
        )
        if id is not None and any(d.id == id for d in self.devices):
            raise DeviceError(f"Duplicate ID '{id}' for device")
        # --- pre-plug: the device's own checks (memdev) come before memory_device_pre_plug ---
        if backend is None:
            raise DeviceError("'memdev' property must be set")
        if backend.mapped:
            raise DeviceError(f"'memdev' property specifies a busy memdev: {backend.id}")
        if not self.device_memory_size:
            raise DeviceError(
                "memory devices (e.g. for memory hotplug) are not enabled, please specify the maxmem option"
            )
        used = self._used_region_size()
        if used + backend.size > self.maxmem - self.ram_size:
            raise DeviceError(
                f"not enough space, currently 0x{used:x} in use of total space for memory devices "
                f"0x{self.maxmem - self.ram_size:x}"
            )
        bs_for_align = block_size or VirtioMem.default_block_size(backend, self.host, beh)[0]
        align = max(bs_for_align, backend.align)
        props.memaddr = self._free_addr(memaddr or None, align, backend.size)
        # --- PCI placement (the proxy's realize), then the device's realize ---
        pci = self.pci_add("virtio-mem-pci", id, bus=bus, addr=addr)
        try:
            dev = self._realize(props, id)
        except DeviceError:
            bus_name, devfn = self._pci_paths.pop(pci)
            del self._buses[bus_name].used[devfn]  # a failed realize leaves no device behind
            raise
        self._slots.append(_Slot(dev, pci))
        return dev

    def _realize(self, props: VirtioMemProperties, id: str | None) -> VirtioMem:
        if id is not None:
            qom_path = f"/machine/peripheral/{id}"
        else:
            qom_path = f"/machine/peripheral-anon/device[{self._anon}]"
        dev = VirtioMem.realize(
            props, behaviour=self.behaviour, host=self.host, migration=self.migration,
            numa_nodes=self.numa_nodes, qom_path=qom_path,
        )
        if id is None:
            self._anon += 1
        return dev

    def pci_add(self, driver: str, id: str | None = None, *, bus: str | None = None,
                addr: str | None = None) -> str:
        """Place a PCI device (``-device DRIVER[,id=][,bus=][,addr=]``); returns its dev-path.

        A PCIe root port (``pcie-root-port``/``ioh3420``) with an ``id`` adds the bus ``id``.

        Raises:
            DeviceError: QEMU's message (slot in use, no free slot, unknown bus).
            UsageError: a bus the model does not place devices on (bridges other than ports).
        """
        name = bus or self.pci_root
        b = self._buses.get(name)
        if b is None:
            if name in self._bridges:
                raise UsageError(f"bus '{name}' ({self._bridges[name]}): the model places PCI devices "
                                 "on the root bus and behind PCIe root ports only")
            raise DeviceError(f"Bus '{name}' not found")
        label = f"{driver},id={id if id is not None else '(null)'}"
        if addr is not None:
            devfn = parse_pci_addr(addr)
            if devfn in b.used or (b.port and devfn >= 8):
                raise DeviceError(f"PCI: slot {devfn // 8} function {devfn % 8} not available for "
                                  f"{driver}, in use by {b.used.get(devfn, '(port)')}")
        else:
            free = [s * 8 for s in range(1 if b.port else 32) if s * 8 not in b.used]
            if not free:
                raise DeviceError(f"PCI: no slot/function available for {driver}, all in use or reserved")
            devfn = free[0]
        b.used[devfn] = label
        path = b.dev_path(devfn)
        self._pci_paths[path] = (name, devfn)
        if driver in PCIE_PORTS and id is not None:
            self._buses[id] = _PciBus(path, port=True)
        elif driver in PCI_BRIDGES and id is not None:
            self._bridges[id] = driver
        return path

    def ram_block(self, dev: VirtioMem) -> str:
        """idstr of the RAMBlock of ``dev``'s memory backend: ``<PCI dev-path>/<memdev id>``
        (QEMU 7.2, checked against real streams in tests/device/test_vmem_pci_placement.py)."""
        assert dev.memdev is not None
        return f"{self.pci_path(dev)}/{dev.memdev.id}"

    def ram_block_page_size(self, dev: VirtioMem) -> int:
        """Page size of ``dev``'s RAMBlock: its backend's (a huge page size on hugetlbfs). QEMU
        writes it after the block's length in the RAM setup list when it differs from the host
        page size and postcopy-ram is on (``ram_save_setup``)."""
        assert dev.memdev is not None
        return dev.memdev.page_size

    def pci_path(self, dev: VirtioMem) -> str:
        """PCI dev-path of the device (``0000:00:02.0``), the prefix of its section idstrs."""
        for s in self._slots:
            if s.device is dev:
                return s.pci_path
        raise UsageError("device not on this machine")

    def _free_addr(self, hint: int | None, align: int, size: int) -> int:
        """``memory_device_get_free_addr`` (first fit, spec §7.2)."""
        base, total = self.device_memory_base, self.device_memory_size
        if base % align:  # QEMU 7.2: only a warning, the device is placed
            self.warnings.append(
                f"the alignment (0x{align:x}) exceeds the expected maximum alignment, memory will get "
                "fragmented and not all 'maxmem' might be usable for memory devices.")
        if size % align:
            raise DeviceError(f"backend memory size must be multiple of 0x{align:x}")
        if hint is not None and hint % align:
            raise DeviceError(f"address must be aligned to 0x{align:x} bytes")
        end_as = base + total
        if hint is not None:
            if hint < base or hint + size > end_as:
                raise DeviceError(
                    f"can't add memory device [0x{hint:x}:0x{size:x}], usable range for memory devices "
                    f"[0x{base:x}:0x{total:x}]"
                )
            start = hint
        else:
            start = round_up(base, align)
            if start + size > end_as:
                raise DeviceError("can't add memory device, device too big")
        for d in sorted(self.devices, key=lambda x: x.addr):
            lo, hi = d.addr, d.addr + d.region_size
            if lo < start + size and start < hi:
                if hint is not None:
                    raise DeviceError(f"address range conflicts with memory device id='{d.id or '(unnamed)'}'")
                start = round_up(hi, align)
            elif lo >= start + size:
                break
        if start < base or start + size > end_as:
            raise DeviceError(
                "could not find position in guest address space for memory device - memory "
                "fragmented due to alignments"
            )
        return start

    # -- monitor views ----------------------------------------------------------------------------
    def query_memory_devices(self) -> list[dict[str, Any]]:
        """QMP ``query-memory-devices`` (devices in ascending memaddr order)."""
        return [d.memory_device_info() for d in sorted(self.devices, key=lambda x: x.addr)]

    def hmp_info_memory_devices(self) -> str:
        """HMP ``info memory-devices`` text (``\\n`` line ends; QEMU's monitor sends ``\\r\\n``)."""
        return "".join(d.hmp_info() for d in sorted(self.devices, key=lambda x: x.addr))

    # -- QOM ----------------------------------------------------------------------------------------
    _READ_ONLY_STATIC = ("memaddr", "node", "memdev", "prealloc", "unplugged-inaccessible")

    def qom_get(self, path: str, prop: str) -> Any:
        """QMP ``qom-get`` on a virtio-mem-pci device.

        Raises:
            QmpError: unknown device or property.
        """
        d = self.device(path)
        values: dict[str, Any] = {
            "size": d.size,
            "requested-size": d.requested_size,
            "block-size": d.block_size,
            "memaddr": d.addr,
            "node": d.node,
            "memdev": d.memdev_path,
            "prealloc": d.prealloc,
        }
        if self.behaviour.has_unplugged_inaccessible:
            values["unplugged-inaccessible"] = d.unplugged_inaccessible
        if self.behaviour.has_early_migration_property:
            values["x-early-migration"] = d.early_migration
        if self.behaviour.has_vectors_property:
            values["vectors"] = d.vectors
        if prop not in values:
            raise QmpError(f"Property 'virtio-mem-pci.{prop}' not found")
        return values[prop]

    def qom_set(self, path: str, prop: str, value: Any) -> None:
        """QMP ``qom-set`` (the value as a JSON value: sizes must be integers).

        Raises:
            QmpError: QEMU's message.
        """
        d = self.device(path)
        if prop == "requested-size":
            if not isinstance(value, int) or isinstance(value, bool) or value >= 1 << 64 or value < -(1 << 63):
                raise QmpError("Parameter 'requested-size' expects uint64")
            try:
                d.qom_set_requested_size(value & ((1 << 64) - 1))
            except DeviceError as e:
                raise QmpError(str(e)) from e
            return
        if prop == "size":
            raise QmpError("Property 'virtio-mem.size' is not writable")
        if prop == "block-size":
            raise QmpError("'block-size' cannot be changed")
        known = set(self._READ_ONLY_STATIC)
        if self.behaviour.has_early_migration_property:
            known.add("x-early-migration")
        if prop == "memdev":  # a link property: QEMU 7.2's object_set_link_property wording
            raise QmpError("Attempt to set link property 'memdev' on device '(null)' (type 'virtio-mem') "
                           "after it was realized")
        if prop in known:
            raise QmpError(
                f"Attempt to set property '{prop}' on anonymous device (type 'virtio-mem') after it was realized"
            )
        raise QmpError(f"Property 'virtio-mem-pci.{prop}' not found")

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Answer the QMP commands the model covers (``query-memory-devices``, ``qom-get``,
        ``qom-set``, ``system_reset``, ``human-monitor-command``).

        Raises:
            QmpError: as QEMU would answer; UsageError for commands the model does not cover.
        """
        a = arguments or {}
        if command == "query-memory-devices":
            return self.query_memory_devices()
        if command == "qom-get":
            return self.qom_get(a["path"], a["property"])
        if command == "qom-set":
            self.qom_set(a["path"], a["property"], a["value"])
            return {}
        if command == "system_reset":
            self.system_reset()
            return {}
        if command == "cont":
            self.cont()
            return {}
        if command == "human-monitor-command":
            return self.hmp(a["command-line"])
        raise UsageError(f"QMP command {command!r} is not modelled")

    def hmp(self, cmdline: str) -> str:
        """Answer an HMP command line (``info memory-devices``, ``qom-get``, ``qom-set``,
        ``system_reset``); errors come back as ``Error: ...`` text like the monitor prints."""
        words = shlex.split(cmdline)
        if words[:2] == ["info", "memory-devices"]:
            return self.hmp_info_memory_devices()
        try:
            if words and words[0] == "qom-get" and len(words) == 3:
                v = self.qom_get(words[1], words[2])
                return (str(v).lower() if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else str(v)) + "\n"
            if words and words[0] == "qom-set" and len(words) == 4:
                path, prop, text = words[1:]
                d = self.device(path)
                if prop == "requested-size":
                    d.qom_set_requested_size(parse_size(text, prop))
                else:
                    self.qom_set(path, prop, text)
                return ""
            if words == ["system_reset"]:
                self.system_reset()
                return ""
        except DeviceError as e:
            return f"Error: {e}\n"
        raise UsageError(f"HMP command {cmdline!r} is not modelled")

    # -- machine events -------------------------------------------------------------------------
    def system_reset(self, kind: str = "cold") -> dict[str, bool]:
        """Run every device's system-reset hook; returns {qom_path: unplugged?}.

        A reset that a busy device refused still reboots the guest: its firmware resets the
        machine again once the VM runs (``RESET {"guest": true}``), see :meth:`cont`.
        """
        out = {d.qom_path: d.system_reset(kind) for d in self.devices}
        if kind == "cold" and not all(out.values()):
            self.firmware_reset_pending = True
        return out

    def cont(self) -> dict[str, bool]:
        """QMP ``cont``: the VM runs again. After a reset a busy device refused, the rebooting
        firmware's own resets unplug everything now (QEMU 7.2 with the Linux guest: size 0 at
        once after the migration, without any UNPLUG_ALL from the guest). Returns the reset's
        {qom_path: unplugged?} ({} when no reset was pending)."""
        if not self.firmware_reset_pending or self.migration.busy:
            return {}
        self.firmware_reset_pending = False
        return self.system_reset()
