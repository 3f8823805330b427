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

__all__ = [
    "add_stream_argument",
    "add_desc_from_argument",
    "description_from_args",
    "stream_events",
]


def add_stream_argument(parser: argparse.ArgumentParser, name: str = "stream",
                        help: str | None = None, *, early_map: bool = True,
                        optional: bool = False) -> None:
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


def stream_events(args: argparse.Namespace, attr: str = "stream") -> Iterator[Event]:
    """Decode the stream named by ``args.<attr>`` with ``--desc-from`` applied."""
    from vmig.io.streams import iter_events

    return iter_events(getattr(args, attr), desc_from=description_from_args(args), schema_sets=True)
