"""Page payload codecs of RAM records (zlib pages) and the one applier of page records.

Mirrors QEMU 7.2 ``migration/ram.c`` (``do_compress_ram_page`` / ``qemu_compress_data`` on the
source: ``deflateReset`` + ``deflate(Z_FINISH)`` of one target page with a stream set up by
``deflateInit(level)``; ``do_data_decompress`` / ``qemu_uncompress_data`` on the destination:
``uncompress`` straight into the guest page) and ``ram_handle_compressed`` (ZERO fill byte).
Spec: stream-format §5.3, §5.6.

The raw zlib bytes of a record are always kept by the codec (the encoder writes them back
verbatim); :func:`inflate_into` gives the content, :func:`deflate_page` reproduces QEMU's bytes
when the zlib library and level match (tests check it against real captures).

:func:`apply_batch` applies a batch's page records (ZERO fills, PAGE copies, XBZRLE deltas, zlib
pages) in record order to a :class:`PageTarget`, as ``ram_load_precopy`` does to guest memory:
later records build on what earlier ones wrote. :class:`BlockBuffers` is the in-memory target
(the engine's destination); ``vmig.analysis.extract.BlockImages`` writes sparse files.

Destination semantics kept here: ``uncompress`` writes into the page buffer, so a stream that
inflates to fewer bytes than a page leaves the rest of the page as it was; more than a page is
an error, as is a stream that does not end (``Z_BUF_ERROR`` / ``Z_DATA_ERROR``).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Protocol

from vmig.errors import RamError
from vmig.stream import xbzrle
from vmig.stream.constants import RamFlag

if TYPE_CHECKING:
    import numpy as np

    from vmig.stream.ram import RamBatch, RamBlock

__all__ = ["CompressedPageError", "inflate_into", "deflate_page", "compress_bound", "PageTarget",
           "apply_batch", "BlockBuffers", "page_runs"]


_ZERO, _PAGE, _XBZRLE, _COMPRESS, _CONT = (int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE),
                                            int(RamFlag.COMPRESS_PAGE), int(RamFlag.CONTINUE))


class CompressedPageError(RamError):
    """A COMPRESS_PAGE payload that QEMU's loader would reject."""


def compress_bound(n: int) -> int:
    """zlib's ``compressBound(n)``: the loader's upper limit for a compressed page length."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def inflate_into(data: bytes | memoryview, page: bytearray | memoryview, *, offset: int | None = None) -> int:
    """Inflate one zlib stream into ``page`` (in place, like ``uncompress`` into the guest page).

    Returns:
        The number of bytes written (≤ ``len(page)``).

    Raises:
        CompressedPageError: not a complete zlib stream, or it inflates beyond the page.
    """
    if len(data) > compress_bound(len(page)):
        raise CompressedPageError(
            "compressed page length beyond compressBound",
            offset=offset, expected=f"<= {compress_bound(len(page))}", found=len(data),
        )
    d = zlib.decompressobj()
    try:
        out = d.decompress(bytes(data), len(page))
    except zlib.error as e:
        raise CompressedPageError(f"compressed page is not a valid zlib stream: {e}", offset=offset) from e
    if d.unconsumed_tail:
        raise CompressedPageError("compressed page inflates beyond the page size", offset=offset,
                                  expected=f"<= {len(page)} bytes", found="more")
    if not d.eof:
        raise CompressedPageError("compressed page zlib stream is incomplete", offset=offset)
    page[: len(out)] = out
    return len(out)


def deflate_page(page: bytes | memoryview, level: int = 1) -> bytes:
    """Compress a page the way QEMU's compression threads do (zlib format, default window/memLevel)."""
    c = zlib.compressobj(level)
    return c.compress(bytes(page)) + c.flush(zlib.Z_FINISH)


