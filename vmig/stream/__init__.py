"""The QEVM migration stream (the wire codec): constants, framing, sans-I/O decoder and encoder, RAM.

Public API of the codec core (see docs/ARCHITECTURE.md):

* events: ``FileHeader``, ``Configuration``, ``RawSubsection``, ``SectionHeader``,
  ``DeviceState``, ``RamRecords``, ``SectionEnd``, ``Command``, ``EndOfStream``,
  ``VmDescriptionEvent``, ``StreamEnd``, ``Event``, ``NEED_DATA``;
* ``StreamDecoder`` (sans-I/O), ``decode(bytes)``, ``StreamEncoder``, ``encode(events)``;
* RAM framing: ``RamBatch``, ``RamBlock``, ``RamState``;
* descriptions: ``VmDescription``, ``find_trailer``, ``LayoutResolver``, ``STREAM_LAYOUTS``;
* the postcopy return path: ``ReturnPathDecoder``, ``RpMessage``, ``RpEnd``, ``encode_rp``;
The I/O around it (files, pipes, compressed inputs, building a decoder for an input) is
:mod:`vmig.io`; this package touches no file.

The names are imported on first use (PEP 562): ``import vmig.stream.<module>`` of a light
module (constants, errors, the mapping warmer) does not pull in numpy and construct, which
keeps the command line's start-up short.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Explicit registry: public name -> defining module.
_EXPORTS: dict[str, str] = {
    "StreamDecoder": "vmig.stream.decoder",
    "decode": "vmig.stream.decoder",
    "iter_decode": "vmig.stream.decoder",
    "StreamEncoder": "vmig.stream.encoder",
    "encode": "vmig.stream.encoder",
    "NEED_DATA": "vmig.stream.events",
    "Command": "vmig.stream.events",
    "Configuration": "vmig.stream.events",
    "DeviceState": "vmig.stream.events",
    "EndOfStream": "vmig.stream.events",
    "Event": "vmig.stream.events",
    "FileHeader": "vmig.stream.events",
    "RamRecords": "vmig.stream.events",
    "RawSubsection": "vmig.stream.events",
    "SectionEnd": "vmig.stream.events",
    "SectionHeader": "vmig.stream.events",
    "StreamEnd": "vmig.stream.events",
    "VmDescriptionEvent": "vmig.stream.events",
    "LayoutResolver": "vmig.stream.layout",
    "STREAM_LAYOUTS": "vmig.stream.layout",
    "RamBatch": "vmig.stream.ram",
    "RamBlock": "vmig.stream.ram",
    "RamState": "vmig.stream.ram",
    "ReturnPathDecoder": "vmig.stream.return_path",
    "RpEnd": "vmig.stream.return_path",
    "RpMessage": "vmig.stream.return_path",
    "encode_rp": "vmig.stream.return_path",
    "JsonObject": "vmig.stream.vmdesc",
    "VmDescription": "vmig.stream.vmdesc",
    "find_trailer": "vmig.stream.vmdesc",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vmig.stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from vmig.stream.decoder import StreamDecoder, decode, iter_decode  # noqa: F401
    from vmig.stream.encoder import StreamEncoder, encode  # noqa: F401
    from vmig.stream.events import (  # noqa: F401
        NEED_DATA,
        Command,
        Configuration,
        DeviceState,
        EndOfStream,
        Event,
        FileHeader,
        RamRecords,
        RawSubsection,
        SectionEnd,
        SectionHeader,
        StreamEnd,
        VmDescriptionEvent,
    )
    from vmig.stream.layout import STREAM_LAYOUTS, LayoutResolver  # noqa: F401
    from vmig.stream.ram import RamBatch, RamBlock, RamState  # noqa: F401
    from vmig.stream.return_path import ReturnPathDecoder, RpEnd, RpMessage, encode_rp  # noqa: F401
    from vmig.stream.vmdesc import JsonObject, VmDescription, find_trailer  # noqa: F401
