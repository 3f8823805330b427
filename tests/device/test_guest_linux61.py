"""The simulated driver vs. the real Linux 6.1 guest on QEMU 7.2: sub-block size and the
attached driver of a captured running guest.

* 2 MiB sub-blocks with 2 MiB device blocks: requested 258M → 129 blocks, 902M → 451,
  298M → 149; grow fills memory blocks from the lowest, shrink empties from the highest; the
  plugged bitmap the real driver leaves (read from QEMU's own migration stream) is the model's.
* A capture of the running guest, taken over with :meth:`GuestDriver.attach` (as ``vmig migrate``
  does): a further resize on the real guest and in the model gives the same bitmap.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from vmig.device.cmdline import machine_from_argv
from vmig.device.guest import DriverState, GuestDriver
from vmig.device.sections import virtio_mem_sections
from vmig.io.streams import iter_events
from vmig.migration.vm import open_capture

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

MiB = 1 << 20
BASE_ARGS = (
    "-machine pc-i440fx-7.2 -accel tcg -m 512M,maxmem=4G -smp 1 -nodefaults -display none "
    "-object memory-backend-memfd,id=mem0,size=1G "
    "-device virtio-mem-pci,id=vm0,memdev=mem0,requested-size=256M"
).split()


def _bitmap(path) -> np.ndarray:
    (sec,) = virtio_mem_sections(iter_events(str(path)))
    d = sec.decoded.device
    return np.asarray(d.bitmap[: d.tmp.region_size // d.tmp.block_size], dtype=bool)


def test_linux61_subblocks_and_attach_like_qemu(qemu_bin, lab_dir):
    from vmig.testing.guest import GUEST_READY, guest_args
    from vmig.testing.qemu import Qemu, wait_for_text

    serial = lab_dir / "serial.log"
    args = BASE_ARGS + guest_args(serial)
    model = machine_from_argv(args)
    model.system_reset()
    dev = model.devices[0]
    driver = GuestDriver(dev)
    assert driver.probe() is DriverState.IDLE
    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        wait_for_text(serial, GUEST_READY, timeout=120, proc=q)
        deadline = time.monotonic() + 60
        while q.memory_devices()[0]["data"]["size"] != 256 * MiB:
            assert time.monotonic() < deadline, q.memory_devices()
            time.sleep(0.2)
        for value, blocks in ((258 * MiB, 129), (902 * MiB, 451), (298 * MiB, 149)):
            q.resize_virtio_mem("vm0", value)
            model.qom_set("vm0", "requested-size", value)
            assert driver.run() is DriverState.IDLE
            assert int(dev.bitmap.sum()) == blocks
            assert q.memory_devices() == model.query_memory_devices(), value
        q.qmp("stop")
        first = lab_dir / "first.bin"
        q.migrate_to_file(first)
        assert np.array_equal(_bitmap(first), dev.bitmap)  # the real driver's plugged blocks

        # a capture of the running guest, taken over by the attached driver of open_capture
        s = open_capture(first, args, qemu_version="7.2")
        (att,) = s.drivers
        sdev = s.machine.devices[0]
        assert sdev.driver_ok and np.array_equal(sdev.bitmap, dev.bitmap)
        q.qmp("cont")
        q.resize_virtio_mem("vm0", 520 * MiB)
        sdev.qom_set_requested_size(520 * MiB)
        assert att.attach() is DriverState.IDLE
        assert not any(r.type == 2 for r, _ in att.log)  # no UNPLUG_ALL: not a reboot
        q.qmp("stop")
        second = lab_dir / "second.bin"
        q.migrate_to_file(second)
        assert np.array_equal(_bitmap(second), sdev.bitmap)
        assert q.memory_devices() == s.machine.query_memory_devices()


def test_refused_reset_during_migration_then_firmware_resets_unplug(qemu_bin, lab_dir):
    """A system_reset while a migration runs is refused by virtio-mem (memory stays), but the
    guest reboots anyway: once the VM runs after the migration, the firmware's own resets unplug
    everything, without an UNPLUG_ALL from the guest; the model's ``cont`` does the same."""
    from vmig.testing.guest import GUEST_READY, guest_args
    from vmig.testing.qemu import Qemu, wait_for_text

    serial = lab_dir / "serial.log"
    args = BASE_ARGS + guest_args(serial)
    model = machine_from_argv(args)
    model.system_reset()
    driver = GuestDriver(model.devices[0])
    driver.probe()
    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        wait_for_text(serial, GUEST_READY, timeout=120, proc=q)
        deadline = time.monotonic() + 60
        while q.memory_devices()[0]["data"]["size"] != 256 * MiB:
            assert time.monotonic() < deadline, q.memory_devices()
            time.sleep(0.2)
        q.hold_migration_before_switchover(lab_dir / "held.bin")
        model.migration.set_outgoing("pre-switchover")
        q.qmp("system_reset")
        assert model.system_reset() == {"/machine/peripheral/vm0": False}
        assert q.memory_devices() == model.query_memory_devices()
        q.qmp("migrate-continue", {"state": "pre-switchover"})
        assert q.wait_migration()["status"] == "completed"
        model.migration.set_outgoing("completed")
        assert q.memory_devices() == model.query_memory_devices()  # still plugged while stopped
        q.qmp("cont")
        model.qmp("cont")
        deadline = time.monotonic() + 30
        while q.memory_devices()[0]["data"]["size"] != 0:
            assert time.monotonic() < deadline, q.memory_devices()
            time.sleep(0.2)
        assert q.memory_devices() == model.query_memory_devices()
    assert not any(r.type == 2 for r, _ in driver.log)  # no UNPLUG_ALL was ever sent
