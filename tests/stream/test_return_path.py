"""The postcopy return path (spec stream-format §6.2, §6.4 point 13) on the real capture
``postcopy-rp`` and its main stream ``postcopy-main``; hand-built RECV_BITMAP / RESUME_ACK;
chunk independence, truncation and hostile lengths."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmig.errors import StreamError, TruncatedError, UsageError
from vmig.io.streams import iter_events
from vmig.stream import Command, RamRecords
from vmig.stream.constants import RP_RECV_BITMAP_ENDING, MigCmd, RpMsg
from vmig.stream.events import NEED_DATA
from vmig.stream.return_path import (
    ReturnPathDecoder,
    RpEnd,
    RpMessage,
    decode_rp,
    encode_rp,
    rp_message,
)
from vmig.testing import fixtures

RP = fixtures.load("postcopy-rp")
MAIN_MANIFEST = fixtures.manifest("postcopy-main")


def ref_walk(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Independent reference framing of a return path without RECV_BITMAP:
    (offset, type, len, payload) per message, with struct only."""
    out, p = [], 0
    while p < len(data):
        t, n = struct.unpack_from(">HH", data, p)
        out.append((p, t, n, data[p + 4:p + 4 + n]))
        p += 4 + n
    assert p == len(data)
    return out


@pytest.fixture(scope="module")
def main_facts():
    """PING values (top level and inside PACKAGED, in stream order), the RAM block list of the
    START section and the target page size from POSTCOPY_ADVISE, from the real main stream."""
    pings: list[int] = []
    blocks = None
    target_page = None
    for ev in iter_events(str(fixtures.path("postcopy-main")), schema_sets=True):
        if isinstance(ev, Command):
            for c in (ev, *ev.children):
                if isinstance(c, Command) and c.cmd == MigCmd.PING:
                    pings.append(struct.unpack(">I", c.data)[0])
                if isinstance(c, Command) and c.cmd == MigCmd.POSTCOPY_ADVISE:
                    target_page = struct.unpack(">QQ", c.data)[1]
        elif isinstance(ev, RamRecords) and blocks is None and ev.batch.mem_size:
            blocks = ev.batch.mem_size
    assert blocks and target_page
    return pings, blocks, target_page


def norm(evs) -> list:
    """Events with their args comparable (numpy bitmaps as bytes)."""
    out = []
    for e in evs:
        if isinstance(e, RpMessage):
            a = {k: (np.asarray(v).tobytes() if k == "bitmap" else v) for k, v in e.args.items()}
            out.append((e.offset, e.length, e.type, e.data, sorted(a.items())))
        else:
            out.append(e)
    return out


def all_events(data: bytes, cuts=(), require_shut: bool = True) -> list:
    dec = ReturnPathDecoder(require_shut=require_shut)
    evs = []
    prev = 0
    for c in [*sorted(cuts), len(data)]:
        if c > prev:  # b"" would mean end of input
            dec.receive_data(data[prev:c])
            prev = c
        evs.extend(dec.events())
    dec.receive_data(b"")
    evs.extend(dec.events())
    return evs


# ------------------------------------------------------------------ the real capture
def test_messages_tile_the_capture_and_match_the_reference_framing():
    msgs = decode_rp(RP)
    ref = ref_walk(RP)
    assert [(m.offset, int(m.type), len(m.data), m.data) for m in msgs] == ref
    pos = 0
    for m in msgs:
        assert m.offset == pos
        pos += m.length
    assert pos == len(RP) == fixtures.manifest("postcopy-rp")["stream_size"]
    evs = all_events(RP)
    assert evs[-1] == RpEnd(len(RP))


def test_pongs_answer_the_main_streams_pings(main_facts):
    pings, _, _ = main_facts
    assert pings == [1, 2, 3, 4]  # source order; 3 is inside the PACKAGED blob (§6.4)
    pongs = [m.args["value"] for m in decode_rp(RP) if m.type == RpMsg.PONG]
    assert pongs == [1, 2, 4, 3]  # spec §6.4 point 13: PONG(3) comes when the package is loaded
    assert sorted(pongs) == sorted(pings)


def test_shut_zero_is_last():
    msgs = decode_rp(RP)
    assert msgs[-1].type == RpMsg.SHUT and msgs[-1].args == {"status": 0}
    assert [m.type for m in msgs].count(RpMsg.SHUT) == 1


