"""A discard on the destination (POSTCOPY_RAM_DISCARD, virtio-mem post_load) costs what arrived
in the range: a 1 GiB block of which one page arrived is discarded without committing the
block's memory, and the page that arrived reads as zero afterwards."""

from __future__ import annotations

import os
import struct

from streambuild import EOS, command, config, counted, footer, header, mem_size, page, part, start

from vmig.io.decoding import decode_bytes
from vmig.migration.destination import Destination

GiB = 1 << 30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_discard_of_a_large_range_touches_only_what_arrived() -> None:
    addr = 0x1234 * 4096
    stream = header() + config()
    stream += start(2, b"ram") + mem_size([(b"pc.ram", GiB)]) + EOS + footer(2)
    stream += part(2) + page(addr, b"\x5a" * 4096, b"pc.ram") + EOS + footer(2)
    discard = b"\x00" + counted(b"pc.ram") + b"\x00" + struct.pack(">QQ", 0, GiB)
    stream += command(6, discard) + b"\x00"
    events = decode_bytes(stream)
    cut = next(i for i, ev in enumerate(events) if getattr(ev, "cmd", None) == 6)
    dest = Destination()
    before = _rss()
    dest.load(events[:cut])
    img = dest.images["pc.ram"]
    assert img[addr:addr + 4096].tobytes() == b"\x5a" * 4096 and dest.received["pc.ram"].sum() == 1
    dest.load(events[cut:])
    assert len(img) == GiB and not img[addr:addr + 4096].any()
    assert not dest.received["pc.ram"].any()
    # zeroing the whole GiB would have committed it; only the page that arrived was touched
    assert _rss() - before < 64 << 20
