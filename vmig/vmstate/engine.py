"""vmstate engine: a device entry of the vmdesc JSON trailer -> a ``construct`` schema.

Mirrors QEMU 7.2 ``migration/vmstate.c`` (``vmstate_save_state_v``, ``vmstate_subsection_save``,
``vmsd_desc_field_start/_end``) and the leaf encodings of ``migration/vmstate-types.c``; the
wire format is described in docs stream-format.md §3.3 and §4.

Theory of operation
-------------------
A vmdesc device entry (or subsection, or ``struct`` body) lists, in wire order, the fields that
were written and the subsections that were needed. :class:`SchemaSet` turns one such *body*
into a body construct (fields in order into one ``Container``, then subsections):

1. Each field entry gives an *element* construct from its ``type`` and measured ``size``
   (``_element``): big-endian integers, ``bool``, ``timer``, ``CPU_Double_U``, ``bitmap``,
   ``capability``, null-pointer markers, nested ``struct`` bodies, inline ``tmp``/``vstruct``
   bodies, and opaque ``Bytes(size)`` for every type the trailer does not describe (``virtio``,
   ``pci config``, ``qtailq``, unknown names). A codec registered in
   :mod:`vmig.vmstate.registry` replaces an opaque field.
2. ``array_len`` wraps the element in ``Array(n, ...)``. Entries carrying ``index`` (one object
   per element) and repeated same-named entries are grouped into one key whose value is a list
   (``Sequence``). A name that reappears after another field gets the key ``name#k``.
3. Each listed subsection becomes ``Const(05 len name be32 version)`` + its body, under the key
   equal to its ``vmsd_name``; all must follow in list order (a trailer lists exactly what was
   written). With ``SchemaSet(optional_subsections=True)`` (for the bundled machine schema
   sets of :mod:`vmig.vmstate.machines`, which list every subsection a vmsd may send,
   inline bodies under ``"body"`` and no sizes for structs) subsections are found by peeking,
   in any order, and a name listed in several variants decodes to a :class:`VariantContainer`
   remembering which one.
4. Every byte-consuming construct is wrapped in a guard that records the payload offset and
   field path of the first failure; :meth:`VmsdSchema.decode` / :meth:`VmsdSchema.encode` are
   the one choke point turning construct errors into :class:`vmig.errors.SchemaError`.

Invariants: the description JSON is never mutated; a schema is built once per body object of
one description (cache keyed by ``id()`` of the body, holding a reference to it so the id stays
valid) and keeps no parse results; ``encode(decode(p)) == p`` for every payload the description
fits (all bytes, including padding in bitmaps, non-0/1 bools and opaque blobs, are kept).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import construct
from construct import (
    Adapter,
    Array,
    Bytes,
    BytesInteger,
    Const,
    Container,
    Float64b,
    FocusedSeq,
    Int8sb,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32sb,
    Int32ub,
    Int64sb,
    Int64ub,
    PascalString,
    Sequence,
    Subconstruct,
)

from vmig.errors import SchemaError
from vmig.records import field, record
from vmig.stream.constants import VMS_NULLPTR_MARKER
from vmig.stream.vmdesc import body_length
from vmig.vmstate.registry import Registry, default_registry

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "INT_TYPES",
    "OPAQUE_TYPES",
    "FieldItem",
    "BodyNode",
    "VariantContainer",
    "VmsdSchema",
    "SchemaSet",
    "build_schema",
]

# vmdesc integer type names -> (wire width, signed). All big-endian on the wire, including
# "int32 le" (less-or-equal check, not little-endian). "int64 equal" is QEMU's uint64 "equal"
# variant (vmstate_info_uint64_equal is named "int64 equal"), so it is unsigned here.
INT_TYPES: dict[str, tuple[int, bool]] = {
    "int8": (1, True),
    "int16": (2, True),
    "int32": (4, True),
    "int64": (8, True),
    "uint8": (1, False),
    "uint16": (2, False),
    "uint32": (4, False),
    "uint64": (8, False),
    "int32 equal": (4, True),
    "int32 le": (4, True),
    "uint32 equal": (4, False),
    "int64 equal": (8, False),
    "uint8 equal": (1, False),
    "uint16 equal": (2, False),
    "timer": (8, True),  # be64 expiry; -1 = not armed
}

_INT_CONSTRUCTS: dict[tuple[int, bool], construct.Construct] = {
    (1, True): Int8sb,
    (2, True): Int16sb,
    (4, True): Int32sb,
    (8, True): Int64sb,
    (1, False): Int8ub,
    (2, False): Int16ub,
    (4, False): Int32ub,
    (8, False): Int64ub,
}

# Types written by a custom VMStateInfo.put whose layout the trailer does not describe; kept as
# exact bytes unless a codec is registered. Any type name not handled explicitly is opaque too.
OPAQUE_TYPES: frozenset[str] = frozenset(
    {
        "buffer",
        "unused_buffer",
        "virtio",
        "pci config",
        "pci irq state",
        "msix state",
        "usb device addr",
        "virtqueue_extra_state",
        "scsi-requests",
        "shpc",
        "qtailq",
        "qlist",
        "gtree",
        "unknown",
    }
)

_FLOAT_TYPES = frozenset({"CPU_Double_U", "float64"})
_INLINE_BODY_TYPES = frozenset({"tmp", "vstruct"})
_LIST_TYPES = frozenset({"qtailq", "qlist"})


# ---------------------------------------------------------------------------------------------
# Leaf adapters


class BoolByte(Adapter):  # type: ignore[misc]
    """``bool``: one byte. 0/1 decode to False/True; any other byte stays an int (byte-exact)."""

    def __init__(self) -> None:
        super().__init__(Int8ub)

    def _decode(self, obj: int, context: Any, path: str) -> bool | int:
        if obj == 0:
            return False
        if obj == 1:
            return True
        return obj

    def _encode(self, obj: bool | int, context: Any, path: str) -> int:
        return int(obj)


class NullPtrMarker(Adapter):  # type: ignore[misc]
    """A NULL element of an array of pointers: the byte 0x30, decoded as None.

    QEMU 7.2 describes such an element with the field's normal type and ``size`` 1 (master: type
    ``nullptr``). A byte other than 0x30 decodes to its int value so nothing is lost.
    """

    def __init__(self) -> None:
        super().__init__(Int8ub)

    def _decode(self, obj: int, context: Any, path: str) -> int | None:
        return None if obj == VMS_NULLPTR_MARKER else obj

    def _encode(self, obj: int | None, context: Any, path: str) -> int:
        return VMS_NULLPTR_MARKER if obj is None else int(obj)


class Bitmap(Adapter):  # type: ignore[misc]
    """``bitmap``: be64 words; bit i is bit (i mod 64) of word i div 64 -> numpy bool array.

    All ``8 * size`` bits are kept (including padding beyond the bitmap's nbits), so the
    encoding is byte-exact.
    """

    def __init__(self, size: int) -> None:
        super().__init__(Bytes(size))
        self.nbytes = size

    def _decode(self, obj: bytes, context: Any, path: str) -> np.ndarray:
        import numpy as np

        words = np.frombuffer(obj, dtype=">u8").astype("<u8")
        return np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)

    def _encode(self, obj: Any, context: Any, path: str) -> bytes:
        import numpy as np

        bits = np.asarray(obj, dtype=bool)
        if bits.size != self.nbytes * 8:
            raise construct.ExplicitError(
                f"bitmap has {bits.size} bits, expected {self.nbytes * 8}", path=path
            )
        words = np.packbits(bits, bitorder="little").view("<u8").astype(">u8")
        return words.tobytes()


class _MarkedList(Subconstruct):  # type: ignore[misc]
    """``qtailq``/``qlist``: ``01`` + element payload per element, then ``00`` (vmstate-types.c)."""

    def _parse(self, stream: Any, context: Any, path: str) -> list[Any]:
        out: list[Any] = []
        while True:
            marker = construct.stream_read(stream, 1, path)[0]
            if marker == 0:
                return out
            if marker != 1:
                raise construct.ExplicitError(f"list element marker {marker:#x}", path=path)
            out.append(self.subcon._parsereport(stream, context, path))

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        for element in obj:
            construct.stream_write(stream, b"\x01", 1, path)
            self.subcon._build(element, stream, context, path)
        construct.stream_write(stream, b"\x00", 1, path)
        return obj


class _Guard(Subconstruct):  # type: ignore[misc]
    """Records the stream offset and the field path of the innermost failing construct."""

    def __init__(self, subcon: construct.Construct, label: str) -> None:
        super().__init__(subcon)
        self.label = label

    def _note(self, e: construct.ConstructError, pos: int) -> None:
        if getattr(e, "vmig_offset", None) is None:
            e.vmig_offset = pos  # type: ignore[attr-defined]
        e.vmig_fields = [self.label, *getattr(e, "vmig_fields", [])]  # type: ignore[attr-defined]

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        pos = stream.tell()
        try:
            return self.subcon._parsereport(stream, context, path)
        except construct.ConstructError as e:
            self._note(e, pos)
            raise

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        pos = stream.tell()
        try:
            return self.subcon._build(obj, stream, context, path)
        except construct.ConstructError as e:
            self._note(e, pos)
            raise

    def _sizeof(self, context: Any, path: str) -> int:
        return int(self.subcon._sizeof(context, path))


class _ExactCodec(Subconstruct):  # type: ignore[misc]
    """Runs a registered codec over exactly ``size`` bytes and checks it consumed all of them."""

    def __init__(self, subcon: construct.Construct, size: int, label: str) -> None:
        super().__init__(subcon)
        self.size = size
        self.label = label

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        data = construct.stream_read(stream, self.size, path)
        sub = io.BytesIO(data)
        obj = self.subcon._parsereport(sub, context, path)
        if sub.tell() != self.size:
            raise construct.ExplicitError(
                f"codec for {self.label} consumed {sub.tell()} of {self.size} bytes", path=path
            )
        return obj

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        return self.subcon._build(obj, stream, context, path)


class VariantContainer(Container):  # type: ignore[misc]
    """A decoded subsection that remembers which of several same-named variants decoded it.

    Values alone cannot tell variants apart (``uint16`` 9 and ``uint32`` 9), so encoding uses
    the remembered index; copies keep it.
    """

    def _set_variant(self, index: int) -> VariantContainer:
        object.__setattr__(self, "_vmig_variant", index)
        return self

    @property
    def variant(self) -> int | None:
        return self.__dict__.get("_vmig_variant")

    def __copy__(self) -> VariantContainer:
        return VariantContainer(self)._set_variant(self.variant)  # type: ignore[arg-type]

    def __deepcopy__(self, memo: dict[int, Any]) -> VariantContainer:
        import copy

        out = VariantContainer({k: copy.deepcopy(v, memo) for k, v in self.items()})
        return out._set_variant(self.variant)  # type: ignore[arg-type]


class _Body(construct.Construct):  # type: ignore[misc]
    """A vmsd body: its fields in order, then its subsections, into one Container.

    ``strict`` (a stream's own trailer, which lists exactly the subsections written): every
    listed subsection must follow, in list order. Not strict (schema sets listing every
    subsection a vmsd may send, possibly several variants of one name): subsections are found
    by peeking ``05 len name`` like QEMU's loader (migration/vmstate.c
    ``vmstate_subsection_load``), in any order; the first variant of that name that parses is
    used (greedy, no backtracking: a variant that parses but is not the one written shows up as
    left-over bytes); found ones are stored in wire order (so encoding reproduces it), absent
    ones have no key.
    """

    def __init__(
        self,
        fields: list[tuple[str, construct.Construct]],
        subsections: list[tuple[str, bytes, construct.Construct]],
        strict: bool,
    ) -> None:
        super().__init__()
        self.fields = fields
        self.subsections = subsections
        self.strict = strict
        self._by_prefix: dict[bytes, list[tuple[str, construct.Construct]]] = {}
        self._by_name: dict[str, list[construct.Construct]] = {}
        for name, prefix, c in subsections:
            self._by_prefix.setdefault(prefix, []).append((name, c))
            self._by_name.setdefault(name, []).append(c)

    def _parse(self, stream: Any, context: Any, path: str) -> Container:
        obj = Container()
        for key, c in self.fields:
            obj[key] = c._parsereport(stream, context, f"{path} -> {key}")
        if self.strict:
            for name, _prefix, c in self.subsections:
                obj[name] = c._parsereport(stream, context, f"{path} -> {name}")
            return obj
        while True:
            pos = stream.tell()
            head = stream.read(2)
            if len(head) < 2 or head[0] != 0x05:
                stream.seek(pos)
                return obj
            prefix = head + stream.read(head[1])
            stream.seek(pos)
            candidates = self._by_prefix.get(prefix)
            if candidates is None or candidates[0][0] in obj:
                return obj  # not one of ours: the parent's subsection, or the end of the payload
            error: construct.ConstructError | None = None
            for name, c in candidates:
                try:
                    value = c._parsereport(stream, context, f"{path} -> {name}")
                    if len(self._by_name[name]) > 1:
                        value = VariantContainer(value)._set_variant(self._by_name[name].index(c))
                    obj[name] = value
                    break
                except construct.ConstructError as e:
                    error = error or e
                    stream.seek(pos)
            else:
                assert error is not None
                raise error

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        for key, c in self.fields:
            c._build(obj[key], stream, context, f"{path} -> {key}")
        if self.strict:
            for name, _prefix, c in self.subsections:
                c._build(obj[name], stream, context, f"{path} -> {name}")
            return obj
        for key in obj:
            if key in self._by_name and obj[key] is not None:
                index = self.variant_index(key, obj[key])
                self._by_name[key][index]._build(obj[key], stream, context, f"{path} -> {key}")
        return obj

    def variant_index(self, name: str, value: Any) -> int:
        """Which variant of subsection ``name`` encodes ``value`` (the first that can)."""
        variants = self._by_name[name]
        if len(variants) == 1:
            return 0
        remembered = value.variant if isinstance(value, VariantContainer) else None
        if remembered is not None and 0 <= remembered < len(variants):
            return remembered
        error: Exception | None = None
        for i, c in enumerate(variants):
            try:
                c.build(value)
                return i
            except (construct.ConstructError, KeyError, TypeError, ValueError) as e:
                error = error or e
        raise construct.ExplicitError(f"no variant of subsection {name} fits: {error}")


# ---------------------------------------------------------------------------------------------
# Schema tree


@record(frozen=True)
class FieldItem:
    """One field entry of a body and where its value lives in the decoded container.

    Attributes:
        entry: the vmdesc field object (read-only).
        key: key of the value in the body's container.
        slot: position in the key's list when several entries share the key (``index``
            entries, repeated names), else None.
        count: ``array_len`` (the value is a list of that many elements), else None.
        element: construct of one element (guarded).
        body: for ``struct``/``tmp``/``vstruct`` elements, the nested body node (for a
            schema-set ``qtailq``/``qlist``: the body of each list element), else None.
        codec: True when a registered field codec decodes this element.
    """

    entry: Mapping[str, Any]
    key: str
    slot: int | None
    count: int | None
    element: construct.Construct
    body: BodyNode | None
    codec: bool

    @property
    def type(self) -> str:
        return str(self.entry.get("type", "unknown"))

    def values(self, container: Mapping[str, Any]) -> list[Any]:
        """The element values of this entry in a decoded body ``container``."""
        value = container[self.key]
        if self.slot is not None:
            value = value[self.slot]
        if self.count is not None:
            return list(value)
        return [value]

    def element_bytes(self, value: Any) -> bytes:
        """The exact wire bytes of one element value (builds the element construct)."""
        return bytes(self.element.build(value))


@record(frozen=True)
class BodyNode:
    """A vmsd body (device entry, struct, subsection, inline tmp/vstruct) as built.

    Attributes:
        desc: the vmdesc body object (has ``vmsd_name``, ``version``, ``fields``...).
        items: field entries in wire order.
        subsections: ``(key, body)`` in wire order; the key is the subsection ``vmsd_name``
            (with ``optional_subsections`` an absent subsection has no key in the container).
        construct: the ``construct.Struct`` for the whole body.
    """

    desc: Mapping[str, Any]
    items: tuple[FieldItem, ...]
    subsections: tuple[tuple[str, BodyNode], ...]
    construct: construct.Construct = field(repr=False)

    @property
    def vmsd_name(self) -> str | None:
        name = self.desc.get("vmsd_name")
        return str(name) if name is not None else None

    def present_subsections(self, container: Mapping[str, Any]) -> list[tuple[str, BodyNode]]:
        """``(key, body)`` of the subsections present in a decoded ``container``, in its order.

        With a strict description that is every listed subsection; with optional subsections
        only those found, and for a name listed several times the variant that encodes the
        value.
        """
        nodes: dict[str, list[BodyNode]] = {}
        for key, node in self.subsections:
            nodes.setdefault(key, []).append(node)
        out = []
        for key in container:
            candidates = nodes.get(key)
            if not candidates or container[key] is None:
                continue
            index = 0
            if len(candidates) > 1:
                index = self.construct.variant_index(key, container[key])
            out.append((key, candidates[index]))
        return out


@record(frozen=True)
class VmsdSchema:
    """The schema of one device entry: decode a FULL section payload, encode it back.

    Attributes:
        entry: the vmdesc device entry (read-only).
        body: the root :class:`BodyNode`.
    """

    entry: Mapping[str, Any]
    body: BodyNode

    @property
    def construct(self) -> construct.Construct:
        return self.body.construct

    def _section(self) -> str | None:
        if "name" in self.entry:
            return f"{self.entry['name']} instance {self.entry.get('instance_id', 0)}"
        return self.body.vmsd_name

    def decode(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        offset: int = 0,
        section: str | None = None,
    ) -> Container:
        """Decode a payload into a ``Container`` (field name -> value).

        Args:
            payload: exactly the section payload (no header, no footer).
            offset: absolute offset of ``payload[0]`` in the stream (for error messages).
            section: section label for errors (default: ``"idstr instance N"`` of the entry).

        Returns:
            The decoded values (see the module docstring for the shape).

        Raises:
            SchemaError: the payload does not fit the description (short, long, wrong
                subsection header...), with the absolute offset and field path.
        """
        data = bytes(payload)
        stream = io.BytesIO(data)
        label = section or self._section()
        try:
            value = self.body.construct.parse_stream(stream)
        except construct.ConstructError as e:
            raise _schema_error(e, offset, label, "decode") from e
        end = stream.tell()
        if end != len(data):
            raise SchemaError(
                f"payload has {len(data) - end} bytes beyond its description",
                offset=offset + end,
                section=label,
                expected=end,
                found=len(data),
            )
        return value

    def encode(self, values: Mapping[str, Any], *, section: str | None = None) -> bytes:
        """Encode decoded (possibly edited) values back to payload bytes.

        Raises:
            SchemaError: a value does not fit its field (offset = position in the output).
        """
        stream = io.BytesIO()
        try:
            self.body.construct.build_stream(values, stream)
        except construct.ConstructError as e:
            raise _schema_error(e, 0, section or self._section(), "encode") from e
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(
                f"cannot encode: value does not fit the description ({e!r})",
                section=section or self._section(),
            ) from e
        return stream.getvalue()


def _schema_error(
    e: construct.ConstructError, base: int, section: str | None, what: str
) -> SchemaError:
    rel = getattr(e, "vmig_offset", None)
    fields = getattr(e, "vmig_fields", [])
    path = ".".join(str(f) for f in fields) or "?"
    detail = str(e).split("\n")[-1].strip()
    return SchemaError(
        f"cannot {what} field {path}: {detail}",
        offset=None if rel is None else base + rel,
        section=section,
    )


# ---------------------------------------------------------------------------------------------
# Building


class SchemaSet:
    """Builds and caches schemas for the bodies of ONE description object.

    Create one per parsed trailer (``SchemaSet(description)``); the cache is keyed by the
    identity of each body object inside that description and lives as long as this object.

    Args:
        description: the parsed vmdesc JSON (``{"page_size", "devices": [...]}``, a dict or a
            ``vmig.stream.vmdesc.JsonObject``), or None when only :meth:`build` is used with
            entries the caller keeps alive.
        registry: field codecs replacing opaque fields; default: the built-in registry;
            None: no codecs (every opaque field stays bytes).
        optional_subsections: treat listed subsections as "may be present" (found by peeking
            ``05 len name`` like QEMU's loader, in any order; absent ones get no key). For descriptions
            that list every possible subsection (bundled machine schema sets), not for a
            stream's own trailer, which lists exactly the subsections written.
        offset: where the description is in its stream (a trailer record), for messages.

    Raises:
        SchemaError: the description is not an object with a ``devices`` list, or a device
            entry is not an object or has a bad ``instance_id``.
    """

    _DEFAULT = object()

    def __init__(
        self,
        description: Mapping[str, Any] | None = None,
        registry: Registry | None | object = _DEFAULT,
        *,
        optional_subsections: bool = False,
        offset: int | None = None,
    ) -> None:
        self.description = description
        self.optional_subsections = optional_subsections
        self.registry: Registry | None = (
            default_registry() if registry is SchemaSet._DEFAULT else registry  # type: ignore[assignment]
        )
        self._cache: dict[int, tuple[Mapping[str, Any], Any]] = {}
        self._by_key: dict[tuple[str, int], Mapping[str, Any]] = {}
        if description is not None:
            try:
                self._index(description)
            except SchemaError as e:
                if offset is not None:
                    e.with_offset(offset)
                raise

    def _index(self, description: Mapping[str, Any]) -> None:
        if not hasattr(description, "get") or not isinstance(description.get("devices") or [], list):
            raise SchemaError("vmdesc: not an object with a 'devices' list")
        for dev in description.get("devices") or ():
            if not hasattr(dev, "get"):
                raise SchemaError("vmdesc: a device entry is not an object")
            instance = _natural(dev.get("instance_id", 0), f"device {dev.get('name')!r}: instance_id")
            self._by_key.setdefault((str(dev.get("name")), instance), dev)

    def device_entry(self, idstr: str, instance_id: int) -> Mapping[str, Any] | None:
        """The description's device entry for a section, or None."""
        return self._by_key.get((idstr, instance_id))

    def for_section(self, idstr: str, instance_id: int, *, offset: int | None = None) -> VmsdSchema | None:
        """The schema for section ``(idstr, instance_id)``, or None if not described.

        Raises:
            SchemaError: the entry cannot be built (naming the section, and ``offset``: where
                the section's payload is in its stream).
        """
        entry = self.device_entry(idstr, instance_id)
        if entry is None:
            return None
        try:
            return self.build(entry)
        except SchemaError as e:
            e.with_section(f"{idstr} instance {instance_id}")
            if offset is not None:
                e.with_offset(offset)
            raise

    def build(self, entry: Mapping[str, Any]) -> VmsdSchema:
        """The schema of a device entry (or any vmsd body), built once and cached.

        Raises:
            SchemaError: the entry is malformed (missing ``fields``, bad ``array_len``...).
        """
        hit = self._cache.get(id(entry))
        if hit is not None and hit[0] is entry and isinstance(hit[1], VmsdSchema):
            return hit[1]
        try:
            body = self._body(entry)
        except RecursionError as e:
            raise SchemaError("description nests vmsd bodies too deeply") from e
        schema = VmsdSchema(entry=entry, body=body)
        self._cache[id(entry)] = (entry, schema)
        return schema

    # -- internals ----------------------------------------------------------------------------

    def _body(self, desc: Mapping[str, Any]) -> BodyNode:
        hit = self._cache.get(id(desc))
        if hit is not None and hit[0] is desc:
            cached = hit[1]
            return cached.body if isinstance(cached, VmsdSchema) else cached
        node = self._make_body(desc)
        self._cache.setdefault(id(desc), (desc, node))
        return node

    def _make_body(self, desc: Mapping[str, Any]) -> BodyNode:
        fields = desc.get("fields")
        if not isinstance(fields, list):
            raise SchemaError(f"vmsd {desc.get('vmsd_name')!r}: description has no field list")
        vmsd_name = desc.get("vmsd_name")
        if vmsd_name is not None and not isinstance(vmsd_name, str):
            raise SchemaError(f"a vmsd_name is not a string: {vmsd_name!r}"[:200])
        if desc.get("version") is not None:  # shown by the renderers: a number, never an object
            _natural(desc.get("version"), f"vmsd {vmsd_name!r}: version")
        if not all(hasattr(f, "get") for f in fields):
            raise SchemaError(f"vmsd {vmsd_name!r}: a field entry is not an object")
        items: list[FieldItem] = []
        members: list[tuple[str, construct.Construct]] = []
        sub_members: list[tuple[str, bytes, construct.Construct]] = []
        used: dict[str, int] = {}
        for name, entries in _groups(fields):
            k = used.get(name, 0)
            used[name] = k + 1
            key = name if k == 0 else f"{name}#{k}"
            grouped = len(entries) > 1 or "index" in entries[0]
            subs = []
            for slot, entry in enumerate(entries):
                item = self._item(entry, key, slot if grouped else None, vmsd_name)
                items.append(item)
                if item.count is None:
                    subs.append(item.element)
                else:
                    subs.append(Array(item.count, item.element))
            members.append((key, Sequence(*subs) if grouped else subs[0]))
        subsections: list[tuple[str, BodyNode]] = []
        if not isinstance(desc.get("subsections") or [], list):
            raise SchemaError(f"vmsd {vmsd_name!r}: subsections is not a list: "
                              f"{desc.get('subsections')!r:.80}")
        for sub in desc.get("subsections") or ():
            if not hasattr(sub, "get"):
                raise SchemaError(f"vmsd {vmsd_name!r}: a subsection entry is not an object")
            sub_name = str(sub.get("vmsd_name", ""))
            raw_name = sub_name.encode()
            if len(raw_name) > 255:
                raise SchemaError(f"subsection name {sub_name!r} longer than 255 bytes")
            version = _natural(sub.get("version", 0), f"subsection {sub_name}: version")
            if version > 0xFFFFFFFF:
                raise SchemaError(f"subsection {sub_name}: version {version} exceeds be32")
            header = bytes([0x05, len(raw_name)]) + raw_name + version.to_bytes(4, "big")
            node = self._body(sub)
            subsections.append((sub_name, node))
            framed = FocusedSeq(
                "body", _Guard(Const(header), f"{sub_name}(header)"), "body" / node.construct
            )
            sub_members.append((sub_name, header[: 2 + len(raw_name)], framed))
        body = _Body(members, sub_members, strict=not self.optional_subsections)
        return BodyNode(
            desc=desc, items=tuple(items), subsections=tuple(subsections), construct=body
        )

    def _item(
        self, entry: Mapping[str, Any], key: str, slot: int | None, vmsd_name: Any
    ) -> FieldItem:
        count = entry.get("array_len")
        if count is not None:
            count = _natural(count, f"field {key}: array_len")
        element, body, codec = self._element(entry, key, vmsd_name)
        if count is not None and count > _MAX_EMPTY_ELEMENTS:
            min_bytes = body_length(body.desc, size_default=0) if body is not None else int(entry.get("size", 0))
            if min_bytes == 0:  # would loop without consuming input
                raise SchemaError(f"field {key}: array_len {count} of zero-byte elements")
        label = key if slot is None else f"{key}[{slot}]"
        return FieldItem(
            entry=entry,
            key=key,
            slot=slot,
            count=count,
            element=_Guard(element, label),
            body=body,
            codec=codec,
        )

    def _element(
        self, entry: Mapping[str, Any], key: str, vmsd_name: Any
    ) -> tuple[construct.Construct, BodyNode | None, bool]:
        type_name = str(entry.get("type", "unknown"))
        size = _natural(entry.get("size", 0), f"field {key}: size")
        if self.registry is not None:
            factory = self.registry.lookup(type_name, vmsd_name)
            if factory is not None:
                return _ExactCodec(factory(entry), size, key), None, True
        if type_name == "struct":
            struct_desc = entry.get("struct")
            if hasattr(struct_desc, "get") and "fields" in struct_desc:
                node = self._body(struct_desc)
                return node.construct, node, False
            if size == 1:  # NULL element of an array of struct pointers: "struct": {}
                return NullPtrMarker(), None, False
            return Bytes(size), None, False
        if type_name in _INLINE_BODY_TYPES:
            # trailer form: the body's keys are inline in the field object; schema-set form
            # (vmig.vmstate.machines): under "body"
            inline = entry if "fields" in entry else entry.get("body")
            if hasattr(inline, "get") and "fields" in inline:
                node = self._body(inline)
                return node.construct, node, False
        if type_name in _LIST_TYPES and hasattr(entry.get("body"), "get") and "size" not in entry:
            # schema-set form of a QTAILQ/QLIST: 01 + element body per element, then 00
            node = self._body(entry["body"])
            return _MarkedList(node.construct), node, False
        if type_name == "nullptr":
            return NullPtrMarker(), None, False
        if type_name in INT_TYPES:
            width, signed = INT_TYPES[type_name]
            if size == width:
                return _INT_CONSTRUCTS[(width, signed)], None, False
            if size == 1:  # 7.2 describes a NULL pointer element with the field's own type
                return NullPtrMarker(), None, False
            if size == 0:
                return Bytes(0), None, False
            return BytesInteger(size, signed=signed), None, False
        if type_name == "bool" and size == 1:
            return BoolByte(), None, False
        if type_name in _FLOAT_TYPES and size == 8:
            return Float64b, None, False
        if type_name == "bitmap" and size % 8 == 0:
            return Bitmap(size), None, False
        if type_name == "capability":
            return PascalString(Int8ub, "latin-1"), None, False
        return Bytes(size), None, False


_MAX_EMPTY_ELEMENTS = 1 << 16


def _natural(value: Any, what: str) -> int:
    """A non-negative int from the description (which is untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{what} is not a non-negative integer: {value!r:.80}")
    return value


def _groups(
    fields: Iterable[Mapping[str, Any]],
) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Consecutive entries with the same name form one group (index entries, repeated runs)."""
    out: list[tuple[str, list[Mapping[str, Any]]]] = []
    for f in fields:
        name = str(f.get("name", ""))
        if out and out[-1][0] == name:
            out[-1][1].append(f)
        else:
            out.append((name, [f]))
    return out


def build_schema(
    entry: Mapping[str, Any], *, schemas: SchemaSet | None = None
) -> VmsdSchema:
    """Build the schema of one vmdesc device entry.

    Args:
        entry: a device entry (``name``, ``instance_id``, ``vmsd_name``, ``fields``…) or any
            vmsd body; never mutated.
        schemas: the :class:`SchemaSet` of the description the entry belongs to (caches the
            result); None builds an uncached schema with the default registry.
    """
    return (schemas or SchemaSet()).build(entry)
