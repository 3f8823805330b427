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
* :func:`set_virtio_mem_plugged` — a virtio-mem bitmap and ``size`` set together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from vmig.errors import UsageError
from vmig.stream import events as ev
from vmig.stream.vmdesc import VmDescription, find_trailer
from vmig.vmstate import virtio_mem as vm

__all__ = ["Description", "as_description", "edit_device_state", "edit_virtio_mem", "set_virtio_mem_plugged"]

Description = VmDescription | bytes | None


def as_description(description: Description) -> VmDescription | None:
    """A description given as raw trailer JSON, as a :class:`VmDescription` (None stays None)."""
    if description is None or isinstance(description, VmDescription):
        return description
    return VmDescription(description, source="description")


def _device_states(events: Iterable[ev.Event]) -> Iterator[ev.DeviceState]:
    for e in events:
        if isinstance(e, ev.Command) and e.children:
            yield from _device_states(e.children)
        elif isinstance(e, ev.DeviceState):
            yield e


def _codec(e: ev.DeviceState, trailer: VmDescription | None) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    section = f"{e.idstr} instance {e.instance_id}"
    if e.idstr.endswith(vm.IDSTR_SUFFIX):
        return (lambda p: vm.decode_virtio_mem(p, offset=e.offset, section=section)), vm.encode_virtio_mem
    if e.idstr.endswith(vm.IDSTR_SUFFIX_EARLY):
        return (lambda p: vm.decode_early(p, offset=e.offset, section=section)), vm.encode_early
    if trailer is None:
        raise UsageError(f"cannot decode {section}: the stream has no trailer and no description was given")
    from vmig.vmstate.engine import SchemaSet

    schema = SchemaSet(trailer.root).for_section(e.idstr, e.instance_id)
    if schema is None:
        raise UsageError(f"cannot decode {section}: not in the description ({trailer.source})")
    return (lambda p: schema.decode(p, offset=e.offset, section=section)), schema.encode


def edit_device_state(data: bytes, idstr_suffix: str, edit: Callable[[Any], None], *,
                      description: Description = None) -> bytes:
    """Return ``data`` with one device section's state re-encoded after ``edit(values)``.

    The section is the only ``DeviceState`` (also inside postcopy PACKAGED blobs) whose idstr
    ends with ``idstr_suffix``. Its payload is decoded with the built-in virtio-mem codecs
    (``…/virtio-mem``, ``…/virtio-mem-device-early``) or the schema the stream's own trailer
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
    matches = [e for e in _device_states(events) if e.idstr.endswith(idstr_suffix)]
    if not matches:
        raise UsageError(f"no device section whose idstr ends with {idstr_suffix!r}")
    if len(matches) > 1:
        names = ", ".join(f"{e.idstr} instance {e.instance_id}" for e in matches)
        raise UsageError(f"{idstr_suffix!r} matches {len(matches)} sections ({names}); use a longer suffix")
    e = matches[0]
    found = find_trailer(data)
    trailer = found[1] if found is not None else desc
    decode_payload, encode_payload = _codec(e, trailer)
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
