"""vmig's own JSON view of a migration stream (``vmig analyze --format vmig``).

Unlike analyze-migration.py (see :mod:`.qemu_json`), this view uses real JSON numbers, covers
every record the decoder understands (commands, device state inside a postcopy PACKAGED blob,
streams without a trailer decoded with a ``--desc-from`` description or, failing that, with
vmig's bundled schema set for the stream's machine type) and decodes opaque fields with the
registered field codecs (:mod:`.registry`) when there is one.

Document shape (keys in this order)::

    {
      "format": "vmig-analyze/1",
      "header": {"offset": 0, "magic": "0x5145564d", "version": 3},
      "configuration": null | {"offset", "length", "name": "pc-i440fx-7.2",
                               "target_page_bits": int|null, "capabilities": [str]|null,
                               "uuid": hex|null,
                               "subsections": [{"name", "version_id", "hex"}]},
      "description": {"source": "stream" | "desc-from" | "none", "page_size": int|null,
                      "devices": int},
      "sections": [                       one entry per section id, in order of first header
        {"section_id", "idstr", "instance_id", "version_id",
         "records": {"START": n, "PART": n, "END": n, "FULL": n},   header counts by type
         "offset": first header offset, "packaged": true if inside a PACKAGED command,
         "kind": "ram",
         "ram": {"blocks": [{"idstr", "used_length", ["page_size"], ["mr_addr"],
                             ["bitmap_offset", "pages_offset"] (mapped-ram files)}],
                 "records": {"mem_size", "zero", "page", "xbzrle", "compress_page", "hook",
                             "multifd_flush", "eos", "continue", "total"},   record counts
                 "bytes": total bytes of RAM records}}
        | {... "kind": "device", "payload_offset", "payload_length",
           "description": "stream" | "desc-from" | "builtin:<machine>" | null,  which one
                          decoded it (own trailer, --desc-from, vmig's bundled schema set),
           "vmsd_name": str|null, "version": vmsd version from the description,
           "state": <body> | null (nothing describes it: then "hex" holds the payload)}
      ],
      "commands": [{"offset", "length", "cmd": "PING", "args": {...}}],   top level and nested
      "eof_offset": int|null,
      "trailer": null | {"offset", "length"}
    }

``<body>`` = an object with one key per field (vmdesc name; ``index`` entries and consecutive
repeated names → a list; ``array_len`` → a list; a name that reappears after other fields →
key ``name#k``), then one key per subsection present (its ``vmsd_name``), each again a
``<body>``. Element values: integers (``timer``: -1 = not armed) and booleans as JSON
numbers/booleans, ``null`` for a NULL-pointer marker, ``CPU_Double_U`` as a number (or
``{"type", "size", "hex"}`` when not finite), ``struct``/``tmp``/``vstruct`` as ``<body>``,
``bitmap`` as ``{"type": "bitmap", "size": bytes, "bits": nbits, "set": count,
"ranges": [[start, end), ...] of set bits, "hex"}``, and
every opaque field (``buffer``, ``unused_buffer``, ``virtio``, ``pci config``…) as
``{"type": vmdesc type, "size": bytes, "hex": lower-case hex}`` unless a registered codec
decodes it, in which case its decoded value is given (``{"type", "size", "decoded": ...}``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from vmig.errors import SchemaError
from vmig.runs import true_runs
from vmig.stream.constants import RamFlag, SectionType
from vmig.vmstate.engine import BodyNode, FieldItem, SchemaSet, VmsdSchema
from vmig.vmstate.registry import Registry

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FORMAT", "analyze", "render_body", "jsonable", "builtin_schema"]

FORMAT = "vmig-analyze/1"

_RAM_KINDS: tuple[tuple[str, int], ...] = (
    ("mem_size", RamFlag.MEM_SIZE),
    ("zero", RamFlag.ZERO),
    ("page", RamFlag.PAGE),
    ("xbzrle", RamFlag.XBZRLE),
    ("compress_page", RamFlag.COMPRESS_PAGE),
    ("hook", RamFlag.HOOK),
    ("multifd_flush", RamFlag.MULTIFD_FLUSH),
    ("eos", RamFlag.EOS),
    ("continue", RamFlag.CONTINUE),
)


def jsonable(value: Any) -> Any:
    """Generic conversion of a decoded value (Containers, bytes, numpy, enums) to JSON data."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    np = sys.modules.get("numpy")  # no value is a numpy one unless something imported numpy
    if np is not None and isinstance(value, np.ndarray):
        if value.dtype.names:  # per-element records (e.g. virtqueue state): non-zero rows only
            flat = value.reshape(-1)
            raw = flat.view(np.uint8).reshape(len(flat), flat.dtype.itemsize)
            rows = []
            for i in np.flatnonzero(raw.any(axis=1)).tolist():
                row: dict[str, Any] = {"index": i}
                for name in flat.dtype.names:
                    row[name] = jsonable(flat[name][i])
                rows.append(row)
            return {"count": int(len(flat)), "nonzero": rows}
        if value.dtype == bool and value.ndim == 1:
            return _bool_summary(value)
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if hasattr(value, "name") and hasattr(value, "value") and isinstance(value.value, int):
        return str(value.name)  # enums
    return value


