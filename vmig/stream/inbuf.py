"""The input side shared by vmig's sans-I/O decoders (h11 style).

``receive_data(bytes)`` appends input (``b""`` = end of input); the decoder consumes from
``self._buf`` at ``self._pos``; ``offset`` is the absolute offset of the next unconsumed byte.
Immutable input (``bytes``, read-only memoryviews such as an mmap) that arrives while nothing is
pending is kept as a zero-copy view; anything else is copied into an owned ``bytearray`` from
which consumed bytes are dropped on the next ``receive_data``.
"""

from __future__ import annotations

from vmig.errors import UsageError


class NeedMoreInput(Exception):
    """The one "need more bytes" signal of vmig's sans-I/O readers (decoders, layout measures,
    schema-set walks): ``what`` needs ``need`` bytes (None = not known yet) and only ``have``
    are here. Not an error: while input may still come the caller waits; at end of input the
    decoder turns it into a :class:`~vmig.errors.TruncatedError`."""

    def __init__(self, what: str, need: int | None = None, have: int | None = None) -> None:
        super().__init__(what)
        self.what, self.need, self.have = what, need, have


class BufferedInput:
    """Mixin: input buffering and absolute offsets for a sans-I/O decoder."""

    _buf: bytearray | memoryview
    _owned: bool
    _pos: int
    _base: int
    _eof: bool

    def _init_input(self, base_offset: int = 0) -> None:
        self._buf = bytearray()
        self._owned = True
        self._pos = 0
        self._base = base_offset
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed input bytes; ``b""`` means end of input.

        Raises:
            UsageError: data after end of input.
        """
        if self._eof:
            if data:
                raise UsageError("receive_data() called after end of input")
            return
        if not data:
            self._eof = True
            return
        buf = self._buf
        if self._pos >= len(buf):
            self._base += len(buf)
            self._pos = 0
            if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly):
                self._buf = memoryview(data).cast("B")
                self._owned = False
            else:
                self._buf = bytearray(data)
                self._owned = True
            return
        if not self._owned:
            rest = bytearray(buf[self._pos:])
            self._base += self._pos
            self._pos = 0
            rest += data
            self._buf = rest
            self._owned = True
            return
        assert isinstance(buf, bytearray)
        if self._pos:
            del buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        buf += data

    def _need(self, n: int, what: str) -> None:
        """Raise NeedMoreInput unless ``n`` unconsumed bytes are buffered."""
        have = len(self._buf) - self._pos
        if have < n:
            raise NeedMoreInput(what, n, have)

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte the decoder will consume."""
        return self._base + self._pos
