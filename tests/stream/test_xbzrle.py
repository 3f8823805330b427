"""XBZRLE: QEMU's loader checks, encoder decisions, and byte-exact re-encoding of real records."""

from __future__ import annotations

import numpy as np
import pytest
import streamwalk
from hypothesis import given, settings
from hypothesis import strategies as st

from vmig.stream import xbzrle
from vmig.stream.ram import PAGE, XBZRLE, ZERO

PS = 4096


def test_uleb128_small_is_two_bytes_at_most() -> None:
    assert xbzrle.uleb128_encode_small(0) == b"\x00"
    assert xbzrle.uleb128_encode_small(0x7F) == b"\x7f"
    assert xbzrle.uleb128_encode_small(0x80) == b"\x80\x01"
    assert xbzrle.uleb128_encode_small(4096) == b"\x80\x20"
    with pytest.raises(ValueError):
        xbzrle.uleb128_encode_small(0x4000)


def test_encode_omits_final_zero_run_and_uses_maximal_runs() -> None:
    old = bytes(PS)
    new = bytearray(old)
    new[5] = 1
    new[100:110] = b"abcdefghij"
    # zrun 5, nzrun 1 "\x01", zrun 94 (0x5e), nzrun 10 + data; the trailing unchanged run is omitted
    assert xbzrle.encode(old, bytes(new)) == b"\x05\x01\x01\x5e\x0aabcdefghij"


def test_encode_no_change_and_overflow() -> None:
    page = bytes(range(256)) * 16
    assert xbzrle.encode(page, page) == xbzrle.XBZRLE_NO_CHANGE
    flipped = bytes(b ^ 0xFF for b in page)
    # zrun 0 (2 bytes counted before the check) + 4096 bytes > 4096: QEMU sends a normal page
    assert xbzrle.encode(page, flipped) == xbzrle.XBZRLE_OVERFLOW


def test_encode_first_byte_changed_starts_with_zero_zrun() -> None:
    old = bytes(PS)
    new = b"\x07" + bytes(PS - 1)
    assert xbzrle.encode(old, new) == b"\x00\x01\x07"


@pytest.mark.parametrize(
    "delta, why",
    [
        (b"\x05\x00", "zero nzrun"),
        (b"\x05\x01\x01\x00\x01\x02", "zero zrun after the first pair"),
        (b"\x05", "ends inside a count"),
        (b"\x80\x80\x01\x01\x01", "three-byte ULEB128"),
        (b"\x05\x05\x01\x02", "run beyond the payload"),
        (b"\x80\x20\x01\x01", "zrun to the end then a run: beyond the page"),
        (b"\xff\x1f\x05abcde", "run crosses the end of the page"),
    ],
)
def test_apply_rejects_what_qemu_rejects(delta: bytes, why: str) -> None:
    page = bytearray(PS)
    with pytest.raises(xbzrle.XbzrleError) as e:
        xbzrle.apply(delta, page, offset=1000)
    assert e.value.offset is not None and e.value.offset >= 1000, why


def test_apply_writes_only_the_runs() -> None:
    page = bytearray(b"\xaa" * PS)
    end = xbzrle.apply(b"\x02\x03xyz", page)
    assert end == 5
    assert bytes(page[:6]) == b"\xaa\xaaxyz\xaa"


pages = st.binary(min_size=PS, max_size=PS)


@st.composite
def page_pairs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    old = draw(pages) if draw(st.booleans()) else bytes(PS)
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 40))):
        start = draw(st.integers(0, PS - 1))
        length = draw(st.integers(1, 300))
        fill = draw(st.binary(min_size=1, max_size=1))
        new[start : start + length] = fill * len(new[start : start + length])
    return old, bytes(new)


def _reference_encode(old: bytes, new: bytes, dlen: int = PS) -> bytes | int:
    """A byte-at-a-time transcription of QEMU's encoder loop (its word-at-a-time scans only
    speed up the same byte comparisons), independent of the numpy implementation."""
    slen = len(new)
    out = bytearray()
    i = 0
    zrun = 0
    while i < slen:
        if len(out) + 2 > dlen:
            return -1
        while i < slen and old[i] == new[i]:
            zrun += 1
            i += 1
        if zrun == slen:
            return 0
        if i == slen:
            return bytes(out)
        out += xbzrle.uleb128_encode_small(zrun)
        zrun = 0
        start = i
        if len(out) + 2 > dlen:
            return -1
        while i < slen and old[i] != new[i]:
            i += 1
        out += xbzrle.uleb128_encode_small(i - start)
        if len(out) + (i - start) > dlen:
            return -1
        out += new[start:i]
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(page_pairs())
def test_encode_matches_reference_and_roundtrips(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    enc = xbzrle.encode(old, new)
    assert enc == _reference_encode(old, new)
    if enc == xbzrle.XBZRLE_NO_CHANGE:
        assert old == new
    elif isinstance(enc, bytes):
        assert len(enc) <= PS
        assert xbzrle.decode(enc, old) == new


def _replay(buf: bytes):
    """Yield (type, previous content, new content, payload) per page record, as the destination
    applies them."""
    content: dict[tuple[int, int], bytes] = {}
    for ev in streamwalk.ram_events(buf):
        if type(ev).__name__ != "RamRecords":
            continue
        b = ev.batch
        types = b.types()
        for i in np.flatnonzero(np.isin(types, [ZERO, PAGE, XBZRLE])).tolist():
            key = (int(b.block[i]), int(b.addr[i]))
            prev = content.get(key, bytes(PS))
            page = bytearray(prev)
            streamwalk.apply_page_record(int(b.flags[i]), b.data(i), page, offset=int(b.data_offset[i]))
            content[key] = bytes(page)
            yield int(types[i]), prev, bytes(page), bytes(b.data(i))


def test_real_xbzrle_records_decode_and_reencode_byte_exact(xbzrle_capture) -> None:
    buf, info = xbzrle_capture
    n_x = n_overflow = 0
    for typ, prev, new, payload in _replay(buf):
        if typ == XBZRLE:
            n_x += 1
            assert xbzrle.encode(prev, new) == payload
        elif typ == PAGE and prev != bytes(PS) and xbzrle.encode(prev, new) == xbzrle.XBZRLE_OVERFLOW:
            n_overflow += 1
    assert n_x >= 300, "the capture must contain XBZRLE records"
    assert n_overflow > 0, "the guest rewrites a whole page: QEMU must have fallen back to PAGE"
    assert info["xbzrle-cache"]["overflow"] > 0
