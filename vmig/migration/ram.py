"""Guest RAM for the offline engine: RAMBlocks with contents, a dirty log and a migration bitmap.

Theory of operation (mirrors QEMU's migration/ram.c and the dirty-log side of physmem.c):

1. Every RAMBlock has a content array (``uint8``, ``used_length`` bytes) and two page bitmaps:
   the **dirty log** (pages the guest wrote since the last sync: what KVM/TCG dirty tracking
   reports) and the **migration bitmap** (pages still to send).
2. ``start_tracking()`` (ram_save_setup) sets every bit of the migration bitmap: the first pass
   sends all memory. Precopy notifiers (``vmig.migration.notifiers``) may then clear bits --
   virtio-mem clears its unplugged blocks, so they are never sent.
3. ``sync()`` (migration_bitmap_sync) ORs the dirty log into the migration bitmap and clears
   the log. ``take(block, max_pages)`` hands out set bits in address order and clears them.
4. Writes (``write``) change contents and set dirty-log bits only while tracking is on.

No I/O. Contents can be loaded from a decoded stream with :meth:`GuestRam.from_images`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from vmig.errors import UsageError
from vmig.records import field, record
from vmig.stream.ram import RamBlock

__all__ = ["Block", "GuestRam"]


@record
class Block:
    """One RAMBlock: ``idstr``, contents and its two page bitmaps."""

    idstr: str
    data: np.ndarray  # uint8, used_length bytes
    page_size: int
    dirty_log: np.ndarray = field(init=False)
    bitmap: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = -(-len(self.data) // self.page_size)
        self.dirty_log = np.zeros(n, dtype=bool)
        self.bitmap = np.zeros(n, dtype=bool)

    @property
    def used_length(self) -> int:
        return len(self.data)

    @property
    def pages(self) -> int:
        return len(self.bitmap)

    def page_range(self, offset: int, length: int) -> slice:
        """Pages covering bytes [offset, offset + length)."""
        if offset < 0 or length < 0 or offset + length > self.used_length:
            raise UsageError(f"range [{offset:#x}, {offset + length:#x}) outside block {self.idstr!r} "
                             f"(used length {self.used_length:#x})")
        ps = self.page_size
        return slice(offset // ps, -(-(offset + length) // ps))


class GuestRam:
    """The guest's RAMBlocks in MEM_SIZE order (the order QEMU lists and walks them).

    Args:
        blocks: ``(idstr, used_length)`` pairs, or :class:`vmig.stream.ram.RamBlock` entries.
        page_size: target page size (4096 on x86).
    """

    def __init__(self, blocks: Iterable[tuple[str, int] | RamBlock], page_size: int = 4096) -> None:
        self.page_size = page_size
        self.blocks: dict[str, Block] = {}
        self.tracking = False
        for b in blocks:
            idstr, length = (b.idstr, b.used_length) if isinstance(b, RamBlock) else b
            self.blocks[idstr] = Block(idstr, np.zeros(length, dtype=np.uint8), page_size)

    @classmethod
    def from_images(cls, images: Mapping[str, np.ndarray], page_size: int = 4096, *,
                    copy: bool = True) -> GuestRam:
        """RAM whose blocks hold ``images`` (e.g. :attr:`Destination.images`): copies, or with
        ``copy=False`` the arrays themselves (the caller gives them up)."""
        ram = cls([], page_size)
        for k, v in images.items():
            data = np.array(v, dtype=np.uint8, copy=True) if copy else np.asarray(v, dtype=np.uint8)
            ram.blocks[k] = Block(k, data, page_size)
        return ram

    def __getitem__(self, idstr: str) -> Block:
        try:
            return self.blocks[idstr]
        except KeyError:
            raise UsageError(f"no RAMBlock {idstr!r}") from None

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks.values())

    def ram_blocks(self) -> tuple[RamBlock, ...]:
        """The MEM_SIZE block list."""
        return tuple(RamBlock(b.idstr, b.used_length) for b in self)

    # -- guest side -------------------------------------------------------------------------------
    def write(self, idstr: str, offset: int, data: bytes | np.ndarray) -> None:
        """The guest writes ``data`` at ``offset`` of block ``idstr`` (dirty-logged if tracking)."""
        blk = self[idstr]
        arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
        pages = blk.page_range(offset, len(arr))
        blk.data[offset : offset + len(arr)] = arr
        if self.tracking:
            blk.dirty_log[pages] = True

    # -- migration side ---------------------------------------------------------------------------
    def start_tracking(self) -> None:
        """Migration setup: every page is to be sent; dirty logging starts."""
        self.tracking = True
        for b in self:
            b.bitmap[:] = True
            b.dirty_log[:] = False

    def stop_tracking(self) -> None:
        self.tracking = False
        for b in self:
            b.dirty_log[:] = False

    def sync(self) -> int:
        """Fold the dirty log into the migration bitmap; returns the pages now to send."""
        for b in self:
            b.bitmap |= b.dirty_log
            b.dirty_log[:] = False
        return self.remaining()

    def remaining(self) -> int:
        """Pages still set in the migration bitmaps."""
        return int(sum(int(np.count_nonzero(b.bitmap)) for b in self))

    def clear_bitmap(self, idstr: str, offset: int, length: int) -> None:
        """Drop [offset, offset + length) of block ``idstr`` from the migration bitmap."""
        blk = self[idstr]
        blk.bitmap[blk.page_range(offset, length)] = False

    def take(self, idstr: str, max_pages: int | None = None) -> np.ndarray:
        """Page indices of ``idstr`` to send now (address order, at most ``max_pages``); their
        migration-bitmap bits are cleared."""
        blk = self[idstr]
        idx = np.flatnonzero(blk.bitmap)
        if max_pages is not None:
            idx = idx[:max_pages]
        blk.bitmap[idx] = False
        return idx
