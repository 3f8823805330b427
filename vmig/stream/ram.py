"""RAM section records (idstr "ram", version 4): framing walker and the columnar RamBatch.

Mirrors migration/ram.c of QEMU 7.2: ``ram_save_setup`` (MEM_SIZE block list), ``save_page_header``
/ ``save_zero_page`` / ``save_normal_page`` / ``save_xbzrle_page`` / compressed pages on the
source, ``ram_load_precopy`` / ``ram_block_from_stream`` on the destination. This module only
frames records (where each starts, its flags, block, in-block address, where its data lies) and
writes them (:func:`build_records`, for the encoder and the migration engine); page contents
(XBZRLE, zlib) are decoded and applied by ``vmig.stream.xbzrle`` / ``vmig.stream.ramcodec``.

Theory of operation
-------------------
1. A record starts with ``be64 W``; ``flags = W & (page_size-1)``, ``addr = W & ~(page_size-1)``.
2. ZERO/PAGE/XBZRLE/COMPRESS_PAGE carry a counted block idstr iff CONTINUE is clear; the last
   block named persists across records and sections (one "last block" per channel).
3. A :class:`RamWalker` consumes complete records incrementally and cuts batches at
   deterministic points: a batch ends after the EOS record or at the first record boundary
   where it holds ``>= batch_bytes`` bytes. Batch boundaries therefore depend only on the
   record sizes, never on how input arrived.
4. Fast paths, each with cost proportional to the records it consumes. The compiled walker
   (``vmig/stream/_ramwalk.c``, optional, built by ``setup.py``) walks every valid
   page-carrying record in C and hands anything else (other record types, every error, an
   incomplete record) to the Python step below, which words all errors. Without it (or with
   ``VMIG_PURE=1``), at a ``PAGE|CONTINUE`` or ``ZERO|CONTINUE`` record followed by more of the
   same, the walker views the following record words as strided numpy arrays (stride
   ``8 + page_size`` or 9) in growing windows (galloping), checks flags and addresses in bulk and
   appends whole columns. :func:`walk_scalar` is the plain one-record-at-a-time reference;
   tests assert all paths give identical batches.
5. A :class:`RamBatch` is columnar (numpy arrays) plus the raw bytes of the batch; no per-page
   Python objects.
"""

from __future__ import annotations

import array
import importlib.util
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vmig.errors import RamError, TruncatedError
from vmig.records import field, record, replace
from vmig.stream.constants import ENCODING_FLAG_XBZRLE, RamFlag
from vmig.stream.inbuf import NeedMoreInput
from vmig.stream.ramcodec import compress_bound

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "RamBlock",
    "RamState",
    "RamBatch",
    "RamWalker",
    "BATCH_BYTES",
    "walk_scalar",
    "walk_fast",
    "compiled_walker_available",
    "build_records",
    "mem_size_bytes",
    "mem_size_record",
    "EOS_RECORD",
    "RECORD_TYPES",
    "BLOCK_TYPES",
]

BATCH_BYTES = 8 << 20
_W = struct.Struct(">Q")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")

ZERO = int(RamFlag.ZERO)
PAGE = int(RamFlag.PAGE)
EOS = int(RamFlag.EOS)
CONT = int(RamFlag.CONTINUE)
XBZRLE = int(RamFlag.XBZRLE)
HOOK = int(RamFlag.HOOK)
COMPRESS = int(RamFlag.COMPRESS_PAGE)
MEM_SIZE = int(RamFlag.MEM_SIZE)
FLUSH = int(RamFlag.MULTIFD_FLUSH)

#: record types (flags without CONTINUE) that carry a block id / page payload
BLOCK_TYPES = frozenset({ZERO, PAGE, XBZRLE, COMPRESS})
#: every record type the walker accepts
RECORD_TYPES = frozenset({ZERO, PAGE, XBZRLE, COMPRESS, MEM_SIZE, EOS, HOOK, FLUSH})
_BULK_MIN = 4  # below this a numpy round trip costs more than scalar steps


@record(frozen=True, slots=True)
class RamBlock:
    """One entry of the MEM_SIZE block list."""

    idstr: str
    used_length: int
    page_size: int | None = None  # present only with postcopy-ram and a non-host page size
    mr_addr: int | None = None  # present only with x-ignore-shared
    #: mapped-ram (QEMU 9.0+): absolute file offsets of the block's page bitmap and pages
    #: (both 0 for an ignored block); None in ordinary streams (vmig.stream.mapped_ram)
    bitmap_offset: int | None = None
    pages_offset: int | None = None


@record(slots=True)
class RamState:
    """What the walker must remember across records, batches and sections (one channel).

    Attributes:
        page_size: target page size (4096 on x86; from configuration page bits / vmdesc).
        blocks: the block table from the last MEM_SIZE record.
        last_block: index of the block named last (CONTINUE refers to it), -1 = none.
        ignore_shared: x-ignore-shared on (each MEM_SIZE entry has be64 mr_addr).
        postcopy_page_sizes: the POSTCOPY_ADVISE page-size summary when postcopy-ram was
            advised, else None (then no entry has a page-size field).
    """

    page_size: int = 4096
    blocks: tuple[RamBlock, ...] = ()
    last_block: int = -1
    ignore_shared: bool = False
    mapped_ram: bool = False
    postcopy_page_sizes: int | None = None
    _index: dict[str, int] = field(default_factory=dict)

    def set_blocks(self, blocks: Sequence[RamBlock]) -> None:
        self.blocks = tuple(blocks)
        self._index = {b.idstr: i for i, b in enumerate(self.blocks)}

    def block_index(self, idstr: str) -> int:
        return self._index.get(idstr, -1)

    @property
    def mask(self) -> int:
        return self.page_size - 1


