"""``vmig analyze``: decoded device state and RAM summary of a stream, as JSON.

``vmig analyze STREAM [--format qemu|vmig] [-d state|desc] [--desc-from OTHER]``

* ``--format vmig`` (default): vmig's own document (:mod:`vmig.vmstate.vmig_json`).
* ``--format qemu``: exactly what QEMU 7.2's ``scripts/analyze-migration.py -f STREAM`` prints
  (:mod:`vmig.vmstate.qemu_json`), also for streams that script cannot read.
* ``-d desc``: print the vmdesc description instead (the stream's own trailer, else the
  ``--desc-from`` one), as analyze-migration.py ``-d desc`` prints it (both formats).
* ``--desc-from OTHER``: a capture of the same configuration (or a bare vmdesc JSON file) whose
  trailer describes sections the stream itself does not (postcopy, suppress-vmdesc...).
  Without it, ``--format vmig`` falls back to vmig's bundled schema set for the stream's machine
  type (``vmig.vmstate.machines``); every section names the description it used.

STREAM is a path, ``-`` for stdin, or a ``.lz4`` frame file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmig.cli._common import (
    add_desc_from_argument,
    add_stream_argument,
    description_from_args,
    stream_events,
)
from vmig.errors import SchemaError, UsageError


def register(subparsers: Any) -> None:
    """Add the ``analyze`` subcommand."""
    p = subparsers.add_parser(
        "analyze",
        help="decoded device state and RAM summary as JSON (analyze-migration.py compatible)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_argument(p)
    p.add_argument("--format", choices=("vmig", "qemu"), default="vmig",
                   help="vmig's JSON (default) or analyze-migration.py's JSON")
    p.add_argument("-d", "--dump", choices=("state", "desc"), default="state",
                   help="what to print: decoded state (default) or the description")
    add_desc_from_argument(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run ``vmig analyze``; returns the exit code."""
    from vmig.cli.progress import with_progress
    from vmig.io.streams import iter_events, load_description
    from vmig.vmstate import qemu_json, vmig_json

    desc_from = description_from_args(args)
    if args.dump == "desc":
        try:
            chosen = load_description(args.stream)
        except (SchemaError, UsageError):
            if desc_from is None:
                raise
            chosen = desc_from
        sys.stdout.write(qemu_json.dumps(qemu_json.desc_dict(chosen.raw)))
        return 0

    if args.format == "qemu":
        # analyze-migration.py needs the trailer: no bundled-schema fallback here
        events = stream_events(args, ram_columns=False, progress="analyze")
        text = qemu_json.dumps(qemu_json.state_dict(events, None, fallback=desc_from))
    else:
        # vmig's view also walks sections nothing describes with the bundled schema set of
        # the stream's machine type (each section says which description decoded it)
        events = with_progress(iter_events(args.stream, desc_from=desc_from, schema_sets=True), args.stream,
                               "analyze")
        text = json.dumps(vmig_json.analyze(events, desc_from=desc_from), indent=2) + "\n"
    sys.stdout.write(text)
    return 0
