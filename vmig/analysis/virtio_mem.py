"""virtio-mem devices as a migration stream shows them: collection, QMP/HMP reports, block map.

Sans-I/O: :class:`MemoryDeviceCollector` consumes decoder events (``vmig.stream.events``) —
including the children of PACKAGED commands (postcopy) — and gathers, per virtio-mem device,
its decoded section(s) (``<path>/virtio-mem`` and, 8.0+, ``<path>/virtio-mem-device-early``),
the RAMBlock of its memory backend from the RAM section's block list, and which pages of that
RAMBlock the stream carries.

Reports mirror QEMU 7.2's ``query-memory-devices`` (hw/mem/memory-device.c,
hw/virtio/virtio-mem-pci.c ``virtio_mem_pci_fill_device_info``) and HMP ``info
memory-devices`` (monitor/hmp-cmds.c ``hmp_info_memory_devices``): same keys, spelling,
ordering (ascending memaddr) and number formats (memaddr hex, the rest decimal). The qdev id is
not in the stream: it is replaced by the device path unless a mapping PATH=ID is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmig.stream.constants import RamFlag
from vmig.vmstate import virtio_mem as vm

#: RAM record types that carry (or stand for) a page: ZERO, PAGE, XBZRLE, COMPRESS_PAGE.
PAGE_TYPES = (int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE), int(RamFlag.COMPRESS_PAGE))


@dataclass
class VirtioMemDevice:
    """One virtio-mem device as found in a stream.

    Attributes:
        path: the PCI device path (``0000:00:02.0``), from the section idstr.
        section_offset: stream offset of the device's (late) section payload, or None.
        state: decoded ``virtio`` payload of ``<path>/virtio-mem`` (None if absent).
        early: decoded ``virtio-mem-device-early`` (8.0+ early migration), or None.
        ramblock: the backend's RAMBlock idstr (``<path>/<memdev-id>``), or None if unknown.
        ramblock_length: its used length from the RAM block list.
        page_addrs: in-block byte addresses of every page record of the RAMBlock (numpy int64).
    """

    path: str
    section_offset: int | None = None
    state: Any = None
    early: Any = None
    ramblock: str | None = None
    ramblock_length: int | None = None
    page_addrs: list[np.ndarray] = field(default_factory=list)

    # -- the migrated fields (early section wins where 8.0+ moved them)
    @property
    def _tmp(self) -> Any:
        if self.early is not None:
            return self.early["tmp"]
        return self.state["device"]["tmp"]

    @property
    def memaddr(self) -> int:
        return int(self._tmp["addr"])

    @property
    def region_size(self) -> int:
        return int(self._tmp["region_size"])

    @property
    def block_size(self) -> int:
        return int(self._tmp["block_size"])

    @property
    def node(self) -> int:
        return int(self._tmp["node"])

    @property
    def size(self) -> int:
        src = self.early if self.early is not None else self.state["device"]
        return int(src["size"])

    @property
    def bitmap(self) -> np.ndarray:
        src = self.early if self.early is not None else self.state["device"]
        return src["bitmap"]

    @property
    def requested_size(self) -> int:
        return int(self.state["device"]["requested_size"])

    @property
    def usable_region_size(self) -> int:
        return int(self.state["device"]["usable_region_size"])

    @property
    def complete(self) -> bool:
        """Both halves of the state are present (late section; early section if 8.0+ layout)."""
        if self.state is None:
            return False
        return "tmp" in self.state["device"] or self.early is not None

    @property
    def memdev(self) -> str | None:
        """QOM path of the backend: RAMBlock ``<path>/mem0`` → ``/objects/mem0``."""
        if self.ramblock is None:
            return None
        return "/objects/" + self.ramblock.rsplit("/", 1)[-1]

    def plugged_ranges(self) -> list[tuple[int, int]]:
        """Plugged block ranges (half-open block indices)."""
        return vm.plugged_ranges(self.bitmap)

    def pages(self) -> np.ndarray:
        """All in-block page addresses the stream carries for this device's RAMBlock."""
        if not self.page_addrs:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.page_addrs)

    def qmp(self, dev_id: str | None = None) -> dict[str, Any]:
        """``query-memory-devices`` entry (QAPI's VirtioMEMDeviceInfo member order)."""
        data: dict[str, Any] = {}
        if dev_id is not None:
            data["id"] = dev_id
        data.update(
            {
                "memaddr": self.memaddr,
                "requested-size": self.requested_size,
                "size": self.size,
                "max-size": self.region_size,
                "block-size": self.block_size,
                "node": self.node,
                "memdev": self.memdev if self.memdev is not None else "",
            }
        )
        return {"type": "virtio-mem", "data": data}

    def hmp(self, dev_id: str | None = None) -> str:
        """The HMP ``info memory-devices`` block for this device (lines end with ``\\n``)."""
        shown = dev_id if dev_id is not None else self.path
        return (
            f'Memory device [virtio-mem]: "{shown}"\n'
            f"  memaddr: 0x{self.memaddr:x}\n"
            f"  node: {self.node}\n"
            f"  requested-size: {self.requested_size}\n"
            f"  size: {self.size}\n"
            f"  max-size: {self.region_size}\n"
            f"  block-size: {self.block_size}\n"
            f"  memdev: {self.memdev if self.memdev is not None else ''}\n"
        )


