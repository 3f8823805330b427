"""Every real capture in fixtures/ decodes to its last byte and re-encodes byte-identically."""

from __future__ import annotations

import pytest

from vmig.io import load_description
from vmig.io.streams import iter_events, records
from vmig.stream import RamRecords, SectionEnd, StreamEnd, decode, encode, find_trailer
from vmig.testing import fixtures as fx

# every QEVM stream capture in fixtures/ (postcopy-rp, a return-path recording, is not a stream)
NAMES = ("pc-guest", "pc-noconfig", "pc-nofooter", "pc-novmdesc", "pc-paused", "pc-running",
         "postcopy-desc", "postcopy-main", "q35-numa")


def test_fixture_names_are_the_stream_captures():
    """A renamed, missing or new capture fails here instead of dropping out of the tests."""
    on_disk = {n for n in fx.names() if fx.manifest(n).get("kind") != "return-path"}
    assert on_disk == set(NAMES)
    for n in NAMES:
        assert fx.path(n).is_file(), n


def _desc_for(name):
    m = fx.manifest(name)
    other = m.get("desc_from")
    if other:
        return find_trailer(fx.load(other))[1]
    return None


@pytest.mark.parametrize("name", NAMES)
def test_fixture_roundtrip(name):
    data = fx.load(name)
    desc = _desc_for(name)
    kw = {"description": desc} if desc is not None and find_trailer(data) is None else {}
    evs = decode(data, **kw)
    assert isinstance(evs[-1], StreamEnd) and evs[-1].offset == len(data)
    assert encode(evs) == data
    assert encode(evs, verbatim_ram=False) == data
    pos = 0
    for r in records(evs):
        assert r.offset == pos
        pos += r.length
    assert pos == len(data)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_streaming_lz4_equals_mapped(name):
    """The .lz4 path (chunked, trailer found in the buffered tail) gives the same events."""
    desc = _desc_for(name)
    data = fx.load(name)
    kw = {"desc_from": desc} if desc is not None and find_trailer(data) is None else {}
    streamed = list(iter_events(str(fx.path(name)), **kw))
    mapped = decode(data, description=kw.get("desc_from")) if kw else decode(data)
    assert streamed == mapped


def test_manifest_facts_footer_and_config():
    evs = decode(fx.load("pc-nofooter"))
    ends = [e for e in evs if isinstance(e, SectionEnd)]
    assert ends and not any(e.footer for e in ends)
    evs = decode(fx.load("pc-noconfig"))
    assert type(evs[1]).__name__ == "SectionHeader"
    data = fx.load("pc-novmdesc")
    assert find_trailer(data) is None
    from vmig.errors import SchemaError

    with pytest.raises(SchemaError, match="--desc-from"):
        decode(data)
    d = load_description(str(fx.path("pc-paused")))
    evs = decode(data, description=d)
    assert encode(evs) == data
    assert sum(isinstance(e, RamRecords) for e in evs) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_fixture_fast_walker_equals_scalar(name):
    """The numpy bulk RAM path and the scalar reference walker cut and fill identical batches."""
    data = fx.load(name)
    desc = _desc_for(name)
    kw = {"description": desc} if desc is not None and find_trailer(data) is None else {}
    a = decode(data, fast=False, batch_bytes=1 << 20, **kw)
    b = decode(data, fast=True, batch_bytes=1 << 20, **kw)
    assert a == b
    assert sum(isinstance(e, RamRecords) for e in a) >= 3
