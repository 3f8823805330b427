"""The virtio-mem device model: QEMU's ``virtio-mem`` behaviour without I/O.

Mirrors hw/virtio/virtio-mem.c (QEMU 7.2 by default; other releases through
:class:`~vmig.device.versions.Behaviour`) as specified in spec/virtio-mem.md: realize-time
property validation with QEMU's messages, the 56-byte config space, the guest request protocol
(PLUG / UNPLUG / UNPLUG_ALL / STATE) with QEMU's check order and response codes, the usable-region
formula, QOM ``requested-size`` writes, system reset, the migration busy rule, and the migration
state (``virtio-mem-device`` and the [8.0]+ ``virtio-mem-device-early`` values, pre-save,
load-time sanity checks and post-load), the device a stream describes (:meth:`VirtioMem.from_section`)
with the consistency checks QEMU's loader skips, and its ``query-memory-devices`` / HMP
``info memory-devices`` entry (hw/virtio/virtio-mem-pci.c ``virtio_mem_pci_fill_device_info``).

Sans-I/O: no threads, no virtqueue memory, no files. A request is 24 bytes in, 10 bytes out;
side effects QEMU would perform on the host (discarding backend ranges, QMP events, config
interrupts) are reported as events/results for the caller to act upon.

Theory of operation
-------------------
State: ``addr`` (memaddr), ``node``, ``block_size``, ``region_size`` (backend size),
``requested_size``, ``size`` (plugged bytes), ``usable_region_size`` (U) and ``bitmap`` (one numpy
bool per block, True = plugged). Invariants the model keeps (spec §8; the exceptions are QEMU's):

1. ``len(bitmap) == region_size // block_size``; ``block_size`` a power of two ≥ the minimum.
2. ``size == popcount(bitmap) * block_size`` — except after loading an inconsistent stream (QEMU
   does not check, spec §5.3).
3. every plugged block lies below ``addr + U``: PLUG checks it and U only shrinks in a successful
   unplug-all, which empties the bitmap first.
4. U ≤ region_size and U % block_size == 0 ([5.2]+), U only grows on ``requested-size`` writes.
5. while :meth:`is_busy`, PLUG/UNPLUG/UNPLUG_ALL answer BUSY and the bitmap, ``size`` and U are
   frozen (system reset is refused the same way); STATE and ``requested-size`` writes still work.

The busy state lives in a :class:`~vmig.device.state.MigrationState` shared by all devices of a machine, driven by
whoever plays the migration engine (a test, the scenario runner, vmig's migration engine).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from vmig.device.requests import (
    REQUEST_SIZE,
    RESPONSE_SIZE,
    BlockState,
    RequestType,
    ResponseType,
    VirtioMemConfig,
    VirtioMemRequest,
    build_response,
)
from vmig.device.state import MigrationState
from vmig.device.versions import Behaviour
from vmig.errors import DeviceError, MigrationError, UsageError
from vmig.records import record
from vmig.runs import true_runs
from vmig.units import KiB, MiB
from vmig.vmstate.virtio_mem import VirtioMemSection, bitmap_to_bool, block_count

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "USABLE_EXTENT",
    "VIRTIO_ID_MEM",
    "MemoryBackend",
    "HostInfo",
    "VirtioMemProperties",
    "VirtioMem",
    "Response",
    "SizeChange",
    "ConfigChange",
    "DeviceBroken",
    "PostLoadResult",
    "usable_region_size_for",
    "rate_limit_size_changes",
    "post_load",
]

U64_MAX = (1 << 64) - 1

#: VIRTIO_MEM_USABLE_EXTENT on x86 (and s390x): 2 × 128 MiB Linux memory blocks.
USABLE_EXTENT = 2 * 128 * MiB
#: ... and on Arm: 2 × 512 MiB.
USABLE_EXTENT_ARM = 2 * 512 * MiB

VIRTIO_ID_MEM = 24

# Feature bits (device specific).
VIRTIO_MEM_F_ACPI_PXM = 0
VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE = 1
VIRTIO_MEM_F_PERSISTENT_SUSPEND = 2


# ------------------------------------------------------------------------------------------------
# Inputs: the backend, the host
# ------------------------------------------------------------------------------------------------
@record
class MemoryBackend:
    """A ``memory-backend-*`` object as far as virtio-mem cares.

    Attributes:
        id: QOM id (``mem0``); its canonical path is ``/objects/<id>``.
        size: backend size in bytes (the device's region size / ``max-size``).
        kind: ``"ram"`` (anonymous), ``"memfd"`` or ``"file"`` (fd-backed).
        share: ``share=on``.
        page_size: backend page size (4 KiB, or a huge page size for hugetlbfs).
        prealloc: the backend's own ``prealloc=on``.
        is_ram: False for a backend that is not RAM (e.g. ROM): "unsupported memdev".
        mapped: already used by another device ("busy memdev").
        align: extra region alignment (fd-backed backends: the page size).
    """

    id: str
    size: int
    kind: str = "ram"
    share: bool = False
    page_size: int = 4 * KiB
    prealloc: bool = False
    is_ram: bool = True
    mapped: bool = False

    @property
    def path(self) -> str:
        return f"/objects/{self.id}"

    @property
    def align(self) -> int:
        return self.page_size if self.kind in ("file", "memfd") else 0

    def has_shared_zeropage(self, host_page_size: int) -> bool:
        """Private anonymous memory with base pages has the shared zero page."""
        return not self.share and self.kind == "ram" and self.page_size == host_page_size


@record(frozen=True)
class HostInfo:
    """Host facts that change realize results.

    Attributes:
        page_size: host base page size.
        thp_size: ``hpage_pmd_size`` from sysfs; None = unreadable (fallback 2 MiB with a warning).
        mlock: ``-overcommit mem-lock=on``.
        discard_disabled: coordinated RAM discard not permitted (e.g. vfio without support).
        wakeup_suspend: guest suspend-to-RAM supported ([9.2]+: PERSISTENT_SUSPEND offered).
        acpi: QEMU built with ACPI (ACPI_PXM offered with a NUMA state; always on pc/q35).
    """

    page_size: int = 4 * KiB
    thp_size: int | None = 2 * MiB
    mlock: bool = False
    discard_disabled: bool = False
    wakeup_suspend: bool = True
    acpi: bool = True


@record
class VirtioMemProperties:
    """``-device virtio-mem-pci`` properties (before realize).

    ``block_size`` 0 means "not set" (the default is derived at realize); ``unplugged_inaccessible``
    and ``early_migration`` None mean the version/machine default; ``id`` None = anonymous device.
    """

    memdev: MemoryBackend | None
    id: str | None = None
    node: int = 0
    memaddr: int = 0
    block_size: int = 0
    requested_size: int = 0
    prealloc: bool = False
    unplugged_inaccessible: str | None = None
    early_migration: bool | None = None
    dynamic_memslots: bool = False
    vectors: int | None = None


# ------------------------------------------------------------------------------------------------
# Outputs: responses and events
# ------------------------------------------------------------------------------------------------
@record(frozen=True)
class Response:
    """A decoded device response (``state`` only meaningful for STATE + ACK)."""

    type: ResponseType
    state: BlockState | None = None

    def to_bytes(self) -> bytes:
        return build_response(self.type, 0 if self.state is None else self.state)


@record(frozen=True)
class SizeChange:
    """QMP event MEMORY_DEVICE_SIZE_CHANGE {id?, size, qom-path} (before rate limiting)."""

    id: str | None
    size: int
    qom_path: str

    def qmp(self) -> dict[str, Any]:
        data: dict[str, Any] = {"size": self.size, "qom-path": self.qom_path}
        if self.id is not None:
            data["id"] = self.id
        return {"event": "MEMORY_DEVICE_SIZE_CHANGE", "data": data}


@record(frozen=True)
class ConfigChange:
    """A config-change interrupt (requested-size written via QOM while DRIVER_OK)."""

    generation: int


@record(frozen=True)
class DeviceBroken:
    """virtio_error(): the device is broken until the driver resets it."""

    message: str


@record(frozen=True)
class PostLoadResult:
    """What the destination did after loading the device state.

    Attributes:
        discarded: ``(offset, length)`` byte ranges of the backend discarded (unplugged runs);
            empty during incoming postcopy.
        populated: plugged ``(offset, length)`` ranges replayed to RamDiscardListeners ([6.1]+).
        preallocated: plugged ranges preallocated (prealloc=on with early migration).
        warnings: warn_report() lines.
    """

    discarded: tuple[tuple[int, int], ...] = ()
    populated: tuple[tuple[int, int], ...] = ()
    preallocated: tuple[tuple[int, int], ...] = ()
    warnings: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------------
def usable_region_size_for(
    requested: int, region_size: int, block_size: int, *, rounded: bool = True, extent: int = USABLE_EXTENT
) -> int:
    """The usable region QEMU derives from ``requested`` (spec §4, before the can-shrink rule).

    ``min(region, requested + extent)``, rounded up to the block size ([5.2]+), 0 if requested is 0.
    """
    if requested == 0:
        return 0
    new = min(region_size, requested + extent)
    if rounded:
        new = -(-new // block_size) * block_size
    return new


def rate_limit_size_changes(
    timed: Iterable[tuple[float, SizeChange]], period: float = 1.0
) -> list[tuple[float, SizeChange]]:
    """What a QMP client receives of MEMORY_DEVICE_SIZE_CHANGE events (spec §7).

    QEMU's monitor rate-limits this event per ``qom-path``: the first one goes out at once and
    opens a ``period`` window; later ones in the window replace each other, and the latest is
    sent when the window ends (which opens the next window). A window ending with nothing
    pending closes.

    Args:
        timed: ``(time in seconds, event)`` in time order, as the device emitted them.
        period: the rate limit (1 s in QEMU).

    Returns:
        ``(delivery time, event)`` in delivery order.
    """
    out: list[tuple[float, SizeChange]] = []
    windows: dict[str, tuple[float, SizeChange | None]] = {}  # path -> (window end, pending)

    def expire(now: float) -> None:
        while True:
            due = [(end, path) for path, (end, _) in windows.items() if end <= now]
            if not due:
                return
            end, path = min(due)
            pending = windows[path][1]
            if pending is None:
                del windows[path]
            else:
                out.append((end, pending))
                windows[path] = (end + period, None)

    for t, ev in timed:
        expire(t)
        if ev.qom_path in windows:
            windows[ev.qom_path] = (windows[ev.qom_path][0], ev)
        else:
            out.append((t, ev))
            windows[ev.qom_path] = (t + period, None)
    expire(float("inf"))
    return out


def _is_power_of_2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


# ------------------------------------------------------------------------------------------------
# The device
# ------------------------------------------------------------------------------------------------
class VirtioMem:
    """One realized virtio-mem device (the ``virtio-mem`` inside a ``virtio-mem-pci``).

    Build with :meth:`realize`. Guest requests go through :meth:`handle_request` (raw bytes, as
    a driver would put them in the queue) or the typed helpers :meth:`plug`, :meth:`unplug`,
    :meth:`unplug_all`, :meth:`state`. Host-side operations: :meth:`qom_set_requested_size`,
    :meth:`system_reset`. Events (size changes, config interrupts, breakage) queue up and are
    drained with :meth:`next_event` / :meth:`drain_events`.
    """

    def __init__(self) -> None:  # use realize()
        import numpy as np

        self.behaviour = Behaviour()
        self.id: str | None = None
        self.qom_path = ""
        self.memdev: MemoryBackend | None = None
        self.addr = 0
        self.node = 0
        self.block_size = 0
        self.region_size = 0
        self.requested_size = 0
        self.size = 0
        self.usable_region_size = 0
        self.bitmap = np.zeros(0, dtype=bool)
        self.prealloc = False
        self.unplugged_inaccessible = "off"
        self.early_migration = False
        self.dynamic_memslots = False
        self.vectors = 0
        self.host = HostInfo()
        self.migration = MigrationState()
        self.numa_nodes = 0
        self.realize_discarded_backend = True
        #: Injected host failures (spec §3.3/§3.4): "prealloc" (prealloc=on plug fails),
        #: "populate" (a RamDiscardListener such as VFIO refuses), "discard" (madvise/fallocate).
        self.host_faults: set[str] = set()
        self._prealloc_warned = False
        self.extent = USABLE_EXTENT
        self.warnings: list[str] = []
        # virtio transport bits the protocol touches
        self.driver_ok = False
        self.broken = False
        self.config_generation = 0
        self.isr = 0
        self._events: deque[SizeChange | ConfigChange | DeviceBroken] = deque()

    # -- realize ----------------------------------------------------------------------------------
    @staticmethod
    def default_block_size(memdev: MemoryBackend | None, host: HostInfo, behaviour: Behaviour) -> tuple[int, list[str]]:
        """``virtio_mem_default_block_size()``: (value, warnings)."""
        warnings: list[str] = []
        if not behaviour.thp_derived_default:
            return behaviour.min_block_size, warnings
        thp = host.thp_size
        if thp is None or not _is_power_of_2(thp):
            if thp is not None:
                warnings.append(f"Read unsupported THP size: {thp:x}")
            thp = 2 * MiB
            warnings.append(f"Could not detect THP size, falling back to {thp // MiB:x}  MiB.")
        if memdev is None:
            return thp, warnings
        if memdev.page_size == host.page_size:
            return max(memdev.page_size, thp), warnings
        return max(memdev.page_size, 1 * MiB), warnings

    @staticmethod
    def check_block_size_property(value: int, behaviour: Behaviour) -> None:
        """The ``block-size`` setter's checks (before realize).

        Raises:
            DeviceError: QEMU's message.
        """
        if value < behaviour.min_block_size:
            raise DeviceError(f"'block-size' property has to be at least 0x{behaviour.min_block_size:x}")
        if not _is_power_of_2(value):
            raise DeviceError("'block-size' property has to be a power of two")

    @classmethod
    def realize(
        cls,
        props: VirtioMemProperties,
        *,
        behaviour: Behaviour | None = None,
        host: HostInfo | None = None,
        migration: MigrationState | None = None,
        numa_nodes: int = 0,
        qom_path: str | None = None,
        arm: bool = False,
    ) -> VirtioMem:
        """Realize a device from its properties, failing like QEMU's ``virtio_mem_device_realize``.

        The memory-device pre-plug (address assignment) is the machine's job
        (:mod:`vmig.device.machine`); ``props.memaddr`` is taken as already assigned.

        Args:
            props: the device properties.
            behaviour: QEMU version / machine type behaviour (default 7.2 on pc-i440fx-7.2).
            host: host facts (page size, THP size, mlock).
            migration: the machine-wide migration state (shared by all devices of a machine).
            numa_nodes: number of configured NUMA nodes (0 = no ``-numa``).
            qom_path: canonical QOM path of the virtio-mem-pci proxy.
            arm: Arm target (usable extent 1 GiB, unplugged-inaccessible always on).

        Returns:
            The realized device (warnings in ``.warnings``).

        Raises:
            DeviceError: with QEMU's error text.
        """
        import numpy as np

        beh = behaviour or Behaviour()
        host = host or HostInfo()
        dev = cls()
        dev.behaviour = beh
        dev.host = host
        dev.migration = migration or MigrationState()
        dev.numa_nodes = numa_nodes
        dev.extent = USABLE_EXTENT_ARM if arm else USABLE_EXTENT
        dev.id = props.id
        dev.qom_path = qom_path or (f"/machine/peripheral/{props.id}" if props.id else "/machine/peripheral-anon/device[0]")
        if props.block_size:
            cls.check_block_size_property(props.block_size, beh)
        if props.vectors is not None and not beh.has_vectors_property:
            raise DeviceError("Property 'virtio-mem-pci.vectors' not found")
        if props.early_migration is not None and not beh.has_early_migration_property:
            raise DeviceError("Property 'virtio-mem-pci.x-early-migration' not found")
        if props.dynamic_memslots and not beh.has_dynamic_memslots:
            raise DeviceError("Property 'virtio-mem-pci.dynamic-memslots' not found")
        if props.unplugged_inaccessible is not None and not beh.has_unplugged_inaccessible:
            raise DeviceError("Property 'virtio-mem-pci.unplugged-inaccessible' not found")

        md = props.memdev
        # 1. memdev
        if md is None:
            raise DeviceError("'memdev' property is not set")
        if md.mapped:
            raise DeviceError(f"'memdev' property specifies a busy memdev: {md.id}")
        if not md.is_ram:
            raise DeviceError("'memdev' property specifies an unsupported memdev")
        if md.prealloc and beh.rejects_prealloc_memdev:
            raise DeviceError(
                f"'memdev' property specifies a memdev with preallocation enabled: {md.id}. "
                "Instead, specify 'prealloc=on' for the virtio-mem device. "
            )
        # 2. node (the missing space after "exceeds" is QEMU's)
        if (numa_nodes and props.node >= numa_nodes) or (not numa_nodes and props.node):
            raise DeviceError(
                f"'node' property has value '{props.node}', which exceedsthe number of numa nodes: "
                f"{numa_nodes if numa_nodes else 1}"
            )
        # 3. mlock
        if host.mlock:
            raise DeviceError("Incompatible with mlock")
        # 4. unplugged-inaccessible
        ui = props.unplugged_inaccessible or beh.unplugged_inaccessible_default
        if ui not in ("on", "off", "auto"):
            raise DeviceError(f"Parameter 'unplugged-inaccessible' does not accept value '{ui}'")
        if arm:
            ui = "on"
        elif beh.has_unplugged_inaccessible:
            zero = md.has_shared_zeropage(host.page_size)
            if ui == "auto":
                ui = "off" if zero else "on"
            elif ui == "off" and not zero:
                dev.warnings.append(
                    "'unplugged-inaccessible' property set to 'off' with a memdev that does not "
                    "support the shared zeropage."
                )
        if props.dynamic_memslots and ui != "on":
            raise DeviceError("'dynamic-memslots' property set to 'on' requires 'unplugged-inaccessible' to be 'on'")
        # 5. block size
        default_bs, w = cls.default_block_size(md, host, beh)
        dev.warnings.extend(w)
        bs = props.block_size or default_bs
        if bs < md.page_size:
            raise DeviceError(f"'block-size' property has to be at least the page size (0x{md.page_size:x})")
        if bs < default_bs:
            dev.warnings.append(
                f"'block-size' property is smaller than the default block size ({default_bs // MiB:x} MiB)"
            )
        if props.requested_size % bs:
            raise DeviceError(f"'requested-size' property has to be multiples of 'block-size' (0x{bs:x})")
        if props.memaddr % bs:
            raise DeviceError(f"'memaddr' property has to be multiples of 'block-size' (0x{bs:x})")
        if md.size % bs:
            raise DeviceError(f"'memdev' property memdev size has to be multiples of'block-size' (0x{bs:x})")
        # 6. discard
        if host.discard_disabled:
            raise DeviceError("Discarding RAM is disabled")
        # 7. state
        dev.memdev = md
        dev.addr = props.memaddr
        dev.node = props.node
        dev.block_size = bs
        dev.region_size = md.size
        dev.requested_size = props.requested_size
        dev.prealloc = props.prealloc
        dev.unplugged_inaccessible = ui
        dev.dynamic_memslots = props.dynamic_memslots
        dev.early_migration = (
            beh.early_migration_default if props.early_migration is None else props.early_migration
        )
        dev.vectors = beh.msix_vectors_default if props.vectors is None else props.vectors
        # the whole backend is discarded at realize; [8.2]+ skips it when started with -incoming
        dev.realize_discarded_backend = not (
            beh.realize_skips_discard_when_incoming and dev.migration.inmigrate
        )
        dev._resize_usable_region(dev.requested_size, can_shrink=True)
        dev.bitmap = np.zeros(md.size // bs, dtype=bool)
        md.mapped = True
        return dev

    # -- properties -------------------------------------------------------------------------------
    @property
    def nb_blocks(self) -> int:
        """``bitmap_size``: number of blocks in the region."""
        return len(self.bitmap)

    @property
    def memdev_path(self) -> str:
        return self.memdev.path if self.memdev else ""

    def is_busy(self) -> bool:
        """``virtio_mem_is_busy()`` (spec §3.2)."""
        return self.migration.busy

    def host_features(self, numa_state: bool = True) -> int:
        """Device-specific feature bits offered (spec §2.2)."""
        f = 0
        if numa_state and self.host.acpi:
            f |= 1 << VIRTIO_MEM_F_ACPI_PXM
        if self.unplugged_inaccessible == "on":
            f |= 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE
        if self.behaviour.persistent_suspend and self.host.wakeup_suspend:
            f |= 1 << VIRTIO_MEM_F_PERSISTENT_SUSPEND
        return f

    def validate_features(self, accepted: int) -> bool:
        """FEATURES_OK check: a driver must accept UNPLUGGED_INACCESSIBLE when offered."""
        bit = 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE
        return not (self.host_features() & bit) or bool(accepted & bit)

    # -- config space -----------------------------------------------------------------------------
    def config(self) -> dict[str, int]:
        """The live ``virtio_mem_config`` values (what a guest config read returns)."""
        return {
            "block_size": self.block_size,
            "node_id": self.node,
            "addr": self.addr,
            "region_size": self.region_size,
            "usable_region_size": self.usable_region_size,
            "plugged_size": self.size,
            "requested_size": self.requested_size,
        }

    def config_bytes(self) -> bytes:
        """The 56-byte little-endian config space regenerated from live state."""
        cfg = self.config()
        cfg["node_id"] &= 0xFFFF
        return VirtioMemConfig.build(cfg)

    # -- events -----------------------------------------------------------------------------------
    def next_event(self) -> SizeChange | ConfigChange | DeviceBroken | None:
        """Pop the oldest pending event, or None."""
        return self._events.popleft() if self._events else None

    def drain_events(self, kind: type | None = None) -> list[SizeChange | ConfigChange | DeviceBroken]:
        """Pop all pending events (only those of class ``kind`` if given; others stay queued)."""
        if kind is None:
            out = list(self._events)
            self._events.clear()
            return out
        out = [e for e in self._events if isinstance(e, kind)]
        keep = [e for e in self._events if not isinstance(e, kind)]
        self._events.clear()
        self._events.extend(keep)
        return out

    def _size_changed(self) -> None:
        self._events.append(SizeChange(self.id, self.size, self.qom_path))

    def _break(self, message: str) -> None:
        self.broken = True
        self._events.append(DeviceBroken(message))

    # -- bitmap helpers ---------------------------------------------------------------------------
    def _block_range(self, gpa: int, size: int) -> slice:
        first = (gpa - self.addr) // self.block_size
        return slice(first, first + size // self.block_size)

    def valid_range(self, gpa: int, size: int) -> bool:
        """``virtio_mem_valid_range()`` (spec §3.2)."""
        if gpa % self.block_size:
            return False
        if gpa + size > U64_MAX or size == 0:
            return False
        if gpa < self.addr or gpa >= self.addr + self.usable_region_size:
            return False
        if gpa + size > self.addr + self.usable_region_size:
            return False
        return True

    def plugged_runs(self) -> list[tuple[int, int]]:
        """Maximal plugged block runs as (first block, count)."""
        return [(s, e - s) for s, e in true_runs(self.bitmap)]

    def unplugged_runs(self) -> list[tuple[int, int]]:
        return [(s, e - s) for s, e in true_runs(~self.bitmap)]

    # -- usable region ----------------------------------------------------------------------------
    def _resize_usable_region(self, requested: int, can_shrink: bool) -> None:
        new = usable_region_size_for(
            requested, self.region_size, self.block_size,
            rounded=self.behaviour.rounds_usable_region, extent=self.extent,
        )
        if new < self.usable_region_size and not can_shrink:
            return
        self.usable_region_size = new

    # -- guest requests ---------------------------------------------------------------------------
    def handle_request(self, request: bytes | bytearray | memoryview, writable: int = RESPONSE_SIZE) -> bytes | None:
        """Process one queue element as QEMU's ``virtio_mem_handle_request`` does.

        Args:
            request: the driver-readable bytes of the element (24 needed; extra ignored).
            writable: size of the device-writable part of the element.

        Returns:
            The 10-byte response, or None for a protocol violation: the device is then marked
            broken (a :class:`DeviceBroken` event, ``broken`` True) and the element gets no
            used entry. A broken device ignores further requests (returns None) until reset.
        """
        if self.broken:
            return None
        if len(request) < REQUEST_SIZE:
            self._break(f"virtio-mem protocol violation: invalid request size: {REQUEST_SIZE}")
            return None
        if writable < RESPONSE_SIZE:
            self._break(f"virtio-mem protocol violation: not enough space for response: {writable}")
            return None
        req = VirtioMemRequest.parse(bytes(request[:REQUEST_SIZE]))
        try:
            rtype = RequestType(req.type)
        except ValueError:
            self._break(f"virtio-mem protocol violation: unknown request type: {req.type}")
            return None
        if rtype is RequestType.PLUG:
            resp = self.plug(req.addr, req.nb_blocks)
        elif rtype is RequestType.UNPLUG:
            resp = self.unplug(req.addr, req.nb_blocks)
        elif rtype is RequestType.UNPLUG_ALL:
            resp = self.unplug_all()
        else:
            resp = self.state(req.addr, req.nb_blocks)
        return resp.to_bytes()

    def _state_change(self, gpa: int, nb_blocks: int, plug: bool) -> ResponseType:
        size = (nb_blocks & 0xFFFF) * self.block_size
        if not self.valid_range(gpa, size):
            return ResponseType.ERROR
        if plug and self.size + size > self.requested_size:
            return ResponseType.NACK
        blocks = self.bitmap[self._block_range(gpa, size)]
        if plug and blocks.any():
            return ResponseType.ERROR
        if not plug and not blocks.all():
            return ResponseType.ERROR
        if self.is_busy():
            return ResponseType.BUSY
        if plug and self.prealloc and "prealloc" in self.host_faults:
            if not self._prealloc_warned:  # QEMU warns only once
                self._prealloc_warned = True
                self.warnings.append("virtio-mem: preallocation of plugged memory failed")
            return ResponseType.BUSY
        if (plug and "populate" in self.host_faults) or (not plug and "discard" in self.host_faults):
            return ResponseType.BUSY
        blocks[:] = plug  # a view into self.bitmap
        self.size += size if plug else -size
        self._size_changed()
        return ResponseType.ACK

    def plug(self, gpa: int, nb_blocks: int) -> Response:
        """PLUG request (spec §3.3)."""
        return Response(self._state_change(gpa, nb_blocks, True))

    def unplug(self, gpa: int, nb_blocks: int) -> Response:
        """UNPLUG request (spec §3.4)."""
        return Response(self._state_change(gpa, nb_blocks, False))

    def _unplug_all(self) -> bool:
        """``virtio_mem_unplug_all()``: False when refused (busy)."""
        if self.size or not self.behaviour.unplug_all_busy_only_if_plugged:
            if self.is_busy():
                return False
            if self.size and "discard" in self.host_faults:
                return False
            if self.size:
                self.bitmap[:] = False
                self.size = 0
                self._size_changed()
            elif self.bitmap.any():
                # only reachable after loading an inconsistent stream (size 0, bits set)
                self.bitmap[:] = False
        self._resize_usable_region(self.requested_size, can_shrink=True)
        return True

    def unplug_all(self) -> Response:
        """UNPLUG_ALL request (spec §3.5)."""
        return Response(ResponseType.ACK if self._unplug_all() else ResponseType.BUSY)

    def state(self, gpa: int, nb_blocks: int) -> Response:
        """STATE request (spec §3.6)."""
        size = (nb_blocks & 0xFFFF) * self.block_size
        if not self.valid_range(gpa, size):
            return Response(ResponseType.ERROR)
        blocks = self.bitmap[self._block_range(gpa, size)]
        if blocks.all():
            st = BlockState.PLUGGED
        elif not blocks.any():
            st = BlockState.UNPLUGGED
        else:
            st = BlockState.MIXED
        return Response(ResponseType.ACK, st)

    # -- host side --------------------------------------------------------------------------------
    def qom_set_requested_size(self, value: int) -> None:
        """QOM/QMP write of ``requested-size`` on the realized device (spec §4).

        Raises:
            DeviceError: QEMU's messages (alignment, larger than the backend).
        """
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
            raise DeviceError("Parameter 'requested-size' expects uint64")
        if value % self.block_size:
            raise DeviceError(f"'requested-size' has to be multiples of 'block-size' (0x{self.block_size:x})")
        if value > self.region_size:
            raise DeviceError(f"'requested-size' cannot exceed the memory backend size(0x{self.region_size:x})")
        if value != self.requested_size:
            self._resize_usable_region(value, can_shrink=False)
            self.requested_size = value
        # virtio_notify_config(): only delivered with DRIVER_OK
        if self.driver_ok:
            self.config_generation += 1
            self.isr |= 0x3
            self._events.append(ConfigChange(self.config_generation))

    def system_reset(self, kind: str = "cold") -> bool:
        """Machine-wide reset hook (spec §5.1): unplug everything unless busy.

        Args:
            kind: ``"cold"`` (system_reset, reboot) or ``"wakeup"`` (resume from S3; [9.2]+ ignores it).

        Returns:
            True if memory was unplugged (or nothing had to be), False if refused (busy).
        """
        if kind == "wakeup" and self.behaviour.persistent_suspend:
            return True
        return self._unplug_all()

    def virtio_reset(self) -> None:
        """Transport reset (driver writes status 0): clears broken/DRIVER_OK, keeps memory."""
        self.broken = False
        self.driver_ok = False
        self.isr = 0

    # -- migration --------------------------------------------------------------------------------
    def _tmp(self) -> dict[str, int]:
        return {
            "addr": self.addr,
            "region_size": self.region_size,
            "block_size": self.block_size,
            "node": self.node,
        }

    def vmstate_values(self) -> dict[str, Any]:
        """pre_save + the ``virtio-mem-device`` fields (QEMU field names).

        Without early migration: ``tmp``, ``usable_region_size``, ``size``, ``requested_size``,
        ``bitmap`` (a copy, numpy bool per block). With early migration ([8.0]+ machines) only
        ``usable_region_size`` and ``requested_size`` (the rest is in :meth:`early_vmstate_values`).
        """
        if self.early_migration:
            return {"usable_region_size": self.usable_region_size, "requested_size": self.requested_size}
        return {
            "tmp": self._tmp(),
            "usable_region_size": self.usable_region_size,
            "size": self.size,
            "requested_size": self.requested_size,
            "bitmap": self.bitmap.copy(),
        }

    def early_vmstate_values(self) -> dict[str, Any]:
        """The ``virtio-mem-device-early`` fields ([8.0]+): tmp, size, bitmap.

        Raises:
            UsageError: the device has no early section (early migration off).
        """
        if not self.early_migration:
            raise UsageError("this device has no virtio-mem-device-early section (x-early-migration off)")
        return {"tmp": self._tmp(), "size": self.size, "bitmap": self.bitmap.copy()}

    def _check_tmp(self, tmp: Mapping[str, int], vmsd: str) -> None:
        """The sanity-checks post_load, in QEMU's order (spec §6.3)."""
        region = self.region_size
        if tmp["addr"] != self.addr:
            msg = f"Property 'memaddr' changed from 0x{tmp['addr']:x} to 0x{self.addr:x}"
        elif tmp["region_size"] != region:
            msg = f"Property 'memdev' size changed from 0x{tmp['region_size']:x} to 0x{region:x}"
        elif tmp["block_size"] != self.block_size:
            msg = f"Property 'block-size' changed from 0x{tmp['block_size']:x} to 0x{self.block_size:x}"
        elif tmp["node"] != self.node:
            msg = f"Property 'node' changed from {tmp['node']} to {self.node}"
        else:
            return
        raise MigrationError(f"{msg}\nFailed to load {vmsd}:tmp")

    def _load_bitmap(self, value: Any) -> np.ndarray:
        import numpy as np

        n = self.nb_blocks
        if isinstance(value, np.ndarray) and value.dtype == bool:
            if len(value) < n:
                raise UsageError(f"bitmap has {len(value)} blocks, {n} needed")
            return value[:n].copy()
        return bitmap_to_bool(value, n)

    def from_vmstate(self, values: Mapping[str, Any], *, early: bool = False) -> None:
        """Load ``virtio-mem-device`` (or, with ``early``, ``-early``) values into this device.

        The device must be realized with the destination's own configuration: the ``tmp``
        sanity fields are compared with it first (QEMU's messages), then the values are stored
        without any consistency check (spec §5.3). ``bitmap`` may be a numpy bool array (one per
        block), big-endian wire bytes, or the list of 64-bit words.

        Raises:
            MigrationError: a sanity check failed (first line = QEMU's error_report line).
        """
        vmsd = "virtio-mem-device-early" if early else "virtio-mem-device"
        if early or not self.early_migration:
            self._check_tmp(values["tmp"], vmsd)
        if early:
            self.size = int(values["size"])
            self.bitmap = self._load_bitmap(values["bitmap"])
            return
        self.usable_region_size = int(values["usable_region_size"])
        self.requested_size = int(values["requested_size"])
        if not self.early_migration:
            self.size = int(values["size"])
            self.bitmap = self._load_bitmap(values["bitmap"])

    def _ranges(self, runs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
        bs = self.block_size
        return tuple((s * bs, n * bs) for s, n in runs)

    def post_load_early(self) -> PostLoadResult:
        """``virtio_mem_post_load_early`` ([8.0]+): with prealloc=on, preallocate the plugged
        ranges (and, if postcopy was advised, discard the whole backend again); then replay the
        plugged ranges to the RamDiscardListeners."""
        plugged = self._ranges(self.plugged_runs())
        pre: tuple[tuple[int, int], ...] = ()
        discarded: tuple[tuple[int, int], ...] = ()
        if self.prealloc:
            pre = plugged
            if self.migration.postcopy_advised:
                discarded = ((0, self.region_size),)
        return PostLoadResult(discarded=discarded, populated=plugged, preallocated=pre)

    def post_load(self) -> PostLoadResult:
        """``virtio_mem_post_load`` (spec §5.2): replay, then discard unplugged runs unless in
        incoming postcopy."""
        warnings: list[str] = []
        populated: tuple[tuple[int, int], ...] = ()
        if not self.early_migration and self.behaviour.ram_discard_manager:
            populated = self._ranges(self.plugged_runs())
        if self.prealloc and not self.early_migration and self.behaviour.has_early_migration_property:
            warnings.append("Proper preallocation with migration requires a newer QEMU machine")
        discarded = unplugged_discarded_at_load(self.bitmap, self.block_size,
                                                incoming_postcopy=self.migration.in_incoming_postcopy)
        if self.migration.in_incoming_postcopy:
            return PostLoadResult(populated=populated, warnings=tuple(warnings))
        self.warnings.extend(warnings)
        return PostLoadResult(discarded=discarded, populated=populated, warnings=tuple(warnings))

    # -- a migrated state ---------------------------------------------------------------------------
    @classmethod
    def from_section(cls, section: VirtioMemSection, *, memdev_id: str | None = None,
                     id: str | None = None) -> VirtioMem:
        """The device a stream describes, as the source had it at pre_save.

        Its properties come from the migrated ``tmp`` fields, its state from the decoded values,
        stored as QEMU's loader stores them (no consistency check, spec §5.3).

        Args:
            section: the decoded sections of the device (:mod:`vmig.vmstate.virtio_mem`).
            memdev_id: the memory backend's id (the last part of its RAMBlock idstr), if known.
            id: the qdev id (not in the stream), if known.

        Raises:
            UsageError: only part of the state is in the stream.
        """
        import numpy as np

        if not section.complete:
            raise UsageError(f"{section.dev_path}: only part of the virtio-mem state is in the stream")
        late = section.decoded.device
        tmp = (section.early if section.early is not None else late)["tmp"]
        dev = cls()
        dev.id = id
        dev.addr = int(tmp["addr"])
        dev.region_size = int(tmp["region_size"])
        dev.block_size = int(tmp["block_size"])
        dev.node = int(tmp["node"])
        if memdev_id is not None:
            dev.memdev = MemoryBackend(memdev_id, dev.region_size, mapped=True)
        dev.early_migration = section.early is not None
        dev.bitmap = np.zeros(block_count(dev.region_size, dev.block_size), dtype=bool)
        if dev.early_migration:
            dev.from_vmstate(section.early, early=True)
        dev.from_vmstate(late)
        return dev

    def reconfigured(self, *, addr: int | None = None, region_size: int | None = None,
                     block_size: int | None = None, node: int | None = None) -> VirtioMem:
        """This device as a destination started with other properties would realize it (None =
        the same value): same migration layout, nothing plugged yet. Loading this device's
        state into it runs QEMU's sanity checks (:meth:`from_vmstate`)."""
        import numpy as np

        dev = VirtioMem()
        dev.behaviour, dev.id, dev.memdev = self.behaviour, self.id, self.memdev
        dev.early_migration = self.early_migration
        dev.addr = self.addr if addr is None else addr
        dev.region_size = self.region_size if region_size is None else region_size
        dev.block_size = self.block_size if block_size is None else block_size
        dev.node = self.node if node is None else node
        dev.bitmap = np.zeros(block_count(dev.region_size, dev.block_size), dtype=bool)
        return dev

    def plugged_bytes(self) -> int:
        """Plugged blocks × block size (what ``size`` equals unless a stream says otherwise, I2)."""
        import numpy as np

        return int(np.count_nonzero(self.bitmap)) * self.block_size

    def plugged_beyond_usable(self) -> np.ndarray:
        """Indices of plugged blocks at or beyond the usable region (none while I3 holds)."""
        import numpy as np

        if not self.block_size:
            return np.zeros(0, dtype=np.int64)
        first = self.usable_region_size // self.block_size
        return first + np.flatnonzero(self.bitmap[first:])

    def state_problems(self) -> list[str]:
        """Sentences for a (loaded) state that breaks I2 or I3; QEMU's loader checks neither."""
        import numpy as np

        out: list[str] = []
        bs = self.block_size
        plugged = int(np.count_nonzero(self.bitmap))
        if self.size != self.plugged_bytes():
            out.append(f"size 0x{self.size:x} != {plugged} plugged blocks x block-size 0x{bs:x} "
                       f"= 0x{self.plugged_bytes():x}")
        beyond = self.plugged_beyond_usable()
        if len(beyond):
            first = int(beyond[0])
            out.append(f"{len(beyond)} plugged block(s) beyond the usable region (usable_region_size "
                       f"0x{self.usable_region_size:x}); first: block {first} at 0x{self.addr + first * bs:x}")
        return out

    # -- QMP / HMP views ----------------------------------------------------------------------------
    def memory_device_info(self, id: str | None = None) -> dict[str, Any]:
        """One ``query-memory-devices`` entry (spec §7), keys in QEMU 7.2's output order.

        Args:
            id: the qdev id to show (default: the device's own; none = no ``id`` key).
        """
        data: dict[str, Any] = {
            "memdev": self.memdev_path,
            "memaddr": self.addr,
            "block-size": self.block_size,
            "size": self.size,
            "node": self.node,
            "max-size": self.region_size,
            "requested-size": self.requested_size,
        }
        shown = self.id if id is None else id
        if shown is not None:
            data["id"] = shown
        return {"type": "virtio-mem", "data": data}

    def hmp_info(self, id: str | None = None) -> str:
        """This device's lines of HMP ``info memory-devices`` (``\\n`` line ends).

        Args:
            id: the name to show (default: the device's own id, or an empty one).
        """
        shown = id if id is not None else (self.id or "")
        return (
            f'Memory device [virtio-mem]: "{shown}"\n'
            f"  memaddr: 0x{self.addr:x}\n"
            f"  node: {self.node}\n"
            f"  requested-size: {self.requested_size}\n"
            f"  size: {self.size}\n"
            f"  max-size: {self.region_size}\n"
            f"  block-size: {self.block_size}\n"
            f"  memdev: {self.memdev_path}\n"
        )

    def check_invariants(self) -> list[str]:
        """Spec §8 invariants that must hold for a device driven only by guest/host actions.

        Returns the violated ones (empty list = all good). Loading a crafted stream can break
        I2/I6 legitimately; callers decide.
        """
        bad = []
        bs = self.block_size
        if self.nb_blocks != self.region_size // bs or self.region_size % bs or self.addr % bs:
            bad.append("I1")
        if self.size != self.plugged_bytes():
            bad.append("I2")
        if len(self.plugged_beyond_usable()):
            bad.append("I3")
        if self.requested_size:
            formula = usable_region_size_for(
                self.requested_size, self.region_size, bs,
                rounded=self.behaviour.rounds_usable_region, extent=self.extent,
            )
            if self.usable_region_size < formula:
                bad.append("I5")
        if self.usable_region_size > self.region_size or (
            self.behaviour.rounds_usable_region and self.usable_region_size % bs
        ):
            bad.append("I6")
        if self.usable_region_size == 0 and self.size:
            bad.append("I7")
        if self.requested_size % bs:
            bad.append("I8")
        return bad


def unplugged_discarded_at_load(bitmap: np.ndarray, block_size: int, *,
                                incoming_postcopy: bool) -> tuple[tuple[int, int], ...]:
    """What a destination does with pages of unplugged blocks, QEMU 7.2's one rule.

    ``virtio_mem_post_load`` discards every unplugged run of the memory backend (byte ranges
    returned here) unless incoming postcopy runs: a page that arrived for an unplugged block (a
    guest write racing an unplug under the discard-manager notifier, which filters only the
    first bitmap) is loaded and then dropped, so the guest reads zeros there (checked with
    ``pmemsave`` on QEMU 7.2). Inside a postcopy package nothing is discarded. The migration
    Destination and ``vmig check`` both follow this function.
    """
    import numpy as np

    if incoming_postcopy:
        return ()
    return tuple((s * block_size, (e - s) * block_size) for s, e in true_runs(~np.asarray(bitmap, dtype=bool)))


def post_load(values: Mapping[str, Any], dest: VirtioMem, *, early: bool = False) -> PostLoadResult:
    """Load decoded ``virtio-mem-device`` values into the destination device and run post-load.

    Args:
        values: decoded field values (QEMU names; see :meth:`VirtioMem.from_vmstate`).
        dest: the destination device, realized with the destination's command line.
        early: the values are from ``virtio-mem-device-early``.

    Raises:
        MigrationError: a sanity check failed, with QEMU's message.
    """
    dest.from_vmstate(values, early=early)
    return dest.post_load_early() if early else dest.post_load()