def _bool_summary(bits: np.ndarray) -> dict[str, Any]:
    """A bool array as counts plus the half-open ranges of set bits."""
    ranges = [[a, b] for a, b in true_runs(bits)]
    return {"bits": int(bits.size), "set": int(bits.sum()), "ranges": ranges}


def _element(item: FieldItem, value: Any) -> Any:
    t = item.type
    size = int(item.entry.get("size", 0))
    if item.codec:
        return {"type": t, "size": size, "decoded": jsonable(value)}
    if item.body is not None:
        if isinstance(value, list):  # qtailq/qlist elements
            return [render_body(item.body, v) for v in value]
        return render_body(item.body, value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"type": t, "size": size, "hex": item.element_bytes(value).hex()}
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        raw = item.element_bytes(value)
        return {"type": t, "size": len(raw), **_bool_summary(value), "hex": raw.hex()}
    if isinstance(value, (bytes, bytearray)):
        return {"type": t, "size": len(value), "hex": bytes(value).hex()}
    if isinstance(value, str):
        return value
    return jsonable(value)


def render_body(body: BodyNode, container: Mapping[str, Any]) -> dict[str, Any]:
    """Render a decoded vmsd body as vmig's ``<body>`` (see the module docstring)."""
    out: dict[str, Any] = {}
    for item in body.items:
        rendered = [_element(item, v) for v in item.values(container)]
        value: Any = rendered if item.count is not None else rendered[0]
        if item.slot is None:
            out[item.key] = value
        else:
            lst = out.setdefault(item.key, [])
            lst.append(value)
    for key, node in body.present_subsections(container):
        out[key] = render_body(node, container[key])
    return out


class _Builtin:
    """Bundled machine schema sets (:mod:`vmig.vmstate.machines`) as a last resort.

    A set lists, per idstr, description variants with every subsection the vmsd may send; the
    first variant that decodes the payload exactly is used (the decoder measured the section
    with the same rule). A variant made of a single opaque field (e.g. virtio-mem's
    ``virtio``) stands for the whole payload, so its size is taken from the payload.
    """

    def __init__(self, machine: str | None, registry: Any) -> None:
        from vmig.vmstate.machines import load_schema_set

        self.machine = machine
        self.set = load_schema_set(machine) if machine else None
        self.schemas = SchemaSet(registry=registry, optional_subsections=True)
        self._sized: dict[tuple[int, int], dict[str, Any]] = {}

    def _variant(self, variant: Any, size: int) -> Any:
        fields = variant.get("fields") or []
        if len(fields) != 1 or variant.get("subsections") or fields[0].get("type") in (
            "struct", "tmp", "vstruct") or "array_len" in fields[0]:
            return variant
        key = (id(variant), size)
        sized = self._sized.get(key)
        if sized is None:
            sized = dict(variant, fields=[dict(fields[0], size=size)])
            self._sized[key] = sized
        return sized

    def decode(self, idstr: str, payload: bytes, offset: int) -> tuple[VmsdSchema, Any] | None:
        if self.set is None:
            return None
        for variant in self.set.variants(idstr):
            try:
                schema = self.schemas.build(self._variant(variant, len(payload)))
                return schema, schema.decode(payload, offset=offset)
            except SchemaError:
                continue
        return None


