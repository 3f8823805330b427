"""Chunk-split invariance, truncation at every record boundary, corruption, hostile lengths."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import streambuild as sb
from hypothesis import given, settings
from hypothesis import strategies as st

from vmig.errors import BadMagicError, FooterMismatchError, StreamError, TruncatedError, VmigError
from vmig.io.streams import records
from vmig.stream import NEED_DATA, RamRecords, StreamDecoder, StreamEnd, decode, encode, find_trailer


def feed(data: bytes, cuts, **kw):
    dec = StreamDecoder(**kw)
    out = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if c <= prev or c > len(data):
            continue
        dec.receive_data(data[prev:c])
        prev = c
        while (ev := dec.next_event()) is not NEED_DATA:
            out.append(ev)
    dec.receive_data(b"")
    while True:
        ev = dec.next_event()
        assert ev is not NEED_DATA
        out.append(ev)
        if isinstance(ev, StreamEnd):
            return out


S1 = sb.s1()
S1_DESC = find_trailer(S1)[1]
S1_EVENTS = decode(S1)
SMALL = sb.small_ram_stream()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, len(S1)), max_size=25))
def test_s1_any_split_same_events(cuts):
    # streaming (no description up front): the trailer is found in the buffered tail
    assert feed(S1, cuts) == S1_EVENTS


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(SMALL)), max_size=60), st.sampled_from([64, 5000, 1 << 23]))
def test_small_stream_any_split_same_events_and_batches(cuts, batch_bytes):
    ref = decode(SMALL, batch_bytes=batch_bytes)
    got = feed(SMALL, cuts, batch_bytes=batch_bytes)
    assert got == ref
    assert encode(got) == SMALL


def test_byte_by_byte_small_stream():
    ref = decode(SMALL, batch_bytes=5000)
    assert feed(SMALL, range(len(SMALL)), batch_bytes=5000) == ref
    assert sum(isinstance(e, RamRecords) for e in ref) > 3  # several batches in the PART


def test_s1_small_batches_roundtrip_and_split():
    ref = decode(S1, batch_bytes=100_000)
    assert sum(isinstance(e, RamRecords) for e in ref) >= 14
    assert encode(ref) == S1
    assert feed(S1, range(0, len(S1), 77_777), batch_bytes=100_000) == ref


def _boundaries():
    cuts = set()
    for r in records(S1_EVENTS):
        for d in (-1, 0, 1):
            cuts.add(r.offset + d)
    rng = random.Random(1)
    part = [e for e in S1_EVENTS if isinstance(e, RamRecords)][1].batch
    for i in rng.sample(range(len(part)), 60):
        o = int(part.offset[i])
        cuts.update({o - 1, o, o + 1, o + 9})
    cuts.update(rng.sample(range(len(S1)), 40))
    return sorted(c for c in cuts if 0 <= c < len(S1))


VALID_PREFIXES = {0x15FA78}  # a stream may end right after EOF (no trailer)


@pytest.mark.parametrize("cut", _boundaries())
def test_every_strict_prefix_is_truncated(cut):
    prefix = S1[:cut]
    if cut in VALID_PREFIXES:
        evs = decode(prefix, description=S1_DESC)
        assert isinstance(evs[-1], StreamEnd) and evs[-1].offset == cut
        return
    with pytest.raises(TruncatedError) as ei:
        decode(prefix, description=S1_DESC)
    assert ei.value.offset is not None and ei.value.offset <= cut


@pytest.mark.parametrize("cut", [0, 3, 8, 20, 100, 0x1515B7 + 10, 0x15FA78 + 100])
def test_prefix_streaming_without_description(cut):
    with pytest.raises(VmigError):
        feed(S1[:cut], [cut // 2])


SMALL_S1 = sb.s1_small()


def _corrupt_positions():
    rng = random.Random(7)
    pos = set()
    evs = decode(SMALL_S1)
    for r in records(evs):
        pos.update(range(r.offset, min(r.offset + 24, len(SMALL_S1))))
    part = [e for e in evs if isinstance(e, RamRecords)][1].batch
    for o in part.offset[::3]:
        pos.update(range(int(o), int(o) + 10))
    pos.update(rng.sample(range(len(SMALL_S1)), 300))
    return sorted(pos)


def test_s1_small_is_valid():
    assert encode(decode(SMALL_S1)) == SMALL_S1


def test_single_byte_corruptions_raise_vmig_errors_only():
    rng = random.Random(3)
    n_err = 0
    positions = _corrupt_positions()
    trailer_at, desc = find_trailer(SMALL_S1)
    for p in positions:
        buf = bytearray(SMALL_S1)
        buf[p] ^= rng.choice([0x01, 0x80, 0xFF, 0x10, 0x7E])
        # the trailer is parsed once unless the corruption is inside it (JSON parsing is slow)
        kw = {} if p >= trailer_at else {"description": desc}
        try:
            evs = decode(bytes(buf), **kw)
        except VmigError:
            n_err += 1
            continue
        assert encode(evs) == bytes(buf)
    assert n_err > len(positions) // 4


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(SMALL_S1) - 1), st.integers(1, 255), st.booleans())
def test_hypothesis_corruption_streaming_or_mapped(pos, xor, streaming):
    buf = bytearray(SMALL_S1)
    buf[pos] ^= xor
    data = bytes(buf)
    try:
        evs = feed(data, [pos, len(data) // 2]) if streaming else decode(data)
    except VmigError:
        return
    assert encode(evs) == data


def test_bad_magic_and_obsolete_version():
    with pytest.raises(BadMagicError, match="not a QEMU migration stream"):
        decode(b"QEVX" + S1[4:100])
    with pytest.raises(BadMagicError, match="obsolete stream version 2"):
        decode(S1[:4] + struct.pack(">I", 2) + S1[8:])
    with pytest.raises(BadMagicError, match="unsupported stream version"):
        decode(S1[:4] + struct.pack(">I", 4) + S1[8:])


def test_footer_mismatch():
    data = bytearray(S1)
    data[0x1515E3:0x1515E7] = struct.pack(">I", 99)  # footer of "timer" (id 0)
    with pytest.raises(FooterMismatchError) as ei:
        decode(bytes(data))
    assert ei.value.section == "timer instance 0" and ei.value.found == 99 and ei.value.expected == 0


def test_hostile_packaged_length_is_truncation_not_allocation():
    data = sb.header() + sb.config() + sb.command(7, struct.pack(">I", 0xFFFFFFFF)) + b"\x00" * 10
    with pytest.raises(TruncatedError, match="PACKAGED blob of 4294967295 bytes"):
        decode(data)
    with pytest.raises(TruncatedError):
        feed(data, [3, 20])


def test_hostile_trailer_and_config_lengths():
    base = sb.header() + sb.config() + b"\x00"
    with pytest.raises(TruncatedError, match="VMDESCRIPTION trailer of 4294967295"):
        decode(base + b"\x06\xff\xff\xff\xff{}")
    with pytest.raises(TruncatedError):
        decode(sb.header() + b"\x07\xff\xff\xff\xf0abc")


def test_odd_idstr_bytes_roundtrip():
    idstr = bytes(range(0x80, 0x80 + 40)) + b"\x00\x01/\xff"
    payload = b"\x01\x02\x03\x04"
    data = sb.header() + sb.config() + sb.full(7, idstr) + payload + sb.footer(7) + b"\x00"

    def measure(view, version):
        if len(view) < 4:
            raise NeedMoreInput("short")
        return 4

    from vmig.stream.inbuf import NeedMoreInput
    from vmig.stream.layout import LayoutResolver

    table = {idstr.decode("latin-1").rsplit("/", 1)[-1]: measure}
    evs = decode(data, layout=LayoutResolver(layouts=table))
    assert encode(evs) == data
    assert evs[2].idstr == idstr.decode("latin-1")
    with pytest.raises(StreamError, match="no description"):
        decode(data, layout=LayoutResolver(layouts={}))


def test_unknown_record_type_and_stray_bytes():
    with pytest.raises(StreamError, match="unknown record type"):
        decode(sb.header() + sb.config() + b"\x09")
    with pytest.raises(StreamError, match="section footer outside a section"):
        decode(sb.header() + sb.config() + sb.footer(1))
    with pytest.raises(StreamError, match="never started"):
        decode(sb.header() + sb.config() + sb.part(5))
    with pytest.raises(StreamError, match="unexpected byte after the EOF"):
        decode(sb.header() + sb.config() + b"\x00\x01")
    with pytest.raises(StreamError, match="trailing data"):
        decode(sb.header() + b"\x00" + sb.trailer(b'{"devices": []}') + b"x")
    with pytest.raises(StreamError, match="not directly after the file header"):
        decode(sb.header() + sb.command(1) + sb.config())


def test_decoder_is_dead_after_error_and_rejects_data_after_eof():
    dec = StreamDecoder()
    dec.receive_data(b"XXXXXXXX")
    with pytest.raises(BadMagicError):
        dec.next_event()
    with pytest.raises(BadMagicError):
        dec.next_event()
    dec2 = StreamDecoder()
    dec2.receive_data(b"")
    from vmig.errors import UsageError

    with pytest.raises(UsageError):
        dec2.receive_data(b"x")


def test_no_footer_stream_roundtrip():
    data = sb.small_ram_stream(with_footer=False)
    evs = decode(data)
    assert encode(evs) == data
    ends = [e for e in evs if type(e).__name__ == "SectionEnd"]
    assert len(ends) == 3 and not any(e.footer for e in ends) and all(e.length == 0 for e in ends)


def test_mmap_like_zero_copy_payloads_are_views():
    evs = decode(memoryview(S1))
    dev = next(e for e in evs if type(e).__name__ == "DeviceState")
    assert isinstance(dev.payload, memoryview)
    evs2 = feed(S1, [1000])  # owned buffer: bytes
    dev2 = next(e for e in evs2 if type(e).__name__ == "DeviceState")
    assert isinstance(dev2.payload, bytes) and dev2 == dev
    assert np.array_equal(evs[6].batch.flags, evs2[6].batch.flags)


def test_streaming_buffer_stays_bounded_on_a_big_ram_section():
    n = 3000  # ~12 MiB of PAGE|CONTINUE records
    pg = bytes(range(256)) * 16
    body = bytearray(sb.page(0, pg, b"pc.ram"))
    for i in range(1, n):
        body += sb.page(i * 4096 % (1 << 20), pg)
    data = (sb.header() + sb.config() + sb.start(2, b"ram") + sb.mem_size([(b"pc.ram", 1 << 20)])
            + sb.EOS + sb.footer(2) + sb.part(2) + bytes(body) + sb.EOS + sb.footer(2) + b"\x00")
    batch, chunk = 1 << 20, 256 << 10
    dec = StreamDecoder(batch_bytes=batch)
    peak = 0
    out = []
    for i in range(0, len(data), chunk):
        dec.receive_data(data[i:i + chunk])
        peak = max(peak, len(dec._buf))
        out.extend(dec.events())
    dec.receive_data(b"")
    out.extend(dec.events())
    assert isinstance(out[-1], StreamEnd)
    assert peak <= batch + 2 * chunk + 4200
    sizes = [e.length for e in out if isinstance(e, RamRecords)][1:]
    assert len(sizes) >= 11 and all(batch <= s < batch + 4200 for s in sizes[:-1])
    assert encode(out) == data
