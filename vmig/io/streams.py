"""I/O around the sans-I/O decoder: sources (mmap file, .lz4, stdin), trailer location, records.

This module and :mod:`vmig.io.mapping` (the mapping itself) are the only ones of
vmig.stream that touch files. A regular file is mmap'ed and its
vmdesc trailer located (from the end) before decoding, so FULL sections can be measured at
once and payloads are zero-copy views. A pipe or an ``.lz4`` file is read in chunks; the
decoder then buffers from the first FULL section it cannot measure until end of input and
finds the trailer in that tail (see vmig.stream.decoder). Errors get the input's path
attached (``StreamError.with_path``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from vmig.errors import StreamError, UsageError
from vmig.io.mapping import MappedFile, adopt
from vmig.stream.constants import SectionType
from vmig.stream.decoder import StreamDecoder
from vmig.stream.events import (
    Command,
    Configuration,
    DeviceState,
    EndOfStream,
    Event,
    FileHeader,
    RamRecords,
    SectionEnd,
    SectionHeader,
    StreamEnd,
    VmDescriptionEvent,
)
from vmig.stream.layout import LayoutResolver
from vmig.stream.vmdesc import VmDescription, find_trailer

__all__ = [
    "CHUNK_SIZE",
    "Source",
    "open_source",
    "iter_events",
    "decode_path",
    "decode_bytes",
    "new_decoder",
    "load_description",
    "read_all",
    "Record",
    "records",
]

CHUNK_SIZE = 1 << 20
TAIL_KEEP = 64 << 20  # how much of a non-seekable input we keep to find a --desc-from trailer


@dataclass
class Source:
    """An opened input: either ``mapped`` (whole file as a read-only memoryview) or chunked."""

    name: str
    mapped: memoryview | None = None
    _chunks: Iterator[bytes] | None = None
    _closers: list = field(default_factory=list)
    _file: MappedFile | None = None

    @property
    def drop_lag(self) -> int:
        return self._file.lag if self._file is not None else 0

    @drop_lag.setter
    def drop_lag(self, value: int) -> None:
        if self._file is not None:
            self._file.lag = value

    def release_before(self, offset: int) -> None:
        """Hint that the mapped bytes before ``offset`` were consumed.

        The mapping's warmer thread (:mod:`vmig.io.mapping`) then populates page tables
        further ahead and drops the page-table entries of consumed pages, ``drop_lag`` bytes
        behind ``offset`` (a consumer that works behind the decoder, like extract's writers,
        would fault them back in). Views into the dropped range stay valid; only the process's
        resident set shrinks (a walk over a multi-GB stream stays bounded).
        """
        if self._file is not None:
            self._file.consumed(offset)

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The input as successive chunks (one chunk for a mapped file)."""
        if self.mapped is not None:
            if len(self.mapped):
                yield self.mapped
            return
        assert self._chunks is not None
        yield from self._chunks

    def close(self) -> None:
        if self.mapped is not None:
            self.mapped.release()
            self.mapped = None
        if self._file is not None:
            self._file.close()
            self._file = None
        for c in reversed(self._closers):
            c()
        self._closers.clear()


def _read_chunks(f: IO[bytes], size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while True:
        b = f.read(size)
        if not b:
            return
        yield b


@contextmanager
def open_source(path: str, *, use_mmap: bool = True) -> Iterator[Source]:
    """Open ``path`` for decoding: ``'-'`` = stdin (chunks), ``*.lz4`` = lz4 frame (chunks),
    else a regular file (mmap; chunks if it cannot be mapped, e.g. a FIFO or an empty file).

    Raises:
        UsageError: the file cannot be opened (message names the path).
    """
    if path == "-":
        yield Source("<stdin>", _chunks=_sniff_lz4(_read_chunks(sys.stdin.buffer), "<stdin>"))
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"{path}: cannot open: {e.strerror}") from e
    src = Source(path)
    src._closers.append(f.close)
    try:
        if path.endswith(".lz4"):
            import lz4.frame

            lf = lz4.frame.LZ4FrameFile(f, mode="rb")
            src._closers.append(lf.close)
            src._chunks = _lz4_chunks(lf, path)
        else:
            st = os.fstat(f.fileno())
            import stat

            head = os.pread(f.fileno(), 4, 0) if stat.S_ISREG(st.st_mode) else b""
            if head == LZ4_FRAME_MAGIC:
                src._chunks = _sniff_lz4(_read_chunks(f), path)
            elif use_mmap and stat.S_ISREG(st.st_mode) and st.st_size > 0:
                mf = adopt(f.fileno()) or MappedFile(os.dup(f.fileno()), st, path)
                src._file = mf
                src.mapped = memoryview(mf.mmap)
            else:
                src._chunks = _sniff_lz4(_read_chunks(f), path)
        yield src
    finally:
        src.close()


LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"  # lz4 frame magic 0x184D2204, little-endian


