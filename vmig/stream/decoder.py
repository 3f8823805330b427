"""Sans-I/O decoder of QEVM migration streams (h11 style: receive_data / next_event).

Mirrors the destination's reader in migration/savevm.c (``qemu_loadvm_state``,
``qemu_loadvm_state_header``, ``qemu_loadvm_state_main``, ``qemu_loadvm_section_start_full``
/ ``_part_end``, ``check_section_footer``, ``loadvm_process_command`` and its handlers) and,
for RAM, migration/ram.c ``ram_load_precopy`` (via :mod:`vmig.stream.ram`).

Theory of operation
-------------------
1. ``receive_data(b)`` appends input; ``receive_data(b"")`` marks end of input. Input given as
   ``bytes`` / a read-only memoryview into an empty buffer is kept without copying (mmap'ed
   files are decoded zero-copy; payloads are then memoryview slices); otherwise the decoder
   copies into its own bytearray and hands out ``bytes``.
2. ``next_event()`` returns the next event or ``NEED_DATA``. The decoder consumes input only
   when it emits an event, and events tile the input: each event's ``offset`` is where the
   previous one ended. The same events come out however the input is split (RAM batches are
   cut by :class:`vmig.stream.ram.RamWalker` at size-determined points).
3. A declared length (PACKAGED blob, trailer, configuration name) is never allocated: the
   decoder waits for the bytes to arrive and raises TruncatedError at end of input.
4. Non-RAM section lengths come from the :class:`~vmig.stream.layout.LayoutResolver`. If
   nothing describes a FULL section and more input may come, the decoder keeps buffering until
   end of input, then looks for the vmdesc trailer in the buffered tail; if there is none it
   raises SchemaError naming the section.
5. After an error the decoder is dead: every later call re-raises the same error.
"""

from __future__ import annotations

from collections.abc import Iterator

from vmig.errors import (
    BadMagicError,
    FooterMismatchError,
    SchemaError,
    StreamError,
    TruncatedError,
    UsageError,
)
from vmig.records import record
from vmig.stream.constants import (
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_FILE_VERSION_COMPAT,
    MigCmd,
    SectionType,
)
from vmig.stream.events import (
    NEED_DATA,
    Command,
    Configuration,
    DeviceState,
    EndOfStream,
    Event,
    FileHeader,
    NeedData,
    RamRecords,
    RawSubsection,
    SectionEnd,
    SectionHeader,
    StreamEnd,
    VmDescriptionEvent,
)
from vmig.stream.framing import (
    BE16,
    BE32,
    COMMAND_LENGTHS,
    HEADER,
    Capabilities,
    parse_command_args,
)
from vmig.stream.inbuf import BufferedInput, NeedMoreInput
from vmig.stream.layout import LayoutResolver
from vmig.stream.ram import BATCH_BYTES, RamState, RamWalker
from vmig.stream.vmdesc import VmDescription, find_trailer

__all__ = ["StreamDecoder", "decode", "iter_decode", "DESC_FROM_HINT"]

DESC_FROM_HINT = "supply a description with --desc-from OTHER_STREAM (a capture of the same VM configuration)"
MAX_PACKAGE_DEPTH = 4
CONFIG_SUBSECTIONS = ("configuration/target-page-bits", "configuration/capabilities", "configuration/uuid")

# decoder states
_HEADER, _TOP, _RAM, _DEV, _FOOTER, _AFTER_EOF, _DONE, _ENDED = range(8)


@record(slots=True)
class _Open:
    """The section being decoded."""

    header: SectionHeader

    @property
    def name(self) -> str:
        return f"{self.header.idstr} instance {self.header.instance_id}"


