"""Hostile inputs and failing outputs: one line and a documented exit code, never a traceback.

Every input is built here from the real capture ``fixtures/s1.bin`` (QEMU 7.2, pc-i440fx-7.2,
a virtio-mem device, a vmdesc trailer): a trailer replaced, a section header edited, a cut.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vmig.cli import EXIT_CODES, main
from vmig.stream.vmdesc import MAX_JSON_DEPTH, find_trailer
from vmig.testing import fixtures

S1 = fixtures.sample_s1()
ROOT = Path(__file__).resolve().parents[2]


def s1() -> bytes:
    return S1.read_bytes()


def with_trailer(body: bytes) -> bytes:
    """s1.bin with its trailer's JSON replaced by ``body`` (framing intact)."""
    data = s1()
    off, _ = find_trailer(data)
    return data[:off] + b"\x06" + struct.pack(">I", len(body)) + body


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------- exit codes
def test_exit_codes_documented_in_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, code


def test_internal_error_is_one_line_exit_3(capsys, monkeypatch) -> None:
    import vmig.cli.sections as sections

    def boom(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(sections, "handle", boom, raising=False)
    monkeypatch.setattr(sections, "handler", boom, raising=False)
    rc, _, err = run(capsys, "sections", str(S1))
    assert rc == 3
    line = one_line(err)
    assert line.startswith("vmig sections: internal error: ZeroDivisionError: boom")
    assert "please report" in line
    monkeypatch.setenv("VMIG_DEBUG", "1")
    rc, _, err = run(capsys, "sections", str(S1))
    assert rc == 3 and "Traceback" in err and "ZeroDivisionError" in err


def test_keyboard_interrupt_exit_130(capsys, monkeypatch) -> None:
    import vmig.cli.sections as sections

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sections, "handle", interrupted, raising=False)
    monkeypatch.setattr(sections, "handler", interrupted, raising=False)
    rc, _, err = run(capsys, "sections", str(S1))
    assert rc == 130 and one_line(err) == "vmig sections: interrupted"


def test_missing_input_exit_2(capsys, tmp_path) -> None:
    rc, _, err = run(capsys, "check", str(tmp_path / "absent.bin"))
    assert rc == 2 and "absent.bin" in one_line(err)


def _vmig(*argv: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "vmig", *argv], stdout=stdout,
                          stderr=subprocess.PIPE, env=env, timeout=300)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_stdout_on_full_device_exit_2() -> None:
    with open("/dev/full", "wb") as full:
        r = _vmig("sections", str(S1), stdout=full)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip() == "vmig sections: stdout: No space left on device (ENOSPC)"


def test_stdout_closed_pipe_exit_2() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "vmig", "sections", str(S1)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.read(10)
    p.stdout.close()  # the reader goes away, like `| head -c 10`
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 2
    assert err.strip() == "vmig sections: stdout: Broken pipe (EPIPE)"


# ----------------------------------------------------------------------- trailer as input
BAD_TRAILERS = {
    "deep": b'{"devices":' + b"[" * 5000 + b"]" * 5000 + b"}",
    "not-utf8": None,  # built from the real trailer below
    "not-json": None,
}


def bad_trailer(kind: str) -> bytes:
    _, desc = find_trailer(s1())
    if kind == "deep":
        return BAD_TRAILERS["deep"]
    if kind == "not-utf8":
        return desc.raw.replace(b"e", b"\xff", 1)
    return desc.raw[:-2] + b"}"  # a closing bracket lost


