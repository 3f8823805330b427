"""Bundled schema sets: how to walk every FULL section of a machine type without a vmdesc trailer.

* :mod:`.schemas`   the sets (``<machine>.json`` here) loaded as :class:`MachineSchemas`;
* :mod:`.walk`      walking a payload with a set (mirrors migration/vmstate.c's loader);
* :mod:`.resolver`  :class:`MachineLayoutResolver`, the decoder's last resort;
* :mod:`.generate`  building the sets from captures (``scripts/gen_machine_schemas.py``).
"""

from __future__ import annotations

from vmig.vmstate.machines.generate import (
    add_dump_subsections,
    loads_vmdesc,
    merge_description,
    normalize_body,
    normalize_field,
)
from vmig.vmstate.machines.resolver import MachineLayoutResolver
from vmig.vmstate.machines.schemas import (
    SCHEMA_FORMAT,
    MachineSchemas,
    available_machines,
    load_schema_set,
    schema_path,
)
from vmig.vmstate.machines.walk import MAX_POSSIBLE_CPUS, PER_CPU_STRUCTS, measure_section, walk_ends

__all__ = [
    "SCHEMA_FORMAT",
    "MAX_POSSIBLE_CPUS",
    "PER_CPU_STRUCTS",
    "MachineLayoutResolver",
    "MachineSchemas",
    "add_dump_subsections",
    "available_machines",
    "load_schema_set",
    "loads_vmdesc",
    "measure_section",
    "merge_description",
    "normalize_body",
    "normalize_field",
    "schema_path",
    "walk_ends",
]
