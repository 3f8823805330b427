"""Version behaviour against a real QEMU 10.0 (Debian trixie chroot, see spec/lab-notes.md).

Same binary, three machine types: ``pc`` (= pc-i440fx-10.0: early migration, 2 MSI-X vectors,
unplugged-inaccessible on), ``pc-i440fx-9.2`` (early migration, no vectors) and
``pc-i440fx-7.2`` (7.2 layout). For each: the model built with ``qemu_version="10.0"`` answers
``query-memory-devices`` / ``qom-get`` like QEMU; a reset while an outgoing migration is held in
pre-switchover behaves as 10.0 does (8.2+: with nothing plugged the unplug-all is not refused, so
the usable region shrinks — 7.2 kept it); the model pre-saves the bytes of the stream's
virtio-mem sections, including the 8.0+ ``virtio-mem-device-early`` section.
"""

from __future__ import annotations

import time

import pytest

from vmig.device.cmdline import machine_from_argv
from vmig.device.sections import encode_early, encode_section, virtio_mem_sections
from vmig.io.streams import iter_events

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _args(machine: str) -> list[str]:
    return (
        f"-machine {machine} -accel tcg -m 512M,maxmem=4G -smp 1 -nodefaults -display none -S "
        "-object memory-backend-ram,id=mem0,size=1G "
        "-device virtio-mem-pci,id=vm0,memdev=mem0,requested-size=900M"
    ).split()


PROPS = ["size", "requested-size", "block-size", "memaddr", "unplugged-inaccessible",
         "x-early-migration", "vectors"]


@pytest.fixture(scope="module")
def trixie():
    from vmig.testing.trixie import ensure_trixie_chroot

    return ensure_trixie_chroot()


@pytest.mark.parametrize(
    "machine,early,vectors,ui",
    [("pc", True, 2, "on"), ("pc-i440fx-9.2", True, 0, "on"), ("pc-i440fx-7.2", False, 0, "off")],
)
def test_qemu_10_0_machine_types(machine, early, vectors, ui, trixie, lab_dir):
    from vmig.testing.qemu import Qemu

    args = _args(machine)
    model = machine_from_argv(args, qemu_version="10.0")
    model.system_reset()
    dev = model.devices[0]
    assert (dev.early_migration, dev.vectors, dev.unplugged_inaccessible) == (early, vectors, ui)
    with Qemu(args, workdir=lab_dir, chroot=trixie) as q:
        assert model.qmp("query-memory-devices") == q.qmp("query-memory-devices")
        for prop in PROPS:
            a = {"path": "vm0", "property": prop}
            assert model.qmp("qom-get", a) == q.qmp("qom-get", a), prop
        model.qmp("qom-set", {"path": "vm0", "property": "requested-size", "value": 128 << 20})
        q.qmp("qom-set", {"path": "vm0", "property": "requested-size", "value": 128 << 20})

        out = lab_dir / "held.bin"
        assert q.hold_migration_before_switchover(out)["status"] == "pre-switchover"
        model.migration.set_outgoing("pre-switchover")
        q.qmp("system_reset")
        # 10.0 (8.2+ rule): nothing plugged → the reset's unplug-all is not refused
        assert model.system_reset() == {"/machine/peripheral/vm0": True}
        assert dev.usable_region_size == 0x18000000
        q.qmp("migrate-continue", {"state": "pre-switchover"})
        assert q.wait_migration()["status"] == "completed"
        model.migration.set_outgoing("completed")
        time.sleep(0.3)
    (sec,) = virtio_mem_sections(iter_events(str(out)))
    assert (sec.early is not None) is early
    assert encode_section(sec, dev) == sec.payload
    if early:
        assert encode_early(dev) == sec.early_payload
    else:
        assert sec.decoded.device.usable_region_size == 0x18000000
