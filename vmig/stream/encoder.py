"""Sans-I/O encoder: events back to QEVM stream bytes, built from the events' values.

Mirrors the source side of migration/savevm.c (``qemu_savevm_state_header``,
``save_section_header``, ``save_section_footer``, ``qemu_savevm_command_send``,
``qemu_savevm_send_packaged``) and migration/ram.c (``save_page_header`` and the per-type page
writers). ``encode(decode(b)) == b`` holds for real captures: every byte that a value cannot
derive is kept on the event (footer presence, configuration subsections, trailer JSON, RAM
``has_idstr`` per record).

A RamRecords batch still ``verbatim`` (straight from the decoder) is emitted as its raw bytes
(the fast case); otherwise it is rebuilt from its columns by :func:`vmig.stream.ram.build_records`.
"""

from __future__ import annotations

from collections.abc import Iterable

from vmig.errors import UsageError
from vmig.stream.constants import MigCmd, SectionType
from vmig.stream.events import (
    Command,
    Configuration,
    DeviceState,
    EndOfStream,
    Event,
    FileHeader,
    RamRecords,
    SectionEnd,
    SectionHeader,
    StreamEnd,
    VmDescriptionEvent,
)
from vmig.stream.framing import BE32, COMMAND_HEADER, FOOTER, HEADER, START_TAIL
from vmig.stream.ram import build_records

__all__ = ["StreamEncoder", "encode"]


class StreamEncoder:
    """Turns events into bytes. Stateless apart from ``offset`` (bytes produced so far).

    Args:
        verbatim_ram: emit unmodified RAM batches as their raw bytes (fast); False forces the
            rebuild from columns (used by tests to check the columns are complete).
    """

    def __init__(self, verbatim_ram: bool = True) -> None:
        self.verbatim_ram = verbatim_ram
        self.offset = 0

    def send(self, event: Event) -> bytes:
        """Return the bytes of ``event``.

        Raises:
            UsageError: an event type the encoder does not know, or values that do not fit
                the wire (e.g. an idstr longer than 255 bytes).
        """
        out = self._encode(event)
        if not isinstance(out, bytes):
            out = bytes(out)
        self.offset += len(out)
        return out

    def send_view(self, event: Event) -> bytes | memoryview:
        """Like :meth:`send`, without copying what the event already holds as bytes: an
        unmodified RAM batch or a device payload comes back as (a view of) the event's own
        buffer (e.g. the mmap'ed input). For writers (``file.write`` takes either); the view is
        valid as long as the event's buffer is.
        """
        out = self._encode(event)
        self.offset += len(out)
        return out

    def _encode(self, ev: Event) -> bytes | memoryview:
        if isinstance(ev, RamRecords):
            b = ev.batch
            if self.verbatim_ram and b.verbatim:
                return b.raw
            return build_records(b)
        if isinstance(ev, DeviceState):
            return ev.payload
        if isinstance(ev, SectionHeader):
            if ev.type in (SectionType.SECTION_START, SectionType.SECTION_FULL):
                name = _counted(ev.idstr, "idstr")
                return bytes([ev.type]) + BE32.pack(ev.section_id) + name + START_TAIL.pack(ev.instance_id, ev.version_id)
            if ev.type in (SectionType.SECTION_PART, SectionType.SECTION_END):
                return bytes([ev.type]) + BE32.pack(ev.section_id)
            raise UsageError(f"SectionHeader with non-section type {ev.type!r}")
        if isinstance(ev, SectionEnd):
            return FOOTER.pack(SectionType.SECTION_FOOTER, ev.section_id) if ev.footer else b""
        if isinstance(ev, FileHeader):
            return HEADER.pack(ev.magic, ev.version)
        if isinstance(ev, Configuration):
            name = ev.name.encode("latin-1")
            out = bytearray([SectionType.CONFIGURATION]) + BE32.pack(len(name)) + name
            for sub in ev.subsections:
                out += bytes([SectionType.SUBSECTION]) + _counted(sub.name, "subsection name")
                out += BE32.pack(sub.version_id) + sub.payload
            return bytes(out)
        if isinstance(ev, Command):
            return self._command(ev)
        if isinstance(ev, EndOfStream):
            return b"\x00"
        if isinstance(ev, VmDescriptionEvent):
            raw = bytes(ev.raw)
            return bytes([SectionType.VMDESCRIPTION]) + BE32.pack(len(raw)) + raw
        if isinstance(ev, StreamEnd):
            return b""
        raise UsageError(f"cannot encode {type(ev).__name__}")

    def _command(self, ev: Command) -> bytes:
        if ev.cmd == MigCmd.PACKAGED:
            # The blob length is recomputed from the children so edited children stay consistent.
            inner = StreamEncoder(self.verbatim_ram)
            blob = b"".join(inner.send_view(c) for c in ev.children)
            return COMMAND_HEADER.pack(SectionType.COMMAND, ev.cmd, 4) + BE32.pack(len(blob)) + blob
        if len(ev.data) > 0xFFFF:
            raise UsageError(f"{ev.cmd.name} command data longer than 65535 bytes")
        return COMMAND_HEADER.pack(SectionType.COMMAND, ev.cmd, len(ev.data)) + ev.data


def _counted(s: str, what: str) -> bytes:
    b = s.encode("latin-1")
    if len(b) > 255:
        raise UsageError(f"{what} longer than 255 bytes: {s[:40]!r}...")
    return bytes([len(b)]) + b


def encode(events: Iterable[Event], verbatim_ram: bool = True) -> bytes:
    """Encode a sequence of events into one bytes object."""
    enc = StreamEncoder(verbatim_ram)
    return b"".join(enc.send(e) for e in events)
