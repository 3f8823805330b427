"""Bridge between the device model and virtio-mem sections of a decoded stream.

Uses the virtio-mem vmstate schemas of :mod:`vmig.vmstate.virtio_mem` (owned by the
codec side; not duplicated here) to:

* find the ``<dev-path>/virtio-mem`` and ``<dev-path>/virtio-mem-device-early`` sections among
  decoder events (:func:`virtio_mem_sections`);
* load a section's values into a model device realized with the destination's configuration,
  running QEMU's sanity checks with QEMU's error chain (:func:`load_values`, the one place
  those lines are written) and post-load (:func:`load_section`);
* re-encode a section from the model's state (:func:`encode_section`): the transport/common part
  of the payload is kept from the stream (the model does not own PCI/virtqueue state), the
  ``virtio-mem-device`` fields come from :meth:`VirtioMem.vmstate_values` (pre_save).

Mirrors QEMU's load order (spec §5.2/§6): early section (8.0+) before RAM, late section after.
No I/O: events come from the caller (``vmig.io.streams.iter_events``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from construct import Container

from vmig.device.virtio_mem import PostLoadResult, VirtioMem
from vmig.errors import MigrationError
from vmig.stream.events import DeviceState, flatten
from vmig.vmstate import virtio_mem as schema
from vmig.vmstate.virtio_mem import VirtioMemSection

__all__ = ["virtio_mem_sections", "load_values", "load_section", "encode_section", "encode_early"]


def virtio_mem_sections(events: Iterable[Any]) -> list[VirtioMemSection]:
    """Collect the virtio-mem sections of a stream, in stream order of their main sections
    (a device whose ``<dev-path>/virtio-mem`` section is missing is left out).

    Raises:
        SchemaError: a section does not fit the virtio-mem layout.
    """
    found: dict[str, VirtioMemSection] = {}
    out: list[VirtioMemSection] = []
    for ev in flatten(events):
        if isinstance(ev, DeviceState):
            sec = schema.add_section(found, ev.idstr, ev.instance_id, ev.payload, ev.offset)
            if sec is not None and ev.idstr.endswith(schema.IDSTR_SUFFIX):
                out.append(sec)
    return out


def load_values(dest: VirtioMem, dev_path: str, values: Mapping[str, Any], *, early: bool = False) -> None:
    """Load one section's decoded device values into ``dest`` (QEMU's sanity checks first).

    Raises:
        MigrationError: QEMU 7.2's lines for a failed sanity check (spec §6.3): the property
            line, "Failed to load <vmsd>:tmp", "Failed to load virtio-mem:virtio" (the late vmsd
            is loaded from inside the virtio field), "error while loading state …", "load of
            migration failed: Invalid argument".
    """
    try:
        dest.from_vmstate(values, early=early)
    except MigrationError as e:
        chain = [str(e)]
        if not early:
            chain.append("Failed to load virtio-mem:virtio")
        idstr = dev_path + (schema.IDSTR_SUFFIX_EARLY if early else schema.IDSTR_SUFFIX)
        chain += [
            f"error while loading state for instance 0x0 of device '{idstr}'",
            "load of migration failed: Invalid argument",
        ]
        raise MigrationError("\n".join(chain)) from e


def load_section(section: VirtioMemSection, dest: VirtioMem) -> PostLoadResult:
    """Load a stream's virtio-mem state into ``dest`` as QEMU's destination would.

    Returns the late post-load result (discards etc.).

    Raises:
        MigrationError: see :func:`load_values`.
    """
    if section.early is not None:
        load_values(dest, section.dev_path, section.early, early=True)
        dest.post_load_early()
    load_values(dest, section.dev_path, section.decoded.device)
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
