"""Hand-built QEVM byte strings for tests (written from the spec with struct, not the encoder)."""

from __future__ import annotations

import struct
from pathlib import Path

from vmig.testing import fixtures

S1_PATH = fixtures.sample_s1()
REPO = Path(__file__).resolve().parents[2]


def s1() -> bytes:
    return S1_PATH.read_bytes()


def header() -> bytes:
    return struct.pack(">II", 0x5145564D, 3)


def config(name: bytes = b"pc-i440fx-7.2", subsections: bytes = b"") -> bytes:
    return b"\x07" + struct.pack(">I", len(name)) + name + subsections


def subsection(name: bytes, version: int, payload: bytes) -> bytes:
    return b"\x05" + bytes([len(name)]) + name + struct.pack(">I", version) + payload


def caps(*names: bytes) -> bytes:
    body = struct.pack(">I", len(names)) + b"".join(bytes([len(n)]) + n for n in names)
    return subsection(b"configuration/capabilities", 1, body)


def start(sid: int, idstr: bytes, inst: int = 0, ver: int = 4, typ: int = 1) -> bytes:
    return bytes([typ]) + struct.pack(">I", sid) + bytes([len(idstr)]) + idstr + struct.pack(">II", inst, ver)


def full(sid: int, idstr: bytes, inst: int = 0, ver: int = 1) -> bytes:
    return start(sid, idstr, inst, ver, typ=4)


def part(sid: int, typ: int = 2) -> bytes:
    return bytes([typ]) + struct.pack(">I", sid)


def footer(sid: int) -> bytes:
    return b"\x7e" + struct.pack(">I", sid)


def w(addr: int, flags: int) -> bytes:
    return struct.pack(">Q", addr | flags)


def counted(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def mem_size(blocks: list[tuple[bytes, int]], extra: dict | None = None) -> bytes:
    """MEM_SIZE record; extra maps idstr -> bytes appended after used_length."""
    total = sum(n for _, n in blocks)
    out = w(total, 0x04)
    for name, n in blocks:
        out += counted(name) + struct.pack(">Q", n) + (extra or {}).get(name, b"")
    return out


EOS = struct.pack(">Q", 0x10)


def zero(addr: int, block: bytes | None = None, fill: int = 0) -> bytes:
    if block is None:
        return w(addr, 0x22) + bytes([fill])
    return w(addr, 0x02) + counted(block) + bytes([fill])


def page(addr: int, data: bytes, block: bytes | None = None) -> bytes:
    assert len(data) == 4096
    if block is None:
        return w(addr, 0x28) + data
    return w(addr, 0x08) + counted(block) + data


def command(cmd: int, data: bytes = b"") -> bytes:
    return b"\x08" + struct.pack(">HH", cmd, len(data)) + data


def packaged(blob: bytes) -> bytes:
    return command(7, struct.pack(">I", len(blob))) + blob


def trailer(json_bytes: bytes) -> bytes:
    return b"\x06" + struct.pack(">I", len(json_bytes)) + json_bytes


def small_ram_stream(n_pages: int = 6, with_footer: bool = True) -> bytes:
    """header, config, START ram (2 blocks), PART with ZERO/PAGE records, END, EOF. No FULL."""
    ft = footer if with_footer else (lambda sid: b"")
    blocks = [(b"pc.ram", 1 << 20), (b"pc.bios", 1 << 16)]
    out = header() + config()
    out += start(2, b"ram") + mem_size(blocks) + EOS + ft(2)
    body = zero(0, b"pc.ram") + zero(0x1000) + zero(0x2000)
    for i in range(n_pages):
        body += page((3 + i) * 0x1000, bytes([i]) * 4096, b"pc.ram" if i == 0 else None)
    body += page(0, b"\xab" * 4096, b"pc.bios") + zero(0x1000)
    out += part(2) + body + EOS + ft(2)
    out += part(2, typ=3) + zero(0x5000, b"pc.ram") + EOS + ft(2)
    return out + b"\x00"


def s1_small() -> bytes:
    """s1.bin with the big RAM PART cut down to 20 ZERO records + the ROM page records.

    Spliced at record boundaries named by the spec: 0xe3 (first record, with idstr), 0xe3 + 9*20
    (a ZERO|CONTINUE record boundary: 16-byte first record + 9-byte CONTINUE records), 0x1200ea
    (first PAGE record, with idstr) .. 0x151598 (EOS). Everything else is byte-identical.
    """
    d = s1()
    head = d[:0xE3 + 16 + 9 * 19]
    return head + d[0x1200EA:]
