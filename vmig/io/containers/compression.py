"""Compressed inputs: recognise gzip, xz, bzip2, zstd, lz4 and lzop by their magic and decompress
them as a stream of bounded chunks.

Decompression is done by maintained libraries only: the standard library's ``gzip``, ``lzma`` and
``bz2``, the ``lz4`` package's frame reader, the ``zstandard`` package, and the ``lzop`` program
(run as a child process when the input is lzop; a clear error when it is not installed). Each is
read ``CHUNK_SIZE`` bytes at a time, so memory stays bounded whatever the compression ratio, and
nothing is written to disk. Multi-member gzip / multi-stream bzip2, xz and zstd inputs are read to
their end, as their command-line tools do.

Mirrors the formats libvirt's save-image compression programs write (``gzip``, ``bzip2``, ``xz``,
``lzop``, ``zstd``: libvirt ``src/qemu/qemu_saveimage.c``) and the lz4 frames vmig writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO

from vmig.errors import StreamError, TruncatedError, UsageError

__all__ = ["MAGICS", "sniff", "decompress_chunks", "ChunkReader", "CHUNK_SIZE"]

CHUNK_SIZE = 1 << 20

#: compression name -> magic at the start of its data (one definition for the whole input layer)
MAGICS: dict[str, bytes] = {
    "gzip": b"\x1f\x8b",
    "bzip2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "lz4": b"\x04\x22\x4d\x18",
    "lzop": b"\x89LZO\x00\r\n\x1a\n",
}


def sniff(head: bytes) -> str | None:
    """The compression whose magic ``head`` starts with, or None."""
    for name, magic in MAGICS.items():
        if head.startswith(magic):
            if name == "bzip2" and not (len(head) > 3 and 0x31 <= head[3] <= 0x39):
                continue  # "BZh" + block size '1'..'9'
            return name
    return None


class ChunkReader:
    """A read-only file object over an iterator of chunks, with :meth:`peek`.

    ``pos`` is the absolute input offset of the next byte :meth:`read` returns (``base`` plus
    the bytes consumed), so errors can name where in the input they happened. Small reads (the
    decompressors read a few KiB at a time) slice the current chunk without copying the rest.
    """

    def __init__(self, chunks: Iterator[bytes | memoryview], base: int = 0) -> None:
        self._it = iter(chunks)
        self._buf = b""
        self._off = 0  # consumed part of _buf
        self.pos = base

    def readable(self) -> bool:
        return True

    def _left(self) -> int:
        return len(self._buf) - self._off

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position, not consumed (fewer only at the end)."""
        if self._left() < n:
            parts = [self._buf[self._off:]]
            have = len(parts[0])
            while have < n:
                c = next(self._it, None)
                if c is None:
                    break
                parts.append(bytes(c))
                have += len(parts[-1])
            self._buf, self._off = b"".join(parts), 0
        return self._buf[self._off:self._off + n]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = self._buf[self._off:] + b"".join(bytes(c) for c in self._it)
            self._buf, self._off = b"", 0
        else:
            if not self._left():
                c = next(self._it, None)
                self._buf, self._off = (bytes(c) if c is not None else b""), 0
            out = self._buf[self._off:self._off + n]
            self._off += len(out)
        self.pos += len(out)
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The rest of the input as chunks."""
        if self._left():
            b = self._buf[self._off:]
            self._buf, self._off = b"", 0
            self.pos += len(b)
            yield b
        for c in self._it:
            self.pos += len(c)
            yield c

    def close(self) -> None:
        self._buf, self._off = b"", 0


def _opener(kind: str, raw: ChunkReader) -> IO[bytes]:
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
    if kind == "xz":
        import lzma

        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[arg-type]
    if kind == "bzip2":
        import bz2

        return bz2.BZ2File(raw, mode="rb")  # type: ignore[arg-type]
    if kind == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameFile(raw, mode="rb")  # type: ignore[arg-type]
    raise UsageError(f"unknown compression {kind!r}")


def _errors() -> tuple[type[BaseException], ...]:
    import lzma
    import zlib

    errs: list[type[BaseException]] = [OSError, EOFError, lzma.LZMAError, zlib.error, RuntimeError, ValueError]
    try:
        import zstandard

        errs.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errs)


def decompress_chunks(kind: str, raw: ChunkReader, name: str, *, what: str = "") -> Iterator[bytes]:
    """The decompressed bytes of ``raw`` (compression ``kind``) as chunks of at most CHUNK_SIZE.

    Raises:
        StreamError: corrupt or truncated compressed data (names the input and the offset in it
            reached when decompression failed), or data after the end of an lz4 frame.
        UsageError: lzop data without the ``lzop`` program.
    """
    label = ("lz4 frame" if kind == "lz4" else f"{kind} data") + what
    if kind == "lzop":
        yield from _lzop_chunks(raw, name, label)
        return
    if kind == "zstd":
        yield from _zstd_chunks(raw, name, label)
        return
    f = _opener(kind, raw)
    errs = _errors()
    try:
        while True:
            try:
                b = f.read(CHUNK_SIZE)
            except EOFError as e:
                raise TruncatedError(f"{label} ends early (truncated input: {e})", path=name,
                                  offset=raw.pos) from e
            except errs as e:
                raise StreamError(f"{label} is corrupt ({e or type(e).__name__})", path=name,
                                  offset=raw.pos) from e
            if not b:
                break
            yield b
    finally:
        f.close()


ZSTD_SLICE = 4096  # input fed per call: a zstd block expands at most 32768 times (RLE blocks)


def _zstd_chunks(raw: ChunkReader, name: str, label: str) -> Iterator[bytes]:
    """zstd frames one after the other (as ``zstd -d`` reads them); small input slices keep each
    call's output bounded (the decompression object has no output limit of its own)."""
    try:
        import zstandard
    except ImportError as e:  # a declared dependency: a broken install
        raise UsageError("zstd-compressed input: the 'zstandard' package is not installed") from e
    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    started = False
    out: list[bytes] = []
    size = 0
    while True:
        piece = raw.read(ZSTD_SLICE)
        if not piece:
            break
        while piece:
            if d.eof:  # the next frame
                d = dctx.decompressobj()
            try:
                b = d.decompress(piece)
            except zstandard.ZstdError as e:
                raise StreamError(f"{label} is corrupt ({e})", path=name, offset=raw.pos) from e
            started = True
            piece = d.unused_data if d.eof else b""
            if b:
                out.append(b)
                size += len(b)
        if size >= CHUNK_SIZE:
            yield b"".join(out)
            out, size = [], 0
    if out:
        yield b"".join(out)
    if started and not d.eof:
        raise TruncatedError(f"{label} ends early (the last zstd frame is incomplete)", path=name, offset=raw.pos)