_COLS = ("offset", "flags", "block", "addr", "data_offset", "data_length", "has_idstr")
_DTYPES = {  # numpy dtype names (numpy is imported only where columns are built)
    "offset": "int64",
    "flags": "uint16",
    "block": "int32",
    "addr": "uint64",
    "data_offset": "int64",
    "data_length": "int64",
    "has_idstr": "bool",
}


class RamBatch:
    """A columnar batch of RAM records plus the raw bytes they were read from.

    Columns (numpy arrays, one row per record, read-only):
        ``offset`` absolute record offset; ``flags`` (incl. CONTINUE); ``block`` index into
        ``blocks`` (-1 for records without a block); ``addr`` in-block byte address (the byte
        total for MEM_SIZE); ``data_offset`` absolute offset of the record's data (ZERO: the
        fill byte; PAGE: the page; XBZRLE: the encoded bytes after ``01 be16 n``; COMPRESS: the
        zlib bytes after ``be32 n``; MEM_SIZE: the block list); ``data_length``; ``has_idstr``.

    Attributes:
        base: absolute offset of ``raw[0]`` (= first record's offset).
        raw: the batch's bytes (bytes or a read-only memoryview), ``len(raw)`` = batch length.
        blocks: the block table in effect (after any MEM_SIZE record of this batch; a MEM_SIZE
            record is always the first of its batch, so one table serves every record).
        page_size: target page size used for flag masking.
        mem_size: the blocks listed by the MEM_SIZE record that starts this batch, else None.
        verbatim: True when ``raw`` is exactly what the columns describe (decoder output); the
            encoder then emits ``raw`` as is.

    A walker that does not keep columns (``RamWalker(keep_columns=False)``) gives batches that
    know only their record count (``len``) and how many records carry each flags value
    (:meth:`flag_counts`); the first column asked for walks ``raw`` again from the RAM state
    the batch started with, so every column reads the same either way.
    """

    __slots__ = ("base", "raw", "blocks", "page_size", "mem_size", "verbatim", "_count", "_rewalk",
                 "_kinds") + _COLS

    def __init__(
        self,
        *,
        base: int,
        raw: bytes | memoryview,
        blocks: tuple[RamBlock, ...],
        page_size: int,
        columns: dict[str, np.ndarray] | None,
        mem_size: tuple[RamBlock, ...] | None = None,
        verbatim: bool = True,
        count: int | None = None,
        rewalk: RamState | None = None,
        kinds: dict[int, int] | None = None,
    ) -> None:
        self.base = base
        self.raw = raw
        self.blocks = blocks
        self.page_size = page_size
        self.mem_size = mem_size
        self.verbatim = verbatim
        # Without columns (a walk that only validated) the batch keeps the RAM state its first
        # record was read with and walks ``raw`` again when a column is first asked for.
        self._rewalk = rewalk
        self._kinds = kinds
        if columns is None:
            if rewalk is None or count is None or kinds is None:
                raise ValueError("a RamBatch without columns needs its record count, kinds and start state")
            self._count = count
            return
        self._set_columns(columns)

    def _set_columns(self, columns: dict[str, np.ndarray]) -> None:
        import numpy as np

        for name in _COLS:
            arr = np.ascontiguousarray(columns[name], dtype=_DTYPES[name])
            arr.flags.writeable = False
            setattr(self, name, arr)
        self._count = len(self.offset)  # type: ignore[attr-defined]
        self._rewalk = None

    def __getattr__(self, name: str) -> np.ndarray:
        # only reached for a column slot not filled yet (columns deferred by the walker)
        if name not in _COLS or self._rewalk is None:
            raise AttributeError(name)
        state = replace(self._rewalk)
        walker = RamWalker(state, batch_bytes=len(self.raw), keep_columns=True)
        walker.begin(self.base)
        mv = memoryview(self.raw).cast("B")
        walker.advance(mv, self.base, len(mv), at_eof=True)
        if walker.pos != self.base + len(mv) or walker._acc.total() != self._count:
            raise RuntimeError("a deferred RamBatch walked to a different end")  # cannot happen: same bytes, same state
        self._set_columns(walker._acc.columns())
        return getattr(self, name)

    def __len__(self) -> int:
        return self._count

    def flag_counts(self) -> dict[int, int]:
        """How many records carry each flags value (CONTINUE included): ``{flags: records}``."""
        if self._kinds is None:
            import numpy as np

            values, counts = np.unique(self.flags, return_counts=True)  # type: ignore[attr-defined]
            self._kinds = dict(zip(values.tolist(), counts.tolist()))
        return self._kinds

    @property
    def nbytes(self) -> int:
        return len(self.raw)

    def data(self, i: int) -> memoryview:
        """The data bytes of record ``i`` (a view into ``raw``)."""
        start = int(self.data_offset[i]) - self.base  # type: ignore[attr-defined]
        return memoryview(self.raw)[start:start + int(self.data_length[i])]  # type: ignore[attr-defined]

    def types(self) -> np.ndarray:
        """Record types: ``flags & ~CONTINUE``."""
        import numpy as np

        return self.flags & np.uint16(~CONT & 0xFFFF)  # type: ignore[attr-defined]

    def page_data(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Page contents of the PAGE records (optionally of ``mask`` rows) as an (n, page_size) uint8 array view/copy."""
        import numpy as np

        sel = (self.types() == PAGE) if mask is None else mask
        offs = self.data_offset[sel] - self.base  # type: ignore[attr-defined]
        buf = np.frombuffer(self.raw, dtype=np.uint8)
        if len(offs) == 0:
            return np.empty((0, self.page_size), dtype=np.uint8)
        return buf[offs[:, None] + np.arange(self.page_size)]

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _COLS}

    def replace(self, **changes: object) -> RamBatch:
        """A copy with some columns/attributes changed; the copy is not ``verbatim``.

        Column changes must keep ``data_offset``/``data_length`` pointing into ``raw`` (or
        supply a new ``raw``/``base``).
        """
        cols = self.columns()
        kw: dict[str, object] = dict(
            base=self.base, raw=self.raw, blocks=self.blocks, page_size=self.page_size,
            mem_size=self.mem_size, verbatim=False,
        )
        for k, v in changes.items():
            if k in cols:
                cols[k] = v  # type: ignore[assignment]
            else:
                kw[k] = v
        return RamBatch(columns=cols, **kw)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RamBatch):
            return NotImplemented
        import numpy as np

        return (
            self.base == other.base
            and self.blocks == other.blocks
            and self.page_size == other.page_size
            and self.mem_size == other.mem_size
            and bytes(self.raw) == bytes(other.raw)
            and all(np.array_equal(getattr(self, c), getattr(other, c)) for c in _COLS)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RamBatch(base={self.base:#x}, records={len(self)}, bytes={len(self.raw)})"


class _Acc:
    """Column accumulator: scalar rows in lists, bulk runs as arrays, concatenated at the end.

    With ``keep=False`` rows are only counted, per flags value (the batch's columns are built
    on demand); the compiled walker adds its counts to ``tally`` (see ``_ramwalk.c``).
    """

    __slots__ = ("chunks", "rows", "count", "keep", "kinds", "tally")

    def __init__(self, keep: bool = True) -> None:
        self.chunks: list[dict[str, np.ndarray]] = []
        self.rows: list[tuple[int, int, int, int, int, int, bool]] = []
        self.count = 0  # records in chunks (rows are counted when flushed)
        self.keep = keep
        self.kinds: dict[int, int] = {}  # flags -> records (count only)
        self.tally = None if keep else array.array("Q", bytes(8 * len(_C_TALLY)))

    def add(self, cols: dict[str, np.ndarray] | None, n: int, flags: int | None = None) -> None:
        """Append ``n`` records given as columns (None when not kept), all with ``flags`` when
        given (a count-only run without columns)."""
        self.flush_rows()
        self.count += n
        if self.keep and cols is not None:
            self.chunks.append(cols)
        elif not self.keep and flags is not None:
            self.kinds[flags] = self.kinds.get(flags, 0) + n

    def flush_rows(self) -> None:
        if self.rows:
            self.count += len(self.rows)
            if self.keep:
                import numpy as np

                cols = list(zip(*self.rows))
                self.chunks.append({name: np.array(cols[i], dtype=_DTYPES[name]) for i, name in enumerate(_COLS)})
            else:
                kinds = self.kinds
                for row in self.rows:
                    kinds[row[1]] = kinds.get(row[1], 0) + 1
            self.rows = []

    def flag_counts(self) -> dict[int, int]:
        """``{flags: records}`` of a count-only accumulator (the Python steps and the compiled tally)."""
        self.flush_rows()
        kinds = dict(self.kinds)
        if self.tally is not None:
            for fl, n in zip(_C_TALLY, self.tally):
                if n:
                    kinds[fl] = kinds.get(fl, 0) + n
        return kinds

    def total(self) -> int:
        return self.count + len(self.rows)

    def columns(self) -> dict[str, np.ndarray]:
        import numpy as np

        self.flush_rows()
        if not self.chunks:
            return {name: np.empty(0, dtype=_DTYPES[name]) for name in _COLS}
        if len(self.chunks) == 1:
            return self.chunks[0]
        return {name: np.concatenate([c[name] for c in self.chunks]) for name in _COLS}


def _parse_mem_size(buf, q: int, end: int, total: int, state: RamState, rec_off: int,
                    abs_base: int = 0) -> tuple[int, tuple[RamBlock, ...]]:
    """Parse the MEM_SIZE block list at buf[q:]; returns (end index, blocks). Raises NeedMoreInput.

    With mapped-ram each entry is followed by its 28-byte header and the list continues after
    the block's pages (absolute offset ``pages_offset + used_length``): the bitmap and page
    areas become part of the record's data.
    """
    blocks: list[RamBlock] = []
    remaining = total
    ps_field = state.postcopy_page_sizes is not None and state.postcopy_page_sizes != state.page_size
    while remaining > 0:
        if q + 1 > end:
            raise NeedMoreInput("a RAM record")
        n = buf[q]
        if q + 1 + n + 8 > end:
            raise NeedMoreInput("a RAM record")
        idstr = bytes(buf[q + 1:q + 1 + n]).decode("latin-1")
        used = _W.unpack_from(buf, q + 1 + n)[0]
        q += 1 + n + 8
        if n == 0:
            raise RamError("MEM_SIZE entry with an empty block name", offset=rec_off)
        if used > remaining:
            raise RamError(
                f"MEM_SIZE block {idstr!r} used_length exceeds the remaining total",
                offset=rec_off, expected=f"<= {remaining:#x}", found=f"{used:#x}",
            )
        remaining -= used
        page_size = None
        if ps_field:
            # The page-size field is present only for blocks whose page size differs from the
            # host's, which the stream does not say. Sniff: an idstr length byte is never 0
            # while a be64 page size (< 2**56) starts with 0; where a be64 follows anyway
            # (EOS after the last block, or mr_addr with x-ignore-shared) the value must be a
            # huge page size included in the ADVISE summary.
            if q + 1 > end:
                raise NeedMoreInput("a RAM record")
            if remaining > 0 and not state.ignore_shared:
                present = buf[q] == 0
            else:
                if q + 8 > end:
                    raise NeedMoreInput("a RAM record")
                present = _is_page_size(_W.unpack_from(buf, q)[0], state)
            if present:
                if q + 8 > end:
                    raise NeedMoreInput("a RAM record")
                page_size = _W.unpack_from(buf, q)[0]
                q += 8
        mr_addr = None
        if state.ignore_shared:
            if q + 8 > end:
                raise NeedMoreInput("a RAM record")
            mr_addr = _W.unpack_from(buf, q)[0]
            q += 8
        if state.mapped_ram:
            q, bmo, pgo = _mapped_ram_entry(buf, q, end, idstr, used, state, abs_base)
            blocks.append(RamBlock(idstr, used, page_size, mr_addr, bmo, pgo))
            continue
        blocks.append(RamBlock(idstr, used, page_size, mr_addr))
    return q, tuple(blocks)


def _mapped_ram_entry(buf, q: int, end: int, idstr: str, used: int, state: RamState,
                      abs_base: int) -> tuple[int, int, int]:
    """The mapped-ram header after a block entry: (index where the list continues,
    bitmap_offset, pages_offset). The offsets are checked against where the header ends: the
    bitmap and pages lie after it, pages 1 MiB aligned (QEMU's layout)."""
    from vmig.stream import mapped_ram as mr

    hs = mr.MAPPED_RAM_HEADER.size
    if q + hs > end:
        raise NeedMoreInput("a RAM record")
    version, ps, bmo, pgo = mr.MAPPED_RAM_HEADER.unpack_from(buf, q)
    at = abs_base + q
    if version != mr.MAPPED_RAM_HDR_VERSION:
        raise RamError(f"mapped-ram header of block {idstr!r}: unsupported version", offset=at,
                       expected=mr.MAPPED_RAM_HDR_VERSION, found=version)
    if ps != state.page_size:
        raise RamError(f"mapped-ram header of block {idstr!r}: page size", offset=at,
                       expected=state.page_size, found=ps)
    if bmo == 0 and pgo == 0:  # ignored block (x-ignore-shared): nothing in the file
        return q + hs, 0, 0
    nbits = mr.bitmap_bytes(-(-used // ps))
    if pgo % mr.MAPPED_RAM_FILE_OFFSET_ALIGNMENT or not at + hs <= bmo <= bmo + nbits <= pgo:
        raise RamError(f"mapped-ram block {idstr!r}: bitmap/pages offsets out of order", offset=at,
                       expected=f"header end {at + hs:#x} <= bitmap < pages (1 MiB aligned)",
                       found=f"bitmap {bmo:#x}, pages {pgo:#x}")
    nxt = pgo + used - abs_base
    if nxt > end:
        raise NeedMoreInput("a RAM record")  # the block's bitmap and pages are not all here yet
    return nxt, bmo, pgo


def _is_page_size(v: int, state: RamState) -> bool:
    return v > state.page_size and v & (v - 1) == 0 and (state.postcopy_page_sizes or 0) & v == v


def _step(buf, p: int, end: int, state: RamState, abs_base: int, acc: _Acc) -> tuple[int, int, tuple[RamBlock, ...] | None]:
    """Parse one record at buf[p:]; append its row; return (next p, record type, mem_size)."""
    if p + 8 > end:
        raise NeedMoreInput("a RAM record")
    w = _W.unpack_from(buf, p)[0]
    mask = state.page_size - 1
    flags = w & mask
    addr = w & ~mask
    typ = flags & ~CONT
    rec_off = abs_base + p
    q = p + 8
    blk = -1
    has_id = False
    mem = None
    if typ in BLOCK_TYPES:
        if flags & CONT:
            blk = state.last_block
            if blk < 0:
                raise RamError("CONTINUE record with no previous block", offset=rec_off, found=f"flags {flags:#x}")
        else:
            if q + 1 > end:
                raise NeedMoreInput("a RAM record")
            n = buf[q]
            if q + 1 + n > end:
                raise NeedMoreInput("a RAM record")
            name = bytes(buf[q + 1:q + 1 + n]).decode("latin-1")
            blk = state.block_index(name)
            if blk < 0:
                raise RamError(f"RAM record names unknown block {name!r}", offset=rec_off,
                               expected="a block of the MEM_SIZE list", found=repr(name))
            q += 1 + n
            has_id = True
        used = state.blocks[blk].used_length
        if addr >= used:
            raise RamError(
                f"RAM address {addr:#x} beyond block {state.blocks[blk].idstr!r}",
                offset=rec_off, expected=f"< {used:#x}", found=f"{addr:#x}",
            )
        if typ == ZERO:
            dlen = 1
        elif typ == PAGE:
            dlen = state.page_size
        elif typ == XBZRLE:
            if q + 3 > end:
                raise NeedMoreInput("a RAM record")
            if buf[q] != 1:
                raise RamError("bad XBZRLE encoding flag", offset=rec_off, expected=1, found=buf[q])
            dlen = _BE16.unpack_from(buf, q + 1)[0]
            if dlen > state.page_size:
                raise RamError("XBZRLE length beyond the page size", offset=rec_off,
                               expected=f"<= {state.page_size}", found=dlen)
            q += 3
        else:  # COMPRESS_PAGE
            if q + 4 > end:
                raise NeedMoreInput("a RAM record")
            dlen = _BE32.unpack_from(buf, q)[0]
            if dlen > compress_bound(state.page_size):
                raise RamError("compressed page length beyond compressBound", offset=rec_off,
                               expected=f"<= {compress_bound(state.page_size)}", found=dlen)
            q += 4
        if q + dlen > end:
            raise NeedMoreInput("a RAM record")
        state.last_block = blk
        nxt = q + dlen
    elif typ == MEM_SIZE:
        nxt, mem = _parse_mem_size(buf, q, end, addr, state, rec_off, abs_base)
        dlen = nxt - q
        state.set_blocks(mem)
        state.last_block = -1
    elif typ in (EOS, HOOK, FLUSH):
        dlen = 0
        nxt = q
    else:
        raise RamError(f"unknown RAM record flags {flags:#x}", offset=rec_off,
                       expected="one of ZERO/PAGE/XBZRLE/COMPRESS_PAGE/MEM_SIZE/EOS/HOOK/MULTIFD_FLUSH",
                       found=f"{flags:#x}")
    acc.rows.append((rec_off, flags, blk, addr, abs_base + q, dlen, has_id))
    return nxt, typ, mem


_GALLOP_FIRST = 16  # records in the first window of a bulk run
_GALLOP_MAX = 1 << 16  # largest window: bounds the work past the run's end
_PROBE = 8  # a bulk run is tried only if the record this far ahead has the same flags


def _bulk(buf, p: int, end: int, state: RamState, abs_base: int, acc: _Acc, limit_records: int) -> int:
    """Try a bulk run of CONTINUE records at p; returns how many bytes were consumed (0 = none).

    The run's end is found by galloping: windows of 16, 32, 64, ... strided record words are
    checked in bulk until one holds a record that does not continue the run, so the work is
    proportional to the run (at most twice its length plus one small window), never to the
    bytes that follow it.
    """
    w0 = _W.unpack_from(buf, p)[0]
    mask = state.page_size - 1
    flags = w0 & mask
    if flags == PAGE | CONT:
        stride = 8 + state.page_size
        dlen = state.page_size
    elif flags == ZERO | CONT:
        stride = 9
        dlen = 1
    else:
        return 0
    blk = state.last_block
    if blk < 0:
        return 0  # the scalar step raises the error
    kmax = min((end - p) // stride, limit_records)
    if kmax < _BULK_MIN:
        return 0
    probe = min(kmax - 1, _PROBE)
    if _W.unpack_from(buf, p + probe * stride)[0] & mask != flags:
        return 0  # a short run: scalar steps are cheaper than a numpy round trip
    import numpy as np

    used = np.uint64(state.blocks[blk].used_length)
    m_flags = np.uint64(mask)
    m_addr = np.uint64(~mask & 0xFFFFFFFFFFFFFFFF)
    want = np.uint64(flags)
    addrs: list[np.ndarray] = []
    k = 0
    win = _GALLOP_FIRST
    while k < kmax:
        n = min(win, kmax - k)
        # one strided pass over the headers into a native-endian copy (for PAGE runs each header
        # sits in its own 4 KiB page: cache and TLB misses dominate)
        w = np.ndarray((n,), dtype=">u8", buffer=buf, offset=p + k * stride, strides=(stride,)).astype(np.uint64)
        a = w & m_addr
        bad = ((w & m_flags) != want) | (a >= used)
        if bad.any():
            n = int(np.argmax(bad))  # records before the first bad one are fine; the scalar step reports it
            addrs.append(a[:n])
            k += n
            break
        addrs.append(a)
        k += n
        win = min(win * 2, _GALLOP_MAX)
    if k < _BULK_MIN:
        return 0
    if not acc.keep:
        acc.add(None, k, flags)
        return k * stride
    offs = np.arange(k, dtype=np.int64) * stride + (abs_base + p)
    acc.add({
        "offset": offs,
        "flags": np.full(k, flags, dtype=np.uint16),
        "block": np.full(k, blk, dtype=np.int32),
        "addr": addrs[0] if len(addrs) == 1 else np.concatenate(addrs),
        "data_offset": offs + 8,
        "data_length": np.full(k, dlen, dtype=np.int64),
        "has_idstr": np.zeros(k, dtype=np.bool_),
    }, k)
    return k * stride


def _compiled():
    """The compiled walker module, or None (not built, or ``VMIG_PURE`` set in the environment)."""
    if os.environ.get("VMIG_PURE"):
        return None
    try:
        from vmig.stream import _ramwalk
    except ImportError:
        return None
    return _ramwalk


def compiled_walker_available() -> bool:
    """True when the compiled walker is built and importable (whatever ``VMIG_PURE`` says)."""
    return importlib.util.find_spec("vmig.stream._ramwalk") is not None


#: the flag values and limits the compiled walker checks (one definition: RamFlag)
_C_FLAGS = (ZERO, PAGE, CONT, XBZRLE, COMPRESS, ENCODING_FLAG_XBZRLE)
_C_CAP = 1 << 16  # records per compiled call: bounds the column arrays allocated ahead
_C_MAX_PAGE = 1 << 30  # larger (damaged) page sizes do not fit the walker's C integers
_C_MIN_BYTES = 9  # the smallest record (ZERO|CONTINUE): bounds how many records fit
#: the flags value counted in each slot of the compiled walker's tally (2 * type + CONTINUE)
_C_TALLY = tuple(t | c for t in (ZERO, PAGE, XBZRLE, COMPRESS) for c in (0, CONT))


class RamWalker:
    """Incremental RAM record walker producing deterministic :class:`RamBatch` cuts.

    Usage (the decoder's loop): ``walker.begin(abs_offset)`` at a batch start, then
    ``walker.advance(buf, pos, end, abs_base)`` as bytes arrive; when it returns True the batch
    is complete (``walker.eos`` tells whether it ended with EOS) and ``walker.finish(raw)``
    returns it.

    Args:
        state: the channel's RAM state (shared across sections).
        batch_bytes: the cut size (a batch ends at the first record boundary >= this).
        fast: use a bulk path (False = scalar reference).
        compiled: with ``fast``, use the compiled walker (``vmig.stream._ramwalk``) when True,
            the numpy bulk runs when False; None = compiled when built and ``VMIG_PURE`` is unset.
        keep_columns: build the batch columns while walking (False: the walk only validates and
            counts; a batch builds its columns when first asked, by walking its bytes again).

    Raises:
        ImportError: ``compiled=True`` but the compiled walker is not built.
    """

    def __init__(self, state: RamState, batch_bytes: int = BATCH_BYTES, fast: bool = True,
                 compiled: bool | None = None, keep_columns: bool = True) -> None:
        self.state = state
        self.batch_bytes = batch_bytes
        self.fast = fast
        self.keep_columns = keep_columns
        if compiled is None:
            self._c = _compiled() if fast else None
        elif compiled:
            from vmig.stream import _ramwalk

            self._c = _ramwalk
        else:
            self._c = None
        self._c_key: tuple[RamBlock, ...] | None = None
        self._c_blocks: tuple[bytes, tuple[bytes, ...], tuple[int, ...]] = (b"", (), ())
        self.start = 0  # absolute offset of the batch
        self.pos = 0  # absolute offset of the next record
        self.eos = False
        self._acc = _Acc(keep_columns)
        self._mem: tuple[RamBlock, ...] | None = None
        self._state0: RamState | None = None

    @property
    def compiled(self) -> bool:
        """True when this walker uses the compiled walker."""
        return self._c is not None

    def begin(self, abs_offset: int) -> None:
        self.start = self.pos = abs_offset
        self.eos = False
        self._acc = _Acc(self.keep_columns)
        self._mem = None
        self._state0 = None if self.keep_columns else replace(self.state)

    def _c_args(self) -> tuple[bytes, tuple[bytes, ...], tuple[int, ...]]:
        st = self.state
        if st.blocks is not self._c_key:
            used = struct.pack(f"={len(st.blocks)}Q", *(b.used_length for b in st.blocks))
            names = tuple(b.idstr.encode("latin-1") for b in st.blocks)
            self._c_blocks = (used, names, (*_C_FLAGS, compress_bound(st.page_size)))
            self._c_key = st.blocks
        return self._c_blocks

    def _c_walk(self, buf, p: int, end: int, abs_base: int) -> tuple[int, int]:
        """Run the compiled walker from ``p``; returns (new p, status)."""
        st = self.state
        if st.page_size <= 0 or st.page_size & (st.page_size - 1) or st.page_size > _C_MAX_PAGE:
            return p, 2  # a page size from a damaged description: the Python step handles it
        stop = self.start + self.batch_bytes - abs_base
        cap = min(_C_CAP, (min(end, stop) - p) // _C_MIN_BYTES + 1)
        used, names, flags = self._c_args()
        out = None
        if self.keep_columns:
            import numpy as np

            out = tuple(np.empty(cap, dtype=_DTYPES[c]) for c in _COLS)
        n, p2, last, status = self._c.walk(buf, p, end, stop, abs_base, st.page_size, st.last_block,
                                           used, names, flags, out, cap, self._acc.tally)
        if n:
            st.last_block = last
            cols = None
            if out is not None:
                # keep a mostly unused allocation alive no longer than this call
                cols = dict(zip(_COLS, (a[:n].copy() if n < cap // 4 else a[:n] for a in out)))
            self._acc.add(cols, n)
        return p2, status

    def advance(self, buf, abs_base: int, end: int, at_eof: bool) -> bool:
        """Consume complete records from ``buf`` (``buf[0]`` is absolute ``abs_base``, valid up to index ``end``).

        Returns True when the batch is complete.

        Raises:
            RamError: an invalid record. TruncatedError: input ended (``at_eof``) inside a record
                (``pos`` is then the cut record's offset: the records before it are complete).
        """
        state = self.state
        p = self.pos - abs_base
        done = False
        try:
            while True:
                used = (abs_base + p) - self.start
                if used >= self.batch_bytes:
                    done = True
                    break
                if self._c is not None:
                    p, status = self._c_walk(buf, p, end, abs_base)
                    if status != 2:
                        continue  # batch full, or more records than one call takes
                elif self.fast:
                    remaining = self.batch_bytes - used
                    if p + 8 <= end:
                        w = _W.unpack_from(buf, p)[0]
                        fl = w & state.mask
                        if fl == PAGE | CONT:
                            stride = 8 + state.page_size
                        elif fl == ZERO | CONT:
                            stride = 9
                        else:
                            stride = 0
                        if stride:
                            n = _bulk(buf, p, end, state, abs_base, self._acc, -(-remaining // stride))
                            if n:
                                p += n
                                continue
                if self._acc.total() and p + 8 <= end and \
                        (_W.unpack_from(buf, p)[0] & (state.page_size - 1) & ~CONT) == MEM_SIZE:
                    done = True  # a new block table starts a new batch: one table per batch
                    break
                p2, typ, mem = _step(buf, p, end, state, abs_base, self._acc)
                if mem is not None:
                    self._mem = mem
                p = p2
                if typ == EOS:
                    self.eos = True
                    done = True
                    break
        except NeedMoreInput:
            if at_eof:
                self.pos = abs_base + p  # the complete records before the cut stay in the batch
                raise TruncatedError(
                    "input ends inside a RAM record", offset=abs_base + p,
                    expected="a complete record", found=f"{end - p} bytes",
                ) from None
        self.pos = abs_base + p
        return done

    def finish(self, raw: bytes | memoryview) -> RamBatch:
        """Build the batch from the accumulated columns; ``raw`` must be the batch's bytes."""
        if not self.keep_columns:
            return RamBatch(
                base=self.start, raw=raw, blocks=self.state.blocks, page_size=self.state.page_size,
                columns=None, mem_size=self._mem, verbatim=True, count=self._acc.total(),
                rewalk=self._state0, kinds=self._acc.flag_counts(),
            )
        return RamBatch(
            base=self.start, raw=raw, blocks=self.state.blocks, page_size=self.state.page_size,
            columns=self._acc.columns(), mem_size=self._mem, verbatim=True,
        )


def _walk(buf, state: RamState, base: int, batch_bytes: int, fast: bool, compiled: bool | None = False,
          keep_columns: bool = True) -> list[RamBatch]:
    mv = memoryview(buf).cast("B")
    walker = RamWalker(state, batch_bytes=batch_bytes, fast=fast, compiled=compiled, keep_columns=keep_columns)
    out: list[RamBatch] = []
    pos = 0
    end = len(mv)
    while pos < end:
        walker.begin(base + pos)
        walker.advance(mv, base, end, at_eof=True)
        if walker.pos == walker.start:
            raise TruncatedError("no complete RAM record", offset=walker.pos)
        new = walker.pos - base
        out.append(walker.finish(mv[pos:new]))
        pos = new
        if walker.eos:
            break
    return out


def walk_scalar(buf, state: RamState, base: int = 0, batch_bytes: int = BATCH_BYTES) -> list[RamBatch]:
    """Walk RAM records in ``buf`` one at a time (the reference walker) up to and including EOS."""
    return _walk(buf, state, base, batch_bytes, fast=False)


def walk_fast(buf, state: RamState, base: int = 0, batch_bytes: int = BATCH_BYTES, *,
              compiled: bool | None = False, keep_columns: bool = True) -> list[RamBatch]:
    """Same as :func:`walk_scalar` with a bulk path: numpy galloping runs (``compiled=False``),
    the compiled walker (True), or the compiled one when available (None)."""
    return _walk(buf, state, base, batch_bytes, fast=True, compiled=compiled, keep_columns=keep_columns)


def mem_size_bytes(blocks: Sequence[RamBlock]) -> bytes:
    """The MEM_SIZE block list bytes (after the record word) for ``blocks``."""
    out = bytearray()
    for b in blocks:
        name = b.idstr.encode("latin-1")
        out += bytes([len(name)]) + name + _W.pack(b.used_length)
        if b.page_size is not None:
            out += _W.pack(b.page_size)
        if b.mr_addr is not None:
            out += _W.pack(b.mr_addr)
    return bytes(out)


def mem_size_record(blocks: Sequence[RamBlock]) -> bytes:
    """The whole MEM_SIZE record (``ram_save_setup``): word with the byte total, then the list."""
    return _W.pack(sum(b.used_length for b in blocks) | MEM_SIZE) + mem_size_bytes(blocks)


#: the EOS record that ends every RAM section body
EOS_RECORD = _W.pack(EOS)
_RAGGED_ROWS = 256  # rows per vectorised copy of variable-length data (bounds the index arrays)


def _put_rows(out: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> None:
    """``out[pos[i] : pos[i] + width] = rows[i]`` for every ``i`` (windows that do not overlap)."""
    import numpy as np

    if len(pos):
        np.lib.stride_tricks.sliding_window_view(out, rows.shape[1], writeable=True)[pos] = rows


def _copy_rows(out: np.ndarray, dst: np.ndarray, src_buf: np.ndarray, src: np.ndarray, width: int) -> None:
    import numpy as np

    if len(dst):
        _put_rows(out, dst, np.lib.stride_tricks.sliding_window_view(src_buf, width)[src])


def _copy_ragged(out: np.ndarray, dst: np.ndarray, src_buf: np.ndarray, src: np.ndarray, lens: np.ndarray) -> None:
    import numpy as np

    for a in range(0, len(lens), _RAGGED_ROWS):
        ln = lens[a : a + _RAGGED_ROWS]
        tot = int(ln.sum())
        if tot == 0:
            continue
        rel = np.arange(tot, dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
        out[np.repeat(dst[a : a + _RAGGED_ROWS], ln) + rel] = src_buf[np.repeat(src[a : a + _RAGGED_ROWS], ln) + rel]


def build_records(batch: RamBatch) -> bytes:
    """The wire bytes of a batch's records, from its columns (record words, idstrs, data headers)
    and data bytes: the one RAM record writer (encoder and migration engine).

    For decoder output it reproduces ``raw``. A writer builds a batch that is not ``verbatim``
    whose ``data_offset``/``data_length`` point at each record's data in ``raw`` (ZERO: the fill
    byte; PAGE: the page; XBZRLE: the delta without its ``01 be16`` header; COMPRESS_PAGE: the zlib
    bytes without their ``be32`` length); a MEM_SIZE record with no data of a non-verbatim batch
    gets the ``mem_size`` list. Vectorised: record words, data headers and page-sized data are
    placed with numpy in bulk; only idstrs (the first record of a block in a section) go one by one.
    """
    n = len(batch)
    if n == 0:
        return b""
    import numpy as np

    flags = batch.flags.astype(np.int64)  # type: ignore[attr-defined]
    typ = flags & ~CONT
    dlen = batch.data_length.astype(np.int64)  # type: ignore[attr-defined]
    id_rows = np.flatnonzero(batch.has_idstr).tolist()  # type: ignore[attr-defined]
    names = [batch.blocks[int(batch.block[i])].idstr.encode("latin-1") for i in id_rows]  # type: ignore[attr-defined]
    name_len = np.zeros(n, dtype=np.int64)
    name_len[id_rows] = [1 + len(x) for x in names]
    extra = np.where(typ == XBZRLE, 3, np.where(typ == COMPRESS, 4, 0))
    body = dlen
    listing = np.zeros(n, dtype=bool)
    if batch.mem_size is not None and not batch.verbatim:
        listing = (typ == MEM_SIZE) & (dlen == 0)
        if listing.any():
            body = np.where(listing, len(mem_size_bytes(batch.mem_size)), dlen)
    size = 8 + name_len + extra + body
    start = np.zeros(n, dtype=np.int64)
    np.cumsum(size[:-1], out=start[1:])
    out = np.zeros(int(start[-1] + size[-1]), dtype=np.uint8)
    words = (batch.addr | flags.astype(np.uint64)).astype(">u8")  # type: ignore[attr-defined]
    _put_rows(out, start, words.view(np.uint8).reshape(n, 8))
    for i, name in zip(id_rows, names):
        p = int(start[i]) + 8
        out[p] = len(name)
        out[p + 1 : p + 1 + len(name)] = np.frombuffer(name, dtype=np.uint8)
    hdr = start + 8 + name_len
    x = np.flatnonzero(typ == XBZRLE)
    if len(x):
        out[hdr[x]] = 1
        out[hdr[x] + 1] = dlen[x] >> 8
        out[hdr[x] + 2] = dlen[x] & 0xFF
    c = np.flatnonzero(typ == COMPRESS)
    if len(c):
        _put_rows(out, hdr[c], dlen[c].astype(">u4").view(np.uint8).reshape(-1, 4))
    dpos = hdr + extra
    raw = np.frombuffer(batch.raw, dtype=np.uint8)
    src = batch.data_offset - batch.base  # type: ignore[attr-defined]
    ps = batch.page_size
    one = np.flatnonzero((dlen == 1) & ~listing)
    out[dpos[one]] = raw[src[one]]
    whole = np.flatnonzero((dlen == ps) & ~listing)
    _copy_rows(out, dpos[whole], raw, src[whole], ps)
    rest = np.flatnonzero((dlen > 1) & (dlen != ps) & ~listing)
    _copy_ragged(out, dpos[rest], raw, src[rest], dlen[rest])
    if listing.any():
        lst = np.frombuffer(mem_size_bytes(batch.mem_size), dtype=np.uint8)  # type: ignore[arg-type]
        for i in np.flatnonzero(listing).tolist():
            out[int(dpos[i]) : int(dpos[i]) + len(lst)] = lst
    return out.tobytes()
