"""Bundled schema sets: how to walk every FULL section of a machine type without a vmdesc trailer.

Postcopy streams and ``suppress-vmdesc=on`` machines carry no JSON description, yet every FULL
section before virtio-mem's must be walked to reach it. A *schema set* (``<machine>.json`` next to
this file, generated from real QEMU by ``scripts/gen_machine_schemas.py``) holds, per section
idstr, the vmdesc-style descriptions seen in captures of that machine type ("variants", merged
so that every level lists the union of the subsections seen there, plus those ``-dump-vmstate``
says the vmsd may add). The set is chosen from the CONFIGURATION record's machine name.

Walking mirrors QEMU's loader (migration/vmstate.c, ``vmstate_load_state`` and
``vmstate_subsection_load``): fields are consumed in order — leaf fields by their recorded size,
structs and ``tmp``/``vstruct`` bodies recursively, ``qtailq``/``qlist`` element by element — and
subsections are found by peeking (0x05, length, a name starting with the parent vmsd's name). The
virtio-mem sections are walked by the built-in schemas of :mod:`..virtio_mem`.

Theory of operation:
  1. A walk explores every alternative (variants per idstr; subsections seen with different
     layouts) and yields candidate ends; a candidate is accepted only if a section end follows
     it (with footers: a footer naming this section's id).
  2. Candidates are tried in the file's order (first capture first).
  3. The sets are the last resort of :class:`MachineLayoutResolver`: the stream's own trailer and
     ``--desc-from`` win; the set answers only at end of input when the tail holds no trailer.
  4. Nothing matches → the decoder's :class:`~vmig.errors.SchemaError` names the section and says
     to use ``--desc-from``; ``MachineLayoutResolver.failures`` says why the set did not fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmig.errors import SchemaError
from vmig.stream.layout import LayoutResolver, fits_section_end

SCHEMA_FORMAT = 1
_HERE = Path(__file__).resolve().parent
_INLINE_TYPES = ("tmp", "vstruct", "qtailq", "qlist", "gtree")
VIRTIO_MEM_VMSD = "virtio-mem"
VIRTIO_MEM_EARLY_SUFFIX = "/virtio-mem-device-early"


class NeedMoreData(Exception):
    """The walk ran past the end of the bytes given (the caller should retry with more)."""


def schema_path(machine: str) -> Path:
    """Where the bundled set of ``machine`` lives (``machines/<machine>.json``)."""
    return _HERE / f"{machine}.json"


def available_machines() -> list[str]:
    """Machine types with a bundled schema set."""
    return sorted(p.name[: -len(".json")] for p in _HERE.glob("*.json"))


# --- building sets (used by the generator script and tests) --------------------------------


def _first_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: keep the first of duplicated keys (vmdesc repeats inline bodies)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k not in out:
            out[k] = v
    return out


def find_trailer(data: bytes | memoryview) -> tuple[int, int] | None:
    """Locate the vmdesc trailer: ``(offset of 0x06, JSON length)`` or None.

    Accepts only ``06 + be32 L`` with ``offset + 5 + L == len(data)`` right after an EOF byte.
    """
    n = len(data)
    buf = bytes(data[max(0, n - (64 << 20)) :])
    base = n - len(buf)
    pos = len(buf)
    while True:
        pos = buf.rfind(b"\x00\x06", 0, pos)
        if pos < 0:
            return None
        at = pos + 1
        if at + 5 <= len(buf):
            length = int.from_bytes(buf[at + 1 : at + 5], "big")
            if base + at + 5 + length == n and buf[at + 5 : at + 6] == b"{":
                return base + at, length
        pos += 1  # next search: matches starting before this one


def loads_vmdesc(data: bytes | memoryview) -> dict[str, Any] | None:
    """Parse a stream's vmdesc trailer (duplicate keys: first kept), or None if it has none."""
    loc = find_trailer(data)
    if loc is None:
        return None
    at, length = loc
    return json.loads(bytes(data[at + 5 : at + 5 + length]), object_pairs_hook=_first_pairs)


def normalize_body(body: dict[str, Any]) -> dict[str, Any]:
    """A vmsd body in the set's form: vmsd_name, version, fields (normalized), subsections."""
    out: dict[str, Any] = {
        "vmsd_name": body.get("vmsd_name"),
        "version": body.get("version"),
        "fields": [normalize_field(f) for f in body.get("fields", [])],
    }
    subs = [normalize_body(s) for s in body.get("subsections", [])]
    if subs:
        out["subsections"] = subs
    return out


