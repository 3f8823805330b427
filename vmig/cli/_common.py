"""Shared helpers of the stream commands: the STREAM argument, ``--desc-from``, opening input.

STREAM is a path or ``-`` (stdin); ``*.lz4`` files are decompressed transparently. Library
errors propagate as ``VmigError`` (``vmig.cli.main`` prints one line and exits 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the codec (numpy, construct) is imported when a command runs, not before
    from vmig.stream.events import Event
    from vmig.stream.vmdesc import VmDescription

#: parser default naming the STREAM arguments ``vmig.cli.main`` maps early (see add_stream_argument)
EARLY_MAP = "_early_map"
#: parser default naming the STREAM arguments ``--snapshot`` applies to (see apply_input_options)
INPUT_ARGS = "_input_args"

__all__ = [
    "add_stream_argument",
    "add_snapshot_argument",
    "apply_input_options",
    "add_desc_from_argument",
    "description_from_args",
    "stream_events",
]


def add_stream_argument(parser: argparse.ArgumentParser, name: str = "stream",
                        help: str | None = None, *, early_map: bool = True,
                        optional: bool = False, input_options: bool = True) -> None:
    """Add the positional STREAM argument (a path, '-' for stdin; .lz4 transparent).

    With ``early_map`` (for commands that decode the file through a mapping), ``vmig.cli.main``
    maps the file and starts warming its page tables (:mod:`vmig.io.mapping`) before the
    command's handler imports the codec, so that work overlaps Python's start-up.
    """
    parser.add_argument(
        name, metavar=name.upper(), nargs="?" if optional else None,
        help=help or "migration stream file ('-' = stdin; *.lz4 is decompressed)",
    )
    if early_map:
        parser.set_defaults(**{EARLY_MAP: (*(parser.get_default(EARLY_MAP) or ()), name)})
    if input_options:  # --snapshot and --partial (off for inputs that are no migration stream)
        add_snapshot_argument(parser, name)


def add_snapshot_argument(parser: argparse.ArgumentParser, name: str = "stream") -> None:
    """Add ``--snapshot NAME|ID`` (the qcow2 internal snapshot whose VM state is read) and
    ``--partial`` (a cut input) once per parser, for the STREAM argument ``name``
    (:mod:`vmig.io.containers`, :func:`apply_input_options`)."""
    if "--snapshot" not in parser._option_string_actions:
        parser.add_argument("--snapshot", metavar="NAME|ID", default=None,
                            help="qcow2 image: read the VM state of this internal snapshot (name or ID; "
                                 "default: the only one)")
        parser.add_argument("--partial", action="store_true",
                            help="a cut input (truncated capture): report what arrived, say where and how "
                                 "it ends on stderr, exit 1")
    parser.set_defaults(**{INPUT_ARGS: (*(parser.get_default(INPUT_ARGS) or ()), name)})


def apply_input_options(args: argparse.Namespace) -> None:
    """Attach ``--snapshot`` and ``--partial`` to the STREAM arguments they apply to (as
    :class:`vmig.io.containers.InputPath`, which every reader passes down as a path)."""
    snapshot = getattr(args, "snapshot", None)
    partial = bool(getattr(args, "partial", False))
    if snapshot is None and not partial:
        return
    from vmig.io.containers import InputPath

    for dest in getattr(args, INPUT_ARGS, ()):
        value = getattr(args, dest, None)
        if isinstance(value, str):
            setattr(args, dest, InputPath(value, snapshot, partial=partial))


def input_cuts(args: argparse.Namespace) -> list[str]:
    """One line per ``--partial`` input that was cut: where and how it ends."""
    lines = []
    for dest in getattr(args, INPUT_ARGS, ()):
        cut = getattr(getattr(args, dest, None), "cut", None)
        if cut is not None:
            lines.append(f"partial input: {cut.one_line()}")
    return lines


def add_desc_from_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--desc-from OTHER``: take section layouts from another capture's vmdesc trailer."""
    parser.add_argument(
        "--desc-from", metavar="OTHER", default=None,
        help="use the vmdesc trailer of OTHER (a capture of the same VM configuration, or a "
             "vmdesc JSON file) for sections this stream does not describe (postcopy, no trailer)",
    )


def description_from_args(args: argparse.Namespace) -> VmDescription | None:
    """The ``--desc-from`` description, loaded once per invocation (None if not given)."""
    path = getattr(args, "desc_from", None)
    if path is None:
        return None
    cached = getattr(args, "_desc_from_loaded", None)
    if cached is None:
        from vmig.io.streams import load_description

        cached = load_description(path)
        args._desc_from_loaded = cached
    return cached


def stream_events(args: argparse.Namespace, attr: str = "stream", *, ram_columns: bool = True,
                  progress: str | None = None) -> Iterator[Event]:
    """Decode the stream named by ``args.<attr>`` with ``--desc-from`` applied.

    Args:
        ram_columns: False for commands that do not read the RAM batches' columns (the walk
            then only validates and counts records; see ``vmig.stream.ram.RamWalker``).
        progress: a label: draw a progress bar on a TTY stderr while decoding.
    """
    from vmig.io.streams import iter_events

    path = getattr(args, attr)
    events = iter_events(path, desc_from=description_from_args(args), schema_sets=True, ram_columns=ram_columns)
    if progress is None:
        return events
    from vmig.cli.progress import with_progress

    return with_progress(events, path, progress)
