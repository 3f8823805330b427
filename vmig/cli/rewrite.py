"""``vmig rewrite IN OUT``: decode IN and write it back from the decoded events.

The output is built by the encoder (vmig.stream.encoder), so ``rewrite`` of a valid stream is
byte-identical to its input; it is the end-to-end check of ``encode(decode(b)) == b`` and the
base for tools that edit events. The write is atomic (vmig.io.output.AtomicFile): a temporary
file in OUT's directory, every write checked, fsync, then a rename; on any failure nothing is
left behind. OUT may not be a directory or the input. OUT may be ``-`` (stdout); an OUT ending in ``.lz4`` is lz4-compressed.
"""

from __future__ import annotations

import argparse
import sys

from vmig.cli._common import add_desc_from_argument, add_stream_argument, stream_events
from vmig.errors import UsageError
from vmig.io.output import AtomicFile, same_file

__all__ = ["register", "handler", "same_file"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rewrite", help="decode a stream and re-encode it to OUT",
                              description=__doc__)
    add_stream_argument(p, "input")
    p.add_argument("output", metavar="OUT", help="output path ('-' = stdout; *.lz4 compresses)")
    add_desc_from_argument(p)
    p.set_defaults(handler=handler, stream_attr="input")


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
    with AtomicFile(dst, inputs=[p for p in (src, args.desc_from) if p is not None]) as raw:
        if dst.endswith(".lz4"):
            import lz4.frame

            with lz4.frame.LZ4FrameFile(raw, mode="wb") as out:
                for ev in events:
                    out.write(enc.send_view(ev))
        else:
            for ev in events:
                raw.write(enc.send_view(ev))
    return 0