def _sniff_lz4(chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """Pass chunks through, decompressing them if the input starts with the lz4 frame magic
    (so ``cat x.bin.lz4 | vmig ... -`` works; a QEVM stream starts with "QEVM")."""
    first = b""
    for c in chunks:
        first += c
        if len(first) >= 4:
            break
    if not first.startswith(LZ4_FRAME_MAGIC):
        if first:
            yield first
        yield from chunks
        return
    import lz4.frame

    dec = lz4.frame.LZ4FrameDecompressor()
    pending = first
    while True:
        try:
            while pending:
                out = dec.decompress(pending, max_length=CHUNK_SIZE)
                pending = b""
                if out:
                    yield out
                while not dec.needs_input and not dec.eof:
                    out = dec.decompress(b"", max_length=CHUNK_SIZE)
                    if out:
                        yield out
                if dec.eof:
                    if dec.unused_data:
                        raise StreamError("data after the end of the lz4 frame", path=name)
                    return
        except RuntimeError as e:
            raise StreamError(f"lz4 decompression failed: {e}", path=name) from e
        nxt = next(chunks, None)
        if nxt is None:
            raise StreamError("lz4 frame ends early (truncated .lz4 input)", path=name)
        pending = nxt


def _lz4_chunks(lf, path: str) -> Iterator[bytes]:
    while True:
        try:
            b = lf.read(CHUNK_SIZE)
        except (RuntimeError, OSError, EOFError) as e:
            raise StreamError(f"lz4 decompression failed: {e}", path=path) from e
        if not b:
            return
        yield b


def read_all(path: str) -> bytes:
    """The whole (decompressed) input as bytes."""
    with open_source(path, use_mmap=False) as src:
        return b"".join(bytes(c) for c in src.chunks())


def load_description(path: str) -> VmDescription:
    """A description for ``--desc-from``: another stream's trailer, or a bare vmdesc JSON file.

    Raises:
        SchemaError/UsageError: no trailer found (message names the path).
    """
    with open_source(path) as src:
        if src.mapped is not None:
            mv = src.mapped
            if len(mv) and mv[0] == ord("{"):
                return VmDescription(bytes(mv), source=path)
            found = find_trailer(mv, source=path)
        else:
            tail = bytearray()
            first = True
            for chunk in src.chunks():
                if first and len(chunk) and chunk[0] == ord("{"):
                    rest = bytes(chunk) + b"".join(bytes(c) for c in src.chunks())
                    return VmDescription(rest, source=path)
                first = False
                tail += chunk
                if len(tail) > 2 * TAIL_KEEP:
                    del tail[: len(tail) - TAIL_KEEP]
            found = find_trailer(tail, source=path)
    if found is None:
        raise UsageError(f"{path}: no vmdesc trailer found (is it a precopy capture with a trailer?)")
    return found[1]


def iter_events(
    path: str,
    description: VmDescription | None = None,
    desc_from: str | VmDescription | None = None,
    *,
    fast: bool = True,
    schema_sets: bool = False,
    resident_lag: int = 0,
    ram_columns: bool = True,
) -> Iterator[Event]:
    """Decode the stream at ``path`` ('-' = stdin, .lz4 transparent), yielding events.

    Descriptions are consulted in order: the stream's own trailer (located first for mapped
    files), ``description``, then ``desc_from`` (a path or a VmDescription).
    With ``schema_sets`` the bundled schema set of the stream's machine type is the last resort
    for FULL sections nothing else describes (vmig.vmstate.machines).

    A mapped file's consumed pages are dropped from the resident set as decoding advances
    (:meth:`Source.release_before`; event payloads stay valid): ``resident_lag`` bytes behind
    the decoder stay mapped for consumers that lag behind the events they were given.

    With ``ram_columns=False`` RAM batches are validated and counted but their columns are built
    only when a consumer reads one (for consumers that skip RAM: checks, section lists).

    Raises:
        StreamError: the stream is invalid (with ``path`` set).
    """
    extra: list[VmDescription] = []
    if description is not None:
        extra.append(description)
    if desc_from is not None:
        extra.append(desc_from if isinstance(desc_from, VmDescription) else load_description(desc_from))
    with open_source(path) as src:
        src.drop_lag = resident_lag
        dec = _decoder(src.name, src.mapped, extra, schema_sets, fast, ram_columns)
        try:
            for chunk in src.chunks():
                dec.receive_data(chunk)
                if src.mapped is not None:
                    for ev in dec.events():
                        yield ev
                        src.release_before(dec.offset)
                else:
                    yield from dec.events()
            dec.receive_data(b"")
            yield from dec.events()
        except StreamError as e:
            e.with_path(src.name)
            raise


def _decoder(name: str, whole: bytes | memoryview | None, extra: list[VmDescription],
             schema_sets: bool, fast: bool, ram_columns: bool = True) -> StreamDecoder:
    """A decoder whose layouts come from the stream's own trailer (when ``whole`` holds the
    whole stream), then ``extra``, then (``schema_sets``) vmig's bundled machine schemas."""
    layout = _default_layout() if schema_sets else LayoutResolver()
    if whole is not None:
        found = find_trailer(whole)
        if found is not None:
            layout.add_description(found[1])
    for d in extra:
        layout.add_description(d)
    dec = StreamDecoder(path=name, layout=layout, fast=fast, ram_columns=ram_columns)
    if hasattr(layout, "bind"):
        layout.bind(dec)  # schema sets are chosen from the CONFIGURATION machine name
    return dec


def new_decoder(*, description: VmDescription | None = None, schema_sets: bool = True,
                fast: bool = True, name: str = "<bytes>") -> StreamDecoder:
    """A :class:`StreamDecoder` for bytes arriving piece by piece (e.g. from an engine source),
    with ``description`` and (``schema_sets``) vmig's bundled machine schemas as layouts."""
    return _decoder(name, None, [description] if description is not None else [], schema_sets, fast)


def decode_bytes(data: bytes | memoryview, *, description: VmDescription | None = None,
                 schema_sets: bool = True, fast: bool = True) -> list[Event]:
    """All events of an in-memory stream, layouts found as :func:`iter_events` finds them
    (so a postcopy or trailer-less stream of a known machine type decodes too).

    Raises:
        StreamError: the stream is invalid.
    """
    dec = _decoder("<bytes>", data, [description] if description is not None else [], schema_sets, fast)
    dec.receive_data(data)
    dec.receive_data(b"")
    return list(dec.events())


def _default_layout() -> LayoutResolver:
    """A resolver that ends with vmig's bundled schema sets for the stream's machine type
    (streams without a trailer: postcopy, suppress-vmdesc)."""
    from vmig.vmstate.machines import machine_layout_resolver

    return machine_layout_resolver()


def decode_path(path: str, **kwargs) -> list[Event]:
    """All events of the stream at ``path`` as a list (small streams / tests)."""
    return list(iter_events(path, **kwargs))


# --------------------------------------------------------------------------- records
_TYPE_NAMES = {
    SectionType.SECTION_START: "section_start",
    SectionType.SECTION_PART: "section_part",
    SectionType.SECTION_END: "section_end",
    SectionType.SECTION_FULL: "section_full",
}


@dataclass
class Record:
    """One top-level record (a row of ``vmig sections``).

    ``type`` is one of ``header``, ``configuration``, ``section_start``, ``section_part``,
    ``section_end``, ``section_full``, ``command``, ``eof``, ``vmdescription``.
    """

    offset: int
    length: int
    type: str
    section_id: int | None = None
    idstr: str | None = None
    instance_id: int | None = None
    version_id: int | None = None
    command: str | None = None
    children: tuple[Record, ...] = ()
    events: tuple[Event, ...] = ()
    footer: bool | None = None
    ram_records: int | None = None

    def to_json(self) -> dict:
        """JSON-ready dict with the keys that apply."""
        d: dict = {"offset": self.offset, "length": self.length, "type": self.type}
        for k in ("section_id", "idstr", "instance_id", "version_id", "command"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.type == "command" and self.command == "PACKAGED":
            d["children"] = [c.to_json() for c in self.children]
        return d


def records(events: Iterable[Event], keep_events: bool = True) -> Iterator[Record]:
    """Group events into one :class:`Record` per top-level record (header, configuration,
    section header..end, command with nested children, EOF, trailer). StreamEnd is dropped.

    Args:
        keep_events: keep each record's events on it (False keeps memory bounded for huge
            RAM sections: only counts are kept).
    """
    cur: Record | None = None
    evs: list[Event] = []
    for ev in events:
        if isinstance(ev, SectionHeader):
            cur = Record(ev.offset, 0, _TYPE_NAMES[ev.type], ev.section_id, ev.idstr, ev.instance_id,
                         ev.version_id)
            evs = [ev] if keep_events else []
            continue
        if cur is not None:
            if keep_events:
                evs.append(ev)
            if isinstance(ev, RamRecords):
                cur.ram_records = (cur.ram_records or 0) + len(ev.batch)
            if isinstance(ev, SectionEnd):
                cur.length = ev.section_length
                cur.footer = ev.footer
                cur.events = tuple(evs)
                yield cur
                cur = None
            continue
        if isinstance(ev, FileHeader):
            yield Record(ev.offset, ev.length, "header", events=(ev,) if keep_events else ())
        elif isinstance(ev, Configuration):
            yield Record(ev.offset, ev.length, "configuration", events=(ev,) if keep_events else ())
        elif isinstance(ev, Command):
            yield Record(ev.offset, ev.length, "command", command=ev.cmd.name,
                         children=tuple(records(ev.children, keep_events)),
                         events=(ev,) if keep_events else ())
        elif isinstance(ev, EndOfStream):
            yield Record(ev.offset, ev.length, "eof", events=(ev,) if keep_events else ())
        elif isinstance(ev, VmDescriptionEvent):
            yield Record(ev.offset, ev.length, "vmdescription", events=(ev,) if keep_events else ())
        elif isinstance(ev, StreamEnd):
            continue
        elif isinstance(ev, (DeviceState, RamRecords, SectionEnd)):
            raise UsageError(f"{type(ev).__name__} outside a section")