def test_page_requests_match_query_migrate_and_lie_in_ram_blocks(main_facts):
    _, blocks, target_page = main_facts
    msgs = decode_rp(RP)
    reqs = [m for m in msgs if m.type in (RpMsg.REQ_PAGES, RpMsg.REQ_PAGES_ID)]
    assert len(reqs) == MAIN_MANIFEST["query-migrate"]["ram"]["postcopy-requests"]
    by_name = {b.idstr: b for b in blocks}
    last_id = None
    for m in reqs:
        start, n = struct.unpack_from(">QI", m.data)
        assert (m.args["start"], m.args["len"]) == (start, n)
        if m.type == RpMsg.REQ_PAGES_ID:
            last_id = m.data[13:13 + m.data[12]].decode()
        assert m.args["idstr"] == last_id  # REQ_PAGES: the block of the last REQ_PAGES_ID
        blk = by_name[m.args["idstr"]]
        page = blk.page_size or target_page
        assert start % page == 0 and n == page  # one host page per request (spec §6.2)
        assert start + n <= blk.used_length
    assert {m.args["idstr"] for m in reqs} <= set(by_name)


def test_encode_decode_is_byte_exact():
    assert encode_rp(decode_rp(RP)) == RP
    assert encode_rp(all_events(RP)) == RP


def test_every_strict_prefix_is_truncated():
    msgs = decode_rp(RP)
    for n in range(len(RP)):
        with pytest.raises(TruncatedError) as ei:
            decode_rp(RP[:n])
        # points at the message the input ends in (at a boundary: the missing next one)
        assert ei.value.offset == [m.offset for m in msgs if m.offset <= n][-1]
        if n in {m.offset for m in msgs}:
            assert ei.value.expected == "a SHUT message"
            # a capture cut at a message boundary is accepted when SHUT is not required
            part = decode_rp(RP[:n], require_shut=False)
            assert norm(part) == norm([m for m in msgs if m.offset < n])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(RP)), max_size=20))
def test_chunk_splitting_gives_the_same_events(cuts):
    assert norm(all_events(RP, cuts)) == norm(all_events(RP))


def test_one_byte_at_a_time_needs_data_until_a_message_is_complete():
    dec = ReturnPathDecoder()
    for i in range(7):
        dec.receive_data(RP[i:i + 1])
        assert dec.next_event() is NEED_DATA
    dec.receive_data(RP[7:8])
    ev = dec.next_event()
    assert isinstance(ev, RpMessage) and ev.args == {"value": 1} and ev.length == 8


# ------------------------------------------------------------------ hand-built messages
def bitmap_bytes(idstr: bytes, words: list[int], end: int = RP_RECV_BITMAP_ENDING) -> bytes:
    msg = struct.pack(">HHB", 5, 1 + len(idstr), len(idstr)) + idstr
    raw = b"".join(struct.pack("<Q", w) for w in words)
    return msg + struct.pack(">Q", len(raw)) + raw + struct.pack(">Q", end)


def test_recv_bitmap_and_resume_ack_round_trip():
    bm = bitmap_bytes(b"pc.ram", [0b100011, (1 << 63) | 1])
    ack = struct.pack(">HHI", 6, 4, 1)
    shut = struct.pack(">HHI", 1, 4, 3)
    data = bm + ack + struct.pack(">HH", 7, 0) + shut
    evs = all_events(data)
    m, a, sw, sh, end = evs
    assert m.type == RpMsg.RECV_BITMAP and m.offset == 0 and m.length == len(bm)
    assert m.data == b"\x06pc.ram"
    assert m.args["idstr"] == "pc.ram" and m.args["size"] == 16
    assert m.args["bitmap"].dtype == bool and m.args["bitmap"].size == 128
    assert np.flatnonzero(m.args["bitmap"]).tolist() == [0, 1, 5, 64, 127]
    assert a.type == RpMsg.RESUME_ACK and a.args == {"value": 1} and a.offset == len(bm)
    assert sw.type == RpMsg.SWITCHOVER_ACK and sw.length == 4 and sw.args == {}
    assert sh.type == RpMsg.SHUT and sh.args == {"status": 3}
    assert end == RpEnd(len(data))
    assert encode_rp(evs) == data
    # built from values, the same bytes
    bits = np.zeros(128, bool)
    bits[[0, 1, 5, 64, 127]] = True
    built = [rp_message(RpMsg.RECV_BITMAP, idstr="pc.ram", bitmap=bits),
             rp_message(RpMsg.RESUME_ACK, value=1), rp_message(RpMsg.SWITCHOVER_ACK),
             rp_message(RpMsg.SHUT, status=3)]
    assert encode_rp(built) == data
    assert [b.length for b in built] == [e.length for e in evs[:4]]
    for n in range(len(data)):
        with pytest.raises(TruncatedError):
            decode_rp(data[:n])


