"""Byte layouts of the stream's framing: header, section headers, footer, commands, config.

Mirrors migration/savevm.c (``qemu_savevm_state_header``, ``save_section_header``,
``save_section_footer``, ``qemu_savevm_command_send`` and the ``loadvm_*`` command handlers,
``vmstate_configuration``). Fixed-size framing uses precompiled ``struct.Struct`` objects (the
decoder checks availability first, then unpacks); command argument payloads are ``construct``
schemas parsed through one choke point, :func:`parse_command_args`, which turns construct
errors into :class:`vmig.errors.StreamError`.
"""

from __future__ import annotations

import struct
from typing import Any

import construct as cs

from vmig.errors import StreamError
from vmig.stream.constants import MigCmd

__all__ = [
    "HEADER",
    "U8",
    "BE16",
    "BE32",
    "BE64",
    "COMMAND_HEADER",
    "FOOTER",
    "START_TAIL",
    "COMMAND_LENGTHS",
    "DiscardCommand",
    "AdviseCommand",
    "RecvBitmapCommand",
    "parse_command_args",
    "build_command_data",
    "Capabilities",
]

HEADER = struct.Struct(">II")  # magic, version
U8 = struct.Struct(">B")
BE16 = struct.Struct(">H")
BE32 = struct.Struct(">I")
BE64 = struct.Struct(">Q")
COMMAND_HEADER = struct.Struct(">BHH")  # 0x08, cmd, len
FOOTER = struct.Struct(">BI")  # 0x7e, section id
START_TAIL = struct.Struct(">II")  # instance_id, version_id (after the counted idstr)
SECTION_ID = struct.Struct(">BI")  # type byte, section id

# Fixed payload lengths the loader enforces (migration/savevm.c loadvm_process_command);
# None = variable, checked by the command's own rule.
COMMAND_LENGTHS: dict[MigCmd, tuple[int, ...] | None] = {
    MigCmd.OPEN_RETURN_PATH: (0,),
    MigCmd.PING: (4,),
    MigCmd.POSTCOPY_ADVISE: (0, 16),
    MigCmd.POSTCOPY_LISTEN: (0,),
    MigCmd.POSTCOPY_RUN: (0,),
    MigCmd.POSTCOPY_RAM_DISCARD: None,
    MigCmd.PACKAGED: (4,),
    MigCmd.ENABLE_COLO: (0,),
    MigCmd.POSTCOPY_RESUME: (0,),
    MigCmd.RECV_BITMAP: None,
    MigCmd.SWITCHOVER_START: (0,),
}

# POSTCOPY_RAM_DISCARD: u8 version (0), counted idstr, u8 0 terminator, then (start, length) pairs.
DiscardCommand = cs.Struct(
    "version" / cs.Int8ub,
    "idstr" / cs.PascalString(cs.Int8ub, "latin-1"),
    "terminator" / cs.Int8ub,
    "ranges" / cs.GreedyRange(cs.Struct("start" / cs.Int64ub, "length" / cs.Int64ub)),
    cs.Terminated,
)

# POSTCOPY_ADVISE with postcopy-ram: OR of block page sizes, target page size.
AdviseCommand = cs.Struct("page_size_summary" / cs.Int64ub, "target_page_size" / cs.Int64ub)

# RECV_BITMAP: counted block idstr.
RecvBitmapCommand = cs.Struct("idstr" / cs.PascalString(cs.Int8ub, "latin-1"), cs.Terminated)

# configuration/capabilities subsection payload.
Capabilities = cs.PrefixedArray(cs.Int32ub, cs.PascalString(cs.Int8ub, "latin-1"))


def parse_command_args(cmd: MigCmd, data: bytes, offset: int | None = None) -> dict[str, Any]:
    """Parse a command's ``len`` bytes into a plain dict (the choke point for construct errors).

    Args:
        cmd: the command number.
        data: the bytes after ``be16 len`` (for PACKAGED only the be32 blob length).
        offset: absolute offset of ``data``, for error messages.

    Returns:
        ``{}`` for argument-less commands; ``{"value"}`` for PING; ``{"page_size_summary",
        "target_page_size"}`` for a 16-byte ADVISE; ``{"version", "idstr", "ranges": [(start,
        length), ...]}`` for RAM_DISCARD; ``{"blob_length"}`` for PACKAGED; ``{"idstr"}`` for
        RECV_BITMAP.

    Raises:
        StreamError: the payload does not have the command's layout.
    """
    try:
        if cmd == MigCmd.PING:
            return {"value": BE32.unpack(data)[0]}
        if cmd == MigCmd.PACKAGED:
            return {"blob_length": BE32.unpack(data)[0]}
        if cmd == MigCmd.POSTCOPY_ADVISE:
            if len(data) == 16:
                c = AdviseCommand.parse(data)
                return {"page_size_summary": c.page_size_summary, "target_page_size": c.target_page_size}
            return {}
        if cmd == MigCmd.POSTCOPY_RAM_DISCARD:
            c = DiscardCommand.parse(data)
            return {
                "version": c.version,
                "idstr": c.idstr,
                "ranges": [(r.start, r.length) for r in c.ranges],
            }
        if cmd == MigCmd.RECV_BITMAP:
            return {"idstr": RecvBitmapCommand.parse(data).idstr}
    except (cs.ConstructError, struct.error) as e:
        raise StreamError(
            f"bad {cmd.name} command payload ({len(data)} bytes)", offset=offset
        ) from e
    return {}


def build_command_data(cmd: MigCmd, args: dict[str, Any]) -> bytes:
    """Inverse of :func:`parse_command_args`: build a command's ``len`` bytes from its args."""
    if cmd == MigCmd.PING:
        return BE32.pack(args["value"])
    if cmd == MigCmd.PACKAGED:
        return BE32.pack(args["blob_length"])
    if cmd == MigCmd.POSTCOPY_ADVISE:
        if "page_size_summary" in args:
            return AdviseCommand.build(args)
        return b""
    if cmd == MigCmd.POSTCOPY_RAM_DISCARD:
        return DiscardCommand.build(
            {
                "version": args.get("version", 0),
                "idstr": args["idstr"],
                "terminator": 0,
                "ranges": [{"start": s, "length": n} for s, n in args["ranges"]],
            }
        )
    if cmd == MigCmd.RECV_BITMAP:
        return RecvBitmapCommand.build({"idstr": args["idstr"]})
    return b""
