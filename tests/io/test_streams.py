"""vmig.io.streams: sources (mmap, .lz4, stdin), --desc-from loading, path in errors, records()."""

from __future__ import annotations

import io
import sys

import lz4.frame
import pytest
import streambuild as sb

from vmig.errors import StreamError, TruncatedError, UsageError
from vmig.io import iter_events, load_description, open_source, records
from vmig.io.streams import read_all
from vmig.stream import DeviceState, decode

S1 = sb.s1()


def test_open_source_kinds(tmp_path, monkeypatch):
    with open_source(str(sb.S1_PATH)) as src:
        assert src.mapped is not None and len(src.mapped) == len(S1)
    lz = tmp_path / "x.bin.lz4"
    lz.write_bytes(lz4.frame.compress(S1))
    with open_source(str(lz)) as src:
        chunks = list(src.chunks())
        assert src.mapped is None and len(chunks) > 1 and b"".join(chunks) == S1
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(S1[:5000])))
    with open_source("-") as src:
        assert src.name == "<stdin>" and b"".join(src.chunks()) == S1[:5000]
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedError, match="file header") as ei:
        list(iter_events(str(empty)))
    assert ei.value.path == str(empty)
    with pytest.raises(UsageError, match="cannot open"):
        with open_source(str(tmp_path / "missing.bin")):
            pass
    assert read_all(str(lz)) == S1


def test_iter_events_mapped_equals_decode_and_errors_carry_path(tmp_path):
    assert list(iter_events(str(sb.S1_PATH))) == decode(S1)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(S1[:0x100])
    with pytest.raises(StreamError) as ei:
        list(iter_events(str(bad)))
    assert ei.value.path == str(bad) and str(bad) in ei.value.one_line()
    junk = tmp_path / "junk.bin.lz4"
    junk.write_bytes(b"not an lz4 frame at all")
    with pytest.raises(StreamError) as ei:
        list(iter_events(str(junk)))
    assert ei.value.path == str(junk)


def test_load_description_from_stream_lz4_and_json(tmp_path):
    d1 = load_description(str(sb.S1_PATH))
    lz = tmp_path / "x.bin.lz4"
    lz.write_bytes(lz4.frame.compress(S1))
    d2 = load_description(str(lz))
    js = tmp_path / "desc.json"
    js.write_bytes(S1[0x15FA78 + 5:])
    d3 = load_description(str(js))
    assert d1.raw == d2.raw == d3.raw == S1[0x15FA78 + 5:]
    nodesc = tmp_path / "n.bin"
    nodesc.write_bytes(S1[:0x15FA78])
    with pytest.raises(UsageError, match="no vmdesc trailer"):
        load_description(str(nodesc))
    evs = list(iter_events(str(nodesc), desc_from=str(lz)))
    assert sum(isinstance(e, DeviceState) for e in evs) == 31


def test_records_without_events_keeps_counts():
    rows = list(records(decode(S1), keep_events=False))
    assert all(r.events == () for r in rows)
    assert [r.ram_records for r in rows[2:5]] == [2, 131_203, 1]
    rows2 = list(records(decode(S1)))
    assert [len(r.events) for r in rows2[2:5]] == [3, 3, 3]
    assert [r.to_json() for r in rows2] == [r.to_json() for r in rows]


def test_lz4_is_sniffed_on_stdin_and_unsuffixed_files(tmp_path, monkeypatch):
    comp = lz4.frame.compress(S1)
    plain_name = tmp_path / "compressed-without-suffix.bin"
    plain_name.write_bytes(comp)
    assert list(iter_events(str(plain_name))) == decode(S1)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(comp)))
    assert list(iter_events("-")) == decode(S1)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(comp[: len(comp) // 2])))
    with pytest.raises(StreamError, match="lz4 frame ends early") as ei:
        list(iter_events("-"))
    assert ei.value.path == "<stdin>"
