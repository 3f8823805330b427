"""``vmig ram``: what the RAM section of a stream carries, per RAMBlock, kind and pass.

``vmig ram STREAM [--json] [--desc-from OTHER]``

Per block: size, page size, records by kind (zero, normal, xbzrle, compressed), bytes, pages
re-sent, byte ranges never sent; per pass (one PART/END section of ``ram``): records by kind;
totals. Page counts cover the whole stream and count every re-send, as QEMU's
``query-migrate`` counts ``ram.normal`` (PAGE records) and ``ram.duplicate`` (ZERO records).

JSON (``--json``; see vmig.analysis.ram.RamView.to_json)::

    {"page_size": 4096,
     "blocks": [{"idstr", "length", "page_size", "mr_addr", "pages", "zero", "normal",
                 "xbzrle", "compressed", "bytes", "bytes_by_kind": {...}, "pages_sent",
                 "resent", "final": {kind: pages whose last write was that kind},
                 "never_sent": [[start, end], ...], "target_page_size"}],
     "passes": [{"index", "section": "part"|"end"|"start", "offset",
                 "totals": {kind: n, "bytes": n}, "blocks": {idstr: {kind: n, "bytes": n}}}],
     "totals": {"normal", "zero", "xbzrle", "compressed", "bytes", "resent", "pages_sent",
                "multifd_flush", "hook"}}

``bytes`` are whole record bytes (record word, idstr, payload headers and payload).
STREAM is a path, ``-`` for stdin (streamed: memory stays bounded), or a ``.lz4`` frame file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from vmig.cli._common import add_desc_from_argument, add_stream_argument
from vmig.cli.progress import Progress, input_size

if TYPE_CHECKING:
    from vmig.analysis.ram import RamView


def register(subparsers: Any) -> None:
    """Add the ``ram`` subcommand."""
    p = subparsers.add_parser(
        "ram",
        help="RAM pages carried by the stream: per block, kind and pass",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_argument(p)
    p.add_argument("--json", action="store_true", help="print the JSON document")
    add_desc_from_argument(p)
    p.set_defaults(handler=handle)


def build_view(path: str, desc_from: str | None = None) -> RamView:
    """Decode ``path`` and accumulate its :class:`RamView` (with a TTY progress bar)."""
    from vmig.analysis.ram import RamView
    from vmig.io.streams import iter_events

    view = RamView()
    with Progress(input_size(path), "ram") as prog:
        for ev in iter_events(path, desc_from=desc_from, schema_sets=True):
            view.feed(ev)
            if type(ev).__name__ == "RamRecords":
                prog(ev.offset + ev.length)
    return view


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render_text(doc: dict[str, Any]) -> str:
    """The human-readable report of a ``RamView.to_json()`` document."""
    from vmig.analysis.ram import KINDS

    lines = []
    hdr = f"{'block':32} {'size':>10} {'psize':>6} " + " ".join(f"{k:>10}" for k in KINDS)
    hdr += f" {'bytes':>12} {'resent':>8}"
    lines.append(hdr)
    for b in doc["blocks"]:
        lines.append(
            f"{b['idstr'][:32]:32} {_human(b['length']):>10} {b['page_size']:>6} "
            + " ".join(f"{b[k]:>10}" for k in KINDS)
            + f" {b['bytes']:>12} {b['resent']:>8}"
        )
    t = doc["totals"]
    lines.append(
        f"{'total':32} {'':>10} {'':>6} " + " ".join(f"{t[k]:>10}" for k in KINDS)
        + f" {t['bytes']:>12} {t['resent']:>8}"
    )
    lines.append("")
    lines.append(f"passes: {len(doc['passes'])}")
    for p in doc["passes"]:
        pt = p["totals"]
        kinds = ", ".join(f"{k} {pt[k]}" for k in KINDS if pt[k])
        lines.append(f"  #{p['index']:<4} {p['section']:5} @{p['offset']:#x}: {kinds or 'nothing'}"
                     f" ({pt['bytes']} bytes)")
    never = [(b["idstr"], r) for b in doc["blocks"] for r in b["never_sent"]]
    lines.append("")
    lines.append("never sent:" if never else "never sent: none")
    for idstr, (a, z) in never:
        lines.append(f"  {idstr} [{a:#x}, {z:#x}) {_human(z - a)}")
    return "\n".join(lines) + "\n"


def handle(args: argparse.Namespace) -> int:
    view = build_view(args.stream, args.desc_from)
    doc = view.to_json()
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(doc))
    return 0
