"""I/O around the sans-I/O decoder: sources (mmap file, stdin, and the containers and compressed
files :mod:`vmig.io.containers` unwraps), trailer location, records.

This module and :mod:`vmig.io.mapping` (the mapping itself) are the only ones of
vmig.stream that touch files. A regular file is mmap'ed and its
vmdesc trailer located (from the end) before decoding, so FULL sections can be measured at
once and payloads are zero-copy views. A pipe or a compressed input is read in chunks; the
decoder then buffers from the first FULL section it cannot measure until end of input and
finds the trailer in that tail (see vmig.stream.decoder). Errors get the input's path
attached (``StreamError.with_path``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from vmig.errors import SchemaError, StreamError, UsageError
from vmig.io.containers.compression import CHUNK_SIZE
from vmig.io.decoding import explain, new_decoder
from vmig.io.mapping import MappedFile, adopt
from vmig.records import field, record
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
from vmig.stream.vmdesc import VmDescription, find_trailer

__all__ = [
    "CHUNK_SIZE",
    "Source",
    "open_source",
    "iter_events",
    "decode_path",
    "input_kind",
    "STREAM",
    "MAPPED_RAM",
    "load_description",
    "read_all",
    "Record",
    "records",
]

TAIL_KEEP = 64 << 20  # how much of a non-seekable input we keep to find a --desc-from trailer


@record
class Source:
    """An opened input: either ``mapped`` (whole file as a read-only memoryview) or chunked."""

    name: str
    mapped: memoryview | None = None
    _chunks: Iterator[bytes] | None = None
    _closers: list = field(default_factory=list)
    _file: MappedFile | None = None
    #: containers unwrapped to reach the stream, outermost first (vmig.io.containers.Layer)
    layers: list = field(default_factory=list)
    _base: int = 0  # file offset of the stream in a mapped container

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
            self._file.consumed(self._base + offset)

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
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()  # a decompressing generator ends its helpers (e.g. the lzop process)
        for c in reversed(self._closers):  # views into the mapping go before it
            c()
        self._closers.clear()
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_chunks(f: IO[bytes], size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while True:
        b = f.read(size)
        if not b:
            return
        yield b


@contextmanager
def open_source(path: str, *, use_mmap: bool = True, snapshot: str | None = None) -> Iterator[Source]:
    """Open ``path`` for decoding: ``'-'`` = stdin (chunks), else a file.

    Containers and compression are recognised by their magic, from a file or a pipe, and
    unwrapped to the stream they hold (:mod:`vmig.io.containers`: gzip, xz, bzip2, zstd, lz4,
    lzop, libvirt save images, qcow2 snapshots; ``Source.layers`` says what was unwrapped). A
    plain stream, a raw libvirt image's stream and a qcow2 VM state stored in consecutive clusters
    are mapped (``mapped``: a view of just the stream); everything else arrives in chunks.
    ``snapshot`` (or ``path.snapshot`` of a :class:`vmig.io.containers.InputPath`) chooses a
    qcow2 snapshot by name or ID.

    Raises:
        UsageError: the file cannot be opened (message names the path), or a bad ``snapshot``.
        StreamError: a hostile or corrupt container.
    """
    from vmig.io import containers

    if snapshot is None:
        snapshot = getattr(path, "snapshot", None)
    if path == "-":
        src = Source("<stdin>")
        try:
            src._chunks = containers.unwrap_chunks(_read_chunks(sys.stdin.buffer), "<stdin>", src.layers, snapshot)
            yield src
        finally:
            src.close()
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"{path}: cannot open: {e.strerror}") from e
    src = Source(str(path))
    src._closers.append(f.close)
    try:
        import stat

        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            src._chunks = containers.unwrap_chunks(_read_chunks(f), src.name, src.layers, snapshot)
            yield src
            return
        src._file = adopt(f.fileno()) if use_mmap else None  # closed with src, also on errors
        opened = containers.open_container(f.fileno(), st.st_size, src.name, snapshot)
        if opened is not None:
            src.layers = opened.layers  # the same list: lazy unwrapping appends inner layers to it
            if opened.chunks is not None:
                src._chunks = opened.chunks
                if src._file is not None:
                    src._file.close()
                    src._file = None
        if use_mmap and (opened is None or opened.chunks is None):
            mf = src._file or MappedFile(os.dup(f.fileno()), st, src.name)
            src._file = mf
            whole = memoryview(mf.mmap)
            if opened is None:
                src.mapped = whole
            else:
                src._closers.append(whole.release)
                src.mapped = whole[opened.start:opened.end]
                src._base = opened.start
        elif opened is None:
            src._chunks = _read_chunks(f)
        elif opened.chunks is None:
            src._chunks = containers.file_chunks(f.fileno(), opened.start, opened.end)
        if opened is not None and opened.label:
            src.name = opened.label
        yield src
    finally:
        src.close()


#: kinds of input :func:`input_kind` tells apart
STREAM = "stream"
MAPPED_RAM = "mapped-ram"


def input_kind(path: str) -> str:
    """:data:`MAPPED_RAM` for a regular file whose CONFIGURATION record names the mapped-ram
    capability (QEMU 9.0+ ``file:`` migration: RAM at fixed offsets, not a record stream),
    else :data:`STREAM` (also for stdin, ``.lz4`` and unreadable paths: decoding reports those)."""
    from vmig.stream.mapped_ram import is_mapped_ram

    if path == "-" or path.endswith(".lz4"):
        return STREAM
    try:
        with open(path, "rb") as f:
            return MAPPED_RAM if is_mapped_ram(f.read(1024)) else STREAM
    except OSError:
        return STREAM


def read_all(path: str) -> bytes:
    """The whole (decompressed) input as bytes."""
    with open_source(path, use_mmap=False) as src:
        return b"".join(bytes(c) for c in src.chunks())


def load_description(path: str) -> VmDescription:
    """A description for ``--desc-from``: another stream's trailer, or a bare vmdesc JSON file.

    Raises:
        SchemaError/UsageError: no trailer found (message names the path).
    """
    head = b""
    with open_source(path) as src:
        if src.mapped is not None:
            mv = src.mapped
            if len(mv) and mv[0] == ord("{"):
                return VmDescription(bytes(mv), source=path, path=path)
            head = bytes(mv[:_HEAD_BYTES])
            found = find_trailer(mv, source=path)
        else:
            tail = bytearray()
            first = True
            for chunk in src.chunks():
                if first and len(chunk) and chunk[0] == ord("{"):
                    rest = bytes(chunk) + b"".join(bytes(c) for c in src.chunks())
                    return VmDescription(rest, source=path, path=path)
                if len(head) < _HEAD_BYTES:
                    head += bytes(chunk[: _HEAD_BYTES - len(head)])
                first = False
                tail += chunk
                if len(tail) > 2 * TAIL_KEEP:
                    del tail[: len(tail) - TAIL_KEEP]
            found = find_trailer(tail, source=path)
    if found is None:
        raise UsageError(f"{path}: no vmdesc trailer found (is it a precopy capture with a trailer?)")
    desc = found[1]
    desc.source = path
    desc.machine = configuration_name(head)
    return desc


_HEAD_BYTES = 4096


def configuration_name(head: bytes) -> str | None:
    """The machine type named by the CONFIGURATION record at the start of a stream (its first
    bytes), or None (no such record)."""
    dec = StreamDecoder()
    dec.receive_data(head)
    try:
        for _ in range(2):
            ev = dec.next_event()
            if isinstance(ev, Configuration):
                return ev.name
    except StreamError:
        return None
    return None


def check_desc_from(events: Iterable[Event], desc: VmDescription, path: str) -> Iterator[Event]:
    """Pass ``events`` through, refusing a ``--desc-from`` description of another VM or QEMU.

    Refused (a one-line :class:`~vmig.errors.SchemaError`): a description captured on another
    machine type than the stream's CONFIGURATION names; a section the description lists with
    another version than the stream's header; a description and a stream trailer of different
    QEMU generations (newer QEMU adds a ``configuration`` entry to the description).
    """
    where = desc.source
    for ev in events:
        if isinstance(ev, Configuration) and desc.machine is not None and ev.name != desc.machine:
            raise SchemaError(
                f"--desc-from {where} describes machine type {desc.machine}, the stream is "
                f"{ev.name}: use a capture of the same VM configuration", offset=ev.offset, path=path)
        elif isinstance(ev, SectionHeader) and ev.type in (SectionType.SECTION_START,
                                                           SectionType.SECTION_FULL):
            entry = desc.device(ev.idstr, ev.instance_id)
            version = entry.get("version") if entry is not None else None
            if isinstance(version, int) and version != ev.version_id:  # None: no vmsd (slirp)
                raise SchemaError(
                    f"--desc-from {where} is from another QEMU version: it describes version "
                    f"{version} of this section, the stream has version {ev.version_id}",
                    offset=ev.offset, section=f"{ev.idstr} instance {ev.instance_id}", path=path)
        elif isinstance(ev, VmDescriptionEvent):
            own = ev.description or VmDescription(ev.raw, source="stream trailer", offset=ev.offset,
                                                  path=path)
            if (own.configuration is None) != (desc.configuration is None):
                newer, older = (where, "the stream") if own.configuration is None else ("the stream", where)
                raise SchemaError(
                    f"--desc-from {where} is from another QEMU version: {newer} has a "
                    f"'configuration' entry in its description (newer QEMU), {older} has none",
                    offset=ev.offset, path=path)
        yield ev


def iter_events(
    path: str,
    description: VmDescription | None = None,
    desc_from: str | VmDescription | None = None,
    *,
    fast: bool = True,
    schema_sets: bool = False,
    resident_lag: int = 0,
    on_open: Callable[[Source], None] | None = None,
    ram_columns: bool = True,
) -> Iterator[Event]:
    """Decode the stream at ``path`` ('-' = stdin, .lz4 transparent), yielding events.

    Descriptions are consulted in order: the stream's own trailer (located first for mapped
    files), ``description``, then ``desc_from`` (a path or a VmDescription).
    With ``schema_sets`` the bundled schema set of the stream's machine type is the last resort
    for FULL sections nothing else describes (the decoder comes from
    :func:`vmig.io.decoding.new_decoder`).

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
        other = desc_from if isinstance(desc_from, VmDescription) else load_description(desc_from)
        extra.append(other)
        yield from check_desc_from(_iter_events(path, extra, fast, schema_sets, resident_lag, on_open, ram_columns), other, path)
        return
    yield from _iter_events(path, extra, fast, schema_sets, resident_lag, on_open, ram_columns)


