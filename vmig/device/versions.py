"""QEMU version and machine-type dependent behaviour of virtio-mem.

One immutable :class:`Behaviour` answers every question where QEMU releases differ (spec
virtio-mem.md tags [5.1] … [10.0], [master]). Two versions matter and are kept apart, as in QEMU:

* the **binary** version (``qemu_version``): what code runs — usable-region rounding ([5.2]+),
  unplug-all busy only with memory plugged ([8.2]+), Resettable system-reset hook that ignores
  wakeup resets plus PERSISTENT_SUSPEND ([9.2]+), queue size 1024 ([10.0]), which properties exist;
* the **machine type** (``pc-i440fx-7.2`` …): compat properties — ``x-early-migration`` off for
  machines ≤ 7.2 (hw_compat_7_2), MSI-X ``vectors`` 0 for machines ≤ 9.2, ``unplugged-inaccessible``
  OFF for ≤ 6.2 and AUTO for ≤ 8.0 (pc_compat_6_2 / pc_compat_8_0).

Mirrors: hw/virtio/virtio-mem.c, hw/virtio/virtio-mem-pci.c, hw/core/machine.c (hw_compat_*),
hw/i386/pc.c (pc_compat_*), as described by the spec.
"""

from __future__ import annotations

import re

from vmig.errors import UsageError
from vmig.records import record
from vmig.units import MiB

__all__ = ["Behaviour", "parse_version", "parse_machine", "capture_qemu_version", "KNOWN_VERSIONS", "MASTER"]

#: qemu/qemu master as described by the spec (newer than every numbered release we model).
MASTER: tuple[int, int] = (99, 0)

#: Versions whose behaviour the spec describes (others are accepted and interpolated by tags).
KNOWN_VERSIONS: tuple[str, ...] = ("5.1", "5.2", "6.1", "7.2", "8.0", "8.1", "8.2", "9.2", "10.0", "master")

_MACHINE_RE = re.compile(r"^(pc-i440fx|pc-q35)-(\d+)\.(\d+)$")


def parse_version(text: str | tuple[int, int]) -> tuple[int, int]:
    """Parse ``"7.2"``, ``"7.2.22"``, ``"10.0"`` or ``"master"`` into ``(major, minor)``.

    Raises:
        UsageError: not a version QEMU shipped virtio-mem in (5.1 is the first).
    """
    if isinstance(text, tuple):
        ver = (int(text[0]), int(text[1]))
    elif text == "master":
        return MASTER
    else:
        m = re.match(r"^(\d+)\.(\d+)(?:\.\d+)?$", text.strip())
        if not m:
            raise UsageError(f"not a QEMU version: {text!r} (expected e.g. 7.2 or 10.0)")
        ver = (int(m.group(1)), int(m.group(2)))
    if ver < (5, 1):
        raise UsageError(f"QEMU {ver[0]}.{ver[1]} has no virtio-mem (first release: 5.1)")
    return ver