class MemoryDeviceCollector:
    """Collects virtio-mem devices from decoder events (feed with :meth:`feed`)."""

    def __init__(self, *, keep_pages: bool = True) -> None:
        self.devices: dict[str, VirtioMemDevice] = {}
        self.machine: str | None = None
        self.keep_pages = keep_pages
        self._blocks: tuple[Any, ...] = ()
        self._seen_ram_blocks: dict[str, int] = {}
        self._pages: dict[str, list[np.ndarray]] = {}

    def _device(self, path: str) -> VirtioMemDevice:
        dev = self.devices.get(path)
        if dev is None:
            dev = self.devices[path] = VirtioMemDevice(path=path)
        return dev

    def _attach_block(self, dev: VirtioMemDevice) -> None:
        if dev.ramblock is not None:
            return
        prefix = dev.path + "/"
        for name, length in self._seen_ram_blocks.items():
            if name.startswith(prefix):
                dev.ramblock, dev.ramblock_length = name, length
                return

    def feed(self, events: Iterable[Any]) -> None:
        """Consume events (any order the decoder emits them in)."""
        from vmig.stream import events as ev

        for e in events:
            if isinstance(e, ev.Configuration):
                self.machine = e.name
            elif isinstance(e, ev.DeviceState):
                self._device_state(e)
            elif isinstance(e, ev.RamRecords):
                self._ram(e.batch)
            elif isinstance(e, ev.Command) and e.children:
                self.feed(e.children)

    def _device_state(self, e: Any) -> None:
        idstr = e.idstr
        section = f"{idstr} instance {e.instance_id}"
        if idstr.endswith(vm.IDSTR_SUFFIX_EARLY):
            dev = self._device(vm.device_path(idstr))
            dev.early = vm.decode_early(e.payload, offset=e.offset, section=section)
        elif idstr.endswith(vm.IDSTR_SUFFIX):
            dev = self._device(vm.device_path(idstr))
            dev.state = vm.decode_virtio_mem(e.payload, offset=e.offset, section=section)
            dev.section_offset = e.offset

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
                is_page = np.isin(batch.types(), PAGE_TYPES)
            mask = is_page & (batch.block == i)
            if mask.any():
                self._pages.setdefault(blk.idstr, []).append(np.asarray(batch.addr[mask], dtype=np.int64))

    def result(self) -> list[VirtioMemDevice]:
        """Devices with a virtio-mem section, ordered by memaddr (as QEMU lists them), with
        their RAMBlock and pages attached."""
        found = [d for d in self.devices.values() if d.state is not None or d.early is not None]
        for dev in found:
            self._attach_block(dev)
            if dev.ramblock is None:
                # no block list seen (e.g. a stream cut before RAM setup): any page-carrying block
                for name in self._pages:
                    if name.startswith(dev.path + "/"):
                        dev.ramblock = name
                        break
            dev.page_addrs = list(self._pages.get(dev.ramblock or "", []))
        return sorted(found, key=lambda d: (d.memaddr if (d.early is not None or "tmp" in d.state["device"]) else 0, d.path))