@pytest.mark.parametrize("kind", ["deep", "not-utf8", "not-json"])
def test_bad_trailer_check_fails_and_readers_give_one_line(capsys, tmp_path, kind) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(bad_trailer(kind)))
    _, desc = find_trailer(s1())
    rc, _, err = run(capsys, "check", str(path))
    assert rc == 1, "check must refuse a trailer other commands cannot read"
    line = one_line(err)
    assert "VMDESCRIPTION trailer" in line and str(path) in line
    for argv in (["analyze", "--format", "qemu", str(path)], ["analyze", str(path)],
                 ["extract", "--format", "qemu", str(path), "-o", str(tmp_path / "x")]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2, argv
        one_line(err)
    assert not (tmp_path / "x").exists() or os.listdir(tmp_path / "x") == []


def test_deep_desc_from_is_one_line(capsys, tmp_path) -> None:
    desc = tmp_path / "deep.json"
    desc.write_bytes(bad_trailer("deep"))
    rc, _, err = run(capsys, "check", "--desc-from", str(desc), str(S1))
    assert rc == 2
    assert f"nested more than {MAX_JSON_DEPTH} levels deep" in one_line(err)


# ----------------------------------------------------------- a ram section, instance 1
def test_ram_section_instance_1_format_qemu(capsys, tmp_path) -> None:
    data = bytearray(s1())
    # s1.bin's ram START at 0x1a: 01, be32 section id, u8 3 "ram", be32 instance, be32 version
    assert data[0x1A] == 1 and data[0x1F:0x23] == b"\x03ram"
    data[0x23:0x27] = struct.pack(">I", 1)
    path = tmp_path / "ram1.bin"
    path.write_bytes(bytes(data))
    for argv in (["analyze", "--format", "qemu", str(path)],
                 ["extract", "--format", "qemu", str(path), "-o", str(tmp_path / "x")]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2
        assert "section ram instance 1" in one_line(err)
    rc, _, err = run(capsys, "analyze", str(path))  # vmig's own format shows it
    assert rc == 0, err


# --------------------------------------------------- truncated captures of an unknown machine
def renamed_machine(data: bytes, name: bytes = b"pc-i440fx-11.0") -> bytes:
    """The capture with a machine type vmig has no schema set for (a newer QEMU than vmig knows):
    nothing but its own trailer can measure its device sections."""
    i = data.index(b"pc-i440fx-7.2")
    assert data[i - 4:i] == struct.pack(">I", 13)
    return data[:i - 4] + struct.pack(">I", len(name)) + name + data[i + 13:]


def test_truncated_unknown_machine_reports_truncation(capsys, tmp_path) -> None:
    data = renamed_machine(s1())
    off, desc = find_trailer(data)
    ram_end = 0x1515B7 + 1  # the ram END section ends at 0x1515b7 (+1: the renamed name)
    cuts = {
        "after RAM, inside the first FULL section": ram_end + 200,
        "inside the device sections": off - 1000,
        "just before the EOF byte": off - 1,
        "inside the trailer header": off + 3,
        "inside the trailer JSON": off + 5 + len(desc.raw) // 2,
        "one byte short": len(data) - 1,
    }
    for what, cut in cuts.items():
        path = tmp_path / "cut.bin"
        path.write_bytes(data[:cut])
        for cmd in ("check", "analyze", "sections"):
            rc, _, err = run(capsys, cmd, str(path))
            line = one_line(err)
            assert rc == (1 if cmd == "check" else 2), (what, cmd)
            assert f"truncated at offset {cut:#x}" in line, (what, cmd, line)
            assert "--desc-from" not in line, (what, line)
    # the whole stream is fine; without its trailer (cut right after EOF) a description is missing
    path.write_bytes(data)
    assert run(capsys, "check", str(path))[0] == 0
    path.write_bytes(data[:off])
    rc, _, err = run(capsys, "check", str(path))
    assert rc == 1 and "--desc-from" in one_line(err) and "truncated at" not in err


def test_trailer_that_parses_but_does_not_describe_is_refused_by_check(capsys, tmp_path) -> None:
    import json

    _, desc = find_trailer(s1())
    doc = json.loads(desc.raw)
    dev = next(d for d in doc["devices"] if d["name"] == "timer")
    dev["vmsd_name"] = ["timer", "timer"]  # valid JSON, not a description
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(json.dumps(doc, separators=(",", ":")).encode()))
    rc, _, err = run(capsys, "check", str(path))
    assert rc == 1 and "vmsd_name is not a string" in one_line(err)
    rc, _, err = run(capsys, "analyze", str(path))
    assert rc == 2 and "vmsd_name is not a string" in one_line(err)


def test_trailer_device_name_that_is_an_object(capsys, tmp_path) -> None:
    import json

    _, desc = find_trailer(s1())
    doc = json.loads(desc.raw)
    dev = next(d for d in doc["devices"] if d["name"] == "timer")
    dev["name"] = {"not": "a name"}  # the entry then describes no section
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(json.dumps(doc, separators=(",", ":")).encode()))
    for cmd in ("check", "analyze"):
        rc, _, err = run(capsys, cmd, str(path))
        assert rc in (0, 1, 2) and "internal error" not in err and "Traceback" not in err


