"""COMMAND records and a postcopy-shaped stream (spec §6): lengths, PACKAGED children, no trailer."""

from __future__ import annotations

import struct

import pytest
import streambuild as sb

from vmig.errors import StreamError, TruncatedError
from vmig.io.streams import records
from vmig.stream import (
    Command,
    DeviceState,
    RamRecords,
    SectionHeader,
    StreamEnd,
    decode,
    encode,
    find_trailer,
)
from vmig.stream.constants import MigCmd

S1 = sb.s1()
S1_DESC = find_trailer(S1)[1]
TIMER_FULL = S1[0x1515B7:0x1515E7]  # FULL "timer" id 0 + payload + footer, from the capture
CPU_COMMON_FULL = S1[0x1515E7:0x15160C]
HP = 2 << 20


def postcopy_stream() -> tuple[bytes, int]:
    """header, config(x-ignore-shared), RP open, PING 1, ADVISE 16, START ram (huge-page block),
    PART, SWITCHOVER_START, DISCARD, PING 2, PACKAGED(LISTEN, FULL timer, FULL cpu_common, PING 3,
    RUN), PING 4, END ram, EOF. Returns (bytes, offset of the PACKAGED command)."""
    out = sb.header() + sb.config(subsections=sb.caps(b"x-ignore-shared"))
    out += sb.command(1) + sb.command(2, struct.pack(">I", 1))
    out += sb.command(3, struct.pack(">QQ", HP | 4096, 4096))
    extra = {b"mem0": struct.pack(">QQ", HP, 0x100000000), b"pc.ram": struct.pack(">Q", 0)}
    out += sb.start(2, b"ram") + sb.mem_size([(b"mem0", 8 << 20), (b"pc.ram", 1 << 20)], extra) + sb.EOS
    out += sb.footer(2)
    out += sb.part(2) + sb.zero(0, b"pc.ram") + sb.page(HP, b"\x5a" * 4096, b"mem0") + sb.EOS + sb.footer(2)
    out += sb.command(11)
    discard = b"\x00" + sb.counted(b"pc.ram") + b"\x00" + struct.pack(">QQQQ", 0, 4096, 8192, 8192)
    out += sb.command(6, discard)
    out += sb.command(2, struct.pack(">I", 2))
    blob = sb.command(4) + TIMER_FULL + CPU_COMMON_FULL + sb.command(2, struct.pack(">I", 3)) + sb.command(5)
    pk = len(out)
    out += sb.packaged(blob)
    out += sb.command(2, struct.pack(">I", 4))
    out += sb.part(2, typ=3) + sb.zero(0x1000, b"pc.ram") + sb.EOS + sb.footer(2) + b"\x00"
    return out, pk


def test_postcopy_stream_decodes_with_desc_from_and_roundtrips():
    data, pk = postcopy_stream()
    evs = decode(data, description=S1_DESC)
    assert encode(evs) == data
    assert isinstance(evs[-1], StreamEnd) and evs[-1].offset == len(data)
    cmds = [e for e in evs if isinstance(e, Command)]
    assert [c.cmd for c in cmds] == [
        MigCmd.OPEN_RETURN_PATH, MigCmd.PING, MigCmd.POSTCOPY_ADVISE, MigCmd.SWITCHOVER_START,
        MigCmd.POSTCOPY_RAM_DISCARD, MigCmd.PING, MigCmd.PACKAGED, MigCmd.PING,
    ]
    assert [c.args.get("value") for c in cmds if c.cmd == MigCmd.PING] == [1, 2, 4]
    assert cmds[2].args == {"page_size_summary": HP | 4096, "target_page_size": 4096}
    assert cmds[4].args == {"version": 0, "idstr": "pc.ram", "ranges": [(0, 4096), (8192, 8192)]}
    pkg = cmds[6]
    assert pkg.offset == pk and pkg.length == 9 + pkg.args["blob_length"]
    kinds = [type(c).__name__ for c in pkg.children]
    assert kinds == ["Command", "SectionHeader", "DeviceState", "SectionEnd", "SectionHeader",
                     "DeviceState", "SectionEnd", "Command", "Command"]
    # children carry absolute offsets
    assert pkg.children[0].offset == pk + 9
    timer = pkg.children[2]
    assert isinstance(timer, DeviceState) and timer.idstr == "timer" and timer.length == 24
    assert timer.offset == pk + 9 + 5 + 19
    assert pkg.children[-1].cmd == MigCmd.POSTCOPY_RUN
    # ram START parsed the page-size / mr_addr fields
    start = [e for e in evs if isinstance(e, RamRecords)][0].batch
    assert [(b.idstr, b.page_size, b.mr_addr) for b in start.mem_size] == [
        ("mem0", HP, 0x100000000), ("pc.ram", None, 0)]
    cfg = evs[1]
    assert cfg.capabilities == ("x-ignore-shared",)
    rows = list(records(evs))
    pkg_row = [r for r in rows if r.command == "PACKAGED"][0]
    assert [c.type for c in pkg_row.children] == ["command", "section_full", "section_full", "command",
                                                   "command"]
    assert pkg_row.to_json()["children"][1]["idstr"] == "timer"


