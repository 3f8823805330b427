"""Field types of the vmstate engine, checked on real s1.bin sections and on hand-made bodies.

Expected values come from the spec (stream-format §4), from raw bytes located independently
of the engine (offsets computed from the vmdesc sizes), or from other parts of the stream (RAM
block sizes); hand-made bodies use values computed by hand.
"""

from __future__ import annotations

import copy
import struct

import construct
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vmstate_streams import S1, decoded

from vmig.errors import SchemaError, UsageError
from vmig.stream.events import RamRecords
from vmig.vmstate.engine import SchemaSet, build_schema
from vmig.vmstate.registry import Registry


@pytest.fixture(scope="module")
def s1() -> dict[tuple[str, int], tuple[object, bytes, int]]:
    d = decoded(S1)
    ss = SchemaSet(d.own.root)
    out = {}
    for ev in d.device_states():
        out[(ev.idstr, ev.instance_id)] = (ss.for_section(ev.idstr, ev.instance_id), bytes(ev.payload), ev.offset)
    return out


def _decode(s1: dict, idstr: str, inst: int = 0):  # type: ignore[no-untyped-def]
    schema, payload, offset = s1[(idstr, inst)]
    return schema, payload, offset, schema.decode(payload, offset=offset)


# --------------------------------------------------------------------------- real sections


def test_timer_fields(s1: dict) -> None:
    _, payload, _, v = _decode(s1, "mc146818rtc")
    # cmos_data 128 + cmos_index 1 + unused[0] 28 -> periodic_timer at 157, update_timer after
    # next_periodic_time (8) and unused[1] (24) ... located from the vmdesc sizes:
    assert payload[157:165] == b"\xff" * 8
    assert v.periodic_timer == -1  # not armed
    assert v.update_timer == struct.unpack(">q", _field_bytes(s1, "mc146818rtc", "update_timer"))[0]
    assert 1_600_000_000 * 10**9 < v.update_timer < 2_100_000_000 * 10**9  # rtc clock, ns since 1970
    _, _, _, hpet = _decode(s1, "hpet")
    assert [t.qemu_timer for t in hpet.timer] == [-1, -1, -1]
    assert hpet.num_timers == len(hpet.timer) == 3


def _field_bytes(s1: dict, idstr: str, field: str) -> bytes:
    """Bytes of a top-level field, located by summing vmdesc sizes (independent of the engine)."""
    schema, payload, _ = s1[(idstr, 0)]
    pos = 0
    for f in schema.entry["fields"]:
        n = f["size"] * f.get("array_len", 1)
        if f["name"] == field:
            return payload[pos:pos + n]
        pos += n
    raise KeyError(field)


def test_globalstate_runstate_buffer(s1: dict) -> None:
    schema, payload, _, v = _decode(s1, "globalstate")
    assert v.size == 10  # strlen("prelaunch") + 1: the VM was started with -S and never ran
    assert isinstance(v.runstate, bytes) and len(v.runstate) == 100
    assert v.runstate[: v.size] == b"prelaunch\x00"
    # bytes after the NUL are kept verbatim (spec §10.10)
    edited = payload[:4 + 10] + b"\xaa" * 90
    assert schema.encode(schema.decode(edited)) == edited
    assert schema.decode(edited).runstate[10:] == b"\xaa" * 90


def test_cpu_subsection_poll_control_msr(s1: dict) -> None:
    schema, payload, offset, v = _decode(s1, "cpu")
    assert v["cpu/poll_control_msr"]["env.poll_control_msr"] == 0
    header = b"\x05\x14cpu/poll_control_msr\x00\x00\x00\x01"
    # spec §4.6 example: the subsection header sits at 0x151d36, followed by the be64 and the footer
    assert offset + len(payload) - 8 - len(header) == 0x151D36
    assert payload[-8 - len(header):-8] == header
    # a different subsection name at that place is refused at exactly that offset
    bad = payload[: -8 - len(header)] + header.replace(b"poll", b"pall") + payload[-8:]
    with pytest.raises(SchemaError) as ei:
        schema.decode(bad, offset=offset)
    assert ei.value.offset == 0x151D36
    assert "cpu/poll_control_msr" in str(ei.value)
    # a different subsection version is refused too
    bad = payload[:-12] + b"\x00\x00\x00\x02" + payload[-8:]
    with pytest.raises(SchemaError):
        schema.decode(bad, offset=offset)


