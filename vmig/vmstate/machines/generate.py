"""Building the bundled schema sets from real captures (used by ``scripts/gen_machine_schemas.py``).

A set holds, per section idstr, the vmdesc-style descriptions ("variants") seen in captures of
one machine type, normalized to the set's form and merged so that every level lists the union of
the subsections seen there; :func:`add_dump_subsections` adds those QEMU's ``-dump-vmstate``
(migration/savevm.c ``dump_vmstate_json_to_file``) says a vmsd may also send.
"""

from __future__ import annotations

import json
from typing import Any

from vmig.stream.vmdesc import find_trailer

_INLINE_TYPES = ("tmp", "vstruct", "qtailq", "qlist", "gtree")


def _first_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: keep the first of duplicated keys (vmdesc repeats inline bodies)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k not in out:
            out[k] = v
    return out


def loads_vmdesc(data: bytes | memoryview) -> dict[str, Any] | None:
    """Parse a stream's vmdesc trailer (duplicate keys: first kept), or None if it has none."""
    found = find_trailer(data)
    if found is None:
        return None
    return json.loads(found[1].raw, object_pairs_hook=_first_pairs)


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
