"""The RAM view of a migration stream: which pages it carries, by block, kind and pass.

Consumes the decoder's events (``SectionHeader`` / ``RamRecords`` / ``SectionEnd``) and keeps
only columnar numpy state: per RAMBlock a "sent" bitmap, the kind and record offset of the last
write of every page, and per pass a (block x kind) table of record counts and bytes. No page
content is copied here; :mod:`vmig.analysis.extract` materialises contents.

Mirrors what QEMU's destination does with the records of ``migration/ram.c``
(``ram_load_precopy``: last write wins) and what the source counts in ``query-migrate``
(``ram.normal`` = PAGE records, ``ram.duplicate`` = ZERO records, every re-send counted again).

Theory of operation:

1. A *pass* is one PART or END section of the ``ram`` handler: QEMU 7.2 ends each iteration's
   payload with EOS, and a dirty-bitmap sync only happens between iterations. START carries the
   block list (and counts as a pass only if it carries pages, which QEMU never does).
2. Page kinds: ``zero`` (ZERO records, fill byte kept in the stream), ``normal`` (PAGE),
   ``xbzrle`` (XBZRLE deltas), ``compressed`` (COMPRESS_PAGE). Record bytes are the whole record
   (word, idstr, payload headers, payload).
3. Blocks are keyed by idstr; a later MEM_SIZE list (RAM state re-initialised) adds or resizes
   blocks, never forgets pages already seen.
4. Per-page state uses target pages (``page_size`` of the batch), kept in chunks of
   ``PAGE_CHUNK`` pages created when a record first writes into them: memory grows with the
   records present, never with the length a block claims (a stream may claim 2^63 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmig.stream.constants import RamFlag, SectionType

__all__ = ["KINDS", "BlockView", "PassStats", "RamView", "ram_view"]

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


@dataclass
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
            for a, b in runs(~sent):
                add(base + a, base + b)
            pos = base + len(sent)
        add(pos, n)
        return [(a * ps, min(b * ps, self.length)) for a, b in ranges]


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` index ranges where ``mask`` is True."""
    if len(mask) == 0:
        return []
    m = np.concatenate(([False], mask.astype(np.bool_), [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


@dataclass
class PassStats:
    """One pass (a PART/END section of ``ram``): records and bytes per block and kind."""

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


class RamView:
    """Accumulates the RAM view from decoder events (``feed``) or batches (``add_batch``)."""

    def __init__(self, *, validate: bool = True) -> None:
        self.validate = validate
        self.blocks: dict[str, BlockView] = {}
        self.passes: list[PassStats] = []
        self.page_size: int | None = None
        self.hooks = 0
        self.flushes = 0
        self.mem_size_records = 0
        self._in_ram = False
        self._ram_ids: set[int] = set()
        self._cur: PassStats | None = None
        self._map_cache: tuple[tuple[Any, ...], np.ndarray] | None = None
        self._block_index: dict[str, int] = {}  # position of each idstr in ``blocks``

    # -- events -----------------------------------------------------------------------------
    def feed(self, event: Any) -> None:
        """Feed one decoder event; events that are not about the ``ram`` section are ignored."""
        name = type(event).__name__
        if name == "SectionHeader":
            if event.idstr == "ram":
                self._ram_ids.add(event.section_id)
                self.begin_section(SectionType(event.type), event.offset)
            else:
                self._in_ram = False
        elif name == "RamRecords":
            self.add_batch(event.batch)
        elif name == "SectionEnd":
            if self._in_ram:
                self.end_section()

    def begin_section(self, stype: SectionType, offset: int) -> None:
        """Start a ``ram`` section (START/PART/END) at ``offset``."""
        self._in_ram = True
        label = {SectionType.SECTION_START: "start", SectionType.SECTION_PART: "part",
                 SectionType.SECTION_END: "end"}.get(stype, stype.name.lower())
        self._cur = PassStats(index=len(self.passes), section_type=label, offset=offset)

    def end_section(self) -> None:
        cur = self._cur
        self._in_ram = False
        self._cur = None
        if cur is None:
            return
        has_pages = any(c.any() for c in cur.counts.values())
        if cur.section_type != "start" or has_pages:
            cur.index = len(self.passes)
            self.passes.append(cur)

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
            self._cur = PassStats(index=len(self.passes), section_type="part", offset=int(batch.base))
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
            if len(p) < 2 or bool((p[1:] > p[:-1]).all()):
                rev_u, last = p, np.arange(len(p))  # strictly increasing (the usual run): as is
            else:
                rev_u, rev_i = np.unique(p[::-1], return_index=True)
                last = len(p) - 1 - rev_i
            ksel = k[sel] if not sel.all() else k
            osel = off[sel] if not sel.all() else off
            newly = bv.write_pages(rev_u, ksel[last], osel[last])
            bv.resent += len(p) - newly

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
    def totals(self) -> dict[str, int]:
        """Record counts per kind and bytes over the whole stream (re-sends counted each time)."""
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
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``vmig ram --json`` document."""
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
                "target_page_size": ps,
            })
        return {
            "page_size": self.page_size,
            "blocks": blocks,
            "passes": [p.to_json() for p in self.passes],
            "totals": self.totals(),
        }


def ram_view(events: Iterable[Any]) -> RamView:
    """Build a :class:`RamView` from an iterable of decoder events."""
    view = RamView()
    for ev in events:
        view.feed(ev)
    return view
