"""Compare two migration streams: configuration, sections, decoded device state, guest RAM.

What a person debugging a failed migration asks of two captures (source vs. re-capture, QEMU
version A vs. B, precopy vs. postcopy, before vs. after an edit): which sections exist in only
one, which device fields differ (decoded through the streams' descriptions, vmig's bundled
schema sets, or as bytes), and which guest pages end up different.

Device state is compared semantically, as QEMU's destination would load it:

* a section is keyed by ``idstr[instance]`` wherever it travels (top level, or inside
  postcopy's PACKAGED command), so a precopy and a postcopy capture compare field by field;
* a virtio-mem device's early section (8.0+ machine types: ``tmp``, ``size``, ``bitmap``) is
  merged into its late section's ``device`` state, where 7.2 machine types carry them, so the
  same device compares equal across machine types;
* a bitmap is one value: its set ranges ``[[start, end), ...]`` (virtio-mem: block indices);
* integers print as hex, as QEMU's analyze-migration.py prints vmstate integers.

Every difference is a :class:`Difference` ``(kind, path, a, b)`` with JSON values (None where
absent): ``config`` (configuration record), ``section`` (version of a section, None = absent;
also RAMBlocks present in one stream), ``field`` (``section.path.to.field``), ``ram`` (a range
of guest pages whose final contents differ).

RAM is compared on the final content a destination would hold (last write wins, a page never
sent reads as zero), through a 64-bit digest per page: a weighted sum of the page's 64-bit words
with fixed odd weights (not cryptographic: a tool for finding differences, not for proving
equality against an adversary). XBZRLE and zlib pages depend on the previous content and are
reported as "not compared" pages instead of being guessed.

Library: :func:`diff_events` takes two event iterables (``vmig.io.streams.iter_events``); the
``vmig diff`` command prints its result. No I/O here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from vmig.errors import StreamError
from vmig.records import field, record
from vmig.runs import true_runs
from vmig.stream.constants import RamFlag
from vmig.stream.events import RamRecords

__all__ = ["PageDigests", "Difference", "DiffResult", "diff_events"]

_CONT = int(RamFlag.CONTINUE)
_ZERO, _PAGE, _XBZRLE, _COMPRESS = (int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE),
                                    int(RamFlag.COMPRESS_PAGE))
MAX_LISTED = 40  # text output: differences listed without --all


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


@record(frozen=True)
class Difference:
    """One difference: ``kind`` (config, section, field, ram), ``path``, values in A and B
    (JSON values; None where absent). ``ram`` entries give the byte range ``[start, end)`` as
    ``path`` ``block[start, end)`` and the number of pages of that range with non-zero content
    in each stream as ``a``/``b``."""

    kind: str
    path: str
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "a": self.a, "b": self.b}

    def text(self) -> str:
        if self.kind == "section":
            if self.a is None or self.b is None:
                return f"only in {'A' if self.b is None else 'B'}: {self.path}"
            return f"{self.path}: section version {self.a} -> {self.b}"
        if self.kind == "ram":
            if isinstance(self.a, dict) or isinstance(self.b, dict):
                return f"ram {self.path}: {_text(self.a)} -> {_text(self.b)}"
            return f"ram {self.path}: contents differ (non-zero pages: A {self.a}, B {self.b})"
        return f"{self.path}: {_text(self.a)} -> {_text(self.b)}"


def _text(v: Any) -> str:
    """A value as the text report prints it: integers in hex, ranges as ``[a, b)``."""
    if v is None:
        return "<absent>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:#x}"
    if isinstance(v, list) and all(isinstance(r, list) and len(r) == 2 for r in v):
        return "[" + ", ".join(f"[{a}, {b})" for a, b in v) + "]" if v else "[] (none set)"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_text(x)}" for k, x in v.items()) + "}"
    s = str(v) if isinstance(v, str) else repr(v)
    return s if len(s) <= 100 else s[:97] + "..."


@record
class DiffResult:
    """What differs; ``same`` when nothing does."""

    differences: list[Difference] = field(default_factory=list)
    not_compared: dict[str, int] = field(default_factory=dict)  # block -> XBZRLE/zlib pages
    sections_compared: int = 0

    @property
    def same(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {"same": self.same, "differences": [d.to_json() for d in self.differences],
                "sections_compared": self.sections_compared, "not_compared": self.not_compared}

    def render(self, *, all: bool = False) -> str:
        """The text report (``vmig diff``); at most :data:`MAX_LISTED` lines unless ``all``."""
        out: list[str] = []
        if self.same:
            out.append(f"same: {self.sections_compared} sections and all RAM pages equal")
        shown = self.differences if all else self.differences[:MAX_LISTED]
        out += [d.text() for d in shown]
        if len(shown) < len(self.differences):
            out.append(f"... {len(self.differences) - len(shown)} more differences (--all lists them)")
        out += [f"ram {blk}: {n} page(s) not compared (XBZRLE/zlib)" for blk, n in self.not_compared.items()]
        return "\n".join(out) + "\n"


def _tap(events: Iterable[Any], digests: PageDigests) -> Iterator[Any]:
    for ev in events:
        if isinstance(ev, RamRecords):
            digests.feed(ev.batch)
        yield ev


def _is_bitmap(value: dict[str, Any]) -> bool:
    return "ranges" in value and "bits" in value


def _leaves(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        if _is_bitmap(value):  # one value: the set ranges (and the size apart)
            out[path] = [list(r) for r in value["ranges"]]
            out[f"{path}.bits"] = value["bits"]
            return
        for k, v in value.items():
            if k in ("type", "size") and "decoded" in value:
                continue  # the payload's type and byte count: the decoded fields say what differs
            _leaves(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _leaves(v, f"{path}[{i}]", out)
    else:
        out[path] = value


_EARLY = "/virtio-mem-device-early"
_LATE = "/virtio-mem"


def _sections(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Sections by ``idstr[instance]`` (packaged or not), virtio-mem early state merged into
    the late section's ``device`` (where 7.2 machine types carry it)."""
    out: dict[str, dict[str, Any]] = {}
    early: dict[str, dict[str, Any]] = {}
    for s in doc["sections"]:
        if s["idstr"].endswith(_EARLY) and s.get("state") is not None:
            early[s["idstr"][: -len(_EARLY)] + f"[{s['instance_id']}]"] = s
            continue
        out[f"{s['idstr']}[{s['instance_id']}]"] = s
    for prefix, e in early.items():
        late = out.get(prefix.replace("[", _LATE + "[", 1))
        device = _virtio_device(late)
        if device is None:
            out[f"{e['idstr']}[{e['instance_id']}]"] = e  # no late section to merge into
            continue
        state = e["state"]
        device.update({k: state[k] for k in ("tmp", "size", "bitmap") if k in state})
    return out


