"""analyze-migration.py-compatible JSON (QEMU 7.2's and 10.0's ``scripts/analyze-migration.py``).

Reproduces what ``analyze-migration.py -f STREAM`` (``-d state``, the default) and ``-d desc``
print, for every stream that script can read, from vmig's decoder events and the vmstate
engine. The semantics mirrored (QEMU 7.2 script, classes ``VMSDField*``, ``RamSection``,
``MigrationDump``):

* top level: one key ``"<idstr> (<section_id>)"`` per START/FULL section, in order of first
  appearance; PART/END sections add to the section opened by their START;
* ``ram`` instance 0: ``{"section sizes": {block idstr: "0x%016x" used length}}`` from the
  MEM_SIZE records (later records overwrite a block's entry); page contents are not shown;
* device sections, walked with the vmdesc entry: integers as ``0x`` + zero-padded lower-case hex
  of ``size`` bytes; negative values of signed readers as ``"0x<unsigned hex> (<decimal>)"``;
  the signed readers are ``int8/16/32/64``, ``int32 equal``, ``int32 le``, ``int64 equal``,
  ``uint8 equal`` and ``uint16 equal`` (the script decodes the last three as signed);
  ``bool`` as true/false (first byte non-zero); ``struct`` recursively; every other type
  (``timer``, ``buffer``, ``tmp``, ``virtio``...) as space-separated hex bytes;
* ``array_len`` fields and ``index`` entries become lists under the field name; a repeated
  name without ``index`` keeps its first position and its last value;
* subsections: a key per subsection, named as in the stream (= its ``vmsd_name``), after the
  fields;
* ``-d desc``: the trailer JSON parsed into ordered dicts (duplicate keys: last value wins).

QEMU 10.0's script (``DIALECTS``: ``"10.0"``) differs in how a struct collects its fields: the
first field of a name is stored as a value, a second one of the same name turns it into the list
``[first, second]`` and later ones are appended — whether or not the entries carry ``index``.
So a one-element array prints as its element, an array of two or more (structs included) as a
list, and repeated names without ``index`` as a list too. ``nullptr`` entries print as
``"nullptr"``. Everything else (readers, RAM, ``-d desc``) is the same as 7.2's.

The text output is ``json.dumps(obj, indent=4, separators=(",", ": "))`` plus a newline, which
is what the script prints; tests compare it with the real script's output.

Differences on streams the script cannot read (it raises): this module still renders every
section it can (sections inside PACKAGED commands included), and raises ``SchemaError`` for a
non-RAM section without a description (the script fails there with a KeyError).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import construct

from vmig.errors import SchemaError
from vmig.vmstate.engine import _INT_CONSTRUCTS, BodyNode, FieldItem, SchemaSet

__all__ = [
    "DIALECTS",
    "SIGNED_READERS",
    "UNSIGNED_READERS",
    "render_body",
    "state_dict",
    "desc_dict",
    "dumps",
]

# analyze-migration.py 7.2 reader table: VMSDFieldInt (signed) and VMSDFieldUInt (unsigned).
SIGNED_READERS = frozenset(
    {
        "int8",
        "int16",
        "int32",
        "int32 equal",
        "int32 le",
        "int64",
        "int64 equal",
        "uint8 equal",
        "uint16 equal",
    }
)
UNSIGNED_READERS = frozenset({"uint8", "uint16", "uint32", "uint32 equal", "uint64"})
# analyze-migration.py versions whose output is reproduced ("7.2" is the default)
DIALECTS = ("7.2", "10.0")
# the engine's fixed-width big-endian integer constructs: (width, signed) by identity
_INT_ELEMENTS = {id(c): key for key, c in _INT_CONSTRUCTS.items()}


def _int_text(data: bytes, size: int, signed: bool) -> str:
    fmt = "0x%%0%dx" % (size * 2)
    sval = int.from_bytes(data, "big", signed=True)
    uval = int.from_bytes(data, "big", signed=False)
    if not signed or sval >= 0:
        return fmt % (uval if not signed else sval)
    return "%s (%d)" % (fmt % uval, sval)


def _int_layout(item: FieldItem) -> tuple[int, bool] | None:
    """(width, signed) when the item's element is a plain big-endian integer construct."""
    elem = getattr(item.element, "subcon", item.element)
    found = _INT_ELEMENTS.get(id(elem))
    if found is not None:
        return found
    if isinstance(elem, construct.BytesInteger) and isinstance(elem.length, int) and not elem.swapped:
        return elem.length, bool(elem.signed)
    return None


