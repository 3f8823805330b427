"""``vmig diff A B``: what differs between two migration streams.

Compares the configuration record, the sections each stream has, every device field (decoded
with the streams' own descriptions, --desc-from, or vmig's bundled descriptions of the machine
type), and the final guest RAM page by page (what a destination would hold). Sections compare
wherever they travel (postcopy packs device state into one command), and a virtio-mem device's
early and late sections count as one device, so a precopy and a postcopy capture of one VM, or
one device on two machine types, compare field by field. Integers print in hex, bitmaps as the
ranges of set bits.

Examples:
  vmig diff source.bin recapture.bin
  vmig diff precopy.bin postcopy.bin --all
  vmig diff a.bin b.bin --json --ignore configuration.uuid 'cpu[0].env.tsc*'

--json prints {"same", "differences": [{"kind": "config"|"section"|"field"|"ram", "path", "a",
"b"}], "sections_compared", "not_compared"} with JSON values (null where absent).
Exit status: 0 same, 1 different, 2 error (as diff(1)).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmig.cli._common import add_desc_from_argument, add_stream_argument, description_from_args


def register(subparsers: Any) -> None:
    """Add the ``diff`` subcommand."""
    p = subparsers.add_parser(
        "diff", help="compare two streams: sections, device fields, guest RAM pages",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_argument(p, "a", help="first stream ('-' = stdin; *.lz4 is decompressed)")
    add_stream_argument(p, "b", help="second stream (*.lz4 is decompressed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--all", action="store_true", help="list every difference (text output)")
    p.add_argument("--ignore", nargs="+", action="extend", default=[], metavar="PATH",
                   help="leave out differences at or under PATH (a section, a field path as "
                        "printed, configuration.KEY, a RAM block; * and ? match any text)")
    add_desc_from_argument(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from vmig.analysis.diff import diff_events
    from vmig.cli.progress import with_progress
    from vmig.io.streams import iter_events

    desc = description_from_args(args)
    res = diff_events(with_progress(iter_events(args.a, desc_from=desc, schema_sets=True), args.a, "diff"),
                      iter_events(args.b, desc_from=desc, schema_sets=True), desc_from=desc,
                      ignore=args.ignore, names=(args.a, args.b))
    sys.stdout.write(json.dumps(res.to_json(), indent=2) + "\n" if args.json else res.render(all=args.all))
    return 0 if res.same else 1
