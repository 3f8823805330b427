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
    rows = run_json(capsys, str(cut), "--desc-from", str(S1))
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