def normalize_field(f: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.get("name"), "type": f.get("type")}
    for k in ("array_len", "index"):
        if k in f:
            out[k] = f[k]
    if "struct" in f:
        out["struct"] = normalize_body(f["struct"])
    elif f.get("type") in _INLINE_TYPES and "fields" in f:
        out["body"] = normalize_body(f)
    else:
        out["size"] = f.get("size")
    return out


def _shape(body: dict[str, Any]) -> str:
    def strip(b: dict[str, Any]) -> dict[str, Any]:
        return {
            "vmsd_name": b["vmsd_name"],
            "version": b["version"],
            "fields": [
                {k: (strip(v) if k in ("struct", "body") else v) for k, v in f.items()} for f in b["fields"]
            ],
        }

    return json.dumps(strip(body), sort_keys=True)


def _merge_subsections(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Union the subsections of ``new`` into ``into`` (same shape), recursively, keeping order."""
    for f_into, f_new in zip(into["fields"], new["fields"]):
        for k in ("struct", "body"):
            if k in f_into and k in f_new:
                _merge_subsections(f_into[k], f_new[k])
    have = {s["vmsd_name"]: s for s in into.get("subsections", [])}
    for sub in new.get("subsections", []):
        if sub["vmsd_name"] in have:
            same = [s for s in into["subsections"]
                    if s["vmsd_name"] == sub["vmsd_name"] and _shape(s) == _shape(sub)]
            if same:
                _merge_subsections(same[0], sub)
            else:
                into["subsections"].append(sub)  # an alternative layout of the same subsection
        else:
            into.setdefault("subsections", []).append(sub)
            have[sub["vmsd_name"]] = sub


def merge_description(sections: dict[str, list[dict[str, Any]]], device: dict[str, Any]) -> None:
    """Merge one vmdesc ``devices`` entry into ``sections`` (idstr -> variants)."""
    body = normalize_body(device)
    variants = sections.setdefault(device["name"], [])
    shape = _shape(body)
    for v in variants:
        if _shape(v) == shape:
            _merge_subsections(v, body)
            return
    variants.append(body)


def _dump_body_to_set(desc: dict[str, Any]) -> dict[str, Any] | None:
    """A ``-dump-vmstate`` description as a set body, if every field has a usable C size."""
    fields = []
    for f in desc.get("Fields", []):
        if f.get("field_exists"):
            return None
        if "Description" in f:
            inner = _dump_body_to_set(f["Description"])
            if inner is None:
                return None
            fields.append({"name": f["field"], "type": "struct", "struct": inner})
        elif f.get("size", 0) > 0:
            fields.append({"name": f["field"], "type": "dump", "size": f["size"]})
        else:
            return None
    out: dict[str, Any] = {"vmsd_name": desc["name"], "version": desc["version_id"], "fields": fields,
                           "source": "dump-vmstate"}
    subs = [b for b in (_dump_body_to_set(s) for s in desc.get("Subsections", [])) if b is not None]
    if subs:
        out["subsections"] = subs
    return out


def add_dump_subsections(sections: dict[str, list[dict[str, Any]]], dump: dict[str, Any]) -> list[str]:
    """Cross-check captured vmsds against ``-dump-vmstate`` and add the subsections it lists.

    Every body is visited (top level, struct fields, subsections). Descriptions are matched by
    vmsd name; where several vmsds share a name (e.g. two named "serial") the one whose field
    names cover the captured fields is used. Returns notes (mismatches, additions).
    """
    by_vmsd: dict[str, list[dict[str, Any]]] = {}

    def index(desc: dict[str, Any]) -> None:
        by_vmsd.setdefault(desc["name"], [])
        if desc not in by_vmsd[desc["name"]]:
            by_vmsd[desc["name"]].append(desc)
        for f in desc.get("Fields", []):
            if "Description" in f:
                index(f["Description"])
        for sub in desc.get("Subsections", []):
            index(sub)

    for entry in dump.values():
        if isinstance(entry, dict) and "Description" in entry:
            index(entry["Description"])
    notes: list[str] = []

    def pick(body: dict[str, Any]) -> dict[str, Any] | None:
        captured = [f["name"].split("[")[0] for f in body["fields"]]
        for desc in by_vmsd.get(body["vmsd_name"], []):
            dumped = {f["field"] for f in desc.get("Fields", [])}
            if all(n in dumped for n in captured):
                return desc
        return None

    def visit(body: dict[str, Any], where: str) -> None:
        if body.get("source") == "dump-vmstate":
            return
        for f in body["fields"]:
            for k in ("struct", "body"):
                if k in f:
                    visit(f[k], f"{where}.{f['name']}")
        for sub in list(body.get("subsections", [])):
            visit(sub, f"{where}/{sub['vmsd_name']}")
        if body["vmsd_name"] not in by_vmsd:
            return
        desc = pick(body)
        if desc is None:
            notes.append(f"{where} ({body['vmsd_name']}): captured fields not all in -dump-vmstate")
            return
        have = {s["vmsd_name"] for s in body.get("subsections", [])}
        for sub in desc.get("Subsections", []):
            if sub["name"] in have:
                continue
            conv = _dump_body_to_set(sub)
            if conv is None:
                notes.append(f"{where}: subsection {sub['name']} not representable from the dump")
                continue
            body.setdefault("subsections", []).append(conv)
            notes.append(f"{where}: added subsection {sub['name']} from -dump-vmstate")

    for idstr, variants in sections.items():
        for v in variants:
            visit(v, idstr)
    return notes


# --- walking --------------------------------------------------------------------------------


class _Walk:
    """One walk over a payload: candidate end positions, exploring every alternative.

    Alternatives come from descriptions that differ between captures (e.g. a subsection holding a
    per-CPU array seen with 1 and 2 elements): each is kept in the set and tried in order.
    Results are ordered lists of distinct end positions (most likely first).
    """

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = buf
        self.need_more = False
        self.reasons: list[str] = []

    def _fail(self, why: str) -> list[int]:
        if len(self.reasons) < 8:
            self.reasons.append(why)
        return []

    def body(self, body: dict[str, Any], pos: int) -> list[int]:
        cur = [pos]
        for f in body["fields"]:
            nxt: list[int] = []
            for p in cur:
                nxt.extend(self.field(f, p))
            cur = _dedupe(nxt)
            if not cur:
                return []
        out: list[int] = []
        for p in cur:
            out.extend(self.subsections(body, p))
        return _dedupe(out)

    def field(self, f: dict[str, Any], pos: int) -> list[int]:
        count = int(f.get("array_len", 1))
        if "struct" in f and f["struct"].get("vmsd_name") in PER_CPU_STRUCTS:
            elem = _fixed_size(f["struct"])
            if elem is not None:
                return self._per_cpu(count, elem, pos)
        if "struct" in f:
            cur = [pos]
            for _ in range(count):
                cur = _dedupe([e for p in cur for e in self.body(f["struct"], p)])
                if not cur:
                    return []
            return cur
        if "body" in f:
            kind = f["type"]
            if kind in ("tmp", "vstruct"):
                return self.body(f["body"], pos)
            if kind in ("qtailq", "qlist"):
                return self._list(f, pos)
            return self._fail(f"field {f['name']} of type {kind} cannot be walked")
        size = f.get("size")
        if f.get("type") == "virtio" or size is None:
            return self._fail(f"opaque field {f['name']} ({f.get('type')})")
        end = pos + int(size) * count
        if end > len(self.buf):
            self.need_more = True
            return []
        return [end]

    def _per_cpu(self, seen: int, elem: int, pos: int) -> list[int]:
        """A per-possible-CPU array: the captures the set came from had ``seen`` CPUs, the
        stream may have any number; every count is a candidate (the one seen first)."""
        out = []
        for n in [seen] + [c for c in range(1, MAX_POSSIBLE_CPUS + 1) if c != seen]:
            end = pos + n * elem
            if end > len(self.buf):
                self.need_more = True
                break
            out.append(end)
        return out

    def _list(self, f: dict[str, Any], pos: int) -> list[int]:
        out: list[int] = []
        todo = [pos]
        seen: set[int] = set()
        while todo:
            p = todo.pop(0)
            if p in seen:
                continue
            seen.add(p)
            if p >= len(self.buf):
                self.need_more = True
                continue
            marker = self.buf[p]
            if marker == 0:
                out.append(p + 1)
            elif marker == 1:
                todo.extend(self.body(f["body"], p + 1))
            else:
                self._fail(f"{f['type']} {f['name']}: element marker {marker:#x}")
        return _dedupe(out)

    def subsections(self, body: dict[str, Any], pos: int) -> list[int]:
        buf = self.buf
        if pos >= len(buf):
            # the payload may end here (the caller checks what follows) or go on
            self.need_more = True
            return [pos]
        if buf[pos] != 0x05:
            return [pos]
        if pos + 2 > len(buf):
            self.need_more = True
            return [pos]
        parent = str(body["vmsd_name"]).encode("latin-1")
        length = buf[pos + 1]
        if length < len(parent) + 1:
            return [pos]
        if pos + 2 + length > len(buf):
            self.need_more = True
            return [pos]
        name = bytes(buf[pos + 2 : pos + 2 + length])
        if not name.startswith(parent):
            return [pos]
        text = name.decode("latin-1")
        alts = [s for s in body.get("subsections", []) if s["vmsd_name"] == text]
        if not alts:
            return self._fail(f"subsection {text!r} not in the schema set")
        start = pos + 2 + length + 4
        if start > len(buf):
            self.need_more = True
            return []
        out: list[int] = []
        for alt in alts:
            for e in self.body(alt, start):
                out.extend(self.subsections(body, e))
        return _dedupe(out)


#: Element structs of arrays with one entry per *possible* CPU (``-smp ...,maxcpus=``): ACPI CPU
#: hotplug's device states (``piix4_pm/cpuhp``, ``ich9_pm/cpuhp``, present once a guest turned on
#: modern CPU hotplug). The sets were generated with 1, 2 and 4 CPUs; any count is walked.
PER_CPU_STRUCTS = frozenset({"CPU hotplug device state"})
MAX_POSSIBLE_CPUS = 1024  # above q35's 288 and pc's 255 in QEMU 7.2


def _fixed_size(body: dict[str, Any]) -> int | None:
    """Bytes of a body made only of fixed-size leaf fields without subsections, else None."""
    if body.get("subsections"):
        return None
    total = 0
    for f in body["fields"]:
        if "struct" in f or "body" in f or f.get("size") is None or f.get("type") == "virtio":
            return None
        total += int(f["size"]) * int(f.get("array_len", 1))
    return total


def _dedupe(xs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def walk_ends(body: dict[str, Any], buf: bytes | memoryview, pos: int = 0) -> tuple[list[int], bool, list[str]]:
    """Candidate end positions of ``body`` walked from ``pos``.

    Returns:
        (ends in preference order, whether some path ran out of bytes, reasons paths failed).
    """
    w = _Walk(buf)
    ends = w.body(body, pos)
    return ends, w.need_more, w.reasons


@dataclass
class SchemaSet:
    """The bundled descriptions of one machine type.

    Attributes:
        machine: machine type name (``pc-i440fx-7.2``).
        sections: idstr -> list of variant bodies.
        meta: the generator's metadata (captures, QEMU version, notes).
    """

    machine: str
    sections: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)

    def variants(self, idstr: str) -> list[dict[str, Any]]:
        """Variants for ``idstr``; for PCI devices (``<path>/<name>``) at another address, the
        variants of any idstr with the same ``/<name>`` suffix."""
        if idstr in self.sections:
            return self.sections[idstr]
        if "/" in idstr:
            suffix = idstr[idstr.rindex("/") :]
            out: list[dict[str, Any]] = []
            for key, vs in self.sections.items():
                if key.endswith(suffix):
                    out.extend(vs)
            return out
        return []

    def measure(
        self,
        idstr: str,
        version_id: int,
        buf: bytes | memoryview,
        *,
        check: Callable[[int], bool] | None = None,
        offset: int | None = None,
    ) -> int:
        """Payload length of a FULL section ``idstr`` whose payload starts at ``buf[0]``.

        Args:
            idstr, version_id: from the section header.
            buf: the bytes from the payload start (more than the payload is fine).
            check: optional acceptor of a candidate end (e.g. footer present).
            offset: absolute offset of ``buf[0]`` (for messages).

        Raises:
            NeedMoreData: ``buf`` ends before any variant could finish.
            SchemaError: no variant walks this payload.
        """
        return measure_section(self, idstr, version_id, buf, check=check, offset=offset)


def measure_builtin(idstr: str, buf: bytes | memoryview) -> int | None:
    """Length of a virtio-mem section payload from the built-in schemas, or None if not one."""
    from vmig.vmstate import virtio_mem

    if idstr.endswith(VIRTIO_MEM_EARLY_SUFFIX):
        if len(buf) < 36:  # the fixed part (tmp + size) says how long the bitmap is
            raise NeedMoreData("early virtio-mem payload: fixed part not here yet")
        length = virtio_mem.early_payload_length(buf)
        if length > len(buf):
            raise NeedMoreData(f"early virtio-mem payload of {length} bytes, {len(buf)} here")
        return length
    if idstr.endswith(virtio_mem.IDSTR_SUFFIX):
        return virtio_mem.measure_virtio_mem(buf)
    return None


def measure_section(
    schema_set: SchemaSet | None,
    idstr: str,
    version_id: int,
    buf: bytes | memoryview,
    *,
    check: Callable[[int], bool] | None = None,
    offset: int | None = None,
) -> int:
    """Measure a FULL section payload with the built-in schemas, then ``schema_set``.

    Raises:
        NeedMoreData: more bytes are needed to decide.
        SchemaError: nothing covers the section (message says how to supply a description).
    """
    builtin = measure_builtin(idstr, buf)
    if builtin is not None:
        return builtin
    variants = schema_set.variants(idstr) if schema_set is not None else []
    reasons: list[str] = []
    need_more = False
    for v in variants:
        # version None: a handler without a vmsd (QEMU's old-style save_state, e.g. slirp),
        # whose description is one opaque buffer; any section version
        if v.get("version") not in (version_id, None):
            reasons.append(f"variant version {v.get('version')} != {version_id}")
            continue
        ends, more, why = walk_ends(v, buf, 0)
        need_more = need_more or more
        reasons.extend(why)
        for end in ends:
            if end > len(buf):
                continue
            if check is None or check(end):
                return end
        if ends:
            reasons.append(f"walk ended at +{', +'.join(map(str, ends[:4]))} where no section end follows")
    if need_more:
        raise NeedMoreData(len(buf))
    where = f"the bundled schema set for {schema_set.machine}" if schema_set else "no bundled schema set"
    detail = f" ({'; '.join(reasons[:3])})" if reasons else ""
    raise SchemaError(
        f"no description covers FULL section {idstr!r} version {version_id} ({where}{detail}); "
        "give a description with --desc-from FILE (a capture of the same VM configuration with a "
        "vmdesc trailer, or its JSON)",
        offset=offset,
        section=idstr,
    )


def _load(machine: str) -> SchemaSet | None:
    path = schema_path(machine)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("format") != SCHEMA_FORMAT:
        raise SchemaError(f"schema set {path.name} has format {doc.get('format')}, expected {SCHEMA_FORMAT}")
    meta = {k: v for k, v in doc.items() if k != "sections"}
    return SchemaSet(machine=machine, sections=doc["sections"], meta=meta)


def load_schema_set(machine: str | None) -> SchemaSet | None:
    """The bundled schema set for a machine type name, or None if vmig ships none for it.

    ``pc``/``q35`` aliases are not resolved: the CONFIGURATION record always carries the full
    versioned name.
    Reads the file on every call: callers (the layout resolver) keep the result.
    """
    if not machine:
        return None
    return _load(machine)


class MachineLayoutResolver(LayoutResolver):
    """A :class:`~vmig.stream.layout.LayoutResolver` that falls back to the bundled schema set
    of the stream's machine type for FULL sections nothing else describes.

    Order: the stream's own trailer and ``--desc-from`` descriptions, the registered built-in
    layouts (virtio-mem), then the schema set chosen from the CONFIGURATION record's machine
    name (``machine`` callable, e.g. ``lambda: decoder.configuration.name``, or a fixed name).

    Args:
        descriptions, builtins: as for LayoutResolver.
        machine: machine type name, or a callable returning it (None until known).
    """

    def __init__(self, descriptions: Iterable[Any] = (), builtins: bool = True,
                 machine: str | Callable[[], str | None] | None = None) -> None:
        super().__init__(descriptions, builtins)
        self._machine = machine
        self._sets: dict[str, SchemaSet | None] = {}
        #: why the schema set could not walk a section (for a caller's error message)
        self.failures: list[str] = []
        self._trailer_checked: bool | None = None

    def bind(self, decoder: Any) -> MachineLayoutResolver:
        """Take the machine name from ``decoder.configuration`` when it has been read."""
        self._machine = lambda: decoder.configuration.name if decoder.configuration else None
        return self

    def _tail_has_trailer(self, view: memoryview) -> bool:
        if self._trailer_checked is None:
            from vmig.stream.vmdesc import find_trailer as _find

            self._trailer_checked = _find(view) is not None
        return self._trailer_checked

    @property
    def machine(self) -> str | None:
        m = self._machine
        return m() if callable(m) else m

    def schema_set(self) -> SchemaSet | None:
        name = self.machine
        if name is None:
            return None
        if name not in self._sets:
            self._sets[name] = load_schema_set(name)
        return self._sets[name]

    def has_layout(self, idstr: str, instance_id: int, full: bool) -> bool:
        if super().has_layout(idstr, instance_id, full):
            return True
        ss = self.schema_set()
        return bool(full and ss is not None and ss.variants(idstr))

    def measure(self, view: memoryview, *, idstr: str, instance_id: int, version_id: int,
                section_id: int, full: bool, at_eof: bool, offset: int = 0,
                footers: bool | None = None) -> int | None:
        n = super().measure(view, idstr=idstr, instance_id=instance_id, version_id=version_id,
                            section_id=section_id, full=full, at_eof=at_eof, offset=offset,
                            footers=footers)
        if n is not None or not full:
            return n
        # The schema sets are the last resort: the stream's own trailer (located by the
        # decoder in the buffered tail at end of input) must win, so answer only once all
        # input is here and the tail holds no trailer.
        if not at_eof:
            return None
        if self._tail_has_trailer(view):
            return None
        ss = self.schema_set()
        if ss is None:
            if self.machine is not None:
                return None
            # No CONFIGURATION record (send-configuration=off): try every bundled set; the
            # section-end check below keeps a wrong guess from being accepted.
            saved = self._machine
            for name in available_machines():
                self._machine = name
                try:
                    n = self.measure(view, idstr=idstr, instance_id=instance_id,
                                     version_id=version_id, section_id=section_id, full=full,
                                     at_eof=at_eof, offset=offset, footers=footers)
                finally:
                    self._machine = saved
                if n is not None:
                    return n
            return None
        if not ss.variants(idstr):
            # Not covered: let the decoder look for a trailer and, failing that, raise its
            # SchemaError naming the section and suggesting --desc-from.
            return None
        def check(end: int) -> bool:
            return bool(fits_section_end(view, end, at_eof, footers, section_id))

        try:
            return ss.measure(idstr, version_id, view, check=check, offset=offset)
        except NeedMoreData:
            # all input is here (at_eof): every variant ran past the end or failed
            self.failures.append(f"{idstr} instance {instance_id}: every schema-set walk ran past "
                                 "the end of the input")
            return None
        except SchemaError as e:
            self.failures.append(f"{idstr} instance {instance_id}: {e.message}")
            return None



def machine_layout_resolver(descriptions: Iterable[Any] = (), builtins: bool = True,
                            machine: str | Callable[[], str | None] | None = None) -> Any:
    """Build a :class:`MachineLayoutResolver` (see its docstring); registers the virtio-mem
    built-in layouts first."""
    from vmig.vmstate.virtio_mem import register_layouts

    register_layouts()
    return MachineLayoutResolver(descriptions, builtins, machine)


def decoder_with_schema_sets(**kwargs: Any) -> Any:
    """A :class:`~vmig.stream.decoder.StreamDecoder` whose resolver falls back to the bundled
    schema set of the stream's machine type (taken from its CONFIGURATION record)."""
    from vmig.stream.decoder import StreamDecoder

    layout = kwargs.pop("layout", None) or machine_layout_resolver()
    dec = StreamDecoder(layout=layout, **kwargs)
    if hasattr(layout, "bind"):
        layout.bind(dec)
    return dec