def parse_machine(machine: str, qemu_version: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """Split a machine type into (family ``"pc"``/``"q35"``, machine version).

    ``pc`` and ``q35`` (the aliases) mean the binary's newest machine type.

    Raises:
        UsageError: unknown machine type.
    """
    if machine in ("pc", "q35"):
        return machine, qemu_version
    m = _MACHINE_RE.match(machine)
    if not m:
        raise UsageError(f"unsupported machine type {machine!r} (pc, q35, pc-i440fx-X.Y, pc-q35-X.Y)")
    family = "pc" if m.group(1) == "pc-i440fx" else "q35"
    ver = (int(m.group(2)), int(m.group(3)))
    if ver > qemu_version:
        raise UsageError(f"machine type {machine!r} does not exist in QEMU {qemu_version[0]}.{qemu_version[1]}")
    return family, ver


@record(frozen=True)
class Behaviour:
    """What a given QEMU binary + machine type does differently for virtio-mem.

    Build with :meth:`for_qemu`. Attributes are derived facts; nothing here has state.
    """

    qemu: tuple[int, int] = (7, 2)
    machine_version: tuple[int, int] = (7, 2)
    machine_family: str = "pc"

    @classmethod
    def for_qemu(cls, qemu_version: str | tuple[int, int] = "7.2", machine: str | None = None) -> Behaviour:
        """Behaviour of QEMU ``qemu_version`` running machine type ``machine`` (default: ``pc``)."""
        ver = parse_version(qemu_version)
        family, mver = parse_machine(machine or "pc", ver)
        return cls(qemu=ver, machine_version=mver, machine_family=family)

    @property
    def label(self) -> str:
        q = "master" if self.qemu == MASTER else f"{self.qemu[0]}.{self.qemu[1]}"
        prefix = "pc-i440fx" if self.machine_family == "pc" else "pc-q35"
        m = "master" if self.machine_version == MASTER else f"{self.machine_version[0]}.{self.machine_version[1]}"
        return f"QEMU {q}, {prefix}-{m}"

    # -- realize / properties -------------------------------------------------------------------
    @property
    def min_block_size(self) -> int:
        """Smallest accepted block-size ([5.1]: QEMU_VMALLOC_ALIGN = 2 MiB on x86-64; then 1 MiB)."""
        return 2 * MiB if self.qemu < (5, 2) else 1 * MiB

    @property
    def thp_derived_default(self) -> bool:
        """Default block size derived from the THP size ([5.2]+); [5.1]: always 2 MiB."""
        return self.qemu >= (5, 2)

    @property
    def has_unplugged_inaccessible(self) -> bool:
        """The ``unplugged-inaccessible`` property and feature bit 1 exist ([7.0]+)."""
        return self.qemu >= (7, 0)

    @property
    def unplugged_inaccessible_default(self) -> str:
        """Default of ``unplugged-inaccessible`` before resolution: ``on``/``off``/``auto``."""
        if not self.has_unplugged_inaccessible:
            return "off"
        if self.machine_version <= (6, 2):
            return "off"
        if self.qemu < (8, 1) or self.machine_version <= (8, 0):
            return "auto"
        return "on"

    @property
    def has_early_migration_property(self) -> bool:
        return self.qemu >= (8, 0)

    @property
    def early_migration_default(self) -> bool:
        """``x-early-migration`` default: on in [8.0]+ except machine types ≤ 7.2."""
        return self.qemu >= (8, 0) and self.machine_version >= (8, 0)

    @property
    def has_dynamic_memslots(self) -> bool:
        return self.qemu >= (8, 2)

    @property
    def has_vectors_property(self) -> bool:
        return self.qemu >= (10, 0)

    @property
    def msix_vectors_default(self) -> int:
        """MSI-X vectors of virtio-mem-pci: 2 for [10.0]+ machine types, else 0."""
        return 2 if self.qemu >= (10, 0) and self.machine_version >= (10, 0) else 0

    @property
    def queue_size(self) -> int:
        """Size of the single request virtqueue: 128, on the wire 1024 from [10.0] (any machine)."""
        return 1024 if self.qemu >= (10, 0) else 128

    @property
    def rejects_prealloc_memdev(self) -> bool:
        """[master]: a backend with its own prealloc=on is refused at realize."""
        return self.qemu >= MASTER

    @property
    def realize_skips_discard_when_incoming(self) -> bool:
        """[8.2]+: no whole-backend discard at realize when started with -incoming."""
        return self.qemu >= (8, 2)

    # -- runtime -------------------------------------------------------------------------------
    @property
    def rounds_usable_region(self) -> bool:
        """usable_region_size rounded up to the block size ([5.2]+; [5.1] did not)."""
        return self.qemu >= (5, 2)

    @property
    def unplug_all_busy_only_if_plugged(self) -> bool:
        """[8.2]+: UNPLUG_ALL/system reset skip the busy check when nothing is plugged."""
        return self.qemu >= (8, 2)

    @property
    def persistent_suspend(self) -> bool:
        """[9.2]+: PERSISTENT_SUSPEND offered (with wakeup enabled) and wakeup resets keep memory."""
        return self.qemu >= (9, 2)

    @property
    def ram_discard_manager(self) -> bool:
        """[6.1]+: device is the backend's RamDiscardManager (listeners replayed on post-load)."""
        return self.qemu >= (6, 1)


def capture_qemu_version(machine: str | None, *, recorded: str | None = None,
                         switchover_start: bool = False) -> str:
    """The QEMU binary version to model for a capture (``"7.2"``, ``"10.0"``).

    ``recorded`` (a capture manifest's ``qemu_version``, ``"10.0.13"``) wins. Otherwise the
    capture's machine type decides: ``pc-i440fx-X.Y``/``pc-q35-X.Y`` exists from QEMU X.Y on, so
    X.Y is the oldest binary that can have written it (7.2 at least: the oldest one modelled end
    to end); a SWITCHOVER_START command in the stream means 10.0 at least (hw_compat_9_2 turns
    it off for older machine types). Without a versioned machine type: 7.2.

    Raises:
        UsageError: ``recorded`` is not a version.
    """
    if recorded:
        ver = parse_version(recorded)
    else:
        m = _MACHINE_RE.match(machine or "")
        ver = (int(m.group(2)), int(m.group(3))) if m else (7, 2)
        ver = max(ver, (7, 2))
        if switchover_start:
            ver = max(ver, (10, 0))
    return "master" if ver == MASTER else f"{ver[0]}.{ver[1]}"
