"""mapped-ram (QEMU 9.0+ file layout) on a real QEMU 10.0 capture (tests/ram/data)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import lz4.frame
import numpy as np
import pytest

from vmig.errors import RamError
from vmig.stream import mapped_ram

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def capture() -> tuple[bytes, dict]:
    buf = lz4.frame.decompress((DATA / "mapped-ram-10.0.bin.lz4").read_bytes())
    return buf, json.loads((DATA / "mapped-ram-10.0.json").read_text())["query-migrate"]


def _block_list(buf: bytes):
    i = buf.find(b"\x03ram")  # START "ram": the record word follows instance and version
    pos = i + 4 + 8
    w = struct.unpack_from(">Q", buf, pos)[0]
    assert w & 0xFFF == 0x04  # MEM_SIZE
    return mapped_ram.parse_block_list(buf, pos + 8, w & ~0xFFF), pos


def test_block_list_headers_and_continuation(capture) -> None:
    buf, _ = capture
    assert b"\x0amapped-ram" in buf[:0x50]  # the validated capability in the configuration
    (blocks, nxt), _ = _block_list(buf)
    assert [b.idstr for b in blocks][:3] == ["pc.ram", "/rom@etc/acpi/tables", "pc.bios"]
    for b in blocks:
        assert b.page_size == 4096
        assert b.pages_offset % mapped_ram.MAPPED_RAM_FILE_OFFSET_ALIGNMENT == 0
        assert b.bitmap_offset == b.header_offset + mapped_ram.MAPPED_RAM_HEADER.size
    # the stream continues after the last block's pages: EOS then the START footer
    assert buf[nxt : nxt + 13] == struct.pack(">Q", 0x10) + b"\x7e" + buf[nxt + 9 : nxt + 13]


def test_bitmap_counts_equal_query_migrate(capture) -> None:
    buf, qm = capture
    (blocks, _), _ = _block_list(buf)
    present = sum(int(mapped_ram.present_pages(buf, b).sum()) for b in blocks)
    total = sum(b.npages for b in blocks)
    # QEMU 10 counts written pages as normal and the rest (zero, never written) as duplicate
    assert present == qm["ram"]["normal"]
    assert total - present == qm["ram"]["duplicate"]


def test_pages_at_fixed_offsets(capture) -> None:
    buf, _ = capture
    (blocks, _), _ = _block_list(buf)
    rsdp = next(b for b in blocks if b.idstr == "/rom@etc/acpi/rsdp")
    assert mapped_ram.present_pages(buf, rsdp)[0]
    assert bytes(mapped_ram.page_view(buf, rsdp)[0][:8]) == b"RSD PTR "
    bios = next(b for b in blocks if b.idstr == "pc.bios")
    pages = mapped_ram.page_view(buf, bios)
    absent = ~mapped_ram.present_pages(buf, bios)
    assert absent.any() and not pages[absent].any(), "absent pages are zero in the file"


def test_bad_headers_are_rejected(capture) -> None:
    buf, _ = capture
    (blocks, _), _ = _block_list(buf)
    b = bytearray(buf)
    hdr = blocks[0].header_offset
    b[hdr : hdr + 4] = struct.pack(">I", 2)
    with pytest.raises(RamError, match="version"):
        mapped_ram.parse_header(bytes(b), hdr, used_length=blocks[0].used_length)
    b = bytearray(buf[: blocks[0].pages_offset + 100])
    with pytest.raises(RamError, match="beyond the end"):
        mapped_ram.parse_header(bytes(b), hdr, used_length=blocks[0].used_length)


def test_extract_mapped_ram_file(capture, tmp_path) -> None:
    from vmig.cli import main

    buf, _ = capture
    assert mapped_ram.is_mapped_ram(buf)
    src = tmp_path / "mr.bin"
    src.write_bytes(buf)
    out = tmp_path / "out"
    assert main(["extract", str(src), "-o", str(out)]) == 0
    assert (out / "rom@etc/acpi/rsdp").read_bytes()[:8] == b"RSD PTR "
    assert (out / "pc.ram").stat().st_size == 64 << 20
    bios = (out / "pc.bios").read_bytes()
    (blocks, _), _ = _block_list(buf)
    b = next(x for x in blocks if x.idstr == "pc.bios")
    assert bios == bytes(mapped_ram.page_view(buf, b).reshape(-1))
    assert (out / "desc.json").read_bytes()[:1] == b"{"
