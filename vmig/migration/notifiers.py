"""Precopy notifiers: hooks the source runs around its dirty-bitmap work.

QEMU calls its precopy notifiers with a reason (``PRECOPY_NOTIFY_SETUP``,
``..._BEFORE_BITMAP_SYNC``, ``..._AFTER_BITMAP_SYNC``, ``..._COMPLETE``, ``..._CLEANUP``).
virtio-mem keeps unplugged memory out of the stream, in one of two ways depending on the QEMU
version (spec virtio-mem.md §6.4):

* ``"discard-manager"`` (6.1+, and 7.2): the device is its RAMBlock's RamDiscardManager; when the
  migration bitmap is first built, every unplugged run is cleared from it. Only that initial
  bitmap is filtered: plug/unplug are refused (BUSY) while a migration runs, so the set of
  unplugged blocks cannot change afterwards.
* ``"free-page-hint"`` (5.1-6.0): a precopy notifier that, after every bitmap sync, hints each
  unplugged run as a free page, dropping it from the bitmap.

Either way, no unplugged page is sent, not even as a zero-page record. No I/O.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vmig.device.virtio_mem import VirtioMem
    from vmig.migration.ram import GuestRam

__all__ = ["PrecopyReason", "PrecopyNotifier", "VirtioMemNotifier"]


class PrecopyReason(Enum):
    """QEMU's PrecopyNotifyReason."""

    SETUP = "setup"
    BEFORE_BITMAP_SYNC = "before-bitmap-sync"
    AFTER_BITMAP_SYNC = "after-bitmap-sync"
    COMPLETE = "complete"
    CLEANUP = "cleanup"


class PrecopyNotifier(Protocol):
    def __call__(self, reason: PrecopyReason, ram: GuestRam) -> None: ...


class VirtioMemNotifier:
    """Keeps a virtio-mem device's unplugged blocks out of the migration bitmap.

    Args:
        device: the device model (its ``bitmap``, ``block_size``, ``region_size``).
        block: idstr of the RAMBlock of its memory backend (``mem0`` for ``-object
            memory-backend-*,id=mem0``).
        style: ``"discard-manager"`` (QEMU 6.1+, default) or ``"free-page-hint"`` (5.1-6.0).
    """

    STYLES = ("discard-manager", "free-page-hint")

    def __init__(self, device: VirtioMem, block: str, style: str = "discard-manager") -> None:
        if style not in self.STYLES:
            raise ValueError(f"unknown style {style!r}")
        self.device = device
        self.block = block
        self.style = style
        self.cleared_pages = 0  # pages this notifier dropped from the bitmap, over the migration
        self._synced = False

    def __call__(self, reason: PrecopyReason, ram: GuestRam) -> None:
        if reason is PrecopyReason.SETUP:
            self._synced = False
        elif reason is PrecopyReason.AFTER_BITMAP_SYNC:
            # discard-manager: only the bitmap built at setup (the first sync) is filtered
            if self.style == "free-page-hint" or not self._synced:
                self._clear(ram)
            self._synced = True

    def _clear(self, ram: GuestRam) -> None:
        blk = ram[self.block]
        bs = self.device.block_size
        before = int(blk.bitmap.sum())
        for first, count in self.device.unplugged_runs():
            start = first * bs
            length = min(count * bs, blk.used_length - start)
            if length > 0:
                ram.clear_bitmap(self.block, start, length)
        self.cleared_pages += before - int(blk.bitmap.sum())
