"""Payload lengths of non-RAM sections: descriptions first, then a table of built-in layouts.

QEMU writes no length for any section (migration/savevm.c ``vmstate_save``); the loader knows
the length only by running the device's load routine. A reader that does not decode every
device must learn the length elsewhere. :class:`LayoutResolver` asks, in order:

1. explicit descriptions: the stream's own vmdesc trailer, then ``--desc-from`` trailers
   (payload length = sum of field sizes, stream-format §3.3);
2. a table of built-in layouts (idstr or its last ``/`` part -> measure function) handed to
   the resolver: :data:`STREAM_LAYOUTS` (the live handlers measured here, QEMU's
   migration/block.c and migration/block-dirty-bitmap.c) by default; the decoder factory
   (:mod:`vmig.io.decoding`) adds the layouts of the vmstate schemas (virtio-mem).

Each candidate length is checked against the bytes that follow it (a footer with the section's
id, or a valid record type byte); a description whose length does not fit is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from vmig.errors import SchemaError
from vmig.stream.inbuf import NeedMoreInput
from vmig.stream.vmdesc import VmDescription

__all__ = ["MeasureFn", "LayoutResolver", "STREAM_LAYOUTS", "NEXT_RECORD_BYTES"]

#: measure_fn(view, version_id) -> payload length; raises NeedMoreInput if view is too short
MeasureFn = Callable[[memoryview, int], int]

#: bytes that may follow a section payload when footers are off
NEXT_RECORD_BYTES = frozenset({0x00, 0x01, 0x02, 0x03, 0x04, 0x08})


class LayoutResolver:
    """Finds section payload lengths from descriptions and a table of built-in layouts.

    Args:
        descriptions: descriptions in priority order (own trailer first, then --desc-from).
        layouts: built-in measures by idstr or by the idstr's last ``/`` part (``measure_fn(view,
            version_id) -> payload length``, raising NeedMoreInput while ``view`` is too short
            to tell); None = :data:`STREAM_LAYOUTS`, ``{}`` = none.
    """

    def __init__(self, descriptions: Iterable[VmDescription] = (),
                 layouts: Mapping[str, MeasureFn] | None = None) -> None:
        self.descriptions: list[VmDescription] = list(descriptions)
        self.layouts: Mapping[str, MeasureFn] = STREAM_LAYOUTS if layouts is None else layouts

    def _builtin_for(self, idstr: str) -> MeasureFn | None:
        fn = self.layouts.get(idstr)
        if fn is not None:
            return fn
        return self.layouts.get(idstr.rsplit("/", 1)[-1])

    def add_description(self, desc: VmDescription, first: bool = False) -> None:
        if first:
            self.descriptions.insert(0, desc)
        else:
            self.descriptions.append(desc)

    def has_layout(self, idstr: str, instance_id: int, full: bool) -> bool:
        if full and any(d.device(idstr, instance_id) is not None for d in self.descriptions):
            return True
        return self._builtin_for(idstr) is not None

    def measure(
        self,
        view: memoryview,
        *,
        idstr: str,
        instance_id: int,
        version_id: int,
        section_id: int,
        full: bool,
        at_eof: bool,
        offset: int = 0,
        footers: bool | None = None,
    ) -> int | None:
        """Payload length of a section starting at ``view[0]``, or None when nothing describes it.

        Descriptions apply only to FULL sections (``full``). A candidate length is accepted when
        the bytes after it are a footer naming ``section_id`` or a record type byte (or the end
        of input); when ``footers`` is True (earlier sections had footers) only a footer is
        accepted. While the check needs more bytes, raises NeedMoreInput so the caller waits
        (or, at end of input, reports the truncation).

        Raises:
            NeedMoreInput: not enough bytes yet to measure/check.
            SchemaError: every candidate was checked and none fits.
        """
        tried: list[str] = []
        if full:
            for desc in self.descriptions:
                entry = desc.device(idstr, instance_id)
                if entry is None:
                    continue
                n = desc.payload_length(entry)
                verdict = fits_section_end(view, n, at_eof, footers)
                if verdict is None:
                    raise NeedMoreInput("the section payload", have=len(view))
                if verdict:
                    return n
                tried.append(f"{desc.source} says {n} bytes")
        fn = self._builtin_for(idstr)
        if fn is not None:
            n = fn(view, version_id)
            verdict = fits_section_end(view, n, at_eof, footers)
            if verdict is None:
                raise NeedMoreInput("the section payload", have=len(view))
            if verdict:
                return n
            tried.append(f"built-in layout says {n} bytes")
        if tried:
            nxt = f"{view[n]:#04x}" if n < len(view) else "end of input"
            raise SchemaError(
                "no description fits the section payload: " + "; ".join(tried)
                + "; the next byte is not a footer or record type",
                offset=offset, section=f"{idstr} instance {instance_id}", found=nxt,
            )
        return None


def fits_section_end(view: memoryview, n: int, at_eof: bool, footers: bool | None,
                     section_id: int | None = None) -> bool | None:
    """True/False whether a payload of length n ends where a section may end; None = need more.

    Args:
        view: the bytes from the payload start.
        n: candidate payload length.
        at_eof: no more input will come.
        footers: True/False when known, None to sniff.
        section_id: when given, a footer must name this id (walks with alternatives, e.g. the
            bundled schema sets, need that). Without it a footer byte is accepted whatever id
            follows, so the decoder's own footer check reports a mismatch as such instead of a
            misleading "no description fits".
    """
    avail = len(view)
    if n > avail:
        return None
    if n == avail:
        return True if at_eof else None
    b = view[n]
    if b == 0x7E:
        if footers is False:
            return False
        if section_id is None:
            return True
        if n + 5 > avail:
            return True if at_eof else None
        return int.from_bytes(view[n + 1:n + 5], "big") == section_id
    if footers:
        return False
    if b == 0x00:  # EOF: only the trailer or the end of input may follow
        if n + 1 == avail:
            return True if at_eof else None
        return view[n + 1] == 0x06
    if b == 0x08:  # COMMAND: a known command number
        if n + 3 > avail:
            return True if at_eof else None
        return 1 <= int.from_bytes(view[n + 1:n + 3], "big") <= 11
    return b in NEXT_RECORD_BYTES


# --------------------------------------------------------------------------------------------
# Built-in layouts of the two other live handlers of QEMU 7.2 (x86): "block" (migration/block.c,
# block_load) and "dirty-bitmap" (migration/block-dirty-bitmap.c, dirty_bitmap_load). Both
# payloads are self-delimiting record lists ending with their own EOS flag.

BLK_MIG_FLAG_DEVICE_BLOCK = 0x01
BLK_MIG_FLAG_EOS = 0x02
BLK_MIG_FLAG_PROGRESS = 0x04
BLK_MIG_FLAG_ZERO_BLOCK = 0x08
BLK_MIG_BLOCK_SIZE = 1 << 20
BDRV_SECTOR_SIZE = 512

DBM_FLAG_EOS = 0x01
DBM_FLAG_ZEROES = 0x02
DBM_FLAG_BITMAP_NAME = 0x04
DBM_FLAG_DEVICE_NAME = 0x08
DBM_FLAG_START = 0x10
DBM_FLAG_COMPLETE = 0x20
DBM_FLAG_BITS = 0x40
DBM_FLAG_EXTRA = 0x80
DBM_MAX_BUF = 10 * (1 << 20)  # the loader refuses buffers larger than 10 * CHUNK_SIZE (1 MiB)


def _need(view: memoryview, end: int) -> None:
    if end > len(view):
        raise NeedMoreInput("the payload", end, len(view))


def measure_block(view: memoryview, version_id: int) -> int:
    """Payload length of a "block" (block migration) START/PART/END section."""
    from vmig.errors import StreamError

    p = 0
    while True:
        _need(view, p + 8)
        word = int.from_bytes(view[p:p + 8], "big")
        flags = word & (BDRV_SECTOR_SIZE - 1)
        p += 8
        if flags & BLK_MIG_FLAG_DEVICE_BLOCK:
            _need(view, p + 1)
            p += 1 + view[p]
            if not flags & BLK_MIG_FLAG_ZERO_BLOCK:
                p += BLK_MIG_BLOCK_SIZE
            _need(view, p)
        elif flags & BLK_MIG_FLAG_PROGRESS:
            pass
        elif not flags & BLK_MIG_FLAG_EOS:
            raise StreamError("unknown block migration flags", offset=p - 8, found=f"{flags:#x}")
        if flags & BLK_MIG_FLAG_EOS:
            return p


def measure_dirty_bitmap(view: memoryview, version_id: int) -> int:
    """Payload length of a "dirty-bitmap" START/PART/END section."""
    from vmig.errors import StreamError

    p = 0
    while True:
        _need(view, p + 1)
        flags = view[p]
        p += 1
        if flags & DBM_FLAG_EXTRA:  # never written by QEMU; the 7.2 loader keeps only the last byte
            _need(view, p + 1)
            flags = view[p]
            p += 1
            if flags & DBM_FLAG_EXTRA:
                _need(view, p + 2)
                flags = view[p + 1]
                p += 2
        if flags & DBM_FLAG_DEVICE_NAME:
            _need(view, p + 1)
            p += 1 + view[p]
        if flags & DBM_FLAG_BITMAP_NAME:
            _need(view, p + 1)
            p += 1 + view[p]
        if flags & DBM_FLAG_START:
            p += 4 + 1  # be32 granularity, u8 flags
        elif flags & DBM_FLAG_COMPLETE:
            pass
        elif flags & DBM_FLAG_BITS:
            p += 8 + 4  # be64 first sector, be32 sector count
            if not flags & DBM_FLAG_ZEROES:
                _need(view, p + 8)
                size = int.from_bytes(view[p:p + 8], "big")
                if size > DBM_MAX_BUF:
                    raise StreamError("dirty-bitmap buffer too large", offset=p,
                                      expected=f"<= {DBM_MAX_BUF}", found=size)
                p += 8 + size
        _need(view, p)
        if flags & DBM_FLAG_EOS:
            return p


#: the built-in layouts of the wire codec itself (the default table of LayoutResolver)
STREAM_LAYOUTS: Mapping[str, MeasureFn] = MappingProxyType({
    "block": measure_block,
    "dirty-bitmap": measure_dirty_bitmap,
})
