"""The mapped-ram file layout (QEMU 9.0+, ``file:`` migration with the ``mapped-ram`` capability).

Mirrors QEMU's ``migration/ram.c`` (``struct MappedRamHeader``, ``mapped_ram_setup_ramblock``,
``ram_save_file_bmap``, ``read_ramblock_mapped_ram``). Spec: stream-format §5.10.

Layout of one block of the MEM_SIZE list (the list itself as in §5.2)::

    u8 len, idstr, be64 used_length, [be64 page_size], [be64 mr_addr]
    28-byte packed big-endian header: be32 version (1), be64 page_size,
                                      be64 bitmap_offset, be64 pages_offset
    ... the stream continues at pages_offset + used_length (absolute file offsets)

``bitmap_offset`` is where the block's "page present" bitmap lives (host ``unsigned long``
words: little-endian 64-bit on x86; written at the end of the migration), ``pages_offset`` the
1 MiB-aligned start of the block's pages, each page at ``pages_offset + page_index *
page_size``. There are no per-page records; a page whose bit is clear is zero. Ignored blocks
(x-ignore-shared) have both offsets 0.

Theory of operation: this module is sans-I/O over a buffer that holds the whole file (an mmap):
the layout depends on absolute file offsets, so mapped-ram streams need a seekable input.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vmig.errors import RamError, TruncatedError
from vmig.records import record

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MAPPED_RAM_HDR_VERSION",
    "MAPPED_RAM_HEADER",
    "MAPPED_RAM_FILE_OFFSET_ALIGNMENT",
    "MappedRamBlock",
    "parse_header",
    "parse_block_list",
    "present_pages",
    "page_view",
    "bitmap_bytes",
    "is_mapped_ram",
    "find_block_list",
]

MAPPED_RAM_HDR_VERSION = 1
MAPPED_RAM_HEADER = struct.Struct(">IQQQ")  # 28 bytes, packed
MAPPED_RAM_FILE_OFFSET_ALIGNMENT = 0x100000
_W = struct.Struct(">Q")


@record(frozen=True)
class MappedRamBlock:
    """One RAMBlock of a mapped-ram file."""

    idstr: str
    used_length: int
    page_size: int
    bitmap_offset: int
    pages_offset: int
    block_page_size: int | None = None  # the postcopy page-size field, if present
    mr_addr: int | None = None  # x-ignore-shared address field, if present
    header_offset: int = 0

    @property
    def npages(self) -> int:
        return self.used_length // self.page_size

    @property
    def ignored(self) -> bool:
        return self.bitmap_offset == 0 and self.pages_offset == 0


def bitmap_bytes(npages: int, long_bytes: int = 8) -> int:
    """Size of a block's bitmap: whole host longs (``BITS_TO_LONGS(npages) * sizeof(long)``)."""
    bits = long_bytes * 8
    return -(-npages // bits) * long_bytes


def parse_header(buf: bytes | memoryview, pos: int, *, idstr: str = "?", used_length: int = 0,
                 file_size: int | None = None) -> tuple[int, int, int, int]:
    """Parse the 28-byte header at ``pos``: (version, page_size, bitmap_offset, pages_offset).

    Raises:
        TruncatedError: fewer than 28 bytes left. RamError: bad version/page size/offsets.
    """
    if pos + MAPPED_RAM_HEADER.size > len(buf):
        raise TruncatedError("input ends inside a mapped-ram header", offset=pos)
    version, ps, bmo, pgo = MAPPED_RAM_HEADER.unpack_from(buf, pos)
    if version != MAPPED_RAM_HDR_VERSION:
        raise RamError(f"mapped-ram header of block {idstr!r}: unsupported version", offset=pos,
                       expected=MAPPED_RAM_HDR_VERSION, found=version)
    if ps == 0 or ps & (ps - 1):
        raise RamError(f"mapped-ram header of block {idstr!r}: bad page size", offset=pos, found=ps)
    if (bmo or pgo) and pgo % MAPPED_RAM_FILE_OFFSET_ALIGNMENT:
        raise RamError(f"mapped-ram block {idstr!r}: pages offset not 1 MiB aligned", offset=pos,
                       found=f"{pgo:#x}")
    size = len(buf) if file_size is None else file_size
    if (bmo or pgo) and (pgo + used_length > size or bmo + bitmap_bytes(used_length // ps) > size):
        raise RamError(f"mapped-ram block {idstr!r}: pages or bitmap beyond the end of the file",
                       offset=pos, expected=f"<= {size:#x}",
                       found=f"pages end {pgo + used_length:#x}, bitmap at {bmo:#x}")
    return version, ps, bmo, pgo


def parse_block_list(buf: bytes | memoryview, pos: int, total: int, *, page_size_field: bool = False,
                     ignore_shared: bool = False) -> tuple[list[MappedRamBlock], int]:
    """Parse a mapped-ram MEM_SIZE block list starting right after the record word.

    Args:
        buf: the whole file. pos: offset of the first entry. total: the record's byte total.
        page_size_field / ignore_shared: whether the optional per-block fields are present.

    Returns:
        (blocks, offset where the stream continues: after the last block's pages).
    """
    blocks: list[MappedRamBlock] = []
    remaining = total
    while remaining > 0:
        if pos + 1 > len(buf):
            raise TruncatedError("input ends inside the mapped-ram block list", offset=pos)
        n = buf[pos]
        if n == 0:
            raise RamError("bad block entry in the mapped-ram block list", offset=pos, found=n)
        _need(buf, pos + 1, n + 8, "a block entry of the mapped-ram block list")
        idstr = bytes(buf[pos + 1 : pos + 1 + n]).decode("latin-1")
        used = _W.unpack_from(buf, pos + 1 + n)[0]
        if used > remaining:
            raise RamError(f"block {idstr!r} used_length exceeds the list total", offset=pos,
                           expected=f"<= {remaining:#x}", found=f"{used:#x}")
        q = pos + 1 + n + 8
        bps = mr = None
        _need(buf, q, 8 * (bool(page_size_field) + bool(ignore_shared)), f"block {idstr!r}'s entry")
        if page_size_field:
            bps = _W.unpack_from(buf, q)[0]
            q += 8
        if ignore_shared:
            mr = _W.unpack_from(buf, q)[0]
            q += 8
        _, ps, bmo, pgo = parse_header(buf, q, idstr=idstr, used_length=used)
        blocks.append(MappedRamBlock(idstr, used, ps, bmo, pgo, bps, mr, q))
        remaining -= used
        pos = (pgo + used) if (bmo or pgo) else q + MAPPED_RAM_HEADER.size
    return blocks, pos


def present_pages(buf: bytes | memoryview, block: MappedRamBlock) -> np.ndarray:
    """Bool per page: present in the file (bitmap bit set). Little-endian 64-bit host longs."""
    import numpy as np

    if block.ignored:
        return np.zeros(block.npages, dtype=np.bool_)
    nbytes = bitmap_bytes(block.npages)
    raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=block.bitmap_offset)
    bits = np.unpackbits(raw, bitorder="little")
    return bits[: block.npages].astype(np.bool_)


def page_view(buf: bytes | memoryview, block: MappedRamBlock) -> np.ndarray:
    """The block's page area as an (npages, page_size) uint8 view (no copy)."""
    import numpy as np

    return np.frombuffer(buf, dtype=np.uint8, count=block.npages * block.page_size,
                         offset=block.pages_offset).reshape(block.npages, block.page_size)


def is_mapped_ram(buf: bytes | memoryview) -> bool:
    """True if the CONFIGURATION record lists the validated capability ``mapped-ram``."""
    if len(buf) < 13 or bytes(buf[:4]) != b"QEVM" or buf[8] != 0x07:
        return False
    n = struct.unpack_from(">I", buf, 9)[0]
    head = bytes(buf[13 + n : 13 + n + 512])
    return head.startswith(b"\x05\x1aconfiguration/capabilities") and b"\x0amapped-ram" in head


def _need(buf: bytes | memoryview, pos: int, n: int, what: str) -> None:
    if pos + n > len(buf):
        raise TruncatedError(f"input ends inside {what}", offset=min(pos, len(buf)),
                             expected=f"{n} bytes", found=f"{max(0, len(buf) - pos)}")


def find_block_list(buf: bytes | memoryview) -> tuple[list[MappedRamBlock], int]:
    """Locate the ``ram`` START section of a mapped-ram file and parse its block list.

    Every length and count read is checked against the buffer before it is used.

    Returns (blocks, offset where the stream continues after the last block's pages).

    Raises:
        TruncatedError: the file ends before the block list does.
        RamError: no ``ram`` START section right after the configuration.
    """
    _need(buf, 0, 13, "the header and configuration record")
    n = struct.unpack_from(">I", buf, 9)[0]
    pos = 13 + n
    _need(buf, 13, n, "the machine type name")
    # configuration subsections: 05, u8 len, name, be32 version, payload (capabilities here)
    while pos < len(buf) and buf[pos] == 0x05:
        _need(buf, pos, 2, "a configuration subsection header")
        ln = buf[pos + 1]
        _need(buf, pos + 2, ln + 4, "a configuration subsection header")
        name = bytes(buf[pos + 2 : pos + 2 + ln])
        q = pos + 2 + ln + 4
        if name == b"configuration/capabilities":
            _need(buf, q, 4, "the capability count")
            count = struct.unpack_from(">I", buf, q)[0]
            q += 4
            for _ in range(count):
                _need(buf, q, 1, "a capability name")
                q += 1 + buf[q]
            _need(buf, q, 0, "the capability names")
        elif name == b"configuration/target-page-bits":
            q += 4
        elif name == b"configuration/uuid":
            q += 16
        else:
            raise RamError(f"unknown configuration subsection {name!r}", offset=pos)
        pos = q
    _need(buf, pos, 25, "the ram START section header and its first record")
    if buf[pos] != 0x01 or bytes(buf[pos + 5 : pos + 9]) != b"\x03ram":
        raise RamError("no ram START section after the configuration", offset=pos)
    w = _W.unpack_from(buf, pos + 17)[0]
    if w & 0xFFF != 0x04:
        raise RamError("ram START section does not begin with the block list", offset=pos + 17,
                       found=f"flags {w & 0xFFF:#x}")
    caps_ignore_shared = b"\x0fx-ignore-shared" in bytes(buf[13 + n : pos])
    return parse_block_list(buf, pos + 25, w & ~0xFFF, ignore_shared=caps_ignore_shared)
