"""virtio-mem device model against the verified facts of spec/virtio-mem.md (QEMU 7.2).

Every expected value here is a fact from the spec (verified on real QEMU 7.2 unless tagged with
another version, where it comes from reading that version's source), not output of the model.
"""

from __future__ import annotations

import numpy as np
import pytest

from vmig.device.requests import (
    CONFIG_SIZE,
    BlockState,
    RequestType,
    ResponseType,
    VirtioMemConfig,
    VirtioMemResponse,
    build_request,
)
from vmig.device.state import MigrationState
from vmig.device.versions import Behaviour
from vmig.device.virtio_mem import (
    ConfigChange,
    DeviceBroken,
    HostInfo,
    MemoryBackend,
    SizeChange,
    VirtioMem,
    VirtioMemProperties,
    post_load,
)
from vmig.errors import DeviceError, MigrationError
from vmig.units import GiB, MiB
from vmig.vmstate.virtio_mem import bitmap_to_bool, bool_to_words

BASE = 0x100000000  # -m 512M,maxmem=4G on pc/q35 (s1.bin's tmp.addr)


def make(
    size: int = GiB,
    requested: int = 0,
    *,
    bs: int = 0,
    addr: int = BASE,
    node: int = 0,
    numa: int = 0,
    version: str = "7.2",
    machine: str | None = None,
    migration: MigrationState | None = None,
    backend_kw: dict | None = None,
    **kw,
) -> VirtioMem:
    b = MemoryBackend("mem0", size, **(backend_kw or {}))
    props = VirtioMemProperties(b, id="vm0", node=node, memaddr=addr, block_size=bs, requested_size=requested, **kw)
    return VirtioMem.realize(
        props, behaviour=Behaviour.for_qemu(version, machine), numa_nodes=numa, migration=migration
    )


# ---------------------------------------------------------------------------------------------
# §4: usable region — every verified data point
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "backend,bs,requested,usable",
    [
        (GiB, 0, 0, 0),
        (GiB, 2 * MiB, 128 * MiB, 0x18000000),
        (3 * GiB, 0, 2 * MiB, 0x10200000),
        (GiB, 0, 900 * MiB, 0x40000000),
        (GiB, 128 * MiB, 128 * MiB, 0x18000000),
        (2 * GiB, GiB, GiB, 0x80000000),
    ],
)
def test_usable_region_at_startup(backend, bs, requested, usable):
    dev = make(backend, requested, bs=bs)
    assert dev.usable_region_size == usable


def test_verified_captures_extent():
    # "requested 128M → U 384M, 256M → 512M, 704M → 960M, 1280M → 1536M" (backend large enough)
    for req, u in [(128, 384), (256, 512), (704, 960), (1280, 1536)]:
        assert make(4 * GiB, req * MiB).usable_region_size == u * MiB


def test_requested_above_region_at_startup_is_accepted():
    dev = make(GiB, 2 * GiB)
    assert dev.usable_region_size == 0x40000000
    assert dev.requested_size == 2 * GiB


def test_qom_lowering_never_shrinks_usable_region():
    dev = make(GiB, 900 * MiB)
    dev.qom_set_requested_size(128 * MiB)
    dev.qom_set_requested_size(0)
    assert dev.usable_region_size == 0x40000000
    assert dev.requested_size == 0


def test_reset_shrinks_usable_region_to_formula():
    dev = make(GiB, 900 * MiB)
    dev.qom_set_requested_size(128 * MiB)
    assert dev.system_reset() is True
    assert dev.usable_region_size == 0x18000000
    dev2 = make(GiB, 900 * MiB)
    dev2.qom_set_requested_size(0)
    dev2.system_reset()
    assert dev2.usable_region_size == 0


def test_qom_growing_grows_usable_region():
    dev = make(GiB, 2 * MiB)
    dev.qom_set_requested_size(4 * MiB)
    assert dev.usable_region_size == 0x10400000


def test_usable_region_not_rounded_in_5_1():
    # [5.1] had no round-up: 2G backend, bs 1G, req 1G → min(2G, 1G + 256M) = 0x50000000
    dev = make(2 * GiB, GiB, bs=GiB, version="5.1")
    assert dev.usable_region_size == 0x50000000
    assert make(2 * GiB, GiB, bs=GiB, version="5.2").usable_region_size == 0x80000000