def builtin_schema(machine: str | None, idstr: str, payload: bytes, offset: int) -> VmsdSchema | None:
    """The schema of the bundled ``machine`` schema set that decodes ``payload`` (a FULL section
    of ``idstr``) exactly, as ``analyze`` picks it for a stream without a description; None when
    vmig ships no set for the machine or no variant fits."""
    found = _Builtin(machine, SchemaSet._DEFAULT).decode(idstr, payload, offset)
    return found[0] if found is not None else None


class _RamSummary:
    """Counts RAM records batch by batch (batches are not kept: a RAM section may be GBs)."""

    def __init__(self) -> None:
        self.counts = {name: 0 for name, _ in _RAM_KINDS}
        self.total = 0
        self.nbytes = 0
        self.blocks: list[dict[str, Any]] = []

    def add(self, batch: Any) -> None:
        kinds = batch.flag_counts()
        self.total += len(batch)
        self.nbytes += int(batch.nbytes)
        for name, bit in _RAM_KINDS:
            self.counts[name] += sum(n for fl, n in kinds.items() if fl & bit)
        if batch.mem_size:
            self.blocks = []
            for b in batch.mem_size:
                d: dict[str, Any] = {"idstr": b.idstr, "used_length": int(b.used_length)}
                if getattr(b, "page_size", None) is not None:
                    d["page_size"] = int(b.page_size)
                if getattr(b, "mr_addr", None) is not None:
                    d["mr_addr"] = int(b.mr_addr)
                if getattr(b, "pages_offset", None) is not None:  # mapped-ram file layout
                    d["bitmap_offset"] = int(b.bitmap_offset)
                    d["pages_offset"] = int(b.pages_offset)
                self.blocks.append(d)

    def to_json(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "records": {**self.counts, "total": self.total},
                "bytes": self.nbytes}


def _root(description: Any) -> Any:
    """The parsed JSON of a ``VmDescription`` (its ``root``), or the parsed JSON itself."""
    return getattr(description, "root", description)


