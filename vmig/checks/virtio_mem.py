"""virtio-mem consistency checks for ``vmig check`` and a destination load predictor.

Checks, per virtio-mem device in the stream (spec virtio-mem.md §6.3, §6.4, §8):

1. ``size == popcount(bitmap) × block_size`` (I2: QEMU keeps them equal; a crafted stream may not,
   and QEMU's loader does not check it).
2. Pages of the device's RAMBlock in unplugged blocks are not a problem: QEMU 7.2's discard
   manager filters only the first migration bitmap, so a guest write racing an unplug travels,
   and the destination's post_load discards it (one rule with the migration Destination:
   :func:`vmig.device.virtio_mem.unplugged_discarded_at_load`).
3. Every plugged block lies inside the usable region (I3).
4. With ``--dest 'memaddr=…,max-size=…,block-size=…,node=…'``: the destination's configuration
   is compared the way QEMU 7.2's loader does — RAM block length first (the RAM section is loaded
   before devices: migration/ram.c → ``qemu_ram_resize`` "Size mismatch"), then the device
   model's own load (hw/virtio/virtio-mem.c ``virtio_mem_mig_sanity_checks_post_load``: memaddr,
   memdev size, block-size, node) — and the first failure is reported with QEMU's own lines.

Checks 1 and 3 are the model's (:meth:`vmig.device.virtio_mem.VirtioMem.state_problems`). Listed
in :data:`vmig.checks.registry.CHECKERS`; the ``--dest`` values reach the checker through
``CheckContext.notes["virtio_mem_dest"]`` (a list of strings).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vmig.analysis.virtio_mem import MemoryDeviceCollector, StreamDevice
from vmig.errors import MigrationError, UsageError
from vmig.records import record
from vmig.units import parse_size

DEST_KEYS = ("memaddr", "max-size", "block-size", "node")


@record(frozen=True)
class DestConfig:
    """A destination's virtio-mem configuration for the load prediction (None = same as source).

    Attributes:
        dev: the device path it applies to (None = every device).
    """

    dev: str | None = None
    memaddr: int | None = None
    max_size: int | None = None
    block_size: int | None = None
    node: int | None = None


def parse_dest(spec: str) -> DestConfig:
    """Parse ``'memaddr=0x140000000,max-size=1G,block-size=2M,node=0[,dev=0000:00:02.0]'``.

    Raises:
        UsageError: unknown key or bad value.
    """
    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, val = item.partition("=")
        if not sep:
            raise UsageError(f"--dest expects key=value items, got {item!r}")
        key = key.strip()
        if key == "dev":
            values["dev"] = val.strip()
        elif key in DEST_KEYS:
            values[key.replace("-", "_")] = parse_size(val, key, error=UsageError)
        else:
            raise UsageError(f"--dest: unknown key {key!r} (known: dev, {', '.join(DEST_KEYS)})")
    return DestConfig(**values)


def predict_load_failure(seen: StreamDevice, dest: DestConfig) -> list[str] | None:
    """QEMU 7.2's error lines for loading ``seen``'s state into a destination configured as
    ``dest``, or None if it loads.

    The RAM section comes first (its block list is checked before any device state:
    :func:`vmig.migration.destination.ram_size_mismatch`); then the destination's device —
    the stream's device :meth:`~vmig.device.virtio_mem.VirtioMem.reconfigured` with ``dest`` —
    loads the state with the model's own sanity checks (:func:`vmig.device.sections.load_values`).
    The first line is the specific message; the rest is the chain QEMU prints after it.
    """
    from vmig.device.sections import load_values
    from vmig.migration.destination import ram_size_mismatch

    src = seen.device
    if src is None:
        return None
    if dest.max_size is not None and seen.ramblock is not None and seen.ramblock_length is not None \
            and dest.max_size != seen.ramblock_length:
        return str(ram_size_mismatch(seen.ramblock, seen.ramblock_length, dest.max_size)).splitlines()
    target = src.reconfigured(addr=dest.memaddr, region_size=dest.max_size, block_size=dest.block_size,
                              node=dest.node)
    try:
        if src.early_migration:
            load_values(target, seen.path, src.early_vmstate_values(), early=True)
        load_values(target, seen.path, src.vmstate_values())
    except MigrationError as e:
        return str(e).splitlines()
    return None


def device_problems(seen: StreamDevice) -> list[str]:
    """Consistency problems of one device's migrated state (checks 1–3)."""
    dev = seen.device
    if dev is None:
        return [f"{seen.path}: only part of the virtio-mem state is in the stream"]
    # pages of unplugged blocks are QEMU 7.2's own behaviour (unplugged_discarded_at_load)
    return [f"{seen.path}: {p}" for p in dev.state_problems()]


class VirtioMemChecker:
    """Event-driven checker: collects devices, reports at ``StreamEnd``."""

    def __init__(self, dests: Iterable[str] = ()) -> None:
        self.dests = [parse_dest(d) for d in dests]
        self.collector = MemoryDeviceCollector(keep_pages=True)

    def __call__(self, event: Any) -> list[str] | None:
        from vmig.stream.events import StreamEnd

        self.collector.feed((event,))
        if not isinstance(event, StreamEnd):
            return None
        return self.finish()

    def finish(self) -> list[str]:
        """All problems of the devices collected so far (checks, then load predictions)."""
        problems: list[str] = []
        devices = self.collector.result()
        for dev in devices:
            problems.extend(device_problems(dev))
        for dest in self.dests:
            targets = [d for d in devices if dest.dev is None or d.path == dest.dev]
            if not targets:
                problems.append(f"--dest names device {dest.dev!r}, which is not in the stream")
            for dev in targets:
                lines = predict_load_failure(dev, dest)
                if lines:
                    problems.append("\n".join([f"{dev.path}: destination would fail to load:", *lines]))
        return problems


def checker_factory(ctx: Any) -> VirtioMemChecker:
    """``vmig check`` checker factory: ``ctx.notes["virtio_mem_dest"]`` holds the --dest specs."""
    notes = getattr(ctx, "notes", {}) or {}
    return VirtioMemChecker(notes.get("virtio_mem_dest", ()))