# ---------------------------------------------------------------------------------------------
# §1: realize
# ---------------------------------------------------------------------------------------------
def test_realize_errors_verified():
    with pytest.raises(DeviceError, match=r"^'block-size' property has to be at least 0x100000$"):
        make(bs=512 * 1024)
    with pytest.raises(DeviceError, match=r"^'block-size' property has to be a power of two$"):
        make(bs=3 * MiB)
    with pytest.raises(
        DeviceError, match=r"^'requested-size' property has to be multiples of 'block-size' \(0x200000\)$"
    ):
        make(requested=3 * MiB)
    with pytest.raises(DeviceError) as e:
        make(node=1)
    assert str(e.value) == "'node' property has value '1', which exceedsthe number of numa nodes: 1"
    with pytest.raises(DeviceError, match=r"^Incompatible with mlock$"):
        VirtioMem.realize(VirtioMemProperties(MemoryBackend("m", GiB)), host=HostInfo(mlock=True))
    with pytest.raises(DeviceError, match=r"^'memdev' property is not set$"):
        VirtioMem.realize(VirtioMemProperties(None))


def test_busy_memdev():
    b = MemoryBackend("mem0", GiB)
    VirtioMem.realize(VirtioMemProperties(b, memaddr=BASE))
    with pytest.raises(DeviceError, match=r"^'memdev' property specifies a busy memdev: mem0$"):
        VirtioMem.realize(VirtioMemProperties(b, memaddr=BASE + GiB))


def test_node_with_numa():
    assert make(node=1, numa=2).node == 1
    with pytest.raises(DeviceError, match="which exceedsthe number of numa nodes: 2"):
        make(node=2, numa=2)


def test_block_size_default_and_warning():
    assert make().block_size == 2 * MiB  # "On this machine the default is 2 MiB (verified)"
    dev = make(bs=1 * MiB)
    assert dev.block_size == 1 * MiB
    assert "'block-size' property is smaller than the default block size (2 MiB)" in dev.warnings
    # hugetlbfs 1G pages: max(page size, 1 MiB)
    huge = make(4 * GiB, backend_kw=dict(kind="file", page_size=GiB), addr=4 * GiB)
    assert huge.block_size == GiB
    with pytest.raises(DeviceError, match=r"at least the page size \(0x200000\)"):
        make(bs=1 * MiB, backend_kw=dict(kind="file", page_size=2 * MiB))


def test_block_size_minimum_5_1():
    with pytest.raises(DeviceError, match="has to be at least 0x200000"):
        make(bs=1 * MiB, version="5.1")


def test_unplugged_inaccessible_resolution():
    assert make().unplugged_inaccessible == "off"  # memory-backend-ram (verified)
    assert make(backend_kw=dict(kind="memfd")).unplugged_inaccessible == "on"  # verified
    assert make(machine="pc-i440fx-6.2").unplugged_inaccessible == "off"  # pc_compat_6_2 (verified)
    shared = make(backend_kw=dict(share=True), unplugged_inaccessible="off")
    assert any("does not" in w and "shared zeropage" in w for w in shared.warnings)
    assert make(version="8.1", machine="pc").unplugged_inaccessible == "on"
    assert make(version="8.1", machine="pc-i440fx-8.0").unplugged_inaccessible == "off"


def test_vectors_property_absent_in_7_2():
    with pytest.raises(DeviceError, match=r"^Property 'virtio-mem-pci.vectors' not found$"):
        make(vectors=2)
    assert make(version="10.0", machine="pc").vectors == 2
    assert make(version="10.0", machine="pc-i440fx-9.2").vectors == 0


def test_backend_prealloc_rejected_only_on_master():
    assert make(backend_kw=dict(prealloc=True)).region_size == GiB
    with pytest.raises(DeviceError, match="memdev with preallocation enabled: mem0"):
        make(backend_kw=dict(prealloc=True), version="master")


# ---------------------------------------------------------------------------------------------
# §2: config space
# ---------------------------------------------------------------------------------------------
def test_config_space_layout():
    dev = make(GiB, 128 * MiB, node=1, numa=2)
    raw = dev.config_bytes()
    assert len(raw) == CONFIG_SIZE == 56
    assert raw[0:8] == (2 * MiB).to_bytes(8, "little")
    assert raw[8:10] == (1).to_bytes(2, "little") and raw[10:16] == bytes(6)
    assert raw[16:24] == BASE.to_bytes(8, "little")
    assert raw[24:32] == GiB.to_bytes(8, "little")
    assert raw[32:40] == (0x18000000).to_bytes(8, "little")
    assert raw[40:48] == bytes(8)
    assert raw[48:56] == (128 * MiB).to_bytes(8, "little")
    assert VirtioMemConfig.parse(raw).usable_region_size == 0x18000000