def test_postcopy_stream_without_description_names_the_section():
    data, pk = postcopy_stream()
    with pytest.raises(StreamError, match="--desc-from") as ei:
        decode(data)
    assert ei.value.section == "timer instance 0"
    assert "FULL section 'timer' instance 0" in str(ei.value)


@pytest.mark.parametrize(
    "cmd, payload, message",
    [
        (0, b"", "invalid command number"),
        (12, b"", "invalid command number"),
        (1, b"\x00", "bad OPEN_RETURN_PATH command length"),
        (2, b"\x00\x00\x01", "bad PING command length"),
        (3, b"\x00" * 8, "bad POSTCOPY_ADVISE command length"),
        (7, b"\x00" * 3, "bad PACKAGED command length"),
        (6, b"\x00\x01a\x00" + b"\x00" * 8, "too short"),
        (6, b"\x01\x01a\x00" + b"\x00" * 16, "bad POSTCOPY_RAM_DISCARD version"),
        (6, b"\x00\x01a\x00" + b"\x00" * 17, "bad POSTCOPY_RAM_DISCARD command payload"),
        (10, b"\x05ab", "bad RECV_BITMAP command length"),
        (11, b"\x00", "bad SWITCHOVER_START command length"),
    ],
)
def test_command_length_checks(cmd, payload, message):
    data = sb.header() + sb.config() + sb.command(cmd, payload) + b"\x00"
    with pytest.raises(StreamError, match=message) as ei:
        decode(data)
    assert ei.value.offset in (26, 31)


def test_misc_commands_roundtrip():
    data = (sb.header() + sb.config() + sb.command(8) + sb.command(9) + sb.command(10, b"\x06pc.ram")
            + sb.command(7, struct.pack(">I", 0)) + b"\x00")
    evs = decode(data)
    assert encode(evs) == data
    cmds = [e for e in evs if isinstance(e, Command)]
    assert [c.cmd for c in cmds] == [MigCmd.ENABLE_COLO, MigCmd.POSTCOPY_RESUME, MigCmd.RECV_BITMAP,
                                     MigCmd.PACKAGED]
    assert cmds[2].args == {"idstr": "pc.ram"} and cmds[3].children == ()


def test_truncated_inside_package_blob():
    data, pk = postcopy_stream()
    blob_len = struct.unpack(">I", data[pk + 5:pk + 9])[0]
    bad = data[:pk + 5] + struct.pack(">I", blob_len - 3) + data[pk + 9:]
    with pytest.raises(StreamError):
        decode(bad, description=S1_DESC)


def test_config_subsections_roundtrip():
    subs = (sb.subsection(b"configuration/target-page-bits", 1, struct.pack(">I", 14))
            + sb.caps(b"x-ignore-shared", b"validate-uuid")
            + sb.subsection(b"configuration/uuid", 1, bytes(range(16))))
    data = sb.header() + sb.config(b"virt-7.2", subs) + b"\x00"
    evs = decode(data)
    cfg = evs[1]
    assert cfg.name == "virt-7.2" and cfg.target_page_bits == 14
    assert cfg.capabilities == ("x-ignore-shared", "validate-uuid") and cfg.uuid == bytes(range(16))
    assert [s.name for s in cfg.subsections] == ["configuration/target-page-bits",
                                                  "configuration/capabilities", "configuration/uuid"]
    assert encode(evs) == data
    with pytest.raises(StreamError, match="unknown configuration subsection"):
        decode(sb.header() + sb.config(b"pc", sb.subsection(b"configuration/bogus", 1, b"")) + b"\x00")
    with pytest.raises(TruncatedError):
        decode(sb.header() + sb.config(b"pc", sb.caps(b"x-ignore-shared")[:-3]))


def test_page_bits_change_ram_flag_mask():
    # 16 KiB target pages: flags are the low 14 bits, so addr 0x4000 is page 1
    subs = sb.subsection(b"configuration/target-page-bits", 1, struct.pack(">I", 14))
    out = sb.header() + sb.config(b"virt", subs) + sb.start(2, b"ram")
    out += sb.mem_size([(b"mach-virt.ram", 1 << 20)]) + sb.EOS + sb.footer(2)
    out += sb.part(2) + sb.w(0x4000, 0x08) + sb.counted(b"mach-virt.ram") + b"\x01" * 16384 + sb.EOS
    out += sb.footer(2) + b"\x00"
    evs = decode(out)
    b = [e for e in evs if isinstance(e, RamRecords)][1].batch
    assert b.page_size == 16384 and int(b.addr[0]) == 0x4000 and int(b.data_length[0]) == 16384
    assert encode(evs) == out


def test_part_header_fills_idstr_from_start():
    evs = decode(sb.small_ram_stream())
    hdrs = [e for e in evs if isinstance(e, SectionHeader)]
    assert [(h.idstr, h.instance_id, h.version_id, h.length) for h in hdrs] == [
        ("ram", 0, 4, 17), ("ram", 0, 4, 5), ("ram", 0, 4, 5)]
