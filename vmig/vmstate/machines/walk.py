"""Walking a FULL section payload with a bundled schema set: candidate ends, every alternative.

Mirrors QEMU's loader (migration/vmstate.c, ``vmstate_load_state`` and
``vmstate_subsection_load``): fields are consumed in order — leaf fields by their recorded size,
structs and ``tmp``/``vstruct`` bodies recursively, ``qtailq``/``qlist`` element by element — and
subsections are found by peeking (0x05, length, a name starting with the parent vmsd's name).
A walk yields candidate ends; :func:`measure_section` accepts the first one its ``check`` (a
section end follows) accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmig.errors import SchemaError
from vmig.stream.inbuf import NeedMoreInput

if TYPE_CHECKING:
    from vmig.vmstate.machines.schemas import MachineSchemas


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


def measure_section(
    schema_set: MachineSchemas | None,
    idstr: str,
    version_id: int,
    buf: bytes | memoryview,
    *,
    check: Callable[[int], bool] | None = None,
    offset: int | None = None,
) -> int:
    """Measure a FULL section payload with ``schema_set`` (the built-in virtio-mem layouts come
    first in the resolver's table, :mod:`vmig.io.decoding`).

    Raises:
        NeedMoreInput: more bytes are needed to decide.
        SchemaError: nothing covers the section (message says how to supply a description).
    """
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
        raise NeedMoreInput(f"section {idstr!r} for the schema-set walk", have=len(buf))
    where = f"the bundled schema set for {schema_set.machine}" if schema_set else "no bundled schema set"
    detail = f" ({'; '.join(reasons[:3])})" if reasons else ""
    raise SchemaError(
        f"no description covers FULL section {idstr!r} version {version_id} ({where}{detail}); "
        "give a description with --desc-from FILE (a capture of the same VM configuration with a "
        "vmdesc trailer, or its JSON)",
        offset=offset,
        section=idstr,
    )
