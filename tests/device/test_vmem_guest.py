"""The Linux-like guest driver simulator against the device model (spec §3, §5.1).

Checks the driver-visible behaviour the spec documents: it follows requested-size through
PLUG/UNPLUG, handles NACK/BUSY/ERROR, and after a reboot during postcopy (memory still plugged)
sends UNPLUG_ALL first and retries it while BUSY.
"""

from __future__ import annotations

from vmig.device.guest import RETRY_TIMER_MIN_MS, DriverState, GuestDriver
from vmig.device.requests import RequestType, ResponseType
from vmig.device.state import MigrationState
from vmig.device.virtio_mem import (
    MemoryBackend,
    VirtioMem,
    VirtioMemProperties,
)
from vmig.units import GiB, MiB

BASE = 0x100000000


def make(size=GiB, requested=0, mig=None, kind="ram", bs=0):
    return VirtioMem.realize(
        VirtioMemProperties(MemoryBackend("mem0", size, kind=kind), id="vm0", memaddr=BASE,
                            requested_size=requested, block_size=bs),
        migration=mig or MigrationState(),
    )


def test_follows_grow_and_shrink():
    dev = make(GiB, 256 * MiB)
    g = GuestDriver(dev)
    assert g.probe() is DriverState.IDLE
    assert dev.size == 256 * MiB
    dev.qom_set_requested_size(768 * MiB)
    assert g.run() is DriverState.IDLE and dev.size == 768 * MiB
    dev.qom_set_requested_size(300 * MiB)
    assert g.run() is DriverState.IDLE and dev.size == 300 * MiB
    assert all(r is ResponseType.ACK for _, r in g.log)
    # Linux memory blocks (128 MiB) are filled from the lowest address
    assert dev.plugged_runs()[0][0] == 0


def test_subblock_granularity_linux_6_1():
    # Linux 6.1 on x86 plugs 2 MiB sub-blocks with 2 MiB device blocks (258M -> 129 blocks);
    # a kernel with 4 MiB sub-blocks (MAX_ORDER_NR_PAGES) cannot meet a 2 MiB request
    dev = make(GiB, 258 * MiB)
    assert GuestDriver(dev).probe() is DriverState.IDLE
    assert dev.size == 258 * MiB and int(dev.bitmap.sum()) == 129
    dev2 = make(GiB, 6 * MiB)
    GuestDriver(dev2, min_subblock_size=4 * MiB).probe()
    assert dev2.size == 4 * MiB and dev2.plugged_runs() == [(0, 2)]
    dev3 = make(GiB, 2 * MiB)
    GuestDriver(dev3, min_subblock_size=4 * MiB).probe()
    assert dev3.size == 0


def test_only_memory_blocks_inside_the_usable_region():
    # device at an address that is not 128 MiB aligned: Linux starts at the next memory block and
    # uses only blocks that end below addr + U (512M region → 3 usable blocks of 128M)
    dev = VirtioMem.realize(
        VirtioMemProperties(MemoryBackend("m", 512 * MiB), id="vm0", memaddr=BASE + 64 * MiB,
                            requested_size=512 * MiB),
    )
    assert GuestDriver(dev).probe() is DriverState.IDLE
    assert dev.size == 384 * MiB
    assert dev.plugged_runs() == [(32, 192)]


def test_big_block_mode():
    dev = make(4 * GiB, GiB, bs=GiB)
    g = GuestDriver(dev)
    g.probe()
    assert dev.size == GiB


def test_busy_then_retry_after_migration():
    mig = MigrationState()
    dev = make(GiB, 128 * MiB, mig)
    g = GuestDriver(dev)
    g.probe()
    mig.set_outgoing("active")
    dev.qom_set_requested_size(256 * MiB)
    assert g.run() is DriverState.RETRY
    assert g.log[-1][1] is ResponseType.BUSY
    assert dev.size == 128 * MiB
    mig.set_outgoing("completed")
    assert g.tick(RETRY_TIMER_MIN_MS - 1) is DriverState.RETRY
    assert g.tick(1) is DriverState.IDLE
    assert dev.size == 256 * MiB


def test_reboot_during_postcopy_guest_unplugs_all_then_replugs():
    mig = MigrationState()
    dev = make(2 * GiB, 512 * MiB, mig)
    g = GuestDriver(dev)
    g.probe()
    assert dev.size == 512 * MiB
    mig.inmigrate = True
    mig.set_incoming_postcopy("running")
    assert dev.system_reset() is False  # reboot during postcopy: refused
    g2 = GuestDriver(dev)  # the rebooted kernel probes again
    assert g2.probe() is DriverState.RETRY
    assert g2.unplug_all_required
    assert [(r.type, resp) for r, resp in g2.log] == [(RequestType.UNPLUG_ALL, ResponseType.BUSY)]
    assert dev.size == 512 * MiB
    assert g2.tick(RETRY_TIMER_MIN_MS) is DriverState.RETRY  # still postcopy
    mig.set_incoming_postcopy("end")
    assert g2.tick(2 * RETRY_TIMER_MIN_MS) is DriverState.IDLE
    types = [r.type for r, _ in g2.log]
    assert types[:3] == [RequestType.UNPLUG_ALL] * 3
    assert g2.log[2][1] is ResponseType.ACK
    assert RequestType.PLUG in types[3:]
    assert dev.size == 512 * MiB


def test_error_marks_driver_broken():
    dev = make(GiB, 0)
    g = GuestDriver(dev)
    g.probe()
    # an inconsistent device state (as after loading a crafted stream: bits set, size 0)
    dev.bitmap[0:4] = True
    dev.qom_set_requested_size(128 * MiB)
    assert g.run() is DriverState.BROKEN
    assert g.log[-1][1] is ResponseType.ERROR


def test_legacy_driver_cannot_use_unplugged_inaccessible_device():
    dev = make(GiB, 128 * MiB, kind="memfd")  # unplugged-inaccessible resolves to on
    assert GuestDriver(dev, legacy=True).probe() is DriverState.FAILED
    assert dev.size == 0
    assert GuestDriver(dev).probe() is DriverState.IDLE


def test_scattered_unplug_with_unmovable_blocks():
    dev = make(GiB, 768 * MiB)
    g = GuestDriver(dev, busy_blocks={170, 300})
    g.probe()
    dev.qom_set_requested_size(300 * MiB)
    assert g.run() is DriverState.IDLE
    assert dev.size == 300 * MiB
    assert dev.bitmap[170] and dev.bitmap[300]
    assert len(dev.plugged_runs()) > 1
