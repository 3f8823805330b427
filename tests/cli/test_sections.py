"""``vmig sections``: rows tile the input, JSON keys, PACKAGED children, stdin/.lz4, errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import lz4.frame
import pytest

from vmig.cli import main
from vmig.testing import fixtures

S1 = fixtures.sample_s1()
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def run_json(capsys, *argv):
    assert main(["sections", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_tiles(rows, start, end):
    pos = start
    for r in rows:
        assert r["offset"] == pos
        if "children" in r:
            assert_tiles(r["children"], r["offset"] + 9, r["offset"] + r["length"])
        pos += r["length"]
    assert pos == end


def test_s1_json_rows(capsys):
    rows = run_json(capsys, str(S1))
    assert_tiles(rows, 0, S1.stat().st_size)
    assert rows[0] == {"offset": 0, "length": 8, "type": "header"}
    assert rows[1] == {"offset": 8, "length": 18, "type": "configuration"}
    assert rows[2] == {"offset": 0x1A, "length": 0xDE - 0x1A, "type": "section_start", "section_id": 2,
                       "idstr": "ram", "instance_id": 0, "version_id": 4}
    assert [r["offset"] for r in rows if r["type"] == "eof"] == [0x15FA77]
    assert rows[-1]["type"] == "vmdescription" and rows[-1]["length"] == 98_815
    fulls = [r for r in rows if r["type"] == "section_full"]
    assert len(fulls) == 31 and fulls[0]["idstr"] == "timer" and fulls[-1]["idstr"] == "globalstate"
    assert {"offset", "length", "type", "section_id", "idstr", "instance_id", "version_id"} == set(fulls[0])


def test_stdin_and_lz4_give_same_rows(capsys, tmp_path, monkeypatch):
    ref = run_json(capsys, str(S1))
    lz = tmp_path / "s1.bin.lz4"
    lz.write_bytes(lz4.frame.compress(S1.read_bytes()))
    assert run_json(capsys, str(lz)) == ref
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(S1.read_bytes())))
    assert run_json(capsys, "-") == ref


def test_text_output(capsys):
    assert main(["sections", str(S1)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "section_part" in out[4] and "ram_records=131203" in out[4]
    assert any("0000:00:02.0/virtio-mem" in line for line in out)


def test_no_trailer_needs_desc_from(capsys, tmp_path):
    # an unknown machine type, so no bundled schema set can stand in for the missing trailer
    data = S1.read_bytes()[:0x15FA78]
    assert data[0x0D:0x1A] == b"pc-i440fx-7.2"
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:0x0D] + b"zz-unknown-99" + data[0x1A:])
    assert main(["sections", str(cut), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(cut) in err[0] and "timer instance 0" in err[0] and "--desc-from" in err[0]
    # a capture of another machine type is refused; its bare description (no machine) is taken
    assert main(["sections", str(cut), "--desc-from", str(S1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "machine type pc-i440fx-7.2, the stream is zz-unknown-99" in err[0]
    desc = tmp_path / "desc.json"
    desc.write_bytes(S1.read_bytes()[0x15FA78 + 5:])
    rows = run_json(capsys, str(cut), "--desc-from", str(desc))
    assert_tiles(rows, 0, 0x15FA78)


def test_truncated_input_one_line_exit_2(capsys, tmp_path):
    cut = tmp_path / "t.bin"
    cut.write_bytes(S1.read_bytes()[:0x1515C0])
    assert main(["sections", str(cut)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offset" in err[0] and str(cut) in err[0]


@pytest.mark.skipif(not (FIXTURES / "postcopy-main.bin.lz4").exists(), reason="fixture not captured yet")
def test_postcopy_packaged_children(capsys):
    rows = run_json(capsys, str(FIXTURES / "postcopy-main.bin.lz4"), "--desc-from",
                    str(FIXTURES / "postcopy-desc.bin.lz4"))
    pk = [r for r in rows if r.get("command") == "PACKAGED"]
    assert len(pk) == 1 and pk[0]["children"][0]["command"] == "POSTCOPY_LISTEN"
    assert pk[0]["children"][-1]["command"] == "POSTCOPY_RUN"
    assert any(c.get("idstr") == "timer" for c in pk[0]["children"])
    end = rows[-1]["offset"] + rows[-1]["length"]
    assert_tiles(rows, 0, end)
    assert rows[-1]["type"] == "eof"


def _commands(rows):
    for r in rows:
        if r["type"] == "command":
            yield r
            yield from _commands(r.get("children", ()))


def test_command_arguments_json(capsys):
    """postcopy-main (real QEMU 7.2 postcopy): every command's arguments, checked against facts
    of the same capture: its return path answered each PING with a PONG of the same value, the
    ADVISE sizes are x86's 4 KiB pages, each DISCARD range lies inside its block's used length
    (from the RAM section's MEM_SIZE record), PACKAGED's blob length is its record minus 9 bytes."""
    from vmig.io.streams import iter_events
    from vmig.stream.events import RamRecords

    main_f = FIXTURES / "postcopy-main.bin.lz4"
    rows = run_json(capsys, str(main_f))
    cmds = list(_commands(rows))
    pings = [c["args"]["value"] for c in cmds if c["command"] == "PING"]
    assert main(["rp", str(FIXTURES / "postcopy-rp.bin.lz4"), "--json"]) == 0
    pongs = [m["args"]["value"] for m in json.loads(capsys.readouterr().out)["messages"] if m["type"] == "PONG"]
    assert sorted(pings) == sorted(pongs) == [1, 2, 3, 4]
    (advise,) = [c for c in cmds if c["command"] == "POSTCOPY_ADVISE"]
    assert advise["args"] == {"page_size_summary": 4096, "target_page_size": 4096}
    sizes = {}
    for ev in iter_events(str(main_f)):
        if isinstance(ev, RamRecords) and ev.batch.mem_size:
            sizes.update({b.idstr: b.used_length for b in ev.batch.mem_size})
            break
    discards = [c for c in cmds if c["command"] == "POSTCOPY_RAM_DISCARD"]
    assert {d["args"]["idstr"] for d in discards} <= set(sizes) and len(discards) >= 2
    for d in discards:
        assert d["args"]["version"] == 0 and d["args"]["ranges"]
        for start, length in d["args"]["ranges"]:
            assert length > 0 and start % 4096 == 0 and start + length <= sizes[d["args"]["idstr"]]
    (pk,) = [c for c in cmds if c["command"] == "PACKAGED"]
    assert pk["args"] == {"blob_length": pk["length"] - 9}
    assert [c for c in cmds if c["command"] == "POSTCOPY_RUN"][0]["args"] == {}


def test_command_arguments_text(capsys):
    assert main(["sections", str(FIXTURES / "postcopy-main.bin.lz4")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[-1] == "value=1" and " PING " in line for line in lines)
    assert any("POSTCOPY_ADVISE page_size_summary=0x1000 target_page_size=0x1000" in line for line in lines)
    assert any("POSTCOPY_RAM_DISCARD version=0 idstr=pc.ram ranges=[0x" in line for line in lines)
    assert any("PACKAGED blob_length=0x" in line for line in lines)
