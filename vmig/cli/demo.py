"""``vmig demo``: runnable walkthroughs of the virtio-mem device model.

``vmig demo seed`` replays the walkthrough of QEMU's original virtio-mem commit (910b25766b,
QEMU 5.1): ``-m 4G,maxmem=20G``, two NUMA nodes, two virtio-mem-pci devices with 8 GiB backends
(requested 0 and 1G), then ``qom-set vm0 requested-size 500M`` and ``qom-set vm1 requested-size
200M`` with a simulated Linux guest driver following; it prints the monitor transcript, i.e. both
``info memory-devices`` blocks. ``vmig demo reboot-during-postcopy`` prints the timeline of
:func:`vmig.migration.scenarios.reboot_during_postcopy`. Everything runs in the model (no QEMU,
no kernel).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vmig.device.guest import DriverState, GuestDriver
from vmig.device.machine import Machine
from vmig.errors import DeviceError
from vmig.units import GiB

__all__ = ["register", "handler", "seed_transcript"]


def seed_transcript(machine: str = "pc", qemu_version: str = "7.2") -> str:
    """Run the seed walkthrough in the model and return the HMP transcript.

    Raises:
        DeviceError: the model refused a step (a bug or a machine type that cannot host it).
    """
    m = Machine(machine, 4 * GiB, 20 * GiB, numa_nodes=2, qemu_version=qemu_version)
    m.add_backend("mem0", 8 * GiB)
    m.device_add("mem0", "vm0", node=0, requested_size=0)
    m.add_backend("mem1", 8 * GiB)
    m.device_add("mem1", "vm1", node=1, requested_size=1 * GiB)
    m.system_reset()  # the reset QEMU runs once at machine start
    guests = [GuestDriver(d) for d in m.devices]
    for g in guests:
        g.probe()

    def settle() -> None:
        for g in guests:
            if g.run() is not DriverState.IDLE:
                raise DeviceError(f"guest driver did not settle: {g.state.value}")

    out: list[str] = []

    def cmd(line: str, after: Callable[[], None] | None = None) -> None:
        out.append(f"(qemu) {line}\n")
        text = m.hmp(line)
        if after:
            after()
        out.append(text)

    settle()
    cmd("info memory-devices")
    cmd("qom-set vm0 requested-size 500M", settle)
    cmd("qom-set vm1 requested-size 200M", settle)
    cmd("info memory-devices")
    return "".join(out)


def handler(args: argparse.Namespace) -> int:
    if args.scenario == "seed":
        print(seed_transcript(args.machine, args.qemu_version), end="")
        return 0
    if args.scenario == "reboot-during-postcopy":
        from vmig.migration.scenarios import reboot_during_postcopy

        print("\n".join(reboot_during_postcopy(args.machine, args.qemu_version)))
        return 0
    return 2  # argparse restricts choices


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a virtio-mem model walkthrough (no QEMU needed)",
        description="Run a virtio-mem device-model walkthrough and print the monitor transcript "
                    "(no QEMU, no guest needed), or the timeline of a guest rebooting during postcopy.\n\n"
                    "Examples:\n  vmig demo seed\n  vmig demo reboot-during-postcopy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", choices=["seed", "reboot-during-postcopy"],
                   help="seed: QEMU's original virtio-mem example; reboot-during-postcopy: the guest "
                        "reboots on the destination while postcopy runs (timeline)")
    p.add_argument("--machine", default="pc", help="machine type (default pc)")
    p.add_argument("--qemu-version", default="7.2", help="QEMU version whose behaviour to model")
    p.set_defaults(handler=handler)