def _iter_events(path: str, extra: list[VmDescription], fast: bool, schema_sets: bool,
                 resident_lag: int, on_open: Callable[[Source], None] | None,
                 ram_columns: bool) -> Iterator[Event]:
    with open_source(path) as src:
        src.drop_lag = resident_lag
        if on_open is not None:
            on_open(src)  # e.g. to read the container layers the source unwraps (Source.layers)
        dec = new_decoder(whole=src.mapped, descriptions=extra, schema_sets=schema_sets,
                          fast=fast, name=src.name, ram_columns=ram_columns)
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
            explain(e, dec)
            e.with_path(src.name)
            from vmig.io.containers import cut_short, drain_cut

            if cut_short(path, e):  # --partial: the events that arrived were the answer
                yield from drain_cut(dec)
                return
            raise


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


@record
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
    #: a command's arguments (``vmig.stream.framing.parse_command_args``; DISCARD ranges as
    #: ``[start, length]`` byte pairs)
    args: dict | None = None

    def to_json(self) -> dict:
        """JSON-ready dict with the keys that apply."""
        d: dict = {"offset": self.offset, "length": self.length, "type": self.type}
        for k in ("section_id", "idstr", "instance_id", "version_id", "command", "args"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.type == "command" and self.command == "PACKAGED":
            d["children"] = [c.to_json() for c in self.children]
        return d


def command_args(ev: Command) -> dict:
    """A COMMAND record's decoded arguments, JSON-ready (ranges as ``[start, length]`` lists)."""
    from vmig.stream.framing import COMMAND_HEADER, parse_command_args

    args = parse_command_args(ev.cmd, bytes(ev.data), ev.offset + COMMAND_HEADER.size)
    if "ranges" in args:
        args["ranges"] = [list(r) for r in args["ranges"]]
    return args


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
                         args=command_args(ev),
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
