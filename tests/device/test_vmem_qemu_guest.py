"""Real QEMU 7.2 with a real Linux 6.1 guest vs. the model with the simulated driver.

Both get the same ``requested-size`` changes (grow, shrink); after each, once the guest settled,
``query-memory-devices`` must agree. Then a migration is held in ``pre-switchover`` and a
``system_reset`` is issued on both: refused (memory stays plugged); the migration stream's
virtio-mem section (usable region, size, requested size and the *bitmap the real driver left*)
must equal the model's pre-save bytes. After the migration completed, a reset unplugs everything
on both.

A second test holds a postcopy migration between two QEMUs (throttled) and resets the
destination while postcopy runs: memory stays plugged on both sides (spec §5.1).

Needs QEMU and the plugging guest (built on demand by ``fixtures/guest/build.py``); ~30 s each.
"""

from __future__ import annotations

import time

import pytest

from vmig.device.cmdline import machine_from_argv
from vmig.device.guest import DriverState, GuestDriver
from vmig.device.sections import encode_section, virtio_mem_sections
from vmig.io.streams import iter_events

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

BASE_ARGS = (
    "-machine pc-i440fx-7.2 -accel tcg -m 512M,maxmem=4G -smp 1 -nodefaults -display none "
    "-object memory-backend-ram,id=mem0,size=1G "
    "-device virtio-mem-pci,id=vm0,memdev=mem0,requested-size=256M"
).split()


def _data(devs: list) -> dict:
    return {d["data"]["id"]: d["data"] for d in devs}


def test_guest_scenario_like_qemu(qemu_bin, lab_dir):
    from vmig.testing.guest import GUEST_READY, guest_args
    from vmig.testing.qemu import Qemu, wait_for_text

    serial = lab_dir / "serial.log"
    args = BASE_ARGS + guest_args(serial)
    model = machine_from_argv(args)
    model.system_reset()
    driver = GuestDriver(model.devices[0])
    assert driver.probe() is DriverState.IDLE

    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        wait_for_text(serial, GUEST_READY, timeout=120, proc=q)
        deadline = time.monotonic() + 60
        while _data(q.memory_devices())["vm0"]["size"] != 256 << 20:
            assert time.monotonic() < deadline, q.memory_devices()
            time.sleep(0.2)
        assert q.memory_devices() == model.query_memory_devices()

        for value in (768 << 20, 300 << 20):
            q.resize_virtio_mem("vm0", value)
            model.qom_set("vm0", "requested-size", value)
            assert driver.run() is DriverState.IDLE
            assert q.memory_devices() == model.query_memory_devices(), value

        q.qmp("stop")
        out = lab_dir / "held.bin"
        assert q.hold_migration_before_switchover(out)["status"] == "pre-switchover"
        model.migration.set_outgoing("pre-switchover")
        q.qmp("system_reset")
        assert model.system_reset() == {"/machine/peripheral/vm0": False}
        assert _data(q.memory_devices())["vm0"]["size"] == 300 << 20
        assert q.memory_devices() == model.query_memory_devices()
        q.qmp("migrate-continue", {"state": "pre-switchover"})
        assert q.wait_migration()["status"] == "completed"
        model.migration.set_outgoing("completed")
        time.sleep(0.3)  # exec:cat may still be flushing
        (sec,) = virtio_mem_sections(iter_events(str(out)))
        assert encode_section(sec, model.devices[0]) == sec.payload

        q.qmp("system_reset")
        assert model.system_reset() == {"/machine/peripheral/vm0": True}
        assert _data(q.memory_devices())["vm0"]["size"] == 0
        assert q.memory_devices() == model.query_memory_devices()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reboot_during_postcopy_like_qemu(qemu_bin, lab_dir):
    """§5.1 the one case where memory stays plugged after a reboot: a system_reset on the
    postcopy destination while postcopy runs is refused, by QEMU and by the model."""
    from vmig.testing.guest import GUEST_READY, guest_args
    from vmig.testing.qemu import Qemu, wait_for_text

    args = BASE_ARGS + guest_args(lab_dir / "serial.log")
    src_model = machine_from_argv(args)
    src_model.system_reset()
    driver = GuestDriver(src_model.devices[0])
    driver.probe()
    port = _free_port()
    dst_args = BASE_ARGS + guest_args(lab_dir / "serial-dst.log")
    with Qemu(args, workdir=lab_dir / "src", binary=qemu_bin) as src, \
            Qemu(dst_args, workdir=lab_dir / "dst", binary=qemu_bin, incoming=f"tcp:127.0.0.1:{port}") as dst:
        wait_for_text(lab_dir / "serial.log", GUEST_READY, timeout=120, proc=src)
        src.resize_virtio_mem("vm0", 512 << 20)
        src_model.qom_set("vm0", "requested-size", 512 << 20)
        assert driver.run() is DriverState.IDLE
        assert src.memory_devices() == src_model.query_memory_devices()

        dst.set_migration({"postcopy-ram": True})
        src.set_migration({"postcopy-ram": True},
                          {"max-bandwidth": 4 << 20, "max-postcopy-bandwidth": 4 << 20})
        src.qmp("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        src.wait_migration(until=frozenset({"active", "failed"}))
        src.qmp("migrate-start-postcopy")
        dst.wait_migration(until=frozenset({"postcopy-active", "completed", "failed"}))
        assert dst.qmp("query-migrate")["status"] == "postcopy-active"

        # the destination model: realized from the same command line, state loaded from the
        # source's pre-save, incoming postcopy running
        dst_model = machine_from_argv(dst_args + ["-incoming", "defer"])
        dev = dst_model.devices[0]
        dev.from_vmstate(src_model.devices[0].vmstate_values())
        dst_model.migration.set_incoming_postcopy("running")
        assert dev.post_load().discarded == ()  # no discards during postcopy

        dst.qmp("system_reset")
        assert dst_model.system_reset() == {"/machine/peripheral/vm0": False}
        time.sleep(0.5)
        assert dst.qmp("query-migrate")["status"] == "postcopy-active"
        answer = dst.memory_devices()
        assert answer[0]["data"]["size"] == 512 << 20  # still plugged after the reboot
        assert answer == dst_model.query_memory_devices()
