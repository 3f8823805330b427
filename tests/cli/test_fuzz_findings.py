"""Inputs the fuzzing command (``bench/fuzz.py``) found that made a reading command fail with
an internal error; each is rebuilt here from s1.bin's own bytes: every command answers with one
line and exit 2 (``check`` with a finding, exit 1)."""

from __future__ import annotations

import json
import struct

import pytest

from vmig.cli import main
from vmig.stream.vmdesc import find_trailer
from vmig.testing import fixtures


def with_trailer(body: bytes) -> bytes:
    """s1.bin with its trailer's JSON replaced by ``body`` (framing intact)."""
    data = fixtures.sample_s1().read_bytes()
    off, _ = find_trailer(data)
    return data[:off] + b"\x06" + struct.pack(">I", len(body)) + body


def trailer_doc() -> dict:
    _, desc = find_trailer(fixtures.sample_s1().read_bytes())
    return json.loads(desc.raw)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return rc, err.strip()


@pytest.mark.parametrize("key", ["fields", "subsections"])
def test_device_fields_that_are_not_a_list(capsys, tmp_path, key) -> None:
    doc = trailer_doc()
    timer = next(d for d in doc["devices"] if d["name"] == "timer")
    timer[key] = 5  # was: TypeError 'int' object is not iterable (vmdesc.body_length)
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(json.dumps(doc).encode()))
    for cmd in ("sections", "analyze", "ram", "info"):
        rc, err = run(capsys, cmd, str(path))
        assert rc == 2 and f"'{key}' is not a list: 5" in err and "timer" in err, (cmd, err)
    # extract builds the schema first (was: TypeError 'float' object is not iterable, engine)
    rc, err = run(capsys, "extract", str(path), "-o", str(tmp_path / "x"))
    assert rc == 2 and "timer" in err and "not a list" in err and not (tmp_path / "x").exists()
    rc, err = run(capsys, "check", str(path))
    assert rc == 1 and f"'{key}' is not a list" in err


@pytest.mark.parametrize("body", [
    json.dumps([["page_size", 4096], ["devices", []]]),  # an array, not an object
    json.dumps({"page_size": 4096, "devices": 5}),  # devices not a list
])
def test_trailer_that_is_not_an_object_with_devices(capsys, tmp_path, body) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(body.encode()))
    # was: AttributeError 'list' object has no attribute 'get' (engine.SchemaSet) in --format qemu
    rc, err = run(capsys, "analyze", "--format", "qemu", str(path))
    assert rc == 2 and "vmdesc" in err
    rc, err = run(capsys, "extract", "--format", "qemu", str(path), "-o", str(tmp_path / "x"))
    assert rc == 2 and not (tmp_path / "x").exists()
    rc, err = run(capsys, "check", str(path))
    assert rc == 1 and "VMDESCRIPTION trailer is not an object with a 'devices' list" in err


def test_device_version_that_is_not_a_number(capsys, tmp_path) -> None:
    doc = trailer_doc()
    next(d for d in doc["devices"] if d["name"] == "timer")["version"] = {}
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(json.dumps(doc).encode()))
    # was: TypeError "Object of type JsonObject is not JSON serializable" writing state.json
    for argv in (["analyze", str(path)], ["extract", str(path), "-o", str(tmp_path / "x")]):
        rc, err = run(capsys, *argv)
        assert rc == 2 and "'timer': version is not a non-negative integer" in err, err
    assert not (tmp_path / "x").exists()
    rc, err = run(capsys, "check", str(path))
    assert rc == 1 and "version is not a non-negative integer" in err


def test_page_size_too_large_for_the_compiled_walker(capsys, tmp_path) -> None:
    doc = trailer_doc()
    doc["page_size"] = 1 << 63  # was: OverflowError passing it to the compiled RAM walker
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(json.dumps(doc).encode()))
    for cmd in ("ram", "sections", "check"):
        rc, err = run(capsys, cmd, str(path))
        assert rc in (1, 2) and "RAM record" in err, (cmd, err)


@pytest.mark.parametrize("value", [{}, [4096], "4096", True])
def test_page_size_that_is_not_a_number(capsys, tmp_path, value) -> None:
    doc = trailer_doc()
    doc["page_size"] = value  # was: TypeError "Object of type JsonObject is not JSON serializable"
    path = tmp_path / "bad.bin"
    path.write_bytes(with_trailer(json.dumps(doc).encode()))
    out = tmp_path / "x"
    rc = main(["extract", str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc in (0, 1, 2) and "internal error" not in err and "Traceback" not in err, err
    if rc == 0:  # the description's page size is unknown, as vmig reads it everywhere
        state = json.loads((out / "state.json").read_text())
        assert state["description"]["page_size"] is None
    rc = main(["analyze", str(path)])
    text = capsys.readouterr()
    assert rc in (0, 1, 2) and "internal error" not in text.err, text.err
