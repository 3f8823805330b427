"""``vmig rewrite IN OUT``: decode IN and write it back from the decoded events.

The output is built by the encoder (vmig.stream.encoder), so ``rewrite`` of a valid stream is
byte-identical to its input; it is the end-to-end check of ``encode(decode(b)) == b`` and the
base for tools that edit events. The write is atomic (vmig.io.output.AtomicFile): a temporary
file in OUT's directory, every write checked, fsync, then a rename; on any failure nothing is
left behind. OUT may not be a directory or the input. OUT may be ``-`` (stdout); an OUT ending in ``.lz4`` is lz4-compressed.

``vmig rewrite IMAGE.qcow2 OUT.qcow2 --snapshot NAME``: a copy of the qcow2 image whose snapshot
VM state is the re-encoded stream (QEMU's ``loadvm`` restores it); the VM state is written in
place over the snapshot's own clusters in the copy, so it must keep its length. IMAGE is never
modified.

Edits (applied in the order given, by :mod:`vmig.analysis.edit`): ``--set SECTION.PATH=VALUE``,
``--virtio-mem DEV:requested-size=SIZE`` / ``DEV:plugged=RANGES`` (through the device model),
``--drop SECTION``. An edit QEMU would reject is refused with one line naming why.
"""

from __future__ import annotations

import argparse
import os
import sys

from vmig.cli._common import add_desc_from_argument, add_stream_argument, stream_events
from vmig.errors import UsageError
from vmig.io.output import AtomicFile, pwrite_all, same_file

__all__ = ["register", "handler"]