def _looks_like_pci_path(path: str) -> bool:
    """``0000:00:02.0`` or ``0000:00:02.0:00.0`` (a device behind a bridge)."""
    head = path.split(":")
    return len(head) >= 3 and len(head[0]) == 4 and all(c in "0123456789abcdef" for c in head[0].lower())


def parse_id_map(items: Iterable[str]) -> dict[str, str]:
    """``["0000:00:02.0=vm0", …]`` → ``{path: id}``.

    Raises:
        vmig.errors.UsageError: an item without ``=``.
    """
    from vmig.errors import UsageError

    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--id expects PATH=ID, got {item!r}")
        path, _, dev_id = item.partition("=")
        out[path.strip()] = dev_id.strip()
    return out


def hmp_text(devices: Iterable[VirtioMemDevice], ids: Mapping[str, str] | None = None) -> str:
    """HMP ``info memory-devices`` text for the devices (already in memaddr order)."""
    ids = ids or {}
    return "".join(d.hmp(ids.get(d.path)) for d in devices)


def qmp_list(devices: Iterable[VirtioMemDevice], ids: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """``query-memory-devices`` list for the devices."""
    ids = ids or {}
    return [d.qmp(ids.get(d.path)) for d in devices]


def block_map(dev: VirtioMemDevice, width: int = 64, rows: int = 4) -> str:
    """A terminal picture of the plugged blocks of one device.

    One character cell per group of blocks (``#`` all plugged, ``+`` some, ``.`` none,
    `` `` beyond the usable region), ``width`` cells per line, at most ``width × rows`` cells;
    then the plugged ranges as block indices and guest-physical addresses.
    """
    bits = np.asarray(dev.bitmap, dtype=bool)
    nblocks = len(bits)
    bs = dev.block_size
    usable_blocks = min(nblocks, dev.usable_region_size // bs if bs else 0) if dev.state is not None else nblocks
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
    lines = [
        f"{dev.path} ({dev.memdev or '?'}): {nblocks} blocks of {_human(bs)}, "
        f"{int(bits.sum())} plugged = {_human(int(bits.sum()) * bs)}, size {_human(dev.size)}, "
        f"requested {_human(dev.requested_size) if dev.state is not None else '?'}",
        f"one cell = {group} block{'s' if group != 1 else ''} ({_human(group * bs)}); "
        "'#' plugged, '+' partly, '.' unplugged, ' ' beyond usable region",
    ]
    for r in range(0, len(chars), width):
        first = r * group
        lines.append(f"  0x{dev.memaddr + first * bs:012x} |{''.join(chars[r:r + width])}|")
    ranges = dev.plugged_ranges()
    lines.append(f"  plugged ranges ({len(ranges)}):")
    for s, e in ranges:
        lines.append(
            f"    blocks [{s}, {e})  0x{dev.memaddr + s * bs:x}-0x{dev.memaddr + e * bs - 1:x}  ({_human((e - s) * bs)})"
        )
    return "\n".join(lines) + "\n"


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def iter_stream_events(path: str, desc_from: str | None = None) -> Iterable[Any]:
    """Decode ``path`` ('-' = stdin, ``.lz4`` transparent) with trailer, ``--desc-from`` and the
    bundled schema sets of the stream's machine type (for streams without a trailer).

    Raises:
        vmig.errors.StreamError: the stream is invalid (path attached).
    """
    from vmig.errors import StreamError
    from vmig.io import streams as sio
    from vmig.stream.decoder import StreamDecoder
    from vmig.stream.vmdesc import find_trailer
    from vmig.vmstate.machines import machine_layout_resolver

    layout = machine_layout_resolver()
    with sio.open_source(path) as src:
        if src.mapped is not None:
            found = find_trailer(src.mapped)
            if found is not None:
                layout.add_description(found[1])
        if desc_from is not None:
            layout.add_description(sio.load_description(desc_from))
        # the collector reads RAM columns only of device blocks: batches build them on demand
        dec = StreamDecoder(path=src.name, layout=layout, ram_columns=False)
        layout.bind(dec)
        try:
            for chunk in src.chunks():
                dec.receive_data(chunk)
                if src.mapped is not None:
                    for ev in dec.events():
                        yield ev
                        src.release_before(dec.offset)  # bounded resident set on multi-GB files
                else:
                    yield from dec.events()
            dec.receive_data(b"")
            yield from dec.events()
        except StreamError as e:
            if layout.failures:
                e.message += "; vmig's schema set could not walk: " + "; ".join(layout.failures[:2])
            e.with_path(src.name)
            raise


def collect_from_path(path: str, desc_from: str | None = None, *, keep_pages: bool = False) -> MemoryDeviceCollector:
    """Decode a stream file and collect its virtio-mem devices (see :class:`MemoryDeviceCollector`)."""
    col = MemoryDeviceCollector(keep_pages=keep_pages)
    col.feed(iter_stream_events(path, desc_from))
    return col


def edit_virtio_mem_stream(data: bytes, edit: Any, *, path: str | None = None,
                           desc_from: Any = None, edit_early: Any = None) -> bytes:
    """Return ``data`` with the virtio-mem state of one device re-encoded after ``edit(state)``.

    ``edit`` receives the decoded state of the ``<path>/virtio-mem`` section (and may change
    ``device.bitmap``, ``device.size``, ``device.requested_size``…) and mutates it in place;
    ``edit_early``, if given, does the same for the 8.0+ ``virtio-mem-device-early`` section
    (where ``size`` and ``bitmap`` live then). Payloads must keep their length (the bitmap length
    is fixed by region and block size), so the rest of the stream, footers and trailer stay valid.

    Raises:
        vmig.errors.UsageError: no such device, or the edit changed the payload length.
    """
    from vmig.errors import UsageError
    from vmig.stream.vmdesc import find_trailer
    from vmig.vmstate.machines import decoder_with_schema_sets

    dec = decoder_with_schema_sets()
    found = find_trailer(data)
    if found is not None:
        dec.layout.add_description(found[1])
    if desc_from is not None:
        dec.layout.add_description(desc_from)
    dec.receive_data(data)
    dec.receive_data(b"")
    from vmig.stream import events as ev

    def walk(events: Iterable[Any]) -> Iterable[Any]:
        for e in events:
            if isinstance(e, ev.Command) and e.children:
                yield from walk(e.children)
            else:
                yield e

    out = bytearray(data)
    done = False
    for e in walk(dec.events()):
        if not isinstance(e, ev.DeviceState):
            continue
        if path is not None and vm.device_path(e.idstr) != path:
            continue
        if e.idstr.endswith(vm.IDSTR_SUFFIX_EARLY) and edit_early is not None:
            early = vm.decode_early(e.payload, offset=e.offset)
            edit_early(early)
            new = vm.encode_early(early)
        elif e.idstr.endswith(vm.IDSTR_SUFFIX) and not done:
            state = vm.decode_virtio_mem(e.payload, offset=e.offset)
            edit(state)
            new = vm.encode_virtio_mem(state)
            done = True
        else:
            continue
        if len(new) != e.length:
            raise UsageError(f"edited {e.idstr} payload is {len(new)} bytes, was {e.length}")
        out[e.offset : e.offset + e.length] = new
    if not done:
        raise UsageError(f"no virtio-mem section{' for ' + path if path else ''} in the stream")
    return bytes(out)
