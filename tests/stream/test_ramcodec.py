"""Compressed pages (compress capability, QEMU 7.2): inflate as the loader does, re-deflate
byte-exact, and the loader's rejections."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import streamwalk
from hypothesis import given, settings
from hypothesis import strategies as st

from vmig.stream import ramcodec
from vmig.stream.ram import COMPRESS, PAGE, XBZRLE, ZERO, build_records

PS = 4096


def test_inflate_short_stream_keeps_the_rest_of_the_page() -> None:
    page = bytearray(b"\xaa" * PS)
    n = ramcodec.inflate_into(zlib.compress(b"hello"), page)
    assert n == 5 and bytes(page[:6]) == b"hello\xaa"


@pytest.mark.parametrize(
    "data, why",
    [
        (zlib.compress(bytes(PS + 1)), "inflates beyond the page"),
        (zlib.compress(bytes(100))[:-3], "incomplete stream"),
        (b"not zlib at all", "not zlib"),
        (bytes(ramcodec.compress_bound(PS) + 1), "longer than compressBound"),
    ],
)
def test_inflate_rejects(data: bytes, why: str) -> None:
    with pytest.raises(ramcodec.CompressedPageError) as e:
        ramcodec.inflate_into(data, bytearray(PS), offset=77)
    assert e.value.offset == 77, why


def _check_compressed(buf: bytes, info: dict) -> None:
    content: dict[tuple[int, int], bytes] = {}
    n = 0
    for ev in streamwalk.ram_events(buf):
        if type(ev).__name__ != "RamRecords":
            continue
        b = ev.batch
        types = b.types()
        for i in np.flatnonzero(np.isin(types, [ZERO, PAGE, COMPRESS])).tolist():
            key = (int(b.block[i]), int(b.addr[i]))
            page = bytearray(content.get(key, bytes(PS)))
            streamwalk.apply_page_record(int(b.flags[i]), b.data(i), page, offset=int(b.data_offset[i]))
            content[key] = bytes(page)
            if types[i] == COMPRESS:
                n += 1
                # compress-level 1 in the capture; zlib's output is deterministic
                assert ramcodec.deflate_page(page, level=1) == bytes(b.data(i))
                assert not b.has_idstr[i], "compressed pages always carry CONTINUE in 7.2"
    assert n > 50
    assert info["compression"]["pages"] > 0


def test_real_compressed_pages_inflate_and_redeflate_byte_exact(compress_capture) -> None:
    _check_compressed(*compress_capture)


@pytest.mark.qemu
def test_live_compressed_capture(live_compress_capture) -> None:
    _check_compressed(*live_compress_capture)


@pytest.mark.parametrize("capture", ["xbzrle_capture", "compress_capture"])
def test_apply_batch_equals_record_at_a_time(capture: str, request) -> None:
    """The batch applier (the engine destination's and extract's) leaves every page as the
    record-at-a-time loader does, XBZRLE and zlib pages included."""
    buf, _ = request.getfixturevalue(capture)
    target = ramcodec.BlockBuffers(PS)
    content: dict[tuple[str, int], bytes] = {}
    applied = 0
    for ev in streamwalk.ram_events(buf):
        if type(ev).__name__ != "RamRecords":
            continue
        b = ev.batch
        for blk in b.mem_size or ():
            target.add(blk.idstr, blk.used_length)
        applied += ramcodec.apply_batch(b, target)
        streamwalk.apply_batch_records(b, content, PS)
    assert applied >= len(content) > 100
    for (idstr, addr), page in content.items():
        assert target.images[idstr][addr : addr + PS].tobytes() == page, (idstr, addr)
        assert target.received[idstr][addr // PS]
    for idstr, img in target.images.items():  # pages no record named stay zero
        named = np.zeros(len(target.received[idstr]), dtype=bool)
        named[[a // PS for (i, a) in content if i == idstr]] = True
        assert not img[: len(named) * PS].reshape(-1, PS)[~named[: len(img) // PS]].any()


@pytest.mark.parametrize("capture", ["xbzrle_capture", "compress_capture"])
def test_build_records_rewrites_xbzrle_and_zlib_batches(capture: str, request) -> None:
    """The record writer rebuilds every batch of a real XBZRLE / compressed capture from its
    columns (data headers ``01 be16`` and ``be32`` included), byte for byte."""
    buf, _ = request.getfixturevalue(capture)
    kinds = set()
    for ev in streamwalk.ram_events(buf):
        if type(ev).__name__ == "RamRecords":
            kinds.update(ev.batch.types().tolist())
            assert build_records(ev.batch.replace()) == bytes(ev.batch.raw)
    assert kinds & {XBZRLE, COMPRESS}


# ------------------------------------------------- generated layouts: any order, repeats
_BLOCKS = (("pc.ram", 64 * PS), ("vga.vram", 16 * PS))


def _section(records: list[tuple[int, int, bool, int]]) -> bytes:
    """MEM_SIZE, then ZERO/PAGE records ``(block, page, is_page, byte)`` (idstr on a block
    change, CONTINUE otherwise), then EOS."""
    from vmig.stream.ram import CONT, EOS, RamBlock, mem_size_record

    out = bytearray(mem_size_record([RamBlock(n, ln) for n, ln in _BLOCKS]))
    last = -1
    for blk, page, is_page, byte in records:
        flags = PAGE if is_page else ZERO
        if blk == last:
            out += ((page * PS) | flags | CONT).to_bytes(8, "big")
        else:
            name = _BLOCKS[blk][0].encode()
            out += ((page * PS) | flags).to_bytes(8, "big") + bytes([len(name)]) + name
            last = blk
        out += bytes([byte]) * PS if is_page else bytes([byte])
    return bytes(out + EOS.to_bytes(8, "big"))


@settings(max_examples=150, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 15), st.booleans(),
                                  st.sampled_from([0, 0, 0, 7, 0xFF])), max_size=60),
       repeat=st.booleans())
def test_apply_batch_any_order_equals_record_at_a_time(records, repeat, tmp_path_factory) -> None:
    """Batches of ZERO/PAGE records in any address order, with and without a page named twice
    (the applier then follows record order), leave every page as the record-at-a-time loader
    does, in memory (the engine's BlockBuffers) and in files (extract's BlockImages)."""
    from vmig.analysis.extract import BlockImages
    from vmig.stream.ram import RamState, walk_scalar

    if repeat and records:
        records = records + records[: len(records) // 2 + 1]  # the same pages again, other bytes
        records[-1] = (*records[-1][:3], 0x5A)
    batches = walk_scalar(_section(records), RamState(page_size=PS))
    mem = ramcodec.BlockBuffers(PS)
    out = tmp_path_factory.mktemp("img")
    files = BlockImages(str(out))
    content: dict[tuple[str, int], bytes] = {}
    for b in batches:
        for blk in b.mem_size or ():
            mem.add(blk.idstr, blk.used_length)
        ramcodec.apply_batch(b, mem)
        files.add_batch(b)
        streamwalk.apply_batch_records(b, content, PS)
    files.drain()
    for idstr, length in _BLOCKS:
        want = bytearray(length)
        for (name, addr), page in content.items():
            if name == idstr:
                want[addr : addr + PS] = page
        assert mem.images[idstr].tobytes() == bytes(want), idstr
        blk = files.blocks[idstr]
        assert os.pread(files.fd(blk), length + 1, 0) == bytes(want), idstr
    files.close()
