"""``vmig sections``: one row per record of a migration stream.

Each row: offset, length, type; for a section its id, name, instance and version; for a command
its name and arguments (PING value, POSTCOPY_ADVISE page sizes, POSTCOPY_RAM_DISCARD block and
byte ranges, PACKAGED blob length, RECV_BITMAP block). Rows tile the input exactly; the records
inside a PACKAGED command are listed under it, indented.

--json prints a list of {offset, length, type} objects with, where they apply, section_id, idstr,
instance_id, version_id, command, args (ranges as [start, length] pairs) and children.

Examples:
  vmig sections guest.bin
  vmig sections postcopy.bin --json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

from vmig.cli._common import add_desc_from_argument, add_stream_argument, stream_events

if TYPE_CHECKING:
    from vmig.io.streams import Record

__all__ = ["register", "handler", "format_row"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sections", help="list the records of a migration stream",
                              description=__doc__.split("\n", 2)[2] if __doc__ else None,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_argument(p)
    add_desc_from_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(handler=handler)


def format_row(r: Record, indent: int = 0) -> str:
    """One text line for a record."""
    pad = "  " * indent
    fields = [f"{pad}{r.offset:#010x}", f"{r.length:>10}", f"{r.type:<14}"]
    if r.section_id is not None:
        fields.append(f"id={r.section_id:<3} {r.idstr} inst={r.instance_id} ver={r.version_id}")
        if r.ram_records is not None:
            fields.append(f"ram_records={r.ram_records}")
    if r.command is not None:
        fields.append(r.command + "".join(f" {k}={_arg_text(k, v)}" for k, v in (r.args or {}).items()))
    return "  ".join(fields)


def _arg_text(key: str, value: object) -> str:
    if key == "ranges":
        return "[" + ", ".join(f"{s:#x}+{n:#x}" for s, n in value) + "]"  # type: ignore[attr-defined]
    if key in ("page_size_summary", "target_page_size", "blob_length"):
        return f"{value:#x}"
    return str(value)


def _print_text(rows, out: TextIO, indent: int = 0) -> None:
    for r in rows:
        out.write(format_row(r, indent) + "\n")
        if r.children:
            _print_text(r.children, out, indent + 1)


def handler(args: argparse.Namespace) -> int:
    from vmig.io.streams import records

    rows = records(stream_events(args), keep_events=False)
    out = sys.stdout
    if args.json:
        # Collected first so a decode error leaves no half-written JSON on stdout.
        data = [r.to_json() for r in rows]
        json.dump(data, out, indent=1)
        out.write("\n")
    else:
        out.write(f"{'offset':>10}  {'length':>10}  {'type':<14}  section / command\n")
        _print_text(rows, out)
    return 0
