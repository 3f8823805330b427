"""Bridge between the device model and virtio-mem sections of a decoded stream.

Uses the virtio-mem vmstate schemas of :mod:`vmig.vmstate.virtio_mem` (owned by the
codec side; not duplicated here) to:

* find the ``<dev-path>/virtio-mem`` and ``<dev-path>/virtio-mem-device-early`` sections among
  decoder events (:func:`virtio_mem_sections`);
* load a section's values into a model device realized with the destination's configuration,
  running QEMU's sanity checks and post-load (:func:`load_section`);
* re-encode a section from the model's state (:func:`encode_section`): the transport/common part
  of the payload is kept from the stream (the model does not own PCI/virtqueue state), the
  ``virtio-mem-device`` fields come from :meth:`VirtioMem.vmstate_values` (pre_save).

Mirrors QEMU's load order (spec §5.2/§6): early section (8.0+) before RAM, late section after.
No I/O: events come from the caller (``vmig.io.streams.iter_events``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from construct import Container

from vmig.device.virtio_mem import PostLoadResult, VirtioMem
from vmig.errors import MigrationError
from vmig.stream.events import Command, DeviceState
from vmig.vmstate import virtio_mem as schema

__all__ = ["VirtioMemSection", "virtio_mem_sections", "load_section", "encode_section", "encode_early"]


@dataclass
class VirtioMemSection:
    """The virtio-mem state of one device as found in a stream.

    Attributes:
        dev_path: PCI device path (``0000:00:02.0``).
        payload: bytes of the ``<dev-path>/virtio-mem`` FULL section.
        decoded: its decoded Container (``.device`` = the virtio-mem-device values).
        early_payload / early: the ``-early`` section ([8.0]+ machines) or None.
    """

    dev_path: str
    payload: bytes
    decoded: Container
    early_payload: bytes | None = None
    early: Container | None = None


def _flatten(events: Iterable[Any]) -> Iterable[Any]:
    """Events in stream order, descending into PACKAGED commands (postcopy device state)."""
    for ev in events:
        yield ev
        if isinstance(ev, Command) and ev.children:
            yield from _flatten(ev.children)


def virtio_mem_sections(events: Iterable[Any]) -> list[VirtioMemSection]:
    """Collect the virtio-mem sections of a stream, in stream order of their main sections.

    Raises:
        SchemaError: a section does not fit the virtio-mem layout.
    """
    early: dict[str, tuple[bytes, Container]] = {}
    out: list[VirtioMemSection] = []
    for ev in _flatten(events):
        if not isinstance(ev, DeviceState):
            continue
        if ev.idstr.endswith(schema.IDSTR_SUFFIX_EARLY):
            raw = bytes(ev.payload)
            early[schema.device_path(ev.idstr)] = (raw, schema.decode_early(raw, offset=ev.offset, section=ev.idstr))
        elif ev.idstr.endswith(schema.IDSTR_SUFFIX):
            raw = bytes(ev.payload)
            path = schema.device_path(ev.idstr)
            dec = schema.decode_virtio_mem(raw, early_migration=path in early or None, offset=ev.offset,
                                           section=ev.idstr)
            sec = VirtioMemSection(path, raw, dec)
            if path in early:
                sec.early_payload, sec.early = early[path]
            out.append(sec)
    return out


def _load_failed(e: MigrationError, idstr: str, nested_in_virtio: bool) -> MigrationError:
    """QEMU's error chain after a failed sanity check (spec §6.3, verified on 7.2)."""
    chain = [str(e)]
    if nested_in_virtio:  # the late vmsd is loaded from inside the virtio field
        chain.append("Failed to load virtio-mem:virtio")
    chain += [
        f"error while loading state for instance 0x0 of device '{idstr}'",
        "load of migration failed: Invalid argument",
    ]
    return MigrationError("\n".join(chain))


def load_section(section: VirtioMemSection, dest: VirtioMem) -> PostLoadResult:
    """Load a stream's virtio-mem state into ``dest`` as QEMU's destination would.

    Returns the late post-load result (discards etc.).

    Raises:
        MigrationError: QEMU's sanity-check failure line, followed by the generic chain
            ("Failed to load virtio-mem:virtio", "error while loading state ...").
    """
    if section.early is not None:
        try:
            dest.from_vmstate(section.early, early=True)
        except MigrationError as e:
            raise _load_failed(e, section.dev_path + schema.IDSTR_SUFFIX_EARLY, False) from e
        dest.post_load_early()
    try:
        dest.from_vmstate(section.decoded.device)
    except MigrationError as e:
        raise _load_failed(e, section.dev_path + schema.IDSTR_SUFFIX, True) from e
    return dest.post_load()


def encode_section(section: VirtioMemSection, dev: VirtioMem) -> bytes:
    """Re-encode the ``<dev-path>/virtio-mem`` payload with the device fields from ``dev``."""
    state = Container(section.decoded)
    device = Container(section.decoded.device)
    device.pop("bitmap_padding", None)
    for k, v in dev.vmstate_values().items():
        device[k] = Container(v) if isinstance(v, dict) else v
    state["device"] = device
    return schema.encode_virtio_mem(state)


def encode_early(dev: VirtioMem) -> bytes:
    """Encode the ``virtio-mem-device-early`` payload from ``dev`` ([8.0]+ machines)."""
    vals = dev.early_vmstate_values()
    return schema.encode_early(Container(tmp=Container(vals["tmp"]), size=vals["size"], bitmap=vals["bitmap"]))
