"""The committed real-QEMU fixtures: present, intact, and their manifests coherent with the bytes.

Checks use only facts QEMU itself produced (manifest values from QMP/HMP, the stream bytes) and
the wire format of the spec (header, CONFIGURATION type byte, trailer framing, return-path
message framing); nothing here is computed by vmig's codec.
"""

from __future__ import annotations

import hashlib
import re
import struct

import pytest

from vmig.stream.constants import RpMsg
from vmig.testing import fixtures

EXPECTED = {
    "pc-paused", "pc-nofooter", "pc-noconfig", "pc-novmdesc", "pc-guest", "pc-running",
    "q35-numa", "postcopy-main", "postcopy-rp", "postcopy-desc",
}
STREAMS = sorted(EXPECTED - {"postcopy-rp"})
NO_TRAILER = {"pc-novmdesc", "postcopy-main"}


def has_trailer(data: bytes) -> bool:
    """True if the stream ends with ``0x06, be32 len, len bytes of JSON`` right after EOF (0x00)."""
    start = data.rfind(b'{"page_size"')
    if start < 6:
        return False
    (n,) = struct.unpack(">I", data[start - 4:start])
    return data[start - 5] == 0x06 and data[start - 6] == 0x00 and start + n == len(data)


def test_all_expected_fixtures_present() -> None:
    assert set(fixtures.names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stream_matches_manifest(name: str) -> None:
    man = fixtures.manifest(name)
    data = fixtures.load(name)
    assert man["name"] == name
    assert man["qemu_version"].startswith("7.2.")
    assert len(data) == man["stream_size"]
    assert hashlib.sha256(data).hexdigest() == man["stream_sha256"]
    assert isinstance(man["argv"], list) and man["argv"]
    assert man["query-migrate"]["status"] == "completed"
    if man["kind"] == "return-path":
        assert not data.startswith(b"QEVM")
    else:
        assert data[:8] == b"QEVM\x00\x00\x00\x03"
        assert man["reload_ok"] is True
        assert man["reload_memory_devices_match"] is True


@pytest.mark.parametrize("name", STREAMS)
def test_trailer_presence_follows_configuration(name: str) -> None:
    data = fixtures.load(name)
    assert has_trailer(data) == (name not in NO_TRAILER)


@pytest.mark.parametrize("name", STREAMS)
def test_desc_from_names_a_trailer_of_the_same_machine(name: str) -> None:
    man = fixtures.manifest(name)
    other = man.get("desc_from")
    if name in NO_TRAILER:
        assert other, f"{name} has no trailer, so its manifest must say where one comes from"
    if other is None:
        return
    assert other in EXPECTED and other != name
    assert has_trailer(fixtures.load(other))
    oman = fixtures.manifest(other)
    assert oman["machine"] == man["machine"]
    # same devices: the command lines differ at most by the option that was switched off
    strip = {"-global", "migration.send-section-footer=off", "migration.send-configuration=off"}
    mine = [a.replace(",suppress-vmdesc=on", "") for a in man["argv"] if a not in strip]
    assert mine == oman["argv"]


def test_configuration_record_only_when_enabled() -> None:
    # 0x07 (CONFIGURATION) follows the 8-byte header unless migration.send-configuration=off
    assert fixtures.load("pc-paused")[8] == 0x07
    assert fixtures.load("pc-noconfig")[8] != 0x07
    assert "migration.send-configuration=off" in fixtures.manifest("pc-noconfig")["argv"]


def test_footers_off_makes_stream_shorter_by_one_footer_per_section() -> None:
    # each section footer is 0x7e + be32 section id; the first one closes the ram START section
    on, off = fixtures.load("pc-paused"), fixtures.load("pc-nofooter")
    assert "migration.send-section-footer=off" in fixtures.manifest("pc-nofooter")["argv"]
    assert len(off) < len(on)
    start_end = on.index(b"\x7e\x00\x00\x00\x02")  # footer of section id 2 ("ram")
    assert off[:start_end] == on[:start_end]
    assert off[start_end:start_end + 5] != on[start_end:start_end + 5]


def _hmp_devices(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    cur: dict[str, str] | None = None
    for line in text.replace("\r\n", "\n").splitlines():
        m = re.match(r'Memory device \[([\w-]+)\]: "([^"]*)"', line)
        if m:
            cur = out.setdefault(m.group(2), {"type": m.group(1)})
        elif cur is not None and ":" in line:
            k, v = line.strip().split(":", 1)
            cur[k.strip()] = v.strip()
    return out


@pytest.mark.parametrize("name", STREAMS)
def test_hmp_text_agrees_with_query_memory_devices(name: str) -> None:
    man = fixtures.manifest(name)
    qmd = man["query-memory-devices"]
    hmp = _hmp_devices(man["hmp-info-memory-devices"])
    assert len(hmp) == len(qmd) >= 1
    for dev in qmd:
        d = dev["data"]
        h = hmp[d["id"]]
        assert h["type"] == dev["type"] == "virtio-mem"
        assert int(h["memaddr"], 16) == d["memaddr"]
        assert int(h["size"]) == d["size"]
        assert int(h["requested-size"]) == d["requested-size"]
        assert int(h["block-size"]) == d["block-size"]
        assert int(h["node"]) == d["node"]


def test_guest_fixtures_plugged_what_was_requested() -> None:
    MiB = 1 << 20
    sizes = {d["data"]["id"]: d["data"]["size"]
             for d in fixtures.manifest("pc-guest")["query-memory-devices"]}
    assert sizes == {"vm0": 300 * MiB}
    numa = {d["data"]["id"]: (d["data"]["node"], d["data"]["size"], d["data"]["block-size"])
            for d in fixtures.manifest("q35-numa")["query-memory-devices"]}
    assert numa == {"vm0": (0, 384 * MiB, 2 * MiB), "vm1": (1, 332 * MiB, 4 * MiB)}
    assert fixtures.manifest("pc-paused")["query-memory-devices"][0]["data"]["size"] == 0


def test_running_capture_went_through_several_dirty_passes() -> None:
    ram = fixtures.manifest("pc-running")["query-migrate"]["ram"]
    assert ram["dirty-sync-count"] >= 3
    assert ram["normal"] > 0


def test_postcopy_pair() -> None:
    main, rp = fixtures.manifest("postcopy-main"), fixtures.manifest("postcopy-rp")
    assert main["kind"] == "postcopy" and rp["kind"] == "return-path"
    assert main["return_path"] == "postcopy-rp" and rp["pair"] == "postcopy-main"
    assert main["capabilities"] == {"postcopy-ram": True}
    assert main["destination-query-migrate"]["status"] == "completed"
    assert main["query-migrate"]["ram"]["postcopy-bytes"] > 0
    assert main["query-memory-devices"] == main["source-query-memory-devices"]
    assert fixtures.manifest("postcopy-desc")["argv"] == main["argv"]


def test_return_path_is_a_sequence_of_framed_messages() -> None:
    data = fixtures.load("postcopy-rp")
    off, kinds = 0, []
    while off < len(data):
        mtype, mlen = struct.unpack_from(">HH", data, off)
        off += 4 + mlen
        kinds.append(RpMsg(mtype))
    assert off == len(data)
    assert kinds[-1] == RpMsg.SHUT
    assert RpMsg.REQ_PAGES_ID in kinds and RpMsg.PONG in kinds


def test_sample_s1_is_the_spec_capture(s1_path) -> None:  # type: ignore[no-untyped-def]
    data = s1_path.read_bytes()
    assert len(data) == 1539191 and data[:4] == b"QEVM"
    # pc-paused is the same command line captured again: same header, configuration and ram START
    assert fixtures.load("pc-paused")[:0x1a] == data[:0x1a]
