"""Edits of device state inside a migration stream: decode one section's payload, let a callback
change the values, re-encode them and splice them back (inputs are never modified).

Mirrors QEMU's migration/savevm.c (the loader reads a FULL section's payload with no length
field, so an edited payload must keep its length; the trailer's recorded sizes and any enclosing
PACKAGED length then stay valid) and hw/virtio/virtio-mem.c (``size`` is the number of plugged
blocks times ``block-size``, in the ``virtio-mem-device`` vmsd on ≤ 7.2 machine types and in
``virtio-mem-device-early`` on 8.0+ ones).

* :func:`edit_device_state` — any device section, decoded with the built-in virtio-mem codecs
  or the schema the stream's own trailer (else a given description) has for it;
* :func:`edit_virtio_mem` — the ``<path>/virtio-mem`` section of one device;
* :func:`set_virtio_mem_plugged` — a virtio-mem bitmap and ``size`` set together;
* :func:`set_field` — one field of a device section set from text (``vmig rewrite --set``);
* :func:`edit_virtio_mem_device` — ``requested-size`` / plugged blocks changed through the
  device model (``vmig rewrite --virtio-mem``);
* :func:`drop_section` — a FULL device section removed, also from a postcopy PACKAGED blob,
  trailer entry included (``--drop``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from vmig.errors import UsageError
from vmig.records import replace
from vmig.stream import events as ev
from vmig.stream.vmdesc import VmDescription, find_trailer
from vmig.vmstate import virtio_mem as vm

__all__ = ["Description", "as_description", "edit_device_state", "edit_virtio_mem", "set_virtio_mem_plugged",
           "set_field", "split_section_path", "section_matches", "edit_virtio_mem_device", "parse_ranges", "drop_section"]

Description = VmDescription | bytes | None


def as_description(description: Description) -> VmDescription | None:
    """A description given as raw trailer JSON, as a :class:`VmDescription` (None stays None)."""
    if description is None or isinstance(description, VmDescription):
        return description
    return VmDescription(description, source="description")


def _device_states(events: Iterable[ev.Event]) -> Iterator[ev.DeviceState]:
    return (e for e in ev.flatten(events) if isinstance(e, ev.DeviceState))


def section_matches(e: ev.DeviceState | ev.SectionHeader, spec: str) -> bool:
    """Whether section ``e`` is the one ``spec`` names: the end of its idstr, optionally followed
    by `` (N)`` for instance N, as QEMU's analyze-migration.py names sections (``dma (1)``)."""
    name, sep, rest = spec.rpartition(" (")
    if sep and rest.endswith(")") and rest[:-1].isdigit():
        return e.idstr.endswith(name) and e.instance_id == int(rest[:-1])
    return e.idstr.endswith(spec)


def _codec(e: ev.DeviceState, trailer: VmDescription | None,
           machine: str | None = None) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    section = f"{e.idstr} instance {e.instance_id}"
    if e.idstr.endswith(vm.IDSTR_SUFFIX):
        return (lambda p: vm.decode_virtio_mem(p, offset=e.offset, section=section)), vm.encode_virtio_mem
    if e.idstr.endswith(vm.IDSTR_SUFFIX_EARLY):
        return (lambda p: vm.decode_early(p, offset=e.offset, section=section)), vm.encode_early
    schema = None
    if trailer is not None:
        from vmig.vmstate.engine import SchemaSet

        schema = SchemaSet(trailer.root).for_section(e.idstr, e.instance_id, offset=e.offset)
    if schema is None:
        # no description of its own (postcopy, suppress-vmdesc): the bundled set of the machine type
        from vmig.vmstate.vmig_json import builtin_schema

        schema = builtin_schema(machine, e.idstr, bytes(e.payload), e.offset)
    if schema is None:
        where = trailer.source if trailer is not None else "no trailer, no description"
        raise UsageError(f"cannot decode {section}: not in the description ({where}) nor in vmig's "
                         f"bundled schemas of machine type {machine or '(unknown)'}; give --desc-from")
    return (lambda p: schema.decode(p, offset=e.offset, section=section)), schema.encode