def analyze(
    events: Iterable[Any],
    *,
    desc_from: Any = None,
    registry: Registry | None | object = SchemaSet._DEFAULT,
) -> dict[str, Any]:
    """Build vmig's JSON document for a decoded stream.

    Args:
        events: the decoder's events for the whole stream (``vmig.stream.events``).
        desc_from: a ``VmDescription`` (or parsed JSON) from another capture, used for
            sections the stream's own trailer does not describe (or when it has none).
        registry: field codecs for opaque fields (default: built-in; None: none).

    Returns:
        The document (plain dicts/lists/numbers/strings; see the module docstring).

    Raises:
        SchemaError: a described device section does not fit its description.
    """
    from vmig.stream.events import (
        Command,
        Configuration,
        DeviceState,
        EndOfStream,
        FileHeader,
        RamRecords,
        SectionHeader,
        VmDescriptionEvent,
    )
    from vmig.stream.vmdesc import VmDescription

    doc: dict[str, Any] = {
        "format": FORMAT,
        "header": None,
        "configuration": None,
        "description": None,
        "sections": [],
        "commands": [],
        "eof_offset": None,
        "trailer": None,
    }
    sections: dict[int, dict[str, Any]] = {}
    ram: dict[int, _RamSummary] = {}
    pending: list[tuple[dict[str, Any], str, int, int, bytes]] = []
    own: VmDescription | None = None
    machine: str | None = None

    def walk(evs: Iterable[Any], packaged: bool) -> None:
        nonlocal own, machine
        current = -1
        for ev in evs:
            if isinstance(ev, FileHeader):
                doc["header"] = {
                    "offset": ev.offset, "magic": "0x%08x" % ev.magic, "version": ev.version
                }
            elif isinstance(ev, Configuration):
                machine = ev.name
                doc["configuration"] = {
                    "offset": ev.offset,
                    "length": ev.length,
                    "name": ev.name,
                    "target_page_bits": ev.target_page_bits,
                    "capabilities": list(ev.capabilities) if ev.capabilities is not None else None,
                    "uuid": ev.uuid.hex() if ev.uuid is not None else None,
                    "subsections": [
                        {"name": s.name, "version_id": s.version_id, "hex": bytes(s.payload).hex()}
                        for s in ev.subsections
                    ],
                }
            elif isinstance(ev, SectionHeader):
                current = ev.section_id
                entry = sections.get(ev.section_id)
                opening = ev.type in (SectionType.SECTION_START, SectionType.SECTION_FULL)
                if entry is None or opening:
                    entry = {
                        "section_id": ev.section_id,
                        "idstr": ev.idstr,
                        "instance_id": ev.instance_id,
                        "version_id": ev.version_id,
                        "records": {},
                        "offset": ev.offset,
                        "packaged": packaged,
                    }
                    sections[ev.section_id] = entry
                    doc["sections"].append(entry)
                kind = ev.type.name.split("_")[-1]
                entry["records"][kind] = entry["records"].get(kind, 0) + 1
            elif isinstance(ev, RamRecords):
                sid = ev.section_id if ev.section_id >= 0 else current
                entry = sections[sid]
                entry["kind"] = "ram"
                summary = ram.get(id(entry))
                if summary is None:
                    summary = ram[id(entry)] = _RamSummary()
                summary.add(ev.batch)
            elif isinstance(ev, DeviceState):
                sid = ev.section_id if ev.section_id >= 0 else current
                entry = sections[sid]
                entry["kind"] = "device"
                entry["payload_offset"] = ev.offset
                entry["payload_length"] = ev.length
                pending.append((entry, ev.idstr, ev.instance_id, ev.offset, bytes(ev.payload)))
            elif isinstance(ev, Command):
                doc["commands"].append(
                    {
                        "offset": ev.offset,
                        "length": ev.length,
                        "cmd": ev.cmd.name,
                        "args": jsonable(ev.args),
                    }
                )
                if ev.children:
                    walk(ev.children, True)
            elif isinstance(ev, EndOfStream):
                if not packaged:
                    doc["eof_offset"] = ev.offset
            elif isinstance(ev, VmDescriptionEvent):
                doc["trailer"] = {"offset": ev.offset, "length": ev.length}
                own = ev.description or VmDescription(ev.raw, source="stream trailer", offset=ev.offset)

    walk(events, False)

    for entry in doc["sections"]:
        summary = ram.get(id(entry))
        if summary is not None:
            entry["ram"] = summary.to_json()

    roots = [_root(d) for d in (own, desc_from) if d is not None]
    trailer_offset = doc["trailer"]["offset"] if own is not None and doc["trailer"] is not None else None
    sets = [SchemaSet(root, registry=registry, offset=trailer_offset if i == 0 else None)
            for i, root in enumerate(roots)]
    first = roots[0] if roots else None
    page_size = first.get("page_size") if first is not None else None
    doc["description"] = {
        "source": "stream" if own is not None else ("desc-from" if desc_from is not None else "none"),
        # as VmDescription.page_size reads it: a number, else unknown
        "page_size": page_size if isinstance(page_size, int) and not isinstance(page_size, bool) else None,
        "devices": len(first.get("devices") or ()) if first is not None else 0,
    }
    sources = ["stream" if own is not None else "desc-from", "desc-from"]
    builtin: _Builtin | None = None
    for entry, idstr, instance_id, offset, payload in pending:
        schema: VmsdSchema | None = None
        source: str | None = None
        label = f"{idstr} instance {instance_id}"
        for s, src in zip(sets, sources):
            schema = s.for_section(idstr, instance_id, offset=offset)
            if schema is not None:
                source = src
                break
        if schema is not None:
            values = schema.decode(payload, offset=offset, section=label)
        else:
            if builtin is None:
                builtin = _Builtin(machine, registry)
            found = builtin.decode(idstr, payload, offset)
            if found is None:
                entry.update(description=None, vmsd_name=None, version=None, state=None,
                             hex=payload.hex())
                continue
            schema, values = found
            source = f"builtin:{machine}"
        entry.update(
            description=source,
            vmsd_name=schema.entry.get("vmsd_name"),
            version=schema.entry.get("version"),
            state=render_body(schema.body, values),
        )
    return doc
