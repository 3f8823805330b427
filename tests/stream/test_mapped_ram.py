"""mapped-ram (QEMU 9.0+ file layout) on a real QEMU 10.0 capture (tests/data/ram)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import lz4.frame
import pytest

from vmig.errors import RamError
from vmig.stream import mapped_ram

DATA = Path(__file__).resolve().parents[1] / "data" / "ram"


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


# ---------------------------------------------------------------- the main decoder and commands
def _events(buf: bytes, chunk: int | None = None) -> list:
    from vmig.io.decoding import new_decoder

    dec = new_decoder()
    if chunk is None:
        dec.receive_data(buf)
    else:
        for i in range(0, len(buf), chunk):
            dec.receive_data(buf[i : i + chunk])
    dec.receive_data(b"")
    return list(dec.events())


@pytest.mark.parametrize("chunk", [None, 1 << 20])
def test_decoder_follows_the_mapped_ram_layout_byte_exact(capture, chunk) -> None:
    from vmig.stream.encoder import encode

    buf, _ = capture
    evs = _events(buf, chunk)
    assert encode(evs) == buf
    mem = next(e.batch.mem_size for e in evs if type(e).__name__ == "RamRecords" and e.batch.mem_size)
    (blocks, _), _ = _block_list(buf)
    assert [(b.idstr, b.used_length, b.bitmap_offset, b.pages_offset) for b in mem] == \
        [(b.idstr, b.used_length, b.bitmap_offset, b.pages_offset) for b in blocks]
    devices = [e for e in evs if type(e).__name__ == "DeviceState"]
    assert len(devices) > 20 and devices[0].idstr == "timer"


def test_ram_counts_equal_query_migrate(capture, tmp_path, capsys) -> None:
    from vmig.cli import main

    buf, qm = capture
    f = tmp_path / "mr.bin"
    f.write_bytes(buf)
    for src in (str(f), str(DATA / "mapped-ram-10.0.bin.lz4")):
        assert main(["ram", src, "--json"]) == 0
        t = json.loads(capsys.readouterr().out)["totals"]
        assert (t["normal"], t["zero"]) == (qm["ram"]["normal"], qm["ram"]["duplicate"])
        assert t["bytes"] == qm["ram"]["normal-bytes"]


@pytest.mark.parametrize("field, value, what", [
    (0, 2, "unsupported version"),
    (12, 0x10, "out of order"),  # bitmap offset before the header's end
    (20, 0x123, "out of order"),  # pages offset not 1 MiB aligned
])
def test_bad_mapped_ram_header_is_one_line_with_offset(capture, tmp_path, capsys, field, value, what) -> None:
    from vmig.cli import main

    buf, _ = capture
    (blocks, _), _ = _block_list(buf)
    hdr = blocks[0].header_offset
    bad = bytearray(buf)
    fmt = ">I" if field == 0 else ">Q"
    struct.pack_into(fmt, bad, hdr + field, value)
    f = tmp_path / "bad.bin"
    f.write_bytes(bytes(bad))
    assert main(["ram", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and what in err and f"offset {hdr:#x}" in err and str(f) in err