class PageTarget(Protocol):
    """Where :func:`apply_batch` puts page contents (block images in memory or in files).

    ``block`` is the batch's :class:`~vmig.stream.ram.RamBlock` the records name; addresses
    are in-block byte addresses of whole target pages.
    """

    def copy_pages(self, block: RamBlock, addr: int, raw: np.ndarray, offs: np.ndarray) -> None:
        """PAGE records for consecutive pages from ``addr``: page ``i`` is ``raw[offs[i]:][:page_size]``."""

    def put_pages(self, block: RamBlock, addrs: np.ndarray, raw: np.ndarray, offs: np.ndarray) -> None:
        """PAGE records for distinct pages in ascending order (gaps allowed): page ``addrs[i]``
        is ``raw[offs[i]:][:page_size]``."""

    def fill_pages(self, block: RamBlock, addrs: np.ndarray, fills: np.ndarray) -> None:
        """ZERO records: page ``addrs[i]`` becomes the byte ``fills[i]`` repeated."""

    def read_page(self, block: RamBlock, addr: int) -> bytearray:
        """The page's current content (page-size bytes; zeros if never written)."""

    def write_page(self, block: RamBlock, addr: int, page: bytearray) -> None:
        """Store one decoded page (after an XBZRLE or zlib record)."""


def apply_batch(batch: RamBatch, target: PageTarget) -> int:
    """Apply the page records of ``batch`` to ``target`` in record order; returns their count.

    Records are grouped into runs of one type and block (record order kept across runs); PAGE
    runs are cut where addresses stop being consecutive, ZERO runs go as one call, XBZRLE and
    zlib pages are decoded one page at a time onto the page's current content.

    Raises:
        CompressedPageError, XbzrleError: a payload the loader would reject (absolute offset).
    """
    import numpy as np

    if len(batch) == 0:
        return 0
    ps = batch.page_size
    types = (batch.flags & np.uint16(0xFFFF & ~_CONT)).astype(np.int64)
    rows = np.flatnonzero(np.isin(types, (_ZERO, _PAGE, _XBZRLE, _COMPRESS)))
    if len(rows) == 0:
        return 0
    t = types[rows]
    blk = batch.block[rows]
    raw = np.frombuffer(batch.raw, dtype=np.uint8)
    addr_all = batch.addr[rows].astype(np.int64)
    doff_all = batch.data_offset[rows] - batch.base
    if _apply_unordered(batch, target, t, blk, raw, addr_all, doff_all):
        return len(rows)
    cut = np.flatnonzero((t[1:] != t[:-1]) | (blk[1:] != blk[:-1])) + 1
    for a, z in zip([0, *cut.tolist()], [*cut.tolist(), len(rows)]):
        typ = int(t[a])
        block = batch.blocks[int(blk[a])]
        addr, doff = addr_all[a:z], doff_all[a:z]
        if typ == _PAGE:
            brk = np.flatnonzero(np.diff(addr) != ps) + 1
            for s, e in zip([0, *brk.tolist()], [*brk.tolist(), len(addr)]):
                target.copy_pages(block, int(addr[s]), raw, doff[s:e])
        elif typ == _ZERO:
            target.fill_pages(block, addr, raw[doff])
        else:
            for i in range(a, z):
                at, off = int(addr_all[i]), int(doff_all[i])
                page = target.read_page(block, at)
                data = memoryview(batch.raw)[off : off + int(batch.data_length[rows[i]])]
                where = off + batch.base
                if typ == _XBZRLE:
                    xbzrle.apply(data, page, offset=where)
                else:
                    inflate_into(data, page, offset=where)
                target.write_page(block, at, page)
    return len(rows)


