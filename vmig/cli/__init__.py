"""The ``vmig`` command line: a thin layer over the library.

Each command lives in its own module under ``vmig.cli`` and exposes ``register(subparsers)``;
the list of command modules below is the explicit registry (nothing is discovered by scanning).
``main(argv)`` returns the exit code (:data:`EXIT_CODES`): 0 success; 1 a finding (``check``,
``diff``) or a partial result; 2 bad input (any ``VmigError``) or an I/O error (``OSError``:
ENOSPC, EMFILE, EPIPE, EIO…), printed as one line on stderr naming the file; 130 interrupted
(Ctrl-C, after the command's clean-up ran); 3 an internal error (a bug: one line with the
exception and a request to report it; ``VMIG_DEBUG=1`` also prints the traceback). Never a bare
traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import types
from collections.abc import Sequence

from vmig.errors import StreamError, VmigError, printable

# vmig does no linear algebra: keep OpenBLAS from starting a thread pool when numpy is imported
# by a command module (measured: 0.2 s of every command's start-up on a 2-core machine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

#: exit codes of every command (documented in README's Commands section)
EXIT_OK, EXIT_FINDING, EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FINDING: "a finding (check, diff) or a partial result",
    EXIT_ERROR: "bad input, bad usage or an I/O error (one line on stderr)",
    EXIT_INTERNAL: "internal error (a bug; one line asking for a report)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); partial outputs removed",
}

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
    real_stdout = sys.stdout
    sys.stdout = _NamedStream(real_stdout, "stdout")  # type: ignore[assignment]
    try:
        from vmig.cli._common import apply_input_options, input_cuts

        apply_input_options(args)
        rc = int(args.handler(args) or 0)
        sys.stdout.flush()  # a full device or a closed pipe on stdout is reported here, not at exit
        cuts = input_cuts(args)
        for line in cuts:
            print(f"vmig {args.command}: {line}", file=sys.stderr)
        return max(rc, 1) if cuts else rc
    except VmigError as e:
        print(f"vmig {args.command}: {_with_input(e, args).one_line()}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"vmig {args.command}: {printable(_os_error_line(e))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"vmig {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place a bug becomes a line, not a traceback
        return _internal(args.command, e)
    finally:
        sys.stdout = real_stdout
        mapping.close_early()


def _with_input(e: VmigError, args: argparse.Namespace) -> VmigError:
    """A stream error raised without a file name (by a consumer of the events, not the decoder)
    names the command's input when the command reads one stream."""
    from vmig.cli._common import INPUT_ARGS

    if isinstance(e, StreamError) and e.path is None:
        inputs = [v for v in (getattr(args, d, None) for d in getattr(args, INPUT_ARGS, ())) if isinstance(v, str)]
        if len(inputs) == 1:
            e.with_path("stdin" if inputs[0] == "-" else inputs[0])
    return e


def _os_error_line(e: OSError) -> str:
    """One line for an I/O error: the file(s) it concerns and the system's words."""
    import errno

    what = e.strerror or str(e)
    if e.errno is not None:
        what = f"{what} ({errno.errorcode.get(e.errno, e.errno)})"
    names = [os.fsdecode(n) for n in (e.filename, e.filename2) if n is not None]
    if names == ["stdout"]:
        _silence_stdout()
    if names:
        return " -> ".join(names) + f": {what}"
    return f"I/O error: {what}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter does not report the same failure again
    when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _NamedStream:
    """stdout for a command: an ``OSError`` from writing it names ``stdout`` (a closed pipe, a
    full device), so that it is reported like any other file; text written shows characters
    that are not printable escaped (a name the stream chose cannot break a line or drive the
    terminal; vmig's own text has only line breaks, its JSON escapes them itself)."""

    def __init__(self, inner: object, name: str) -> None:
        self._inner = inner
        self._name = name

    def _call(self, fn: object, *a: object) -> object:
        try:
            return fn(*a)  # type: ignore[operator]
        except OSError as e:
            if e.filename is None:
                e.filename = self._name
            raise

    def write(self, data: object) -> object:
        if isinstance(data, str):
            data = printable(data, "\n")
        return self._call(self._inner.write, data)  # type: ignore[attr-defined]

    def flush(self) -> object:
        return self._call(self._inner.flush)  # type: ignore[attr-defined]

    @property
    def buffer(self) -> _NamedStream:
        return _NamedStream(self._inner.buffer, self._name)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def _internal(command: str, e: BaseException) -> int:
    if os.environ.get("VMIG_DEBUG") == "1":
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    msg = printable(" ".join(str(e).split()))
    if len(msg) > 300:
        msg = msg[:300] + "..."
    print(f"vmig {command}: internal error: {type(e).__name__}: {msg} "
          "(please report this with the input that caused it)", file=sys.stderr)
    return EXIT_INTERNAL


#: the collector's first-generation threshold for a command run: decoding allocates many
#: short-lived objects and few cycles, so collecting every 700 allocations (the default) costs a
#: tenth of a short command's time for nothing
GC_THRESHOLD0 = 100_000


#: standard modules that ``construct`` imports when it is imported (for its debugger, its
#: compiler's cache names, its ``Checksum`` and ``Pickled`` fields) but that a command run only
#: reaches for a rare feature or an internal error. A command run gets placeholders for them
#: that import the real module on first attribute use. Measured: 12-16 ms of the ~160 ms of
#: ``vmig analyze`` on a booted guest's capture (pdb alone pulls in inspect, dis, ast, tokenize).
DEFERRED_MODULES: tuple[str, ...] = ("pdb", "inspect", "traceback", "hashlib", "pickle")


class _DeferredModule(types.ModuleType):
    """Stands in (in ``sys.modules``) for a module not imported yet; the first attribute looked
    up on it imports the real module, which replaces it there and fills its namespace (so
    references taken earlier, ``import pdb`` at the top of another module, keep working).

    ``importlib.util.LazyLoader`` does not do here: with Python 3.11, a later ``import pdb`` of
    a lazy module already reads its ``__spec__`` and so runs it."""

    def __getattr__(self, attr: str) -> object:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def defer_modules(names: Sequence[str] = DEFERRED_MODULES) -> None:
    """Put a :class:`_DeferredModule` in ``sys.modules`` for each of ``names`` not imported yet."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = _DeferredModule(name)


def entry_point() -> None:
    gc.set_threshold(GC_THRESHOLD0, *gc.get_threshold()[1:])
    defer_modules()
    sys.exit(main())
