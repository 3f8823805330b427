"""The migration source: precopy passes and a postcopy switchover, written as QEMU would.

The device state the engine does not model (CPUs, chipset, ...) comes from a real capture: a
:class:`StreamTemplate` keeps its header, configuration, RAM section ids, FULL device sections
(before RAM START, at setup right after it, and at the end) and trailer, in stream order. The
source writes RAM from a :class:`~vmig.migration.ram.GuestRam`; the sections of devices the
engine models are serialized by their models when QEMU would save them (``models``,
:func:`vmig.migration.models.model_sections`).

Theory of operation (QEMU's migration.c / ram.c / savevm.c, precopy then optional postcopy):

1. ``setup()``: header, configuration, the POSTCOPY_ADVISE command when postcopy is enabled,
   early FULL sections, then the RAM START section (MEM_SIZE block list, EOS) and the setup
   FULL sections (8.0+: ``virtio-mem-device-early``, right after RAM START). The migration
   bitmap is built: notifiers get SETUP, every page is set, one sync runs with
   BEFORE/AFTER_BITMAP_SYNC (virtio-mem drops its unplugged blocks there).
2. ``iterate(max_pages)``: one RAM PART section with up to ``max_pages`` pages from the bitmap,
   in block then address order; when the bitmap is empty it syncs first (a new pass). All-zero
   pages go as ZERO records (fill byte 0), others as PAGE; the first record of a block in each
   section names the block, the next ones have CONTINUE. Each section ends with EOS.
3. ``complete()`` (precopy): a final sync, SWITCHOVER_START (QEMU 10.0 machine types, when the
   template has it), a RAM END section with everything left, the device FULL sections, EOF,
   the trailer.
4. ``switchover()`` (postcopy): a final sync, SWITCHOVER_START as in 3; every page still to send
   is first discarded on the
   destination (POSTCOPY_RAM_DISCARD, at most 12 ranges per command, per block), then PING 2,
   one PACKAGED command carrying LISTEN, the device FULL sections, PING 3 and RUN, and PING 4. ``postcopy_pages``
   then sends pages (requested ones first, see ``request``) in PART sections and
   ``postcopy_complete()`` ends with the RAM END section and EOF (no trailer: QEMU writes none
   after postcopy).

The outgoing migration status goes to ``migration`` (a device model's
:class:`vmig.device.state.MigrationState`), so modelled devices see themselves busy.
Everything returned is bytes for the caller to write; no I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from vmig.errors import UsageError
from vmig.migration.notifiers import PrecopyNotifier, PrecopyReason
from vmig.migration.ram import GuestRam
from vmig.records import field, record, replace
from vmig.runs import true_runs
from vmig.stream import xbzrle
from vmig.stream.constants import MigCmd, RamFlag, RpMsg, SectionType
from vmig.stream.encoder import StreamEncoder
from vmig.stream.events import (
    Command,
    Configuration,
    DeviceState,
    EndOfStream,
    FileHeader,
    SectionEnd,
    SectionHeader,
    VmDescriptionEvent,
)
from vmig.stream.framing import build_command_data
from vmig.stream.ram import EOS_RECORD, RamBatch, RamBlock, build_records, mem_size_record
from vmig.stream.return_path import ReturnPathDecoder

__all__ = ["StreamTemplate", "PrecopySource", "MigrationStats"]

_ZERO, _PAGE, _CONT, _XBZRLE = int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.CONTINUE), int(RamFlag.XBZRLE)
DISCARD_RANGES_PER_COMMAND = 12
CHUNK_PAGES = 4096  # pages turned into records at a time (bounds the source's scratch memory)


@record
class _Full:
    header: SectionHeader
    payload: bytes
    footer: bool


@record
class StreamTemplate:
    """What a source copies from a real capture (see :meth:`from_events`)."""

    header: FileHeader
    configuration: Configuration | None
    ram_section: SectionHeader
    early: list[_Full]
    devices: list[_Full]
    footers: bool
    trailer: VmDescriptionEvent | None
    pre_commands: list[Command] = field(default_factory=list)  # before RAM START (postcopy)
    #: FULL sections QEMU saves at setup, right after the RAM START section (8.0+: the
    #: ``virtio-mem-device-early`` sections of the vmsds with ``early_setup``)
    setup: list[_Full] = field(default_factory=list)
    #: the capture has QEMU 10.0's SWITCHOVER_START command (machine types ≥ 10.0)
    switchover_start: bool = False

    @property
    def advise(self) -> Command | None:
        return next((c for c in self.pre_commands if c.cmd == MigCmd.POSTCOPY_ADVISE), None)

    @classmethod
    def from_events(cls, events: Iterable[object]) -> StreamTemplate:
        """Take the framing and device sections of a decoded stream (``iter_events``).

        Device sections inside a postcopy PACKAGED command count as device sections too.

        Raises:
            UsageError: the stream has no RAM START section.
        """
        header = configuration = ram = trailer = None
        pre: list[Command] = []
        early: list[_Full] = []
        devices: list[_Full] = []
        footers = False
        setup: list[_Full] = []
        ram_started = False  # a RAM PART/END section was seen: setup is over
        switchover = False
        pending: dict[int, SectionHeader] = {}
        payloads: dict[int, bytes] = {}

        def walk(evs: Iterable[object]) -> None:
            nonlocal header, configuration, ram, trailer, footers, ram_started, switchover
            for ev in evs:
                if isinstance(ev, FileHeader):
                    header = ev
                elif isinstance(ev, Configuration):
                    configuration = ev
                elif isinstance(ev, SectionHeader):
                    if ev.type == SectionType.SECTION_START and ev.idstr == "ram":
                        ram = ev
                    elif ev.idstr == "ram":
                        ram_started = True
                    elif ev.type == SectionType.SECTION_FULL:
                        pending[ev.section_id] = ev
                elif isinstance(ev, DeviceState) and ev.section_type == SectionType.SECTION_FULL:
                    payloads[ev.section_id] = bytes(ev.payload)
                elif isinstance(ev, SectionEnd):
                    footers = footers or ev.footer
                    h = pending.pop(ev.section_id, None)
                    if h is not None:
                        where = early if ram is None else setup if not ram_started else devices
                        where.append(_Full(h, payloads.pop(ev.section_id, b""), ev.footer))
                elif isinstance(ev, VmDescriptionEvent):
                    trailer = ev
                elif isinstance(ev, Command):
                    if ram is None:
                        pre.append(ev)
                    elif ev.cmd == MigCmd.SWITCHOVER_START:
                        switchover = True
                    walk(ev.children)

        walk(events)
        if header is None or ram is None:
            raise UsageError("the template stream has no RAM START section")
        return cls(header, configuration, ram, early, devices, footers, trailer, pre, setup, switchover)


def _with_postcopy_preamble(template: StreamTemplate, page_size: int) -> StreamTemplate:
    """``template`` with the commands QEMU writes before RAM START when postcopy-ram is on
    (OPEN_RETURN_PATH, PING 1, POSTCOPY_ADVISE with the OR of the RAMBlock page sizes and the
    target page size), for a template captured without postcopy."""
    def cmd(c: MigCmd, args: dict) -> Command:
        return Command(0, 0, c, build_command_data(c, args), args=args)

    advise = {"page_size_summary": page_size, "target_page_size": page_size}
    pre = [cmd(MigCmd.OPEN_RETURN_PATH, {}), cmd(MigCmd.PING, {"value": 1}),
           cmd(MigCmd.POSTCOPY_ADVISE, advise)]
    return replace(template, pre_commands=pre)


@record
class MigrationStats:
    """Pages sent, as QEMU's query-migrate counts them (``normal``, ``duplicate`` = zero,
    ``xbzrle`` = XBZRLE records)."""

    normal: int = 0
    duplicate: int = 0
    xbzrle: int = 0
    passes: int = 0
    discarded_pages: int = 0
    per_pass: list[dict[str, int]] = field(default_factory=list)


class PrecopySource:
    """A migration source over ``ram`` with device sections from ``template``.

    Args:
        template: framing and device sections from a real capture.
        ram: guest RAM (its block list is the MEM_SIZE list; blocks should match the template VM).
        notifiers: precopy notifiers (e.g. :class:`~vmig.migration.notifiers.VirtioMemNotifier`).
        device_payloads: idstr -> payload replacing the template's FULL section of that idstr.
        models: idstr -> a function returning the section's payload, called at the moment QEMU
            saves that section (setup for early sections, stop-and-copy or the postcopy
            package for the others): the sections of devices the engine models
            (:func:`vmig.migration.models.model_sections`). They win over ``device_payloads``
            and the template's bytes.
        migration: a device model's MigrationState to keep in step (``outgoing`` status).
        postcopy: send POSTCOPY_ADVISE (a postcopy capture's commands are reused; for another
            template they are written as QEMU does with the RAMBlocks' page size).
        xbzrle: compress re-sent pages as QEMU 7.2 does with the ``xbzrle`` capability: from the
            second pass on, a page's first send fills the cache, later sends go as an XBZRLE
            delta against the cached copy (nothing when unchanged; a normal page when the delta
            would not fit a page); zero pages go as ZERO records and zero their cached copy.
    """

    def __init__(self, template: StreamTemplate, ram: GuestRam, *,
                 notifiers: Sequence[PrecopyNotifier] = (),
                 device_payloads: Mapping[str, bytes] | None = None,
                 migration: object | None = None, postcopy: bool = False, xbzrle: bool = False,
                 models: Mapping[str, Callable[[], bytes]] | None = None) -> None:
        if postcopy and template.advise is None:
            template = _with_postcopy_preamble(template, ram.page_size)
        self.template = template
        self.ram = ram
        self.notifiers = list(notifiers)
        self.device_payloads = dict(device_payloads or {})
        self.models = dict(models or {})
        self.migration = migration
        self.postcopy = postcopy
        self.stats = MigrationStats()
        self._enc = StreamEncoder()
        self._state = "none"
        self._requests: list[tuple[str, int, int]] = []
        self._rp = ReturnPathDecoder(require_shut=False)
        self.xbzrle = xbzrle
        self._xb_on = False  # QEMU enables XBZRLE once the first complete pass is done
        self._xb_cache: dict[str, np.ndarray] = {}
        self._xb_cached: dict[str, np.ndarray] = {}

    # -- helpers ----------------------------------------------------------------------------------
    def _status(self, status: str) -> None:
        self._state = status
        if self.migration is not None:
            self.migration.set_outgoing(status)  # type: ignore[attr-defined]

    def _notify(self, reason: PrecopyReason) -> None:
        for n in self.notifiers:
            n(reason, self.ram)

    def _sync(self) -> None:
        if self.xbzrle and self.stats.passes >= 1:
            self._xb_on = True
        self._notify(PrecopyReason.BEFORE_BITMAP_SYNC)
        self.ram.sync()
        self._notify(PrecopyReason.AFTER_BITMAP_SYNC)
        self.stats.passes += 1
        self.stats.per_pass.append({"normal": 0, "duplicate": 0})

    def _expect(self, *states: str) -> None:
        if self._state not in states:
            raise UsageError(f"source is {self._state!r}; this step needs {' or '.join(states)}")

    def _section(self, typ: SectionType, body: bytes) -> bytes:
        h = self.template.ram_section
        hdr = SectionHeader(0, 0, typ, h.section_id, h.idstr, h.instance_id, h.version_id)
        end = SectionEnd(0, 0, h.section_id, self.template.footers, 0, 0)
        return bytes(self._enc.send(hdr)) + body + bytes(self._enc.send(end))

    def _full(self, f: _Full) -> bytes:
        model = self.models.get(f.header.idstr)
        payload = model() if model is not None else self.device_payloads.get(f.header.idstr, f.payload)
        dev = DeviceState(0, len(payload), payload, f.header.idstr, f.header.instance_id,
                          f.header.version_id, SectionType.SECTION_FULL, f.header.section_id)
        end = SectionEnd(0, 0, f.header.section_id, f.footer, 0, 0)
        return b"".join(bytes(self._enc.send(e)) for e in (f.header, dev, end))

    def _switchover_start(self) -> bytes:
        """QEMU 10.0's SWITCHOVER_START command (machine types ≥ 10.0), when the template has it:
        precopy writes it before the RAM END section, postcopy before the discards."""
        if not self.template.switchover_start:
            return b""
        return bytes(self._enc.send(Command(0, 0, MigCmd.SWITCHOVER_START, b"")))

    def _ping(self, value: int) -> bytes:
        data = build_command_data(MigCmd.PING, {"value": value})
        return bytes(self._enc.send(Command(0, 0, MigCmd.PING, data)))

    def _records(self, idstr: str, pages: np.ndarray) -> bytes:
        """ZERO/PAGE records for ``pages`` (indices) of block ``idstr``; the first names it.

        Pages are handled in chunks of ``CHUNK_PAGES`` so memory stays bounded whatever the
        block size (the bytes returned are the section body, which the caller writes).
        """
        out = bytearray()
        for c in range(0, len(pages), CHUNK_PAGES):
            out += self._chunk(idstr, pages[c : c + CHUNK_PAGES], first=(c == 0))
        return bytes(out)

    def _batch(self, idstr: str, types: np.ndarray, pages: np.ndarray, raw: np.ndarray | bytes,
               data_offset: np.ndarray, data_length: np.ndarray, first: bool) -> bytes:
        """The records of one chunk through the stream's record writer; the first names the block
        when it is the section's first record of that block (no CONTINUE)."""
        n = len(pages)
        flags = types.astype(np.uint16) | np.uint16(_CONT)
        named = np.zeros(n, dtype=bool)
        if first and n:
            flags[0] &= np.uint16(~_CONT & 0xFFFF)
            named[0] = True
        blk = self.ram[idstr]
        batch = RamBatch(
            base=0, raw=raw, blocks=(RamBlock(idstr, blk.used_length),), page_size=self.ram.page_size,
            verbatim=False,
            columns={"offset": np.zeros(n, dtype=np.int64), "flags": flags, "block": np.zeros(n, dtype=np.int32),
                     "addr": pages.astype(np.uint64) * np.uint64(self.ram.page_size),
                     "data_offset": data_offset, "data_length": data_length, "has_idstr": named})
        return build_records(batch)

    def _chunk(self, idstr: str, pages: np.ndarray, first: bool) -> bytes:
        if len(pages) == 0:
            return b""
        if self._xb_on and not self._state.startswith("postcopy"):
            return self._xbzrle_chunk(idstr, pages, first)
        blk = self.ram[idstr]
        ps = self.ram.page_size
        data = blk.data
        full = len(data) // ps
        view = data[: full * ps].reshape(full, ps)
        n = len(pages)
        # page contents side by side, then one zero byte: the fill byte of every ZERO record
        raw = np.zeros(n * ps + 1, dtype=np.uint8)
        contents = raw[: n * ps].reshape(n, ps)
        # a page past the last whole page (block length not a page multiple) is zero-padded
        inside = pages < full
        contents[inside] = view[pages[inside]]
        for i in np.flatnonzero(~inside).tolist():
            tail = data[int(pages[i]) * ps:]
            contents[i, : len(tail)] = tail
        nonzero = contents.any(axis=1)
        out = self._batch(idstr, np.where(nonzero, _PAGE, _ZERO), pages, raw,
                          np.where(nonzero, np.arange(n, dtype=np.int64) * ps, n * ps),
                          np.where(nonzero, ps, 1), first)
        n_page = int(np.count_nonzero(nonzero))
        self.stats.normal += n_page
        self.stats.duplicate += n - n_page
        if self.stats.per_pass:
            self.stats.per_pass[-1]["normal"] += n_page
            self.stats.per_pass[-1]["duplicate"] += n - n_page
        return out

    def _xbzrle_chunk(self, idstr: str, pages: np.ndarray, first: bool) -> bytes:
        """Records with the XBZRLE cache (one page at a time: a delta is per page anyway)."""
        blk = self.ram[idstr]
        ps = self.ram.page_size
        if idstr not in self._xb_cache:
            self._xb_cache[idstr] = np.zeros((blk.pages, ps), dtype=np.uint8)
            self._xb_cached[idstr] = np.zeros(blk.pages, dtype=bool)
        cache, cached = self._xb_cache[idstr], self._xb_cached[idstr]
        counts = self.stats.per_pass[-1] if self.stats.per_pass else {}
        sent: list[int] = []
        types: list[int] = []
        bodies: list[bytes] = []
        for p in pages.tolist():
            page = np.zeros(ps, dtype=np.uint8)
            chunk = blk.data[p * ps : (p + 1) * ps]
            page[: len(chunk)] = chunk
            if not page.any():
                flag, body = _ZERO, b"\x00"
                cache[p] = 0
                kind = "duplicate"
            elif not cached[p]:
                cache[p], cached[p] = page, True
                flag, body, kind = _PAGE, page.tobytes(), "normal"
            else:
                delta = xbzrle.encode(cache[p], page)
                if delta == xbzrle.XBZRLE_NO_CHANGE:
                    continue  # QEMU sends nothing for an unchanged cached page
                cache[p] = page
                if delta == xbzrle.XBZRLE_OVERFLOW:
                    flag, body, kind = _PAGE, page.tobytes(), "normal"
                else:
                    assert isinstance(delta, bytes)
                    flag, body, kind = _XBZRLE, delta, "xbzrle"
            sent.append(p)
            types.append(flag)
            bodies.append(body)
            setattr(self.stats, kind, getattr(self.stats, kind) + 1)
            if counts is not None:
                counts[kind] = counts.get(kind, 0) + 1
        lengths = np.array([len(b) for b in bodies], dtype=np.int64)
        offsets = np.cumsum(lengths) - lengths
        return self._batch(idstr, np.array(types, dtype=np.uint16), np.array(sent, dtype=np.int64),
                           b"".join(bodies), offsets, lengths, first)

    def _pages(self, max_pages: int | None) -> bytes:
        body = bytearray()
        left = max_pages
        for blk in self.ram:
            if left is not None and left <= 0:
                break
            pages = self.ram.take(blk.idstr, left)
            body += self._records(blk.idstr, pages)
            if left is not None:
                left -= len(pages)
        return bytes(body)

    # -- precopy ----------------------------------------------------------------------------------
    def setup(self) -> bytes:
        """Header, configuration, [ADVISE], early sections and the RAM START section."""
        self._expect("none")
        self._status("setup")
        t = self.template
        out = bytearray(self._enc.send(t.header))
        if t.configuration is not None:
            out += self._enc.send(t.configuration)
        if self.postcopy:  # OPEN_RETURN_PATH, PING 1, POSTCOPY_ADVISE as captured
            for c in t.pre_commands:
                out += self._enc.send(c)
        for f in t.early:
            out += self._full(f)
        body = mem_size_record(self.ram.ram_blocks()) + EOS_RECORD
        out += self._section(SectionType.SECTION_START, body)
        for f in t.setup:  # 8.0+: early-setup device sections right after RAM START
            out += self._full(f)
        self._notify(PrecopyReason.SETUP)
        self.ram.start_tracking()
        self._sync()
        self._status("active")
        return bytes(out)

    @property
    def pending(self) -> int:
        """Pages left in the migration bitmap (what QEMU's ``pending`` estimate starts from)."""
        return self.ram.remaining()

    def iterate(self, max_pages: int | None = None) -> bytes:
        """One RAM PART section (a new pass begins with a sync when the bitmap is empty)."""
        self._expect("active", "postcopy-active")
        if self.ram.remaining() == 0:
            self._sync()
        return self._section(SectionType.SECTION_PART, self._pages(max_pages) + EOS_RECORD)

    def complete(self) -> bytes:
        """Stop-and-copy: last sync, RAM END, device sections, EOF, trailer."""
        self._expect("active")
        self._status("device")
        self._sync()
        out = bytearray(self._switchover_start())
        out += bytearray(self._section(SectionType.SECTION_END, self._pages(None) + EOS_RECORD))
        self._notify(PrecopyReason.COMPLETE)
        for f in self.template.devices:
            out += self._full(f)
        out += self._enc.send(EndOfStream(0))
        if self.template.trailer is not None:
            out += self._enc.send(self.template.trailer)
        self.ram.stop_tracking()
        self._notify(PrecopyReason.CLEANUP)
        self._status("completed")
        return bytes(out)

    # -- postcopy ---------------------------------------------------------------------------------
    def switchover(self) -> bytes:
        """Discard what the destination has stale, then the PACKAGED device state + RUN."""
        self._expect("active")
        if not self.postcopy:
            raise UsageError("switchover needs a source created with postcopy=True")
        self._status("postcopy-active")
        self._sync()
        out = bytearray(self._switchover_start())
        for blk in self.ram:
            ps = self.ram.page_size
            runs = [(s * ps, (e - s) * ps) for s, e in true_runs(blk.bitmap)]
            self.stats.discarded_pages += int(np.count_nonzero(blk.bitmap))
            for i in range(0, len(runs), DISCARD_RANGES_PER_COMMAND):
                args = {"version": 0, "idstr": blk.idstr, "ranges": runs[i : i + DISCARD_RANGES_PER_COMMAND]}
                out += self._enc.send(Command(0, 0, MigCmd.POSTCOPY_RAM_DISCARD,
                                              build_command_data(MigCmd.POSTCOPY_RAM_DISCARD, args)))
        out += self._ping(2)
        blob = bytearray(self._enc.send(Command(0, 0, MigCmd.POSTCOPY_LISTEN, b"")))
        for f in self.template.devices:
            blob += self._full(f)
        blob += self._ping(3) + self._enc.send(Command(0, 0, MigCmd.POSTCOPY_RUN, b""))
        out += struct.pack(">BHHI", SectionType.COMMAND, MigCmd.PACKAGED, 4, len(blob)) + blob
        out += self._ping(4)
        self._notify(PrecopyReason.COMPLETE)
        return bytes(out)

    def receive_return_path(self, data: bytes) -> list[object]:
        """Feed return-path bytes from the destination; page requests are queued (see
        ``request``). Returns the decoded messages (PONG, SHUT, ...)."""
        self._rp.receive_data(data)
        out = []
        for m in self._rp.events():
            if getattr(m, "type", None) in (RpMsg.REQ_PAGES, RpMsg.REQ_PAGES_ID):
                self.request(m.args["idstr"], m.args["start"], m.args["len"])  # type: ignore[attr-defined]
            out.append(m)
        return out

    def request(self, idstr: str, start: int, length: int) -> None:
        """A page request from the destination's return path (REQ_PAGES)."""
        self.ram[idstr].page_range(start, length)  # validates
        self._requests.append((idstr, start, length))

    def postcopy_pages(self, max_pages: int | None = None) -> bytes:
        """A PART section: requested pages first, then background pages in address order."""
        self._expect("postcopy-active")
        body = bytearray()
        while self._requests:
            idstr, start, length = self._requests.pop(0)
            blk = self.ram[idstr]
            sl = blk.page_range(start, length)
            idx = np.arange(sl.start, sl.stop)
            idx = idx[blk.bitmap[idx]]  # a page already sent is not sent twice
            blk.bitmap[idx] = False
            body += self._records(idstr, idx)
        body += self._pages(max_pages)
        return self._section(SectionType.SECTION_PART, bytes(body) + EOS_RECORD)

    def postcopy_complete(self) -> bytes:
        """Everything left, the RAM END section and EOF."""
        self._expect("postcopy-active")
        out = self._section(SectionType.SECTION_END, self._pages(None) + EOS_RECORD)
        out += bytes(self._enc.send(EndOfStream(0)))
        self.ram.stop_tracking()
        self._notify(PrecopyReason.CLEANUP)
        self._status("completed")
        return out