def test_config_change_only_with_driver_ok_and_even_when_unchanged():
    dev = make(GiB, 128 * MiB)
    dev.qom_set_requested_size(128 * MiB)
    assert not any(isinstance(e, ConfigChange) for e in dev.drain_events())
    dev.driver_ok = True
    dev.qom_set_requested_size(128 * MiB)  # unchanged value still notifies
    dev.qom_set_requested_size(256 * MiB)
    evs = [e for e in dev.drain_events() if isinstance(e, ConfigChange)]
    assert [e.generation for e in evs] == [1, 2]
    assert dev.isr & 0x3 == 0x3


def test_features():
    assert make().host_features() == 0b001  # ACPI_PXM always on pc/q35, UI off with ram backend
    assert make(backend_kw=dict(kind="memfd")).host_features() == 0b011
    assert make(version="9.2", machine="pc").host_features() & 0b100
    dev = make(backend_kw=dict(kind="memfd"))
    assert not dev.validate_features(0b001)
    assert dev.validate_features(0b011)


# ---------------------------------------------------------------------------------------------
# §3: requests
# ---------------------------------------------------------------------------------------------
def req(dev: VirtioMem, t: int, block: int = 0, n: int = 0, addr: int | None = None):
    a = dev.addr + block * dev.block_size if addr is None else addr
    raw = dev.handle_request(build_request(t, a, n))
    assert raw is not None and len(raw) == 10
    r = VirtioMemResponse.parse(raw)
    return ResponseType(r.type), r.state


def test_plug_check_order():
    dev = make(GiB, 128 * MiB)  # U = 384M = 192 blocks, requested 64 blocks
    P = RequestType.PLUG
    assert req(dev, P, 0, 0)[0] is ResponseType.ERROR  # size 0
    assert req(dev, P, 0, 1, addr=dev.addr + 4096)[0] is ResponseType.ERROR  # unaligned
    assert req(dev, P, 192, 1)[0] is ResponseType.ERROR  # beyond U
    assert req(dev, P, 191, 2)[0] is ResponseType.ERROR  # crosses U
    assert req(dev, P, 0, 1, addr=dev.addr - dev.block_size)[0] is ResponseType.ERROR  # below A
    assert req(dev, P, 0, 65)[0] is ResponseType.NACK  # > requested
    assert req(dev, P, 0, 64)[0] is ResponseType.ACK  # exactly requested is fine
    assert dev.size == 128 * MiB
    assert req(dev, P, 100, 1)[0] is ResponseType.NACK  # NACK before the "already plugged" ERROR
    dev.qom_set_requested_size(256 * MiB)
    assert req(dev, P, 63, 2)[0] is ResponseType.ERROR  # overlaps plugged
    # invalid range is ERROR even when it would also be NACKed
    assert req(dev, P, 500, 1000)[0] is ResponseType.ERROR


def test_plug_nack_after_lowering_requested():
    dev = make(GiB, 128 * MiB)
    assert req(dev, RequestType.PLUG, 0, 64)[0] is ResponseType.ACK
    dev.qom_set_requested_size(64 * MiB)
    assert req(dev, RequestType.PLUG, 100, 1)[0] is ResponseType.NACK
    assert req(dev, RequestType.UNPLUG, 32, 32)[0] is ResponseType.ACK  # no NACK for unplug
    assert req(dev, RequestType.UNPLUG, 0, 32)[0] is ResponseType.ACK  # below requested is fine
    assert dev.size == 0


def test_unplug_errors():
    dev = make(GiB, 128 * MiB)
    req(dev, RequestType.PLUG, 0, 10)
    assert req(dev, RequestType.UNPLUG, 5, 10)[0] is ResponseType.ERROR  # partly unplugged
    assert req(dev, RequestType.UNPLUG, 300, 1)[0] is ResponseType.ERROR  # outside U
    assert dev.size == 10 * 2 * MiB