class StreamDecoder(BufferedInput):
    """Sans-I/O QEVM stream decoder.

    Args:
        description: a vmdesc (VmDescription or its raw JSON bytes) to measure FULL sections
            (typically the stream's own trailer located by the I/O layer, or --desc-from).
        nested: decode a headerless record sequence (a PACKAGED blob): no file header, and end
            of input without an EOF record is normal.
        base_offset: absolute offset of the first byte that will be fed.
        path: input name attached to errors.
        layout: a LayoutResolver to use (``description`` is added to it).
        batch_bytes: RAM batch cut size.
        fast: use a bulk RAM walker (False = scalar reference walker).
        compiled: with ``fast``, the compiled RAM walker (True), the numpy one (False), or the
            compiled one when built and ``VMIG_PURE`` is unset (None); see :class:`RamWalker`.
        ram_columns: build the RAM batches' columns while decoding (False: batches only know
            their record count and build columns when asked; for consumers that skip RAM).
    """

    def __init__(
        self,
        description: VmDescription | bytes | None = None,
        nested: bool = False,
        base_offset: int = 0,
        path: str | None = None,
        *,
        layout: LayoutResolver | None = None,
        batch_bytes: int = BATCH_BYTES,
        fast: bool = True,
        compiled: bool | None = None,
        ram_columns: bool = True,
        _depth: int = 0,
        _ram: RamState | None = None,
        _sections: dict[int, SectionHeader] | None = None,
    ) -> None:
        self.path = path
        self.nested = nested
        self.layout = layout if layout is not None else LayoutResolver()
        if description is not None:
            if not isinstance(description, VmDescription):
                description = VmDescription(description, source="description")
            self.layout.add_description(description)
        self._init_input(base_offset)
        self._state = _TOP if nested else _HEADER
        self._config_allowed = not nested
        self._sections: dict[int, SectionHeader] = _sections if _sections is not None else {}
        self._ram = _ram if _ram is not None else RamState()
        if _ram is None:
            for d in self.layout.descriptions:
                if d.page_size:
                    self._ram.page_size = d.page_size
                    break
        self._walker = RamWalker(self._ram, batch_bytes=batch_bytes, fast=fast, compiled=compiled,
                                 keep_columns=ram_columns)
        self._batch_bytes = batch_bytes
        self._fast = fast
        self._compiled = compiled
        self._ram_columns = ram_columns
        self._open: _Open | None = None
        self._trailer_tried = False
        self._footers: bool | None = None  # seen on the sections so far (None = no section yet)
        self._depth = _depth
        self._error: StreamError | None = None
        self.configuration: Configuration | None = None

    @property
    def descriptions(self) -> list[VmDescription]:
        """The descriptions known to the layout resolver (incl. a trailer found in the tail)."""
        return self.layout.descriptions

    # ----------------------------------------------------------------- output
    def next_event(self) -> Event | NeedData:
        """Return the next event, or ``NEED_DATA``.

        Raises:
            StreamError (and subclasses): the input is not a valid stream; the decoder is then
            unusable and re-raises the same error.
            UsageError: called again after StreamEnd.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except NeedMoreInput as w:
            if not self._eof:
                return NEED_DATA
            err = TruncatedError(
                f"input ends inside {w.what}", offset=self.offset,
                expected=f"{w.need} bytes", found=f"{w.have} bytes",
            )
            self._fail(err)
            raise err from None
        except StreamError as e:
            self._fail(e)
            raise

    def events(self) -> Iterator[Event]:
        """Yield events until ``NEED_DATA`` or ``StreamEnd`` (inclusive); nothing once ended."""
        if self._state == _ENDED:
            return
        while True:
            ev = self.next_event()
            if ev is NEED_DATA:
                return
            yield ev  # type: ignore[misc]
            if isinstance(ev, StreamEnd):
                return

    def _fail(self, e: StreamError) -> None:
        if self._open is not None and self._state in (_RAM, _DEV, _FOOTER):
            e.with_section(self._open.name)
        e.with_offset(self.offset)  # raised below the decoder (a description, a layout)
        if self.path is not None:
            e.with_path(self.path)
        self._error = e

    # ---------------------------------------------------------------- helpers
    def _take(self, start: int, end: int) -> bytes | memoryview:
        if self._owned:
            return bytes(memoryview(self._buf)[start:end])
        return self._buf[start:end]

    def _take_all(self, start: int, end: int) -> bytes | memoryview:
        """Like :meth:`_take` for a RAM batch ``[start, end)``, then every byte before ``end`` is
        consumed. An owned buffer holding little past ``end`` is handed to the batch as a
        read-only view and a new buffer keeps the rest: no copy of the batch's megabytes."""
        buf = self._buf
        if not (self._owned and len(buf) - end <= (end - start) // 4):
            return self._take(start, end)
        self._buf = bytearray(memoryview(buf)[end:])
        self._base += end
        self._pos = 0
        return memoryview(buf)[start:end].toreadonly()

    def _at(self, i: int) -> int:
        return self._buf[self._pos + i]

    def _consume(self, n: int) -> int:
        off = self._base + self._pos
        self._pos += n
        return off

    # ------------------------------------------------------------------ states
    def _next(self) -> Event | NeedData:
        st = self._state
        if st == _TOP:
            return self._top()
        if st == _RAM:
            return self._ram_body()
        if st == _DEV:
            return self._dev_body()
        if st == _FOOTER:
            return self._footer()
        if st == _HEADER:
            return self._header()
        if st == _AFTER_EOF:
            return self._after_eof()
        if st == _DONE:
            return self._done()
        raise UsageError("next_event() called after StreamEnd")

    def _header(self) -> Event:
        self._need(8, "the file header")
        magic, version = HEADER.unpack_from(self._buf, self._pos)
        if magic != QEMU_VM_FILE_MAGIC:
            raise BadMagicError("not a QEMU migration stream", offset=self.offset,
                                expected=f"magic {QEMU_VM_FILE_MAGIC:#010x} (QEVM)", found=f"{magic:#010x}")
        if version == QEMU_VM_FILE_VERSION_COMPAT:
            raise BadMagicError("obsolete stream version 2 (QEMU rejects it too)", offset=self.offset + 4,
                                expected=QEMU_VM_FILE_VERSION, found=version)
        if version != QEMU_VM_FILE_VERSION:
            raise BadMagicError("unsupported stream version", offset=self.offset + 4,
                                expected=QEMU_VM_FILE_VERSION, found=version)
        off = self._consume(8)
        self._state = _TOP
        return FileHeader(off, 8, magic, version)

    def _top(self) -> Event | NeedData:
        have = len(self._buf) - self._pos
        if have == 0:
            if not self._eof:
                return NEED_DATA
            if self.nested:
                self._state = _ENDED
                return StreamEnd(self.offset)
            raise TruncatedError("input ends before the EOF record (0x00)", offset=self.offset,
                                 expected="a record type byte", found="end of input")
        t = self._at(0)
        config_allowed = self._config_allowed
        self._config_allowed = False
        if t == SectionType.CONFIGURATION:
            if not config_allowed:
                raise StreamError("CONFIGURATION record not directly after the file header",
                                  offset=self.offset, found="0x07")
            self._config_allowed = True  # still allowed while we wait for its bytes
            ev = self._configuration()
            self._config_allowed = False
            return ev
        if t in (SectionType.SECTION_START, SectionType.SECTION_FULL):
            return self._section_full_header(t)
        if t in (SectionType.SECTION_PART, SectionType.SECTION_END):
            return self._section_part_header(t)
        if t == SectionType.EOF:
            off = self._consume(1)
            self._state = _AFTER_EOF
            return EndOfStream(off, 1)
        if t == SectionType.COMMAND:
            return self._command()
        if t == SectionType.VMDESCRIPTION:
            raise StreamError("VMDESCRIPTION trailer before the EOF record", offset=self.offset,
                              expected="a section, command or EOF", found="0x06")
        if t == SectionType.SECTION_FOOTER:
            raise StreamError("section footer outside a section", offset=self.offset, found="0x7e")
        raise StreamError("unknown record type", offset=self.offset,
                          expected="0x00-0x04, 0x07, 0x08", found=f"{t:#04x}")

    def _configuration(self) -> Event:
        self._need(5, "the CONFIGURATION record")
        p = self._pos
        buf = self._buf
        n = BE32.unpack_from(buf, p + 1)[0]
        self._need(5 + n, "the CONFIGURATION machine name")
        name = bytes(buf[p + 5:p + 5 + n]).decode("latin-1")
        q = 5 + n
        subs: list[RawSubsection] = []
        page_bits = caps = uuid = None
        while True:
            if len(buf) - p <= q:
                if self._eof:
                    break
                raise NeedMoreInput("the CONFIGURATION record", q + 1, len(buf) - p)
            if buf[p + q] != SectionType.SUBSECTION:
                break
            self._need(q + 2, "a configuration subsection")
            ln = buf[p + q + 1]
            self._need(q + 2 + ln + 4, "a configuration subsection header")
            sname = bytes(buf[p + q + 2:p + q + 2 + ln]).decode("latin-1")
            if not sname.startswith("configuration"):
                break  # QEMU's peek: not our subsection; the top level will judge the 0x05
            ver = BE32.unpack_from(buf, p + q + 2 + ln)[0]
            d = q + 6 + ln
            if sname == "configuration/target-page-bits":
                plen = 4
            elif sname == "configuration/uuid":
                plen = 16
            elif sname == "configuration/capabilities":
                self._need(d + 4, "the capabilities subsection")
                count = BE32.unpack_from(buf, p + d)[0]
                e = d + 4
                for _ in range(count):
                    self._need(e + 1, "the capabilities subsection")
                    e += 1 + buf[p + e]
                plen = e - d
            else:
                raise StreamError("unknown configuration subsection", offset=self.offset + q,
                                  expected=" or ".join(CONFIG_SUBSECTIONS), found=repr(sname))
            self._need(d + plen, f"subsection {sname}")
            payload = bytes(buf[p + d:p + d + plen])
            subs.append(RawSubsection(self.offset + q, 6 + ln + plen, sname, ver, payload))
            if sname == "configuration/target-page-bits":
                page_bits = BE32.unpack(payload)[0]
                if not 9 <= page_bits <= 30:
                    raise StreamError("implausible target page bits", offset=self.offset + d,
                                      expected="9..30", found=page_bits)
                self._ram.page_size = 1 << page_bits
            elif sname == "configuration/capabilities":
                caps = tuple(Capabilities.parse(payload))
                self._ram.ignore_shared = "x-ignore-shared" in caps
                self._ram.mapped_ram = "mapped-ram" in caps
            else:
                uuid = payload
            q = d + plen
        off = self._consume(q)
        ev = Configuration(off, q, name, tuple(subs), page_bits, caps, uuid)
        self.configuration = ev
        return ev

    def _section_full_header(self, t: int) -> Event:
        self._need(6, "a section header")
        p = self._pos
        buf = self._buf
        sid = BE32.unpack_from(buf, p + 1)[0]
        n = buf[p + 5]
        self._need(6 + n + 8, "a section header")
        idstr = bytes(buf[p + 6:p + 6 + n]).decode("latin-1")
        inst, ver = BE32.unpack_from(buf, p + 6 + n)[0], BE32.unpack_from(buf, p + 10 + n)[0]
        off = self._consume(14 + n)
        hdr = SectionHeader(off, 14 + n, SectionType(t), sid, idstr, inst, ver)
        self._sections[sid] = hdr
        self._begin_body(hdr)
        return hdr

    def _section_part_header(self, t: int) -> Event:
        self._need(5, "a section header")
        sid = BE32.unpack_from(self._buf, self._pos + 1)[0]
        first = self._sections.get(sid)
        if first is None:
            raise StreamError(f"{SectionType(t).name} for a section id never started",
                              offset=self.offset, expected="an id from a START/FULL header", found=sid)
        off = self._consume(5)
        hdr = SectionHeader(off, 5, SectionType(t), sid, first.idstr, first.instance_id, first.version_id)
        self._begin_body(hdr)
        return hdr

    def _begin_body(self, hdr: SectionHeader) -> None:
        self._open = _Open(hdr)
        if hdr.idstr == "ram" and hdr.type != SectionType.SECTION_FULL:
            if hdr.version_id != 4:
                raise StreamError("unsupported ram section version", offset=hdr.offset,
                                  section=self._open.name, expected=4, found=hdr.version_id)
            self._walker.begin(self.offset)
            self._state = _RAM
        else:
            self._state = _DEV

    def _ram_body(self) -> Event | NeedData:
        assert self._open is not None
        w = self._walker
        try:
            if not w.advance(self._buf, self._base, len(self._buf), self._eof):
                return NEED_DATA
        except TruncatedError:
            if w.pos == w.start:
                raise
            # a cut input: the complete records before the cut come out as a last batch; the
            # next call meets the cut again with nothing before it and raises
        raw = self._take_all(w.start - self._base, w.pos - self._base)
        batch = w.finish(raw)
        self._pos = w.pos - self._base
        ev = RamRecords(w.start, len(raw), batch, self._open.header.section_id)
        if w.eos:
            self._state = _FOOTER
        else:
            w.begin(w.pos)
        return ev

    def _dev_body(self) -> Event | NeedData:
        assert self._open is not None
        hdr = self._open.header
        full = hdr.type == SectionType.SECTION_FULL
        while True:
            view = memoryview(self._buf)[self._pos:]
            try:
                n = self.layout.measure(
                    view, idstr=hdr.idstr, instance_id=hdr.instance_id, version_id=hdr.version_id,
                    section_id=hdr.section_id, full=full, at_eof=self._eof, offset=self.offset,
                    footers=self._footers,
                )
            except NeedMoreInput as e:
                if not self._eof:
                    return NEED_DATA
                end = self.offset + len(self._buf) - self._pos
                raise TruncatedError(f"truncated at offset {end:#x}: the input ends inside the section payload",
                                     offset=self.offset, section=self._open.name) from e
            except SchemaError:
                # The given descriptions do not fit; the stream's own trailer (at the end) wins.
                if full and not self._trailer_tried:
                    if not self._eof:
                        return NEED_DATA
                    if self._tail_trailer():
                        continue
                raise
            finally:
                view.release()
            if n is not None:
                break
            if full and not self._trailer_tried:
                if not self._eof:
                    return NEED_DATA  # keep buffering: the trailer may be at the end
                if self._tail_trailer():
                    continue
            kind = "FULL" if full else hdr.type.name.replace("SECTION_", "")
            if self._eof and not self.nested:
                self._end_problem(f"{kind} section {hdr.idstr!r} instance {hdr.instance_id}")
            hint = DESC_FROM_HINT if full else "vmig has no layout for this live section"
            raise SchemaError(
                f"cannot find the length of {kind} section {hdr.idstr!r} instance {hdr.instance_id} "
                f"(id {hdr.section_id}, header at {hdr.offset:#x}): no description; {hint}",
                offset=self.offset, section=self._open.name,
            )
        off = self.offset
        payload = self._take(self._pos, self._pos + n)
        self._consume(n)
        self._state = _FOOTER
        return DeviceState(off, n, payload, hdr.idstr, hdr.instance_id, hdr.version_id,
                           hdr.type, hdr.section_id)

    def _end_problem(self, what: str) -> None:
        """At end of input with a section nothing measures: raise TruncatedError if the input
        does not end the way a stream ends (the EOF byte, or EOF + a whole trailer), or
        SchemaError if it ends with a whole trailer that is not a vmdesc.

        A complete stream without a trailer ends with the EOF record (``00``, after the last
        section's footer ``7e be32 id`` when the stream has footers); one with a trailer ends with
        ``00 06 be32 L`` and L bytes of JSON. Anything else was cut short, and saying
        "no description" would send the user looking for one.
        """
        with memoryview(self._buf) as mv:
            tail = mv[self._pos:]
            end = self.offset + len(tail)
            p = bytes(tail[max(0, len(tail) - (64 << 20)):]).rfind(b"\x00\x06")
            if p >= 0:
                p += max(0, len(tail) - (64 << 20))
                hdr_end = p + 2 + 4
                if hdr_end <= len(tail):
                    n = BE32.unpack_from(tail, p + 2)[0]
                    body = tail[hdr_end:]
                    if len(body) == n and n and body[0] == ord("{"):
                        try:
                            VmDescription(body, source="stream trailer")
                        except SchemaError as e:
                            raise SchemaError(
                                f"cannot measure {what}: the stream's trailer is unusable "
                                f"({e.message})", offset=self.offset + p + 1) from e
                        return  # a whole, valid trailer that does not describe the section
                    elif len(body) < n and (not body or body[0] == ord("{")):
                        raise TruncatedError(
                            f"truncated at offset {end:#x}: the input ends inside the "
                            f"VMDESCRIPTION trailer ({len(body)} of {n} bytes), so {what} "
                            "cannot be measured", offset=end)
                elif len(tail) - p - 2 < 4:
                    raise TruncatedError(
                        f"truncated at offset {end:#x}: the input ends inside the VMDESCRIPTION "
                        f"header, so {what} cannot be measured", offset=end)
            # with section footers, the last section's footer (7e be32 id) precedes the EOF byte
            ends = bool(tail) and tail[-1] == 0 and (
                not self._footers or (len(tail) >= 6 and tail[-6] == 0x7E))
            if not ends:
                raise TruncatedError(
                    f"truncated at offset {end:#x}: the input ends without the EOF record or a "
                    f"trailer, so {what} (and everything after it) cannot be measured",
                    offset=end)

    def _tail_trailer(self) -> bool:
        """At end of input: look for the vmdesc trailer in the buffered tail (once)."""
        self._trailer_tried = True
        if self.nested:
            return False
        with memoryview(self._buf) as mv:
            found = find_trailer(mv[self._pos:], base=self.offset, known=self.layout.descriptions)
        if found is None or found[1] in self.layout.descriptions:
            return False
        self.layout.add_description(found[1], first=True)
        return True

    def _footer(self) -> Event | NeedData:
        assert self._open is not None
        hdr = self._open.header
        have = len(self._buf) - self._pos
        if have == 0 and not self._eof:
            return NEED_DATA
        if have and self._at(0) == SectionType.SECTION_FOOTER:
            self._need(5, "a section footer")
            sid = BE32.unpack_from(self._buf, self._pos + 1)[0]
            if sid != hdr.section_id:
                raise FooterMismatchError("section footer names another section", offset=self.offset,
                                          section=self._open.name, expected=hdr.section_id, found=sid)
            off = self._consume(5)
            length = 5
        else:
            if self._footers:
                if have == 0:
                    raise TruncatedError("input ends before the section footer", offset=self.offset,
                                         section=self._open.name, expected="0x7e + be32 id")
                raise StreamError("missing section footer (earlier sections had one)",
                                  offset=self.offset, section=self._open.name,
                                  expected="0x7e", found=f"{self._at(0):#04x}")
            off = self.offset
            length = 0
        self._state = _TOP
        self._open = None
        self._footers = bool(length) if self._footers is None else (self._footers and bool(length))
        return SectionEnd(off, length, hdr.section_id, bool(length), hdr.offset, off + length - hdr.offset)

    def _command(self) -> Event:
        self._need(5, "a COMMAND record")
        p = self._pos
        buf = self._buf
        raw_cmd = BE16.unpack_from(buf, p + 1)[0]
        ln = BE16.unpack_from(buf, p + 3)[0]
        try:
            cmd = MigCmd(raw_cmd)
        except ValueError:
            cmd = MigCmd.INVALID
        if cmd == MigCmd.INVALID:
            raise StreamError("invalid command number", offset=self.offset,
                              expected="1..11", found=raw_cmd)
        allowed = COMMAND_LENGTHS[cmd]
        if allowed is not None and ln not in allowed:
            raise StreamError(f"bad {cmd.name} command length", offset=self.offset,
                              expected=" or ".join(map(str, allowed)), found=ln)
        if cmd == MigCmd.POSTCOPY_RAM_DISCARD and ln < 20:
            raise StreamError("POSTCOPY_RAM_DISCARD command too short", offset=self.offset,
                              expected=">= 20", found=ln)
        self._need(5 + ln, f"the {cmd.name} command")
        data = bytes(buf[p + 5:p + 5 + ln])
        if cmd == MigCmd.RECV_BITMAP and (ln < 1 or ln != 1 + data[0]):
            raise StreamError("bad RECV_BITMAP command length", offset=self.offset,
                              expected="1 + idstr length", found=ln)
        args = parse_command_args(cmd, data, offset=self.offset + 5)
        if cmd == MigCmd.POSTCOPY_RAM_DISCARD:
            if args["version"] != 0:
                raise StreamError("bad POSTCOPY_RAM_DISCARD version", offset=self.offset + 5,
                                  expected=0, found=args["version"])
            if data[2 + len(args["idstr"])] != 0:
                raise StreamError("POSTCOPY_RAM_DISCARD idstr not followed by 0", offset=self.offset + 5)
        elif cmd == MigCmd.POSTCOPY_ADVISE and ln == 16:
            self._ram.postcopy_page_sizes = args["page_size_summary"]
        children: tuple[Event, ...] = ()
        total = 5 + ln
        if cmd == MigCmd.PACKAGED:
            blen = args["blob_length"]
            self._need(9 + blen, f"the PACKAGED blob of {blen} bytes")
            if self._depth >= MAX_PACKAGE_DEPTH:
                raise StreamError("PACKAGED nested too deeply", offset=self.offset,
                                  expected=f"<= {MAX_PACKAGE_DEPTH} levels")
            blob = self._take(p + 9, p + 9 + blen)
            children = self._decode_package(blob, self.offset + 9)
            total = 9 + blen
        off = self._consume(total)
        return Command(off, total, cmd, data, children, args)

    def _decode_package(self, blob: bytes | memoryview, base: int) -> tuple[Event, ...]:
        sub = StreamDecoder(
            nested=True, base_offset=base, path=self.path, layout=self.layout,
            batch_bytes=self._batch_bytes, fast=self._fast, compiled=self._compiled,
            ram_columns=self._ram_columns, _depth=self._depth + 1,
            _ram=self._ram, _sections=self._sections,
        )
        sub._footers = self._footers
        if len(blob):
            sub.receive_data(blob if isinstance(blob, (bytes, memoryview)) else bytes(blob))
        sub.receive_data(b"")
        out: list[Event] = []
        while True:
            ev = sub.next_event()
            if isinstance(ev, StreamEnd):
                return tuple(out)
            assert ev is not NEED_DATA
            out.append(ev)  # type: ignore[arg-type]

    def _after_eof(self) -> Event | NeedData:
        have = len(self._buf) - self._pos
        if have == 0:
            if not self._eof:
                return NEED_DATA
            self._state = _ENDED
            return StreamEnd(self.offset)
        if self.nested:
            raise StreamError("data after the EOF record inside a PACKAGED blob", offset=self.offset,
                              found=f"{have} bytes")
        b = self._at(0)
        if b != SectionType.VMDESCRIPTION:
            raise StreamError("unexpected byte after the EOF record", offset=self.offset,
                              expected="0x06 (VMDESCRIPTION) or end of stream", found=f"{b:#04x}")
        self._need(5, "the VMDESCRIPTION header")
        n = BE32.unpack_from(self._buf, self._pos + 1)[0]
        self._need(5 + n, f"the VMDESCRIPTION trailer of {n} bytes")
        raw = self._take(self._pos + 5, self._pos + 5 + n)
        off = self._consume(5 + n)
        self._state = _DONE
        known = next((d for d in self.layout.descriptions if d.raw == raw), None)
        return VmDescriptionEvent(off, 5 + n, raw, known)

    def _done(self) -> Event | NeedData:
        have = len(self._buf) - self._pos
        if have:
            raise StreamError("trailing data after the VMDESCRIPTION trailer", offset=self.offset,
                              expected="end of stream", found=f"{have} more bytes")
        if not self._eof:
            return NEED_DATA
        self._state = _ENDED
        return StreamEnd(self.offset)


def iter_decode(data: bytes | memoryview, **kwargs: object) -> Iterator[Event]:
    """Decode a complete in-memory stream, yielding events up to and including StreamEnd."""
    dec = StreamDecoder(**kwargs)  # type: ignore[arg-type]
    dec.receive_data(data)
    dec.receive_data(b"")
    while True:
        ev = dec.next_event()
        assert ev is not NEED_DATA
        yield ev  # type: ignore[misc]
        if isinstance(ev, StreamEnd):
            return


def decode(data: bytes | memoryview, **kwargs: object) -> list[Event]:
    """Decode a complete in-memory stream into a list of events (ends with StreamEnd).

    If no description is given the stream's own trailer is located first (:func:`find_trailer`).
    """
    if "description" not in kwargs and "layout" not in kwargs:
        found = find_trailer(data)
        if found is not None:
            kwargs["description"] = found[1]
    return list(iter_decode(data, **kwargs))
