"""vmstate: device-section payloads (QEMU ``migration/vmstate*.c``) as ``construct`` schemas.

* :mod:`.engine`     builds a schema from a vmdesc device entry (``SchemaSet``, ``build_schema``);
  ``schema.decode(payload)`` / ``schema.encode(values)`` are byte-exact.
* :mod:`.registry`   explicit registry of field codecs replacing opaque fields (e.g. ``virtio``).
* :mod:`.qemu_json`  output of QEMU 7.2 ``scripts/analyze-migration.py`` (``-d state``/``desc``).
* :mod:`.vmig_json`  vmig's own JSON document (``vmig analyze``).
* :mod:`.virtio`, :mod:`.virtio_mem`, :mod:`.pci`, ``machines/``: hand-written schemas.
"""

from __future__ import annotations

from vmig.vmstate.engine import (
    BodyNode,
    FieldItem,
    SchemaSet,
    VmsdSchema,
    build_schema,
)
from vmig.vmstate.registry import Registry, default_registry, register_field_codec

__all__ = [
    "BodyNode",
    "FieldItem",
    "Registry",
    "SchemaSet",
    "VmsdSchema",
    "build_schema",
    "default_registry",
    "register_field_codec",
]