def test_state_request():
    dev = make(GiB, 128 * MiB)
    req(dev, RequestType.PLUG, 0, 4)
    S = RequestType.STATE
    assert req(dev, S, 0, 4) == (ResponseType.ACK, BlockState.PLUGGED)
    assert req(dev, S, 4, 4) == (ResponseType.ACK, BlockState.UNPLUGGED)
    assert req(dev, S, 2, 4) == (ResponseType.ACK, BlockState.MIXED)
    assert req(dev, S, 0, 0) == (ResponseType.ERROR, 0)
    assert req(dev, S, 191, 2) == (ResponseType.ERROR, 0)


def test_zero_usable_region_everything_error_but_unplug_all():
    dev = make(GiB, 0)
    for t in (RequestType.PLUG, RequestType.UNPLUG, RequestType.STATE):
        assert req(dev, t, 0, 1)[0] is ResponseType.ERROR
    assert req(dev, RequestType.UNPLUG_ALL)[0] is ResponseType.ACK


def test_unplug_all_request_clears_and_shrinks():
    dev = make(GiB, 900 * MiB)
    req(dev, RequestType.PLUG, 0, 100)
    dev.qom_set_requested_size(128 * MiB)
    dev.drain_events()
    assert req(dev, RequestType.UNPLUG_ALL)[0] is ResponseType.ACK
    assert dev.size == 0 and not dev.bitmap.any()
    assert dev.usable_region_size == 0x18000000
    assert dev.drain_events() == [SizeChange("vm0", 0, "/machine/peripheral/vm0")]
    req(dev, RequestType.UNPLUG_ALL)
    assert dev.drain_events() == []  # no event when size was already 0


def test_size_change_events():
    dev = make(GiB, 128 * MiB)
    req(dev, RequestType.PLUG, 0, 2)
    req(dev, RequestType.UNPLUG, 1, 1)
    req(dev, RequestType.PLUG, 0, 1)  # ERROR: no event
    ev = dev.drain_events()
    assert [e.size for e in ev] == [4 * MiB, 2 * MiB]
    assert ev[0].qmp() == {
        "event": "MEMORY_DEVICE_SIZE_CHANGE",
        "data": {"size": 4 * MiB, "qom-path": "/machine/peripheral/vm0", "id": "vm0"},
    }


@pytest.mark.parametrize(
    "raw,writable,msg",
    [
        (build_request(0, BASE, 1)[:23], 10, "virtio-mem protocol violation: invalid request size: 24"),
        (build_request(0, BASE, 1), 9, "virtio-mem protocol violation: not enough space for response: 9"),
        (build_request(4, BASE, 1), 10, "virtio-mem protocol violation: unknown request type: 4"),
    ],
)
def test_protocol_violations_break_device(raw, writable, msg):
    dev = make(GiB, 128 * MiB)
    assert dev.handle_request(raw, writable) is None
    assert dev.broken
    assert dev.drain_events() == [DeviceBroken(msg)]
    assert dev.handle_request(build_request(0, BASE, 1)) is None  # broken: no processing
    dev.virtio_reset()
    assert dev.handle_request(build_request(0, BASE, 1)) is not None


def test_padding_and_extra_bytes_ignored():
    dev = make(GiB, 128 * MiB)
    raw = bytearray(build_request(0, BASE, 1))
    raw[2:8] = b"\xff" * 6
    raw[18:24] = b"\xee" * 6
    out = dev.handle_request(bytes(raw) + b"junk", 4096)
    assert out == bytes(10) and dev.size == 2 * MiB


# ---------------------------------------------------------------------------------------------
# §3.2 / §5: busy, reset while migrating, reset during postcopy
# ---------------------------------------------------------------------------------------------
BUSY_OUTGOING = ["setup", "active", "pre-switchover", "device", "postcopy-active", "postcopy-paused",
                 "postcopy-recover", "colo", "cancelling", "wait-unplug"]


