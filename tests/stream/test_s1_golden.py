"""Golden facts of the real capture s1.bin (spec stream-format §0, §2.1, §4.6, §5, §7)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from streambuild import s1

from vmig.io import records
from vmig.stream import (
    Configuration,
    DeviceState,
    EndOfStream,
    FileHeader,
    RamRecords,
    SectionEnd,
    SectionHeader,
    StreamEnd,
    VmDescriptionEvent,
    decode,
    encode,
)
from vmig.stream.constants import SectionType

FULL_ORDER = [
    ("timer", 0, 0), ("cpu_common", 4, 0), ("cpu", 5, 0), ("kvm-tpr-opt", 6, 0), ("apic", 7, 0),
    ("fw_cfg", 8, 0), ("PCIHost", 9, 0), ("PCIBUS", 10, 0), ("0000:00:00.0/I440FX", 11, 0),
    ("dma", 12, 0), ("dma", 13, 1), ("0000:00:01.0/PIIX3", 14, 0), ("i8259", 15, 0),
    ("i8259", 16, 1), ("ioapic", 17, 0), ("hpet", 18, 0), ("mc146818rtc", 19, 0), ("i8254", 20, 0),
    ("pcspk", 21, 0), ("fdc", 22, 0), ("ps2kbd", 23, 0), ("ps2mouse", 24, 0), ("pckbd", 25, 0),
    ("vmmouse", 26, 0), ("port92", 27, 0), ("0000:00:01.1/ide", 28, 0), ("i2c_bus", 29, 0),
    ("0000:00:01.3/piix4_pm", 30, 0), ("0000:00:02.0/virtio-mem", 39, 0), ("acpi_build", 40, 0),
    ("globalstate", 41, 0),
]


@pytest.fixture(scope="module")
def data() -> bytes:
    return s1()


@pytest.fixture(scope="module")
def events(data):
    return decode(data)


def test_layout_table(events, data):
    assert len(data) == 1_539_191
    assert events[0] == FileHeader(0, 8, 0x5145564D, 3)
    cfg = events[1]
    assert isinstance(cfg, Configuration) and cfg.offset == 8 and cfg.name == "pc-i440fx-7.2"
    assert cfg.subsections == () and cfg.length == 0x1A - 8
    rows = list(records(events))
    kinds = [(r.offset, r.type, r.section_id) for r in rows[:5]]
    assert kinds == [
        (0x0, "header", None), (0x8, "configuration", None), (0x1A, "section_start", 2),
        (0xDE, "section_part", 2), (0x1515A5, "section_end", 2),
    ]
    fulls = [r for r in rows if r.type == "section_full"]
    assert fulls[0].offset == 0x1515B7
    assert [(r.idstr, r.section_id, r.instance_id) for r in fulls] == FULL_ORDER
    eof = [r for r in rows if r.type == "eof"]
    assert [r.offset for r in eof] == [0x15FA77]
    tr = rows[-1]
    assert tr.type == "vmdescription" and tr.offset == 0x15FA78 and tr.length == 5 + 98_810
    assert tr.offset + tr.length == len(data) == 0x177C77
    # rows tile the input
    pos = 0
    for r in rows:
        assert r.offset == pos
        pos += r.length
    assert pos == len(data)
    assert isinstance(events[-1], StreamEnd) and events[-1].offset == len(data)


def test_every_section_has_footer(events):
    ends = [e for e in events if isinstance(e, SectionEnd)]
    assert len(ends) == 3 + 31
    assert all(e.footer and e.length == 5 for e in ends)


def test_ram_totals(events):
    batches = [e.batch for e in events if isinstance(e, RamRecords)]
    flags = np.concatenate([b.flags for b in batches])
    has_id = np.concatenate([b.has_idstr for b in batches])
    typ = flags & ~np.uint16(0x20)
    assert int((typ == 0x02).sum()) == 131_153
    assert int((typ == 0x08).sum()) == 49
    assert int(((typ == 0x02) & has_id).sum()) == 3
    assert int(((typ == 0x08) & has_id).sum()) == 3
    assert int((typ == 0x10).sum()) == 3  # one EOS per START/PART/END
    part = batches[1]
    names = [b.idstr for b in part.blocks]
    blk = part.block[part.types() == 0x02]
    assert int((blk == names.index("pc.ram")).sum()) == 131_072
    assert int((part.block == names.index("0000:00:02.0/mem0")).sum()) == 0


def test_mem_size_block_list(events):
    start = [e for e in events if isinstance(e, RamRecords)][0].batch
    assert start.mem_size is not None
    assert [(b.idstr, b.used_length) for b in start.mem_size] == [
        ("0000:00:02.0/mem0", 0x40000000), ("pc.ram", 0x20000000), ("/rom@etc/acpi/tables", 0x20000),
        ("pc.bios", 0x40000), ("pc.rom", 0x20000), ("/rom@etc/table-loader", 0x1000),
        ("/rom@etc/acpi/rsdp", 0x1000),
    ]
    assert int(start.addr[0]) == 0x60082000
    assert int(start.flags[1]) == 0x10


def _row(batch, offset):
    i = int(np.searchsorted(batch.offset, offset))
    assert int(batch.offset[i]) == offset
    return i


def test_worked_ram_records(events, data):
    part = [e for e in events if isinstance(e, RamRecords)][1].batch
    names = [b.idstr for b in part.blocks]
    i = _row(part, 0xE3)
    assert (int(part.flags[i]), int(part.addr[i]), bool(part.has_idstr[i])) == (0x02, 0, True)
    assert names[part.block[i]] == "pc.ram" and bytes(part.data(i)) == b"\x00"
    i = _row(part, 0xF3)
    assert (int(part.flags[i]), int(part.addr[i]), bool(part.has_idstr[i])) == (0x22, 0x1000, False)
    i = _row(part, 0x1200EA)
    assert (int(part.flags[i]), int(part.addr[i])) == (0x08, 0)
    assert names[part.block[i]] == "/rom@etc/acpi/tables"
    assert bytes(part.data(i)[:4]) == b"FACS"
    assert int(part.data_offset[i]) == 0x1200EA + 8 + 1 + 20
    i = _row(part, 0x1212C8)
    assert (int(part.flags[i]), int(part.addr[i])) == (0x28, 0x12000)
    assert names[part.block[i]] == "pc.bios"
    assert bytes(part.data(i)) == data[0x1212C8 + 8:0x1212C8 + 8 + 4096]
    assert int(part.offset[-1]) == 0x151598 and int(part.flags[-1]) == 0x10


def test_device_payloads(events, data):
    devs = {(e.idstr, e.instance_id): e for e in events if isinstance(e, DeviceState)}
    assert len(devs) == 31
    timer = devs[("timer", 0)]
    assert timer.offset == 0x1515B7 + 19 and timer.length == 24
    assert bytes(timer.payload) == bytes(24)
    gs = devs[("globalstate", 0)]
    assert bytes(gs.payload[:4]) == struct.pack(">I", 10)
    assert bytes(gs.payload[4:14]) == b"prelaunch\x00" and gs.length == 104
    cpu = devs[("cpu", 0)]
    # the cpu/poll_control_msr subsection is the payload's tail (spec §4.6 example at 0x151d36)
    sub_at = 0x151D36 - cpu.offset
    assert bytes(cpu.payload[sub_at:sub_at + 2]) == b"\x05\x14"
    assert bytes(cpu.payload[sub_at + 2:sub_at + 22]) == b"cpu/poll_control_msr"
    assert cpu.offset + cpu.length == sub_at + cpu.offset + 2 + 20 + 4 + 8
    vm = devs[("0000:00:02.0/virtio-mem", 0)]
    assert vm.version_id >= 1


def test_event_kinds_in_order(events):
    kinds = [type(e).__name__ for e in events]
    assert kinds[:5] == ["FileHeader", "Configuration", "SectionHeader", "RamRecords", "SectionEnd"]
    assert kinds[-3:] == ["EndOfStream", "VmDescriptionEvent", "StreamEnd"]
    hdrs = [e for e in events if isinstance(e, SectionHeader)]
    assert [h.type for h in hdrs[:3]] == [SectionType.SECTION_START, SectionType.SECTION_PART,
                                           SectionType.SECTION_END]
    assert all(h.idstr == "ram" for h in hdrs[:3])
    assert isinstance(events[-2], VmDescriptionEvent) and bytes(events[-2].raw[:14]) == b'{"page_size": '
    assert isinstance(events[-3], EndOfStream)


def test_roundtrip_verbatim_and_from_columns(events, data):
    assert encode(events) == data
    assert encode(events, verbatim_ram=False) == data


def test_events_tile_input(events, data):
    pos = 0
    for e in events:
        assert e.offset == pos, e
        pos += e.length
    assert pos == len(data)
