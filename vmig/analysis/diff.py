"""Compare two migration streams: configuration, sections, decoded device state, guest RAM.

What a person debugging a failed migration asks of two captures (source vs. re-capture, QEMU
version A vs. B, before vs. after an edit): which sections exist in only one, which device
fields differ (decoded through the streams' descriptions, vmig's bundled schema sets, or as
bytes), and which guest pages end up different.

RAM is compared on the final content a destination would hold (last write wins, a page never
sent reads as zero), through a 64-bit digest per page: a weighted sum of the page's 64-bit words
with fixed odd weights (not cryptographic: a tool for finding differences, not for proving
equality against an adversary). XBZRLE and zlib pages depend on the previous content and are
reported as "not compared" pages instead of being guessed.

Library: :func:`diff_events` takes two event iterables (``vmig.io.streams.iter_events``); the
``vmig diff`` command prints its result. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmig.stream.constants import RamFlag

__all__ = ["PageDigests", "DiffResult", "diff_events"]

_CONT = int(RamFlag.CONTINUE)
_ZERO, _PAGE, _XBZRLE, _COMPRESS = (int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE),
                                    int(RamFlag.COMPRESS_PAGE))
MAX_FIELDS = 20  # differing fields listed per section
MAX_RANGES = 10  # differing page ranges listed per block


#: pages per chunk of per-page digests: chunks exist only where records wrote, so memory grows
#: with the records present, not with the length a block claims
PAGE_CHUNK_BITS = 12
_CHUNK = 1 << PAGE_CHUNK_BITS


class _BlockPages:
    """Digest and "not compared" flag per page of one block, in chunks created on first write
    (a missing chunk: never sent, digest of a zero page = 0)."""

    def __init__(self) -> None:
        self.chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        ch = self.chunks.get(c)
        if ch is None:
            ch = self.chunks[c] = (np.zeros(_CHUNK, dtype=np.uint64), np.zeros(_CHUNK, dtype=bool))
        return ch

    def set(self, pages: np.ndarray, digests: np.ndarray | None, uncompared: bool) -> None:
        """Record writes of ``pages`` (record order; a later write of a page wins)."""
        cid = pages >> PAGE_CHUNK_BITS
        for c in np.unique(cid).tolist():
            sel = cid == c
            dig, unc = self._chunk(c)
            local = pages[sel] & (_CHUNK - 1)
            if digests is not None:
                dig[local] = digests[sel]
            unc[local] = uncompared

    def get(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        ch = self.chunks.get(c)
        return ch if ch is not None else (np.zeros(_CHUNK, dtype=np.uint64), np.zeros(_CHUNK, dtype=bool))


class PageDigests:
    """Per-RAMBlock digests of the final page contents of one stream (fed RAM batches)."""

    def __init__(self) -> None:
        self.page_size = 0
        self.lengths: dict[str, int] = {}
        self.digests: dict[str, _BlockPages] = {}
        self._weights: np.ndarray | None = None
        self._fill: np.ndarray | None = None

    def _setup(self, ps: int) -> None:
        if self.page_size == ps:
            return
        self.page_size = ps
        rng = np.random.default_rng(0x564D4947)  # fixed: both streams use the same weights
        self._weights = rng.integers(0, 2**63, ps // 8, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        wsum = int(self._weights.sum(dtype=np.uint64))
        self._fill = np.array([(b * 0x0101010101010101 * wsum) % 2**64 for b in range(256)], dtype=np.uint64)

    def _block(self, idstr: str, length: int) -> None:
        self.digests.setdefault(idstr, _BlockPages())
        self.lengths[idstr] = max(length, self.lengths.get(idstr, 0))

    def _page_digests(self, batch: Any, doff: np.ndarray) -> np.ndarray:
        """Digests of the pages at ``doff`` (offsets into ``batch.raw``): runs whose pages are a
        constant stride apart (bulk ``PAGE|CONTINUE`` runs) are read as one strided view."""
        assert self._weights is not None
        ps = self.page_size
        out = np.empty(len(doff), dtype=np.uint64)
        cut = np.flatnonzero(np.diff(doff) != ps + 8) + 1
        for a, z in zip([0] + cut.tolist(), cut.tolist() + [len(doff)]):
            for c in range(a, z, 1024):
                e = min(z, c + 1024)
                words = np.ndarray((e - c, ps // 8), dtype="<u8", buffer=batch.raw,
                                   offset=int(doff[c]), strides=(ps + 8, 8))
                out[c:e] = (words * self._weights).sum(axis=1, dtype=np.uint64)
        return out

    def feed(self, batch: Any) -> None:
        """Apply one ``RamBatch`` (record order: last write wins)."""
        self._setup(batch.page_size)
        ps = self.page_size
        for b in batch.mem_size or ():
            self._block(b.idstr, b.used_length)
        if len(batch) == 0:
            return
        types = (batch.flags & np.uint16(0x3FF & ~_CONT)).astype(np.int64)
        rows = np.flatnonzero(np.isin(types, (_ZERO, _PAGE, _XBZRLE, _COMPRESS)))
        if len(rows) == 0:
            return
        raw = np.frombuffer(batch.raw, dtype=np.uint8)
        t = types[rows]
        blk = batch.block[rows]
        cut = np.flatnonzero((t[1:] != t[:-1]) | (blk[1:] != blk[:-1])) + 1
        assert self._weights is not None and self._fill is not None
        for a, z in zip([0] + cut.tolist(), cut.tolist() + [len(rows)]):
            r = rows[a:z]
            block = batch.blocks[int(blk[a])]
            if block.idstr not in self.digests:
                self._block(block.idstr, block.used_length)
            pages = (batch.addr[r] // np.uint64(ps)).astype(np.int64)
            doff = batch.data_offset[r] - batch.base
            typ = int(t[a])
            table = self.digests[block.idstr]
            if typ == _ZERO:
                table.set(pages, self._fill[raw[doff]], False)
            elif typ == _PAGE:
                table.set(pages, self._page_digests(batch, doff), False)
            else:
                table.set(pages, None, True)


@dataclass
class DiffResult:
    """What differs; ``same`` when nothing does."""

    configuration: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    devices: dict[str, list[str]] = field(default_factory=dict)  # section -> differing fields
    ram: dict[str, dict[str, Any]] = field(default_factory=dict)  # block -> summary
    sections_compared: int = 0

    @property
    def same(self) -> bool:
        return not (self.configuration or self.only_a or self.only_b or self.devices or self.ram)

    def to_json(self) -> dict[str, Any]:
        return {"same": self.same, "configuration": self.configuration, "only_in_a": self.only_a,
                "only_in_b": self.only_b, "devices": self.devices, "ram": self.ram,
                "sections_compared": self.sections_compared}

    def render(self) -> str:
        """The text report (``vmig diff``)."""
        if self.same:
            return f"same: {self.sections_compared} sections and all RAM pages equal\n"
        out: list[str] = []
        out += [f"configuration: {c}" for c in self.configuration]
        out += [f"only in A: {s}" for s in self.only_a]
        out += [f"only in B: {s}" for s in self.only_b]
        for sec, fields in self.devices.items():
            out.append(f"{sec}: {len(fields)} difference(s)" if fields else f"{sec}: differs")
            out += [f"  {f}" for f in fields[:MAX_FIELDS]]
            if len(fields) > MAX_FIELDS:
                out.append(f"  ... {len(fields) - MAX_FIELDS} more")
        for blk, s in self.ram.items():
            if "length" in s:
                out.append(f"ram {blk}: used length {s['length'][0]:#x} in A, {s['length'][1]:#x} in B")
            if s.get("pages"):
                rs = ", ".join(f"[{a:#x}, {z:#x})" for a, z in s["ranges"][:MAX_RANGES])
                more = f" ... {len(s['ranges']) - MAX_RANGES} more ranges" if len(s["ranges"]) > MAX_RANGES else ""
                out.append(f"ram {blk}: {s['pages']} page(s) differ: {rs}{more}")
            if s.get("not_compared"):
                out.append(f"ram {blk}: {s['not_compared']} page(s) not compared (XBZRLE/zlib)")
        return "\n".join(out) + "\n"


def _tap(events: Iterable[Any], digests: PageDigests) -> Iterator[Any]:
    for ev in events:
        if type(ev).__name__ == "RamRecords":
            digests.feed(ev.batch)
        yield ev


def _leaves(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _leaves(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _leaves(v, f"{path}[{i}]", out)
    else:
        out[path] = value


def _short(v: Any) -> str:
    s = repr(v) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


def _sections(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in doc["sections"]:
        key = f"{s['idstr']}[{s['instance_id']}]" + (" (packaged)" if s.get("packaged") else "")
        out[key] = s
    return out


def _ranges(idx: np.ndarray, ps: int) -> list[tuple[int, int]]:
    """Byte ranges of the sorted page indices ``idx``."""
    if len(idx) == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    return [(int(r[0]) * ps, (int(r[-1]) + 1) * ps) for r in np.split(idx, cut)]


def diff_events(a: Iterable[Any], b: Iterable[Any], *, desc_from: Any = None) -> DiffResult:
    """Compare two decoded streams (each event iterable is consumed once).

    Raises:
        StreamError / SchemaError: a stream is invalid (from the decoder or a device layout).
    """
    from vmig.vmstate import vmig_json

    da, db = PageDigests(), PageDigests()
    doc_a = vmig_json.analyze(_tap(a, da), desc_from=desc_from)
    doc_b = vmig_json.analyze(_tap(b, db), desc_from=desc_from)
    res = DiffResult()
    ca, cb = doc_a["configuration"] or {}, doc_b["configuration"] or {}
    for k in ("name", "target_page_bits", "capabilities", "uuid", "subsections"):
        if ca.get(k) != cb.get(k):
            res.configuration.append(f"{k}: {_short(ca.get(k))} -> {_short(cb.get(k))}")
    sa, sb = _sections(doc_a), _sections(doc_b)
    res.only_a = [k for k in sa if k not in sb]
    res.only_b = [k for k in sb if k not in sa]
    for key in (k for k in sa if k in sb):
        x, y = sa[key], sb[key]
        res.sections_compared += 1
        if x.get("kind") != "device" or y.get("kind") != "device":
            continue
        fx: dict[str, Any] = {}
        fy: dict[str, Any] = {}
        _leaves(x.get("state") if x.get("state") is not None else {"hex": x.get("hex")}, "", fx)
        _leaves(y.get("state") if y.get("state") is not None else {"hex": y.get("hex")}, "", fy)
        fields = [f"{p}: {_short(fx.get(p, '<absent>'))} -> {_short(fy.get(p, '<absent>'))}"
                  for p in dict.fromkeys([*fx, *fy]) if fx.get(p, "<absent>") != fy.get(p, "<absent>")]
        if x.get("version_id") != y.get("version_id"):
            fields.insert(0, f"section version: {x.get('version_id')} -> {y.get('version_id')}")
        if fields:
            res.devices[key] = fields
    ps = da.page_size or db.page_size or 4096
    for blk in dict.fromkeys([*da.digests, *db.digests]):
        if blk not in da.digests or blk not in db.digests:
            (res.only_a if blk in da.digests else res.only_b).append(f"RAMBlock {blk}")
            continue
        s: dict[str, Any] = {}
        la, lb = da.lengths[blk], db.lengths[blk]
        if la != lb:
            s["length"] = (la, lb)
        n = -(-min(la, lb) // ps)  # pages both blocks have
        ta, tb = da.digests[blk], db.digests[blk]
        differ_pages: list[np.ndarray] = []
        not_compared = 0
        for c in sorted(set(ta.chunks) | set(tb.chunks)):
            room = n - (c << PAGE_CHUNK_BITS)
            if room <= 0:
                continue
            (dig_a, unc_a), (dig_b, unc_b) = ta.get(c), tb.get(c)
            k = min(room, _CHUNK)
            unc = (unc_a | unc_b)[:k]
            differ = (dig_a[:k] != dig_b[:k]) & ~unc
            not_compared += int(unc.sum())
            differ_pages.append(np.flatnonzero(differ) + (c << PAGE_CHUNK_BITS))
        idx = np.concatenate(differ_pages) if differ_pages else np.zeros(0, dtype=np.int64)
        if len(idx):
            s["pages"] = len(idx)
            s["ranges"] = _ranges(idx, ps)
        if not_compared:
            s["not_compared"] = not_compared
        if s:
            res.ram[blk] = s
    return res
