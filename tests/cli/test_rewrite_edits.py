"""``vmig rewrite IN OUT --set/--virtio-mem/--drop`` on real captures: the edited stream, read back
by ``vmig analyze`` (the decoder, not the editor), has the edited values and nothing else
changed; edits QEMU would reject exit 2 with one line naming why."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vmig.cli import main
from vmig.io.decoding import decode_bytes
from vmig.stream import events as ev
from vmig.stream.constants import MigCmd
from vmig.stream.vmdesc import find_trailer
from vmig.testing import fixtures

BS = 2 << 20
VMEM = "0000:00:02.0/virtio-mem"


@pytest.fixture(scope="module")
def paused(tmp_path_factory) -> Path:  # noqa: ANN001
    p = tmp_path_factory.mktemp("in") / "pc-paused.bin"
    p.write_bytes(fixtures.load("pc-paused"))
    return p


def _analyze(path: Path, capsys) -> dict:  # noqa: ANN001
    capsys.readouterr()
    assert main(["analyze", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def _sections(doc: dict) -> dict:
    return {(s["idstr"], s["instance_id"]): s for s in doc["sections"]}


def _vmem(doc: dict, idstr: str = VMEM) -> dict:
    return _sections(doc)[(idstr, 0)]["state"]["virtio"]["decoded"]["device"]


def _rewrite(paused: Path, out: Path, capsys, *edits: str) -> tuple[int, str]:  # noqa: ANN001
    capsys.readouterr()
    rc = main(["rewrite", str(paused), str(out), *edits])
    return rc, capsys.readouterr().err


def test_virtio_mem_requested_size_through_model(paused, tmp_path, capsys):
    before = _analyze(paused, capsys)
    out = tmp_path / "out.bin"
    rc, err = _rewrite(paused, out, capsys, "--virtio-mem", "0000:00:02.0:requested-size=512M")
    assert rc == 0, err
    assert out.stat().st_size == paused.stat().st_size
    dev = _vmem(_analyze(out, capsys))
    assert dev["requested_size"] == 512 << 20
    # QEMU grows the usable region on a requested-size write; 128M had 384M usable
    assert _vmem(before)["usable_region_size"] == 384 << 20
    assert dev["usable_region_size"] >= 512 << 20
    assert dev["size"] == 0 and dev["bitmap"]["set"] == 0


def test_virtio_mem_plugged_sets_bitmap_and_size(paused, tmp_path, capsys):
    out = tmp_path / "out.bin"
    rc, err = _rewrite(paused, out, capsys, "--virtio-mem", "0:plugged=0-9,100-104")
    assert rc == 0, err
    doc = _analyze(out, capsys)
    dev = _vmem(doc)
    assert dev["bitmap"]["set"] == 15
    assert dev["size"] == 15 * BS
    assert dev["requested_size"] == 128 << 20  # unchanged
    # every other section is byte-identical
    a, b = _sections(_analyze(paused, capsys)), _sections(doc)
    assert [k for k in a if a[k].get("state") != b[k].get("state")] == [(VMEM, 0)]


def test_set_field_and_drop_section(paused, tmp_path, capsys):
    out = tmp_path / "out.bin"
    rc, err = _rewrite(paused, out, capsys, "--set", "mc146818rtc.cmos_index=0x0b",
                       "--set", f"{VMEM}.virtio.decoded.device.requested_size=0x10000000",
                       "--drop", "pcspk")
    assert rc == 0, err
    before, doc = _analyze(paused, capsys), _analyze(out, capsys)
    secs = _sections(doc)
    assert secs[("mc146818rtc", 0)]["state"]["cmos_index"] == 11
    assert _vmem(doc)["requested_size"] == 0x10000000
    assert ("pcspk", 0) not in secs and ("pcspk", 0) in _sections(before)
    assert len(secs) == len(_sections(before)) - 1
    # the trailer lost pcspk's entry and still describes every other section
    assert doc["description"]["devices"] == before["description"]["devices"] - 1
    assert doc["trailer"]["offset"] + doc["trailer"]["length"] == out.stat().st_size
    capsys.readouterr()
    assert main(["check", str(out)]) == 0


@pytest.mark.parametrize(("edit", "why"), [
    (["--virtio-mem", "0000:00:02.0:requested-size=3M"], "has to be multiples of 'block-size'"),
    (["--virtio-mem", "0000:00:02.0:requested-size=2G"], "cannot exceed the memory backend size"),
    (["--virtio-mem", "0:plugged=0-600"], "plugged block 600 is outside the device"),
    (["--virtio-mem", "0:plugged=190-200"], "plugged block 192 is beyond the usable region"),
    (["--virtio-mem", "0000:00:09.0:plugged=1"], "no devices match"),
    (["--set", f"{VMEM}.virtio.decoded.device.bitmap=0"], "cannot be set from text"),
    (["--set", "mc146818rtc.cmos_index=x"], "expected an integer"),
    (["--set", "mc146818rtc.cmos_index=0x100"], "mc146818rtc"),
    (["--set", "mc146818rtc.no_such_field=1"], "no field 'no_such_field'"),
    (["--set", "dma.command=1"], "matches 2 sections"),
    (["--set", "dma (2).command=1"], "no device section matches"),
    (["--drop", "ram"], "ram is an iterative section"),
    (["--drop", "nothing-like-this"], "no device section"),
])
def test_refused_edits_one_line(paused, tmp_path, capsys, edit, why):
    out = tmp_path / "out.bin"
    rc, err = _rewrite(paused, out, capsys, *edit)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and why in err, err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_instance_named_as_qemus_script_names_it(paused, tmp_path, capsys):
    out = tmp_path / "out.bin"
    rc, err = _rewrite(paused, out, capsys, "--set", "dma (1).mask=0x0f", "--drop", "i8259 (1)")
    assert rc == 0, err
    before, secs = _sections(_analyze(paused, capsys)), _sections(_analyze(out, capsys))
    assert secs[("dma", 1)]["state"]["mask"] == 15
    assert secs[("dma", 0)]["state"] == before[("dma", 0)]["state"]
    assert ("i8259", 1) not in secs and ("i8259", 0) in secs


def test_two_devices_by_index_and_path(tmp_path, capsys):
    src = tmp_path / "q35.bin"
    src.write_bytes(fixtures.load("q35-numa"))
    out = tmp_path / "out.bin"
    # index 1 = the second device `vmig info memory-devices` lists: 0000:00:02.0, 4M blocks
    rc, err = _rewrite(src, out, capsys, "--virtio-mem", "1:requested-size=6M")
    assert rc == 2 and "0000:00:02.0" in err and "(0x400000)" in err, err
    rc, err = _rewrite(src, out, capsys, "--virtio-mem", "0:requested-size=6M")
    assert rc == 0, err
    assert _vmem(_analyze(out, capsys), "0000:00:01.0/virtio-mem")["requested_size"] == 6 << 20
    rc, err = _rewrite(src, out, capsys, "--virtio-mem", "requested-size=512M")
    assert rc == 2 and "2 virtio-mem devices" in err
    rc, err = _rewrite(src, out, capsys, "--virtio-mem", "0000:00:02.0:plugged=0-3")
    assert rc == 0, err
    doc = _analyze(out, capsys)
    assert _vmem(doc, "0000:00:02.0/virtio-mem")["size"] == 4 * (4 << 20)
    assert _vmem(doc, "0000:00:01.0/virtio-mem") == _vmem(_analyze(src, capsys), "0000:00:01.0/virtio-mem")


def test_trailerless_postcopy_stream_uses_bundled_schemas(tmp_path, capsys):
    """postcopy-main has no trailer and its device sections are inside PACKAGED: --set decodes
    them with the bundled machine schema set."""
    src = tmp_path / "pc.bin"
    src.write_bytes(fixtures.load("postcopy-main"))
    out = tmp_path / "out.bin"
    rc, err = _rewrite(src, out, capsys, "--set", "mc146818rtc.cmos_index=0x0c")
    assert rc == 0, err
    assert out.stat().st_size == src.stat().st_size
    secs = _sections(_analyze(out, capsys))
    assert secs[("mc146818rtc", 0)]["state"]["cmos_index"] == 12


def _leaves(events: list) -> list:
    """The records of a decoded stream in order, PACKAGED commands replaced by their children."""
    out = []
    for e in events:
        if isinstance(e, ev.Command) and e.cmd == MigCmd.PACKAGED:
            out.extend(_leaves(list(e.children)))
        else:
            out.append(e)
    return out


def test_drop_inside_postcopy_packaged_blob(tmp_path, capsys):
    """In a postcopy capture every device section is inside the PACKAGED blob: --drop cuts the
    section's whole record (header, payload, footer) out of the blob and the PACKAGED command's
    be32 blob length shrinks by as much; every other byte of the stream is the input's."""
    data = fixtures.load("postcopy-main")
    src = tmp_path / "pc.bin"
    src.write_bytes(data)
    before = decode_bytes(data)
    [pkg] = [e for e in before if isinstance(e, ev.Command) and e.cmd == MigCmd.PACKAGED]
    [dev] = [e for e in pkg.children if isinstance(e, ev.DeviceState) and e.idstr == "serial"]
    [rec] = [e for e in pkg.children if isinstance(e, ev.SectionEnd)
             and e.section_offset <= dev.offset < e.section_offset + e.section_length]
    a, b = rec.section_offset, rec.section_offset + rec.section_length
    assert b - a == 20 + 11 + 5  # FULL header with "serial", 11-byte payload, footer
    old_len = struct.unpack_from(">I", data, pkg.offset + 5)[0]
    assert pkg.offset + 9 + old_len == pkg.offset + pkg.length

    out = tmp_path / "out.bin"
    rc, err = _rewrite(src, out, capsys, "--drop", "serial")
    assert rc == 0, err
    new = out.read_bytes()
    # byte for byte: the record gone, the blob length 36 smaller, nothing else touched
    new_len = struct.unpack_from(">I", new, pkg.offset + 5)[0]
    assert new_len == old_len - (b - a)
    assert new == data[:pkg.offset + 5] + struct.pack(">I", new_len) + data[pkg.offset + 9:a] + data[b:]

    after = decode_bytes(new)
    [pkg2] = [e for e in after if isinstance(e, ev.Command) and e.cmd == MigCmd.PACKAGED]
    # the blob the decoder reads is exactly new_len bytes: the next record starts right after it
    nxt = after[after.index(pkg2) + 1]
    assert nxt.offset == pkg2.offset + 9 + new_len
    names = [(e.idstr, e.instance_id) for e in pkg2.children if isinstance(e, ev.DeviceState)]
    old_names = [(e.idstr, e.instance_id) for e in pkg.children if isinstance(e, ev.DeviceState)]
    assert ("serial", 0) in old_names and ("serial", 0) not in names
    assert names == [n for n in old_names if n != ("serial", 0)]
    # every other record (top level and in the blob) has the input's bytes
    kept = [e for e in _leaves(before) if not a <= e.offset < b]
    now = _leaves(after)
    assert [type(e) for e in kept] == [type(e) for e in now]
    assert all(data[x.offset:x.offset + x.length] == new[y.offset:y.offset + y.length]
               for x, y in zip(kept, now, strict=True))
    # a postcopy stream has no trailer (QEMU writes none in postcopy); none appears
    assert find_trailer(data) is None and find_trailer(new) is None
    assert _sections(_analyze(out, capsys)).keys() == _sections(_analyze(src, capsys)).keys() - {("serial", 0)}

    # the result re-encodes to itself
    again = tmp_path / "again.bin"
    rc, err = _rewrite(out, again, capsys)
    assert rc == 0, err
    assert again.read_bytes() == new


def test_drop_iterative_section_of_postcopy_stream_refused(tmp_path, capsys):
    src = tmp_path / "pc.bin"
    src.write_bytes(fixtures.load("postcopy-main"))
    out = tmp_path / "out.bin"
    rc, err = _rewrite(src, out, capsys, "--drop", "ram")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "ram is an iterative section" in err and "only device (FULL) sections" in err
    assert not out.exists()
