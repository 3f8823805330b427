"""The RAM view of a migration stream: which pages it carries, by block, kind, section and round.

Consumes the decoder's events (``SectionHeader`` / ``RamRecords`` / ``SectionEnd``, the postcopy
commands and the virtio-mem device sections) and keeps only columnar numpy state: per RAMBlock a
"sent" bitmap, the kind and record offset of the last write of every page, per ``ram`` section a
(block x kind) table of record counts and bytes, and per round the records by kind. No page
content is copied here; :mod:`vmig.analysis.extract` materialises contents.

Mirrors what QEMU's destination does with the records of ``migration/ram.c``
(``ram_load_precopy``: last write wins) and what the source counts in ``query-migrate``
(``ram.normal`` = PAGE records, ``ram.duplicate`` = ZERO records, every re-send counted again).

Theory of operation:

1. A *section* row is one PART or END section of the ``ram`` handler (one ``ram_save_iterate``
   call ends with EOS). START carries the block list (and is listed only if it carries pages,
   which QEMU never does).
   A *round* is one walk of the dirty bitmap (``ram_find_and_save_block`` / ``find_dirty_block``
   in migration/ram.c): the walk goes forward through the blocks in list order and their pages,
   resumes where it stopped, and after a bitmap sync finds the re-dirtied pages behind it only
   by wrapping to the first block. So a round begins where the (block, page) sequence of the page
   records goes backwards (or repeats a page), and never more than once per bitmap sync: rounds
   <= query-migrate's ``dirty-sync-count``. In postcopy the switchover (its sync, then
   ``ram_state_reset``) starts one more round; after it the destination's page requests make
   the walk jump to the requested page, so backward moves there are counted as ``jumps`` of the
   round, not as rounds. Mapped-ram files (no page records) have one round.
2. Page kinds: ``zero`` (ZERO records, fill byte kept in the stream), ``normal`` (PAGE),
   ``xbzrle`` (XBZRLE deltas), ``compressed`` (COMPRESS_PAGE). Record bytes are the whole record
   (word, idstr, payload headers, payload).
3. Blocks are keyed by idstr; a later MEM_SIZE list (RAM state re-initialised) adds or resizes
   blocks, never forgets pages already seen.
4. Per-page state uses target pages (``page_size`` of the batch), kept in chunks of
   ``PAGE_CHUNK`` pages created when a record first writes into them: memory grows with the
   records present, never with the length a block claims (a stream may claim 2^63 bytes).
5. Unplugged virtio-mem blocks (from the device's bitmap: the early section on 8.0+ machine
   types, else the late one) are never scanned by QEMU (hw/virtio/virtio-mem.c's precopy
   notifier clears them from the dirty bitmap), so QEMU counts them neither as ``normal`` nor
   as ``duplicate``. In a mapped-ram file their pages simply have no bit set; they are counted
   as ``unplugged``, not ``zero``, and as never sent. In a record stream they are never sent
   either; ``unplugged`` there counts the unplugged pages the stream did not carry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from vmig.records import field, record
from vmig.runs import true_runs
from vmig.stream.constants import RamFlag, SectionType
from vmig.stream.events import Command, DeviceState, RamRecords, SectionEnd, SectionHeader

__all__ = ["KINDS", "BlockView", "SectionStats", "RoundStats", "RamView", "ram_view"]

KINDS = ("zero", "normal", "xbzrle", "compressed")
"""Page kinds, in the order of the kind axis of every table."""

KIND_NONE = -1
_CONT = int(RamFlag.CONTINUE)
_LUT = np.full(0x400, KIND_NONE, dtype=np.int8)
_LUT[int(RamFlag.ZERO)] = 0
_LUT[int(RamFlag.PAGE)] = 1
_LUT[int(RamFlag.XBZRLE)] = 2
_LUT[int(RamFlag.COMPRESS_PAGE)] = 3
_NK = len(KINDS)


#: pages per chunk of per-page state (16 MiB of guest RAM with 4 KiB pages; 40 KiB of state)
PAGE_CHUNK_BITS = 12
PAGE_CHUNK = 1 << PAGE_CHUNK_BITS


class _Chunk:
    """Per-page state of ``PAGE_CHUNK`` consecutive pages."""

    __slots__ = ("sent", "kind", "offset")

    def __init__(self) -> None:
        self.sent = np.zeros(PAGE_CHUNK, dtype=np.bool_)
        self.kind = np.full(PAGE_CHUNK, KIND_NONE, dtype=np.int8)
        self.offset = np.full(PAGE_CHUNK, -1, dtype=np.int64)


@record
class BlockView:
    """One RAMBlock as the stream describes it, with per-page state.

    Attributes:
        idstr: the RAMBlock name.
        length: used_length from the block list.
        page_size: the block's page size field (postcopy huge pages) or the target page size.
        mr_addr: the MemoryRegion address (x-ignore-shared streams) or None.
        counts / nbytes: records / record bytes per kind over the whole stream.
        resent: records that re-sent a page already sent earlier.

    Per-page state (chunked, see :meth:`write_pages`) is read through :meth:`pages_sent`,
    :meth:`final_counts`, :meth:`never_sent`, or as whole arrays (``sent``: bool per target page,
    sent at least once; ``last_kind``: int8, kind index of the last write, -1 never written;
    ``last_offset``: int64, absolute offset of the last record that wrote the page) — those
    arrays are built on demand, one entry per page of the block: for small blocks only.
    """

    idstr: str
    length: int
    page_size: int
    target_page_size: int
    mr_addr: int | None = None
    counts: np.ndarray = field(default_factory=lambda: np.zeros(_NK, dtype=np.int64))
    nbytes: np.ndarray = field(default_factory=lambda: np.zeros(_NK, dtype=np.int64))
    resent: int = 0
    mapped: bool = False  # pages counted from a mapped-ram bitmap
    unplugged: int = 0  # pages in unplugged virtio-mem blocks that the stream did not carry
    chunks: dict[int, _Chunk] = field(default_factory=dict)

    @property
    def npages(self) -> int:
        return -(-self.length // self.target_page_size)

    def write_pages(self, pages: np.ndarray, kinds: np.ndarray, offsets: np.ndarray) -> int:
        """Record writes of distinct ``pages`` (sorted ascending) with their kind and record
        offset; returns how many of them had never been sent."""
        newly = 0
        cid = pages >> PAGE_CHUNK_BITS
        cuts = np.flatnonzero(cid[1:] != cid[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(pages)]
        for a, z in zip(bounds[:-1], bounds[1:]):
            c = int(cid[a])
            ch = self.chunks.get(c)
            if ch is None:
                ch = self.chunks[c] = _Chunk()
            local = pages[a:z] & (PAGE_CHUNK - 1)
            newly += int(np.count_nonzero(~ch.sent[local]))
            ch.sent[local] = True
            ch.kind[local] = kinds[a:z]
            ch.offset[local] = offsets[a:z]
        return newly

    def sent_at(self, pages: np.ndarray) -> np.ndarray:
        """Whether each of ``pages`` was sent before (looked up in its chunk; no dense array)."""
        out = np.zeros(len(pages), dtype=np.bool_)
        cid = pages >> PAGE_CHUNK_BITS
        for c in np.unique(cid).tolist():
            ch = self.chunks.get(c)
            if ch is not None:
                sel = cid == c
                out[sel] = ch.sent[pages[sel] & (PAGE_CHUNK - 1)]
        return out

    def pages_sent(self) -> int:
        """Pages of the block sent at least once."""
        return sum(int(np.count_nonzero(self._clip(c, ch.sent))) for c, ch in self.chunks.items())

    def final_counts(self) -> list[int]:
        """Pages whose last write was of each kind (in :data:`KINDS` order)."""
        out = [0] * _NK
        for c, ch in self.chunks.items():
            kind = self._clip(c, ch.kind)
            for i in range(_NK):
                out[i] += int(np.count_nonzero(kind == i))
        return out

    def _clip(self, c: int, arr: np.ndarray) -> np.ndarray:
        """The part of chunk ``c``'s array inside the block (a later, shorter block list)."""
        room = self.npages - (c << PAGE_CHUNK_BITS)
        return arr if room >= PAGE_CHUNK else arr[: max(0, room)]

    def _dense(self, attr: str, fill: int, dtype: Any) -> np.ndarray:
        out = np.full(self.npages, fill, dtype=dtype)
        for c, ch in self.chunks.items():
            part = self._clip(c, getattr(ch, attr))
            base = c << PAGE_CHUNK_BITS
            out[base: base + len(part)] = part
        return out

    @property
    def sent(self) -> np.ndarray:
        return self._dense("sent", 0, np.bool_)

    @property
    def last_kind(self) -> np.ndarray:
        return self._dense("kind", KIND_NONE, np.int8)

    @property
    def last_offset(self) -> np.ndarray:
        return self._dense("offset", -1, np.int64)

    def never_sent(self) -> list[tuple[int, int]]:
        """Byte ranges ``[start, end)`` of the block that no record ever carried."""
        n = self.npages
        ps = self.target_page_size
        ranges: list[list[int]] = []

        def add(a: int, b: int) -> None:
            if a >= b:
                return
            if ranges and ranges[-1][1] == a:
                ranges[-1][1] = b
            else:
                ranges.append([a, b])

        pos = 0
        for c in sorted(self.chunks):
            base = c << PAGE_CHUNK_BITS
            if base >= n:
                break
            add(pos, base)
            sent = self._clip(c, self.chunks[c].sent)
            for a, b in true_runs(~sent):
                add(base + a, base + b)
            pos = base + len(sent)
        add(pos, n)
        return [(a * ps, min(b * ps, self.length)) for a, b in ranges]


