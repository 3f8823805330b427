"""RAM record framing: fast (numpy) vs scalar walker agreement, errors, MEM_SIZE variants."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streambuild import EOS, counted, mem_size, page, s1, w, zero

from vmig.errors import RamError, TruncatedError
from vmig.stream.ram import RamBlock, RamState, build_records, walk_fast, walk_scalar

BLOCKS = [(b"pc.ram", 64 * 4096), (b"pc.bios", 16 * 4096)]


def state_with_blocks() -> RamState:
    st_ = RamState()
    st_.set_blocks([RamBlock(n.decode(), size) for n, size in BLOCKS])
    return st_


# A record: (kind, block or None for CONTINUE, page index, byte)
record = st.tuples(
    st.sampled_from(["zero", "page", "xbzrle", "compress", "flush"]),
    st.sampled_from([None, None, None, b"pc.ram", b"pc.bios"]),
    st.integers(0, 15),
    st.integers(0, 255),
)


def render(recs) -> bytes:
    out = b""
    last = None
    for kind, blk, idx, byte in recs:
        if kind == "flush":
            out += w(0, 0x200)
            continue
        if blk is None and last is None:
            blk = b"pc.ram"
        if blk is not None:
            last = blk
        addr = idx * 4096
        name = b"" if blk is None else counted(blk)
        cont = 0x20 if blk is None else 0
        if kind == "zero":
            out += w(addr, 0x02 | cont) + name + bytes([byte])
        elif kind == "page":
            out += w(addr, 0x08 | cont) + name + bytes([byte]) * 4096
        elif kind == "xbzrle":
            out += w(addr, 0x40 | cont) + name + b"\x01" + struct.pack(">H", 3) + b"\x00\x01" + bytes([byte])
        elif kind == "compress":
            out += w(addr, 0x100 | cont) + name + struct.pack(">I", 5) + bytes([byte]) * 5
    return out + EOS


@settings(max_examples=60, deadline=None)
@given(st.lists(record, min_size=0, max_size=60), st.sampled_from([64, 4096, 20000, 1 << 23]))
def test_fast_and_scalar_agree(recs, batch_bytes):
    data = render(recs)
    a = walk_scalar(data, state_with_blocks(), base=100, batch_bytes=batch_bytes)
    b = walk_fast(data, state_with_blocks(), base=100, batch_bytes=batch_bytes)
    assert a == b
    assert sum(len(x.raw) for x in a) == len(data)
    assert b"".join(bytes(x.raw) for x in a) == data
    assert b"".join(build_records(x) for x in a) == data
    n = sum(len(x) for x in a)
    assert n == len(recs) + 1


@settings(max_examples=20, deadline=None)
@given(st.integers(5, 40), st.integers(0, 40), st.sampled_from([4096, 30000, 1 << 23]))
def test_long_continue_runs_use_bulk_and_agree(n_pages, n_zero, batch_bytes):
    data = page(0, b"\x11" * 4096, b"pc.ram")
    for i in range(1, n_pages):
        data += page(i * 4096, bytes([i]) * 4096)
    data += zero(0, b"pc.bios")
    for i in range(1, n_zero):
        data += zero(i * 4096 % (16 * 4096))
    data += EOS
    a = walk_scalar(data, state_with_blocks(), batch_bytes=batch_bytes)
    b = walk_fast(data, state_with_blocks(), batch_bytes=batch_bytes)
    assert a == b
    for x in b:
        assert x.nbytes >= batch_bytes or x is b[-1]


def test_s1_part_fast_equals_scalar():
    d = s1()
    st1, st2 = RamState(), RamState()
    walk_scalar(d[0x2B:0xD9], st1, base=0x2B)
    walk_scalar(d[0x2B:0xD9], st2, base=0x2B)
    for bb in (1 << 23, 100_000):
        a = walk_scalar(d[0xE3:0x1515A0], RamState(blocks=st1.blocks, _index=dict(st1._index)), base=0xE3,
                        batch_bytes=bb)
        b = walk_fast(d[0xE3:0x1515A0], RamState(blocks=st2.blocks, _index=dict(st2._index)), base=0xE3,
                      batch_bytes=bb)
        assert a == b
        assert sum(len(x) for x in a) == 131_203


def test_page_data_matrix():
    data = page(0, b"\x01" * 4096, b"pc.ram") + page(4096, b"\x02" * 4096) + zero(8192) + EOS
    (b,) = walk_fast(data, state_with_blocks())
    m = b.page_data()
    assert m.shape == (2, 4096) and (m[0] == 1).all() and (m[1] == 2).all()


@pytest.mark.parametrize(
    "data, message",
    [
        (w(0, 0x01) + EOS, "unknown RAM record flags 0x1"),
        (w(0, 0x0A) + EOS, "unknown RAM record flags 0xa"),
        (w(0, 0x02) + counted(b"nope") + b"\x00" + EOS, "unknown block 'nope'"),
        (w(0, 0x22) + b"\x00" + EOS, "CONTINUE record with no previous block"),
        (w(64 * 4096, 0x02) + counted(b"pc.ram") + b"\x00" + EOS, "beyond block 'pc.ram'"),
        (w(0, 0x40) + counted(b"pc.ram") + b"\x02\x00\x01\x00" + EOS, "bad XBZRLE encoding flag"),
        (w(0, 0x40) + counted(b"pc.ram") + b"\x01\x10\x01" + EOS, "XBZRLE length beyond"),
        (w(0, 0x100) + counted(b"pc.ram") + struct.pack(">I", 5000) + EOS, "beyond compressBound"),
    ],
)
def test_ram_errors(data, message):
    for walk in (walk_scalar, walk_fast):
        with pytest.raises(RamError, match=message) as ei:
            walk(data, state_with_blocks(), base=0x1000)
        assert ei.value.offset == 0x1000


def test_error_in_the_middle_of_a_bulk_run_has_its_offset():
    data = page(0, bytes(4096), b"pc.ram")
    for i in range(1, 10):
        data += page(i * 4096, bytes(4096))
    bad_at = len(data)
    data += page(64 * 4096, bytes(4096)) + EOS
    for walk in (walk_scalar, walk_fast):
        with pytest.raises(RamError, match="beyond block") as ei:
            walk(data, state_with_blocks())
        assert ei.value.offset == bad_at


def test_truncated_record():
    data = page(0, bytes(4096), b"pc.ram")[:-1]
    with pytest.raises(TruncatedError):
        walk_fast(data, state_with_blocks())


def test_mem_size_with_ignore_shared_and_postcopy_page_sizes():
    hp = 2 << 20
    extra = {b"mem": struct.pack(">Q", hp) + struct.pack(">Q", 0x100000000),
             b"pc.ram": struct.pack(">Q", 0)}
    blocks = [(b"mem", 4 << 20), (b"pc.ram", 1 << 20)]
    data = mem_size(blocks, extra) + EOS
    stt = RamState(ignore_shared=True, postcopy_page_sizes=hp | 4096)
    (b,) = walk_fast(data, stt)
    assert b.mem_size == (RamBlock("mem", 4 << 20, hp, 0x100000000), RamBlock("pc.ram", 1 << 20, None, 0))
    assert build_records(b) == data
    # postcopy without ignore-shared: the page-size field is sniffed per block
    extra = {b"mem": struct.pack(">Q", hp)}
    data = mem_size([(b"pc.ram", 1 << 20), (b"mem", 4 << 20)], extra) + EOS
    (b,) = walk_scalar(data, RamState(postcopy_page_sizes=hp | 4096))
    assert b.mem_size == (RamBlock("pc.ram", 1 << 20), RamBlock("mem", 4 << 20, hp))
    data = mem_size([(b"mem", 4 << 20), (b"pc.ram", 1 << 20)], extra) + EOS
    (b,) = walk_scalar(data, RamState(postcopy_page_sizes=hp | 4096))
    assert b.mem_size == (RamBlock("mem", 4 << 20, hp), RamBlock("pc.ram", 1 << 20))


def test_mem_size_total_mismatch():
    data = w(0x1000, 0x04) + counted(b"pc.ram") + struct.pack(">Q", 0x2000) + EOS
    with pytest.raises(RamError, match="exceeds the remaining total"):
        walk_scalar(data, RamState())


def test_replace_makes_non_verbatim_batch_encoded_from_columns():
    data = zero(0, b"pc.ram") + zero(4096) + EOS
    (b,) = walk_fast(data, state_with_blocks())
    b2 = b.replace(addr=np.array([8192, 4096 * 3, 0], dtype=np.uint64))
    assert not b2.verbatim
    assert build_records(b2) == zero(8192, b"pc.ram") + zero(4096 * 3) + EOS