def _wire_bytes(item: FieldItem, value: Any) -> bytes:
    """The element's wire bytes; integers without a construct build (same bytes)."""
    if type(value) is int:
        layout = _int_layout(item)
        if layout is not None:
            width, signed = layout
            try:
                return value.to_bytes(width, "big", signed=signed)
            except OverflowError:
                pass  # let the construct report it
    return item.element_bytes(value)


def _element(item: FieldItem, value: Any, dialect: str) -> Any:
    if item.type == "struct" and item.body is not None:
        return render_body(item.body, value, dialect)
    data = value if isinstance(value, bytes) else _wire_bytes(item, value)
    t = item.type
    if t == "nullptr" and dialect != "7.2":
        return "nullptr"
    if t in SIGNED_READERS or t in UNSIGNED_READERS:
        return _int_text(data, int(item.entry.get("size", len(data))), t in SIGNED_READERS)
    if t == "bool":
        return data[0] != 0
    return " ".join("%02x" % c for c in data)


def render_body(body: BodyNode, container: Mapping[str, Any], dialect: str = "7.2") -> OrderedDict[str, Any]:
    """Render a decoded vmsd body the way analyze-migration.py's ``VMSDFieldStruct`` does.

    ``body`` must come from a :class:`SchemaSet` built without field codecs
    (``registry=None``), so opaque fields are the exact bytes. ``dialect``: one of
    :data:`DIALECTS` (the script version whose output is reproduced).
    """
    out: OrderedDict[str, Any] = OrderedDict()
    if dialect != "7.2":
        seen: dict[str, int] = {}
        for item in body.items:
            name = str(item.entry.get("name", ""))
            for v in item.values(container):
                rendered = _element(item, v, dialect)
                n = seen.get(name, 0)
                if n == 0:
                    out[name] = rendered
                elif n == 1:
                    out[name] = [out[name], rendered]
                else:
                    out[name].append(rendered)
                seen[name] = n + 1
        for key, node in body.subsections:
            out[key] = render_body(node, container[key], dialect)
        return out
    for item in body.items:
        name = str(item.entry.get("name", ""))
        rendered = [_element(item, v, dialect) for v in item.values(container)]
        if item.count is not None or "index" in item.entry:
            lst = out.get(name)
            if not isinstance(lst, list):
                lst = []
                out[name] = lst
            lst.extend(rendered)
        else:
            out[name] = rendered[0]
    for key, node in body.subsections:
        out[key] = render_body(node, container[key], dialect)
    return out


def _desc_root(description: Any) -> Any:
    raw = getattr(description, "raw", None)
    if raw is not None:  # a VmDescription: parse its text the way the script does
        return desc_dict(raw)
    return description