@record
class SectionStats:
    """One PART/END section of ``ram``: records and bytes per block and kind."""

    index: int
    section_type: str
    offset: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    nbytes: dict[str, np.ndarray] = field(default_factory=dict)
    flushes: int = 0

    def total(self, kind: str) -> int:
        k = KINDS.index(kind)
        return int(sum(int(c[k]) for c in self.counts.values()))

    def to_json(self) -> dict[str, Any]:
        tot = {k: self.total(k) for k in KINDS}
        tot["bytes"] = int(sum(int(b.sum()) for b in self.nbytes.values()))
        return {
            "index": self.index,
            "section": self.section_type,
            "offset": self.offset,
            "totals": tot,
            "blocks": {
                name: {**{k: int(c[i]) for i, k in enumerate(KINDS)}, "bytes": int(self.nbytes[name].sum())}
                for name, c in self.counts.items()
                if c.any()
            },
        }


@record
class RoundStats:
    """One round of the dirty-bitmap walk (theory of operation, 1): records per kind.

    Attributes:
        index: 0-based round number.
        offset: absolute offset of its first page record (mapped-ram: of the block list).
        section: index of the ``ram`` section row it begins in.
        counts / nbytes: records / record bytes per kind (``KINDS`` order).
        resent: records that re-sent a page an earlier record had carried.
        jumps: backward moves inside the round (postcopy page requests, the walk's wrap).
        postcopy: the round runs after the postcopy switchover.
    """

    index: int
    offset: int
    section: int
    counts: np.ndarray = field(default_factory=lambda: np.zeros(_NK, dtype=np.int64))
    nbytes: np.ndarray = field(default_factory=lambda: np.zeros(_NK, dtype=np.int64))
    resent: int = 0
    jumps: int = 0
    postcopy: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "offset": self.offset,
            "section": self.section,
            **{k: int(self.counts[i]) for i, k in enumerate(KINDS)},
            "bytes": int(self.nbytes.sum()),
            "resent": self.resent,
            "jumps": self.jumps,
            "postcopy": self.postcopy,
        }


