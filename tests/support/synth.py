"""Hand-built RAM streams for the RAM tests (struct from the spec, not vmig's encoder)."""

from __future__ import annotations

import struct

PS = 4096
HEADER = struct.pack(">II", 0x5145564D, 3)


def config(name: bytes = b"pc-i440fx-7.2") -> bytes:
    return b"\x07" + struct.pack(">I", len(name)) + name


def w(addr: int, flags: int) -> bytes:
    return struct.pack(">Q", addr | flags)


def counted(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def mem_size(blocks: list[tuple[bytes, int]]) -> bytes:
    out = w(sum(n for _, n in blocks), 0x04)
    for name, n in blocks:
        out += counted(name) + struct.pack(">Q", n)
    return out


def rec(flags: int, addr: int, block: bytes | None, payload: bytes) -> bytes:
    """A page record; ``block`` None = CONTINUE."""
    if block is None:
        return w(addr, flags | 0x20) + payload
    return w(addr, flags) + counted(block) + payload


EOS = w(0, 0x10)


def stream(blocks: list[tuple[bytes, int]], records: bytes, *, end: bool = True) -> bytes:
    """header, config, START ram (block list), one PART with ``records`` + EOS, END, EOF."""
    out = HEADER + config()
    out += b"\x01" + struct.pack(">I", 2) + counted(b"ram") + struct.pack(">II", 0, 4)
    out += mem_size(blocks) + EOS + b"\x7e" + struct.pack(">I", 2)
    out += b"\x02" + struct.pack(">I", 2) + records + EOS + b"\x7e" + struct.pack(">I", 2)
    if end:
        out += b"\x03" + struct.pack(">I", 2) + EOS + b"\x7e" + struct.pack(">I", 2) + b"\x00"
    return out
