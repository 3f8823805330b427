"""``vmig analyze``: the decoded device state of a stream, as JSON.

A drop-in for QEMU's scripts/analyze-migration.py: the same flags (-f FILE, -d state|desc, -m,
-x) and, with --format qemu (QEMU 7.2's script), qemu-7.2 or qemu-10.0, the same output byte for
byte. The default format is vmig's own JSON: real numbers, every section (postcopy and
trailer-less streams too), virtio devices decoded.

Examples:
  vmig analyze guest.bin                      vmig's JSON
  vmig analyze -f guest.bin -d desc           the stream's description, as the script prints it
  vmig analyze guest.bin --format qemu-10.0   what QEMU 10.0's analyze-migration.py prints
  vmig analyze postcopy.bin --desc-from precopy.bin

Streams without a description of their own (postcopy, suppress-vmdesc) are read with vmig's
bundled descriptions of the stream's machine type, or with --desc-from: another capture of the
same VM configuration (or its description as a JSON file). STREAM is a path, - for stdin, or an
.lz4 file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from vmig.cli._common import (
    add_desc_from_argument,
    add_stream_argument,
    apply_input_options,
    description_from_args,
    stream_events,
)
from vmig.errors import SchemaError, UsageError

# --format value -> analyze-migration.py version reproduced ("qemu" = QEMU 7.2's script)
QEMU_FORMATS = {"qemu": "7.2", "qemu-7.2": "7.2", "qemu-10.0": "10.0"}


def register(subparsers: Any) -> None:
    """Add the ``analyze`` subcommand."""
    p = subparsers.add_parser(
        "analyze",
        help="decoded device state as JSON (a drop-in for QEMU's analyze-migration.py)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_argument(p, optional=True)
    p.add_argument("-f", "--file", metavar="FILE", default=None,
                   help="the stream, as analyze-migration.py takes it (instead of STREAM)")
    p.add_argument("--format", choices=("vmig", *QEMU_FORMATS), default="vmig",
                   help="vmig's JSON (default), or the output of QEMU 7.2's (qemu, qemu-7.2) or "
                        "10.0's (qemu-10.0) analyze-migration.py")
    p.add_argument("-d", "--dump", choices=("state", "desc"), default="state",
                   help="what to print: the decoded state (default) or the description")
    p.add_argument("-m", "--memory", action="store_true",
                   help="also print every RAM page (as analyze-migration.py -m; implies a qemu format)")
    p.add_argument("-x", "--extract", action="store_true",
                   help="write desc.json, state.json and one file per RAM block into the current "
                        "folder, as analyze-migration.py -x (same as vmig extract -o . --format qemu; "
                        "with --format qemu-10.0, as QEMU 10.0's script)")
    add_desc_from_argument(p)
    p.set_defaults(handler=handle)


def _stream_path(args: argparse.Namespace) -> str:
    if args.file is not None and args.stream is not None:
        raise UsageError("give the stream once: STREAM or -f FILE")
    if args.file is not None:
        args.stream = args.file
        apply_input_options(args)  # --snapshot / --partial apply to -f FILE too
    if args.stream is None:
        raise UsageError("no stream: give STREAM or -f FILE")
    return args.stream  # a str, or the InputPath that carries --snapshot / --partial


def handle(args: argparse.Namespace) -> int:
    """Run ``vmig analyze``; returns the exit code."""
    from vmig.cli.progress import with_progress
    from vmig.io.streams import iter_events, load_description
    from vmig.vmstate import qemu_json, vmig_json

    path = _stream_path(args)
    desc_from = description_from_args(args)
    if args.extract:
        from vmig.analysis.extract import extract

        fmt = "qemu-10.0" if args.format == "qemu-10.0" else "qemu"
        extract(iter_events(path, desc_from=desc_from, schema_sets=True), os.getcwd(), fmt=fmt)
        return 0
    if args.dump == "desc":
        try:
            chosen = load_description(path)
        except (SchemaError, UsageError):
            if desc_from is None:
                raise
            chosen = desc_from
        sys.stdout.write(qemu_json.dumps(qemu_json.desc_dict(chosen.raw)))
        return 0

    fmt = args.format
    if args.memory and fmt == "vmig":
        fmt = "qemu"  # -m exists only in the script's output
    if fmt in QEMU_FORMATS:
        # analyze-migration.py needs the trailer: no bundled-schema fallback here
        events = stream_events(args, ram_columns=args.memory, progress="analyze")
        text = qemu_json.dumps(qemu_json.state_dict(events, None, fallback=desc_from,
                                                    dialect=QEMU_FORMATS[fmt], memory=args.memory))
    else:
        # vmig's view also walks sections nothing describes with the bundled schema set of
        # the stream's machine type (each section says which description decoded it)
        events = with_progress(iter_events(path, desc_from=desc_from, schema_sets=True, ram_columns=False),
                               path, "analyze")
        text = json.dumps(vmig_json.analyze(events, desc_from=desc_from), indent=2) + "\n"
    sys.stdout.write(text)
    return 0
