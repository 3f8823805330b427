"""``vmig check STREAM``: does the stream parse to its last byte? Plus registered checkers.

Exit 0 when the decoder consumes the whole input and no checker reports anything; exit 1 with
a one-line report of the first problem otherwise (``FILE: offset …: section …: message``).

Checkers are explicit: a module listed in ``CHECKER_MODULES`` calls
``register_checker(factory, name)`` at import; ``factory(ctx)`` is called once per run and
returns a callable that sees every event (the last one is ``StreamEnd``) and returns an
iterable of problem strings or None.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmig.cli._common import add_desc_from_argument, add_stream_argument, description_from_args
from vmig.errors import StreamError

if TYPE_CHECKING:
    from vmig.stream.events import Event
    from vmig.stream.vmdesc import VmDescription

__all__ = [
    "CHECKER_MODULES",
    "CheckContext",
    "Checker",
    "register_checker",
    "registered_checkers",
    "run_checks",
    "register",
    "handler",
]

# Explicit list of modules that register checkers when imported (missing ones are skipped
# while their owners build them).
CHECKER_MODULES: tuple[str, ...] = ("vmig.checks.virtio_mem", "vmig.checks.destination")


@dataclass
class CheckContext:
    """What a checker factory gets: the input path and the --desc-from description."""

    path: str
    desc_from: VmDescription | None = None
    notes: dict = field(default_factory=dict)


EventCheck = Callable[["Event"], "Iterable[str] | None"]
Checker = Callable[[CheckContext], EventCheck]

_CHECKERS: list[tuple[str, Checker]] = []


def register_checker(factory: Checker, name: str | None = None) -> Checker:
    """Register a checker factory (usable as a decorator). Re-registering a name replaces it."""
    label = name or getattr(factory, "__name__", repr(factory))
    for i, (n, _) in enumerate(_CHECKERS):
        if n == label:
            _CHECKERS[i] = (label, factory)
            return factory
    _CHECKERS.append((label, factory))
    return factory


def registered_checkers() -> list[tuple[str, Checker]]:
    """(name, factory) pairs, after importing CHECKER_MODULES."""
    for mod in CHECKER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return list(_CHECKERS)


def run_checks(path: str, desc_from: VmDescription | None = None,
               notes: dict | None = None) -> list[str]:
    """Decode ``path`` feeding every registered checker; return the problems (first first).

    A StreamError ends the run and is the last problem reported.
    """
    ctx = CheckContext(path, desc_from, dict(notes or {}))
    checks = [(name, factory(ctx)) for name, factory in registered_checkers()]
    problems: list[str] = []
    try:
        from vmig.io.streams import iter_events
        from vmig.stream.events import RamRecords, VmDescriptionEvent
        from vmig.stream.vmdesc import check_trailer

        kept: list = []  # everything but RAM records: decoded again below as analyze does
        for ev in iter_events(path, desc_from=desc_from, schema_sets=True):
            if isinstance(ev, VmDescriptionEvent):
                # every command that reads the trailer must be able to: one bad byte in it is
                # a stream problem, even though its framing is intact
                try:
                    check_trailer(ev.raw, ev.offset)
                except StreamError as e:
                    raise e.with_path(path) from e
            if not isinstance(ev, RamRecords):
                kept.append(ev)
            for name, fn in checks:
                found = fn(ev)
                if found:
                    problems.extend(f"{name}: {p}" for p in found)
        if not problems:
            _decode_devices(kept, desc_from)
    except StreamError as e:
        problems.append(e.with_path(path).one_line())
    return problems


def _decode_devices(events: list, desc_from: VmDescription | None) -> None:
    """Decode every device section through the descriptions, as ``analyze`` and ``extract`` do,
    so that a stream ``check`` accepts never makes them fail. (``--format qemu`` may still
    refuse, by design, what QEMU's script cannot read: a section its trailer does not describe.)

    Raises:
        StreamError: a device section does not fit the description that covers it.
    """
    from vmig.vmstate import vmig_json

    vmig_json.analyze(events, desc_from=desc_from)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="check that a stream parses to the last byte",
                              description=__doc__)
    add_stream_argument(p)
    add_desc_from_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no output, exit code only")
    p.add_argument("--dest", action="append", default=[], metavar="SPEC",
                   help="virtio-mem destination config 'memaddr=…,max-size=…,block-size=…,node=…"
                        "[,dev=PATH]': report the load failure QEMU would print; repeatable")
    p.add_argument("--dest-capture", metavar="OTHER", default=None,
                   help="a capture of the destination VM's configuration: report the load failure "
                        "QEMU would print (machine type, RAM blocks, missing sections)")
    p.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    problems = run_checks(args.stream, description_from_args(args),
                          {"virtio_mem_dest": list(getattr(args, "dest", []) or []),
                           "dest_capture": getattr(args, "dest_capture", None)})
    if problems:
        if not args.quiet:
            extra = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            print(f"{problems[0]}{extra}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{args.stream}: ok")
    return 0
