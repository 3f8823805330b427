"""Explicit registry of built-in field codecs that replace opaque vmstate fields.

The vmdesc trailer describes most device state field by field, but some fields are opaque to it:
QEMU writes them with a custom ``VMStateInfo.put`` (``virtio``, ``pci config``…) and the trailer
records only their type name and byte count. A *field codec* is a ``construct`` schema written
by hand for one such field (mirroring the QEMU C code that writes it); the engine
(:mod:`vmig.vmstate.engine`) uses it instead of ``Bytes(size)`` when one is registered.

Keys are ``(type_name, vmsd_name)``: the field's vmdesc ``type`` and the ``vmsd_name`` of the
vmsd body that *contains* the field (e.g. ``("virtio", "virtio-mem")``: the single ``virtio``
field of the top-level ``virtio-mem`` vmsd). ``vmsd_name=None`` registers a codec for every
field of that type. Lookup tries the exact pair first, then ``(type_name, None)``.

Registration is explicit: the built-in codecs are listed in :data:`BUILTIN_FIELD_CODECS` below
(module path + attribute, imported on first use), never discovered by scanning modules.

A factory is called as ``factory(entry)`` with the field's vmdesc entry (a read-only mapping:
do not mutate it) and returns a ``construct.Construct`` that parses exactly ``entry["size"]``
bytes and builds them back byte-identically (the engine checks that the codec consumes every
byte of the field; leftovers raise ``SchemaError``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import construct

from vmig.errors import UsageError
from vmig.records import field, record

FieldCodecFactory = Callable[[Mapping[str, Any]], construct.Construct]

# Explicit list of the built-in field codecs: (vmdesc type, containing vmsd name or None,
# "module:attribute" of the factory). The module is imported when the default registry is
# first built, so a missing module is an ImportError, not a silent fallback.
BUILTIN_FIELD_CODECS: tuple[tuple[str, str | None, str], ...] = (
    ("virtio", "virtio-mem", "vmig.vmstate.virtio_mem:virtio_field_codec"),
)


@record
class Registry:
    """A set of field codecs keyed by ``(type_name, vmsd_name | None)``."""

    _codecs: dict[tuple[str, str | None], FieldCodecFactory] = field(default_factory=dict)

    def register_field_codec(
        self, type_name: str, vmsd_name: str | None, factory: FieldCodecFactory
    ) -> None:
        """Register ``factory`` for fields of vmdesc type ``type_name`` inside vmsd ``vmsd_name``.

        Args:
            type_name: the field's vmdesc ``type`` (e.g. ``"virtio"``, ``"pci config"``).
            vmsd_name: ``vmsd_name`` of the vmsd body containing the field, or None for any.
            factory: ``factory(entry) -> Construct`` (see the module docstring).

        Raises:
            UsageError: a codec is already registered for this key.
        """
        key = (type_name, vmsd_name)
        if key in self._codecs:
            raise UsageError(f"a field codec is already registered for {key!r}")
        self._codecs[key] = factory

    def lookup(self, type_name: str, vmsd_name: str | None) -> FieldCodecFactory | None:
        """The factory for ``(type_name, vmsd_name)``, else ``(type_name, None)``, else None."""
        found = self._codecs.get((type_name, vmsd_name))
        if found is None:
            found = self._codecs.get((type_name, None))
        return found

    def keys(self) -> list[tuple[str, str | None]]:
        """Registered keys, in registration order."""
        return list(self._codecs)


def _resolve(ref: str) -> FieldCodecFactory:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    factory: FieldCodecFactory = getattr(module, attr)
    return factory


_default: Registry | None = None


def default_registry() -> Registry:
    """The registry holding :data:`BUILTIN_FIELD_CODECS` (built once, on first call)."""
    global _default
    if _default is None:
        reg = Registry()
        for type_name, vmsd_name, ref in BUILTIN_FIELD_CODECS:
            reg.register_field_codec(type_name, vmsd_name, _resolve(ref))
        _default = reg
    return _default


def register_field_codec(
    type_name: str, vmsd_name: str | None, factory: FieldCodecFactory
) -> None:
    """Register a field codec in the default registry (see :meth:`Registry.register_field_codec`).

    Prefer adding a line to :data:`BUILTIN_FIELD_CODECS`; this function is for tools and tests
    that extend the default set at run time.
    """
    default_registry().register_field_codec(type_name, vmsd_name, factory)