def state_dict(
    events: Iterable[Any],
    description: Any = None,
    *,
    fallback: Any = None,
    dialect: str = "7.2",
    memory: bool = False,
) -> OrderedDict[str, Any]:
    """The ``-d state`` document for a decoded stream.

    Args:
        events: decoder events (``vmig.stream.events``) of the whole stream.
        description: the description to decode device sections with (a
            ``vmig.stream.vmdesc.VmDescription`` or the parsed JSON); None: the stream's own
            trailer (its ``VmDescriptionEvent``).
        fallback: a second description consulted for sections the first does not describe
            (``--desc-from`` when the stream has its own trailer).
        dialect: the analyze-migration.py version reproduced (:data:`DIALECTS`).
        memory: add the script's ``-m`` view to ``ram``: ``"memory"``, one key
            ``"<block> (0x<addr as %016x>)"`` per page record (a later record of the same page
            replaces the value in place): ``"Filled with 0x<byte>"`` for a zero-page record, the
            page as space-separated hex bytes for a full page. (The scripts themselves fail on
            a full page under Python 3; this prints what they mean to.)

    Raises:
        SchemaError: a device section has no description or does not fit it.
    """
    from vmig.stream.constants import SectionType
    from vmig.stream.events import (
        DeviceState,
        RamRecords,
        SectionHeader,
        VmDescriptionEvent,
        flatten,
    )

    sections: OrderedDict[int, tuple[str, Any]] = OrderedDict()
    pending: list[tuple[int, str, int, int, bytes]] = []
    trailer_raw: bytes | None = None
    trailer_offset: int | None = None
    current = -1
    for ev in flatten(events):
        if isinstance(ev, SectionHeader):
            current = ev.section_id
            if ev.type in (SectionType.SECTION_START, SectionType.SECTION_FULL):
                if ev.idstr == "ram":
                    if ev.instance_id != 0:
                        # the script reads RAM only as section ("ram", 0); vmig's decoder reads
                        # every "ram" section as RAM, which the script's document cannot show
                        raise SchemaError(
                            "a 'ram' section with instance id other than 0; analyze-migration.py "
                            "reads RAM only from ('ram', 0); use --format vmig",
                            offset=ev.offset, section=f"ram instance {ev.instance_id}",
                            expected=0, found=ev.instance_id)
                    sections[ev.section_id] = ("ram", {"section sizes": OrderedDict()})
                else:
                    sections[ev.section_id] = (ev.idstr, None)
        elif isinstance(ev, RamRecords):
            sid = ev.section_id if ev.section_id >= 0 else current
            entry = sections.get(sid)
            mem = ev.batch.mem_size
            if entry is not None and entry[0] == "ram" and mem:
                sizes = entry[1]["section sizes"]
                for block in mem:
                    sizes[block.idstr] = "0x%016x" % block.used_length
            if entry is not None and entry[0] == "ram" and memory:
                _memory_view(entry[1].setdefault("memory", OrderedDict()), ev.batch)
        elif isinstance(ev, DeviceState):
            sid = ev.section_id if ev.section_id >= 0 else current
            pending.append((sid, ev.idstr, ev.instance_id, ev.offset, bytes(ev.payload)))
        elif isinstance(ev, VmDescriptionEvent):
            trailer_raw = bytes(ev.raw)
            trailer_offset = ev.offset

    primary = description
    if primary is None and trailer_raw is not None:
        primary = desc_dict(trailer_raw, offset=trailer_offset)
    own = trailer_offset if description is None else None  # primary is the stream's own trailer
    sets = [SchemaSet(_desc_root(d), registry=None, offset=own if d is primary else None)
            for d in (primary, fallback) if d is not None]
    for sid, idstr, instance_id, offset, payload in pending:
        schema = None
        label = f"{idstr} instance {instance_id}"
        for s in sets:
            schema = s.for_section(idstr, instance_id, offset=offset)
            if schema is not None:
                break
        if schema is None:
            raise SchemaError(
                "section not described by the vmdesc (analyze-migration.py cannot read it "
                "either); use --format vmig",
                offset=offset,
                section=label,
            )
        values = schema.decode(payload, offset=offset, section=label)
        sections[sid] = (idstr, render_body(schema.body, values, dialect))

    out: OrderedDict[str, Any] = OrderedDict()
    for sid, (idstr, value) in sections.items():
        if value is None:
            continue  # a START of a non-RAM iterative handler: the script cannot read it
        out["%s (%d)" % (idstr, sid)] = value
    return out


def _memory_view(out: OrderedDict[str, str], batch: Any) -> None:
    """Add a RAM batch's ZERO and PAGE records to the ``-m`` view (see :func:`state_dict`)."""
    from vmig.stream.constants import RamFlag

    types = batch.types()
    for i in range(len(batch)):
        t = int(types[i]) & ~int(RamFlag.EOS)
        if t not in (RamFlag.ZERO, RamFlag.PAGE):
            continue
        name = batch.blocks[int(batch.block[i])].idstr
        key = "%s (0x%016x)" % (name, int(batch.addr[i]))
        data = bytes(batch.data(i))
        out[key] = ("Filled with 0x%02x" % data[0]) if t == RamFlag.ZERO else " ".join("%02x" % c for c in data)


def desc_dict(raw: bytes | bytearray | memoryview, *, offset: int | None = None) -> OrderedDict[str, Any]:
    """The ``-d desc`` document: the trailer JSON as ordered dicts (last duplicate key wins).
    ``offset``: where the trailer record starts in its stream (for messages).

    Raises:
        SchemaError: the bytes are not valid UTF-8 JSON or not a JSON object.
    """
    from vmig.stream.vmdesc import parse_json

    try:
        value = parse_json(raw, object_pairs_hook=OrderedDict)
    except ValueError as e:  # UnicodeDecodeError included
        raise SchemaError(f"vmdesc is not valid JSON: {e}", offset=offset) from e
    if not isinstance(value, OrderedDict):
        raise SchemaError(f"vmdesc is not a JSON object but {type(value).__name__}", offset=offset)
    return value


def dumps(document: Any) -> str:
    """Text exactly as analyze-migration.py prints it (4-space indent, ``print`` newline)."""
    return json.dumps(document, indent=4, separators=(",", ": ")) + "\n"