def test_fdc_index_array_with_subsections(s1: dict) -> None:
    schema, payload, _, v = _decode(s1, "fdc")
    drives = v.state.drives
    assert isinstance(drives, list) and len(drives) == 2  # two "index" entries
    header = b"\x05\x11fdrive/media_rate\x00\x00\x00\x01"
    assert payload.count(header) == 2
    for i, drive in enumerate(drives):
        assert set(drive) >= {"head", "track", "sect", "fdrive/media_rate"}
        # each element ends with its own subsection: header + media_rate byte
        start = payload.index(header) + i * (3 + len(header) + 1)
        assert payload[start:start + len(header)] == header
        assert drive["fdrive/media_rate"]["media_rate"] == payload[start + len(header)]
    assert v.state.num_floppies == 2  # "uint8 equal": MAX_FD
    items = [it for it in schema.body.items[0].body.items if it.key == "drives"]
    assert [it.slot for it in items] == [0, 1]


def test_fw_cfg_suffixed_name_and_subsections(s1: dict) -> None:
    _, _, _, v = _decode(s1, "fw_cfg")
    assert "cur_offset[1]" in v and "cur_offset" not in v
    assert list(v)[-2:] == ["fw_cfg/dma", "fw_cfg/acpi_mr"]
    blocks = {}
    for ev in decoded(S1).events:
        if isinstance(ev, RamRecords) and ev.batch.mem_size:
            blocks = {b.idstr: b.used_length for b in ev.batch.mem_size}
    acpi = v["fw_cfg/acpi_mr"]
    # the ACPI ROM blobs' sizes are also the used lengths of their RAM blocks
    assert acpi.table_mr_size == blocks["/rom@etc/acpi/tables"]
    assert acpi.linker_mr_size == blocks["/rom@etc/table-loader"]
    assert acpi.rsdp_mr_size == 20  # ACPI 1.0 RSDP (the block is page-rounded: 4096)
    assert blocks["/rom@etc/acpi/rsdp"] == 4096


def test_int32_le_equal_and_pci_opaque(s1: dict) -> None:
    for idstr in ("0000:00:00.0/I440FX", "0000:00:01.1/ide", "0000:00:01.3/piix4_pm"):
        _, payload, _, v = _decode(s1, idstr)
        pci = v[next(iter(v))]
        assert pci.version_id == 2  # "int32 le" is big-endian: 00 00 00 02
        assert payload[:4] == b"\x00\x00\x00\x02"
        assert isinstance(pci["config[0]"], bytes) and len(pci["config[0]"]) == 256
        assert pci["config[0]"][:2] == b"\x86\x80"  # Intel vendor id, little-endian in config space
        assert isinstance(pci.irq_state, bytes) and len(pci.irq_state) == 16
    _, _, _, bus = _decode(s1, "PCIBUS")
    assert bus.nirq == 4 and len(bus.irq_count) == 4
    _, _, _, mouse = _decode(s1, "vmmouse")
    assert mouse.queue_size == 1024 == len(mouse.queue)


def test_bool_and_tmp(s1: dict) -> None:
    _, _, _, pm = _decode(s1, "0000:00:01.3/piix4_pm")
    bools = [pm.smb[k] for k in ("i2c_enable", "op_done", "in_i2c_block_read",
                                  "start_transaction_on_status_read")]
    assert all(type(b) is bool for b in bools)
    _, _, _, cpu = _decode(s1, "cpu")
    fpregs = cpu["env.fpregs"]
    assert len(fpregs) == 8
    assert all(set(r.tmp) == {"tmp_mant", "tmp_exp"} for r in fpregs)  # x86 fpreg_tmp: be64 + be16


# --------------------------------------------------------------------------- hostile payloads


def test_short_payload_names_field_and_offset(s1: dict) -> None:
    schema, payload, offset = s1[("timer", 0)]
    with pytest.raises(SchemaError) as ei:
        schema.decode(payload[:20], offset=offset)
    e = ei.value
    assert e.offset == offset + 16  # cpu_clock_offset starts after 8 + 8 bytes
    assert "cpu_clock_offset" in str(e)
    assert e.section == "timer instance 0"
    with pytest.raises(SchemaError) as ei:
        schema.decode(payload + b"\x00", offset=offset)
    assert ei.value.offset == offset + 24


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_truncation_is_a_schema_error(s1: dict, data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(s1)))
    schema, payload, offset = s1[key]
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(SchemaError) as ei:
        schema.decode(payload[:cut], offset=offset)
    assert ei.value.offset is not None and offset <= ei.value.offset <= offset + cut


def test_encode_rejects_values_that_do_not_fit(s1: dict) -> None:
    schema, payload, offset, v = _decode(s1, "timer")
    v.cpu_ticks_offset = 1 << 70
    with pytest.raises(SchemaError):
        schema.encode(v)
    del v["cpu_ticks_offset"]
    with pytest.raises(SchemaError):
        schema.encode(v)


# --------------------------------------------------------------------------- hand-made bodies


def _one(field: dict, payload: bytes):  # type: ignore[no-untyped-def]
    schema = build_schema({"vmsd_name": "t", "version": 1, "fields": [field]})
    return schema, schema.decode(payload)


