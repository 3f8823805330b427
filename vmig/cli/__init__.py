"""The ``vmig`` command line: a thin layer over the library.

Each command lives in its own module under ``vmig.cli`` and exposes ``register(subparsers)``;
the list of command modules below is the explicit registry (nothing is discovered by scanning).
``main(argv)`` returns the exit code: 0 success, 1 a finding (``check``), 2 any ``VmigError``
(printed as one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from vmig.errors import VmigError

# vmig does no linear algebra: keep OpenBLAS from starting a thread pool when numpy is imported
# by a command module (measured: 0.2 s of every command's start-up on a 2-core machine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Explicit registry: module name under vmig.cli (a missing module is a packaging bug and fails loudly).
COMMAND_MODULES: tuple[str, ...] = (
    "sections",
    "analyze",
    "rewrite",
    "check",
    "ram",
    "extract",
    "info",
    "demo",
    "rp",
    "diff",
    "convert",
    "migrate",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``vmig`` parser with every command, or only command ``only`` (start-up speed: a
    command module may import heavy dependencies, and one invocation runs one command)."""
    parser = argparse.ArgumentParser(
        prog="vmig",
        description="Read, check, analyze and rewrite QEMU migration streams; model virtio-mem.",
        epilog="Run vmig COMMAND --help for what a command does, with examples.",
    )
    from vmig import __version__

    parser.add_argument("--version", action="version", version=f"vmig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES if only is None else (only,):
        importlib.import_module(f"vmig.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command is the first argument (the top-level parser has no options but -h): then
    # only its module is imported. Anything else (--help, a typo) gets the full parser.
    only = argv[0] if argv and argv[0] in COMMAND_MODULES else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    from vmig.io import mapping  # light: no numpy/construct

    for dest in getattr(args, "_early_map", ()):
        if getattr(args, dest, None) is not None:  # optional STREAM given another way (-f)
            mapping.open_early(getattr(args, dest))  # warm while the handler imports the codec
    try:
        from vmig.cli._common import apply_input_options, input_cuts

        apply_input_options(args)
        rc = int(args.handler(args) or 0)
        cuts = input_cuts(args)
        for line in cuts:
            print(f"vmig {args.command}: {line}", file=sys.stderr)
        return max(rc, 1) if cuts else rc
    except VmigError as e:
        print(f"vmig {args.command}: {e.one_line()}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    finally:
        mapping.close_early()


def entry_point() -> None:
    sys.exit(main())
