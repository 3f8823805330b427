"""virtio-mem migration state: vmsds "virtio-mem-device", "virtio-mem-device-early" and the
whole ``virtio`` payload of the "virtio-mem" section, in every layout QEMU has written.

Mirrors QEMU hw/virtio/virtio-mem.c (7.2: ``vmstate_virtio_mem_device`` with the
``vmstate_virtio_mem_sanity_checks`` tmp; 8.0+: ``vmstate_virtio_mem_device_early`` and the
field-exists tests that drop tmp, size and bitmap from the late vmsd when early migration is on).
Spec: virtio-mem.md §6.2, §6.3, §6.5.

Layouts:

* 5.1 … 7.2, and machine types ≤ 7.2 on newer binaries — :data:`VIRTIO_MEM_DEVICE`:
  ``tmp`` (addr be64, region_size be64, block_size be64, node be32), usable_region_size be64,
  size be64, requested_size be64, bitmap (ceil(region_size / block_size / 64) be64 words).
* 8.0+ with x-early-migration (machine types ≥ 8.0): the FULL section
  ``<path>/virtio-mem-device-early`` before RAM — :data:`VIRTIO_MEM_DEVICE_EARLY` (tmp, size,
  bitmap) — and in the late section :data:`VIRTIO_MEM_DEVICE_LATE` (usable_region_size,
  requested_size).
* 10.0+ machine types add MSI-X to the transport; handled by :mod:`.virtio` from the PCI config.

The bitmap has **no length on the wire**: its word count comes from the ``tmp`` fields just
read (QEMU uses the destination's own region/block size, which the tmp check forces equal).
Decoded, ``bitmap`` is a numpy bool array with one element per block (True = plugged). Bits
beyond the last block in the last word are zero when QEMU writes them; if a stream has others,
they are kept as ``bitmap_padding`` (the last word's value above the last block) so that the
state re-encodes to the same bytes.

Public API (the device model consumes it):
``VIRTIO_MEM_DEVICE``, ``VIRTIO_MEM_DEVICE_EARLY``, ``VIRTIO_MEM_DEVICE_LATE``,
``VIRTIO_MEM_PAYLOAD`` / ``VIRTIO_MEM_PAYLOAD_LATE`` (the whole ``virtio`` field),
``decode_virtio_mem`` / ``encode_virtio_mem``, ``decode_early`` / ``encode_early``,
``bitmap_to_bool``, ``bool_to_words``, ``ranges_to_bool``, ``block_count``;
:class:`VirtioMemSection` (one device's section bytes and decoded fields) filled by
:func:`add_section`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from construct import (
    Adapter,
    Construct,
    ConstructError,
    Container,
    ExplicitError,
    Int32ub,
    Int64ub,
    SizeofError,
    Struct,
    stream_read,
    stream_tell,
    stream_write,
)
from construct import (
    StreamError as ConstructStreamError,
)

from vmig.errors import SchemaError, UsageError
from vmig.records import record
from vmig.stream.inbuf import NeedMoreInput
from vmig.vmstate.virtio import build_exact, parse_exact, virtio_pci_payload

if TYPE_CHECKING:
    import numpy as np

VMSD_VIRTIO_MEM = "virtio-mem"
VMSD_VIRTIO_MEM_DEVICE = "virtio-mem-device"
VMSD_VIRTIO_MEM_DEVICE_EARLY = "virtio-mem-device-early"
IDSTR_SUFFIX = "/virtio-mem"
IDSTR_SUFFIX_EARLY = "/virtio-mem-device-early"
VIRTIO_MEM_VERSION = 1

#: vmsd "virtio-mem-device/sanity-checks" (the WITH_TMP helper): compared with the
#: destination's configuration on load, in this order.
VIRTIO_MEM_SANITY_CHECKS = Struct(
    "addr" / Int64ub,
    "region_size" / Int64ub,
    "block_size" / Int64ub,
    "node" / Int32ub,
)


# --- bitmap helpers ------------------------------------------------------------------------


def block_count(region_size: int, block_size: int) -> int:
    """Number of blocks (= bitmap bits) QEMU allocates: ``region_size // block_size``.

    Raises:
        SchemaError: block_size is 0 (QEMU never writes it; a crafted stream may).
    """
    if block_size <= 0:
        raise SchemaError("virtio-mem block_size is 0: bitmap length undefined", found=block_size)
    return region_size // block_size


def words_for(nblocks: int) -> int:
    """Number of be64 words the bitmap of ``nblocks`` blocks takes on the wire."""
    return (nblocks + 63) // 64


def bitmap_to_bool(words: Any, nblocks: int) -> np.ndarray:
    """Expand bitmap words to a bool array of ``nblocks`` (bit k of word w = block 64·w + k).

    Args:
        words: sequence/array of the 64-bit words (values, any endianness dtype), or the raw
            big-endian wire bytes.
        nblocks: number of blocks (bits beyond it are dropped).
    """
    import numpy as np

    if isinstance(words, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(words, dtype=">u8")
    else:
        arr = np.asarray(words, dtype=np.uint64)
    if len(arr) * 64 < nblocks:
        raise UsageError(f"{len(arr)} bitmap words cannot hold {nblocks} blocks")
    little = arr.astype("<u8").view(np.uint8)
    bits = np.unpackbits(little, bitorder="little").astype(bool)
    return bits[:nblocks].copy()


def bool_to_words(plugged: Any, padding: int = 0) -> np.ndarray:
    """Pack a per-block bool array into bitmap words (numpy ``uint64`` values).

    Args:
        plugged: bool per block.
        padding: bits to OR into the last word above the last block (normally 0).
    """
    import numpy as np

    bits = np.asarray(plugged, dtype=bool)
    nwords = words_for(len(bits))
    padded = np.zeros(nwords * 64, dtype=bool)
    padded[: len(bits)] = bits
    words = np.packbits(padded, bitorder="little").view("<u8").astype(np.uint64)
    if padding:
        if nwords == 0:
            raise UsageError("bitmap padding given for an empty bitmap")
        words[-1] |= np.uint64(padding)
    return words


def words_to_wire(words: Any) -> bytes:
    """The big-endian wire bytes of bitmap words."""
    import numpy as np

    return np.asarray(words, dtype=np.uint64).astype(">u8").tobytes()


def ranges_to_bool(ranges: Iterable[tuple[int, int]], nblocks: int) -> np.ndarray:
    """Inverse of :func:`vmig.runs.true_runs`: half-open block ranges to a bool array."""
    import numpy as np

    out = np.zeros(nblocks, dtype=bool)
    for start, end in ranges:
        if not 0 <= start <= end <= nblocks:
            raise UsageError(f"block range [{start}, {end}) outside 0..{nblocks}")
        out[start:end] = True
    return out


# --- the bitmap field ----------------------------------------------------------------------


def _nblocks_from_context(context: Any) -> int:
    tmp = context["tmp"]
    return block_count(int(tmp["region_size"]), int(tmp["block_size"]))


class _BitmapWords(Construct):
    """VMSTATE_BITMAP(bitmap, …, bitmap_size): words of the length the tmp fields imply.

    Value: numpy ``uint64`` array of the words. The length is checked against the bytes left
    before anything is allocated (a crafted region/block size must not allocate gigabytes).
    """

    def _parse(self, stream: Any, context: Any, path: str) -> np.ndarray:
        import numpy as np

        try:
            nblocks = _nblocks_from_context(context)
        except SchemaError as e:
            raise ExplicitError(str(e), path=path) from e
        nbytes = words_for(nblocks) * 8
        here = stream_tell(stream, path)
        stream.seek(0, 2)
        left = stream.tell() - here
        stream.seek(here)
        if nbytes > left:
            raise ConstructStreamError(
                f"could not read enough bytes: bitmap of {nblocks} blocks needs {nbytes} bytes, only {left} left "
                f"(region_size / block_size from the tmp fields)",
                path=path,
            )
        data = stream_read(stream, nbytes, path)
        return np.frombuffer(data, dtype=">u8").astype(np.uint64)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        import numpy as np

        nblocks = _nblocks_from_context(context)
        words = np.asarray(obj, dtype=np.uint64)
        if len(words) != words_for(nblocks):
            raise ExplicitError(
                f"bitmap has {len(words)} words, region_size / block_size needs {words_for(nblocks)}",
                path=path,
            )
        data = words_to_wire(words)
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("bitmap length depends on tmp", path=path)


class _BitmapView(Adapter):
    """Presents the bitmap words as a per-block bool array (+ ``bitmap_padding`` if any)."""

    def _decode(self, obj: Container, context: Any, path: str) -> Container:
        if "bitmap" not in obj:
            return obj
        nblocks = _nblocks_from_context(obj)
        words = obj["bitmap"]
        out = Container(obj)
        out["bitmap"] = bitmap_to_bool(words, nblocks)
        rem = nblocks % 64
        if len(words):
            high = int(words[-1]) >> rem << rem if rem else 0
            if high:
                out["bitmap_padding"] = high
        return out

    def _encode(self, obj: Any, context: Any, path: str) -> Container:
        import numpy as np

        if "bitmap" not in obj:
            return obj
        out = Container(obj)
        out.pop("bitmap_padding", None)
        nblocks = _nblocks_from_context(obj)
        bits = np.asarray(obj["bitmap"])
        if bits.dtype == bool:
            if len(bits) != nblocks:
                raise ExplicitError(
                    f"bitmap has {len(bits)} blocks, region_size / block_size = {nblocks}", path=path
                )
            out["bitmap"] = bool_to_words(bits, int(obj.get("bitmap_padding", 0) or 0))
        return out


#: vmsd "virtio-mem-device" v1 as written by QEMU 5.1 … 7.2 (and by 8.0+ without early migration).
VIRTIO_MEM_DEVICE = _BitmapView(
    Struct(
        "tmp" / VIRTIO_MEM_SANITY_CHECKS,
        "usable_region_size" / Int64ub,
        "size" / Int64ub,
        "requested_size" / Int64ub,
        "bitmap" / _BitmapWords(),
    )
)

#: vmsd "virtio-mem-device" v1 of an 8.0+ device with early migration: the tmp, size and bitmap
#: fields went to the early section.
VIRTIO_MEM_DEVICE_LATE = Struct(
    "usable_region_size" / Int64ub,
    "requested_size" / Int64ub,
)

#: vmsd "virtio-mem-device-early" v1 (8.0+): its own FULL section, sent during setup before RAM.
VIRTIO_MEM_DEVICE_EARLY = _BitmapView(
    Struct(
        "tmp" / VIRTIO_MEM_SANITY_CHECKS,
        "size" / Int64ub,
        "bitmap" / _BitmapWords(),
    )
)

#: The ``virtio`` field of vmsd "virtio-mem" (the FULL section's whole payload).
VIRTIO_MEM_PAYLOAD = virtio_pci_payload(VIRTIO_MEM_DEVICE, VMSD_VIRTIO_MEM_DEVICE)
#: Same with the late device layout (8.0+ machine types with early migration).
VIRTIO_MEM_PAYLOAD_LATE = virtio_pci_payload(VIRTIO_MEM_DEVICE_LATE, VMSD_VIRTIO_MEM_DEVICE)


def _looks_late(payload: bytes) -> bool:
    """True if the device part of a virtio-mem payload has the 8.0+ late layout.

    Walks the transport and common state (whose lengths are all on the wire or in the PCI
    config) and looks 16 bytes into the device part: the late layout continues with the
    ``virtio/…`` subsection header there; the full layout has ``tmp.block_size`` (a power of two,
    never ``05 xx 'virtio/'``).
    """
    import io

    from vmig.vmstate.pci import PCI_DEVICE_STATE, pci_layout

    stream = io.BytesIO(payload)
    try:
        pci = PCI_DEVICE_STATE.parse_stream(stream)
    except ConstructError:
        return False  # the full parse will report where it fails
    vectors = pci_layout(pci.config).msix_vectors
    pos = stream.tell()
    if vectors:
        pos += 16 * vectors + (vectors + 7) // 8 + 2
    pos += 1 + 1 + 2 + 4
    config_len = int.from_bytes(payload[pos : pos + 4], "big")
    pos += 4 + config_len
    nq = int.from_bytes(payload[pos : pos + 4], "big")
    pos += 4 + nq * (4 + 8 + 2 + (2 if vectors else 0))
    probe = payload[pos + 16 : pos + 16 + 9]
    return probe[:1] == b"\x05" and probe[2:9] == b"virtio/"


def decode_virtio_mem(
    payload: bytes | memoryview,
    *,
    early_migration: bool | None = None,
    offset: int | None = None,
    section: str | None = None,
) -> Container:
    """Decode the payload of a ``<path>/virtio-mem`` FULL section.

    Args:
        payload: the section payload (= the ``virtio`` field's bytes).
        early_migration: True for the 8.0+ late layout, False for the full (≤ 7.2) layout,
            None to tell from the bytes.
        offset: absolute stream offset of the payload, for error messages.
        section: ``"idstr instance N"`` for error messages.

    Returns:
        The virtio Container (see :mod:`.virtio`); ``.device`` holds the virtio-mem fields.

    Raises:
        SchemaError: the bytes do not fit the layout.
    """
    data = bytes(payload)
    if early_migration is None:
        early_migration = _looks_late(data)
    schema = VIRTIO_MEM_PAYLOAD_LATE if early_migration else VIRTIO_MEM_PAYLOAD
    return parse_exact(schema, data, what="virtio-mem", offset=offset, section=section)


def encode_virtio_mem(state: Any) -> bytes:
    """Encode a decoded (possibly edited) virtio-mem payload back to bytes.

    The layout is chosen from the device part: with ``tmp``/``bitmap`` → full layout, else late.
    """
    late = "tmp" not in state["device"]
    schema = VIRTIO_MEM_PAYLOAD_LATE if late else VIRTIO_MEM_PAYLOAD
    return build_exact(schema, state, what="virtio-mem")


def measure_virtio_mem(buf: bytes | memoryview) -> int:
    """Length of the virtio-mem payload at the start of ``buf`` (bytes after it are ignored).

    Used to walk a stream without a trailer. The layout (full or 8.0+ late) is told from the
    bytes, as in :func:`decode_virtio_mem`.

    Raises:
        NeedMoreInput: ``buf`` ends inside the payload.
        SchemaError: the bytes do not fit the virtio-mem layout.
    """
    import io

    data = bytes(buf)
    schema = VIRTIO_MEM_PAYLOAD_LATE if _looks_late(data) else VIRTIO_MEM_PAYLOAD
    stream = io.BytesIO(data)
    try:
        schema.parse_stream(stream)
    except ConstructError as e:
        if stream.tell() >= len(data) or "could not read enough bytes" in str(e):
            raise NeedMoreInput("the virtio-mem payload", have=len(data)) from e
        raise SchemaError(f"virtio-mem: payload does not match the schema: {e}") from e
    return stream.tell()


def decode_early(payload: bytes | memoryview, *, offset: int | None = None,
                 section: str | None = None) -> Container:
    """Decode a ``<path>/virtio-mem-device-early`` FULL section payload (8.0+)."""
    return parse_exact(VIRTIO_MEM_DEVICE_EARLY, payload, what="virtio-mem-device-early",
                       offset=offset, section=section)


def encode_early(state: Any) -> bytes:
    """Encode a virtio-mem-device-early state."""
    return build_exact(VIRTIO_MEM_DEVICE_EARLY, state, what="virtio-mem-device-early")


def early_payload_length(payload: bytes | memoryview) -> int:
    """Length of an early-section payload at the start of ``payload`` (no trailer needed).

    The early vmsd is self-describing: 28 bytes of tmp, be64 size, then the bitmap whose length
    the tmp gives. Used by the decoder's layout resolver.

    Raises:
        SchemaError: too short or block_size 0.
    """
    buf = bytes(payload[:36])
    if len(buf) < 36:
        raise SchemaError("virtio-mem-device-early payload shorter than its fixed part", found=len(buf))
    region = int.from_bytes(buf[8:16], "big")
    block = int.from_bytes(buf[16:24], "big")
    return 36 + words_for(block_count(region, block)) * 8


def device_path(idstr: str) -> str:
    """``0000:00:02.0/virtio-mem`` → ``0000:00:02.0`` (the PCI device path of the section)."""
    for suffix in (IDSTR_SUFFIX_EARLY, IDSTR_SUFFIX):
        if idstr.endswith(suffix):
            return idstr[: -len(suffix)]
    return idstr


@record
class VirtioMemSection:
    """The migrated state of one virtio-mem device as a stream carries it: section bytes and
    their decoded fields (no interpretation; the device model is built from these).

    Attributes:
        dev_path: PCI device path (``0000:00:02.0``), from the section idstr.
        payload: bytes of the ``<dev-path>/virtio-mem`` FULL section, or None (not seen yet).
        decoded: its decoded Container (``.device`` = the virtio-mem-device values), or None.
        offset: stream offset of that payload, or None.
        early_payload / early: the ``-early`` section ([8.0]+ machines) and its decoded
            values (tmp, size, bitmap), or None.
    """

    dev_path: str
    payload: bytes | None = None
    decoded: Container | None = None
    offset: int | None = None
    early_payload: bytes | None = None
    early: Container | None = None

    @property
    def complete(self) -> bool:
        """Both halves are present: the late section, and the early one if the late one
        has the 8.0+ layout (without ``tmp``)."""
        if self.decoded is None:
            return False
        return "tmp" in self.decoded.device or self.early is not None


def is_virtio_mem_section(idstr: str) -> bool:
    """True for ``<path>/virtio-mem`` and ``<path>/virtio-mem-device-early`` idstrs."""
    return idstr.endswith(IDSTR_SUFFIX) or idstr.endswith(IDSTR_SUFFIX_EARLY)


def add_section(found: dict[str, VirtioMemSection], idstr: str, instance_id: int,
                payload: bytes | memoryview, offset: int | None = None) -> VirtioMemSection | None:
    """Decode one virtio-mem section payload into ``found[dev_path]`` (created on first use).

    Returns the updated record, or None if ``idstr`` is not a virtio-mem section.

    Raises:
        SchemaError: the payload does not fit the virtio-mem layout.
    """
    if not is_virtio_mem_section(idstr):
        return None
    path = device_path(idstr)
    sec = found.get(path)
    if sec is None:
        sec = found[path] = VirtioMemSection(path)
    raw = bytes(payload)
    label = f"{idstr} instance {instance_id}"
    if idstr.endswith(IDSTR_SUFFIX_EARLY):
        sec.early_payload, sec.early = raw, decode_early(raw, offset=offset, section=label)
    else:
        sec.payload, sec.offset = raw, offset
        sec.decoded = decode_virtio_mem(raw, early_migration=sec.early is not None or None,
                                        offset=offset, section=label)
    return sec


class VirtioMemField(Construct):
    """The ``virtio`` field of vmsd "virtio-mem" as one construct (either device layout).

    Reads the rest of the (bounded) field stream, tells the full from the 8.0+ late layout and
    decodes with the matching schema; builds with the layout the value has.
    """

    def _parse(self, stream: Any, context: Any, path: str) -> Container:
        here = stream_tell(stream, path)
        data = stream.read()
        late = _looks_late(data)
        schema = VIRTIO_MEM_PAYLOAD_LATE if late else VIRTIO_MEM_PAYLOAD
        import io

        sub = io.BytesIO(data)
        value = schema._parsereport(sub, context, path)
        stream.seek(here + sub.tell())
        from vmig.vmstate.virtio import _strip_io

        _strip_io(value)
        return value

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        late = "tmp" not in obj["device"]
        schema = VIRTIO_MEM_PAYLOAD_LATE if late else VIRTIO_MEM_PAYLOAD
        return schema._build(obj, stream, context, path)

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("virtio payload is variable", path=path)


def virtio_field_codec(entry: Any) -> Construct:
    """Field-codec factory for ``("virtio", "virtio-mem")`` (see vmstate/registry.py).

    ``entry`` is the vmdesc field entry (``{"name": "virtio", "type": "virtio", "size": N}``);
    the schema does not need it: every length is on the wire or follows from the PCI config.
    """
    return VirtioMemField()


def _measure_for_layout(view: memoryview, version_id: int) -> int:
    return measure_virtio_mem(view)


def _measure_early_for_layout(view: memoryview, version_id: int) -> int:
    if len(view) < 36:  # the fixed part (tmp + size) says how long the bitmap is
        raise NeedMoreInput("the virtio-mem-device-early fixed part", 36, len(view))
    return early_payload_length(view)


#: The built-in layouts of the virtio-mem sections (by the idstr's last ``/`` part), for the
#: decoder's layout resolver (:class:`vmig.stream.layout.LayoutResolver`): measured from the
#: bytes, no trailer needed. The decoder factory (:mod:`vmig.io.decoding`) hands them down.
LAYOUTS = {
    "virtio-mem": _measure_for_layout,
    "virtio-mem-device-early": _measure_early_for_layout,
}