class RamView:
    """Accumulates the RAM view from decoder events (``feed``) or batches (``add_batch``)."""

    def __init__(self, *, validate: bool = True) -> None:
        self.validate = validate
        self.blocks: dict[str, BlockView] = {}
        self.sections: list[SectionStats] = []
        self.rounds: list[RoundStats] = []
        self.page_size: int | None = None
        self.hooks = 0
        self.flushes = 0
        self.mem_size_records = 0
        self._in_ram = False
        self._ram_ids: set[int] = set()
        self._cur: SectionStats | None = None
        self._map_cache: tuple[tuple[Any, ...], np.ndarray] | None = None
        self._last_key = -1  # (block index << 40 | page) of the last page record
        self._postcopy = False  # after the postcopy switchover
        self._round_pending = False  # the next page record begins a round (switchover)
        self._mapped_rows: list[tuple[str, SectionStats, RoundStats]] = []
        self._finished = False
        from vmig.analysis.virtio_mem import MemoryDeviceCollector

        self._vmem = MemoryDeviceCollector(keep_pages=False)
        self._block_index: dict[str, int] = {}  # position of each idstr in ``blocks``

    # -- events -----------------------------------------------------------------------------
    def feed(self, event: Any) -> None:
        """Feed one decoder event; events that are not about the ``ram`` section are ignored."""
        if isinstance(event, Command):
            self._command(event)
        elif isinstance(event, DeviceState) and "/virtio-mem" in event.idstr:
            self._vmem.feed((event,))
        if isinstance(event, SectionHeader):
            if event.idstr == "ram":
                self._ram_ids.add(event.section_id)
                self.begin_section(SectionType(event.type), event.offset)
            else:
                self._in_ram = False
        elif isinstance(event, RamRecords):
            if event.batch.mem_size is not None:
                self._vmem.feed((event,))
            self.add_batch(event.batch)
        elif isinstance(event, SectionEnd):
            if self._in_ram:
                self.end_section()

    def _command(self, event: Any) -> None:
        """The postcopy switchover (its RAM discards, then the packaged device state) begins a
        round; virtio-mem state inside the package is collected."""
        from vmig.stream.constants import MigCmd

        if event.cmd in (MigCmd.POSTCOPY_RAM_DISCARD, MigCmd.PACKAGED) and not self._postcopy:
            self._postcopy = True
            self._round_pending = True
        if event.children:
            for child in event.children:
                if type(child).__name__ == "DeviceState" and "/virtio-mem" in child.idstr:
                    self._vmem.feed((child,))

    def begin_section(self, stype: SectionType, offset: int) -> None:
        """Start a ``ram`` section (START/PART/END) at ``offset``."""
        self._in_ram = True
        label = {SectionType.SECTION_START: "start", SectionType.SECTION_PART: "part",
                 SectionType.SECTION_END: "end"}.get(stype, stype.name.lower())
        self._cur = SectionStats(index=len(self.sections), section_type=label, offset=offset)

    def end_section(self) -> None:
        cur = self._cur
        self._in_ram = False
        self._cur = None
        if cur is None:
            return
        has_pages = any(c.any() for c in cur.counts.values())
        if cur.section_type != "start" or has_pages:
            cur.index = len(self.sections)
            self.sections.append(cur)

    # -- batches ----------------------------------------------------------------------------
    def _block_map(self, batch: Any) -> np.ndarray:
        key = batch.blocks
        if self._map_cache is not None and self._map_cache[0] is key:
            return self._map_cache[1]
        idx = []
        for b in batch.blocks:
            bv = self.blocks.get(b.idstr)
            ps = b.page_size or batch.page_size
            if bv is None:
                bv = BlockView(b.idstr, b.used_length, ps, batch.page_size, b.mr_addr)
                self.blocks[b.idstr] = bv
            else:
                bv.length = max(bv.length, b.used_length)
                bv.page_size = ps
                bv.mr_addr = b.mr_addr
            idx.append(self._block_index.setdefault(b.idstr, len(self._block_index)))
        arr = np.array(idx, dtype=np.int64)
        self._map_cache = (key, arr)
        return arr

    def add_batch(self, batch: Any) -> None:
        """Account one ``RamBatch`` (columns only; page bytes are not touched)."""
        if self.page_size is None:
            self.page_size = batch.page_size
        if self._cur is None:  # records outside a section header (tests feeding batches)
            self._cur = SectionStats(index=len(self.sections), section_type="part", offset=int(batch.base))
            self._in_ram = True
        if batch.mem_size is not None:
            self.mem_size_records += 1
        bmap = self._block_map(batch)
        if batch.mem_size is not None:
            self._mapped_ram(batch)
        if len(batch) == 0:
            return
        types = batch.flags & np.uint16(0x3FF & ~_CONT)
        kinds = _LUT[types]
        m = kinds >= 0
        nflush = int(np.count_nonzero(types == int(RamFlag.MULTIFD_FLUSH)))
        self.flushes += nflush
        self._cur.flushes += nflush
        self.hooks += int(np.count_nonzero(types == int(RamFlag.HOOK)))
        if not m.any():
            return
        if self.validate:
            self._check_payloads(batch, types)
        k = kinds[m].astype(np.int64)
        blk = bmap[batch.block[m]]
        off = batch.offset[m]
        rec_bytes = batch.data_offset[m] + batch.data_length[m] - off
        nb = len(self.blocks)
        cnt = np.bincount(blk * _NK + k, minlength=nb * _NK).reshape(nb, _NK)
        byt = np.bincount(blk * _NK + k, weights=rec_bytes, minlength=nb * _NK).reshape(nb, _NK)
        byt = np.rint(byt).astype(np.int64)
        names = list(self.blocks)
        pages = (batch.addr[m] // np.uint64(batch.page_size)).astype(np.int64)
        resent_rec = np.zeros(len(k), dtype=np.bool_)
        for bi in np.flatnonzero(cnt.sum(axis=1)):
            name = names[bi]
            bv = self.blocks[name]
            bv.counts += cnt[bi]
            bv.nbytes += byt[bi]
            pc = self._cur.counts.setdefault(name, np.zeros(_NK, dtype=np.int64))
            pb = self._cur.nbytes.setdefault(name, np.zeros(_NK, dtype=np.int64))
            pc += cnt[bi]
            pb += byt[bi]
            sel = blk == bi
            p = pages[sel] if not sel.all() else pages
            # last occurrence of each page in this batch wins
            again = bv.sent_at(p)  # pages an earlier batch carried
            if len(p) < 2 or bool((p[1:] > p[:-1]).all()):
                rev_u, last = p, np.arange(len(p))  # strictly increasing (the usual run): as is
            else:
                rev_u, rev_i = np.unique(p[::-1], return_index=True)
                last = len(p) - 1 - rev_i
                again[np.setdiff1d(np.arange(len(p)), np.unique(p, return_index=True)[1])] = True
            resent_rec[sel] = again
            ksel = k[sel] if not sel.all() else k
            osel = off[sel] if not sel.all() else off
            newly = bv.write_pages(rev_u, ksel[last], osel[last])
            bv.resent += len(p) - newly
        self._add_rounds(blk, pages, k, off, rec_bytes, resent_rec)

    def _add_rounds(self, blk: np.ndarray, pages: np.ndarray, k: np.ndarray, off: np.ndarray,
                    rec_bytes: np.ndarray, resent: np.ndarray) -> None:
        """Split a batch's page records into rounds (theory of operation, 1)."""
        key = (blk << 40) | pages
        prev = np.empty_like(key)
        prev[0] = self._last_key
        prev[1:] = key[:-1]
        back = key <= prev
        self._last_key = int(key[-1])
        starts = np.zeros(len(key), dtype=np.bool_) if self._postcopy else back.copy()
        if not self.rounds or self._round_pending:
            starts[0] = True
            self._round_pending = False
        jumps = back & ~starts
        rid = len(self.rounds) - 1 + np.cumsum(starts)
        section = len(self.sections)
        for i in np.flatnonzero(starts).tolist():
            self.rounds.append(RoundStats(index=len(self.rounds), offset=int(off[i]), section=section,
                                          postcopy=self._postcopy))
        base = int(rid[0])
        rel = rid - base
        n = int(rel[-1]) + 1
        cnt = np.bincount(rel * _NK + k, minlength=n * _NK).reshape(n, _NK)
        byt = np.rint(np.bincount(rel * _NK + k, weights=rec_bytes, minlength=n * _NK)).astype(np.int64)
        nres = np.bincount(rel, weights=resent, minlength=n)
        njump = np.bincount(rel, weights=jumps, minlength=n)
        for j in range(n):
            r = self.rounds[base + j]
            r.counts += cnt[j]
            r.nbytes += byt.reshape(n, _NK)[j]
            r.resent += int(nres[j])
            r.jumps += int(njump[j])

    def _mapped_ram(self, batch: Any) -> None:
        """Mapped-ram blocks (QEMU 9.0+ ``file:``): no page records; each page has a fixed
        place in the file and its bitmap bit says whether it was written. A set bit counts as
        a normal page, a clear one as a zero page (as QEMU's ``query-migrate`` counts them),
        both in the pass of the MEM_SIZE record."""
        from vmig.stream import mapped_ram

        assert self._cur is not None
        raw = np.frombuffer(batch.raw, dtype=np.uint8)
        for b in batch.mem_size:
            if b.pages_offset is None or (b.pages_offset == 0 and b.bitmap_offset == 0):
                continue
            bv = self.blocks[b.idstr]
            if not self.rounds:
                self.rounds.append(RoundStats(index=0, offset=int(batch.base), section=len(self.sections)))
            ps = batch.page_size
            n = -(-b.used_length // ps)
            start = b.bitmap_offset - batch.base
            bits = np.unpackbits(raw[start : start + mapped_ram.bitmap_bytes(n)], bitorder="little")
            present = bits[:n].astype(bool)
            k = int(np.count_nonzero(present))
            add = np.zeros(_NK, dtype=np.int64)
            add[KINDS.index("normal")], add[KINDS.index("zero")] = k, n - k
            nbytes = np.zeros(_NK, dtype=np.int64)
            nbytes[KINDS.index("normal")] = k * ps
            bv.counts += add
            bv.nbytes += nbytes
            bv.mapped = True
            self._mapped_rows.append((b.idstr, self._cur, self.rounds[-1]))
            self.rounds[-1].counts += add
            self.rounds[-1].nbytes += nbytes
            self._cur.counts.setdefault(b.idstr, np.zeros(_NK, dtype=np.int64))[:] += add
            self._cur.nbytes.setdefault(b.idstr, np.zeros(_NK, dtype=np.int64))[:] += nbytes
            pages = np.arange(n, dtype=np.int64)
            bv.write_pages(pages,
                           np.where(present, KINDS.index("normal"), KINDS.index("zero")).astype(np.int8),
                           np.where(present, b.pages_offset + pages * ps, b.bitmap_offset))

    @staticmethod
    def _check_payloads(batch: Any, types: np.ndarray) -> None:
        """XBZRLE deltas must be well-formed for a page (QEMU's loader checks); the walker has
        already framed them. Applied to a scratch page: the structure does not depend on it."""
        from vmig.stream import xbzrle

        rows = np.flatnonzero(types == int(RamFlag.XBZRLE))
        if len(rows) == 0:
            return
        scratch = bytearray(batch.page_size)
        for i in rows.tolist():
            xbzrle.apply(batch.data(i), scratch, offset=int(batch.data_offset[i]))

    # -- results ----------------------------------------------------------------------------
    def _unplugged_bitmaps(self) -> dict[str, tuple[np.ndarray, int]]:
        """Per RAMBlock of a virtio-mem device: (plugged bool per device block, target pages per
        block), from the device's bitmap in the stream."""
        out: dict[str, tuple[np.ndarray, int]] = {}
        for dev in self._vmem.result():
            bv = self.blocks.get(dev.ramblock or "")
            model = dev.device
            if bv is None or model is None or not model.block_size:
                continue  # no bitmap in the stream for this device (cut stream)
            per_block = max(1, model.block_size // bv.target_page_size)
            out[bv.idstr] = (np.asarray(model.bitmap, dtype=np.bool_), per_block)
        return out

    def finish(self) -> None:
        """Count the pages of unplugged virtio-mem blocks apart (theory of operation, 5); once,
        after the last event (``totals``/``to_json`` call it). Works chunk by chunk: memory
        stays with the pages the stream wrote."""
        if self._finished:
            return
        self._finished = True
        zi = KINDS.index("zero")
        for idstr, (plugged, per_block) in self._unplugged_bitmaps().items():
            bv = self.blocks[idstr]
            n = bv.npages
            limit = min(n, len(plugged) * per_block)  # pages the bitmap covers
            total = sum(min(e * per_block, limit) - min(s * per_block, limit) for s, e in true_runs(~plugged))
            carried = 0
            gone_total = 0
            for c, ch in bv.chunks.items():
                base = c << PAGE_CHUNK_BITS
                if base >= limit:
                    continue
                k = min(PAGE_CHUNK, limit - base)
                mask = ~plugged[(base + np.arange(k, dtype=np.int64)) // per_block]
                if bv.mapped:
                    gone = mask & (ch.kind[:k] == zi)  # bit clear: never written, never scanned
                    gone_total += int(np.count_nonzero(gone))
                    ch.sent[:k][gone] = False
                    ch.kind[:k][gone] = KIND_NONE
                    ch.offset[:k][gone] = -1
                carried += int(np.count_nonzero(mask & ch.sent[:k]))
            if gone_total:
                bv.counts[zi] -= gone_total
                for name, sec, rnd in self._mapped_rows:
                    if name == idstr:
                        sec.counts[name][zi] -= gone_total
                        rnd.counts[zi] -= gone_total
                        break
            bv.unplugged = total - carried

    def totals(self) -> dict[str, int]:
        """Record counts per kind and bytes over the whole stream (re-sends counted each time)."""
        self.finish()
        tot = {k: 0 for k in KINDS}
        b = 0
        for bv in self.blocks.values():
            for i, k in enumerate(KINDS):
                tot[k] += int(bv.counts[i])
            b += int(bv.nbytes.sum())
        out: dict[str, int] = dict(tot)
        out["bytes"] = b
        out["resent"] = sum(bv.resent for bv in self.blocks.values())
        out["pages_sent"] = sum(bv.pages_sent() for bv in self.blocks.values())
        out["multifd_flush"] = self.flushes
        out["hook"] = self.hooks
        out["unplugged"] = sum(bv.unplugged for bv in self.blocks.values())
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``vmig ram --json`` document."""
        self.finish()
        blocks = []
        for bv in self.blocks.values():
            ps = bv.target_page_size
            final = bv.final_counts()
            blocks.append({
                "idstr": bv.idstr,
                "length": bv.length,
                "page_size": bv.page_size,
                "mr_addr": bv.mr_addr,
                "pages": bv.npages,
                **{k: int(bv.counts[i]) for i, k in enumerate(KINDS)},
                "bytes": int(bv.nbytes.sum()),
                "bytes_by_kind": {k: int(bv.nbytes[i]) for i, k in enumerate(KINDS)},
                "pages_sent": bv.pages_sent(),
                "resent": bv.resent,
                "final": {k: final[i] for i, k in enumerate(KINDS)},
                "never_sent": [[a, b] for a, b in bv.never_sent()],
                "unplugged": bv.unplugged,
                "target_page_size": ps,
            })
        return {
            "page_size": self.page_size,
            "blocks": blocks,
            "sections": [p.to_json() for p in self.sections],
            "rounds": [r.to_json() for r in self.rounds],
            "totals": self.totals(),
        }


def ram_view(events: Iterable[Any]) -> RamView:
    """Build a :class:`RamView` from an iterable of decoder events."""
    view = RamView()
    for ev in events:
        view.feed(ev)
    return view
