"""A minimal top-level walker for the RAM tests: the RAM sections of a precopy stream as events.

:func:`apply_page_record` is the loader's effect of one page record, record at a time: the
oracle the batch applier (``vmig.stream.ramcodec.apply_batch``) and extract are checked against.

Walks the header, CONFIGURATION (without subsections) and the ``ram`` START/PART/END sections
with vmig.stream.ram's walkers, stopping at the first non-RAM section (in QEMU 7.2 precopy every
RAM section precedes the device sections). Independent of the full decoder so that the RAM tests
check the RAM code alone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from vmig.errors import RamError
from vmig.stream import ram, ramcodec, xbzrle
from vmig.stream.constants import RamFlag, SectionType
from vmig.stream.events import RamRecords, SectionEnd, SectionHeader


def ram_events(buf: bytes | memoryview, fast: bool = True, batch_bytes: int = ram.BATCH_BYTES) -> Iterator[object]:
    mv = memoryview(buf).cast("B")
    assert bytes(mv[:4]) == b"QEVM"
    pos = 8
    state = ram.RamState()
    ram_id = None
    walk = ram.walk_fast if fast else ram.walk_scalar
    while pos < len(mv):
        t = mv[pos]
        start = pos
        if t == SectionType.CONFIGURATION:
            n = struct.unpack_from(">I", mv, pos + 1)[0]
            pos += 5 + n
            continue
        if t in (SectionType.SECTION_START, SectionType.SECTION_FULL):
            sid = struct.unpack_from(">I", mv, pos + 1)[0]
            n = mv[pos + 5]
            name = bytes(mv[pos + 6 : pos + 6 + n]).decode()
            if name != "ram":
                return
            ram_id = sid
            pos += 6 + n + 8
        elif t in (SectionType.SECTION_PART, SectionType.SECTION_END):
            sid = struct.unpack_from(">I", mv, pos + 1)[0]
            if sid != ram_id:
                return
            pos += 5
        else:
            return
        yield SectionHeader(start, pos - start, SectionType(t), sid, "ram", 0, 4)
        for b in walk(mv[pos:], state, base=pos, batch_bytes=batch_bytes):
            yield RamRecords(b.base, b.nbytes, b, sid)
            pos = b.base + b.nbytes
        footer = mv[pos] == 0x7E
        flen = 5 if footer else 0
        yield SectionEnd(pos, flen, sid, footer, start, pos + flen - start)
        pos += flen


def apply_page_record(flags: int, payload: bytes | memoryview, page: bytearray, *, offset: int | None = None) -> None:
    """Apply one page record's payload to ``page`` (the page's current content) in place.

    ``flags`` may include CONTINUE. ZERO: ``payload`` is the one fill byte; PAGE: the page;
    XBZRLE: the encoded bytes; COMPRESS_PAGE: the zlib bytes.
    """
    typ = flags & ~int(RamFlag.CONTINUE)
    if typ == RamFlag.ZERO:
        page[:] = bytes((payload[0],)) * len(page)
    elif typ == RamFlag.PAGE:
        page[:] = payload
    elif typ == RamFlag.XBZRLE:
        xbzrle.apply(payload, page, offset=offset)
    elif typ == RamFlag.COMPRESS_PAGE:
        ramcodec.inflate_into(payload, page, offset=offset)
    else:
        raise RamError(f"not a page record: flags {flags:#x}", offset=offset)


def qevm_fixtures() -> list[str]:
    """Fixtures that are QEVM streams (not a recorded return path)."""
    from vmig.testing import fixtures

    return [n for n in fixtures.names() if fixtures.manifest(n).get("qevm_header", True)
            and fixtures.load(n)[:4] == b"QEVM"]


def apply_batch_records(batch, content: dict, page_size: int = 4096) -> None:
    """Apply ``batch``'s page records one at a time, in record order, to ``content``
    ({(RAMBlock idstr, address): page bytes}; a missing page reads as zeros): the oracle the
    vectorised applier is compared with."""
    import numpy as np

    page_types = [int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE), int(RamFlag.COMPRESS_PAGE)]
    for i in np.flatnonzero(np.isin(batch.types(), page_types)).tolist():
        key = (batch.blocks[int(batch.block[i])].idstr, int(batch.addr[i]))
        page = bytearray(content.get(key, bytes(page_size)))
        apply_page_record(int(batch.flags[i]), batch.data(i), page)
        content[key] = bytes(page)
