"""The opaque ``virtio`` vmstate field of a virtio-pci device: schemas for every byte of it.

Mirrors QEMU 7.2 hw/virtio/virtio.c (``virtio_save``/``virtio_load``, ``vmstate_virtio`` and its
subsections) and hw/virtio/virtio-pci.c (``save_config``, ``save_queue``, ``vmstate_virtio_pci``
with ``virtio_pci/modern_state``). A virtio device's top-level vmsd (e.g. "virtio-mem") has one
field ``{"name": "virtio", "type": "virtio"}`` whose bytes are, in order (spec virtio-mem.md §6.2):

1. the transport's config: vmstate "PCIDevice" (:mod:`.pci`), then — only if the device has an
   MSI-X capability — the MSI-X table and PBA and a be16 ``config_vector``;
2. the virtio common state: u8 status, u8 isr, be16 queue_sel, be32 low guest features,
   be32 config_len + the config buffer, be32 number of queues, per queue be32 num, be64 desc,
   be16 last_avail_idx (+ be16 MSI-X vector when MSI-X is present);
3. the device's own vmsd (no header, no version: the only per-device part);
4. the subsections of the generic vmsd "virtio" in QEMU's table order (see
   :data:`VIRTIO_SUBSECTIONS`); ``virtio/extra_state`` nests vmsd "virtio_pci" whose only
   subsection is ``virtio_pci/modern_state``.

Nothing on the wire says "MSI-X" or "PCI Express"; :class:`VirtioPciPayload` reads the PCI
config first and picks the body schema for those facts (built once per vector count and cached
on the schema object). The device part is a construct given to :func:`virtio_pci_payload`, so
other virtio devices can reuse everything here by supplying their own vmsd schema.

Decoded value (``construct.Container``)::

    pci            Container(version_id, config: bytes, irq_state: [4 ints])
    msix           Container(table: bytes, pba: bytes) or None
    config_vector  int or None (only with MSI-X)
    status, isr, queue_sel, guest_features_lo, config (bytes), queues [Container(num, desc,
    last_avail_idx[, vector])], device (the device vmsd's Container),
    subsections    Container: name -> Container(version_id, data) in wire order

Large per-queue arrays (1024 entries) decode to numpy structured arrays, never per-entry
Python objects. ``encode(decode(b)) == b`` for every payload QEMU writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from construct import (
    Bytes,
    Check,
    Construct,
    ConstructError,
    Container,
    ExplicitError,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Rebuild,
    SizeofError,
    Struct,
    len_,
    stream_read,
    stream_seek,
    stream_tell,
    stream_write,
    this,
)

from vmig.errors import SchemaError
from vmig.vmstate.pci import PCI_DEVICE_STATE, msix_state, pci_layout

if TYPE_CHECKING:
    import numpy as np

VIRTIO_QUEUE_MAX = 1024
QEMU_VM_SUBSECTION = 0x05

# VirtIO device status bits (virtio_config.h)
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80


class NumpyArray(Construct):
    """``count`` back-to-back fixed-size elements of ``dtype`` as one numpy array.

    Parsing is a single read + ``np.frombuffer`` (a writable copy); building writes
    ``tobytes()``. Used for the 1024-entry per-queue arrays of the virtio subsections.
    """

    def __init__(self, dtype: Any, count: int) -> None:
        super().__init__()
        self._spec = dtype  # a numpy dtype description; numpy is imported when first used
        self._dtype: Any = None
        self.count = count

    @property
    def dtype(self) -> np.dtype:
        if self._dtype is None:
            import numpy as np

            self._dtype = np.dtype(self._spec)
        return self._dtype

    def _parse(self, stream: Any, context: Any, path: str) -> np.ndarray:
        import numpy as np

        data = stream_read(stream, self.dtype.itemsize * self.count, path)
        return np.frombuffer(data, dtype=self.dtype).copy()

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        import numpy as np

        arr = np.asarray(obj, dtype=self.dtype)
        if arr.shape != (self.count,):
            raise ExplicitError(f"expected {self.count} elements, got shape {arr.shape}", path=path)
        data = arr.tobytes()
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        return self.dtype.itemsize * self.count


class VmSubsections(Construct):
    """The subsections after a vmsd's fields, parsed the way QEMU's loader finds them.

    While the next byte is 0x05 and the peeked name starts with ``parent`` the subsection is
    consumed; a matching prefix with a name not in ``table`` is an error (QEMU: ENOENT); anything
    else ends the list without consuming. Value: ``Container(name -> Container(version_id, data))``
    in wire order; building writes them in the container's order.
    """

    def __init__(self, parent: str, table: Mapping[str, Construct]) -> None:
        super().__init__()
        self.parent = parent
        self.table = dict(table)

    def _peek_name(self, stream: Any, path: str) -> str | None:
        start = stream_tell(stream, path)
        try:
            head = stream.read(2)
            if len(head) < 2 or head[0] != QEMU_VM_SUBSECTION:
                return None
            length = head[1]
            if length < len(self.parent) + 1:
                return None
            name = stream.read(length)
            if len(name) < length or not name.startswith(self.parent.encode()):
                return None
            return name.decode("latin-1")
        finally:
            stream_seek(stream, start, 0, path)

    def _parse(self, stream: Any, context: Any, path: str) -> Container:
        out = Container()
        while True:
            name = self._peek_name(stream, path)
            if name is None:
                return out
            if name not in self.table:
                raise ExplicitError(
                    f"unknown subsection {name!r} of vmsd {self.parent!r} "
                    f"(known: {', '.join(self.table)})",
                    path=path,
                )
            if name in out:
                raise ExplicitError(f"subsection {name!r} appears twice", path=path)
            stream_read(stream, 2 + len(name), path)
            version = Int32ub._parsereport(stream, context, path)
            data = self.table[name]._parsereport(stream, context, f"{path} -> {name}")
            out[name] = Container(version_id=version, data=data)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        for name, sub in (obj or {}).items():
            if name not in self.table:
                raise ExplicitError(f"unknown subsection {name!r} of vmsd {self.parent!r}", path=path)
            raw = name.encode("latin-1")
            stream_write(stream, bytes([QEMU_VM_SUBSECTION, len(raw)]) + raw, 2 + len(raw), path)
            Int32ub._build(sub["version_id"], stream, context, path)
            self.table[name]._build(sub["data"], stream, context, f"{path} -> {name}")
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("subsections are variable", path=path)


# --- subsection payloads -------------------------------------------------------------------

#: vmstate_virtqueue: per queue be64 avail, be64 used (VIRTIO_QUEUE_MAX entries, all written).
VIRTQUEUE_DTYPE = [("avail", ">u8"), ("used", ">u8")]
#: vmstate_packed_virtqueue: be16 last_avail_idx, bool wrap, be16 used_idx, bool wrap, be32 inuse.
PACKED_VIRTQUEUE_DTYPE = [
    ("last_avail_idx", ">u2"),
    ("last_avail_wrap_counter", "u1"),
    ("used_idx", ">u2"),
    ("used_wrap_counter", "u1"),
    ("inuse", ">u4"),
]
#: virtio_pci/modern_queue_state: be16 num, 1 unused byte, bool enabled, desc/avail/used as
#: two be32 each (low word first).
MODERN_QUEUE_DTYPE = [
    ("num", ">u2"),
    ("unused", "u1"),
    ("enabled", "u1"),
    ("desc", ">u4", (2,)),
    ("avail", ">u4", (2,)),
    ("used", ">u4", (2,)),
]

#: vmstate "virtio_pci/modern_state" (v1).
VIRTIO_PCI_MODERN_STATE = Struct(
    "dfselect" / Int32ub,
    "gfselect" / Int32ub,
    "guest_features" / Int32ub[2],
    "vqs" / NumpyArray(MODERN_QUEUE_DTYPE, VIRTIO_QUEUE_MAX),
)

#: vmstate "virtio_pci" (v1): no fields, one subsection.
VIRTIO_PCI_EXTRA_STATE = Struct(
    "subsections" / VmSubsections("virtio_pci", {"virtio_pci/modern_state": VIRTIO_PCI_MODERN_STATE}),
)

#: The subsections of the generic vmsd "virtio", in QEMU 7.2's table order (also the write
#: order). Payloads: bool fields are kept as the raw byte so odd values round-trip.
VIRTIO_SUBSECTIONS: dict[str, Construct] = {
    "virtio/device_endian": Int8ub,
    "virtio/64bit_features": Int64ub,
    "virtio/virtqueues": NumpyArray(VIRTQUEUE_DTYPE, VIRTIO_QUEUE_MAX),
    "virtio/ringsize": NumpyArray(">u4", VIRTIO_QUEUE_MAX),
    "virtio/broken": Int8ub,
    "virtio/extra_state": VIRTIO_PCI_EXTRA_STATE,
    "virtio/started": Int8ub,
    "virtio/packed_virtqueues": NumpyArray(PACKED_VIRTQUEUE_DTYPE, VIRTIO_QUEUE_MAX),
    "virtio/disabled": Int8ub,
}

VIRTIO_GENERIC_SUBSECTIONS = VmSubsections("virtio", VIRTIO_SUBSECTIONS)


def virtio_queue(msix: bool) -> Struct:
    """One queue entry of the common state (+ the be16 MSI-X vector virtio-pci adds)."""
    fields = [
        "num" / Int32ub,
        "desc" / Int64ub,
        "last_avail_idx" / Int16ub,
    ]
    if msix:
        fields.append("vector" / Int16ub)
    return Struct(*fields)


def _body(msix_vectors: int, device: Construct) -> Struct:
    """Everything after vmstate PCIDevice, for a device with ``msix_vectors`` vectors."""
    fields: list[Construct] = []
    if msix_vectors:
        fields += [
            "msix" / msix_state(msix_vectors),
            "config_vector" / Int16ub,
        ]
    fields += [
        "status" / Int8ub,
        "isr" / Int8ub,
        "queue_sel" / Int16ub,
        "guest_features_lo" / Int32ub,
        "config_len" / Rebuild(Int32ub, len_(this.config)),
        "config" / Bytes(this.config_len),
        "num_queues" / Rebuild(Int32ub, len_(this.queues)),
        Check(this.num_queues <= VIRTIO_QUEUE_MAX),
        "queues" / virtio_queue(bool(msix_vectors))[this.num_queues],
        "device" / device,
        "subsections" / VIRTIO_GENERIC_SUBSECTIONS,
    ]
    return Struct(*fields)


class VirtioPciPayload(Construct):
    """The ``virtio`` field of a virtio-pci device whose own vmsd is ``device``.

    Args:
        device: construct of the device's vmsd (fields and its own subsections).
        device_vmsd: the device vmsd's name, for messages.
    """

    def __init__(self, device: Construct, device_vmsd: str) -> None:
        super().__init__()
        self.device = device
        self.device_vmsd = device_vmsd
        self._bodies: dict[int, Struct] = {}

    def body(self, msix_vectors: int) -> Struct:
        """The schema after the PCI state for a given MSI-X vector count (built once)."""
        if msix_vectors not in self._bodies:
            self._bodies[msix_vectors] = _body(msix_vectors, self.device)
        return self._bodies[msix_vectors]

    def _parse(self, stream: Any, context: Any, path: str) -> Container:
        pci = PCI_DEVICE_STATE._parsereport(stream, context, f"{path} -> pci")
        layout = pci_layout(pci.config)
        rest = self.body(layout.msix_vectors)._parsereport(stream, context, path)
        out = Container(pci=pci, msix=None, config_vector=None)
        for key, value in rest.items():
            if not key.startswith("_"):
                out[key] = value
        return out

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        PCI_DEVICE_STATE._build(obj["pci"], stream, context, f"{path} -> pci")
        layout = pci_layout(obj["pci"]["config"])
        if layout.msix_vectors and obj.get("msix") is None:
            raise ExplicitError("PCI config has an MSI-X capability but the state has no msix", path=path)
        if not layout.msix_vectors and obj.get("msix") is not None:
            raise ExplicitError("state has msix but the PCI config has no MSI-X capability", path=path)
        self.body(layout.msix_vectors)._build(obj, stream, context, path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("virtio payload is variable", path=path)


def virtio_pci_payload(device: Construct, device_vmsd: str) -> VirtioPciPayload:
    """Build the schema of the ``virtio`` field for a virtio-pci device.

    The device's vmsd construct is the only per-device part; transport, common state and the
    generic subsections are shared. Call once per device type and keep the result (module
    constant), never per section.
    """
    return VirtioPciPayload(device, device_vmsd)


def parse_exact(schema: Construct, payload: bytes | memoryview, *, what: str, offset: int | None = None,
                section: str | None = None) -> Container:
    """Parse ``payload`` entirely with ``schema``; the one choke point turning construct errors
    into :class:`~vmig.errors.SchemaError`.

    Raises:
        SchemaError: the payload does not fit the schema, or bytes are left over.
    """
    import io

    data = bytes(payload)
    stream = io.BytesIO(data)
    try:
        value = schema._parsereport(stream, Container(_parsing=True, _building=False, _sizing=False,
                                                      _params=Container()), "(parsing)")
    except (ConstructError, ValueError, ZeroDivisionError, OverflowError) as e:
        pos = stream.tell()
        raise SchemaError(
            f"{what}: payload does not match the schema near payload byte {pos}: {e}",
            offset=None if offset is None else offset + pos,
            section=section,
        ) from e
    end = stream.tell()
    _strip_io(value)
    if end != len(data):
        raise SchemaError(
            f"{what}: {len(data) - end} bytes left after the schema ended",
            offset=None if offset is None else offset + end,
            section=section,
            expected=len(data),
            found=end,
        )
    return value


def _strip_io(value: Any) -> None:
    """Drop construct's ``_io`` stream references from parsed Containers (recursively)."""
    if isinstance(value, dict):
        value.pop("_io", None)
        for v in value.values():
            _strip_io(v)
    elif isinstance(value, list):
        for v in value:
            _strip_io(v)


def build_exact(schema: Construct, value: Any, *, what: str) -> bytes:
    """Encode ``value`` with ``schema``; construct errors become :class:`SchemaError`."""
    try:
        return schema.build(value)
    except (ConstructError, ValueError, KeyError, TypeError, OverflowError) as e:
        raise SchemaError(f"{what}: cannot encode: {e}") from e
