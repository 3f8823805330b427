"""The QEVM migration stream: constants, framing, sans-I/O decoder and encoder, RAM, vmstate.

Public API of the codec core (see docs/ARCHITECTURE.md):

* events: ``FileHeader``, ``Configuration``, ``RawSubsection``, ``SectionHeader``,
  ``DeviceState``, ``RamRecords``, ``SectionEnd``, ``Command``, ``EndOfStream``,
  ``VmDescriptionEvent``, ``StreamEnd``, ``Event``, ``NEED_DATA``;
* ``StreamDecoder`` (sans-I/O), ``decode(bytes)``, ``StreamEncoder``, ``encode(events)``;
* RAM framing: ``RamBatch``, ``RamBlock``, ``RamState``;
* descriptions: ``VmDescription``, ``find_trailer``, ``LayoutResolver``, ``register_layout``;
* the postcopy return path: ``ReturnPathDecoder``, ``RpMessage``, ``RpEnd``, ``encode_rp``;
* I/O: ``open_source``, ``iter_events``, ``decode_path``, ``load_description``, ``records``,
  ``Record``.
"""

from vmig.stream.decoder import StreamDecoder, decode, iter_decode
from vmig.stream.encoder import StreamEncoder, encode
from vmig.stream.events import (
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
from vmig.stream.io import (
    Record,
    decode_path,
    iter_events,
    load_description,
    open_source,
    records,
)
from vmig.stream.layout import LayoutResolver, register_layout
from vmig.stream.ram import RamBatch, RamBlock, RamState
from vmig.stream.return_path import ReturnPathDecoder, RpEnd, RpMessage, encode_rp
from vmig.stream.vmdesc import JsonObject, VmDescription, find_trailer

__all__ = [
    "ReturnPathDecoder",
    "RpEnd",
    "RpMessage",
    "encode_rp",
    "NEED_DATA",
    "Command",
    "Configuration",
    "DeviceState",
    "EndOfStream",
    "Event",
    "FileHeader",
    "RamRecords",
    "RawSubsection",
    "SectionEnd",
    "SectionHeader",
    "StreamEnd",
    "VmDescriptionEvent",
    "StreamDecoder",
    "decode",
    "iter_decode",
    "StreamEncoder",
    "encode",
    "Record",
    "records",
    "decode_path",
    "iter_events",
    "load_description",
    "open_source",
    "LayoutResolver",
    "register_layout",
    "RamBatch",
    "RamBlock",
    "RamState",
    "JsonObject",
    "VmDescription",
    "find_trailer",
]
