"""virtio-mem devices as a migration stream shows them: collection, QMP/HMP reports, block map.

Sans-I/O: :class:`MemoryDeviceCollector` consumes decoder events (``vmig.stream.events``) —
including the children of PACKAGED commands (postcopy) — and gathers, per virtio-mem device,
its decoded section(s) (:class:`vmig.vmstate.virtio_mem.VirtioMemSection`), the RAMBlock of its
memory backend from the RAM section's block list, and which pages of that RAMBlock the stream
carries. The device itself is the model, :class:`vmig.device.virtio_mem.VirtioMem`, built from
the decoded sections; a :class:`StreamDevice` adds what only the stream shows.

Reports are the model's own ``query-memory-devices`` / HMP ``info memory-devices`` entries
(hw/virtio/virtio-mem-pci.c ``virtio_mem_pci_fill_device_info``, monitor/hmp-cmds.c
``hmp_info_memory_devices``), in QEMU's order (ascending memaddr). The qdev id is not in the
stream: HMP shows the device path unless a mapping PATH=ID is given, QMP has no ``id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from vmig.device.virtio_mem import VirtioMem
from vmig.errors import UsageError
from vmig.records import field, record
from vmig.runs import true_runs
from vmig.stream.constants import RamFlag
from vmig.units import exact_size
from vmig.vmstate import virtio_mem as vm

if TYPE_CHECKING:
    import numpy as np

#: RAM record types that carry (or stand for) a page: ZERO, PAGE, XBZRLE, COMPRESS_PAGE.
PAGE_TYPES = (int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE), int(RamFlag.COMPRESS_PAGE))


@record
class StreamDevice:
    """What a stream shows of one virtio-mem device.

    Attributes:
        section: its decoded section(s).
        device: the device model built from them, or None when only part of the state is in
            the stream.
        ramblock: the backend's RAMBlock idstr (``<path>/<memdev-id>``), or None if unknown.
        ramblock_length: its used length from the RAM block list.
        page_addrs: in-block byte addresses of every page record of the RAMBlock (numpy int64).
    """

    section: vm.VirtioMemSection
    device: VirtioMem | None = None
    ramblock: str | None = None
    ramblock_length: int | None = None
    page_addrs: list[np.ndarray] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The PCI device path (``0000:00:02.0``)."""
        return self.section.dev_path

    @property
    def complete(self) -> bool:
        return self.device is not None

    def pages(self) -> np.ndarray:
        """All in-block page addresses the stream carries for this device's RAMBlock."""
        import numpy as np

        if not self.page_addrs:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.page_addrs)


class MemoryDeviceCollector:
    """Collects virtio-mem devices from decoder events (feed with :meth:`feed`)."""

    def __init__(self, *, keep_pages: bool = True) -> None:
        self.sections: dict[str, vm.VirtioMemSection] = {}
        self.machine: str | None = None
        self.keep_pages = keep_pages
        self._seen_ram_blocks: dict[str, int] = {}
        self._pages: dict[str, list[np.ndarray]] = {}

    def feed(self, events: Iterable[Any]) -> None:
        """Consume events (any order the decoder emits them in)."""
        from vmig.stream import events as ev

        for e in events:
            if isinstance(e, ev.Configuration):
                self.machine = e.name
            elif isinstance(e, ev.DeviceState):
                vm.add_section(self.sections, e.idstr, e.instance_id, e.payload, e.offset)
            elif isinstance(e, ev.RamRecords):
                self._ram(e.batch)
            elif isinstance(e, ev.Command) and e.children:
                self.feed(e.children)

    def _ram(self, batch: Any) -> None:
        if batch.mem_size is not None:
            for blk in batch.mem_size:
                self._seen_ram_blocks[blk.idstr] = int(blk.used_length)
        if not self.keep_pages or not len(batch):
            return
        is_page: np.ndarray | None = None
        for i, blk in enumerate(batch.blocks):
            if not _looks_like_pci_path(blk.idstr.rsplit("/", 1)[0]):
                continue  # main RAM, ROMs: not a device backend
            if is_page is None:
                import numpy as np

                is_page = np.isin(batch.types(), PAGE_TYPES)
            mask = is_page & (batch.block == i)
            if mask.any():
                self._pages.setdefault(blk.idstr, []).append(batch.addr[mask].astype("int64"))

    def _ramblock(self, path: str) -> tuple[str | None, int | None]:
        prefix = path + "/"
        for name, length in self._seen_ram_blocks.items():
            if name.startswith(prefix):
                return name, length
        # no block list seen (e.g. a stream cut before RAM setup): any page-carrying block
        for name in self._pages:
            if name.startswith(prefix):
                return name, None
        return None, None

    def device(self, path: str) -> StreamDevice | None:
        """The device at ``path`` as seen so far, or None if no virtio-mem section named it."""
        sec = self.sections.get(path)
        if sec is None:
            return None
        ramblock, length = self._ramblock(path)
        model = None
        if sec.complete:
            model = VirtioMem.from_section(sec, memdev_id=ramblock.rsplit("/", 1)[-1] if ramblock else None)
        return StreamDevice(sec, model, ramblock, length, list(self._pages.get(ramblock or "", [])))

    def result(self) -> list[StreamDevice]:
        """Devices with a virtio-mem section, ordered by memaddr (as QEMU lists them; devices with
        part of their state first), with their RAMBlock and pages attached."""
        found = [d for d in map(self.device, self.sections) if d is not None]
        return sorted(found, key=lambda d: (d.device.addr if d.device is not None else 0, d.path))


