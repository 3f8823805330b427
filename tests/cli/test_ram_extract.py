"""vmig ram / vmig extract from the command line: output, JSON keys, bad input → one line, exit 2."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import synth

from vmig.cli import main
from vmig.testing import fixtures

PS = 4096


def test_ram_json_on_s1(capsys, tmp_path: Path) -> None:
    assert main(["ram", str(fixtures.sample_s1()), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"idstr", "length", "page_size"} <= set(doc["blocks"][0])
    assert {k: doc["totals"][k] for k in ("normal", "zero", "xbzrle", "compressed")} == {
        "normal": 49, "zero": 131153, "xbzrle": 0, "compressed": 0}
    assert doc["totals"]["bytes"] == sum(b["bytes"] for b in doc["blocks"])
    assert len(doc["sections"]) == 2


def test_ram_text_and_lz4_and_stdin(capsys, monkeypatch, tmp_path: Path) -> None:
    import io
    import sys

    assert main(["ram", str(fixtures.path("pc-paused"))]) == 0
    out = capsys.readouterr().out
    assert "pc.ram" in out and "never sent" in out and "131153" in out
    data = fixtures.load("pc-paused")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["ram", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["zero"] == 131153


def _bad(recs: bytes, blocks=((b"pc.ram", 4 * PS),), end: bool = True) -> bytes:
    return synth.stream(list(blocks), recs, end=end)


CASES = {
    "page past the end": (_bad(synth.rec(0x08, 0, b"pc.ram", bytes(100)), end=False), "input ends"),
    "unknown idstr": (_bad(synth.rec(0x08, 0, b"nosuch", bytes(PS))), "unknown block"),
    "continue without block": (_bad(synth.rec(0x02, 0, None, b"\x00")), "no previous block"),
    "address beyond block": (_bad(synth.rec(0x02, 8 * PS, b"pc.ram", b"\x00")), "beyond block"),
    "xbzrle overrun": (
        _bad(synth.rec(0x40, 0, b"pc.ram", b"\x01" + struct.pack(">H", 5) + b"\xff\x1f\x02ab")),
        "overruns the page"),
    "unknown flags": (_bad(synth.w(0, 0x400 | 0x08) + b"\x06pc.ram" + bytes(PS)), "unknown RAM record flags"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["ram", "extract"])
def test_bad_input_is_one_line_with_offset(case: str, command: str, capsys, tmp_path: Path) -> None:
    data, words = CASES[case]
    p = tmp_path / "bad.bin"
    p.write_bytes(data)
    argv = [command, str(p)] + (["-o", str(tmp_path / "out")] if command == "extract" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offset 0x" in err and words in err, err
    if command == "extract":
        out = tmp_path / "out"
        assert not out.exists() or not any(out.iterdir()), "partial output left behind"


def test_extract_cli_vmig_format(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main(["extract", str(fixtures.sample_s1()), "-o", str(out)]) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["format"].startswith("vmig")
    raw = fixtures.sample_s1().read_bytes()
    assert (out / "desc.json").read_bytes() == raw[0x15FA78 + 5 :]
    assert (out / "rom@etc/acpi/tables").read_bytes()[:4] == b"FACS"
    assert main(["extract", str(fixtures.sample_s1()), "-o", str(out), "--elf"]) == 2
