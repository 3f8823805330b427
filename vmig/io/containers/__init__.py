"""Containers real captures come in, unwrapped to the QEMU migration stream they hold.

Recognised by their magic (never by file name), also from a pipe, nested in any order that
occurs in practice: gzip / xz / bzip2 / zstd / lz4 / lzop compression
(:mod:`.compression`), libvirt save images (:mod:`.libvirt`: header, domain XML, the stream raw
or compressed) and qcow2 internal snapshots (:mod:`.qcow2`: the snapshot's VM state, which needs
random access, so a regular file). A plain stream passes through untouched.

:func:`open_container` is what :func:`vmig.io.streams.open_source` calls: it returns either a
byte range of the file that holds the whole stream contiguously (a raw libvirt image, a qcow2
VM state in consecutive clusters: mapped, zero-copy) or an iterator of chunks (decompressed data,
scattered clusters), plus the :class:`Layer` list describing what was unwrapped (``vmig info``).
Nothing is copied to disk; memory stays bounded by the chunk size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from vmig.errors import StreamError, TruncatedError, UsageError
from vmig.io.containers import compression, libvirt, qcow2
from vmig.io.containers.compression import CHUNK_SIZE, ChunkReader, decompress_chunks, file_chunks
from vmig.records import field, record

__all__ = ["InputPath", "cut_short", "drain_cut", "Layer", "Opened", "sniff_kind", "open_container",
           "unwrap_chunks", "inspect", "QEVM_MAGIC"]

QEVM_MAGIC = b"QEVM"
MAX_DEPTH = 4  # containers nested deeper than this are refused (a compression bomb of layers)
HEAD = libvirt.HEADER_SIZE


class InputPath(str):
    """A STREAM path that carries the reading options (``--snapshot``, ``--partial``) to the
    input layer, and brings back where a partial input was cut.

    A ``str`` (so every command passes it where a path goes); :func:`vmig.io.streams.open_source`
    reads ``snapshot``; the decoding loops call :func:`cut_short` when the input ends early.
    """

    snapshot: str | None
    partial: bool
    cut: StreamError | None

    def __new__(cls, path: str, snapshot: str | None = None, *, partial: bool = False) -> InputPath:
        obj = super().__new__(cls, path)
        obj.snapshot = snapshot
        obj.partial = partial
        obj.cut = None
        return obj


def drain_cut(dec: Any) -> Iterator[Any]:
    """After :func:`cut_short`: the events a decoder still holds for the bytes that arrived before
    the cut (the input ended in the source, e.g. inside a compressed frame, before the decoder
    was told). Its own truncation error, met again, ends them."""
    try:
        dec.receive_data(b"")
        yield from dec.events()
    except (StreamError, UsageError):
        return


def cut_short(path: str, error: StreamError) -> bool:
    """Whether decoding ``path`` may stop quietly at ``error``: True for a truncation
    (:class:`vmig.errors.TruncatedError`) of an :class:`InputPath` read with ``partial``, which
    then keeps the error as ``path.cut`` (where and how the input ends); else False (re-raise)."""
    if isinstance(error, TruncatedError) and getattr(path, "partial", False):
        path.cut = error  # type: ignore[attr-defined]
        return True
    return False


@record
class Layer:
    """One container that was unwrapped: ``kind`` (``qcow2``, ``libvirt``, ``gzip``, …), the offset
    where its data started in its own input, and what it says about itself (``info``)."""

    kind: str
    offset: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    xml: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset, **self.info}


@record
class Opened:
    """Where the stream of a regular file lives: ``[start, end)`` of the file (``chunks`` None),
    or ``chunks``."""

    layers: list[Layer]
    start: int = 0
    end: int | None = None
    chunks: Iterator[bytes | memoryview] | None = None
    label: str | None = None


def sniff_kind(head: bytes) -> str | None:
    """``qcow2``, ``libvirt``, a compression name, or None (a QEVM stream or something else)."""
    if head.startswith(qcow2.MAGIC):
        return "qcow2"
    if head[:16] in (libvirt.MAGIC, libvirt.MAGIC_PARTIAL):
        return "libvirt"
    return compression.sniff(head)


def _partial_error(name: str) -> StreamError:
    return StreamError("partial libvirt save image (magic LibvirtQemudPart): libvirt did not finish "
                       "writing it, so the stream is incomplete", path=name, offset=0,
                       expected="LibvirtQemudSave", found="LibvirtQemudPart")


def _check_payload(hdr: libvirt.LibvirtHeader, head: bytes, name: str) -> None:
    found = compression.sniff(head) or ("raw" if head.startswith(QEVM_MAGIC) else None)
    if found != hdr.compression:
        what = found or f"unrecognised bytes {head[:8].hex()}"
        raise StreamError(f"libvirt save image: header says {hdr.compression} ({hdr.compressed}) but the "
                          f"stream area holds {what}", path=name, offset=hdr.stream_offset,
                          expected=hdr.compression, found=what)


def _libvirt_layer(hdr: libvirt.LibvirtHeader, area: bytes, offset: int) -> Layer:
    xml, cookie = libvirt.parse_xml(area, hdr)
    info = hdr.to_json()
    info["domain"] = libvirt.domain_name(xml)
    info["cookie"] = cookie
    return Layer("libvirt", offset, info, xml)


def unwrap_chunks(chunks: Iterator[bytes | memoryview], name: str, layers: list[Layer],
                  snapshot: str | None = None) -> Iterator[bytes | memoryview]:
    """The QEVM stream inside a sequential input (a pipe, or a file read in order), unwrapping
    compression and libvirt headers as their magic appears; ``layers`` is filled as they are met.

    Raises:
        StreamError: a container is corrupt, truncated or inconsistent (one line, with offsets).
        UsageError: a qcow2 image arrives without random access, or ``snapshot`` was given for
            an input that is no qcow2 image.
    """
    reader = ChunkReader(chunks)
    for _depth in range(MAX_DEPTH + 1):
        head = reader.peek(HEAD)
        kind = sniff_kind(head)
        if kind is None:
            break
        if kind == "qcow2":
            where = "from a pipe" if not layers else f"inside {layers[-1].kind}"
            raise UsageError(f"{name}: a qcow2 image {where}: vmig reads qcow2 snapshots from the image file "
                             "itself (random access); decompress it to a file first")
        if kind == "libvirt":
            hdr = libvirt.parse_header(head, name)
            if hdr.partial:
                raise _partial_error(name)
            base = reader.pos
            reader.read(HEAD)
            area = reader.read(hdr.data_len) if hdr.data_len else b""
            while len(area) < hdr.data_len:
                more = reader.read(hdr.data_len - len(area))
                if not more:
                    raise TruncatedError("libvirt save image ends inside the domain XML area", path=name,
                                      offset=reader.pos, expected=f"{hdr.data_len} bytes of XML area",
                                      found=len(area))
                area += more
            layers.append(_libvirt_layer(hdr, area, base))
            _check_payload(hdr, reader.peek(16), name)
            if hdr.compression == "raw":
                break
            continue
        layers.append(Layer(kind, reader.pos))
        reader = ChunkReader(decompress_chunks(kind, reader, name))
    else:
        raise StreamError(f"containers nested more than {MAX_DEPTH} deep", path=name,
                          expected=f"at most {MAX_DEPTH} layers", found=" in ".join(x.kind for x in layers))
    if snapshot is not None:
        raise UsageError(f"{name}: --snapshot applies to qcow2 images; this input is "
                         f"{'a ' + layers[-1].kind + ' container' if layers else 'a plain stream'}")
    yield from reader.chunks()


def open_container(fd: int, size: int, name: str, snapshot: str | None, *,
                   pread: Any = None) -> Opened | None:
    """Recognise the container of the regular file open as ``fd`` (``size`` bytes).

    Returns None for a file that starts with no container magic (the caller maps it as a plain
    stream), else where its stream is. ``pread(offset, n)`` reads the file (default ``os.pread``;
    the caller passes a mapping's slicer to reuse it).

    Raises:
        StreamError / UsageError: as :func:`unwrap_chunks`, and for hostile qcow2 images.
    """
    if pread is None:
        def pread(off: int, n: int) -> bytes:
            return os.pread(fd, n, off)

    head = pread(0, HEAD)
    kind = sniff_kind(head)
    if snapshot is not None and kind != "qcow2":
        raise UsageError(f"{name}: --snapshot applies to qcow2 images; this input is "
                         f"{'a plain stream' if kind is None else 'a ' + kind + ' container'}")
    if kind is None:
        return None
    if kind == "qcow2":
        img = qcow2.parse(pread, size, name)
        snap = qcow2.select_snapshot(img, snapshot)
        info = img.to_json()
        info["selected"] = {"id": snap.id, "name": snap.name}
        layer = Layer("qcow2", 0, info)
        label = f"{name} (snapshot {snap.id} {snap.name!r})"
        runs = qcow2.vm_state_extents(img, snap, pread)
        first = next(runs)
        second = next(runs, None)
        if second is None and first[0] is not None:  # one contiguous allocated run
            return Opened([layer], first[0], first[0] + first[1], label=label)

        def gen() -> Iterator[bytes | memoryview]:
            zeros = bytes(CHUNK_SIZE)
            pending = [first] + ([second] if second is not None else [])
            for host, n in _chain(pending, runs):
                if host is None:
                    while n:
                        k = min(n, CHUNK_SIZE)
                        yield zeros[:k]
                        n -= k
                else:
                    yield from file_chunks(fd, host, host + n)

        return Opened([layer], chunks=gen(), label=label)
    if kind == "libvirt":
        hdr = libvirt.parse_header(head, name, file_size=size)
        if hdr.partial:
            raise _partial_error(name)
        area = pread(HEAD, min(hdr.data_len, libvirt.MAX_XML_FROM_PIPE))
        layers = [_libvirt_layer(hdr, area, 0)]
        label = f"{name} (QEMU stream at byte {hdr.stream_offset})"
        _check_payload(hdr, pread(hdr.stream_offset, 16), name)
        if hdr.compression == "raw":
            return Opened(layers, hdr.stream_offset, size, label=label)
        chunks = unwrap_chunks(file_chunks(fd, hdr.stream_offset), name, layers)
        return Opened(layers, chunks=chunks, label=label)
    layers2: list[Layer] = []
    return Opened(layers2, chunks=unwrap_chunks(file_chunks(fd, 0), name, layers2, snapshot))


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def inspect(path: str) -> list[Layer]:
    """The outer container of the file ``path`` without reading its stream: the qcow2 header and
    snapshot table (no snapshot chosen), or the libvirt header and domain XML, or the compression;
    ``[]`` for a plain stream.

    Raises:
        UsageError: the file cannot be opened. StreamError: a hostile header.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise UsageError(f"{path}: cannot open: {e.strerror}") from e
    try:
        size = os.fstat(fd).st_size

        def pread(off: int, n: int) -> bytes:
            return os.pread(fd, n, off)

        head = pread(0, HEAD)
        kind = sniff_kind(head)
        if kind is None:
            return []
        if kind == "qcow2":
            return [Layer("qcow2", 0, qcow2.parse(pread, size, path).to_json())]
        if kind == "libvirt":
            hdr = libvirt.parse_header(head, path, file_size=size)
            return [_libvirt_layer(hdr, pread(HEAD, min(hdr.data_len, libvirt.MAX_XML_FROM_PIPE)), 0)]
        return [Layer(kind)]
    finally:
        os.close(fd)