def _virtio_device(section: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        device = section["state"]["virtio"]["decoded"]["device"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return device if isinstance(device, dict) else None


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    """``path`` equals a pattern, lies under it (``sec.field`` under ``sec``) or matches it with
    ``*`` and ``?`` as wildcards (brackets are literal: paths have ``[index]``)."""
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[")
               or fnmatch.fnmatchcase(path, p.replace("[", "[[]")) for p in patterns)


def diff_events(a: Iterable[Any], b: Iterable[Any], *, desc_from: Any = None,
                ignore: Sequence[str] = (), names: tuple[str, str] | None = None) -> DiffResult:
    """Compare two decoded streams (each event iterable is consumed once).

    Args:
        ignore: paths (or shell globs) whose differences are left out (a section, a field,
            ``configuration.uuid``, a RAMBlock).
        names: the two streams' file names, for errors found in their sections.

    Raises:
        StreamError / SchemaError: a stream is invalid (from the decoder or a device layout).
    """
    from vmig.vmstate import vmig_json

    da, db = PageDigests(), PageDigests()
    docs = []
    for i, (events, digests) in enumerate(((a, da), (b, db))):
        try:
            docs.append(vmig_json.analyze(_tap(events, digests), desc_from=desc_from))
        except StreamError as e:
            if names is not None:
                e.with_path(names[i])
            raise
    doc_a, doc_b = docs
    diffs: list[Difference] = []
    ca, cb = doc_a["configuration"] or {}, doc_b["configuration"] or {}
    for k in ("name", "target_page_bits", "capabilities", "uuid", "subsections"):
        if ca.get(k) != cb.get(k):
            diffs.append(Difference("config", f"configuration.{k}", ca.get(k), cb.get(k)))
    sa, sb = _sections(doc_a), _sections(doc_b)
    res = DiffResult()
    for key in dict.fromkeys([*sa, *sb]):
        x, y = sa.get(key), sb.get(key)
        if x is None or y is None:
            diffs.append(Difference("section", key, x and x.get("version_id"), y and y.get("version_id")))
            continue
        res.sections_compared += 1
        if x.get("version_id") != y.get("version_id"):
            diffs.append(Difference("section", key, x.get("version_id"), y.get("version_id")))
        if x.get("kind") != "device" or y.get("kind") != "device":
            continue
        fx: dict[str, Any] = {}
        fy: dict[str, Any] = {}
        _leaves(x.get("state") if x.get("state") is not None else {"hex": x.get("hex")}, key, fx)
        _leaves(y.get("state") if y.get("state") is not None else {"hex": y.get("hex")}, key, fy)
        diffs += [Difference("field", p, fx.get(p), fy.get(p))
                  for p in dict.fromkeys([*fx, *fy]) if fx.get(p) != fy.get(p)]
    ps = da.page_size or db.page_size or 4096
    zero = da._fill[0] if da._fill is not None else db._fill[0] if db._fill is not None else 0
    for blk in dict.fromkeys([*da.digests, *db.digests]):
        if blk not in da.digests or blk not in db.digests:
            diffs.append(Difference("section", f"RAMBlock {blk}",
                                    {"length": da.lengths[blk]} if blk in da.digests else None,
                                    {"length": db.lengths[blk]} if blk in db.digests else None))
            continue
        la, lb = da.lengths[blk], db.lengths[blk]
        if la != lb:
            diffs.append(Difference("ram", blk, {"length": la}, {"length": lb}))
        n = -(-min(la, lb) // ps)  # pages both blocks have
        ta, tb = da.digests[blk], db.digests[blk]
        runs: list[list[int]] = []  # [first, stop, non-zero in A, non-zero in B], page indices
        not_compared = 0
        for c in sorted(set(ta.chunks) | set(tb.chunks)):
            base = c << PAGE_CHUNK_BITS
            if n - base <= 0:
                continue
            (dig_a, unc_a), (dig_b, unc_b) = ta.get(c), tb.get(c)
            k = min(n - base, _CHUNK)
            unc = (unc_a | unc_b)[:k]
            differ = (dig_a[:k] != dig_b[:k]) & ~unc
            not_compared += int(unc.sum())
            for first, stop in true_runs(differ):
                nz_a = int(np.count_nonzero(dig_a[first:stop] != zero))
                nz_b = int(np.count_nonzero(dig_b[first:stop] != zero))
                if runs and runs[-1][1] == base + first:  # a run across a chunk boundary
                    runs[-1][1] = base + stop
                    runs[-1][2] += nz_a
                    runs[-1][3] += nz_b
                else:
                    runs.append([base + first, base + stop, nz_a, nz_b])
        for first, stop, nz_a, nz_b in runs:
            diffs.append(Difference("ram", f"{blk}[{first * ps:#x}, {stop * ps:#x})", nz_a, nz_b))
        if not_compared:
            res.not_compared[blk] = not_compared
    res.differences = [d for d in diffs if not _ignored(d.path, ignore)]
    return res
