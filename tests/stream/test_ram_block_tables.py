"""A MEM_SIZE record always starts its RAM batch, so every record of a batch indexes the batch's
one block table (a MEM_SIZE after page records in one section once left those records pointing
past the new table: IndexError in the destination); a claimed block no memory can hold is a
RamError, not a MemoryError."""

from __future__ import annotations

import pytest
from streambuild import EOS, config, footer, header, mem_size, part, start, w, zero

from vmig.errors import RamError
from vmig.io.decoding import decode_bytes
from vmig.migration.destination import Destination
from vmig.stream.events import RamRecords
from vmig.stream.ram import MEM_SIZE
from vmig.stream.ramcodec import BlockBuffers

BLOCKS = [(b"pc.ram", 1 << 20), (b"pc.bios", 1 << 16)]


def _stream(second_list: list[tuple[bytes, int]]) -> bytes:
    out = header() + config()
    out += start(2, b"ram") + mem_size(BLOCKS) + EOS + footer(2)
    # records of the first table, then a MEM_SIZE with another table, then records of it
    body = zero(0x1000, b"pc.bios", fill=7) + mem_size(second_list)
    if second_list:
        body += zero(0x2000, second_list[0][0], fill=9)
    out += part(2) + body + EOS + footer(2)
    return out + b"\x00"


@pytest.mark.parametrize("second", [[], [(b"pc.ram", 1 << 20)]])
def test_a_mem_size_record_starts_a_new_batch(second) -> None:
    events = decode_bytes(_stream(second))
    batches = [ev.batch for ev in events if isinstance(ev, RamRecords)]
    for b in batches:
        assert all(0 <= k < len(b.blocks) for k in b.block.tolist() if k >= 0)
        types = [f & ~0x20 for f in b.flags.tolist()]
        assert MEM_SIZE not in types[1:], types  # a MEM_SIZE record is first or absent
    assert sum(MEM_SIZE in [f & ~0x20 for f in b.flags.tolist()] for b in batches) == 2
    dest = Destination(keep_ram=True).load(events)
    assert dest.images["pc.bios"][0x1000:0x2000].tolist() == [7] * 0x1000
    if second:
        assert dest.images["pc.ram"][0x2000:0x3000].tolist() == [9] * 0x1000


def test_a_block_no_memory_can_hold_is_a_ram_error() -> None:
    buffers = BlockBuffers(4096)
    with pytest.raises(RamError, match="cannot hold RAMBlock 'huge'"):
        buffers.add("huge", 1 << 63)
    huge = header() + config() + start(2, b"ram") + w(1 << 62, 0x04)
    huge += bytes([6]) + b"pc.ram" + (1 << 62).to_bytes(8, "big") + EOS + footer(2) + b"\x00"
    with pytest.raises(RamError, match="cannot hold RAMBlock 'pc.ram' of 0x4000000000000000") as e:
        Destination().load(decode_bytes(huge))
    assert "\n" not in e.value.one_line()
