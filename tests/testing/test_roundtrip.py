"""vmig.testing.roundtrip against real captures (s1.bin, fixtures/) and real QEMU 7.2 (-m qemu)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmig.analysis.edit import edit_device_state, set_virtio_mem_plugged
from vmig.errors import UsageError
from vmig.stream import DeviceState
from vmig.testing import fixtures, roundtrip
from vmig.testing.pytest_plugin import qemu_loader, vmig_roundtrip  # noqa: F401  (fixtures)
from vmig.testing.roundtrip import (
    assert_roundtrip,
    describe_mismatch,
    memory_devices,
)
from vmig.vmstate import virtio_mem as vm

STREAMS = [n for n in fixtures.names() if n != "postcopy-rp"]  # postcopy-rp is a return path
MiB = 1 << 20
VMEM_IDSTR = b"0000:00:02.0/virtio-mem"


def _full_section_start(data: bytes, idstr: bytes) -> int:
    """Offset of the FULL section header carrying ``idstr`` (type 0x04, be32 id, len, idstr)."""
    i = data.find(bytes([len(idstr)]) + idstr)
    assert i > 5 and data[i - 5] == 0x04
    return i - 5


def _vmem_state(data: bytes) -> tuple[DeviceState, object]:
    (e,) = [e for e in roundtrip.decode_stream(data)
            if isinstance(e, DeviceState) and e.idstr.endswith(vm.IDSTR_SUFFIX)]
    return e, vm.decode_virtio_mem(e.payload)


@pytest.mark.parametrize("name", STREAMS)
def test_fixtures_round_trip(name: str, vmig_roundtrip) -> None:  # noqa: F811
    data = fixtures.load(name)
    events = vmig_roundtrip(data)
    assert events[-1].offset == len(data)


def test_s1_round_trips(s1_path: Path) -> None:
    data = s1_path.read_bytes()
    events = assert_roundtrip(data)
    assert any(isinstance(e, DeviceState) and e.idstr.encode() == VMEM_IDSTR for e in events)


def test_mismatch_reporter_names_offset_and_section(s1_path: Path) -> None:
    data = s1_path.read_bytes()
    events = assert_roundtrip(data)
    start = _full_section_start(data, VMEM_IDSTR)
    off = start + 5 + 1 + len(VMEM_IDSTR) + 8 + 40  # inside the payload, past the header
    bad = bytearray(data)
    bad[off] ^= 0xFF
    msg = describe_mismatch(data, bytes(bad), events, description="s1")
    assert msg is not None and msg.startswith("s1: ")
    assert f"byte offset {off} " in msg
    assert f"expected 0x{data[off]:02x}, got 0x{data[off] ^ 0xFF:02x}" in msg
    assert "'0000:00:02.0/virtio-mem'" in msg and f"at offset {start} " in msg
    assert "section_full" in msg
    assert describe_mismatch(data, data, events) is None
    short = describe_mismatch(data, data[:-3], events)
    assert short is not None and f"byte offset {len(data) - 3} " in short and "end of stream" in short


def test_assert_roundtrip_fails_when_the_encoder_changes_a_byte(monkeypatch: pytest.MonkeyPatch,
                                                                 s1_path: Path) -> None:
    data = s1_path.read_bytes()
    start = _full_section_start(data, VMEM_IDSTR)
    real_encode = roundtrip.encode

    def broken(events):  # type: ignore[no-untyped-def]
        out = bytearray(real_encode(events))
        out[start + 100] ^= 1
        return bytes(out)

    monkeypatch.setattr(roundtrip, "encode", broken)
    with pytest.raises(AssertionError, match=rf"byte offset {start + 100} .*virtio-mem"):
        assert_roundtrip(data)


def test_edit_device_state_with_the_trailer_schema() -> None:
    data = fixtures.load("pc-paused")

    def edit(values) -> None:  # type: ignore[no-untyped-def]
        assert values["cpu_ticks_offset"] == 0
        values["cpu_ticks_offset"] = 0x1234_5678_9ABC

    new = edit_device_state(data, "timer", edit)
    start = _full_section_start(data, b"timer")
    payload = start + 5 + 1 + len(b"timer") + 8  # instance + version
    diff = np.flatnonzero(np.frombuffer(new, np.uint8) != np.frombuffer(data, np.uint8))
    assert len(new) == len(data)
    assert diff.min() >= payload and diff.max() < payload + 8
    assert new[payload:payload + 8] == (0x1234_5678_9ABC).to_bytes(8, "big")  # VMSTATE_INT64, BE
    assert_roundtrip(new)


def test_edit_device_state_refuses_length_change_and_ambiguity() -> None:
    data = fixtures.load("pc-paused")

    def grow(values) -> None:  # type: ignore[no-untyped-def]
        values["device"]["tmp"]["region_size"] *= 2
        values["device"]["bitmap"] = np.zeros(1024, dtype=bool)

    with pytest.raises(UsageError, match="payload is 45725 bytes, was 45661"):
        edit_device_state(data, "/virtio-mem", grow)
    with pytest.raises(UsageError, match="matches 2 sections"):
        set_virtio_mem_plugged(fixtures.load("q35-numa"), [0])
    with pytest.raises(UsageError, match="no device section"):
        edit_device_state(data, "/no-such-device", lambda v: None)
    with pytest.raises(UsageError, match="block numbers"):
        set_virtio_mem_plugged(data, [512])


def test_set_virtio_mem_plugged_on_paused_fixture() -> None:
    data = fixtures.load("pc-paused")
    man = fixtures.manifest("pc-paused")
    ((_, before),) = [_vmem_state(data)]
    assert not before["device"]["bitmap"].any()
    new = set_virtio_mem_plugged(data, [0, 1, 2, 3, 100])
    e, state = _vmem_state(new)
    dev = state["device"]
    assert np.flatnonzero(dev["bitmap"]).tolist() == [0, 1, 2, 3, 100]
    assert dev["size"] == 5 * 2 * MiB
    # only the virtio-mem payload changed; the stream still round-trips
    diff = np.flatnonzero(np.frombuffer(new, np.uint8) != np.frombuffer(data, np.uint8))
    assert e.offset <= diff.min() and diff.max() < e.offset + e.length
    assert_roundtrip(new)
    # query-memory-devices from the stream: QEMU's answer at capture time except the size
    want = [dict(d, data={k: v for k, v in d["data"].items() if k != "id"}) for d in man["query-memory-devices"]]
    want[0]["data"]["size"] = 5 * 2 * MiB
    assert memory_devices(new) == want
    assert memory_devices(new, ids={"0000:00:02.0": "vm0"})[0]["data"]["id"] == "vm0"
    # a bool array gives the same bytes
    bits = np.zeros(512, dtype=bool)
    bits[[0, 1, 2, 3, 100]] = True
    assert set_virtio_mem_plugged(data, bits, device="0000:00:02.0") == new


def test_set_virtio_mem_plugged_on_one_of_two_devices() -> None:
    data = fixtures.load("q35-numa")
    new = set_virtio_mem_plugged(data, [7], device="0000:00:02.0")
    by_path = {d.path: d for d in _collect(new)}
    old = {d.path: d for d in _collect(data)}
    assert np.flatnonzero(by_path["0000:00:02.0"].device.bitmap).tolist() == [7]
    assert by_path["0000:00:02.0"].device.size == by_path["0000:00:02.0"].device.block_size
    assert np.array_equal(by_path["0000:00:01.0"].device.bitmap, old["0000:00:01.0"].device.bitmap)


def _collect(data: bytes) -> list:
    from vmig.analysis.virtio_mem import MemoryDeviceCollector

    col = MemoryDeviceCollector(keep_pages=False)
    col.feed(roundtrip.decode_stream(data))
    return col.result()


@pytest.mark.qemu
def test_qemu_loads_edited_plugged_blocks(qemu_loader) -> None:  # noqa: F811
    man = fixtures.manifest("pc-paused")
    new = set_virtio_mem_plugged(fixtures.load("pc-paused"), [0, 1, 2, 3, 100])
    argv = fixtures.resolve_args(man["argv"], qemu_loader.workdir)
    res = qemu_loader(argv, new, expect_memory_devices=memory_devices(new))
    assert res.memory_devices[0]["data"]["size"] == 10 * MiB
    assert res.memory_devices[0]["data"]["id"] == "vm0"
    # the expectation is really checked: QEMU reports 10 MiB, not 12
    wrong = memory_devices(new)
    wrong[0]["data"]["size"] = 12 * MiB
    with pytest.raises(AssertionError, match="size = 10485760, expected 12582912"):
        qemu_loader(argv, new, expect_memory_devices=wrong)


@pytest.mark.qemu
def test_qemu_refuses_a_changed_memaddr(qemu_loader) -> None:  # noqa: F811
    man = fixtures.manifest("pc-paused")

    def move(values) -> None:  # type: ignore[no-untyped-def]
        values["device"]["tmp"]["addr"] += 1 << 30

    new = edit_device_state(fixtures.load("pc-paused"), "/virtio-mem", move)
    argv = fixtures.resolve_args(man["argv"], qemu_loader.workdir)
    with pytest.raises(AssertionError, match="Property 'memaddr' changed") as info:
        qemu_loader(argv, new)
    # QEMU names the stream's value first, then the destination's property
    assert "Property 'memaddr' changed from 0x140000000 to 0x100000000" in str(info.value)
    assert "QEMU refused the stream" in str(info.value)


def test_roundtrip_with_description_from_another_capture() -> None:
    from vmig.stream.vmdesc import find_trailer

    found = find_trailer(fixtures.load("pc-paused"))
    assert found is not None
    data = fixtures.load("pc-novmdesc")
    assert find_trailer(data) is None
    events = assert_roundtrip(data, description=found[1].raw)
    assert events[-1].offset == len(data)
