"""Sans-I/O decoder and encoder of the postcopy return path (destination -> source channel).

Mirrors what QEMU 7.2's source reads in migration/migration.c (``source_return_path_thread``,
the ``rp_cmd_args`` length table, ``migrate_handle_rp_req_pages``, ``migrate_handle_rp_recv_bitmap``,
``migrate_handle_rp_resume_ack``) and migration/ram.c (``ram_dirty_bitmap_reload``), and what the
destination writes in ``migrate_send_rp_*`` / ``ram_dirty_bitmap_sync``-side senders.
Wire format: spec stream-format.md §6.2.

Theory of operation
-------------------
1. A message is ``be16 type, be16 len, len bytes``; there is no header or magic. RECV_BITMAP is
   followed, outside its ``len``, by ``be64 S``, ``S`` bytes of little-endian 64-bit bitmap
   words and ``be64 0x0123456789abcdef``; its event covers all of it.
2. ``receive_data(b)`` appends input, ``receive_data(b"")`` marks end of input; ``next_event()``
   returns an :class:`RpMessage`, :data:`NEED_DATA` or, after the last byte, :class:`RpEnd`.
   An event is emitted only when all its bytes are present, so events (and errors) do not
   depend on how the input was split. Events tile the input.
3. A declared length is checked (type's fixed length, idstr counted inside the message, S a
   multiple of 8) before anything is waited for, and nothing is allocated for it: the decoder
   waits for the bytes and raises TruncatedError if the input ends first.
4. REQ_PAGES names no block: like the source, the decoder uses the block of the last
   REQ_PAGES_ID (error if there was none). SHUT is the last message: bytes after it are an
   error, and a whole return path ends with it (end of input before SHUT is TruncatedError
   unless ``require_shut=False``).
5. After an error the decoder is dead and re-raises the same error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from vmig.errors import StreamError, TruncatedError, UsageError
from vmig.records import field, record
from vmig.stream.constants import RP_RECV_BITMAP_ENDING, RpMsg
from vmig.stream.events import NEED_DATA, NeedData
from vmig.stream.inbuf import BufferedInput, NeedMoreInput

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "RpMessage",
    "RpEnd",
    "RpEvent",
    "ReturnPathDecoder",
    "decode_rp",
    "iter_rp",
    "encode_rp",
    "encode_rp_message",
    "rp_message",
    "RP_FIXED_LENGTHS",
    "RP_MAX_LEN",
]

_HDR = struct.Struct(">HH")
_BE64 = struct.Struct(">Q")
_BE32 = struct.Struct(">I")
_REQ = struct.Struct(">QI")

#: fixed ``len`` of each type (QEMU's rp_cmd_args); REQ_PAGES_ID and RECV_BITMAP are variable.
RP_FIXED_LENGTHS: dict[RpMsg, int] = {
    RpMsg.SHUT: 4,
    RpMsg.PONG: 4,
    RpMsg.REQ_PAGES: 12,
    RpMsg.RESUME_ACK: 4,
    RpMsg.SWITCHOVER_ACK: 0,
}
#: the source's receive buffer (messages longer than this are rejected by QEMU 7.2)
RP_MAX_LEN = 512
RESUME_ACK_VALUE = 1
_MAX_TYPE = max(RpMsg)


@record(frozen=True, slots=True)
class RpMessage:
    """One return-path message.

    Attributes:
        offset: absolute offset of the type field.
        length: bytes it stands for (4 + len; for RECV_BITMAP also the bitmap part after it).
        type: the message type.
        data: the ``len`` payload bytes (for RECV_BITMAP only ``u8 L + idstr``).
        args: decoded payload: ``status`` (SHUT), ``value`` (PONG, RESUME_ACK), ``start``,
            ``len``, ``idstr`` (REQ_PAGES_ID, and REQ_PAGES with the block of the last
            REQ_PAGES_ID), ``idstr``, ``size`` (S bytes), ``bitmap`` (numpy bool, one per
            target page, S*8 entries) for RECV_BITMAP; empty for SWITCHOVER_ACK.
    """

    offset: int
    length: int
    type: RpMsg
    data: bytes
    args: dict = field(default_factory=dict, compare=False, hash=False)


@record(frozen=True, slots=True)
class RpEnd:
    """End of the return path: ``offset`` is just after the last byte."""

    offset: int
    length: int = 0


RpEvent = RpMessage | RpEnd


def _bitmap_from_le(raw: bytes | memoryview) -> np.ndarray:
    """Little-endian 64-bit words -> bool per bit (bit k of the bitmap is byte k//8, bit k%8)."""
    import numpy as np

    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little").astype(bool)


def _bitmap_to_le(bits: np.ndarray) -> bytes:
    import numpy as np

    bits = np.asarray(bits, dtype=bool)
    if bits.size % 64:
        raise UsageError(f"RECV_BITMAP bitmap must have a multiple of 64 bits, got {bits.size}")
    return np.packbits(bits, bitorder="little").tobytes()


def _idstr(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("latin-1")


class ReturnPathDecoder(BufferedInput):
    """Sans-I/O decoder of a return-path byte stream.

    Args:
        base_offset: absolute offset of the first byte that will be fed.
        path: input name attached to errors.
        require_shut: the input is a whole return path, so it must end with SHUT (the
            destination always sends it last); False accepts a capture cut at a message
            boundary (a channel abandoned by postcopy recovery, a live tap).
    """

    def __init__(self, base_offset: int = 0, path: str | None = None, *, require_shut: bool = True) -> None:
        self.path = path
        self.require_shut = require_shut
        self._init_input(base_offset)
        self._ended = False
        self._shut = False
        self._error: StreamError | None = None
        self.last_block: str | None = None

    def next_event(self) -> RpEvent | NeedData:
        """The next event, or ``NEED_DATA``.

        Raises:
            StreamError / TruncatedError: invalid input (the decoder then stays failed).
            UsageError: called again after RpEnd.
        """
        if self._error is not None:
            raise self._error
        if self._ended:
            raise UsageError("next_event() called after RpEnd")
        try:
            return self._next()
        except NeedMoreInput as w:
            if not self._eof:
                return NEED_DATA
            err = TruncatedError(f"input ends inside {w.what}", offset=self.offset,
                                 expected=f"{w.need} bytes", found=f"{w.have} bytes")
            self._fail(err)
            raise err from None
        except StreamError as e:
            self._fail(e)
            raise

    def events(self) -> Iterator[RpEvent]:
        """Yield events until ``NEED_DATA`` or ``RpEnd`` (inclusive)."""
        while not self._ended:
            ev = self.next_event()
            if ev is NEED_DATA:
                return
            yield ev  # type: ignore[misc]

    def _fail(self, e: StreamError) -> None:
        if self.path is not None:
            e.with_path(self.path)
        self._error = e

    def _next(self) -> RpEvent | NeedData:
        have = len(self._buf) - self._pos
        off = self.offset
        if have == 0:
            if not self._eof:
                return NEED_DATA
            if self.require_shut and not self._shut:
                raise TruncatedError("input ends before SHUT (the destination's last message)",
                                     offset=off, expected="a SHUT message", found="end of input")
            self._ended = True
            return RpEnd(off)
        if self._shut:
            raise StreamError("data after SHUT (the source stops reading the return path at SHUT)",
                              offset=off, expected="end of input", found=f"{have} more bytes")
        self._need(4, "a return-path message header")
        buf, p = self._buf, self._pos
        typ, ln = _HDR.unpack_from(buf, p)
        if typ == RpMsg.INVALID or typ > _MAX_TYPE:
            raise StreamError("unknown return-path message type", offset=off,
                              expected=f"1..{int(_MAX_TYPE)}", found=typ)
        t = RpMsg(typ)
        fixed = RP_FIXED_LENGTHS.get(t)
        if fixed is not None and ln != fixed:
            raise StreamError(f"{t.name} message with a wrong length", offset=off + 2,
                              expected=fixed, found=ln)
        if t == RpMsg.REQ_PAGES_ID and ln < 13:
            raise StreamError("REQ_PAGES_ID message too short for start, length and idstr length",
                              offset=off + 2, expected=">= 13", found=ln)
        if t == RpMsg.RECV_BITMAP and ln < 1:
            raise StreamError("RECV_BITMAP message without a block name", offset=off + 2,
                              expected=">= 1", found=ln)
        if ln > RP_MAX_LEN:  # only reachable for variable types with a bad idstr length
            raise StreamError(f"{t.name} message longer than the source's buffer", offset=off + 2,
                              expected=f"<= {RP_MAX_LEN}", found=ln)
        self._need(4 + ln, f"a {t.name} message")
        d = p + 4
        data = bytes(buf[d:d + ln])
        args: dict = {}
        total = 4 + ln
        if t == RpMsg.SHUT:
            args["status"] = _BE32.unpack_from(data)[0]
        elif t == RpMsg.PONG:
            args["value"] = _BE32.unpack_from(data)[0]
        elif t == RpMsg.RESUME_ACK:
            v = _BE32.unpack_from(data)[0]
            if v != RESUME_ACK_VALUE:
                raise StreamError("illegal RESUME_ACK value", offset=off + 4,
                                  expected=RESUME_ACK_VALUE, found=v)
            args["value"] = v
        elif t == RpMsg.REQ_PAGES:
            start, n = _REQ.unpack_from(data)
            if self.last_block is None:
                raise StreamError("REQ_PAGES without a previous REQ_PAGES_ID (no block to request from)",
                                  offset=off, expected="a REQ_PAGES_ID first", found="REQ_PAGES")
            args.update(start=start, len=n, idstr=self.last_block)
        elif t == RpMsg.REQ_PAGES_ID:
            start, n = _REQ.unpack_from(data)
            il = data[12]
            if ln != 13 + il:
                raise StreamError("REQ_PAGES_ID length does not match its idstr length", offset=off + 2,
                                  expected=13 + il, found=ln)
            idstr = _idstr(data[13:13 + il])
            args.update(start=start, len=n, idstr=idstr)
        elif t == RpMsg.RECV_BITMAP:
            il = data[0]
            if ln != 1 + il:
                raise StreamError("RECV_BITMAP length does not match its idstr length", offset=off + 2,
                                  expected=1 + il, found=ln)
            idstr = _idstr(data[1:1 + il])
            self._need(total + 8, "the RECV_BITMAP bitmap size")
            size = _BE64.unpack_from(buf, p + total)[0]
            if size % 8:
                raise StreamError("RECV_BITMAP bitmap size is not a multiple of 8 bytes",
                                  offset=off + total, expected="a multiple of 8", found=size)
            self._need(total + 16 + size, "the RECV_BITMAP bitmap")  # waits; allocates nothing
            q = p + total + 8
            end = _BE64.unpack_from(buf, q + size)[0]
            if end != RP_RECV_BITMAP_ENDING:
                raise StreamError(f"RECV_BITMAP end marker incorrect for ramblock {idstr!r}",
                                  offset=off + total + 8 + size,
                                  expected=f"{RP_RECV_BITMAP_ENDING:#018x}", found=f"{end:#018x}")
            bits = _bitmap_from_le(bytes(buf[q:q + size]))
            args.update(idstr=idstr, size=size, bitmap=bits)
            total += 16 + size
        if t == RpMsg.REQ_PAGES_ID:
            self.last_block = args["idstr"]
        if t == RpMsg.SHUT:
            self._shut = True
        self._pos += total
        return RpMessage(off, total, t, data, args)


def decode_rp(data: bytes | bytearray | memoryview, path: str | None = None, *,
              require_shut: bool = True) -> list[RpMessage]:
    """All messages of a complete return-path capture (end of input after ``data``).

    Raises:
        StreamError / TruncatedError: invalid input.
    """
    dec = ReturnPathDecoder(path=path, require_shut=require_shut)
    dec.receive_data(data)
    dec.receive_data(b"")
    return [ev for ev in dec.events() if isinstance(ev, RpMessage)]


def looks_like_return_path(head: bytes | memoryview) -> bool:
    """True when ``head`` (the first bytes of an input) starts with well-formed return-path
    messages rather than a QEVM header: a stream's magic never parses as one."""
    dec = ReturnPathDecoder(require_shut=False)
    dec.receive_data(head)
    try:
        first = dec.next_event()
    except StreamError:
        return False
    return isinstance(first, RpMessage)


def iter_rp(chunks: Iterable[bytes | memoryview], path: str | None = None, *,
            require_shut: bool = True) -> Iterator[RpEvent]:
    """Decode a chunked input (e.g. ``vmig.io.streams.Source.chunks()``), yielding events."""
    dec = ReturnPathDecoder(path=path, require_shut=require_shut)
    for c in chunks:
        dec.receive_data(c)
        yield from dec.events()
    dec.receive_data(b"")
    yield from dec.events()


def rp_message(type: RpMsg, offset: int = 0, **args) -> RpMessage:
    """Build a message from values (what a destination would send).

    Keyword args by type: ``status`` (SHUT), ``value`` (PONG, RESUME_ACK), ``start``, ``len``,
    ``idstr`` (REQ_PAGES_ID; REQ_PAGES ignores ``idstr``), ``idstr`` and ``bitmap`` (bool array,
    a multiple of 64 entries) for RECV_BITMAP.
    """
    import numpy as np

    t = RpMsg(type)
    a = dict(args)
    if t in (RpMsg.SHUT,):
        data = _BE32.pack(a["status"])
    elif t in (RpMsg.PONG, RpMsg.RESUME_ACK):
        data = _BE32.pack(a["value"])
    elif t == RpMsg.REQ_PAGES:
        data = _REQ.pack(a["start"], a["len"])
    elif t == RpMsg.REQ_PAGES_ID:
        name = a["idstr"].encode("latin-1")
        data = _REQ.pack(a["start"], a["len"]) + bytes([len(name)]) + name
    elif t == RpMsg.RECV_BITMAP:
        name = a["idstr"].encode("latin-1")
        data = bytes([len(name)]) + name
        a["bitmap"] = np.asarray(a["bitmap"], dtype=bool)
        a["size"] = a["bitmap"].size // 8
    elif t == RpMsg.SWITCHOVER_ACK:
        data = b""
    else:
        raise UsageError(f"cannot build a {t.name} return-path message")
    length = 4 + len(data) + (16 + a["size"] if t == RpMsg.RECV_BITMAP else 0)
    return RpMessage(offset, length, t, data, a)


def encode_rp_message(msg: RpMessage) -> bytes:
    """The wire bytes of one message (header, payload and, for RECV_BITMAP, the bitmap part).

    Raises:
        UsageError: a payload longer than 65535 bytes or a bitmap not made of 64-bit words.
    """
    if len(msg.data) > 0xFFFF:
        raise UsageError(f"{msg.type.name} payload of {len(msg.data)} bytes does not fit be16 len")
    out = _HDR.pack(int(msg.type), len(msg.data)) + bytes(msg.data)
    if msg.type == RpMsg.RECV_BITMAP:
        raw = _bitmap_to_le(msg.args["bitmap"])
        out += _BE64.pack(len(raw)) + raw + _BE64.pack(RP_RECV_BITMAP_ENDING)
    return out


def encode_rp(events: Iterable[RpEvent]) -> bytes:
    """Encode events back to bytes (RpEnd contributes nothing); ``encode_rp(decode(b)) == b``."""
    return b"".join(encode_rp_message(e) for e in events if isinstance(e, RpMessage))
