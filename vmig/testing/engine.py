"""Engine set-ups for tests: a migration source rebuilt from a real capture.

``from_capture`` decodes a capture once and returns what a round-trip test needs: the
capture's events, its RAM as a :class:`~vmig.migration.ram.GuestRam`, the device-model machine
of its command line with the virtio-mem state the capture carried, and a ready
:class:`~vmig.migration.source.PrecopySource` whose virtio-mem notifiers keep unplugged blocks
out of the stream::

    m = from_capture(fixtures.path("pc-guest"), fixtures.manifest("pc-guest")["argv"])
    data = m.source.setup() + m.source.iterate() + m.source.complete()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmig.device.cmdline import machine_from_argv
from vmig.io.streams import iter_events
from vmig.migration.destination import Destination
from vmig.migration.notifiers import VirtioMemNotifier
from vmig.migration.ram import GuestRam
from vmig.migration.source import PrecopySource, StreamTemplate

__all__ = ["EngineSetup", "from_capture"]


@dataclass
class EngineSetup:
    events: list[Any]
    template: StreamTemplate
    ram: GuestRam
    machine: Any  # vmig.device.machine.Machine, or None without argv
    notifiers: list[VirtioMemNotifier]
    source: PrecopySource


def from_capture(path: str | Path, argv: Sequence[str] | None = None, *, postcopy: bool = False,
                 style: str = "discard-manager", **source_kw: Any) -> EngineSetup:
    """A source over the RAM and device state of the capture at ``path``.

    Args:
        path: a capture (``.lz4`` accepted).
        argv: its QEMU command line (a fixture manifest's ``argv``): builds the device-model
            machine, loads its virtio-mem state from the capture and adds one notifier per
            virtio-mem device (on its RAMBlock, ``Machine.ram_block``).
        postcopy: a postcopy source (the capture must be a postcopy one).
        style: the notifiers' style (see :class:`VirtioMemNotifier`).
        source_kw: more :class:`PrecopySource` keywords (``device_payloads``...).
    """
    events = list(iter_events(str(path), schema_sets=True))
    machine = machine_from_argv(list(argv)) if argv is not None else None
    dest = Destination(machine=machine).load(events)
    ram = GuestRam.from_images(dest.images, copy=False)
    notifiers = [VirtioMemNotifier(dev, machine.ram_block(dev), style)
                 for dev in (machine.devices if machine is not None else [])]
    template = StreamTemplate.from_events(events)
    source = PrecopySource(template, ram, notifiers=notifiers, postcopy=postcopy,
                           migration=machine.migration if machine is not None else None, **source_kw)
    return EngineSetup(events, template, ram, machine, notifiers, source)
