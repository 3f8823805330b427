"""``vmig convert IN OUT [--compress none|lz4|zstd] [--snapshot NAME|ID]``: the plain QEMU stream
inside IN (a qcow2 snapshot's VM state, a libvirt save image, a compressed capture), written to
OUT uncompressed or compressed.

The bytes are copied as the input layer (:mod:`vmig.io.containers`) unwraps them, and decoded on
the way (the output is a stream vmig reads to its end, or nothing is written). ``--compress``
defaults to OUT's suffix (``.lz4``, ``.zst``; else none). The write is atomic: a temporary file in
OUT's folder, fsync, rename; IN is never overwritten.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from vmig.cli._common import add_stream_argument
from vmig.errors import StreamError, UsageError
from vmig.io.output import AtomicFile, same_file

__all__ = ["register", "handler"]

SUFFIXES = {".lz4": "lz4", ".zst": "zstd", ".zstd": "zstd"}

HELP = """\
Write the plain QEMU migration stream found inside IN to OUT: the VM state of a qcow2 savevm
snapshot, the stream inside a libvirt save image (raw or compressed), or a gzip/xz/bzip2/zstd/lz4
compressed capture. The stream is checked while it is copied; OUT appears only when the copy is
complete (nothing is left behind on an error). --compress chooses OUT's compression (default:
from its suffix, .lz4 or .zst, else none).

Examples:
  vmig convert guest.img.qcow2 guest.bin --snapshot snap-300m
  vmig convert saved-domain.img guest.bin.lz4
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="unwrap a container / recompress to a plain stream file",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_argument(p, "input", early_map=False)
    p.add_argument("output", metavar="OUT", help="output file (written atomically)")
    p.add_argument("--compress", choices=("none", "lz4", "zstd"), default=None,
                   help="compression of OUT (default: from its suffix, .lz4 / .zst, else none)")
    p.set_defaults(handler=handler)


def _compressor(kind: str, raw: Any) -> tuple[Any, Any]:
    """``(write, finish)`` for the chosen compression over the binary file ``raw``."""
    if kind == "lz4":
        import lz4.frame

        c = lz4.frame.LZ4FrameCompressor()
        raw.write(c.begin())
        return (lambda b: raw.write(c.compress(b))), (lambda: raw.write(c.flush()))
    if kind == "zstd":
        import zstandard

        z = zstandard.ZstdCompressor().compressobj()
        return (lambda b: raw.write(z.compress(b))), (lambda: raw.write(z.flush()))
    return raw.write, (lambda: None)


def handler(args: argparse.Namespace) -> int:
    src, dst = args.input, args.output
    if dst == "-" or src == dst or same_file(src, dst):
        raise UsageError(f"convert needs an OUT file other than the input (got {dst!r})")
    kind = args.compress or SUFFIXES.get(os.path.splitext(dst)[1], "none")
    from vmig.io.decoding import new_decoder
    from vmig.io.streams import open_source

    with open_source(src, use_mmap=False) as source, AtomicFile(dst, inputs=[src]) as raw:
        write, finish = _compressor(kind, raw)
        dec = new_decoder(name=source.name, ram_columns=False)  # checked while copied
        try:
            for chunk in source.chunks():
                dec.receive_data(chunk)
                for _ in dec.events():
                    pass
                write(chunk)
            dec.receive_data(b"")
            for _ in dec.events():
                pass
        except StreamError as e:
            e.with_path(source.name)
            raise
        finish()
    return 0