@pytest.mark.parametrize("status", BUSY_OUTGOING)
def test_busy_while_outgoing_migration(status):
    mig = MigrationState()
    dev = make(GiB, 128 * MiB, migration=mig)
    req(dev, RequestType.PLUG, 0, 8)
    mig.set_outgoing(status)
    assert req(dev, RequestType.PLUG, 8, 1)[0] is ResponseType.BUSY
    assert req(dev, RequestType.UNPLUG, 0, 1)[0] is ResponseType.BUSY
    assert req(dev, RequestType.UNPLUG_ALL)[0] is ResponseType.BUSY
    assert req(dev, RequestType.STATE, 0, 8) == (ResponseType.ACK, BlockState.PLUGGED)
    # checks before the busy one still win
    assert req(dev, RequestType.PLUG, 0, 1)[0] is ResponseType.ERROR
    assert req(dev, RequestType.PLUG, 8, 100)[0] is ResponseType.NACK
    dev.qom_set_requested_size(256 * MiB)  # QOM still works
    assert dev.requested_size == 256 * MiB and dev.size == 16 * MiB


@pytest.mark.parametrize("status", ["none", "completed", "failed", "cancelled"])
def test_not_busy_when_outgoing_idle(status):
    mig = MigrationState()
    mig.set_outgoing(status)
    dev = make(GiB, 128 * MiB, migration=mig)
    assert req(dev, RequestType.PLUG, 0, 1)[0] is ResponseType.ACK


@pytest.mark.parametrize("state,busy", [("none", False), ("advise", False), ("discard", True),
                                        ("listening", True), ("running", True), ("end", False)])
def test_busy_incoming_postcopy(state, busy):
    mig = MigrationState()
    mig.inmigrate = True  # incoming precopy alone is not busy
    dev = make(GiB, 128 * MiB, migration=mig)
    mig.set_incoming_postcopy(state)
    assert dev.is_busy() is busy
    assert req(dev, RequestType.PLUG, 0, 1)[0] is (ResponseType.BUSY if busy else ResponseType.ACK)


def test_reset_while_migrating_verified():
    """§5.1: 900M → QOM 128M, pre-switchover, system_reset: U and requested as in the stream."""
    mig = MigrationState()
    dev = make(GiB, 900 * MiB, migration=mig)
    dev.qom_set_requested_size(128 * MiB)
    mig.set_outgoing("pre-switchover")
    assert dev.system_reset() is False
    vals = dev.vmstate_values()
    assert vals["usable_region_size"] == 0x40000000
    assert vals["requested_size"] == 0x8000000
    mig.set_outgoing("completed")
    assert dev.system_reset() is True
    assert dev.usable_region_size == 0x18000000


def test_reset_refused_even_when_empty_7_2_but_not_8_2():
    for version, expected_u in (("7.2", 0x40000000), ("8.2", 0x18000000)):
        mig = MigrationState()
        dev = make(GiB, 900 * MiB, migration=mig, version=version, machine="pc-i440fx-7.2")
        dev.qom_set_requested_size(128 * MiB)
        mig.set_outgoing("active")
        dev.system_reset()
        assert dev.usable_region_size == expected_u, version
        assert req(dev, RequestType.UNPLUG_ALL)[0] is (
            ResponseType.BUSY if version == "7.2" else ResponseType.ACK
        )


def test_reboot_during_postcopy_keeps_memory_plugged():
    mig = MigrationState()
    dev = make(2 * GiB, 512 * MiB, migration=mig, addr=BASE)
    assert req(dev, RequestType.PLUG, 0, 256)[0] is ResponseType.ACK
    u_before = dev.usable_region_size
    mig.inmigrate = True
    mig.set_incoming_postcopy("running")
    assert dev.system_reset() is False
    assert dev.size == 536870912  # lab run: size stayed 536870912
    assert dev.usable_region_size == u_before
    assert req(dev, RequestType.UNPLUG_ALL)[0] is ResponseType.BUSY
    mig.set_incoming_postcopy("end")
    assert req(dev, RequestType.UNPLUG_ALL)[0] is ResponseType.ACK
    assert dev.size == 0


def test_wakeup_reset_9_2():
    d72 = make(GiB, 128 * MiB)
    req(d72, RequestType.PLUG, 0, 1)
    d72.system_reset("wakeup")
    assert d72.size == 0
    d92 = make(GiB, 128 * MiB, version="9.2", machine="pc")
    req(d92, RequestType.PLUG, 0, 1)
    d92.system_reset("wakeup")
    assert d92.size == 2 * MiB


def test_virtio_reset_keeps_memory():
    dev = make(GiB, 128 * MiB)
    req(dev, RequestType.PLUG, 0, 3)
    dev.virtio_reset()
    assert dev.size == 6 * MiB


