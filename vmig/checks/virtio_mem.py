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
   before devices: migration/ram.c → ``qemu_ram_resize`` "Size mismatch"), then the sanity-check
   tmp in hw/virtio/virtio-mem.c ``virtio_mem_mig_sanity_checks_post_load`` (memaddr, memdev
   size, block-size, node) — and the first failure is reported with QEMU's own message.

Registered into ``vmig check`` via :func:`vmig.cli.check.register_checker` when imported (listed in
``vmig.cli.check.CHECKER_MODULES``); the ``--dest`` values reach the checker through
``CheckContext.notes["virtio_mem_dest"]`` (a list of strings).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmig.analysis.virtio_mem import MemoryDeviceCollector, VirtioMemDevice
from vmig.errors import UsageError

_SUFFIX = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
DEST_KEYS = ("memaddr", "max-size", "block-size", "node")


def parse_size(text: str) -> int:
    """A QEMU-style size/number: ``0x140000000``, ``1073741824``, ``1G``, ``2M``, ``512k``.

    Raises:
        UsageError: not a number.
    """
    t = text.strip()
    try:
        if t.lower().startswith("0x"):
            return int(t, 16)
        unit = t[-1:].lower() if t[-1:].isalpha() else ""
        if unit not in _SUFFIX:
            raise ValueError(t)
        num = t[: len(t) - len(unit)] if unit else t
        return int(num) << _SUFFIX[unit]
    except ValueError as e:
        raise UsageError(f"not a size or number: {text!r}") from e


@dataclass(frozen=True)
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
            values[key.replace("-", "_")] = parse_size(val)
        else:
            raise UsageError(f"--dest: unknown key {key!r} (known: dev, {', '.join(DEST_KEYS)})")
    return DestConfig(**values)


def predict_load_failure(dev: VirtioMemDevice, dest: DestConfig) -> list[str] | None:
    """QEMU 7.2's error lines for loading ``dev``'s state into ``dest``, or None if it loads.

    The first line is the specific message; the rest is the generic chain QEMU prints after it.
    """
    if dest.max_size is not None and dev.ramblock is not None and dev.ramblock_length is not None \
            and dest.max_size != dev.ramblock_length:
        return [
            f"Size mismatch: {dev.ramblock}: 0x{dev.ramblock_length:x} != 0x{dest.max_size:x}: "
            "Invalid argument",
        ]
    first: str | None = None
    if dest.memaddr is not None and dest.memaddr != dev.memaddr:
        first = f"Property 'memaddr' changed from 0x{dev.memaddr:x} to 0x{dest.memaddr:x}"
    elif dest.max_size is not None and dest.max_size != dev.region_size:
        first = f"Property 'memdev' size changed from 0x{dev.region_size:x} to 0x{dest.max_size:x}"
    elif dest.block_size is not None and dest.block_size != dev.block_size:
        first = f"Property 'block-size' changed from 0x{dev.block_size:x} to 0x{dest.block_size:x}"
    elif dest.node is not None and dest.node != dev.node:
        first = f"Property 'node' changed from {dev.node} to {dest.node}"
    if first is None:
        return None
    vmsd = "virtio-mem-device-early" if dev.early is not None else "virtio-mem-device"
    idstr = f"{dev.path}/virtio-mem-device-early" if dev.early is not None else f"{dev.path}/virtio-mem"
    chain = [first, f"Failed to load {vmsd}:tmp"]
    if dev.early is None:
        chain.append("Failed to load virtio-mem:virtio")
    chain += [
        f"error while loading state for instance 0x0 of device '{idstr}'",
        "load of migration failed: Invalid argument",
    ]
    return chain


def device_problems(dev: VirtioMemDevice) -> list[str]:
    """Consistency problems of one device's migrated state (checks 1–3)."""
    out: list[str] = []
    if not dev.complete:
        return [f"{dev.path}: only part of the virtio-mem state is in the stream"]
    bs = dev.block_size
    bits = np.asarray(dev.bitmap, dtype=bool)
    plugged = int(bits.sum())
    if dev.size != plugged * bs:
        out.append(
            f"{dev.path}: size 0x{dev.size:x} != {plugged} plugged blocks x block-size 0x{bs:x} "
            f"= 0x{plugged * bs:x}"
        )
    if bs:
        usable_blocks = dev.usable_region_size // bs
        beyond = np.flatnonzero(bits[usable_blocks:])
        if len(beyond):
            first = usable_blocks + int(beyond[0])
            out.append(
                f"{dev.path}: {len(beyond)} plugged block(s) beyond the usable region "
                f"(usable_region_size 0x{dev.usable_region_size:x}); first: block {first} at "
                f"0x{dev.memaddr + first * bs:x}"
            )
    return out


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
                if not dev.complete:
                    continue
                lines = predict_load_failure(dev, dest)
                if lines:
                    problems.append(f"{dev.path}: destination would fail to load: " + " / ".join(lines))
        return problems


def checker_factory(ctx: Any) -> VirtioMemChecker:
    """``vmig check`` checker factory: ``ctx.notes["virtio_mem_dest"]`` holds the --dest specs."""
    notes = getattr(ctx, "notes", {}) or {}
    return VirtioMemChecker(notes.get("virtio_mem_dest", ()))


def _register() -> None:
    from vmig.cli.check import register_checker

    register_checker(checker_factory, "virtio-mem")


_register()