def test_bitmap_bits_and_padding() -> None:
    words = struct.pack(">QQ", 0x8000000000000005, 0x1)
    schema, v = _one({"name": "bm", "type": "bitmap", "size": 16}, words)
    assert np.flatnonzero(v.bm).tolist() == [0, 2, 63, 64]
    assert schema.encode(v) == words
    v.bm[65] = True
    assert schema.encode(v) == struct.pack(">QQ", 0x8000000000000005, 0x3)


def test_scalars() -> None:
    assert _one({"name": "d", "type": "CPU_Double_U", "size": 8}, bytes.fromhex("3ff8000000000000"))[1].d == 1.5
    assert _one({"name": "c", "type": "capability", "size": 16}, b"\x0fx-ignore-shared")[1].c == "x-ignore-shared"
    assert _one({"name": "i", "type": "int16", "size": 2}, b"\xff\xfe")[1].i == -2
    assert _one({"name": "u", "type": "uint16 equal", "size": 2}, b"\xff\xfe")[1].u == 0xFFFE
    assert _one({"name": "e", "type": "int64 equal", "size": 8}, b"\xff" * 8)[1].e == 2**64 - 1
    assert _one({"name": "l", "type": "int32 le", "size": 4}, b"\x00\x00\x01\x00")[1].l == 256
    # an unknown custom VMStateInfo stays exact bytes
    assert _one({"name": "x", "type": "usb device addr", "size": 3}, b"abc")[1].x == b"abc"
    # a bool byte other than 0/1 (QEMU loads it as true) is kept byte-exact
    schema, v = _one({"name": "b", "type": "bool", "size": 1}, b"\x02")
    assert v.b == 2 and schema.encode(v) == b"\x02"


def test_null_pointer_markers() -> None:
    # 7.2: a NULL element keeps the field's type with size 1; master: type "nullptr"
    for field in ({"name": "t", "type": "timer", "size": 1}, {"name": "t", "type": "nullptr", "size": 1}):
        schema, v = _one(field, b"\x30")
        assert v.t is None and schema.encode(v) == b"\x30"
    schema, v = _one({"name": "s", "type": "struct", "struct": {}, "size": 1}, b"\x30")
    assert v.s is None


def test_vstruct_inline_body_and_repeated_names() -> None:
    desc = {
        "vmsd_name": "t", "version": 1,
        "fields": [
            {"name": "v", "type": "vstruct", "vmsd_name": "inner", "version": 2,
             "fields": [{"name": "a", "type": "uint8", "size": 1}], "size": 1},
            {"name": "r", "array_len": 2, "type": "uint8", "size": 1},
            {"name": "r", "type": "uint16", "size": 2},
            {"name": "z", "type": "uint8", "size": 1},
            {"name": "r", "type": "uint8", "size": 1},
        ],
    }
    payload = bytes([7, 1, 2, 0, 3, 9, 4])
    schema = build_schema(desc)
    v = schema.decode(payload)
    assert v.v.a == 7
    assert v.r == [[1, 2], 3] and v.z == 9 and v["r#1"] == 4
    assert schema.encode(v) == payload


def test_registered_codec_replaces_opaque_field() -> None:
    reg = Registry()
    reg.register_field_codec(
        "pci config", "PCIDevice",
        lambda entry: construct.Struct("vendor" / construct.Int16ul, "rest" / construct.Bytes(entry["size"] - 2)),
    )
    desc = {"vmsd_name": "PCIDevice", "version": 2,
            "fields": [{"name": "config[0]", "type": "pci config", "size": 4}]}
    schema = SchemaSet(registry=reg).build(desc)
    v = schema.decode(b"\x86\x80\x37\x12")
    assert v["config[0]"].vendor == 0x8086
    assert schema.encode(v) == b"\x86\x80\x37\x12"
    # the codec is keyed by the containing vmsd: elsewhere the field stays bytes
    other = dict(desc, vmsd_name="other")
    assert SchemaSet(registry=reg).build(other).decode(b"\x86\x80\x37\x12")["config[0]"] == b"\x86\x80\x37\x12"
    # a codec that leaves bytes of its field unread is an error, not a silent truncation
    short = Registry()
    short.register_field_codec("pci config", None, lambda entry: construct.Int16ul)
    with pytest.raises(SchemaError, match="consumed 2 of 4"):
        SchemaSet(registry=short).build(desc).decode(b"\x86\x80\x37\x12")
    with pytest.raises(UsageError, match="already registered"):
        short.register_field_codec("pci config", None, lambda entry: construct.Int16ul)