def _looks_like_pci_path(path: str) -> bool:
    """``0000:00:02.0`` or ``0000:00:02.0:00.0`` (a device behind a bridge)."""
    head = path.split(":")
    return len(head) >= 3 and len(head[0]) == 4 and all(c in "0123456789abcdef" for c in head[0].lower())


def parse_id_map(items: Iterable[str], known: Iterable[str] | None = None) -> dict[str, str]:
    """``["0000:00:02.0=vm0", …]`` → ``{path: id}``.

    Args:
        items: the PATH=ID strings.
        known: the device paths the stream has; a PATH outside them is refused.

    Raises:
        vmig.errors.UsageError: an item without ``=``, or an unknown PATH.
    """
    paths = None if known is None else list(known)
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--id expects PATH=ID, got {item!r}")
        path, _, dev_id = item.partition("=")
        path = path.strip()
        if paths is not None and path not in paths:
            raise UsageError(f"--id {item!r}: no virtio-mem device at {path!r}; the stream has "
                             f"{', '.join(paths) if paths else 'none'}")
        out[path] = dev_id.strip()
    return out


def hmp_text(devices: Iterable[StreamDevice], ids: Mapping[str, str] | None = None) -> str:
    """HMP ``info memory-devices`` text for the devices (already in memaddr order); the device
    path stands in for an id not given in ``ids``."""
    ids = ids or {}
    return "".join(d.device.hmp_info(ids.get(d.path, d.path)) for d in devices if d.device is not None)


def qmp_list(devices: Iterable[StreamDevice], ids: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """``query-memory-devices`` list for the devices (``id`` only where ``ids`` gives one)."""
    ids = ids or {}
    return [d.device.memory_device_info(ids.get(d.path)) for d in devices if d.device is not None]


def block_map(seen: StreamDevice, width: int = 64, rows: int = 4) -> str:
    """A terminal picture of the plugged blocks of one device.

    One character cell per group of blocks (``#`` all plugged, ``+`` some, ``.`` none,
    `` `` beyond the usable region), ``width`` cells per line, at most ``width × rows`` cells;
    then the plugged ranges as block indices and guest-physical addresses.

    Raises:
        UsageError: only part of the device's state is in the stream.
    """
    dev = seen.device
    if dev is None:
        raise UsageError(f"{seen.path}: only part of the virtio-mem state is in the stream")
    bits = dev.bitmap
    nblocks = len(bits)
    bs = dev.block_size
    usable_blocks = min(nblocks, dev.usable_region_size // bs if bs else 0)
    cells = max(1, min(width * rows, nblocks))
    group = max(1, -(-nblocks // cells))
    ncells = -(-nblocks // group) if nblocks else 0
    chars = []
    for c in range(ncells):
        lo, hi = c * group, min(nblocks, (c + 1) * group)
        n = int(bits[lo:hi].sum())
        if n == hi - lo:
            chars.append("#")
        elif n:
            chars.append("+")
        elif lo >= usable_blocks:
            chars.append(" ")
        else:
            chars.append(".")
    plugged = int(bits.sum())
    lines = [
        f"{seen.path} ({dev.memdev_path or '?'}): {nblocks} blocks of {exact_size(bs)}, "
        f"{plugged} plugged = {exact_size(plugged * bs)}, size {exact_size(dev.size)}, "
        f"requested {exact_size(dev.requested_size)}",
        f"one cell = {group} block{'s' if group != 1 else ''} ({exact_size(group * bs)}); "
        "'#' plugged, '+' partly, '.' unplugged, ' ' beyond usable region",
    ]
    for r in range(0, len(chars), width):
        first = r * group
        lines.append(f"  0x{dev.addr + first * bs:012x} |{''.join(chars[r:r + width])}|")
    ranges = true_runs(bits)
    lines.append(f"  plugged ranges ({len(ranges)}):")
    for s, e in ranges:
        lines.append(
            f"    blocks [{s}, {e})  0x{dev.addr + s * bs:x}-0x{dev.addr + e * bs - 1:x}  ({exact_size((e - s) * bs)})"
        )
    return "\n".join(lines) + "\n"


def iter_stream_events(path: str, desc_from: str | None = None) -> Iterable[Any]:
    """Decode ``path`` ('-' = stdin, ``.lz4`` transparent) with trailer, ``--desc-from`` and the
    bundled schema sets of the stream's machine type (for streams without a trailer).

    Raises:
        vmig.errors.StreamError: the stream is invalid (path attached).
    """
    from vmig.io.streams import iter_events

    # the collector reads RAM columns only of device blocks: batches build them on demand
    return iter_events(path, desc_from=desc_from, schema_sets=True, ram_columns=False)
