"""The device model against real QEMU streams: s1.bin and the booted-guest fixtures.

* s1.bin (QEMU 7.2, pc-i440fx-7.2, paused, never plugged): a model built only from the
  command line (realize + the start-up reset) pre-saves the very bytes QEMU wrote.
* fixtures/*.bin.lz4 with virtio-mem (captured with a Linux guest after grows and shrinks):
  the model loaded from the stream re-encodes the virtio-mem section byte for byte, agrees with
  the manifest's ``query-memory-devices`` / HMP text (placement computed by the model from the
  argv), and keeps QEMU's load checks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vmig.device.cmdline import machine_from_argv
from vmig.device.sections import encode_early, encode_section, load_section, virtio_mem_sections
from vmig.errors import MigrationError
from vmig.io.streams import iter_events

S1_ARGV = ("-machine pc -accel tcg -m 512M,maxmem=4G -smp 1 -nodefaults -display none -S "
           "-object memory-backend-ram,id=mem0,size=1G "
           "-device virtio-mem-pci,id=vm0,memdev=mem0,requested-size=128M").split()
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"


@pytest.fixture(scope="module")
def s1_section(s1_path):
    secs = virtio_mem_sections(iter_events(str(s1_path)))
    assert [s.dev_path for s in secs] == ["0000:00:02.0"]
    return secs[0]


def test_s1_model_from_cmdline_presaves_qemus_bytes(s1_section):
    m = machine_from_argv(S1_ARGV)
    m.system_reset()
    dev = m.devices[0]
    assert encode_section(s1_section, dev) == s1_section.payload
    # and the values are what spec §6.2 reads from the capture
    d = s1_section.decoded.device
    assert (d.tmp.addr, d.usable_region_size, d.requested_size) == (0x100000000, 0x18000000, 0x8000000)


def test_s1_changed_model_changes_bytes(s1_section):
    m = machine_from_argv(S1_ARGV)
    dev = m.devices[0]
    dev.plug(dev.addr, 1)
    out = encode_section(s1_section, dev)
    assert out != s1_section.payload and len(out) == len(s1_section.payload)


def test_s1_load_into_wrong_destination_fails_like_qemu(s1_section):
    argv = [a.replace("requested-size=128M", "requested-size=128M,memaddr=0x140000000") for a in S1_ARGV]
    dest = machine_from_argv(argv).devices[0]
    with pytest.raises(MigrationError) as e:
        load_section(s1_section, dest)
    # spec §6.3 (verified on 7.2)
    assert str(e.value).splitlines() == [
        "Property 'memaddr' changed from 0x100000000 to 0x140000000",
        "Failed to load virtio-mem-device:tmp",
        "Failed to load virtio-mem:virtio",
        "error while loading state for instance 0x0 of device '0000:00:02.0/virtio-mem'",
        "load of migration failed: Invalid argument",
    ]


def test_s1_post_load_discards_whole_unplugged_backend(s1_section):
    dest = machine_from_argv(S1_ARGV).devices[0]
    res = load_section(s1_section, dest)
    assert res.discarded == ((0, 1 << 30),)


# ---------------------------------------------------------------------------------------------
# booted-guest fixtures
# ---------------------------------------------------------------------------------------------
def _virtio_mem_fixtures() -> list[str]:
    names = []
    for manifest in sorted(FIXTURES.glob("*.json")):
        try:
            man = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(man, dict) or man.get("kind") == "return-path":
            continue
        if "virtio-mem-pci" in " ".join(man.get("argv", [])) and (FIXTURES / f"{manifest.stem}.bin.lz4").exists():
            names.append(manifest.stem)
    return names


FIXTURE_NAMES = _virtio_mem_fixtures()


def _manifest(name: str) -> dict:
    try:
        from vmig.testing import fixtures as fx  # the lab's loader, once it exists
    except ImportError:
        return json.loads((FIXTURES / f"{name}.json").read_text())
    return fx.manifest(name)


def _qemu_version(man: dict) -> str:
    v = str(man.get("qemu_version", "7.2"))
    parts = v.replace("-", ".").split(".")
    return f"{parts[0]}.{parts[1]}" if len(parts) >= 2 and parts[0].isdigit() else "7.2"


def test_fixtures_present():
    if not FIXTURE_NAMES:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no virtio-mem fixtures under fixtures/ (expected pc-guest.bin.lz4 etc.)")
        pytest.skip("no virtio-mem fixtures captured yet")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_reencodes_identically(name):
    man = _manifest(name)
    path = str(FIXTURES / f"{name}.bin.lz4")
    desc_from = man.get("desc_from")
    kw = {"desc_from": str(FIXTURES / f"{desc_from}.bin.lz4")} if desc_from else {}
    secs = virtio_mem_sections(iter_events(path, **kw))
    m = machine_from_argv(man["argv"], qemu_version=_qemu_version(man))
    assert len(secs) == len(m.devices), "one virtio-mem section per -device virtio-mem-pci"
    for sec, dev in zip(secs, m.devices):
        load_section(sec, dev)
        assert encode_section(sec, dev) == sec.payload
        if sec.early_payload is not None:
            assert encode_early(dev) == sec.early_payload
        # the model's consistency with what QEMU wrote: size == popcount × bs on real captures
        assert dev.size == int(np.count_nonzero(dev.bitmap)) * dev.block_size
        assert dev.check_invariants() == []
    qmd = man.get("query-memory-devices")
    if qmd is not None:
        assert m.query_memory_devices() == [d for d in qmd if d.get("type") == "virtio-mem"]
    hmp = man.get("hmp-info-memory-devices")
    if hmp:
        assert m.hmp_info_memory_devices() == hmp.replace("\r\n", "\n")


# The resize histories of the Linux-guest captures, as fixtures/README-fixtures.md and the
# manifests' notes describe them: boot value from the argv, then the qom-set values in order.
GUEST_HISTORIES = {
    "pc-guest": {"vm0": [768 << 20, 300 << 20]},
    "q35-numa": {"vm0": [384 << 20], "vm1": [640 << 20, 332 << 20]},
    "postcopy-desc": {"vm0": [768 << 20, 416 << 20]},
    "postcopy-main": {"vm0": [768 << 20, 416 << 20]},
}


@pytest.mark.parametrize("name", [n for n in GUEST_HISTORIES if n in FIXTURE_NAMES])
def test_guest_simulator_reaches_the_captured_state(name):
    """Model + simulated Linux driver, driven through the capture's history, pre-save the very
    virtio-mem-device bytes QEMU wrote after the real Linux 6.1 guest did the same."""
    from vmig.device.guest import DriverState, GuestDriver

    man = _manifest(name)
    assert "guest" in man, f"{name} is no longer a Linux-guest capture: update GUEST_HISTORIES"
    final = {d["data"]["id"]: d["data"]["requested-size"]
             for d in man.get("source-query-memory-devices", man["query-memory-devices"])}
    assert final == {k: v[-1] for k, v in GUEST_HISTORIES[name].items()}, "history out of date"
    m = machine_from_argv(man["argv"], qemu_version=_qemu_version(man))
    m.system_reset()
    drivers = {d.id: GuestDriver(d) for d in m.devices}
    for g in drivers.values():
        assert g.probe() is DriverState.IDLE
    for dev_id, values in GUEST_HISTORIES[name].items():
        for v in values:
            m.qom_set(dev_id, "requested-size", v)
            assert drivers[dev_id].run() is DriverState.IDLE
    desc_from = man.get("desc_from")
    kw = {"desc_from": str(FIXTURES / f"{desc_from}.bin.lz4")} if desc_from else {}
    secs = virtio_mem_sections(iter_events(str(FIXTURES / f"{name}.bin.lz4"), **kw))
    assert len(secs) == len(m.devices)
    for sec, dev in zip(secs, m.devices):
        assert encode_section(sec, dev) == sec.payload, (name, dev.id)
