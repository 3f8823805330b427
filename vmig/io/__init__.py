"""Input and output around the sans-I/O codec: mapped files, pipes, compressed inputs, and the
one place where a decoder is built for an input (trailer, ``--desc-from``, bundled schema sets).

Light at import: the command line maps its STREAM argument (:mod:`vmig.io.mapping`) before any
module that imports numpy or construct is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Explicit registry: public name -> defining module (imported on first use, PEP 562).
_EXPORTS: dict[str, str] = {
    "Record": "vmig.io.streams",
    "decode_path": "vmig.io.streams",
    "decode_bytes": "vmig.io.decoding",
    "iter_events": "vmig.io.streams",
    "input_kind": "vmig.io.streams",
    "load_description": "vmig.io.streams",
    "make_layout": "vmig.io.decoding",
    "new_decoder": "vmig.io.decoding",
    "open_source": "vmig.io.streams",
    "records": "vmig.io.streams",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vmig.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from vmig.io.decoding import decode_bytes, make_layout, new_decoder  # noqa: F401
    from vmig.io.streams import (  # noqa: F401
        Record,
        decode_path,
        input_kind,
        iter_events,
        load_description,
        open_source,
        records,
    )
