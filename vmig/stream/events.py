"""Events of the sans-I/O stream decoder/encoder (one frozen record per wire element, vmig.records).

Mirrors the record structure QEMU writes in migration/savevm.c (``qemu_savevm_state_*``,
``save_section_header``, ``save_section_footer``, ``qemu_savevm_command_send``) and reads in
``qemu_loadvm_state_main``. Every event carries ``offset`` (absolute byte offset of its first
byte in the input) and ``length`` (how many input bytes it stands for), so the events of a
stream tile the input exactly: each event starts where the previous one ended.

The encoder (``vmig.stream.encoder``) writes an event back from its *values*; fields that a
value cannot derive (which footer, raw subsection bytes, the trailer's exact JSON text) are
kept on the event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from vmig.records import field, record
from vmig.stream.constants import MigCmd, SectionType

if TYPE_CHECKING:  # pragma: no cover
    from vmig.stream.ram import RamBatch
    from vmig.stream.vmdesc import VmDescription

__all__ = [
    "FileHeader",
    "RawSubsection",
    "Configuration",
    "SectionHeader",
    "DeviceState",
    "RamRecords",
    "SectionEnd",
    "Command",
    "EndOfStream",
    "VmDescriptionEvent",
    "StreamEnd",
    "Event",
    "NEED_DATA",
    "NeedData",
    "flatten",
]


class NeedData:
    """Sentinel type: the decoder needs more input before it can return the next event."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@record(frozen=True, slots=True)
class FileHeader:
    """``be32 magic`` + ``be32 version`` (8 bytes)."""

    offset: int
    length: int
    magic: int
    version: int


@record(frozen=True, slots=True)
class RawSubsection:
    """A subsection of the CONFIGURATION record, kept raw (``05``, name, be32 version, payload).

    ``payload`` is the bytes after the version; ``offset``/``length`` cover the whole subsection.
    """

    offset: int
    length: int
    name: str
    version_id: int
    payload: bytes


@record(frozen=True, slots=True)
class Configuration:
    """The CONFIGURATION record (type 0x07): machine type name and optional subsections.

    ``target_page_bits``, ``capabilities`` and ``uuid`` are parsed views of the subsections
    ``configuration/target-page-bits``, ``/capabilities`` and ``/uuid`` (None when absent).
    """

    offset: int
    length: int
    name: str
    subsections: tuple[RawSubsection, ...] = ()
    target_page_bits: int | None = None
    capabilities: tuple[str, ...] | None = None
    uuid: bytes | None = None


@record(frozen=True, slots=True)
class SectionHeader:
    """A section header: START/FULL (id, idstr, instance, version) or PART/END (id only).

    For PART/END the idstr/instance/version are filled from the START/FULL with the same id;
    the encoder writes only what the wire has (``wire_length`` bytes).
    """

    offset: int
    length: int
    type: SectionType
    section_id: int
    idstr: str
    instance_id: int
    version_id: int

    @property
    def section(self) -> str:
        """``"idstr instance N"``, the form used in error messages."""
        return f"{self.idstr} instance {self.instance_id}"


@record(frozen=True, slots=True)
class DeviceState:
    """The payload of a non-RAM section: exact bytes (decoded lazily by vmig.vmstate)."""

    offset: int
    length: int
    payload: bytes | memoryview
    idstr: str
    instance_id: int
    version_id: int
    section_type: SectionType = SectionType.SECTION_FULL
    section_id: int = -1


@record(frozen=True, slots=True)
class RamRecords:
    """A bounded batch of RAM records of one ``ram`` section (the last batch holds the EOS)."""

    offset: int
    length: int
    batch: RamBatch
    section_id: int = -1


@record(frozen=True, slots=True)
class SectionEnd:
    """End of a section: the 5-byte footer (``7e`` + be32 id) or a 0-length marker (no footer).

    ``section_offset``/``section_length`` cover the whole section, header to footer.
    """

    offset: int
    length: int
    section_id: int
    footer: bool
    section_offset: int
    section_length: int


@record(frozen=True, slots=True)
class Command:
    """A COMMAND record (0x08): ``be16 cmd``, ``be16 len``, ``len`` bytes of ``data``.

    For PACKAGED, ``data`` is the be32 blob length and ``children`` are the records of the blob
    (decoded by a nested decoder, absolute offsets); ``length`` includes the blob.
    ``args`` is a parsed view of ``data`` (see ``vmig.stream.framing.parse_command_args``).
    """

    offset: int
    length: int
    cmd: MigCmd
    data: bytes
    children: tuple[Event, ...] = ()
    args: dict = field(default_factory=dict, compare=False, hash=False)


@record(frozen=True, slots=True)
class EndOfStream:
    """The EOF record, byte 0x00."""

    offset: int
    length: int = 1


@record(frozen=True, slots=True)
class VmDescriptionEvent:
    """The vmdesc trailer: ``06``, be32 len, ``raw`` JSON bytes (kept byte-exact).

    ``description`` is the decoder's parsed view of these bytes when it already has one (the
    trailer it found in the input's tail to describe the sections), else None: parse ``raw``.
    """

    offset: int
    length: int
    raw: bytes | memoryview
    description: VmDescription | None = field(default=None, compare=False, repr=False)


@record(frozen=True, slots=True)
class StreamEnd:
    """Emitted once after the last byte; nothing follows."""

    offset: int
    length: int = 0


Event = (
    FileHeader
    | Configuration
    | SectionHeader
    | DeviceState
    | RamRecords
    | SectionEnd
    | Command
    | EndOfStream
    | VmDescriptionEvent
    | StreamEnd
)


def flatten(events: Iterable[Event]) -> Iterator[Event]:
    """Events in stream order, a PACKAGED command followed by the records of its blob (postcopy
    device state; recursively)."""
    for e in events:
        yield e
        if isinstance(e, Command) and e.children:
            yield from flatten(e.children)
