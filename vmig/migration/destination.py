"""The migration destination: loads decoder events as QEMU 7.2's incoming side does.

Theory of operation (QEMU's savevm.c load loop, ram.c ram_load_precopy/postcopy, postcopy-ram.c):

1. RAM START, MEM_SIZE list: each listed block must exist here (``blocks``) with the same used
   length; otherwise the load fails with QEMU's lines (checked against QEMU 7.2):
   ``Unknown ramblock "<id>", cannot accept migration`` or
   ``Size mismatch: <id>: 0x<in> != 0x<local>: Invalid argument``, then
   ``error while loading state for instance 0x0 of device 'ram'`` and
   ``load of migration failed: Invalid argument``. Without ``blocks`` the list is accepted.
2. Page records write the block images through :func:`vmig.stream.ramcodec.apply_batch` (ZERO
   fills, PAGE copies, XBZRLE against the current page, zlib pages inflated); ``received``
   remembers every page a record delivered.
3. Postcopy commands move the incoming postcopy state as QEMU's does
   (none → advise → discard → listening → running → end): ADVISE, the first RAM_DISCARD
   (ranges are dropped: those pages read as zero until a record delivers them), LISTEN and RUN
   (inside PACKAGED, decoded recursively), EOF (end). The state goes to ``machine``'s
   MigrationState, so its virtio-mem devices are busy while incoming postcopy runs: a system
   reset then leaves plugged memory alone ("reboot during postcopy", spec virtio-mem.md §5.1).
4. virtio-mem device sections are loaded into ``machine``'s device models with QEMU's sanity
   checks and post-load (:func:`vmig.device.sections.load_section`); a refused check fails the
   load with QEMU's error chain. Post-load discards the unplugged blocks outside incoming
   postcopy (:func:`vmig.device.virtio_mem.unplugged_discarded_at_load`): a page that arrived
   for an unplugged block reads as zero afterwards, as on QEMU 7.2.
5. :meth:`page_requests` answers what a running postcopy guest's accesses would ask the source
   for: pages not yet received, except unplugged virtio-mem blocks (satisfied locally with zero
   pages, never requested).
6. Once the stream opens the return path (OPEN_RETURN_PATH), the destination queues what QEMU's
   sends back: a PONG per PING, REQ_PAGES_ID / REQ_PAGES for :meth:`request_pages` (the block is
   named when it differs from the previous request's), SHUT 0 at the end;
   :meth:`take_return_path` hands out the bytes. Events are applied in stream order here, so PONG 3
   (inside PACKAGED) precedes PONG 4; QEMU's listen thread may answer PING 4 first (the real
   postcopy-rp capture shows 1, 2, 4, 3).

Sans-I/O: feed events from :func:`vmig.io.streams.iter_events` (or ``decode``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from vmig.errors import MigrationError
from vmig.runs import true_runs
from vmig.stream.constants import MigCmd, RpMsg, SectionType
from vmig.stream.events import (
    Command,
    Configuration,
    DeviceState,
    EndOfStream,
    FileHeader,
    RamRecords,
    SectionEnd,
    SectionHeader,
)
from vmig.stream.ramcodec import BlockBuffers, apply_batch
from vmig.stream.return_path import encode_rp, rp_message

if TYPE_CHECKING:
    from vmig.device.machine import Machine

__all__ = ["Destination", "ram_size_mismatch"]

def _unknown_section(idstr: str, instance: int) -> MigrationError:
    return MigrationError(
        f"Unknown savevm section or instance '{idstr}' {instance}. Make sure that your current VM "
        "setup matches your saved VM setup, including any hotplugged devices\n"
        "load of migration failed: Invalid argument")


def _load_failure(line: str) -> MigrationError:
    return MigrationError(f"{line}\nload of migration failed: Invalid argument")


def _ram_failure(line: str) -> MigrationError:
    return MigrationError("\n".join([line, "error while loading state for instance 0x0 of device 'ram'",
                                     "load of migration failed: Invalid argument"]))


def ram_size_mismatch(idstr: str, sent: int, local: int) -> MigrationError:
    """QEMU's lines when a RAMBlock's length in the stream differs from the destination's
    (migration/ram.c ``qemu_ram_resize`` during the RAM section's block list)."""
    return _ram_failure(f"Size mismatch: {idstr}: {sent:#x} != {local:#x}: Invalid argument")


class Destination:
    """An incoming migration.

    Args:
        blocks: the destination's RAMBlocks (idstr -> used length); None accepts the stream's.
        machine: a device model machine (``vmig.device.machine.Machine``) whose virtio-mem
            devices load the stream's virtio-mem sections and follow the postcopy state.
        page_size: target page size.
        keep_ram: hold block images (False: only the block checks, postcopy state and devices,
            e.g. to bring a device model to a capture's state cheaply).
        sections: the destination's savevm sections as (idstr, instance) pairs (e.g. those of
            a capture of the destination's configuration); a START/FULL section not among them
            fails the load as QEMU's does. None: every section is accepted.
        machine_type: the destination's machine type (``pc-q35-7.2``); a CONFIGURATION record
            naming another fails the load as QEMU's does. None: any.
        configuration: whether the destination expects a CONFIGURATION record first
            (``migration.send-configuration``); None: either.
        footers: whether the destination expects section footers
            (``migration.send-section-footer``); None: either.
        postcopy_ram: whether the destination enables the ``postcopy-ram`` capability (a
            16-byte POSTCOPY_ADVISE needs it, a 0-byte one must not have it); None: either.

    :meth:`like` builds one with the blocks, sections and machine type of a capture of the
    destination's configuration.
    """

    POSTCOPY_ORDER = ("none", "advise", "discard", "listening", "running", "end")

    def __init__(self, blocks: Mapping[str, int] | None = None, *, machine: Machine | None = None,
                 page_size: int = 4096,
                 keep_ram: bool = True, sections: Iterable[tuple[str, int]] | None = None,
                 machine_type: str | None = None, configuration: bool | None = None,
                 footers: bool | None = None, postcopy_ram: bool | None = None) -> None:
        self.configuration = configuration
        self.footers = footers
        self.postcopy_ram = postcopy_ram
        self._first_record = True
        self._section_names: dict[int, str] = {}
        self.expected = dict(blocks) if blocks is not None else None
        self.machine = machine
        self.page_size = page_size
        self.keep_ram = keep_ram
        self.sections = set(sections) if sections is not None else None
        self.machine_type = machine_type
        self._buffers = BlockBuffers(page_size)
        self.images: dict[str, np.ndarray] = self._buffers.images
        self.received: dict[str, np.ndarray] = self._buffers.received
        self.postcopy = "none"
        self.postcopy_history = ["none"]  # every state entered, in order
        self.post_load: dict[str, Any] = {}
        self.complete = False
        self.return_path_open = False
        self._rp: list[Any] = []
        self._rp_block: str | None = None
        self._pending_vmem: list[DeviceState] = []

    @classmethod
    def like(cls, events: Iterable[Any], **kw: Any) -> Destination:
        """A destination configured as the VM that wrote ``events`` (a capture of the
        destination's configuration): its RAMBlocks, savevm sections, machine type, whether it
        sends (so expects) a CONFIGURATION record and section footers. Whether it enables
        ``postcopy-ram`` is not in a stream; pass ``postcopy_ram=`` when known."""
        blocks: dict[str, int] = {}
        sections: set[tuple[str, int]] = set()
        machine_type = None
        footers: bool | None = None

        def walk(evs: Iterable[Any]) -> None:
            nonlocal machine_type, footers
            for ev in evs:
                if isinstance(ev, RamRecords) and ev.batch.mem_size:
                    blocks.update((b.idstr, b.used_length) for b in ev.batch.mem_size)
                elif isinstance(ev, SectionHeader):
                    sections.add((ev.idstr, ev.instance_id))
                elif isinstance(ev, SectionEnd) and footers is None:
                    footers = ev.footer
                elif isinstance(ev, Configuration):
                    machine_type = ev.name
                elif isinstance(ev, Command):
                    walk(ev.children)

        walk(events)
        return cls(blocks, sections=sections, machine_type=machine_type,
                   configuration=machine_type is not None, footers=footers, **kw)

    # -- state ------------------------------------------------------------------------------------
    def _set_postcopy(self, state: str) -> None:
        if self.POSTCOPY_ORDER.index(state) < self.POSTCOPY_ORDER.index(self.postcopy):
            raise MigrationError(f"postcopy command out of order: {state!r} after {self.postcopy!r}")
        self.postcopy = state
        self.postcopy_history.append(state)
        if self.machine is not None:
            self.machine.migration.set_incoming_postcopy(state)

    def _blocks(self, mem_size: Iterable[Any]) -> None:
        for b in mem_size:
            if self.expected is not None:
                local = self.expected.get(b.idstr)
                if local is None:
                    raise _ram_failure(f'Unknown ramblock "{b.idstr}", cannot accept migration')
                if local != b.used_length:
                    raise ram_size_mismatch(b.idstr, b.used_length, local)
            self._buffers.add(b.idstr, b.used_length)

    # -- loading ----------------------------------------------------------------------------------
    def load(self, events: Iterable[Any]) -> Destination:
        """Feed every event; returns self."""
        for ev in events:
            self.feed(ev)
        return self

    def feed(self, ev: Any) -> None:
        """Apply one decoder event.

        Raises:
            MigrationError: QEMU would fail the load here (its error lines, one per line).
        """
        if self._first_record and not isinstance(ev, FileHeader):
            # qemu_loadvm_state: the CONFIGURATION record comes first when the destination
            # sends one itself; otherwise its type byte (7) is an unknown section type
            self._first_record = False
            if self.configuration and not isinstance(ev, Configuration):
                raise _load_failure("Configuration section missing")
            if self.configuration is False and isinstance(ev, Configuration):
                raise _load_failure("Unknown savevm section type 7")
        if isinstance(ev, SectionEnd):
            # check_section_footer, or the footer byte (0x7e) read as the next section type
            if self.footers and not ev.footer:
                raise _load_failure(f"Missing section footer for {self._section_names.get(ev.section_id, '')}")
            if self.footers is False and ev.footer:
                raise _load_failure("Unknown savevm section type 126")
        elif isinstance(ev, RamRecords):
            self._ram(ev.batch)
        elif isinstance(ev, Command):
            self._command(ev)
        elif isinstance(ev, DeviceState):
            if ev.idstr.endswith("/virtio-mem") or ev.idstr.endswith("/virtio-mem-device-early"):
                self._pending_vmem.append(ev)
                if ev.idstr.endswith("/virtio-mem"):
                    self._load_vmem()
        elif isinstance(ev, EndOfStream):
            if self.postcopy != "none":
                self._set_postcopy("end")
            self.complete = True
            if self.return_path_open:
                self._rp.append(rp_message(RpMsg.SHUT, status=0))
        elif isinstance(ev, Configuration):
            if self.machine_type is not None and ev.name != self.machine_type:
                raise MigrationError(f"Machine type received is '{ev.name}' and local is "
                                     f"'{self.machine_type}'\nload of migration failed: Invalid argument")
        elif isinstance(ev, SectionHeader):
            if ev.type in (SectionType.SECTION_START, SectionType.SECTION_FULL):
                self._section_names[ev.section_id] = ev.idstr
            if self.sections is not None and ev.type in (SectionType.SECTION_START, SectionType.SECTION_FULL) \
                    and (ev.idstr, ev.instance_id) not in self.sections:
                raise _unknown_section(ev.idstr, ev.instance_id)

    def _load_vmem(self) -> None:
        if self.machine is None:
            self._pending_vmem.clear()
            return
        from vmig.device.sections import load_section, virtio_mem_sections

        by_path = {self.machine.pci_path(d): d for d in self.machine.devices}
        for sec in virtio_mem_sections(self._pending_vmem):
            dev = by_path.get(sec.dev_path)
            if dev is None:  # the section names no device of this machine
                raise _unknown_section(sec.dev_path + "/virtio-mem", 0)
            res = self.post_load[sec.dev_path] = load_section(sec, dev)
            # post_load discards the unplugged runs (vmig.device.virtio_mem
            # .unplugged_discarded_at_load): pages that arrived there read as zero again
            block = self.machine.ram_block(dev)
            if self.keep_ram and block in self.images:
                for start, length in res.discarded:
                    self._zero(block, start, length)
        self._pending_vmem.clear()

    def _zero(self, idstr: str, start: int, length: int) -> None:
        """Zero bytes ``[start, start + length)`` of block ``idstr``'s image. Only pages a record
        delivered can hold anything but zeros: the others are left alone, so a discard of a large
        range costs what arrived in it, and untouched memory stays unallocated."""
        img, ps = self.images[idstr], self.page_size
        first = start // ps
        end = min(start + length, len(img))
        for s, e in true_runs(self.received[idstr][first : -(-end // ps)]):
            img[max(start, (first + s) * ps) : min(end, (first + e) * ps)] = 0

    def _command(self, ev: Command) -> None:
        cmd = ev.cmd
        if cmd == MigCmd.POSTCOPY_ADVISE:
            # loadvm_postcopy_handle_advise: 16 bytes (page sizes) need postcopy-ram, 0 bytes
            # (dirty bitmaps only) must not have it
            if self.postcopy_ram is False and len(ev.data) == 16:
                raise _load_failure("RAM postcopy is disabled but have 16 byte advise")
            if self.postcopy_ram and len(ev.data) == 0:
                raise _load_failure("RAM postcopy is enabled but have 0 byte advise")
            self._set_postcopy("advise")
        elif cmd == MigCmd.POSTCOPY_RAM_DISCARD:
            if self.postcopy == "advise":
                self._set_postcopy("discard")
            idstr = ev.args["idstr"]
            if idstr not in self.images:
                raise MigrationError(f"postcopy discard for unknown RAMBlock {idstr!r}")
            img = self.images[idstr]
            for start, length in ev.args["ranges"]:
                if start + length > len(img):
                    raise MigrationError(f"postcopy discard beyond RAMBlock {idstr!r}: "
                                         f"[{start:#x}, {start + length:#x}) > {len(img):#x}")
                self._zero(idstr, start, length)
                ps = self.page_size
                self.received[idstr][start // ps : -(-(start + length) // ps)] = False
        elif cmd == MigCmd.POSTCOPY_LISTEN:
            self._set_postcopy("listening")
        elif cmd == MigCmd.POSTCOPY_RUN:
            self._set_postcopy("running")
        elif cmd == MigCmd.PING:
            if self.return_path_open:
                self._rp.append(rp_message(RpMsg.PONG, value=ev.args.get("value", 0)))
        elif cmd == MigCmd.OPEN_RETURN_PATH:
            self.return_path_open = True
        for child in ev.children:
            self.feed(child)

    def _ram(self, batch: Any) -> None:
        if batch.mem_size is not None:
            self._blocks(batch.mem_size)
        if self.keep_ram and len(batch):
            for k in np.unique(batch.block).tolist():  # a block named without a MEM_SIZE list
                if k >= 0 and batch.blocks[k].idstr not in self.images:
                    self._blocks([batch.blocks[k]])
            apply_batch(batch, self._buffers)

    # -- postcopy page requests -------------------------------------------------------------------
    def _unplugged(self, idstr: str) -> np.ndarray:
        """Pages of block ``idstr`` that a virtio-mem device here reports unplugged."""
        out = np.zeros(len(self.received[idstr]), dtype=bool)
        if self.machine is None:
            return out
        for dev in self.machine.devices:
            if self.machine.ram_block(dev) != idstr:
                continue
            per = dev.block_size // self.page_size
            for first, count in dev.unplugged_runs():
                out[first * per : (first + count) * per] = True
        return out

    def page_requests(self, touched: Mapping[str, Iterable[tuple[int, int]]]) -> list[tuple[str, int, int]]:
        """REQ_PAGES a running postcopy guest touching ``touched`` (idstr -> byte ranges) sends.

        Pages already received are not requested; neither are unplugged virtio-mem blocks (the
        fault is resolved locally with a zero page). Consecutive pages form one request.
        """
        out: list[tuple[str, int, int]] = []
        ps = self.page_size
        for idstr, ranges in touched.items():
            need = np.zeros(len(self.received[idstr]), dtype=bool)
            for start, length in ranges:
                need[start // ps : -(-(start + length) // ps)] = True
            need &= ~self.received[idstr]
            need &= ~self._unplugged(idstr)
            out.extend((idstr, s * ps, (e - s) * ps) for s, e in true_runs(need))
        return out

    def request_pages(self, touched: Mapping[str, Iterable[tuple[int, int]]]) -> list[tuple[str, int, int]]:
        """:meth:`page_requests`, also queued on the return path; returns the requests."""
        reqs = self.page_requests(touched)
        for idstr, start, length in reqs:
            if idstr != self._rp_block:
                self._rp.append(rp_message(RpMsg.REQ_PAGES_ID, start=start, len=length, idstr=idstr))
                self._rp_block = idstr
            else:
                self._rp.append(rp_message(RpMsg.REQ_PAGES, start=start, len=length))
        return reqs

    def take_return_path(self) -> bytes:
        """The return-path bytes queued since the last call."""
        out = encode_rp(self._rp)
        self._rp.clear()
        return out

    def missing(self, idstr: str) -> np.ndarray:
        """Page indices of ``idstr`` no record has delivered (after discards)."""
        return np.flatnonzero(~self.received[idstr])
