"""The device sections the engine writes from its device models.

A device the engine models (virtio-mem-pci) has one source of migration state: the model. For
each virtio-mem device of a :class:`~vmig.device.machine.Machine`, :func:`model_sections` gives
the source a function per section idstr that serializes the model at the moment QEMU saves that
section (hw/virtio/virtio-mem.c's vmstates, as laid out by the machine type):

* ``<dev-path>/virtio-mem`` (every version): the virtio-pci transport and virtqueue part is the
  template capture's (the model does not own it; it also carries the MSI-X table of 10.0
  machine types), the ``virtio-mem-device`` fields are the model's pre_save values;
* ``<dev-path>/virtio-mem-device-early`` (machine types ≥ 8.0, ``x-early-migration``): tmp,
  size and bitmap from the model, saved at setup right after the RAM START section.

The capture supplies the sections of every device the engine does not model. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from vmig.device.sections import encode_early, encode_section, virtio_mem_sections
from vmig.errors import UsageError
from vmig.vmstate import virtio_mem as schema

if TYPE_CHECKING:
    from vmig.device.machine import Machine

__all__ = ["model_sections"]


def model_sections(machine: Machine, events: Iterable[Any]) -> dict[str, Callable[[], bytes]]:
    """idstr -> payload writer for every section of ``machine``'s virtio-mem devices.

    Args:
        machine: the device models (their PCI paths name the sections).
        events: the template capture's decoded events (for the transport part).

    Raises:
        UsageError: the template has no section of a modelled device, or its layout (early
            section or not) is not the one the model's machine type gives.
    """
    captured = {s.dev_path: s for s in virtio_mem_sections(events)}
    out: dict[str, Callable[[], bytes]] = {}
    for dev in machine.devices:
        path = machine.pci_path(dev)
        sec = captured.get(path)
        if sec is None:
            raise UsageError(f"the template has no {path}{schema.IDSTR_SUFFIX} section for the modelled "
                             f"device {dev.id or '(unnamed)'}: not a capture of this VM")
        if (sec.early is not None) != bool(dev.early_migration):
            raise UsageError(
                f"{path}: the template {'has' if sec.early is not None else 'lacks'} the "
                f"virtio-mem-device-early section but the model ({machine.behaviour.label}) "
                f"{'does not migrate early' if sec.early is not None else 'migrates early'}: "
                "wrong QEMU version or machine type for this capture")
        out[path + schema.IDSTR_SUFFIX] = (lambda s=sec, d=dev: encode_section(s, d))
        if dev.early_migration:
            out[path + schema.IDSTR_SUFFIX_EARLY] = (lambda d=dev: encode_early(d))
    return out