@pytest.mark.parametrize(
    "desc",
    [
        {"fields": [{"name": "a", "type": "uint8", "size": "1"}]},
        {"fields": [{"name": "a", "type": "uint8", "size": -1}]},
        {"fields": [{"name": "a", "type": "uint8", "size": 0, "array_len": 10**12}]},
        {"fields": [{"name": "a", "type": "struct", "struct": {"fields": []}, "size": 0, "array_len": 10**9}]},
        {"fields": [7]},
        {"fields": [], "subsections": [{"vmsd_name": "x", "version": 2**32, "fields": []}]},
        {"fields": [], "subsections": [{"vmsd_name": "x" * 256, "version": 1, "fields": []}]},
        {"vmsd_name": "no field list"},
    ],
)
def test_hostile_descriptions_are_schema_errors(desc: dict) -> None:
    # the trailer is input too: a bad description fails with SchemaError at build time
    with pytest.raises(SchemaError):
        build_schema(desc)


def test_deeply_nested_description_is_a_schema_error() -> None:
    desc: dict = {"fields": []}
    for _ in range(5000):
        desc = {"fields": [{"name": "s", "type": "struct", "struct": desc, "size": 0}]}
    with pytest.raises(SchemaError):
        build_schema(desc)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_payloads_round_trip_or_fail_cleanly(s1: dict, data: st.DataObject) -> None:
    # any byte changes: the payload either decodes and re-encodes to the same bytes (nothing is
    # normalised away), or decoding raises SchemaError (never another exception)
    key = data.draw(st.sampled_from(sorted(s1)))
    schema, payload, offset = s1[key]
    p = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        p[data.draw(st.integers(0, len(p) - 1))] = data.draw(st.integers(0, 255))
    try:
        values = schema.decode(bytes(p), offset=offset)
    except SchemaError:
        return
    assert schema.encode(values) == bytes(p)


def _sub(name: str, version: int, payload: bytes) -> bytes:
    return bytes([5, len(name)]) + name.encode() + version.to_bytes(4, "big") + payload


def test_optional_subsections_any_order_and_variants() -> None:
    # schema-set form: every subsection the vmsd may send, one name listed in two variants
    desc = {
        "vmsd_name": "dev", "version": 1,
        "fields": [{"name": "a", "type": "uint8", "size": 1}],
        "subsections": [
            {"vmsd_name": "dev/x", "version": 1, "fields": [{"name": "x", "type": "uint32", "size": 4}]},
            {"vmsd_name": "dev/x", "version": 1, "fields": [{"name": "x", "type": "uint16", "size": 2}]},
            {"vmsd_name": "dev/y", "version": 1, "fields": [{"name": "y", "array_len": 2, "type": "uint8", "size": 1}]},
        ],
    }
    # variants of one name are tried in order; the first that parses is used (no backtracking)
    schema = SchemaSet(optional_subsections=True).build(desc)
    none = b"\x07"
    assert schema.decode(none) == {"a": 7} and schema.encode(schema.decode(none)) == none
    # y before x (the loader accepts any order); x in its second variant (the first runs out)
    both = b"\x07" + _sub("dev/y", 1, b"\x01\x02") + _sub("dev/x", 1, b"\x00\x09")
    v = schema.decode(both)
    assert list(v) == ["a", "dev/y", "dev/x"] and v["dev/y"].y == [1, 2] and v["dev/x"].x == 9
    assert schema.encode(v) == both
    assert schema.encode(copy.deepcopy(v)) == both  # the chosen variant survives copies
    assert [k for k, _ in schema.body.present_subsections(v)] == ["dev/y", "dev/x"]
    # a subsection of another vmsd ends the body: left over, so the payload does not fit
    with pytest.raises(SchemaError, match="beyond its description"):
        schema.decode(b"\x07" + _sub("other/z", 1, b""))
    # the strict (trailer) form of the same description needs all three, in list order
    with pytest.raises(SchemaError):
        SchemaSet().build(desc).decode(both)


def test_schema_set_body_and_list_forms() -> None:
    # vmig.vmstate.machines stores tmp/qtailq bodies under "body" without sizes
    desc = {
        "vmsd_name": "dev", "version": 1,
        "fields": [
            {"name": "tmp", "type": "tmp", "body": {"vmsd_name": "t", "version": 0,
                                                    "fields": [{"name": "m", "type": "uint16", "size": 2}]}},
            {"name": "q", "type": "qtailq", "body": {"vmsd_name": "e", "version": 0,
                                                     "fields": [{"name": "v", "type": "uint8", "size": 1}]}},
        ],
    }
    schema = SchemaSet(optional_subsections=True).build(desc)
    payload = b"\x01\x02" + b"\x01\x0a\x01\x0b\x00"
    v = schema.decode(payload)
    assert v.tmp.m == 0x102 and [e.v for e in v.q] == [10, 11]
    assert schema.encode(v) == payload
    with pytest.raises(SchemaError, match="marker"):
        schema.decode(b"\x01\x02\x02")