def _one_section(candidates: Iterable[ev.DeviceState | ev.SectionHeader], spec: str,
                 context: str) -> ev.DeviceState | ev.SectionHeader:
    """The one of ``candidates`` (device sections, also inside PACKAGED) that ``spec`` names
    (an idstr suffix, or ``IDSTR (N)``).

    Raises:
        UsageError: none or several match (``context`` starts the message).
    """
    matches = [e for e in candidates if section_matches(e, spec)]
    if not matches:
        raise UsageError(f"{context}no device section whose idstr ends with {spec!r}")
    if len(matches) > 1:
        names = ", ".join(f"{e.idstr} instance {e.instance_id}" for e in matches)
        raise UsageError(f"{context}{spec!r} matches {len(matches)} sections ({names}); use a longer "
                         "suffix or add the instance as 'IDSTR (N)'")
    return matches[0]


def edit_device_state(data: bytes, idstr_suffix: str, edit: Callable[[Any], None], *,
                      description: Description = None) -> bytes:
    """Return ``data`` with one device section's state re-encoded after ``edit(values)``.

    The section is the only ``DeviceState`` (also inside postcopy PACKAGED blobs) whose idstr
    ends with ``idstr_suffix`` (``"dma (1)"``: instance 1 of it, :func:`section_matches`). Its
    payload is decoded with the built-in virtio-mem codecs (``…/virtio-mem``,
    ``…/virtio-mem-device-early``) or the schema the stream's own trailer
    (else ``description``, a :class:`VmDescription` or raw trailer JSON) gives for
    ``(idstr, instance)``; ``edit`` mutates the values in place. Sections are measured with the
    trailer, ``description`` and the bundled machine schema sets (:func:`vmig.io.streams.decode_bytes`).

    The payload must keep its length: QEMU's loader reads FULL payloads without a length
    field, and a changed length would also have to change the trailer's recorded ``size``s and
    any enclosing PACKAGED length. vmig refuses such edits rather than rewrite QEMU's JSON.

    Raises:
        UsageError: no or several matching sections, no schema for it, or the edit changed
            the payload length.
        SchemaError: the payload or the edited values do not fit the schema.
    """
    from vmig.io.decoding import decode_bytes

    desc = as_description(description)
    events = decode_bytes(data, description=desc)
    e = _one_section(_device_states(events), idstr_suffix, "")
    assert isinstance(e, ev.DeviceState)
    found = find_trailer(data)
    trailer = found[1] if found is not None else desc
    machine = next((c.name for c in events if isinstance(c, ev.Configuration)), None)
    decode_payload, encode_payload = _codec(e, trailer, machine)
    values = decode_payload(bytes(e.payload))
    edit(values)
    new = encode_payload(values)
    if len(new) != e.length:
        raise UsageError(
            f"edited {e.idstr} instance {e.instance_id} payload is {len(new)} bytes, was {e.length}: "
            "a FULL section payload has no length field, so the stream (and its trailer sizes) "
            "cannot be kept valid; keep the payload length unchanged"
        )
    out = bytearray(data)
    out[e.offset : e.offset + e.length] = new
    return bytes(out)


def edit_virtio_mem(data: bytes, edit: Callable[[Any], None], *, device: str | None = None,
                    description: Description = None) -> bytes:
    """Return ``data`` with a virtio-mem device's ``<path>/virtio-mem`` state edited in place by
    ``edit(state)`` (the decoded ``virtio`` payload; ``state.device`` holds ``bitmap``, ``size``,
    ``requested_size``…). ``device`` (the PCI path) is needed when the stream has several.

    Raises:
        UsageError: see :func:`edit_device_state`.
    """
    return edit_device_state(data, (device or "") + vm.IDSTR_SUFFIX, edit, description=description)


def _blocks_to_bool(blocks: Iterable[int] | np.ndarray, nblocks: int) -> np.ndarray:
    if isinstance(blocks, np.ndarray) and blocks.dtype == bool:
        if blocks.shape != (nblocks,):
            raise UsageError(f"bitmap has shape {blocks.shape}, the device has {nblocks} blocks")
        return blocks.copy()
    idx = np.asarray(list(blocks) if not isinstance(blocks, np.ndarray) else blocks, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= nblocks):
        raise UsageError(f"block numbers must be in 0..{nblocks - 1}, got {idx.min()}..{idx.max()}")
    out = np.zeros(nblocks, dtype=bool)
    out[idx] = True
    return out


