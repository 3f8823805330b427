"""``vmig check --dest-capture OTHER``: would the stream load into the VM that wrote OTHER?

OTHER is any capture of the destination's configuration (same command line as the destination
QEMU). Its machine type, RAMBlocks, savevm sections and framing configure a
:class:`vmig.migration.destination.Destination`, which then loads the checked stream with QEMU's
checks in QEMU's order (migration/savevm.c ``qemu_loadvm_state``): the CONFIGURATION record
(present on one side only; the machine type), section footers (on one side only), a postcopy
ADVISE against the destination's ``postcopy-ram`` capability, the RAM block list (unknown block,
size mismatch), every section the destination lacks, and at each virtio-mem section the four
sanity properties against OTHER's device at the same PCI path (``memaddr``, memdev size,
``block-size``, ``node``), checked by the device model built from OTHER's state
(:meth:`vmig.device.virtio_mem.VirtioMem.reconfigured`, :func:`vmig.device.sections.load_values`).
The first failure is reported with QEMU's own lines (checked against QEMU 7.2 and 10.0 loads of
every pair of the project's captures, across the two versions too), one per line; QEMU stops
there, so does this checker. RAM contents are not held (``keep_ram=False``).

A capture does not say whether its VM enabled ``postcopy-ram`` (that capability is not in the
stream): it comes from ``ctx.notes["dest_postcopy_ram"]`` (the command line takes it from
OTHER's manifest or ``--dest-postcopy-ram``). When it is unknown and the stream is a postcopy
one, the check says so instead of answering ok.
"""

from __future__ import annotations

from typing import Any

from vmig.errors import MigrationError
from vmig.stream.events import DeviceState

__all__ = ["DestinationChecker", "checker_factory"]


class DestinationChecker:
    """Loads the checked stream's events into a destination built from ``capture``."""

    def __init__(self, capture: str, postcopy_ram: bool | None = None) -> None:
        from vmig.analysis.virtio_mem import MemoryDeviceCollector
        from vmig.io.streams import iter_events
        from vmig.migration.destination import Destination

        self.capture = capture
        theirs = MemoryDeviceCollector(keep_pages=False)

        def tee(events: Any) -> Any:
            for ev in events:
                theirs.feed((ev,))
                yield ev

        self.dest = Destination.like(tee(iter_events(capture, schema_sets=True)), keep_ram=False,
                                     postcopy_ram=postcopy_ram)
        self.postcopy_ram = postcopy_ram
        self.advised = False
        # the destination's virtio-mem devices, configured as in the capture, nothing plugged
        self.vmem = {d.path: d.device.reconfigured() for d in theirs.result() if d.device is not None}
        self.sections: dict[str, Any] = {}
        self.failed = False

    def __call__(self, event: Any) -> list[str] | None:
        if self.failed:
            return None
        from vmig.stream.constants import MigCmd
        from vmig.stream.events import Command, StreamEnd

        if isinstance(event, Command) and event.cmd == MigCmd.POSTCOPY_ADVISE and len(event.data) == 16:
            self.advised = True
        try:
            self.dest.feed(event)
            self._virtio_mem(event)
        except MigrationError as e:
            self.failed = True
            return ["\n".join([f"destination like {self.capture} would fail to load:", *str(e).splitlines()])]
        if isinstance(event, StreamEnd) and self.advised and self.postcopy_ram is None:
            return [f"destination like {self.capture}: cannot tell whether it enables postcopy-ram "
                    "(not in a stream; no manifest beside it, give --dest-postcopy-ram on|off); "
                    "without it QEMU refuses this postcopy stream:\n"
                    "RAM postcopy is disabled but have 16 byte advise\n"
                    "load of migration failed: Invalid argument"]
        return None

    def _virtio_mem(self, event: Any) -> None:
        """Load a virtio-mem section into the destination's device (the model's sanity checks
        run at the section that carries ``tmp``: the early one on 8.0+ machines, else the late
        one)."""
        from vmig.device.sections import load_values
        from vmig.stream.events import Command
        from vmig.vmstate import virtio_mem as vm

        if isinstance(event, Command):
            for child in event.children:
                self._virtio_mem(child)
            return
        if not isinstance(event, DeviceState):
            return
        sec = vm.add_section(self.sections, event.idstr, event.instance_id, event.payload, event.offset)
        target = self.vmem.get(sec.dev_path) if sec is not None else None
        if target is None:
            return
        if event.idstr.endswith(vm.IDSTR_SUFFIX_EARLY):
            load_values(target, sec.dev_path, sec.early, early=True)
        elif sec.early is None:  # with an early section, tmp was checked there
            load_values(target, sec.dev_path, sec.decoded.device)


def checker_factory(ctx: Any) -> Any:
    """Active when ``ctx.notes["dest_capture"]`` names a capture (``--dest-capture``);
    ``ctx.notes["dest_postcopy_ram"]``: the destination's postcopy-ram capability, if known."""
    capture = (getattr(ctx, "notes", {}) or {}).get("dest_capture")
    if not capture:
        return lambda event: None
    return DestinationChecker(capture, ctx.notes.get("dest_postcopy_ram"))