def test_qom_set_errors_verified():
    dev = make(GiB, 128 * MiB)
    with pytest.raises(DeviceError) as e:
        dev.qom_set_requested_size(3 * MiB)
    assert str(e.value) == "'requested-size' has to be multiples of 'block-size' (0x200000)"
    with pytest.raises(DeviceError) as e:
        dev.qom_set_requested_size(2 * GiB)
    assert str(e.value) == "'requested-size' cannot exceed the memory backend size(0x40000000)"
    assert dev.requested_size == 128 * MiB


# ---------------------------------------------------------------------------------------------
# §6: migration values, sanity checks, post-load
# ---------------------------------------------------------------------------------------------
def test_sanity_check_messages_in_order():
    src = make(GiB, 128 * MiB, addr=BASE)
    vals = src.vmstate_values()
    cases = [
        (dict(addr=BASE + GiB), "Property 'memaddr' changed from 0x100000000 to 0x140000000"),
        (dict(size=2 * GiB), "Property 'memdev' size changed from 0x40000000 to 0x80000000"),
        (dict(bs=4 * MiB), "Property 'block-size' changed from 0x200000 to 0x400000"),
        (dict(node=1, numa=2), "Property 'node' changed from 0 to 1"),
        # memaddr is reported first even when everything differs
        (dict(addr=BASE + GiB, size=2 * GiB, node=1, numa=2),
         "Property 'memaddr' changed from 0x100000000 to 0x140000000"),
    ]
    for kw, msg in cases:
        dst = make(**{"requested": 128 * MiB, **kw})
        with pytest.raises(MigrationError) as e:
            post_load(vals, dst)
        assert str(e.value).splitlines() == [msg, "Failed to load virtio-mem-device:tmp"]


def test_load_keeps_inconsistent_values():
    """§5.3: size disagreeing with the bitmap, requested above region — loaded as-is."""
    dst = make(GiB, 128 * MiB)
    vals = {
        "tmp": dict(addr=BASE, region_size=GiB, block_size=2 * MiB, node=0),
        "usable_region_size": 0x18000000,
        "size": 2 * MiB,
        "requested_size": 2 * GiB,
        "bitmap": np.zeros(512, dtype=bool),
    }
    post_load(vals, dst)
    assert dst.size == 2 * MiB and dst.requested_size == 2 * GiB
    assert "I2" in dst.check_invariants()  # QEMU 7.2 does not check: neither does the model


def test_post_load_discards_unplugged_runs_except_postcopy():
    src = make(GiB, 704 * MiB)
    # the lab's plugged ranges [0,160) [192,256) [320,448)
    for start, end in [(0, 160), (192, 256), (320, 448)]:
        assert req(src, RequestType.PLUG, start, end - start)[0] is ResponseType.ACK
    vals = src.vmstate_values()
    dst = make(GiB, 704 * MiB)
    res = post_load(vals, dst)
    bs = 2 * MiB
    assert res.discarded == ((160 * bs, 32 * bs), (256 * bs, 64 * bs), (448 * bs, 64 * bs))
    assert res.populated == ((0, 160 * bs), (192 * bs, 64 * bs), (320 * bs, 128 * bs))
    mig = MigrationState()
    mig.set_incoming_postcopy("listening")
    dst2 = make(GiB, 704 * MiB, migration=mig)
    assert post_load(vals, dst2).discarded == ()


def test_bitmap_words_match_lab_capture():
    """§6.3 proof 1: ranges [0,160) [192,256) [320,448) of 512 blocks → these wire words."""
    bits = np.zeros(512, dtype=bool)
    for s, e in [(0, 160), (192, 256), (320, 448)]:
        bits[s:e] = True
    words = [int(w) for w in bool_to_words(bits)]
    assert [f"{w:016x}" for w in words] == [
        "ffffffffffffffff", "ffffffffffffffff", "00000000ffffffff", "ffffffffffffffff",
        "0000000000000000", "ffffffffffffffff", "ffffffffffffffff", "0000000000000000",
    ]
    assert (bitmap_to_bool(words, 512) == bits).all()
    # proof 2: word 0 = 1, word 1 = 2 → blocks 0 and 65
    assert list(np.flatnonzero(bitmap_to_bool([1, 2] + [0] * 6, 512))) == [0, 65]


