"""Migration scenarios run entirely in the model, as timelines (``vmig demo``).

:func:`reboot_during_postcopy`: the virtio-mem special case of QEMU (spec virtio-mem.md §5.1,
hw/virtio/virtio-mem.c ``virtio_mem_is_busy`` / the system-reset hook, Linux's
``virtio_mem_probe`` "unplugging all memory is required"):

1. the source guest plugs ``requested-size``; the migration starts, a resize asked meanwhile is
   answered BUSY (the outgoing migration runs);
2. postcopy: the device state travels in the package (pre_save → sanity checks → post_load while
   incoming postcopy runs: nothing is discarded), the destination runs;
3. the guest reboots on the destination while postcopy still runs: the system reset cannot
   unplug (busy), the rebooted driver finds memory plugged and must send UNPLUG_ALL, which is
   answered BUSY until postcopy ends;
4. postcopy ends: UNPLUG_ALL is acknowledged, the driver plugs ``requested-size`` again.

No I/O; the result is the list of timeline lines.
"""

from __future__ import annotations

from vmig.device.guest import DriverState, GuestDriver
from vmig.device.machine import Machine
from vmig.device.requests import RequestType
from vmig.errors import DeviceError
from vmig.units import GiB, MiB

__all__ = ["reboot_during_postcopy"]


def _machine(machine: str, qemu_version: str, requested: int) -> Machine:
    m = Machine(machine, 512 * MiB, 4 * GiB, qemu_version=qemu_version)
    m.add_backend("mem0", 1 * GiB)
    m.device_add("mem0", "vm0", requested_size=requested)
    m.system_reset()
    return m


def reboot_during_postcopy(machine: str = "pc", qemu_version: str = "7.2", *,
                           requested: int = 512 * MiB, busy_rounds: int = 3) -> list[str]:
    """Run the scenario and return its timeline.

    Raises:
        DeviceError: the model did not behave as QEMU does at some step (a bug).
    """
    lines: list[str] = []
    src = _machine(machine, qemu_version, requested)
    sdev = src.devices[0]
    sdrv = GuestDriver(sdev)
    sdrv.probe()

    def size(dev) -> str:  # noqa: ANN001
        return f"size {dev.size >> 20} MiB, requested {dev.requested_size >> 20} MiB"

    def new_requests(drv: GuestDriver, start: int) -> str:
        return ", ".join(f"{RequestType(r.type).name}({r.nb_blocks})={a.name if a is not None else '-'}"
                         for r, a in drv.log[start:]) or "none"

    lines.append(f"[{src.behaviour.label}] source boots: {size(sdev)}")
    src.migration.set_outgoing("active")
    n = len(sdrv.log)
    sdev.qom_set_requested_size(requested // 2)
    sdrv.run()
    lines.append(f"source: migration active; qom-set requested-size {requested // 2 >> 20} MiB -> "
                 f"guest requests {new_requests(sdrv, n)}; {size(sdev)}")
    sdev.qom_set_requested_size(requested)
    sdrv.run()

    dst = _machine(machine, qemu_version, requested)
    dst.migration.inmigrate = True
    ddev = dst.devices[0]
    for state in ("advise", "discard", "listening"):
        dst.migration.set_incoming_postcopy(state)
    src.migration.set_outgoing("postcopy-active")
    if ddev.early_migration:
        ddev.from_vmstate(sdev.early_vmstate_values(), early=True)
        ddev.post_load_early()
    ddev.from_vmstate(sdev.vmstate_values())
    res = ddev.post_load()
    dst.migration.set_incoming_postcopy("running")
    dst.migration.inmigrate = False
    lines.append(f"switchover: device state in the postcopy package; destination post_load "
                 f"discards {len(res.discarded)} range(s) (incoming postcopy); {size(ddev)}")

    refused = dst.system_reset()
    if list(refused.values()) != [False] or ddev.size == 0:
        raise DeviceError("the system reset during incoming postcopy unplugged memory")
    lines.append(f"destination guest reboots during postcopy: system reset refused (busy); {size(ddev)}")
    ddrv = GuestDriver(ddev)
    ddrv.probe()
    for _ in range(busy_rounds - 1):
        if ddrv.state is not DriverState.RETRY:
            break
        ddrv.tick(ddrv.retry_in_ms or 0)
    busy = sum(1 for r, a in ddrv.log if r.type == RequestType.UNPLUG_ALL and a is not None and a.name == "BUSY")
    if busy == 0:
        raise DeviceError("UNPLUG_ALL was not answered BUSY during incoming postcopy")
    lines.append(f"rebooted driver: memory plugged -> UNPLUG_ALL required; answered BUSY {busy} time(s), "
                 f"retry timer {ddrv.retry_in_ms} ms; {size(ddev)}")

    dst.migration.set_incoming_postcopy("end")
    src.migration.set_outgoing("completed")
    lines.append(f"postcopy ends: source completed, destination incoming postcopy 'end'; {size(ddev)}")
    n = len(ddrv.log)
    ddrv.tick(ddrv.retry_in_ms or 0)
    lines.append(f"retry timer fires: {new_requests(ddrv, n)}; {size(ddev)}")
    if ddev.size != ddev.requested_size:
        raise DeviceError(f"the driver did not replug: {size(ddev)}")
    lines.append(f"replugged: {size(ddev)} ({int(ddev.bitmap.sum())} blocks)")
    return lines
