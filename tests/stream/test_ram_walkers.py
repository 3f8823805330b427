"""Every RAM walker gives the reference walker's batches and errors.

The fast walkers (numpy galloping runs; the compiled walker when built — it must be built under
CI=true) are compared with the scalar reference walker on generated layouts cut into random
chunks, on corrupted layouts (same error, same message, same offset), and on every real capture
of fixtures/ and tests/data/ram fed through ``StreamDecoder.receive_data`` in random pieces.
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from pathlib import Path

import lz4.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmig.errors import VmigError
from vmig.stream import RamRecords, StreamEnd, decode, find_trailer
from vmig.stream.decoder import NEED_DATA, StreamDecoder
from vmig.stream.ram import RamBlock, RamState, RamWalker, compiled_walker_available, walk_scalar
from vmig.testing import fixtures as fx

RAM_DATA = Path(__file__).resolve().parents[1] / "data" / "ram"
PS = 4096
BLOCKS = [(b"pc.ram", 4096 * PS), (b"pc.bios", 64 * PS), (b"/rom@etc/acpi/tables", 32 * PS)]


@pytest.fixture(params=["numpy", "compiled"])
def compiled(request: pytest.FixtureRequest) -> bool:
    """The walker under test: False = numpy galloping runs, True = the compiled walker."""
    if request.param == "compiled":
        if not compiled_walker_available():
            if os.environ.get("CI") == "true":
                pytest.fail("the compiled RAM walker is not built (pip install . / setup.py build_ext --inplace)")
            pytest.skip("compiled RAM walker not built")
        return True
    return False


def test_compiled_walker_is_built_under_ci():
    if os.environ.get("CI") != "true":
        pytest.skip("only required under CI=true")
    assert compiled_walker_available()


def state() -> RamState:
    s = RamState()
    s.set_blocks([RamBlock(n.decode(), size) for n, size in BLOCKS])
    return s


def w(addr: int, flags: int) -> bytes:
    return struct.pack(">Q", addr | flags)


# a run: (kind, block index or None = CONTINUE, first page, length, fill byte)
KINDS = ["zero", "page", "xbzrle", "compress", "flush", "hook"]
run = st.tuples(
    st.sampled_from(KINDS),
    st.one_of(st.none(), st.none(), st.integers(0, len(BLOCKS) - 1)),
    st.integers(0, 63),
    st.one_of(st.integers(1, 3), st.integers(1, 40), st.integers(100, 400)),
    st.integers(0, 255),
)


def render(runs) -> bytes:
    """Records of ``runs`` (written from the format: be64 addr|flags, idstr, data) plus EOS."""
    out = bytearray()
    last = None
    for kind, blk, first, n, byte in runs:
        if kind in ("flush", "hook"):
            out += w(0, 0x200 if kind == "flush" else 0x80)
            continue
        if blk is None and last is None:
            blk = 0
        for i in range(n):
            b = blk if i == 0 else None
            name, size = BLOCKS[last if b is None else b]
            if b is not None:
                last = b
            addr = ((first + i) * PS) % size
            idstr = b"" if b is None else bytes([len(name)]) + name
            cont = 0x20 if b is None else 0
            if kind == "zero":
                out += w(addr, 0x02 | cont) + idstr + bytes([byte])
            elif kind == "page":
                out += w(addr, 0x08 | cont) + idstr + bytes([byte | 1]) * PS
            elif kind == "xbzrle":
                out += w(addr, 0x40 | cont) + idstr + b"\x01" + struct.pack(">H", 3) + b"\x00\x01" + bytes([byte])
            else:
                out += w(addr, 0x100 | cont) + idstr + struct.pack(">I", 5) + bytes([byte]) * 5
    return bytes(out + w(0, 0x10))


def walk_chunked(data: bytes, cuts: list[int], batch_bytes: int, compiled: bool, keep: bool = True):
    """Walk ``data`` with the bytes arriving up to each cut in turn (as a decoder feeds them)."""
    walker = RamWalker(state(), batch_bytes=batch_bytes, fast=True, compiled=compiled, keep_columns=keep)
    mv = memoryview(data)
    out = []
    walker.begin(0)
    ends = sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]
    for end in ends:
        while walker.advance(mv, 0, end, at_eof=end == len(data)):
            out.append(walker.finish(mv[walker.start:walker.pos]))
            if walker.eos:
                return out
            walker.begin(walker.pos)
    raise AssertionError("no EOS")


layouts = st.lists(run, min_size=0, max_size=25)
batch_sizes = st.sampled_from([64, 4096, 20000, 1 << 20, 1 << 23])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=layouts, batch_bytes=batch_sizes, cuts=st.lists(st.integers(0, 3_000_000), max_size=12))
def test_chunked_walk_equals_reference(compiled, runs, batch_bytes, cuts):
    data = render(runs)
    ref = walk_scalar(data, state(), batch_bytes=batch_bytes)
    got = walk_chunked(data, cuts, batch_bytes, compiled)
    assert got == ref
    assert b"".join(bytes(b.raw) for b in got) == data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=layouts, batch_bytes=batch_sizes, cuts=st.lists(st.integers(0, 3_000_000), max_size=6))
def test_batches_without_columns_build_the_same_columns(compiled, runs, batch_bytes, cuts):
    data = render(runs)
    ref = walk_scalar(data, state(), batch_bytes=batch_bytes)
    lazy = walk_chunked(data, cuts, batch_bytes, compiled, keep=False)
    assert [len(b) for b in lazy] == [len(b) for b in ref]
    # the per-flags counts a count-only walk keeps (read before any column is built)
    assert [b.flag_counts() for b in lazy] == [dict(Counter(b.flags.tolist())) for b in ref]
    assert lazy == ref  # equality reads every column: built on demand


def _outcome(fn):
    try:
        return "ok", fn()
    except VmigError as e:
        return "error", (type(e).__name__, e.one_line())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(run, min_size=1, max_size=12), batch_bytes=batch_sizes, at=st.integers(0, 10**9),
       value=st.integers(0, 255), cuts=st.lists(st.integers(0, 3_000_000), max_size=4))
def test_corrupted_walk_gives_the_reference_error(compiled, runs, batch_bytes, at, value, cuts):
    data = bytearray(render(runs))
    # corrupt a byte of a record word or of the byte after it, where framing lives
    data[at % len(data)] = value
    data = bytes(data)
    ref = _outcome(lambda: walk_scalar(data, state(), batch_bytes=batch_bytes))
    got = _outcome(lambda: walk_chunked(data, cuts, batch_bytes, compiled))
    if ref[0] == "ok" and got[0] == "ok":
        # both ended at an EOS (maybe an early one made by the corruption): same batches
        assert got[1] == ref[1]
    elif ref[0] == "error" and got[0] == "ok":
        # the reference walks to the end of the buffer; a walker that met EOS first stops there
        raise AssertionError((ref, got))
    else:
        assert got == ref


@pytest.mark.parametrize("trunc", [1, 5, 9, 100, 4100])
def test_truncated_input_same_error(compiled, trunc):
    data = render([("page", 0, 0, 5, 7), ("zero", None, 9, 20, 0)])[:-trunc]
    ref = _outcome(lambda: walk_scalar(data, state()))
    got = _outcome(lambda: walk_chunked(data, [len(data) // 2], 1 << 23, compiled))
    assert ref[0] == "error" and got == ref


# ---------------------------------------------------------------- real captures


def _captures() -> list[tuple[str, bytes, dict]]:
    out = []
    for name in fx.names():
        m = fx.manifest(name)
        if m.get("kind") == "return-path":
            continue
        kw = {}
        other = m.get("desc_from")
        data = fx.load(name)
        if other and find_trailer(data) is None:
            kw["description"] = find_trailer(fx.load(other))[1]
        out.append((name, data, kw))
    for p in sorted(RAM_DATA.glob("*.bin.lz4")):
        out.append((p.name[: -len(".bin.lz4")], lz4.frame.decompress(p.read_bytes()), {}))
    return out


CAPTURES = _captures()
assert len(CAPTURES) >= 12, [c[0] for c in CAPTURES]


def _decode_pieces(data: bytes, seed: int, **kw) -> list:
    """Decode with the input cut at random points and fed through receive_data."""
    if "description" not in kw:
        found = find_trailer(data)
        if found is not None:
            kw["description"] = found[1]
    dec = StreamDecoder(**kw)
    rnd = random.Random(seed)
    pos = 0
    events = []
    while pos < len(data):
        n = rnd.choice([1, 7, 100, 4096, 4105, 65536, 1 << 20])
        dec.receive_data(data[pos:pos + n])
        pos += n
        while (ev := dec.next_event()) is not NEED_DATA:
            events.append(ev)
    dec.receive_data(b"")
    while not events or not isinstance(events[-1], StreamEnd):
        ev = dec.next_event()
        assert ev is not NEED_DATA
        events.append(ev)
    return events


@pytest.mark.parametrize("name,data,kw", CAPTURES, ids=[c[0] for c in CAPTURES])
def test_capture_walkers_agree(compiled, name, data, kw):
    ref = decode(data, fast=False, batch_bytes=1 << 20, **kw)
    assert isinstance(ref[-1], StreamEnd) and ref[-1].offset == len(data)
    assert decode(data, fast=True, compiled=compiled, batch_bytes=1 << 20, **kw) == ref
    for seed in (1, 2):
        assert _decode_pieces(data, seed, fast=True, compiled=compiled, batch_bytes=1 << 20, **kw) == ref
    lazy = decode(data, fast=True, compiled=compiled, batch_bytes=1 << 20, ram_columns=False, **kw)
    counts = [ev.batch.flag_counts() for ev in lazy if isinstance(ev, RamRecords)]
    assert counts == [dict(Counter(ev.batch.flags.tolist())) for ev in ref if isinstance(ev, RamRecords)]
    assert lazy == ref


def test_captures_cover_the_record_kinds():
    """The captures compared above hold XBZRLE and compressed pages and several blocks."""
    from vmig.stream import RamRecords
    from vmig.stream.constants import RamFlag

    seen: set[int] = set()
    blocks = 0
    for _name, data, kw in CAPTURES:
        for ev in decode(data, fast=False, **kw):
            if isinstance(ev, RamRecords):
                seen.update(int(t) for t in set(ev.batch.types().tolist()))
                blocks = max(blocks, len(ev.batch.blocks))
    assert {int(RamFlag.XBZRLE), int(RamFlag.COMPRESS_PAGE), int(RamFlag.ZERO), int(RamFlag.PAGE)} <= seen
    assert blocks >= 5


def test_damaged_page_size_is_left_to_the_python_step(compiled):
    """A page size that is no power of two (a damaged description) gives the reference outcome."""
    data = render([("page", 0, 0, 3, 7), ("zero", None, 5, 4, 0)])

    def odd_state():
        s = state()
        s.page_size = 5096
        return s

    ref = _outcome(lambda: walk_scalar(data, odd_state()))
    got = _outcome(lambda: RamWalker(odd_state(), compiled=compiled).advance(memoryview(data), 0, len(data), True))
    assert ref[0] == got[0] == "error" and got == ref
