"""The checkers of ``vmig check`` and the run that feeds them a stream.

An explicit table (:data:`CHECKERS`): each entry is a name and a factory; ``factory(ctx)`` is
called once per run with a :class:`CheckContext` and returns a callable that sees every decoder
event (the last one is ``StreamEnd``) and returns an iterable of problem strings or None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from vmig.checks import destination, virtio_mem
from vmig.errors import StreamError
from vmig.records import field, record

if TYPE_CHECKING:
    from vmig.stream.events import Event
    from vmig.stream.vmdesc import VmDescription

__all__ = ["CHECKERS", "CheckContext", "Checker", "run_checks"]


@record
class CheckContext:
    """What a checker factory gets: the input path, the --desc-from description and the
    checker-specific options (``notes``: ``virtio_mem_dest``, ``dest_capture``)."""

    path: str
    desc_from: VmDescription | None = None
    notes: dict = field(default_factory=dict)


EventCheck = Callable[["Event"], "Iterable[str] | None"]
Checker = Callable[[CheckContext], EventCheck]

#: (name, factory) of every checker, in reporting order.
CHECKERS: tuple[tuple[str, Checker], ...] = (
    ("virtio-mem", virtio_mem.checker_factory),
    ("destination", destination.checker_factory),
)


def run_checks(path: str, desc_from: VmDescription | None = None,
               notes: dict | None = None,
               watch: Callable[[Iterator[Event]], Iterable[Event]] | None = None) -> list[str]:
    """Decode ``path`` feeding every checker of :data:`CHECKERS`; return the problems (first first).

    A StreamError ends the run and is the last problem reported. ``watch`` wraps the event
    iterator (the command line draws its progress bar there).
    """
    from vmig.io.streams import iter_events

    ctx = CheckContext(path, desc_from, dict(notes or {}))
    checks = [(name, factory(ctx)) for name, factory in CHECKERS]
    problems: list[str] = []
    try:
        # checkers read RAM columns only for device blocks (built on demand): the walk
        # validates and counts
        from vmig.stream.events import RamRecords, VmDescriptionEvent
        from vmig.stream.vmdesc import check_trailer

        kept: list[Event] = []  # everything but RAM records: decoded again below as analyze does
        events = iter_events(path, desc_from=desc_from, schema_sets=True, ram_columns=False)
        for ev in (watch(events) if watch is not None else events):
            if isinstance(ev, VmDescriptionEvent):
                # every command that reads the trailer must be able to: one bad byte in it is a
                # stream problem, even though its framing is intact
                check_trailer(ev.raw, ev.offset)
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


def _decode_devices(events: list[Event], desc_from: VmDescription | None) -> None:
    """Decode every device section through the descriptions, as ``analyze`` and ``extract`` do,
    so that a stream ``check`` accepts never makes them fail (``analyze --format qemu`` may still
    refuse, by design, what QEMU's script cannot read: a section its trailer does not describe).

    Raises:
        StreamError: a device section does not fit the description that covers it.
    """
    from vmig.vmstate import vmig_json

    vmig_json.analyze(events, desc_from=desc_from)
