"""``vmig rewrite IN OUT``: decode IN and write it back from the decoded events.

The output is built by the encoder (vmig.stream.encoder), so ``rewrite`` of a valid stream is
byte-identical to its input; it is the end-to-end check of ``encode(decode(b)) == b`` and the
base for tools that edit events. The write is atomic: a temporary file in OUT's directory,
then ``os.replace``. OUT may be ``-`` (stdout); an OUT ending in ``.lz4`` is lz4-compressed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from vmig.cli._common import add_desc_from_argument, add_stream_argument, stream_events
from vmig.errors import UsageError

__all__ = ["register", "handler", "same_file"]


HELP = """\
Decode a migration stream and write it back from what was decoded. The output is byte for byte
the input for every stream QEMU writes, so this checks that vmig reads every byte, and is the
base for edits. OUT is written atomically; - writes to standard output; a name ending in .lz4
is compressed.

Example:
  vmig rewrite guest.bin copy.bin && cmp guest.bin copy.bin
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rewrite", help="decode a stream and re-encode it to OUT",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_argument(p, "input")
    p.add_argument("output", metavar="OUT", help="output path ('-' = stdout; *.lz4 compresses)")
    add_desc_from_argument(p)
    p.set_defaults(handler=handler, stream_attr="input")


def same_file(a: str, b: str) -> bool:
    """True when paths a and b name the same file (or the same path)."""
    if a == "-" or b == "-":
        return False
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def handler(args: argparse.Namespace) -> int:
    src, dst = args.input, args.output
    if same_file(src, dst):
        raise UsageError(f"refusing to rewrite {src} onto itself; give another OUT")
    from vmig.stream.encoder import StreamEncoder

    enc = StreamEncoder()
    events = stream_events(args, "input")
    if dst == "-":
        out = sys.stdout.buffer
        for ev in events:
            out.write(enc.send_view(ev))
        out.flush()
        return 0
    directory = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=".vmig-rewrite-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            if dst.endswith(".lz4"):
                import lz4.frame

                with lz4.frame.LZ4FrameFile(raw, mode="wb") as out:
                    for ev in events:
                        out.write(enc.send_view(ev))
            else:
                for ev in events:
                    raw.write(enc.send_view(ev))
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return 0