def set_virtio_mem_plugged(data: bytes, blocks: Iterable[int] | np.ndarray, *,
                           device: str | None = None) -> bytes:
    """Return ``data`` with exactly ``blocks`` plugged on a virtio-mem device.

    Args:
        data: a complete stream with a virtio-mem device.
        blocks: block numbers to plug, or a bool array with one entry per block.
        device: the device path (``0000:00:02.0``); needed when the stream has several.

    Sets the bitmap and ``size`` (= plugged blocks × ``block_size``) together, in the
    ``…/virtio-mem`` section (≤ 7.2 layout) or the 8.0+ ``…/virtio-mem-device-early`` one.
    Nothing else changes: ``requested-size`` and the usable region stay as they were.
    """
    prefix = device or ""

    def apply(part: Any) -> None:
        tmp = part["tmp"]
        nblocks = vm.block_count(int(tmp["region_size"]), int(tmp["block_size"]))
        bits = _blocks_to_bool(blocks, nblocks)
        part["bitmap"] = bits
        part["size"] = int(bits.sum()) * int(tmp["block_size"])

    try:
        return edit_device_state(data, prefix + vm.IDSTR_SUFFIX, lambda s: apply(s["device"]))
    except KeyError:
        # 8.0+ early migration: tmp/size/bitmap moved to the early section
        return edit_device_state(data, prefix + vm.IDSTR_SUFFIX_EARLY, apply)


# -- edits named on the command line ------------------------------------------------------------


def _all_device_states(data: bytes, description: Description) -> list[ev.DeviceState]:
    from vmig.io.decoding import decode_bytes

    return list(_device_states(decode_bytes(data, description=as_description(description))))


def split_section_path(data: bytes, text: str, *, description: Description = None) -> tuple[str, str]:
    """Split ``SECTION.PATH`` (idstrs may contain dots: ``0000:00:02.0/virtio-mem``) at the first
    dot whose left part is the end of some device section's idstr.

    Raises:
        UsageError: no section matches any prefix.
    """
    states = _all_device_states(data, description)
    for i, ch in enumerate(text):
        if ch == "." and any(section_matches(e, text[:i]) for e in states):
            return text[:i], text[i + 1:]
    raise UsageError(f"--set {text}: no device section matches the part before any dot (SECTION is "
                     "an idstr, a unique end of one, or 'IDSTR (N)' for instance N)")


def _walk(node: Any, path: str, where: str) -> tuple[Any, Any]:
    """The container and key that ``path`` names inside ``node``. Field names may contain dots
    and brackets (``env.regs``, ``unused[0]``): the longest field name that starts the path wins;
    ``[N]`` indexes a list. ``virtio``/``decoded`` levels that ``vmig analyze`` shows around a
    decoded virtio payload are skipped when the values do not have them."""
    rest = path
    while True:
        if isinstance(node, (list, np.ndarray)) and rest.startswith("["):
            close = rest.find("]")
            try:
                idx = int(rest[1:close])
            except ValueError as e:
                raise UsageError(f"{where}: bad index in {rest!r}") from e
            if not 0 <= idx < len(node):
                raise UsageError(f"{where}: index {idx} out of range (0..{len(node) - 1})")
            key, rest = idx, rest[close + 1:]
        elif isinstance(node, dict):
            keys = [k for k in node if isinstance(k, str) and not k.startswith("_") and rest.startswith(k)
                    and rest[len(k):len(k) + 1] in ("", ".", "[")]
            if not keys:
                head = rest.split(".", 1)[0]
                if head in ("virtio", "decoded") and "." in rest:
                    rest = rest.split(".", 1)[1]
                    continue
                raise UsageError(f"{where}: no field {head!r} (fields: {', '.join(k for k in node if not str(k).startswith('_'))})")
            key = max(keys, key=len)
            rest = rest[len(key):]
        else:
            raise UsageError(f"{where}: {rest!r} goes into a value that has no fields")
        if rest.startswith("."):
            rest = rest[1:]
        if not rest:
            return node, key
        node = node[key]


def _typed(old: Any, text: str, where: str) -> Any:
    """``text`` as a value of ``old``'s type (bool, integer in decimal or 0x hex, string, bytes
    as hex of the same length)."""
    if isinstance(old, (bool, np.bool_)):
        low = text.lower()
        if low in ("true", "on", "yes", "1"):
            return True
        if low in ("false", "off", "no", "0"):
            return False
        raise UsageError(f"{where}: expected a bool (true/false), got {text!r}")
    if isinstance(old, (int, np.integer)):
        try:
            return int(text, 0)
        except ValueError as e:
            raise UsageError(f"{where}: expected an integer (decimal or 0x hex), got {text!r}") from e
    if isinstance(old, str):
        return text
    if isinstance(old, (bytes, bytearray)):
        try:
            new = bytes.fromhex(text.removeprefix("0x"))
        except ValueError as e:
            raise UsageError(f"{where}: expected {len(old)} bytes as hex, got {text!r}") from e
        if len(new) != len(old):
            raise UsageError(f"{where}: expected {len(old)} bytes as hex, got {len(new)}")
        return new
    raise UsageError(f"{where}: a {type(old).__name__} value cannot be set from text; name one of its fields")