# ------------------------------------------------------------- where an error is, always named
ODD_IDSTR = b"\x1b\r\x85\t"  # escape, carriage return, NEL (a line break), tab


def test_an_odd_idstr_is_escaped_in_one_printable_line(capsys, tmp_path) -> None:
    data = s1()
    i = data.find(b"\x04apic\x00\x00\x00\x00")  # the apic FULL section's idstr
    assert i > 0
    p = tmp_path / "odd.bin"
    p.write_bytes(data[:i + 1] + ODD_IDSTR + data[i + 5:])
    for argv in (["sections"], ["analyze"], ["ram"], ["extract", "-o", str(tmp_path / "out")]):
        rc, _, err = run(capsys, *argv, str(p))
        line = one_line(err)  # str.splitlines() also splits at \r and \x85
        assert rc == 2 and line.isprintable(), line
        assert f"{p}: offset 0x" in line and "section \\x1b\\r\\x85\\t instance 0" in line, line


def _trailer_offset() -> int:
    off, _ = find_trailer(s1())
    return off


@pytest.mark.parametrize("body", [b'{"devices": [', b'{"devices": 1}'], ids=["not-json", "no-device-list"])
@pytest.mark.parametrize("argv", [["analyze"], ["analyze", "--format", "qemu"], ["extract", "--format", "qemu"],
                                  ["diff", "S1"]], ids=["analyze", "analyze-qemu", "extract-qemu", "diff"])
def test_a_broken_trailer_is_named_by_file_and_offset(capsys, tmp_path, body, argv) -> None:
    p = tmp_path / "broken.bin"
    p.write_bytes(with_trailer(body))
    argv = [str(S1) if a == "S1" else a for a in argv]
    if argv[0] == "extract":
        argv += ["-o", str(tmp_path / "out")]
    rc, _, err = run(capsys, *argv, str(p))
    line = one_line(err)
    assert rc == 2
    assert f"{p}: offset {_trailer_offset():#x}" in line, line


def test_a_description_error_below_the_decoder_names_the_section_and_offset(capsys, tmp_path) -> None:
    import json

    off = _trailer_offset()
    doc = json.loads(s1()[off + 5:])
    apic = next(d for d in doc["devices"] if d["name"] == "apic")
    apic["fields"][0] = 1  # a field entry that is not an object
    p = tmp_path / "bad-entry.bin"
    p.write_bytes(with_trailer(json.dumps(doc).encode()))
    i = s1().find(b"\x04apic\x00\x00\x00\x00")
    for argv in (["analyze"], ["sections"]):
        rc, _, err = run(capsys, *argv, str(p))
        line = one_line(err)
        assert rc == 2 and "section apic instance 0" in line and "a field entry is not an object" in line, line
        # the offset of the section's payload (after its header: type, id, idstr, instance, version)
        assert f"{p}: offset {i + 5 + 8:#x}" in line, line


def test_sections_lists_an_odd_idstr_escaped(capsys, tmp_path) -> None:
    """A section whose idstr has control characters, described by the stream's own trailer
    (renamed there too): it decodes, and its row shows the name escaped, on one line."""
    import json

    data = s1()
    off = _trailer_offset()
    doc = json.loads(data[off + 5:])
    next(d for d in doc["devices"] if d["name"] == "apic")["name"] = ODD_IDSTR.decode("latin-1")
    body = json.dumps(doc).encode()
    i = data.find(b"\x04apic\x00\x00\x00\x00")
    renamed = data[:i + 1] + ODD_IDSTR + data[i + 5:off]
    p = tmp_path / "odd-described.bin"
    p.write_bytes(renamed + b"\x06" + struct.pack(">I", len(body)) + body)
    rc, out, err = run(capsys, "sections", str(p))
    assert rc == 0, err
    rows = [line for line in out.splitlines() if "\\x1b" in line]
    assert len(rows) == 1 and rows[0].isprintable(), out
    assert "\\x1b\\r\\x85\\t inst=0" in rows[0]
    assert len(out.splitlines()) == len(out.split("\n")) - 1  # no stray line breaks
