"""``vmig info memory-devices STREAM``: the virtio-mem devices a migration stream carries.

Prints what QEMU 7.2's HMP ``info memory-devices`` would print on the destination after loading
the stream (monitor/hmp-cmds.c ``hmp_info_memory_devices``), or with ``--json`` the QMP
``query-memory-devices`` list, or with ``--map`` a picture of the plugged blocks. The qdev id is
not in the stream; the device path (``0000:00:02.0``) stands in for it unless ``--id PATH=ID``.
Streams without a vmdesc trailer (postcopy, suppress-vmdesc) are walked with vmig's bundled
schema sets for the machine type, or with ``--desc-from``.
"""

from __future__ import annotations

import argparse
import json
import sys

from vmig.cli._common import add_desc_from_argument, add_stream_argument, stream_events
from vmig.errors import UsageError

HELP = """\
Show the virtio-mem devices a stream carries as QEMU's monitor shows them on the destination
after loading it: the text of "info memory-devices", or with --json the list of
query-memory-devices, or with --map a picture of the plugged blocks. The device id given with
-device ...,id=ID is not in the stream: the device's PCI address stands in for it unless
--id PCI-ADDRESS=ID names it.

Examples:
  vmig info memory-devices guest.bin
  vmig info memory-devices guest.bin --id 0000:00:02.0=vm0 --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info`` and its topics to the CLI."""
    p = subparsers.add_parser("info", help="show device information carried by a stream",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    topics = p.add_subparsers(dest="topic", metavar="TOPIC")
    topics.required = True
    m = topics.add_parser(
        "memory-devices",
        help="virtio-mem devices as QEMU's 'info memory-devices' / query-memory-devices shows them",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_argument(m)
    m.add_argument("--json", action="store_true", help="query-memory-devices JSON instead of HMP text")
    m.add_argument("--map", action="store_true", help="draw the plugged blocks of each device")
    m.add_argument("--width", type=int, default=64, help="cells per line for --map (default 64)")
    m.add_argument("--id", action="append", default=[], metavar="PATH=ID",
                   help="show device PATH (e.g. 0000:00:02.0) with qdev id ID; repeatable")
    add_desc_from_argument(m)
    m.set_defaults(handler=handle_memory_devices)


def handle_memory_devices(args: argparse.Namespace) -> int:
    """Print the stream's virtio-mem devices; returns the exit code."""
    from vmig.analysis.virtio_mem import MemoryDeviceCollector, block_map, hmp_text, parse_id_map, qmp_list

    if args.width < 8:
        raise UsageError("--width must be at least 8")
    col = MemoryDeviceCollector(keep_pages=False)
    col.feed(stream_events(args))
    devices = col.result()
    incomplete = [d.path for d in devices if not d.complete]
    if incomplete:
        raise UsageError(
            f"{args.stream}: the stream has only part of the state of {', '.join(incomplete)} "
            "(early section without the device section: a cut stream?)"
        )
    ids = parse_id_map(args.id, known=[d.path for d in devices])
    out = sys.stdout
    if args.json:
        out.write(json.dumps(qmp_list(devices, ids), indent=2) + "\n")
    elif args.map:
        for i, d in enumerate(devices):
            if i:
                out.write("\n")
            out.write(block_map(d, width=args.width))
    else:
        out.write(hmp_text(devices, ids))
    return 0
