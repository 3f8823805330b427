"""Built-in layouts of the "block" and "dirty-bitmap" live sections (migration/block.c,
migration/block-dirty-bitmap.c load loops), written from QEMU's load code."""

from __future__ import annotations

import struct

import pytest
import streambuild as sb

from vmig.errors import StreamError
from vmig.stream import DeviceState, decode, encode
from vmig.stream.inbuf import NeedMoreInput
from vmig.stream.layout import measure_block, measure_dirty_bitmap

BLK = (struct.pack(">Q", (0 << 9) | 0x01) + sb.counted(b"drive0") + b"\xaa" * (1 << 20)
       + struct.pack(">Q", (2048 << 9) | 0x09) + sb.counted(b"drive0")
       + struct.pack(">Q", (50 << 9) | 0x04) + struct.pack(">Q", 0x02))
DBM_START = b"\x1c" + sb.counted(b"node0") + sb.counted(b"bm0") + struct.pack(">IB", 65536, 1) + b"\x01"
DBM_PART = (b"\x4c" + sb.counted(b"node0") + sb.counted(b"bm0") + struct.pack(">QI", 0, 128)
            + struct.pack(">Q", 16) + bytes(16) + b"\x42" + struct.pack(">QI", 128, 128) + b"\x20" + b"\x01")


def test_block_and_dirty_bitmap_sections_roundtrip():
    d = (sb.header() + sb.config() + sb.start(3, b"block", ver=1) + BLK + sb.footer(3)
         + sb.start(4, b"dirty-bitmap", ver=1) + DBM_START + sb.footer(4)
         + sb.part(4) + DBM_PART + sb.footer(4) + sb.part(3, typ=3) + struct.pack(">Q", 2) + sb.footer(3)
         + b"\x00")
    evs = decode(d)
    assert encode(evs) == d
    devs = [e for e in evs if isinstance(e, DeviceState)]
    assert [(e.idstr, e.length) for e in devs] == [
        ("block", len(BLK)), ("dirty-bitmap", len(DBM_START)), ("dirty-bitmap", len(DBM_PART)), ("block", 8)]


def test_measures_need_data_and_reject_garbage():
    with pytest.raises(NeedMoreInput):
        measure_block(memoryview(BLK[:100]), 1)
    with pytest.raises(NeedMoreInput):
        measure_dirty_bitmap(memoryview(DBM_PART[:-1]), 1)
    with pytest.raises(StreamError, match="unknown block migration flags"):
        measure_block(memoryview(struct.pack(">Q", 0x10)), 1)
    huge = b"\x40" + struct.pack(">QI", 0, 1) + struct.pack(">Q", 1 << 40)
    with pytest.raises(StreamError, match="too large"):
        measure_dirty_bitmap(memoryview(huge), 1)
