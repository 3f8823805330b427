"""``vmig analyze`` in-process (``vmig.cli.main``) on s1.bin and the real fixtures."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import lz4.frame
import pytest

from vmig.cli import main
from vmig.testing import fixtures

S1 = fixtures.sample_s1()
TRAILER = 0x15FA78  # spec §0: 0x06 + be32 length + JSON to the end of s1.bin

# spec stream-format §7: FULL sections of s1.bin in stream order with their section ids
S1_FULL = [
    ("timer", 0), ("cpu_common", 4), ("cpu", 5), ("kvm-tpr-opt", 6), ("apic", 7), ("fw_cfg", 8),
    ("PCIHost", 9), ("PCIBUS", 10), ("0000:00:00.0/I440FX", 11), ("dma", 12), ("dma", 13),
    ("0000:00:01.0/PIIX3", 14), ("i8259", 15), ("i8259", 16), ("ioapic", 17), ("hpet", 18),
    ("mc146818rtc", 19), ("i8254", 20), ("pcspk", 21), ("fdc", 22), ("ps2kbd", 23),
    ("ps2mouse", 24), ("pckbd", 25), ("vmmouse", 26), ("port92", 27), ("0000:00:01.1/ide", 28),
    ("i2c_bus", 29), ("0000:00:01.3/piix4_pm", 30), ("0000:00:02.0/virtio-mem", 39),
    ("acpi_build", 40), ("globalstate", 41),
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["analyze", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def analyze_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    return json.loads(out)


def states(doc: dict[str, Any]) -> dict[tuple[str, int], Any]:
    return {(s["idstr"], s["instance_id"]): s.get("state") for s in doc["sections"] if s.get("kind") == "device"}


def test_vmig_format_on_s1(capsys: pytest.CaptureFixture[str]) -> None:
    doc = analyze_json(capsys, str(S1))
    assert doc["format"] == "vmig-analyze/1"
    assert doc["configuration"]["name"] == "pc-i440fx-7.2"
    assert doc["eof_offset"] == 0x15FA77 and doc["trailer"]["offset"] == TRAILER
    assert doc["trailer"]["length"] == 5 + 98810
    secs = doc["sections"]
    assert (secs[0]["idstr"], secs[0]["section_id"], secs[0]["records"]) == ("ram", 2, {"START": 1, "PART": 1, "END": 1})
    assert [(s["idstr"], s["section_id"]) for s in secs[1:]] == S1_FULL
    ram = secs[0]["ram"]
    # spec §0: the PART holds all 131 202 page records; START, PART and END each end with an EOS
    assert ram["records"]["zero"] + ram["records"]["page"] == 131202
    assert ram["records"]["eos"] == 3 and ram["records"]["mem_size"] == 1
    blocks = {b["idstr"]: b["used_length"] for b in ram["blocks"]}
    assert blocks["pc.ram"] == 512 << 20 and blocks["0000:00:02.0/mem0"] == 1 << 30
    st = states(doc)
    assert st[("timer", 0)]["unused"] == {"type": "unused_buffer", "size": 8, "hex": "00" * 8}
    assert st[("globalstate", 0)]["size"] == 10
    assert bytes.fromhex(st[("globalstate", 0)]["runstate"]["hex"])[:10] == b"prelaunch\x00"
    assert st[("mc146818rtc", 0)]["periodic_timer"] == -1
    assert st[("fdc", 0)]["state"]["drives"][1]["fdrive/media_rate"] == {"media_rate": 0}
    virtio = st[("0000:00:02.0/virtio-mem", 0)]["virtio"]
    assert virtio["type"] == "virtio" and virtio["size"] == 45661
    if "decoded" in virtio:  # the virtio-mem field codec is registered
        dev = virtio["decoded"]["device"]
        assert dev["requested_size"] == 128 << 20 and dev["tmp"]["region_size"] == 1 << 30
    else:
        assert len(virtio["hex"]) == 2 * 45661


def test_stdin_lz4_and_path_agree(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, by_path, _ = run(capsys, str(S1), "--format", "qemu")
    packed = tmp_path / "s1.bin.lz4"
    packed.write_bytes(lz4.frame.compress(S1.read_bytes()))
    _, by_lz4, _ = run(capsys, str(packed), "--format", "qemu")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(S1.read_bytes())))
    _, by_stdin, _ = run(capsys, "-", "--format", "qemu")
    assert by_path == by_lz4 == by_stdin
    assert list(json.loads(by_path))[:2] == ["ram (2)", "timer (0)"]


def test_desc_dump(capsys: pytest.CaptureFixture[str]) -> None:
    raw = S1.read_bytes()[TRAILER + 5:]
    for fmt in ("qemu", "vmig"):
        assert analyze_json(capsys, str(S1), "-d", "desc", "--format", fmt) == json.loads(raw)


def test_desc_from_decodes_a_stream_without_trailer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cut = tmp_path / "no-trailer.bin"
    cut.write_bytes(S1.read_bytes()[:TRAILER])  # everything up to and including EOF
    full = analyze_json(capsys, str(S1))
    # without a description, vmig's format falls back to the bundled pc-i440fx-7.2 schema set
    # and must find the same values as with the trailer; the QEMU-compatible format refuses
    # (the script needs the trailer) with one line, exit 2
    bare = analyze_json(capsys, str(cut))
    assert bare["description"]["source"] == "none"
    devices = [s for s in bare["sections"] if s.get("kind") == "device"]
    assert len(devices) == 31
    assert {s["description"] for s in devices} == {"builtin:pc-i440fx-7.2"}
    assert states(bare) == states(full)
    rc, out, err = run(capsys, str(cut), "--format", "qemu")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    doc = analyze_json(capsys, str(cut), "--desc-from", str(S1))
    assert doc["description"]["source"] == "desc-from" and doc["trailer"] is None
    assert {s["description"] for s in doc["sections"] if s.get("kind") == "device"} == {"desc-from"}
    assert states(doc) == states(full)
    qemu_cut = analyze_json(capsys, str(cut), "--desc-from", str(S1), "--format", "qemu")
    assert qemu_cut == analyze_json(capsys, str(S1), "--format", "qemu")


@pytest.mark.skipif("pc-novmdesc" not in fixtures.names(), reason="fixture not captured")
def test_suppress_vmdesc_fixture_with_its_manifest_desc_from(capsys: pytest.CaptureFixture[str]) -> None:
    other = fixtures.manifest("pc-novmdesc")["desc_from"]
    doc = analyze_json(capsys, str(fixtures.path("pc-novmdesc")), "--desc-from", str(fixtures.path(other)))
    ref = analyze_json(capsys, str(fixtures.path(other)))
    assert doc["trailer"] is None
    assert list(states(doc)) == list(states(ref))
    assert all(v is not None for v in states(doc).values())


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"QEVM\x00\x00\x00\x03", S1.read_bytes()[:5000], b"QEVM\x00\x00\x00\x02"],
    ids=["empty", "garbage", "header-only", "truncated", "old-version"],
)
def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "bad.bin"
    p.write_bytes(data)
    rc, out, err = run(capsys, str(p))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("vmig analyze: ")


def test_missing_file_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, str(tmp_path / "nope.bin"))
    assert rc == 2 and "nope.bin" in err


@pytest.mark.peer
def test_cli_qemu_format_equals_analyze_migration(capsys: pytest.CaptureFixture[str]) -> None:
    from vmig.testing import peer

    try:
        peer.fetch_analyze_migration()
    except Exception as e:  # noqa: BLE001
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"cannot fetch analyze-migration.py under CI: {e!r}")
        pytest.skip(f"cannot fetch analyze-migration.py: {e!r}")
    for dump in ("state", "desc"):
        prc, pout, perr = peer.run_peer(["-f", str(S1), "-d", dump])
        assert prc == 0, perr
        rc, out, err = run(capsys, str(S1), "--format", "qemu", "-d", dump)
        assert rc == 0, err
        assert out == pout


def test_packaged_device_state_with_desc_from(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A postcopy-shaped stream made from s1's own bytes (spec §6.4 step 9): RAM sections, then
    # PACKAGED(LISTEN, the 31 FULL sections, RUN), then EOF and no trailer.
    import struct

    data = S1.read_bytes()
    full = data[0x1515B7:0x15FA77]
    blob = b"\x08\x00\x04\x00\x00" + full + b"\x08\x00\x05\x00\x00"
    stream = data[:0x1515B7] + b"\x08\x00\x07\x00\x04" + struct.pack(">I", len(blob)) + blob + b"\x00"
    p = tmp_path / "packaged.bin"
    p.write_bytes(stream)
    doc = analyze_json(capsys, str(p), "--desc-from", str(S1))
    assert [c["cmd"] for c in doc["commands"]] == ["PACKAGED", "POSTCOPY_LISTEN", "POSTCOPY_RUN"]
    assert doc["commands"][0]["args"] == {"blob_length": len(blob)}
    devices = [s for s in doc["sections"] if s.get("kind") == "device"]
    assert len(devices) == 31 and all(s["packaged"] for s in devices)
    assert states(doc) == states(analyze_json(capsys, str(S1)))


@pytest.mark.skipif("postcopy-main" not in fixtures.names(), reason="fixture not captured")
def test_postcopy_fixture_builtin_schemas_agree_with_desc_from(capsys: pytest.CaptureFixture[str]) -> None:
    main_path = str(fixtures.path("postcopy-main"))
    other = fixtures.manifest("postcopy-main")["desc_from"]
    with_desc = analyze_json(capsys, main_path, "--desc-from", str(fixtures.path(other)))
    builtin = analyze_json(capsys, main_path)
    assert with_desc["trailer"] is None and with_desc["eof_offset"] is not None
    cmds = [c["cmd"] for c in with_desc["commands"]]
    assert {"POSTCOPY_ADVISE", "PACKAGED", "POSTCOPY_LISTEN", "POSTCOPY_RUN"} <= set(cmds)
    devices = [s for s in with_desc["sections"] if s.get("kind") == "device"]
    assert devices and all(s["packaged"] and s["state"] is not None for s in devices)
    assert states(builtin) == states(with_desc)
