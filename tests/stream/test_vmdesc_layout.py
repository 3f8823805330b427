"""vmdesc trailer: robust location, duplicate keys, payload lengths (spec §3); LayoutResolver."""

from __future__ import annotations

import json
import struct

import pytest
import streambuild as sb

from vmig.errors import SchemaError
from vmig.stream import DeviceState, VmDescription, decode, encode, find_trailer
from vmig.stream.inbuf import NeedMoreInput
from vmig.stream.layout import LayoutResolver
from vmig.stream.vmdesc import JsonObject, parse_json

S1 = sb.s1()


def test_find_trailer_in_s1():
    off, desc = find_trailer(S1)
    assert off == 0x15FA78
    assert desc.page_size == 4096
    assert len(desc.raw) == 98_810 and desc.raw == S1[0x15FA78 + 5:]
    assert [d["name"] for d in desc.devices][:3] == ["timer", "cpu_common", "cpu"]
    assert desc.device("dma", 1)["instance_id"] == 1
    assert desc.device("nope", 0) is None


def test_find_trailer_absent_or_wrong():
    assert find_trailer(S1[:0x15FA78]) is None
    assert find_trailer(S1[:-1]) is None
    assert find_trailer(b"") is None
    # a length field that itself contains 0x06 bytes (analyze-migration's heuristic breaks on 0x7b)
    js = b'{"devices": [], "x": "' + b"a" * (0x0106 - 24) + b'"}'
    assert len(js) == 0x0106
    blob = b"junk\x00" + sb.trailer(js)
    off, d = find_trailer(blob)
    assert off == 5 and d.raw == js
    js2 = b'{"devices": [], "y": "' + b"b" * (0x017B - 24) + b'"}'
    off, _ = find_trailer(b"\x00" + sb.trailer(js2))
    assert off == 1


def test_payload_lengths_match_every_s1_section():
    desc = find_trailer(S1)[1]
    evs = decode(S1)
    devs = [e for e in evs if isinstance(e, DeviceState)]
    assert len(devs) == 31
    for e in devs:
        assert VmDescription.payload_length(desc.device(e.idstr, e.instance_id)) == e.length
    vm = desc.device("0000:00:02.0/virtio-mem", 0)
    assert any(f["type"] == "virtio" and f["size"] == 45661 for f in vm["fields"])


def test_duplicate_keys_kept():
    obj = parse_json(b'{"a": 1, "tmp": {"x": 1}, "a": 2, "fields": [{"b": 1, "b": 2}]}')
    assert isinstance(obj, JsonObject) and obj["a"] == 1 and obj.getall("a") == [1, 2]
    assert obj.has_duplicates() and obj.keys() == ["a", "tmp", "a", "fields"]
    assert obj["fields"][0].getall("b") == [1, 2]


def test_payload_length_rule_with_subsections():
    entry = parse_json(json.dumps({
        "name": "x", "instance_id": 0, "vmsd_name": "x", "version": 1,
        "fields": [{"name": "a", "type": "uint32", "size": 4},
                   {"name": "arr", "array_len": 3, "type": "uint16", "size": 2}],
        "subsections": [{"vmsd_name": "x/sub", "version": 1,
                         "fields": [{"name": "c", "type": "uint8", "size": 1}]}],
    }).encode())
    assert VmDescription.payload_length(entry) == 4 + 6 + (6 + 5) + 1
    with pytest.raises(SchemaError):
        VmDescription.payload_length(parse_json(b'{"fields": [{"name": "a"}]}'))
    with pytest.raises(SchemaError):
        VmDescription(b"not json")
    with pytest.raises(SchemaError):
        VmDescription(b"[1, 2]")


def test_desc_from_wrong_size_is_rejected_by_next_byte_check():
    # a description saying timer has 23 bytes lands on a payload byte, not a footer
    raw = b'{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0, "fields": [{"name": "d", "type": "buffer", "size": 23}]}]}'
    data = S1[:0x15FA78]
    with pytest.raises(SchemaError, match="no description fits") as ei:
        decode(data, description=VmDescription(raw, source="bad.json"))
    assert "bad.json says 23 bytes" in str(ei.value)


def test_layout_table_used_after_descriptions():
    data = sb.header() + sb.config() + sb.full(3, b"0000:00:03.0/my-dev", ver=2) + b"\x00\x02ab" + sb.footer(3) + b"\x00"
    seen = []

    def measure(view, version_id):
        seen.append(version_id)
        if len(view) < 2:
            raise NeedMoreInput("the length prefix")
        return 2 + struct.unpack(">H", bytes(view[:2]))[0]

    table = {"my-dev": measure}
    evs = decode(data, layout=LayoutResolver(layouts=table))
    assert encode(evs) == data
    dev = [e for e in evs if isinstance(e, DeviceState)][0]
    assert bytes(dev.payload) == b"\x00\x02ab" and seen[-1] == 2
    assert LayoutResolver(layouts=table).has_layout("0000:00:03.0/my-dev", 0, full=True)
    assert not LayoutResolver().has_layout("0000:00:03.0/my-dev", 0, full=True)
    assert not LayoutResolver(layouts={}).has_layout("0000:00:03.0/my-dev", 0, full=True)
