"""``vmig check STREAM``: does the stream parse to its last byte? Plus the stream checkers.

Exit 0 when the decoder consumes the whole input and no checker reports anything; exit 1 with
a one-line report of the first problem otherwise (``FILE: offset …: section …: message``).
The checkers and the run are :mod:`vmig.checks.registry`'s; this module parses the arguments
and prints.
"""

from __future__ import annotations

import argparse
import sys

from vmig.cli._common import add_desc_from_argument, add_stream_argument, description_from_args

__all__ = ["register", "handler"]


HELP = """\
Read a migration stream to its last byte and run vmig's checks on it (virtio-mem: size equals
the plugged blocks, no page of an unplugged block, plugged blocks inside the usable region).
With --dest or --dest-capture, also predict whether a destination QEMU would load it, with the
lines QEMU would print. Exit status 0: ok; 1: the first problem is printed (file, offset,
section, what was expected).

Examples:
  vmig check guest.bin
  vmig check guest.bin --dest-capture destination-vm.bin
A postcopy return path (the destination's answers) is read with vmig rp instead.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="check that a stream parses to the last byte",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_argument(p)
    add_desc_from_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no output, exit code only")
    p.add_argument("--dest", action="append", default=[], metavar="SPEC",
                   help="virtio-mem destination config 'memaddr=…,max-size=…,block-size=…,node=…"
                        "[,dev=PATH]': report the load failure QEMU would print; repeatable")
    p.add_argument("--dest-capture", metavar="OTHER", default=None,
                   help="a capture of the destination VM's configuration: report the load failure "
                        "QEMU would print (configuration section, section footers, machine type, "
                        "postcopy, RAM blocks, missing sections, virtio-mem properties)")
    p.add_argument("--dest-postcopy-ram", choices=("on", "off"), default=None,
                   help="whether the destination enables the postcopy-ram capability (a capture "
                        "does not say; default: from OTHER's manifest OTHER.json if there is one)")
    p.set_defaults(handler=handler)


def _return_path_file(path: str) -> bool:
    """A regular file that starts with postcopy return-path messages, not a QEVM header (a pipe
    is not peeked at: its bytes would be gone for the check)."""
    import os

    if path == "-" or not os.path.isfile(path):
        return False
    from vmig.errors import VmigError
    from vmig.io.streams import open_source
    from vmig.stream.return_path import looks_like_return_path

    try:
        with open_source(path, use_mmap=False) as src:
            head = next(iter(src.chunks()), b"")
    except VmigError:
        return False
    return looks_like_return_path(bytes(head[:4096]))


def _dest_postcopy_ram(args: argparse.Namespace) -> bool | None:
    """--dest-postcopy-ram, else the ``capabilities`` of the destination capture's manifest
    (OTHER.json, as ``vmig migrate`` finds it), else unknown (None)."""
    flag = getattr(args, "dest_postcopy_ram", None)
    if flag is not None:
        return flag == "on"
    capture = getattr(args, "dest_capture", None)
    if not capture:
        return None
    from vmig.cli.migrate import manifest_for
    from vmig.errors import UsageError

    try:
        caps = manifest_for(capture, None).get("capabilities")
    except UsageError:
        return None
    return bool(caps.get("postcopy-ram", False)) if isinstance(caps, dict) else None


def handler(args: argparse.Namespace) -> int:
    if _return_path_file(args.stream):
        if not args.quiet:
            print(f"{args.stream}: a postcopy return path (destination to source), not a migration "
                  f"stream: read it with vmig rp {args.stream}", file=sys.stderr)
        return 1
    from vmig.checks.registry import run_checks
    from vmig.cli.progress import with_progress

    problems = run_checks(args.stream, description_from_args(args),
                          {"virtio_mem_dest": list(getattr(args, "dest", []) or []),
                           "dest_capture": getattr(args, "dest_capture", None),
                           "dest_postcopy_ram": _dest_postcopy_ram(args)},
                          watch=lambda events: with_progress(events, args.stream, "check"))
    if problems:
        if not args.quiet:
            extra = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            print(f"{problems[0]}{extra}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{args.stream}: ok")
    return 0