def page_runs(addrs: np.ndarray, page_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` index ranges of ``addrs`` whose addresses follow each other page by page."""
    import numpy as np

    brk = np.flatnonzero(np.diff(addrs) != page_size) + 1
    cuts = brk.tolist()
    return list(zip([0, *cuts], [*cuts, len(addrs)]))


def _apply_unordered(batch: RamBatch, target: PageTarget, t, blk, raw, addr, doff) -> bool:
    """The common batch, applied without following record order: only ZERO and PAGE records,
    each page named once (then no record overwrites another, and any order gives the same
    result). Per block: every PAGE record in one ``put_pages`` call (ascending addresses),
    every ZERO record in one ``fill_pages`` call. False (nothing done) for any other batch."""
    import numpy as np

    ps = batch.page_size
    is_page = t == _PAGE
    if not bool((is_page | (t == _ZERO)).all()):
        return False
    key = (blk.astype(np.int64) << 44) | (addr // ps)  # pages of a 2^56-byte block stay apart
    if len(np.unique(key)) != len(key):
        return False
    for b in np.unique(blk).tolist():
        block = batch.blocks[b]
        mine = blk == b
        pages = mine & is_page
        if pages.any():
            a, d = addr[pages], doff[pages]
            order = np.argsort(a, kind="stable")
            target.put_pages(block, a[order], raw, d[order])
        zeros = mine & ~is_page
        if zeros.any():
            target.fill_pages(block, addr[zeros], raw[doff[zeros]])
    return True


class BlockBuffers:
    """Block images in memory, filled by :func:`apply_batch` (a :class:`PageTarget`).

    Attributes:
        images: idstr -> uint8 array of the block's used length.
        received: idstr -> bool per target page: a record delivered the page.
    """

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.images: dict[str, np.ndarray] = {}
        self.received: dict[str, np.ndarray] = {}

    def add(self, idstr: str, length: int) -> None:
        """An all-zero image for a block (kept if it exists). The image is reserved, not
        written: memory grows with the pages records deliver.

        Raises:
            RamError: the block's length cannot be reserved (a length no machine has).
        """
        import numpy as np

        if idstr not in self.images:
            try:
                image = np.zeros(length, dtype=np.uint8)
                received = np.zeros(-(-length // self.page_size), dtype=bool)
            except (MemoryError, ValueError) as e:  # ValueError: numpy's "array is too big"
                raise RamError(f"cannot hold RAMBlock {idstr!r} of {length:#x} bytes in memory "
                               f"({type(e).__name__})") from None
            self.images[idstr] = image
            self.received[idstr] = received

    def _image(self, block: RamBlock) -> np.ndarray:
        self.add(block.idstr, block.used_length)
        return self.images[block.idstr]

    def copy_pages(self, block: RamBlock, addr: int, raw: np.ndarray, offs: np.ndarray) -> None:
        import numpy as np

        img, ps = self._image(block), self.page_size
        p0, k = addr // ps, len(offs)
        self.received[block.idstr][p0 : p0 + k] = True
        pages = img[: len(img) // ps * ps].reshape(-1, ps)
        whole = max(0, min(k, len(pages) - p0))
        if whole:
            stride = int(offs[1] - offs[0]) if whole > 1 else ps + 8
            if whole == 1 or bool(np.all(np.diff(offs[:whole]) == stride)):
                pages[p0 : p0 + whole] = np.ndarray((whole, ps), np.uint8, buffer=raw,
                                                    offset=int(offs[0]), strides=(stride, 1))
            else:
                pages[p0 : p0 + whole] = np.lib.stride_tricks.sliding_window_view(raw, ps)[offs[:whole]]
        for i in range(whole, k):  # a last partial page
            at, o = addr + i * ps, int(offs[i])
            img[at:] = raw[o : o + len(img) - at]

    def put_pages(self, block: RamBlock, addrs: np.ndarray, raw: np.ndarray, offs: np.ndarray) -> None:
        for s, e in page_runs(addrs, self.page_size):
            self.copy_pages(block, int(addrs[s]), raw, offs[s:e])

    def fill_pages(self, block: RamBlock, addrs: np.ndarray, fills: np.ndarray) -> None:
        import numpy as np

        img, ps = self._image(block), self.page_size
        self.received[block.idstr][addrs // ps] = True
        pages = img[: len(img) // ps * ps].reshape(-1, ps)
        whole = addrs + ps <= len(img)
        pages[addrs[whole] // ps] = fills[whole, None]
        for i in np.flatnonzero(~whole).tolist():
            img[int(addrs[i]):] = fills[i]

    def read_page(self, block: RamBlock, addr: int) -> bytearray:
        page = bytearray(self._image(block)[addr : addr + self.page_size].tobytes())
        return page + bytes(self.page_size - len(page))

    def write_page(self, block: RamBlock, addr: int, page: bytearray) -> None:
        import numpy as np

        img = self._image(block)
        self.received[block.idstr][addr // self.page_size] = True
        img[addr : addr + self.page_size] = np.frombuffer(page, dtype=np.uint8)[: len(img) - addr]
