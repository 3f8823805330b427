"""XBZRLE page deltas: decode onto a previous page and encode byte-exact, as QEMU does.

Mirrors QEMU's ``migration/xbzrle.c`` (``xbzrle_encode_buffer`` / ``xbzrle_decode_buffer``),
``util/cutils.c`` (``uleb128_encode_small`` / ``uleb128_decode_small``) and the XBZRLE part of
``migration/ram.c`` (``save_xbzrle_page`` / ``load_xbzrle``). Spec: stream-format §5.5.

Theory of operation:

1. An encoded delta is a sequence of pairs (zrun, nzrun + nzrun bytes) over the XOR of the old
   and new page; counts are ULEB128 limited to two bytes (values < 0x4000).
2. The source emits *maximal* runs, omits the final unchanged run, reports "no change" when the
   pages are equal (the page is then not sent), and gives up ("overflow", the page goes as a
   normal PAGE record) when the output would not fit in ``dlen`` bytes. The overflow tests are
   made at the same points as QEMU's (two bytes of room before each count, room for the run's
   data after the nzrun count), so ``encode`` reproduces QEMU's decision and bytes exactly.
3. The destination applies a delta to whatever the page holds (its previous content) and
   rejects: a zero zrun after the first pair, a zero nzrun, a count needing more than two bytes,
   fewer than two bytes left where a count must start, data beyond the page or the payload.
"""

from __future__ import annotations

from vmig.errors import RamError

__all__ = [
    "XBZRLE_NO_CHANGE",
    "XBZRLE_OVERFLOW",
    "XbzrleError",
    "decode",
    "apply",
    "encode",
    "uleb128_encode_small",
]

XBZRLE_NO_CHANGE = 0
"""``encode`` result kind: the pages are equal; QEMU sends nothing for the page."""
XBZRLE_OVERFLOW = -1
"""``encode`` result kind: the delta does not fit; QEMU sends a normal PAGE record instead."""


class XbzrleError(RamError):
    """An XBZRLE delta that QEMU's loader would reject."""


def uleb128_encode_small(n: int) -> bytes:
    """Encode ``n`` (< 0x4000) as QEMU's two-byte-limited ULEB128."""
    if n < 0x80:
        return bytes((n,))
    if n >= 0x4000:
        raise ValueError(f"ULEB128 small value out of range: {n}")
    return bytes(((n & 0x7F) | 0x80, n >> 7))


def _uleb128_decode_small(src: bytes | memoryview, i: int) -> tuple[int, int]:
    """Return (value, bytes used) or (-1, 0) when the value needs more than two bytes."""
    b0 = src[i]
    if not b0 & 0x80:
        return b0, 1
    b1 = src[i + 1]
    if b1 & 0x80:
        return -1, 0
    return (b0 & 0x7F) | (b1 << 7), 2


def apply(
    delta: bytes | memoryview,
    page: bytearray | memoryview,
    *,
    offset: int | None = None,
) -> int:
    """Apply an XBZRLE delta in place onto ``page`` (its previous content), as the loader does.

    Args:
        delta: the encoded bytes (the ``n`` bytes after the record's flag byte and be16 length).
        page: a writable buffer holding the page's previous content; its length is ``dlen``.
        offset: absolute stream offset of the delta, for error messages.

    Returns:
        The end of the last written run (QEMU's return value).

    Raises:
        XbzrleError: the delta is malformed or overruns the page.
    """
    src = memoryview(delta).cast("B") if not isinstance(delta, bytes) else delta
    slen = len(src)
    dlen = len(page)
    i = 0
    d = 0
    while i < slen:
        if slen - i < 2:
            raise XbzrleError("XBZRLE delta ends inside a zero-run count", offset=_at(offset, i))
        count, used = _uleb128_decode_small(src, i)
        if used == 0 or (i and not count):
            raise XbzrleError("XBZRLE delta has an invalid zero-run count", offset=_at(offset, i))
        i += used
        d += count
        if d > dlen:
            raise XbzrleError(
                "XBZRLE delta overruns the page", offset=_at(offset, i), expected=dlen, found=d
            )
        if slen - i < 2:
            raise XbzrleError("XBZRLE delta ends inside a run count", offset=_at(offset, i))
        count, used = _uleb128_decode_small(src, i)
        if used == 0 or not count:
            raise XbzrleError("XBZRLE delta has an invalid non-zero-run count", offset=_at(offset, i))
        i += used
        if d + count > dlen:
            raise XbzrleError(
                "XBZRLE delta overruns the page",
                offset=_at(offset, i),
                expected=dlen,
                found=d + count,
            )
        if i + count > slen:
            raise XbzrleError(
                "XBZRLE run overruns the delta", offset=_at(offset, i), expected=slen, found=i + count
            )
        page[d : d + count] = src[i : i + count]
        d += count
        i += count
    return d


def decode(
    delta: bytes | memoryview, previous: bytes | memoryview, *, offset: int | None = None
) -> bytes:
    """Return the new page: ``previous`` with the delta applied (``previous`` is not modified)."""
    page = bytearray(previous)
    apply(delta, page, offset=offset)
    return bytes(page)


def _at(base: int | None, i: int) -> int | None:
    return None if base is None else base + i


def encode(old: bytes | memoryview, new: bytes | memoryview, dlen: int | None = None) -> bytes | int:
    """Encode the change from ``old`` to ``new`` exactly as QEMU's source does.

    Args:
        old: the page as the destination holds it (the source's cache).
        new: the new page content (same length).
        dlen: output capacity; QEMU uses the target page size (the default, ``len(new)``).

    Returns:
        The delta bytes, or ``XBZRLE_NO_CHANGE`` (0) when the pages are equal, or
        ``XBZRLE_OVERFLOW`` (-1) when QEMU would send a normal page instead.
    """
    import numpy as np

    a = np.frombuffer(old, dtype=np.uint8)
    b = np.frombuffer(new, dtype=np.uint8)
    slen = len(b)
    if len(a) != slen:
        raise ValueError("old and new pages differ in length")
    if dlen is None:
        dlen = slen
    changed = a != b
    if not changed.any():
        return XBZRLE_NO_CHANGE
    # Run boundaries: positions where "changed" flips, plus both ends.
    edges = np.flatnonzero(changed[1:] != changed[:-1]) + 1
    bounds = np.concatenate(([0], edges, [slen])).tolist()
    first_changed = bool(changed[0])
    newb = bytes(new) if not isinstance(new, bytes) else new
    out = bytearray()
    d = 0
    # Walk runs pairwise; run k spans bounds[k]..bounds[k+1].
    k = 0  # index of the next run; runs alternate between unchanged and changed
    i = 0
    while i < slen:
        if d + 2 > dlen:
            return XBZRLE_OVERFLOW
        if first_changed == (k % 2 == 0):
            zrun = 0  # only possible for the first pair: the page starts with a change
        else:
            zrun = bounds[k + 1] - bounds[k]
            k += 1
            i = bounds[k]
        if i == slen:
            return bytes(out)
        enc = uleb128_encode_small(zrun)
        out += enc
        d += len(enc)
        if d + 2 > dlen:
            return XBZRLE_OVERFLOW
        start, end = bounds[k], bounds[k + 1]
        k += 1
        i = end
        nz = end - start
        enc = uleb128_encode_small(nz)
        out += enc
        d += len(enc)
        if d + nz > dlen:
            return XBZRLE_OVERFLOW
        out += newb[start:end]
        d += nz
    return bytes(out)
