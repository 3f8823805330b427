"""``vmig rp``: the real postcopy return path (lz4 file, plain file, stdin), JSON and text
output, summary against the main stream's query-migrate, bad input -> one line, exit 2."""

from __future__ import annotations

import io
import json
import struct
import sys

import pytest

from vmig.cli import main
from vmig.testing import fixtures

RP_PATH = str(fixtures.path("postcopy-rp"))
RP = fixtures.load("postcopy-rp")


def run_json(capsys, *argv) -> dict:
    assert main(["rp", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def ref_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Independent framing: (offset, length, type, payload)."""
    out, p = [], 0
    while p < len(data):
        t, n = struct.unpack_from(">HH", data, p)
        out.append((p, 4 + n, t, data[p + 4:p + 4 + n]))
        p += 4 + n
    return out


def test_json_on_the_real_capture(capsys):
    doc = run_json(capsys, RP_PATH)
    assert set(doc) == {"messages", "summary"}
    msgs = doc["messages"]
    ref = ref_messages(RP)
    assert [(m["offset"], m["length"]) for m in msgs] == [(o, n) for o, n, _, _ in ref]
    names = {1: "SHUT", 2: "PONG", 3: "REQ_PAGES_ID", 4: "REQ_PAGES"}
    assert [m["type"] for m in msgs] == [names[t] for _, _, t, _ in ref]
    # values against the raw bytes
    expect_bytes: dict[str, int] = {}
    expect_count: dict[str, int] = {}
    last = None
    for m, (_, _, t, payload) in zip(msgs, ref):
        if t in (1, 2):
            key = "status" if t == 1 else "value"
            assert m["args"] == {key: struct.unpack(">I", payload)[0]}
        else:
            start, n = struct.unpack_from(">QI", payload)
            if t == 3:
                last = payload[13:].decode()
            assert m["args"] == {"start": start, "len": n, "idstr": last}
            expect_bytes[last] = expect_bytes.get(last, 0) + n
            expect_count[last] = expect_count.get(last, 0) + 1
    s = doc["summary"]
    assert s["pongs"] == [1, 2, 4, 3]
    assert s["shutdown_status"] == 0
    assert s["messages"] == len(ref)
    assert s["page_requests_total"] == fixtures.manifest("postcopy-main")["query-migrate"]["ram"]["postcopy-requests"]
    assert s["page_requests"] == {k: {"requests": expect_count[k], "bytes": expect_bytes[k]} for k in expect_count}


def test_plain_file_and_stdin_give_the_same_json(capsys, tmp_path, monkeypatch):
    ref = run_json(capsys, RP_PATH)
    plain = tmp_path / "rp.bin"
    plain.write_bytes(RP)
    assert run_json(capsys, str(plain)) == ref
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(RP)))
    assert run_json(capsys, "-") == ref


def test_text_output(capsys):
    assert main(["rp", RP_PATH]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = lines[1:1 + len(ref_messages(RP))]
    assert rows[0].split() == ["0x00000000", "8", "PONG", "value=1"]
    assert rows[4].split() == ["0x0000002f", "16", "REQ_PAGES", "start=0x1239f000", "len=4096", "idstr=pc.ram"]
    assert rows[-1].split() == ["0x00000093", "8", "SHUT", "status=0"]
    tail = lines[1 + len(rows):]
    assert tail[0] == "pongs: 1, 2, 4, 3"
    assert tail[1] == "page requests: 5"
    assert "  pc.ram: 4 requests, 16384 bytes" in tail
    assert "  /rom@etc/acpi/tables: 1 requests, 4096 bytes" in tail
    assert tail[-1] == "shutdown: 0"


def test_recv_bitmap_json(capsys, tmp_path):
    words = struct.pack("<QQ", 0b1110, 1 << 63)
    data = (struct.pack(">HHB", 5, 5, 4) + b"mem0" + struct.pack(">Q", 16) + words
            + struct.pack(">Q", 0x0123456789ABCDEF) + struct.pack(">HHI", 1, 4, 0))
    f = tmp_path / "bm.bin"
    f.write_bytes(data)
    doc = run_json(capsys, str(f))
    assert doc["messages"][0] == {"offset": 0, "length": 9 + 32, "type": "RECV_BITMAP",
                                  "args": {"idstr": "mem0", "size": 16, "received": 4,
                                           "received_runs": [[1, 3], [127, 1]]}}
    assert doc["summary"]["pongs"] == [] and doc["summary"]["page_requests"] == {}


@pytest.mark.parametrize("data,needle", [
    (RP[:-3], "input ends inside a SHUT message"),
    (RP[:-8], "input ends before SHUT"),
    (b"\x00\x09\x00\x00", "unknown return-path message type"),
    (b"\x00\x02\x00\x05", "PONG message with a wrong length"),
    (struct.pack(">HHQI", 4, 12, 0, 4096), "REQ_PAGES without a previous REQ_PAGES_ID"),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, data, needle):
    f = tmp_path / "bad.bin"
    f.write_bytes(data)
    assert main(["rp", str(f)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err.strip()
    assert "\n" not in err and err.startswith("vmig rp: ") and str(f) in err and needle in err


def test_partial_accepts_a_capture_without_shut(capsys, tmp_path):
    f = tmp_path / "cut.bin"
    f.write_bytes(RP[:-8])
    doc = run_json(capsys, str(f), "--partial")
    assert doc["summary"]["shutdown_status"] is None and doc["summary"]["pongs"] == [1, 2, 4, 3]


def test_missing_file(capsys, tmp_path):
    assert main(["rp", str(tmp_path / "nope.bin")]) == 2
    assert "cannot open" in capsys.readouterr().err