def test_empty_recv_bitmap():
    data = bitmap_bytes(b"x", [])
    (m,) = decode_rp(data, require_shut=False)
    assert m.args["size"] == 0 and m.args["bitmap"].size == 0 and m.length == 4 + 2 + 16
    assert encode_rp([m]) == data


# ------------------------------------------------------------------ hostile input
def error_of(data: bytes, eof: bool = True) -> StreamError:
    dec = ReturnPathDecoder(path="rp.bin")
    dec.receive_data(data)
    if eof:
        dec.receive_data(b"")
    with pytest.raises(StreamError) as ei:
        list(dec.events())
    # the decoder stays dead
    with pytest.raises(type(ei.value)):
        dec.next_event()
    assert ei.value.path == "rp.bin"
    return ei.value


PONG1 = struct.pack(">HHI", 2, 4, 1)


@pytest.mark.parametrize("typ", [0, 8, 0xFFFF])
def test_unknown_type(typ):
    e = error_of(PONG1 + struct.pack(">HHI", typ, 4, 0), eof=False)
    assert type(e) is StreamError and e.offset == 8 and e.found == typ


@pytest.mark.parametrize("typ,ln", [(1, 0), (2, 5), (4, 13), (4, 0xFFFF), (6, 8), (7, 1)])
def test_fixed_length_mismatch_is_rejected_before_waiting(typ, ln):
    # only the header is there and more input could come: the length alone is the error
    e = error_of(struct.pack(">HH", typ, ln), eof=False)
    assert type(e) is StreamError and e.offset == 2 and e.found == ln


@pytest.mark.parametrize("ln", [0, 12, 0xFFFF])
def test_req_pages_id_bad_lengths(ln):
    e = error_of(struct.pack(">HH", 3, ln), eof=False)
    assert type(e) is StreamError and e.offset == 2


def test_req_pages_id_idstr_length_disagrees():
    e = error_of(struct.pack(">HHQIB", 3, 13 + 3, 0, 4096, 4) + b"abc")
    assert type(e) is StreamError and e.expected == 17 and e.found == 16


def test_req_pages_without_req_pages_id():
    e = error_of(PONG1 + struct.pack(">HHQI", 4, 12, 0, 4096))
    assert type(e) is StreamError and e.offset == 8 and "REQ_PAGES_ID" in str(e)


def test_recv_bitmap_bad_end_marker():
    data = bitmap_bytes(b"pc.ram", [1], end=0x0123456789ABCDEE)
    e = error_of(data)
    assert type(e) is StreamError and e.offset == len(data) - 8
    assert e.expected == "0x0123456789abcdef" and e.found == "0x0123456789abcdee"


def test_recv_bitmap_size_not_multiple_of_8():
    data = struct.pack(">HHB", 5, 3, 2) + b"ab" + struct.pack(">Q", 12)
    e = error_of(data, eof=False)
    assert type(e) is StreamError and e.offset == 7 and e.found == 12


def test_recv_bitmap_idstr_length_disagrees():
    e = error_of(struct.pack(">HHB", 5, 4, 2) + b"abc")
    assert type(e) is StreamError and e.expected == 3 and e.found == 4


def test_recv_bitmap_huge_declared_size_is_not_allocated():
    head = struct.pack(">HHB", 5, 3, 2) + b"ab" + struct.pack(">Q", 1 << 62)
    dec = ReturnPathDecoder()
    dec.receive_data(head + b"\x00" * 64)
    assert dec.next_event() is NEED_DATA  # waits, allocates nothing for the declared size
    dec.receive_data(b"")
    with pytest.raises(TruncatedError) as ei:
        dec.next_event()
    assert ei.value.offset == 0 and ei.value.expected == f"{23 + (1 << 62)} bytes"


def test_resume_ack_must_be_one():
    e = error_of(struct.pack(">HHI", 6, 4, 2))
    assert type(e) is StreamError and e.expected == 1 and e.found == 2


def test_data_after_shut():
    e = error_of(struct.pack(">HHI", 1, 4, 0) + PONG1)
    assert type(e) is StreamError and e.offset == 8


def test_usage_errors():
    dec = ReturnPathDecoder(require_shut=False)
    dec.receive_data(b"")
    with pytest.raises(UsageError):
        dec.receive_data(b"x")
    assert dec.next_event() == RpEnd(0)
    with pytest.raises(UsageError):
        dec.next_event()
