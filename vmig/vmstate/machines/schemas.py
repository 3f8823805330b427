"""The bundled schema sets: one ``<machine>.json`` per machine type, loaded as :class:`MachineSchemas`.

Postcopy streams and ``suppress-vmdesc=on`` machines carry no JSON description, yet every FULL
section before virtio-mem's must be walked to reach it. A set (generated from real QEMU by
``scripts/gen_machine_schemas.py``, see :mod:`.generate`) holds, per section idstr, the
vmdesc-style descriptions seen in captures of that machine type; :mod:`.walk` measures a
payload with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmig.errors import SchemaError
from vmig.records import field, record
from vmig.vmstate.machines.walk import measure_section

SCHEMA_FORMAT = 1
_HERE = Path(__file__).resolve().parent


def schema_path(machine: str) -> Path:
    """Where the bundled set of ``machine`` lives (``machines/<machine>.json``)."""
    return _HERE / f"{machine}.json"


def available_machines() -> list[str]:
    """Machine types with a bundled schema set."""
    return sorted(p.name[: -len(".json")] for p in _HERE.glob("*.json"))


@record
class MachineSchemas:
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
            NeedMoreInput: ``buf`` ends before any variant could finish.
            SchemaError: no variant walks this payload.
        """
        return measure_section(self, idstr, version_id, buf, check=check, offset=offset)


def _load(machine: str) -> MachineSchemas | None:
    path = schema_path(machine)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("format") != SCHEMA_FORMAT:
        raise SchemaError(f"schema set {path.name} has format {doc.get('format')}, expected {SCHEMA_FORMAT}")
    meta = {k: v for k, v in doc.items() if k != "sections"}
    return MachineSchemas(machine=machine, sections=doc["sections"], meta=meta)


def load_schema_set(machine: str | None) -> MachineSchemas | None:
    """The bundled schema set for a machine type name, or None if vmig ships none for it.

    ``pc``/``q35`` aliases are not resolved: the CONFIGURATION record always carries the full
    versioned name.
    Reads the file on every call: callers (the layout resolver) keep the result.
    """
    if not machine:
        return None
    return _load(machine)
