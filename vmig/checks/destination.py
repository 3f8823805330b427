"""``vmig check --dest-capture OTHER``: would the stream load into the VM that wrote OTHER?

OTHER is any capture of the destination's configuration (same command line as the destination
QEMU). Its machine type, RAMBlocks and savevm sections configure a
:class:`vmig.migration.destination.Destination`, which then loads the checked stream with QEMU's
checks in QEMU's order: the machine type (CONFIGURATION), the RAM block list (unknown block, size
mismatch), every section the destination lacks, and at each virtio-mem section the four sanity
properties against OTHER's device at the same PCI path (``memaddr``, memdev size, ``block-size``,
``node``: :func:`vmig.checks.virtio_mem.predict_load_failure`). The first failure is reported with
QEMU's own lines (checked against QEMU 7.2), joined by `` / `` on one line; QEMU stops there, so
does this checker. RAM contents are not held (``keep_ram=False``).
"""

from __future__ import annotations

from typing import Any

from vmig.errors import MigrationError
from vmig.stream.events import DeviceState

__all__ = ["DestinationChecker", "checker_factory"]


class DestinationChecker:
    def __init__(self, capture: str) -> None:
        from vmig.analysis.virtio_mem import MemoryDeviceCollector
        from vmig.checks.virtio_mem import DestConfig
        from vmig.io.streams import iter_events
        from vmig.migration.destination import Destination

        self.capture = capture
        theirs = MemoryDeviceCollector(keep_pages=False)

        def tee(events: Any) -> Any:
            for ev in events:
                theirs.feed((ev,))
                yield ev

        self.dest = Destination.like(tee(iter_events(capture, schema_sets=True)), keep_ram=False)
        self.vmem = {d.path: DestConfig(d.path, d.memaddr, d.region_size, d.block_size, d.node)
                     for d in theirs.devices.values() if d.complete}
        self.ours = MemoryDeviceCollector(keep_pages=False)
        self.failed = False

    def __call__(self, event: Any) -> list[str] | None:
        if self.failed:
            return None
        try:
            self.dest.feed(event)
            lines = self._virtio_mem(event)
        except MigrationError as e:
            lines = str(e).splitlines()
        if not lines:
            return None
        self.failed = True
        return [f"destination like {self.capture} would fail to load: " + " / ".join(lines)]

    def _virtio_mem(self, event: Any) -> list[str] | None:
        """QEMU's lines if this virtio-mem section fails the destination's sanity checks (at
        the section that carries them: the early one on 8.0+ machines, else the late one)."""
        from vmig.checks.virtio_mem import predict_load_failure

        self.ours.feed((event,))
        idstr = getattr(event, "idstr", "")
        if not isinstance(event, DeviceState) or not (
                idstr.endswith("/virtio-mem-device-early") or idstr.endswith("/virtio-mem")):
            return None
        dev = self.ours.devices.get(idstr.rsplit("/", 1)[0])
        cfg = self.vmem.get(dev.path) if dev is not None else None
        if cfg is None or (idstr.endswith("/virtio-mem") and dev.early is not None):
            return None  # checked at the early section already
        return predict_load_failure(dev, cfg)


def checker_factory(ctx: Any) -> Any:
    """Active when ``ctx.notes["dest_capture"]`` names a capture (``--dest-capture``)."""
    capture = (getattr(ctx, "notes", {}) or {}).get("dest_capture")
    if not capture:
        return lambda event: None
    return DestinationChecker(capture)


def _register() -> None:
    from vmig.cli.check import register_checker

    register_checker(checker_factory, "destination")


_register()
