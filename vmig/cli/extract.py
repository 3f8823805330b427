"""``vmig extract``: guest RAM as files — one sparse file per RAMBlock, state.json, desc.json.

``vmig extract STREAM -o DIR [--format vmig|qemu] [--physical FILE [--elf]] [--desc-from OTHER]``

* files are named from the block idstrs relative to DIR (``/rom@etc/acpi/tables`` →
  ``DIR/rom@etc/acpi/tables``); names that could escape DIR are mapped to safe names
  (vmig.analysis.extract.safe_relpath); zero pages are holes.
* ``--format vmig`` (default): ``state.json`` is vmig's analyze document, ``desc.json`` the raw
  trailer bytes; page contents as the destination would load them (XBZRLE and compressed pages
  decoded).
* ``--format qemu``: the same files, names and contents as QEMU 7.2's
  ``scripts/analyze-migration.py -x`` (its ``desc.json``/``state.json`` text; a zero fill
  never overwrites data, as in the script).
* ``--physical FILE``: a guest-physical image (main RAM by the machine's pc/q35 layout, each
  virtio-mem device's plugged blocks at its memaddr), raw and sparse, or an ELF core with
  ``--elf`` (one PT_LOAD per range).
* a mapped-ram file (QEMU 9.0+ ``file:`` migration with the ``mapped-ram`` capability, a regular
  file): the block files from the per-block bitmaps and fixed page offsets, and ``desc.json``.
"""

from __future__ import annotations

import argparse
from typing import Any

from vmig.cli._common import add_desc_from_argument, add_stream_argument
from vmig.cli.progress import Progress, input_size

HELP = """\
Write the guest RAM a stream carries as one sparse file per RAM block (zero pages stay holes),
with state.json (the decoded device state) and desc.json (the stream's description) beside
them. --format qemu writes the same files as QEMU's analyze-migration.py -x. --physical FILE
also writes the guest-physical memory image (pc/q35 layout, plugged virtio-mem blocks at their
addresses), with --elf as an ELF core. Files are written only inside DIR.

Examples:
  vmig extract guest.bin -o out/
  vmig extract guest.bin -o out/ --physical memory.elf --elf
"""


def register(subparsers: Any) -> None:
    """Add the ``extract`` subcommand."""
    p = subparsers.add_parser(
        "extract",
        help="write each RAMBlock as a sparse file (and state.json, desc.json)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_argument(p)
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="output directory")
    p.add_argument("--format", choices=("vmig", "qemu", "qemu-10.0"), default="vmig",
                   help="vmig (default), or the files of QEMU 7.2's (qemu) or 10.0's (qemu-10.0) "
                        "analyze-migration.py -x")
    p.add_argument("--physical", metavar="FILE", help="also write a guest-physical image")
    p.add_argument("--elf", action="store_true", help="write --physical as an ELF core")
    add_desc_from_argument(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from vmig.analysis.extract import extract
    from vmig.errors import UsageError
    from vmig.io.streams import MAPPED_RAM, input_kind, iter_events

    if args.elf and not args.physical:
        raise UsageError("--elf needs --physical FILE")
    if input_kind(args.stream) == MAPPED_RAM:
        import mmap

        from vmig.analysis.extract import extract_mapped_ram

        if args.format != "vmig" or args.physical:
            raise UsageError("a mapped-ram file supports only the default format, no --physical")
        with open(args.stream, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            extract_mapped_ram(m, args.output, inputs=[args.stream], name=args.stream)
        return 0
    inputs = [p for p in (args.stream, args.desc_from) if p is not None]
    with Progress(input_size(args.stream), "extract") as prog:
        # resident_lag: extract's writer thread copies pages up to 8 writes behind the decoder
        extract(iter_events(args.stream, desc_from=args.desc_from, schema_sets=True,
                            resident_lag=64 << 20), args.output, fmt=args.format,
                physical=args.physical, elf=args.elf, progress=prog, inputs=inputs)
    return 0
