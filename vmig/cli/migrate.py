"""``vmig migrate``: run a migration of a captured VM in the model and write the stream.

``vmig migrate --template CAPTURE -o OUT [--manifest JSON] [--postcopy] [--passes N] [--xbzrle]
[--seed N] [--writes N] [--virtio-mem DEV:requested-size=SIZE]... [--resize-during]
[--return-path FILE] [--qemu-version V]``

CAPTURE is a real capture (its device sections and RAM are the VM's); its QEMU command line
comes from the capture's manifest (``--manifest``, default: CAPTURE with ``.bin[.lz4]`` replaced
by ``.json``), whose ``qemu_version`` is used unless ``--qemu-version`` says otherwise. DEV is a
virtio-mem device as ``vmig info memory-devices`` shows it (PCI path ``0000:00:02.0``), its qdev
id or its index. The work is :func:`vmig.migration.vm.run`; this module parses, reads the
inputs, writes OUT atomically (a temporary file beside it, then a rename) and prints what moved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmig.errors import UsageError

__all__ = ["register", "handler", "manifest_for"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "migrate",
        help="migrate a captured VM in the model (precopy or postcopy) and write the stream",
        description="Rebuild the VM of a real capture (RAM, device sections, virtio-mem device "
                    "models and their Linux guest driver), run a migration with guest writes and "
                    "virtio-mem resizes, and write the stream QEMU would have written. The VM's "
                    "command line comes from the capture's manifest (CAPTURE.json).\n\n"
                    "Examples:\n"
                    "  vmig migrate --template fixtures/pc-guest.bin.lz4 -o out.bin --writes 4 \\\n"
                    "      --virtio-mem vm0:requested-size=704M --virtio-mem vm0:requested-size=628M\n"
                    "  vmig migrate --template fixtures/pc-guest.bin.lz4 -o post.bin --postcopy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--template", required=True, metavar="CAPTURE", help="a real capture of the VM")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the stream to write")
    p.add_argument("--manifest", metavar="JSON", help="the capture's manifest (argv, qemu_version); "
                   "default: CAPTURE's .json")
    p.add_argument("--qemu-version", metavar="V", help="the QEMU version that wrote CAPTURE")
    p.add_argument("--postcopy", action="store_true", help="switch to postcopy after the passes")
    p.add_argument("--passes", type=int, default=2, metavar="N", help="precopy passes (default 2)")
    p.add_argument("--xbzrle", action="store_true", help="XBZRLE for re-sent pages")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the guest writes")
    p.add_argument("--writes", type=int, default=0, metavar="N",
                   help="guest writes per pass into plugged memory")
    p.add_argument("--virtio-mem", action="append", default=[], metavar="DEV:requested-size=SIZE",
                   help="set a device's requested-size (repeatable); the guest driver follows")
    p.add_argument("--resize-during", action="store_true",
                   help="apply --virtio-mem after the first pass instead of before the migration")
    p.add_argument("--return-path", metavar="FILE",
                   help="postcopy: page requests from these return-path bytes instead of the "
                        "simulated guest's touches")
    p.set_defaults(handler=handler)


def manifest_for(capture: str, explicit: str | None) -> dict:
    """The capture's manifest (``argv``; optional ``qemu_version``).

    Raises:
        UsageError: no manifest, not JSON, or no ``argv`` list in it.
    """
    if explicit is not None:
        path = Path(explicit)
    else:
        name = Path(capture).name
        for suffix in (".bin.lz4", ".bin", ".lz4"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        path = Path(capture).with_name(name + ".json")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no manifest with the VM's QEMU command line (give --manifest JSON "
                         "with an \"argv\" list)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read the manifest: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("argv"), list) \
            or not all(isinstance(a, str) for a in doc["argv"]):
        raise UsageError(f"{path}: offset 0: expected a JSON object with an \"argv\" list of strings")
    return doc


def _resize(text: str) -> tuple[str, int]:
    from vmig.units import parse_size

    dev, sep, rest = text.rpartition(":")
    key, eq, value = rest.partition("=")
    if not sep or not dev or key != "requested-size" or not eq:
        raise UsageError(f"--virtio-mem {text!r}: expected DEV:requested-size=SIZE")
    return dev, parse_size(value, "requested-size", error=UsageError)


def handler(args: argparse.Namespace) -> int:
    from vmig.migration.vm import Plan, open_capture, run

    man = manifest_for(args.template, args.manifest)
    resizes = [_resize(t) for t in args.virtio_mem]
    rp = None
    if args.return_path is not None:
        if not args.postcopy:
            raise UsageError("--return-path needs --postcopy")
        try:
            rp = Path(args.return_path).read_bytes()
        except OSError as e:
            raise UsageError(f"{args.return_path}: {e.strerror}") from None
    vm = open_capture(args.template, man["argv"], postcopy=args.postcopy, xbzrle=args.xbzrle,
                           qemu_version=args.qemu_version or man.get("qemu_version"))
    plan = Plan(postcopy=args.postcopy, passes=args.passes, seed=args.seed, writes=args.writes,
                resizes=resizes, resize_during=args.resize_during, return_path=rp)
    out = run(vm, plan)
    from vmig.io.output import AtomicFile

    with AtomicFile(args.output, inputs=[args.template]) as fh:
        fh.write(out.stream)
    sys.stdout.write(f"QEMU {vm.qemu_version}, {'postcopy' if args.postcopy else 'precopy'}\n")
    for line in out.summary():
        sys.stdout.write(line + "\n")
    return 0
