"""A minimal top-level walker for tests/ram: the RAM sections of a precopy stream as events.

Walks the header, CONFIGURATION (without subsections) and the ``ram`` START/PART/END sections
with vmig.stream.ram's walkers, stopping at the first non-RAM section (in QEMU 7.2 precopy every
RAM section precedes the device sections). Independent of the full decoder so that the RAM tests
check the RAM code alone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from vmig.stream import ram
from vmig.stream.constants import SectionType
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
