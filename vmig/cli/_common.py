"""Shared helpers of the stream commands: the STREAM argument, ``--desc-from``, opening input.

STREAM is a path or ``-`` (stdin); ``*.lz4`` files are decompressed transparently. Library
errors propagate as ``VmigError`` (``vmig.cli.main`` prints one line and exits 2).
"""

from __future__ import annotations

import argparse
from typing import Iterator

from vmig.stream.events import Event
from vmig.stream.io import iter_events, load_description
from vmig.stream.vmdesc import VmDescription

__all__ = [
    "add_stream_argument",
    "add_desc_from_argument",
    "description_from_args",
    "stream_events",
]


def add_stream_argument(parser: argparse.ArgumentParser, name: str = "stream",
                        help: str | None = None) -> None:
    """Add the positional STREAM argument (a path, '-' for stdin; .lz4 transparent)."""
    parser.add_argument(
        name, metavar=name.upper(),
        help=help or "migration stream file ('-' = stdin; *.lz4 is decompressed)",
    )


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
        cached = load_description(path)
        args._desc_from_loaded = cached
    return cached


def stream_events(args: argparse.Namespace, attr: str = "stream") -> Iterator[Event]:
    """Decode the stream named by ``args.<attr>`` with ``--desc-from`` applied."""
    return iter_events(getattr(args, attr), desc_from=description_from_args(args), schema_sets=True)
