"""``vmig ram``: what the RAM part of a stream carries, per RAM block, kind, round and section.

Per RAM block: size, page size, pages by kind (zero, normal, xbzrle, compressed), bytes, pages
sent again, pages of unplugged virtio-mem blocks, ranges never sent. Per round (one walk of
QEMU's dirty bitmap: a round begins where the page sequence starts again from an earlier page,
at most one per bitmap sync): pages by kind, pages sent again. Per RAM section of the stream:
pages by kind. Totals count every re-send, as QEMU's query-migrate counts "normal" (full pages)
and "duplicate" (zero pages); pages of unplugged virtio-mem blocks are neither.

Examples:
  vmig ram running.bin
  vmig ram running.bin --json | jq '.rounds | length'

--json keys: page_size; blocks (idstr, length, page_size, mr_addr, pages, zero, normal, xbzrle,
compressed, bytes, bytes_by_kind, pages_sent, resent, final, never_sent, unplugged,
target_page_size); rounds (index, offset, section, zero, normal, xbzrle, compressed, bytes,
resent, jumps, postcopy); sections (index, section, offset, totals, blocks); totals (normal,
zero, xbzrle, compressed, bytes, resent, pages_sent, multifd_flush, hook, unplugged). bytes are
whole record bytes. STREAM is a path, - for stdin (memory stays bounded), or an .lz4 file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from vmig.cli._common import add_desc_from_argument, add_stream_argument
from vmig.cli.progress import Progress
from vmig.units import human_size

if TYPE_CHECKING:
    from vmig.analysis.ram import RamView


def register(subparsers: Any) -> None:
    """Add the ``ram`` subcommand."""
    p = subparsers.add_parser(
        "ram",
        help="RAM pages carried by the stream: per block, kind, round and section",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_argument(p)
    p.add_argument("--json", action="store_true", help="print the JSON document")
    add_desc_from_argument(p)
    p.set_defaults(handler=handle)


def input_size(path: str) -> int | None:
    """Size of a regular uncompressed input file (for the progress bar), else None."""
    if path == "-" or path.endswith(".lz4"):
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def build_view(path: str, desc_from: str | None = None) -> RamView:
    """Decode ``path`` and accumulate its :class:`RamView` (with a TTY progress bar)."""
    from vmig.analysis.ram import RamView
    from vmig.io.streams import iter_events
    from vmig.stream.events import RamRecords

    view = RamView()
    with Progress(input_size(path), "ram") as prog:
        for ev in iter_events(path, desc_from=desc_from, schema_sets=True):
            view.feed(ev)
            if isinstance(ev, RamRecords):
                prog(ev.offset + ev.length)
    return view


def render_text(doc: dict[str, Any]) -> str:
    """The human-readable report of a ``RamView.to_json()`` document."""
    from vmig.analysis.ram import KINDS

    lines = []
    hdr = f"{'block':32} {'size':>10} {'psize':>6} " + " ".join(f"{k:>10}" for k in KINDS)
    hdr += f" {'bytes':>12} {'resent':>8}"
    lines.append(hdr)
    for b in doc["blocks"]:
        lines.append(
            f"{b['idstr'][:32]:32} {human_size(b['length']):>10} {b['page_size']:>6} "
            + " ".join(f"{b[k]:>10}" for k in KINDS)
            + f" {b['bytes']:>12} {b['resent']:>8}"
        )
    t = doc["totals"]
    lines.append(
        f"{'total':32} {'':>10} {'':>6} " + " ".join(f"{t[k]:>10}" for k in KINDS)
        + f" {t['bytes']:>12} {t['resent']:>8}"
    )
    lines.append("")
    lines.append(f"rounds: {len(doc['rounds'])}")
    for r in doc["rounds"]:
        kinds = ", ".join(f"{k} {r[k]}" for k in KINDS if r[k])
        extra = (f", {r['resent']} sent again" if r["resent"] else "") + \
            (f", {r['jumps']} jumps" if r["jumps"] else "") + (" (postcopy)" if r["postcopy"] else "")
        lines.append(f"  #{r['index']:<4} @{r['offset']:#x}: {kinds or 'nothing'}{extra}")
    if t.get("unplugged"):
        lines.append(f"unplugged virtio-mem pages (not sent, not counted as zero): {t['unplugged']}")
    lines.append("")
    lines.append(f"RAM sections: {len(doc['sections'])}")
    for p in doc["sections"]:
        pt = p["totals"]
        kinds = ", ".join(f"{k} {pt[k]}" for k in KINDS if pt[k])
        lines.append(f"  #{p['index']:<4} {p['section']:5} @{p['offset']:#x}: {kinds or 'nothing'}"
                     f" ({pt['bytes']} bytes)")
    never = [(b["idstr"], r) for b in doc["blocks"] for r in b["never_sent"]]
    lines.append("")
    lines.append("never sent:" if never else "never sent: none")
    for idstr, (a, z) in never:
        lines.append(f"  {idstr} [{a:#x}, {z:#x}) {human_size(z - a)}")
    return "\n".join(lines) + "\n"


def handle(args: argparse.Namespace) -> int:
    view = build_view(args.stream, args.desc_from)
    doc = view.to_json()
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(doc))
    return 0
