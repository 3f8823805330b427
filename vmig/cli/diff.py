"""``vmig diff A B``: what differs between two migration streams.

``vmig diff A B [--json] [--desc-from OTHER]``

Compares the configuration record, the sections present in each stream, every device
section's decoded fields (the streams' own trailers, ``--desc-from``, or vmig's bundled schema
sets; undescribed payloads as bytes) and the final guest RAM page by page (as a destination
would hold it: last write wins, never-sent pages read as zero). Exit status: 0 same, 1
different, 2 error (as diff(1)).
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
    add_desc_from_argument(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from vmig.analysis.diff import diff_events
    from vmig.cli.progress import with_progress
    from vmig.io.streams import iter_events

    desc = description_from_args(args)
    res = diff_events(with_progress(iter_events(args.a, desc_from=desc, schema_sets=True), args.a, "diff"),
                      iter_events(args.b, desc_from=desc, schema_sets=True), desc_from=desc)
    sys.stdout.write(json.dumps(res.to_json(), indent=2) + "\n" if args.json else res.render())
    return 0 if res.same else 1
