"""Page payload codecs of RAM records: zlib pages (COMPRESS_PAGE), fill pages, XBZRLE dispatch.

Mirrors QEMU 7.2 ``migration/ram.c`` (``do_compress_ram_page`` / ``qemu_compress_data`` on the
source: ``deflateReset`` + ``deflate(Z_FINISH)`` of one target page with a stream set up by
``deflateInit(level)``; ``do_data_decompress`` / ``qemu_uncompress_data`` on the destination:
``uncompress`` straight into the guest page) and ``ram_handle_compressed`` (ZERO fill byte).
Spec: stream-format §5.3, §5.6.

The raw zlib bytes of a record are always kept by the codec (the encoder writes them back
verbatim); :func:`inflate_into` gives the content, :func:`deflate_page` reproduces QEMU's bytes
when the zlib library and level match (tests check it against real captures).

Destination semantics kept here: ``uncompress`` writes into the page buffer, so a stream that
inflates to fewer bytes than a page leaves the rest of the page as it was; more than a page is
an error, as is a stream that does not end (``Z_BUF_ERROR`` / ``Z_DATA_ERROR``).
"""

from __future__ import annotations

import zlib

from vmig.errors import RamError
from vmig.stream import xbzrle
from vmig.stream.constants import RamFlag

__all__ = ["CompressedPageError", "inflate_into", "deflate_page", "apply_record", "compress_bound"]


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


def apply_record(flags: int, payload: bytes | memoryview, page: bytearray, *, offset: int | None = None) -> None:
    """Apply one page record's payload to ``page`` (the page's current content) in place.

    ``flags`` may include CONTINUE. ZERO: ``payload`` is the one fill byte; PAGE: the page;
    XBZRLE: the encoded bytes; COMPRESS_PAGE: the zlib bytes.
    """
    typ = flags & ~int(RamFlag.CONTINUE)
    if typ == RamFlag.ZERO:
        fill = payload[0]
        page[:] = bytes((fill,)) * len(page)
    elif typ == RamFlag.PAGE:
        page[:] = payload
    elif typ == RamFlag.XBZRLE:
        xbzrle.apply(payload, page, offset=offset)
    elif typ == RamFlag.COMPRESS_PAGE:
        inflate_into(payload, page, offset=offset)
    else:
        raise RamError(f"not a page record: flags {flags:#x}", offset=offset)