def test_early_migration_split():
    dev = make(GiB, 128 * MiB, version="8.0", machine="pc")
    assert dev.early_migration
    assert set(dev.vmstate_values()) == {"usable_region_size", "requested_size"}
    assert set(dev.early_vmstate_values()) == {"tmp", "size", "bitmap"}
    old = make(GiB, 128 * MiB, version="8.0", machine="pc-i440fx-7.2")
    assert not old.early_migration
    assert set(old.vmstate_values()) == {"tmp", "usable_region_size", "size", "requested_size", "bitmap"}
    # early values load into an early destination with the early vmsd's name in the error
    dst = make(GiB, 128 * MiB, version="8.0", machine="pc", node=1, numa=2)
    with pytest.raises(MigrationError, match="Failed to load virtio-mem-device-early:tmp"):
        post_load(dev.early_vmstate_values(), dst, early=True)


def test_prealloc_without_early_migration_warns_8_0():
    dev = make(GiB, 128 * MiB, version="8.0", machine="pc-i440fx-7.2", prealloc=True)
    res = post_load(make(GiB, 128 * MiB).vmstate_values(), dev)
    assert res.warnings == ("Proper preallocation with migration requires a newer QEMU machine",)
    dev72 = make(GiB, 128 * MiB, prealloc=True)
    assert post_load(make(GiB, 128 * MiB).vmstate_values(), dev72).warnings == ()


def test_host_failures_answer_busy_and_change_nothing():
    """§3.3/§3.4: prealloc / listener / discard failures → BUSY, state unchanged."""
    dev = make(GiB, 128 * MiB, prealloc=True)
    req(dev, RequestType.PLUG, 0, 2)
    dev.host_faults = {"prealloc"}
    assert req(dev, RequestType.PLUG, 2, 2)[0] is ResponseType.BUSY
    assert req(dev, RequestType.PLUG, 4, 2)[0] is ResponseType.BUSY
    assert len(dev.warnings) == 1  # warned once
    dev.host_faults = {"populate"}
    assert req(dev, RequestType.PLUG, 2, 2)[0] is ResponseType.BUSY
    dev.host_faults = {"discard"}
    assert req(dev, RequestType.UNPLUG, 0, 1)[0] is ResponseType.BUSY
    assert req(dev, RequestType.UNPLUG_ALL)[0] is ResponseType.BUSY
    assert dev.size == 4 * MiB and list(np.flatnonzero(dev.bitmap)) == [0, 1]
    # the checks before the host step still win
    assert req(dev, RequestType.UNPLUG, 5, 1)[0] is ResponseType.ERROR
    dev.host_faults = set()
    assert req(dev, RequestType.UNPLUG_ALL)[0] is ResponseType.ACK


def test_size_change_rate_limit():
    """§7: one MEMORY_DEVICE_SIZE_CHANGE per second per qom-path; the latest wins."""
    from vmig.device.virtio_mem import rate_limit_size_changes

    a = [SizeChange("vm0", n, "/machine/peripheral/vm0") for n in range(5)]
    b = SizeChange("vm1", 99, "/machine/peripheral/vm1")
    got = rate_limit_size_changes([(0.0, a[0]), (0.1, a[1]), (0.2, b), (0.5, a[2]), (1.2, a[3]), (3.0, a[4])])
    assert got == [(0.0, a[0]), (0.2, b), (1.0, a[2]), (2.0, a[3]), (3.0, a[4])]


def test_post_load_early_prealloc_and_postcopy_advise():
    """§5.2 [8.0]+: early post-load preallocates plugged ranges; postcopy advised → discard all."""
    src = make(GiB, 128 * MiB, version="8.0", machine="pc")
    req(src, RequestType.PLUG, 4, 4)
    mig = MigrationState()
    dst = make(GiB, 128 * MiB, version="8.0", machine="pc", prealloc=True, migration=mig)
    res = post_load(src.early_vmstate_values(), dst, early=True)
    bs = 2 * MiB
    assert res.preallocated == ((4 * bs, 4 * bs),) and res.discarded == ()
    mig.set_incoming_postcopy("advise")
    dst2 = make(GiB, 128 * MiB, version="8.0", machine="pc", prealloc=True, migration=mig)
    res2 = post_load(src.early_vmstate_values(), dst2, early=True)
    assert res2.discarded == ((0, GiB),)
    # the late section then only carries usable_region_size / requested_size
    late = post_load(src.vmstate_values(), dst2)
    assert late.populated == () and dst2.size == 8 * MiB