def set_field(data: bytes, section: str, path: str, value: str, *, description: Description = None) -> bytes:
    """Return ``data`` with field ``path`` of the device section whose idstr ends with ``section``
    set to ``value`` (parsed as the field's type). Range checks are the schema's own: a value
    that does not fit the field's wire type is refused by the encoder.

    Raises:
        UsageError: no such section or field, a value of the wrong type.
        SchemaError: the value does not fit the field.
    """
    where = f"--set {section}.{path}"

    def edit(values: Any) -> None:
        node, key = _walk(values, path, where)
        node[key] = _typed(node[key], value, where)

    return edit_device_state(data, section, edit, description=description)


def parse_ranges(text: str) -> list[int]:
    """``0-127,200-255,300`` as the list of block indices it names (empty text = none)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo, 0), int(hi, 0) if sep else int(lo, 0)
        except ValueError as e:
            raise UsageError(f"plugged={text}: {part!r} is not a block index or range A-B") from e
        if b < a:
            raise UsageError(f"plugged={text}: range {part} ends before it starts")
        out.extend(range(a, b + 1))
    return out


def _virtio_mem_section(data: bytes, device: str | None, description: Description) -> Any:
    """The :class:`VirtioMemSection` of ``device`` (a PCI path, its unique suffix, or its index
    as ``vmig info memory-devices`` lists them)."""
    from vmig.device.sections import virtio_mem_sections
    from vmig.io.decoding import decode_bytes

    secs = virtio_mem_sections(decode_bytes(data, description=as_description(description)))
    if not secs:
        raise UsageError("the stream has no virtio-mem device")
    if device is None:
        if len(secs) > 1:
            raise UsageError(f"the stream has {len(secs)} virtio-mem devices "
                             f"({', '.join(s.dev_path for s in secs)}); name one")
        return secs[0]
    if device.isdigit() and int(device) < len(secs) and not any(s.dev_path == device for s in secs):
        return secs[int(device)]
    found = [s for s in secs if s.dev_path.endswith(device)]
    if len(found) != 1:
        raise UsageError(f"virtio-mem device {device!r}: {'no' if not found else len(found)} devices match "
                         f"(the stream has {', '.join(s.dev_path for s in secs)})")
    return found[0]


def edit_virtio_mem_device(data: bytes, device: str | None = None, *, requested_size: int | None = None,
                           plugged: Iterable[int] | None = None, description: Description = None) -> bytes:
    """Return ``data`` with a virtio-mem device changed through the device model
    (:class:`vmig.device.virtio_mem.VirtioMem`), so its sections stay consistent:

    * ``requested_size``: the QOM property write (QEMU's checks: a multiple of ``block-size``,
      at most the memory backend size; the usable region grows as QEMU grows it);
    * ``plugged``: exactly these blocks plugged, ``size`` = plugged blocks × ``block-size``.

    The result is refused when the model finds a state QEMU's device would never be in (a
    plugged block outside the device or beyond the usable region, ``size`` not matching the
    bitmap). Both the ``virtio-mem`` section and, on 8.0+ machine types, the early one are
    re-encoded from the model.

    Raises:
        UsageError: unknown device, an edit the device refuses (one line naming why).
    """
    from vmig.device.virtio_mem import VirtioMem
    from vmig.errors import DeviceError

    sec = _virtio_mem_section(data, device, description)
    dev = VirtioMem.from_section(sec)
    name = sec.dev_path
    if requested_size is not None:
        try:
            dev.qom_set_requested_size(requested_size)
        except DeviceError as e:
            raise UsageError(f"virtio-mem {name}: requested-size={requested_size:#x} refused: {e}") from e
    if plugged is not None:
        idx = sorted(set(plugged))
        if idx and (idx[0] < 0 or idx[-1] >= dev.nb_blocks):
            raise UsageError(f"virtio-mem {name}: plugged block {idx[-1]} is outside the device "
                             f"(blocks 0..{dev.nb_blocks - 1})")
        usable = dev.usable_region_size // dev.block_size
        beyond = [i for i in idx if i >= usable]
        if beyond:
            raise UsageError(f"virtio-mem {name}: plugged block {beyond[0]} is beyond the usable region "
                             f"(usable_region_size {dev.usable_region_size:#x} = blocks 0..{usable - 1}); "
                             "raise requested-size first")
        bits = np.zeros(dev.nb_blocks, dtype=bool)
        bits[idx] = True
        dev.bitmap = bits
        dev.size = dev.plugged_bytes()
    problems = dev.state_problems()
    if problems:
        raise UsageError(f"virtio-mem {name}: the edited state is not one QEMU's device can be in: {problems[0]}")
    late = dev.vmstate_values()

    def edit_late(state: Any) -> None:
        for k, v in late.items():
            if k == "tmp":
                continue
            state["device"][k] = v

    out = edit_device_state(data, name + vm.IDSTR_SUFFIX, edit_late, description=description)
    if sec.early is not None:
        early = dev.early_vmstate_values()

        def edit_early(state: Any) -> None:
            state["size"] = early["size"]
            state["bitmap"] = early["bitmap"]

        out = edit_device_state(out, name + vm.IDSTR_SUFFIX_EARLY, edit_early, description=description)
    return out


def _enclosing(events: tuple[ev.Event, ...] | list[ev.Event], target: ev.Event) -> list[ev.Command] | None:
    """The PACKAGED commands around ``target``, outermost first ([] at the top level; None when
    ``target`` is not among ``events``)."""
    for e in events:
        if e is target:
            return []
        if isinstance(e, ev.Command) and e.children and e.offset < target.offset < e.offset + e.length:
            inner = _enclosing(e.children, target)
            if inner is not None:
                return [e, *inner]
    return None


def _without(cmd: ev.Command, start: int, end: int) -> ev.Command:
    """``cmd`` with the child records that start in ``[start, end)`` left out, nested PACKAGED
    commands included (the encoder writes each blob length from the children it is given)."""
    kept = [(_without(c, start, end) if isinstance(c, ev.Command) and c.children else c)
            for c in cmd.children if not start <= c.offset < end]
    return replace(cmd, children=tuple(kept))


def drop_section(data: bytes, section: str, *, description: Description = None) -> bytes:
    """Return ``data`` without the device section whose idstr ends with ``section``.

    The whole record of the FULL section goes (header, payload, footer when the stream has
    footers), so QEMU's loader still frames the stream. A section inside a postcopy PACKAGED
    blob (where postcopy puts every device section) goes from the blob, and the PACKAGED
    command's be32 blob length is rewritten: QEMU's loader reads exactly that many bytes and
    loads them as a nested stream. QEMU's loader never reads the JSON trailer (it stops at EOF),
    but readers of the stream do, so the trailer's ``devices`` entry for the section is removed
    too and its length rewritten. An iterative section (RAM) cannot be dropped: its state is
    spread over START/PART/END records through the stream.

    Raises:
        UsageError: no or several matching sections, or an iterative one.
    """
    import json

    from vmig.io.decoding import decode_bytes
    from vmig.stream.encoder import encode

    events = decode_bytes(data, description=as_description(description))
    where = f"--drop {section}: "
    candidates = [e for e in ev.flatten(events)
                  if (isinstance(e, ev.DeviceState) and e.section_type == ev.SectionType.SECTION_FULL)
                  or (isinstance(e, ev.SectionHeader) and e.type == ev.SectionType.SECTION_START)]
    target = _one_section(candidates, section, where)
    if isinstance(target, ev.SectionHeader):
        raise UsageError(f"{where}{target.idstr} is an iterative section (its state is spread over "
                         "START/PART/END records); only device (FULL) sections can be dropped")
    ends = [e for e in ev.flatten(events) if isinstance(e, ev.SectionEnd)
            and e.section_offset <= target.offset < e.section_offset + e.section_length]
    if not ends:
        raise UsageError(f"{where}cannot find the record of {target.idstr}")
    start, end = ends[0].section_offset, ends[0].section_offset + ends[0].section_length
    chain = _enclosing(events, target)
    if chain:
        outer = chain[0]
        out = bytearray(data[:outer.offset])
        out += encode([_without(outer, start, end)])
        out += data[outer.offset + outer.length:]
    else:
        out = bytearray(data[:start] + data[end:])
    found = find_trailer(out)
    if found is None:
        return bytes(out)
    off = found[0]
    doc = json.loads(bytes(out[off + 5:]))
    devices = doc.get("devices", [])
    kept = [d for d in devices if not (d.get("name") == target.idstr and d.get("instance_id") == target.instance_id)]
    if len(kept) == len(devices):
        return bytes(out)
    doc["devices"] = kept
    text = json.dumps(doc).encode()
    return bytes(out[:off + 1]) + len(text).to_bytes(4, "big") + text