HELP = """\
Decode a migration stream and write it back from what was decoded. The output is byte for byte
the input for every stream QEMU writes, so this checks that vmig reads every byte, and is the
base for edits. OUT is written atomically; - writes to standard output; a name ending in .lz4
is compressed.

Edits, applied in the order given (the stream is read into memory):
  --set SECTION.PATH=VALUE   a field, with SECTION and PATH as 'vmig analyze' prints them
                             (SECTION: an idstr or a unique end of one, 'IDSTR (N)' for
                             instance N as QEMU's analyze-migration.py names it); VALUE an integer
                             (decimal or 0x hex), true/false or text, as the field needs
  --virtio-mem DEV:requested-size=SIZE   the device's requested-size (K/M/G suffixes)
  --virtio-mem DEV:plugged=RANGES        exactly these blocks plugged (0-127,200-255);
                             size follows (plugged blocks x block-size)
                             DEV: the device path 'vmig info memory-devices' shows, or its index
                             (may be left out with one device: --virtio-mem requested-size=1G)
  --drop SECTION             remove a device section (and its entry in the trailer)
Edits that QEMU would refuse, or that the device could never be in, are refused.

Examples:
  vmig rewrite guest.bin copy.bin && cmp guest.bin copy.bin
  vmig rewrite guest.bin big.bin --virtio-mem 0000:00:02.0:requested-size=512M
  vmig rewrite guest.bin edited.bin --set mc146818rtc.cmos_index=0x0a --drop pcspk
  vmig rewrite vm.qcow2 out.qcow2 --snapshot s1 --virtio-mem 0:plugged=0-63
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rewrite", help="decode a stream and re-encode it to OUT",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_argument(p, "input")
    p.add_argument("output", metavar="OUT", help="output path ('-' = stdout; *.lz4 compresses)")
    add_desc_from_argument(p)
    p.add_argument("--set", dest="edits", action="append", type=_set_edit, metavar="SECTION.PATH=VALUE",
                   help="edit: set one field of a device section")
    p.add_argument("--virtio-mem", dest="edits", action="append", type=_virtio_mem_edit,
                   metavar="DEV:requested-size=SIZE|DEV:plugged=RANGES",
                   help="edit: a virtio-mem device, through the device model")
    p.add_argument("--drop", dest="edits", action="append", type=lambda s: ("drop", s), metavar="SECTION",
                   help="edit: remove a device section")
    p.set_defaults(handler=handler, stream_attr="input")


def _size(text: str) -> int:
    from vmig.errors import DeviceError
    from vmig.units import parse_size

    try:
        return parse_size(text, "requested-size")
    except DeviceError as e:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, 0x hex, or with a k/M/G suffix)") from e


def _set_edit(text: str) -> tuple:
    target, eq, value = text.partition("=")
    if not eq or "." not in target:
        raise argparse.ArgumentTypeError(f"expected SECTION.PATH=VALUE, got {text!r}")
    return ("set", target, value)


def _virtio_mem_edit(text: str) -> tuple:
    spec, eq, value = text.partition("=")
    device, _, key = spec.rpartition(":")
    if not eq or key not in ("requested-size", "plugged"):
        raise argparse.ArgumentTypeError(
            f"expected DEV:requested-size=SIZE or DEV:plugged=RANGES, got {text!r}")
    if key == "requested-size":
        return ("virtio-mem", device or None, {"requested_size": _size(value)})
    from vmig.analysis.edit import parse_ranges
    from vmig.errors import UsageError as _UsageError

    try:
        return ("virtio-mem", device or None, {"plugged": parse_ranges(value)})
    except _UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _apply_edits(data: bytes, edits: list[tuple], description) -> bytes:  # noqa: ANN001
    from vmig.analysis import edit

    for e in edits:
        if e[0] == "set":
            section, path = edit.split_section_path(data, e[1], description=description)
            data = edit.set_field(data, section, path, e[2], description=description)
        elif e[0] == "virtio-mem":
            data = edit.edit_virtio_mem_device(data, e[1], description=description, **e[2])
        else:
            data = edit.drop_section(data, e[1], description=description)
    return data


def _output_chunks(args: argparse.Namespace):
    """The bytes to write: the re-encoded events, or with edits the stream edited in memory by
    :mod:`vmig.analysis.edit`."""
    from vmig.stream.encoder import StreamEncoder

    if not args.edits:
        enc = StreamEncoder()
        for ev in stream_events(args, "input", progress="rewrite"):
            yield enc.send_view(ev)
        return
    from vmig.cli._common import description_from_args
    from vmig.io.streams import read_all

    yield _apply_edits(read_all(args.input), args.edits, description_from_args(args))


def _is_qcow2(path: str) -> bool:
    from vmig.io.containers import inspect

    return path != "-" and any(layer.kind == "qcow2" for layer in inspect(path))


def _rewrite_image(args: argparse.Namespace) -> int:
    """Copy IMAGE to a temporary file beside OUT, write the re-encoded VM state over the
    snapshot's clusters in the copy, fsync, rename."""
    import shutil

    from vmig.io.containers import qcow2

    src, dst = args.input, args.output
    snapshot = getattr(src, "snapshot", None)
    fd_in = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(fd_in).st_size

        def pread(off: int, n: int) -> bytes:
            return os.pread(fd_in, n, off)

        img = qcow2.parse(pread, size, str(src))
        snap = qcow2.select_snapshot(img, snapshot)
        runs = qcow2.writable_vm_state(img, snap, pread)
    finally:
        os.close(fd_in)
    with AtomicFile(dst, inputs=[src]) as out:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        writer = qcow2.VmStateWriter(runs, lambda off, b: pwrite_all(out.fd, b, off), str(dst))
        for chunk in _output_chunks(args):
            writer.write(chunk)
        writer.finish()
    return 0


def handler(args: argparse.Namespace) -> int:
    src, dst = args.input, args.output
    if same_file(src, dst):
        raise UsageError(f"refusing to rewrite {src} onto itself; give another OUT")
    if dst.endswith(".qcow2") and _is_qcow2(src):
        return _rewrite_image(args)
    chunks = _output_chunks(args)
    if dst == "-":
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return 0
    with AtomicFile(dst, inputs=[p for p in (src, args.desc_from) if p is not None]) as raw:
        if dst.endswith(".lz4"):
            import lz4.frame

            with lz4.frame.LZ4FrameFile(raw, mode="wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        else:
            for chunk in chunks:
                raw.write(chunk)
    return 0