def _lzop_chunks(raw: ChunkReader, name: str, label: str) -> Iterator[bytes]:
    import shutil
    import subprocess
    import threading

    prog = shutil.which("lzop")
    if prog is None:
        raise UsageError(f"{name}: {label}: lzop-compressed data needs the 'lzop' program "
                         "(e.g. apt-get install lzop), which is not installed")
    proc = subprocess.Popen([prog, "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    feed_error: list[BaseException] = []

    def feed() -> None:
        try:
            for c in raw.chunks():
                proc.stdin.write(c)  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        except BaseException as e:  # re-raised on the reading side
            feed_error.append(e)
        finally:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass

    t = threading.Thread(target=feed, name="vmig-lzop-feed", daemon=True)
    t.start()
    ok = False
    try:
        while True:
            b = proc.stdout.read(CHUNK_SIZE)
            if not b:
                break
            yield b
        ok = True
    finally:
        if not ok:
            proc.kill()
        proc.stdout.close()
        rc = proc.wait()
        t.join()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if feed_error:
        raise feed_error[0]
    if rc != 0:
        raise TruncatedError(f"{label} is corrupt or ends early (lzop: {err.splitlines()[-1] if err else rc})",
                          path=name, offset=raw.pos)


def file_chunks(fd: int, start: int, end: int | None = None) -> Iterator[bytes]:
    """Chunks of an open file from ``start`` (to ``end`` or its end), read with ``pread``."""
    pos = start
    while end is None or pos < end:
        n = CHUNK_SIZE if end is None else min(CHUNK_SIZE, end - pos)
        b = os.pread(fd, n, pos)
        if not b:
            return
        pos += len(b)
        yield b
