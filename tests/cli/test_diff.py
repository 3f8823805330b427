"""``vmig diff``: real captures, edited and engine-written variants of them."""

from __future__ import annotations

import json

from vmig.analysis.edit import set_virtio_mem_plugged
from vmig.cli import main
from vmig.io.streams import iter_events
from vmig.migration.destination import Destination
from vmig.migration.ram import GuestRam
from vmig.migration.source import PrecopySource, StreamTemplate
from vmig.testing import fixtures


def _run(capsys, *argv):
    rc = main(["diff", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_stream_equals_itself(capsys):
    p = str(fixtures.path("pc-running"))
    rc, out, _ = _run(capsys, p, p)
    assert rc == 0 and out.startswith("same: ")


def test_edited_virtio_mem_state_is_the_only_difference(tmp_path, capsys):
    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    data = fixtures.load("pc-paused")
    a.write_bytes(data)
    b.write_bytes(set_virtio_mem_plugged(data, [0, 1, 2, 3, 100]))
    rc, out, _ = _run(capsys, str(a), str(b), "--json")
    doc = json.loads(out)
    assert rc == 1 and not doc["same"]
    diffs = doc["differences"]
    assert {d["kind"] for d in diffs} == {"field"}
    assert all(d["path"].startswith("0000:00:02.0/virtio-mem[0].") for d in diffs)
    by_path = {d["path"][len("0000:00:02.0/virtio-mem[0]."):]: (d["a"], d["b"]) for d in diffs}
    dev = "virtio.decoded.device."
    assert by_path[dev + "size"] == (0, 10 << 20)  # paused VM: nothing plugged
    assert by_path[dev + "bitmap"] == ([], [[0, 4], [100, 101]])  # the plugged blocks as ranges
    rc, out, _ = _run(capsys, str(a), str(b))
    assert f"{dev}size: 0x0 -> {10 << 20:#x}" in out
    assert f"{dev}bitmap: [] (none set) -> [[0, 4), [100, 101)]" in out


def test_a_page_written_by_the_engine_is_found(tmp_path, capsys):
    evs = list(iter_events(str(fixtures.path("pc-paused")), schema_sets=True))
    ram = GuestRam.from_images(Destination().load(evs).images)
    src = PrecopySource(StreamTemplate.from_events(evs), ram)
    data = src.setup() + src.iterate(1000)
    ram.write("pc.ram", 0x200010, b"\x01\x02")  # one page, after the first pass sent it
    ram.write("pc.ram", 0x300000, b"\xff" * 8192)  # two pages
    data += src.iterate() + src.complete()
    b = tmp_path / "b.bin"
    b.write_bytes(data)
    rc, out, _ = _run(capsys, str(fixtures.path("pc-paused")), str(b))
    assert rc == 1
    assert out.splitlines() == [
        "ram pc.ram[0x200000, 0x201000): contents differ (non-zero pages: A 0, B 1)",
        "ram pc.ram[0x300000, 0x302000): contents differ (non-zero pages: A 0, B 2)"]
    rc, out, _ = _run(capsys, str(fixtures.path("pc-paused")), str(b), "--json")
    assert json.loads(out)["differences"] == [
        {"kind": "ram", "path": "pc.ram[0x200000, 0x201000)", "a": 0, "b": 1},
        {"kind": "ram", "path": "pc.ram[0x300000, 0x302000)", "a": 0, "b": 2}]
    rc, out, _ = _run(capsys, str(fixtures.path("pc-paused")), str(b), "--ignore", "pc.ram")
    assert rc == 0 and out.startswith("same: ")
    rc, out, _ = _run(capsys, str(b), str(b))
    assert rc == 0


def test_different_machines_list_their_sections_and_configuration(capsys):
    rc, out, _ = _run(capsys, str(fixtures.path("pc-paused")), str(fixtures.path("q35-numa")), "--json")
    doc = json.loads(out)
    assert rc == 1
    diffs = doc["differences"]
    assert [d for d in diffs if d["kind"] == "config"] == [
        {"kind": "config", "path": "configuration.name", "a": "pc-i440fx-7.2", "b": "pc-q35-7.2"}]
    only_a = {d["path"] for d in diffs if d["kind"] == "section" and d["b"] is None}
    only_b = {d["path"] for d in diffs if d["kind"] == "section" and d["a"] is None}
    assert {"0000:00:00.0/I440FX[0]", "0000:00:01.0/PIIX3[0]", "RAMBlock pc.ram"} <= only_a
    assert {"0000:00:1f.0/ICH9LPC[0]", "cpu[1]", "RAMBlock ram0", "RAMBlock ram1"} <= only_b
    assert "timer[0]" not in only_a | only_b
    i440fx = next(d for d in diffs if d["path"] == "0000:00:00.0/I440FX[0]")
    assert i440fx["a"] == 3  # the section's version in A; absent (null) in B


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "cut.bin"
    bad.write_bytes(fixtures.load("pc-paused")[:5000])
    rc, out, err = _run(capsys, str(fixtures.path("pc-paused")), str(bad))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "offset" in err
