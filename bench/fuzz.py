"""Fuzz every reading command and the migration destination with mutations of the project's
real captures.

    python bench/fuzz.py [--seed N] [--count N | --seconds S] [--jobs J] [--commands a,b]
    python bench/fuzz.py --seed N --show INDEX [--out FILE]   # rebuild one input and run it

Seeds: the captures under ``fixtures/`` and ``tests/data/ram/`` (QEMU 7.2 precopy with and
without trailer, footers, configuration; postcopy with its PACKAGED blob; q35 NUMA; XBZRLE;
compressed pages; a postcopy return-path capture), each reduced to a few RAM records per block
and record type (every non-RAM byte kept), and each cut into slices: every byte outside the
FULL device sections (header, configuration, RAM, commands, EOF) plus ``SLICE_WIDTH``
consecutive device sections (inside the PACKAGED blob too, its length adjusted), with a trailer
listing only those devices. Every device section is in a slice; a slice decodes in a fraction
of the whole capture's time. One input in ``1 / WHOLE_SHARE`` is mutated from a whole reduced
capture, the others from a slice.

Mutations (1-3 per input, chosen from the input's index and ``--seed``, so a run is
reproducible and any input can be rebuilt with ``--show INDEX``): bit flips, byte sets, length
and count fields set to extremes at the offsets where records start, truncation (anywhere and
at record boundaries), insertion and duplication of bytes, splices between two captures at
record boundaries, and trailer edits (numbers at extremes, strings replaced, keys dropped,
objects nested 10 000 deep, bytes that are not UTF-8 or not JSON, the length word changed).

Each input runs through one consumer, in turn: the commands ``sections`` (text and JSON),
``analyze`` in both formats, ``check`` with and without a mutated ``--desc-from``, ``ram``
(text and JSON), ``info memory-devices``, ``extract`` in both formats and with ``--physical``,
``rewrite``, ``diff`` against its seed, ``rp`` (the return-path capture), in-process through
``vmig.cli.main`` with stdout and stderr captured; and the migration destination
(:class:`vmig.migration.destination.Destination` fed by ``vmig.io.streams.iter_events``):
``dest`` configured like the seed's capture (its blocks, sections, machine type, framing; the
machine and ``postcopy-ram`` of its manifest: what ``check --dest-capture`` builds), and
``dest-open`` accepting the stream's blocks and sections (what ``vmig migrate`` builds from its
capture), both holding RAM. A destination may only fail with a ``VmigError``.

A failure is an exit code other than 0, 1, 2; an "internal error" line; a traceback; a
command's exit 2 whose report is not one line of printable characters naming the file (the
input, or the seed, description or output beside it); a changed input; a file written outside
the output folder; more than ``--timeout`` seconds (SIGALRM); more than ``--memory`` MB of
address space (``RLIMIT_AS``, the soft limit set per input; a destination may also reserve its
capture's RAMBlocks): a MemoryError; or a worker that died. Workers write inside one folder of
the campaign's, removed at its end (with the folders of workers that were killed).
Failures are deduplicated by (exception type, innermost vmig frame) and printed with the index
that rebuilds the input. Exit status: 0 no failure, 1 failures.

Inputs run in ``--jobs`` worker processes (``--worker`` mode), each taking batches of indices.
Per process, not per input: the seeds, one ``argparse`` parser per command, one read of each
bundled schema set, one parse of each seed's trailer (an input whose trailer is byte-identical
to a seed's reuses it; any other trailer is parsed as it comes); outputs go to a folder in
``/dev/shm`` when there is one (they are fsync'ed and renamed: the campaign measures vmig, not
the disk); mapped inputs get no page-table warmer thread (``VMIG_WARM=0``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_FILES = (
    "fixtures/s1.bin",
    "fixtures/pc-novmdesc.bin.lz4",
    "fixtures/pc-nofooter.bin.lz4",
    "fixtures/pc-noconfig.bin.lz4",
    "fixtures/postcopy-main.bin.lz4",
    "fixtures/q35-numa.bin.lz4",
    "tests/data/ram/xbzrle.bin.lz4",
    "tests/data/ram/compress.bin.lz4",
    "fixtures/postcopy-rp.bin.lz4",
)
RP_SEED = "fixtures/postcopy-rp.bin.lz4"
COMMANDS = (
    "sections", "sections-json", "analyze", "analyze-qemu", "check", "check-desc-from", "ram",
    "ram-json", "info", "extract", "extract-qemu", "extract-physical", "rewrite", "diff", "rp",
    "dest", "dest-open",
)
#: consumers called as library functions (no command reads a stream into them as is)
LIBRARY = ("dest", "dest-open")
WHOLE_SHARE = 1 / 64  # share of inputs mutated from a whole reduced capture, not a slice
SLICE_WIDTH = 2  # device sections per slice of a capture
RAM_KEEP = 3  # RAM records kept per (block, record type) when a seed is reduced
_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
             (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 40, 1 << 42)


class InputTimeout(BaseException):
    """Raised by SIGALRM inside a run (a BaseException: the CLI must not turn it into a line)."""


# ------------------------------------------------------------------------------------ seeds
@dataclass
class Seed:
    name: str
    data: bytes
    offsets: list[int]  # offsets where records start (events and RAM records)
    trailer: tuple[int, object] | None  # (offset of the 0x06 byte, parsed JSON) if any
    rp: bool = False
    capture: str = ""  # the fixture it comes from (its manifest configures the destination)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".lz4":
        import lz4.frame

        data = lz4.frame.decompress(data)
    return data


def reduce_capture(data: bytes) -> bytes:
    """The capture with at most RAM_KEEP RAM records per (block, record type); every record
    that names its block, every non-page record and every non-RAM byte is kept."""
    from vmig.io.decoding import decode_bytes
    from vmig.stream.events import RamRecords

    out = bytearray()
    pos = 0
    counts: dict[tuple[int, int], int] = {}
    page_types = (0x2, 0x8, 0x40, 0x100)
    for ev in decode_bytes(data):
        if not isinstance(ev, RamRecords):
            continue
        out += data[pos:ev.offset]
        pos = ev.offset + ev.length
        b = ev.batch
        ends = b.offset.tolist()[1:] + [ev.offset + ev.length]
        kept_block = None
        for i, (start, end) in enumerate(zip(b.offset.tolist(), ends)):
            typ = int(b.flags[i]) & 0x3FF & ~0x20
            blk = int(b.block[i])
            keep = bool(b.has_idstr[i]) or typ not in page_types or (
                blk == kept_block and counts.get((typ, blk), 0) < RAM_KEEP)
            if b.has_idstr[i]:
                kept_block = blk
            if keep:
                counts[(typ, blk)] = counts.get((typ, blk), 0) + 1
                out += data[start:end]
    out += data[pos:]
    return bytes(out)


def slice_capture(data: bytes, width: int = SLICE_WIDTH) -> list[bytes]:
    """The capture cut into streams that keep every byte outside the FULL device sections
    (header, configuration, RAM, commands, EOF) and ``width`` consecutive device sections each
    (those inside a PACKAGED blob too: its length is adjusted); the trailer (if any) lists only
    the devices kept, written as QEMU writes it. A small input decodes in a fraction of the
    time of the whole capture, and every device section is in some slice."""
    from vmig.io.decoding import decode_bytes
    from vmig.stream.constants import MigCmd, SectionType
    from vmig.stream.events import Command, SectionEnd, SectionHeader, VmDescriptionEvent
    from vmig.stream.vmdesc import JsonObject, parse_json

    units: list[tuple[int, int, tuple[str, int]]] = []  # (start, end, (idstr, instance))
    packages: list[tuple[int, int, int]] = []  # (offset of the be32 length, blob start, end)
    t_off, doc = len(data), None

    def walk(events: list) -> None:
        nonlocal t_off, doc
        cur: tuple[int, tuple[str, int]] | None = None
        for ev in events:
            if isinstance(ev, SectionHeader) and ev.type == SectionType.SECTION_FULL:
                cur = (ev.offset, (ev.idstr, ev.instance_id))
            elif isinstance(ev, SectionEnd) and cur is not None:
                units.append((cur[0], ev.offset + ev.length, cur[1]))
                cur = None
            elif isinstance(ev, VmDescriptionEvent):
                t_off, doc = ev.offset, parse_json(ev.raw)
            elif isinstance(ev, Command) and ev.cmd == MigCmd.PACKAGED and ev.children:
                blob = ev.offset + 9  # 08, be16 cmd, be16 4, be32 blob length
                packages.append((ev.offset + 5, blob, blob + ev.args["blob_length"]))
                walk(ev.children)

    walk(decode_bytes(data))
    units.sort()
    everyone = {u[2] for u in units}
    out = []
    for w in range(0, len(units), width):
        names = {u[2] for u in units[w:w + width]}
        gone = [u for u in units if u[2] not in names]
        buf = bytearray()
        pos = 0
        for start, end, _ in gone:
            buf += data[pos:start]
            pos = end
        buf += data[pos:t_off]
        for len_off, lo, hi in packages:
            cut = sum(e - s for s, e, _ in gone if lo <= s < hi)
            at = len_off - sum(e - s for s, e, _ in gone if e <= len_off)
            buf[at:at + 4] = struct.pack(">I", hi - lo - cut)
        if doc is not None:
            devs = [d for d in doc["devices"] if not isinstance(d, JsonObject)
                    or (d.get("name"), d.get("instance_id")) not in everyone
                    or (d.get("name"), d.get("instance_id")) in names]
            pairs = [(k, devs if k == "devices" else v) for k, v in doc.pairs]
            body = emit_json(_plain(JsonObject(pairs))).encode()
            buf += b"\x06" + struct.pack(">I", len(body)) + body
        out.append(bytes(buf))
    return out


def _record_offsets(data: bytes) -> list[int]:
    from vmig.io.decoding import decode_bytes
    from vmig.stream.events import RamRecords

    offs: set[int] = set()
    for ev in decode_bytes(data):
        offs.add(ev.offset)
        if isinstance(ev, RamRecords):
            offs.update(ev.batch.offset.tolist())
        for ch in getattr(ev, "children", None) or ():
            offs.add(ch.offset)
    return sorted(o for o in offs if o < len(data))


def _seed(name: str, data: bytes, capture: str) -> Seed:
    from vmig.stream.vmdesc import find_trailer, parse_json

    found = find_trailer(data)
    trailer = (found[0], parse_json(found[1].raw)) if found is not None else None
    return Seed(name, data, _record_offsets(data), trailer, capture=capture)


def load_seeds(root: Path = ROOT) -> list[Seed]:
    """The reduced real captures (and the return-path capture as is), then their slices."""
    whole, slices = [], []
    for rel in SEED_FILES:
        raw = _read(root / rel)
        if rel == RP_SEED:
            whole.append(Seed(rel, raw, list(range(0, len(raw), 4)), None, rp=True, capture=rel))
            continue
        data = reduce_capture(raw)
        whole.append(_seed(rel, data, rel))
        for k, part in enumerate(slice_capture(data)):
            slices.append(_seed(f"{rel}#{k}", part, rel))
    return whole + slices


# -------------------------------------------------------------------------------- mutations
def _extreme(rng: random.Random, width: int) -> bytes:
    v = rng.choice(_EXTREMES) & ((1 << (8 * width)) - 1)
    return v.to_bytes(width, "big")


class _Obj(list):
    """A JSON object as a list of [key, value] pairs (duplicates kept) while it is edited."""


def _plain(v: object) -> object:
    from vmig.stream.vmdesc import JsonObject

    if isinstance(v, JsonObject):
        return _Obj([k, _plain(x)] for k, x in v.pairs)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def emit_json(v: object) -> str:
    """JSON text of a :func:`_plain` value, spaced as QEMU writes its trailer."""
    if isinstance(v, _Obj) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                   for p in v):
        return "{" + ", ".join(json.dumps(k) + ": " + emit_json(x) for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(emit_json(x) for x in v) + "]"
    return json.dumps(v)


def _json_edit(rng: random.Random, doc: object) -> bytes:
    """The trailer's JSON with one structural edit."""
    nodes: list[tuple[list, int]] = []  # (container, index) of every value

    def walk(v: object) -> None:
        if isinstance(v, list):
            for i, x in enumerate(v):
                nodes.append((v, i))
                walk(x)

    top = _plain(doc)
    walk(top)
    if nodes:
        cont, i = rng.choice(nodes)
        kind = rng.randrange(6)
        cur = cont[i]
        if kind == 0:
            cont[i] = rng.choice((-1, 0, 1, 2**31, 2**63, 2**64, 10**30, 1.5, None, True))
        elif kind == 1:
            cont[i] = rng.choice(("", "ram", "x" * 300, "../../etc", "\u00e9", "block/../x"))
        elif kind == 2 and len(cont) > 0:
            del cont[i]
        elif kind == 3:
            cont[i] = [cur, cur]
        elif kind == 4:
            cont[i] = {} if rng.random() < 0.5 else []
        else:
            cont.insert(i, cur)
    return emit_json(top).encode()


def mutate(rng: random.Random, seed: Seed, seeds: list[Seed]) -> bytes:
    """One mutated input from ``seed`` (1-3 mutations)."""
    data = bytearray(seed.data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not data:
            break
        kind = rng.randrange(100)
        n = len(data)
        pos = rng.randrange(n)
        if seed.offsets and rng.random() < 0.6:
            base = rng.choice(seed.offsets)
            pos = min(n - 1, base + rng.choice((0, 0, 1, 2, 4, 5, 8, 9, 13, 17, 25)))
        if kind < 18:  # bit flips
            data[pos] ^= 1 << rng.randrange(8)
        elif kind < 30:  # byte set
            data[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif kind < 50:  # a length/count field at an extreme
            w = rng.choice((1, 2, 4, 8))
            data[pos:pos + w] = _extreme(rng, w)
        elif kind < 62:  # truncation
            del data[pos if rng.random() < 0.8 else rng.randrange(n):]
        elif kind < 70:  # insertion / duplication
            if rng.random() < 0.5:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 8, 64))))
            else:
                ln = rng.choice((1, 9, 64, 512))
                data[pos:pos] = data[pos:pos + ln]
        elif kind < 80:  # splice with another capture at record boundaries
            other = rng.choice(seeds)
            if other.offsets:
                cut = rng.choice(other.offsets)
                data[pos:] = other.data[cut:]
        elif seed.trailer is not None and kind < 97:  # trailer edits
            t_off, doc = seed.trailer
            if t_off >= len(data):
                continue
            how = rng.randrange(8)
            if how < 4:
                body = _json_edit(rng, doc)
            elif how == 4:
                depth = rng.choice((1001, 10_000, 100_000))
                body = b'{"devices":' + b"[" * depth + b"]" * depth + b"}"
            elif how == 5:
                body = bytes(data[t_off + 5:]).replace(b"e", b"\xff", 1)  # not UTF-8
            elif how == 6:
                body = bytes(data[t_off + 5:])[:-2] + b"}"  # not JSON (a bracket lost)
            else:
                body = bytes(data[t_off + 5:])
            length = len(body)
            if rng.random() < 0.15:
                length = int.from_bytes(_extreme(rng, 4), "big")
            data[t_off:] = b"\x06" + struct.pack(">I", length & 0xFFFFFFFF) + body
        else:  # a few random bytes anywhere
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def build_input(run_seed: int, index: int, seeds: list[Seed]) -> tuple[Seed, str, bytes]:
    """Input ``index`` of campaign ``run_seed``: (seed, command, bytes)."""
    rng = random.Random(run_seed * 1_000_003 + index)
    cmd = COMMANDS[index % len(COMMANDS)]
    streams = [s for s in seeds if not s.rp]
    if cmd == "rp":
        seed = next(s for s in seeds if s.rp)
    elif rng.random() < WHOLE_SHARE:
        seed = rng.choice([s for s in streams if "#" not in s.name])
    else:
        seed = rng.choice([s for s in streams if "#" in s.name])
    return seed, cmd, mutate(rng, seed, streams)


# ---------------------------------------------------------------------------------- running
def argv_for(cmd: str, inp: str, work: str, seed_path: str, desc_path: str) -> list[str]:
    out = os.path.join(work, "out")
    return {
        "sections": ["sections", inp],
        "sections-json": ["sections", "--json", inp],
        "analyze": ["analyze", inp],
        "analyze-qemu": ["analyze", "--format", "qemu", inp],
        "check": ["check", inp],
        "check-desc-from": ["check", "--desc-from", desc_path, seed_path],
        "ram": ["ram", inp],
        "ram-json": ["ram", "--json", inp],
        "info": ["info", "memory-devices", inp],
        "extract": ["extract", inp, "-o", out],
        "extract-qemu": ["extract", "--format", "qemu", inp, "-o", out],
        "extract-physical": ["extract", inp, "-o", out, "--physical", os.path.join(out, "phys")],
        "rewrite": ["rewrite", inp, os.path.join(work, "rewritten.bin")],
        "diff": ["diff", seed_path, inp],
        "rp": ["rp", inp],
    }[cmd]


_FRAME = re.compile(r'File "([^"]*[/\\]vmig[/\\][^"]+)", line (\d+), in (\S+)')


def _innermost(tb_text: str) -> str:
    frames = _FRAME.findall(tb_text)
    if not frames:
        return "?"
    path, line, func = frames[-1]
    path = path.replace("\\", "/")
    rel = path[path.rfind("/vmig/") + 1:]
    return f"{rel}:{line} {func}"


@dataclass
class DestConfig:
    """The destination a capture's manifest and contents describe (built once per process)."""

    argv: list[str] | None
    qemu_version: str
    kw: dict  # Destination keywords of a destination like the capture
    ram_bytes: int  # the RAMBlocks' total length (address space the destination holds)


_DEST_CONFIGS: dict[str, DestConfig] = {}


def dest_config(capture: str, root: Path = ROOT) -> DestConfig:
    """The destination configured as the VM of ``capture`` (a path under ``root``): its
    manifest's argv (the device model machine), ``qemu_version`` and ``postcopy-ram``
    capability; the blocks, sections, machine type and framing of the reduced capture."""
    cfg = _DEST_CONFIGS.get(capture)
    if cfg is None:
        from vmig.device.versions import capture_qemu_version
        from vmig.io.decoding import decode_bytes
        from vmig.migration.destination import Destination

        name = capture.split("/")[-1].split(".")[0]
        man_path = root / Path(capture).parent / f"{name}.json"
        man = json.loads(man_path.read_text()) if man_path.exists() else {}
        caps = man.get("capabilities") if isinstance(man.get("capabilities"), dict) else {}
        like = Destination.like(decode_bytes(reduce_capture(_read(root / capture))))
        kw = {"blocks": like.expected, "sections": like.sections, "machine_type": like.machine_type,
              "configuration": like.configuration, "footers": like.footers,
              "postcopy_ram": bool(caps.get("postcopy-ram"))}
        cfg = DestConfig(man.get("argv"), capture_qemu_version(like.machine_type,
                                                               recorded=man.get("qemu_version")),
                         kw, sum(like.expected.values()))
        _DEST_CONFIGS[capture] = cfg
    return cfg


def run_dest(cmd: str, path: str, seed: Seed) -> int:
    """Load the stream at ``path`` into a destination: ``dest`` one configured like the seed's
    capture (``check --dest-capture``), ``dest-open`` one that accepts the stream's blocks and
    sections (``vmig migrate`` reading its capture); both hold RAM and the manifest's machine."""
    from vmig.device.cmdline import machine_from_argv
    from vmig.io.streams import iter_events
    from vmig.migration.destination import Destination

    cfg = dest_config(seed.capture)
    machine = machine_from_argv(cfg.argv, qemu_version=cfg.qemu_version) if cfg.argv else None
    if cmd == "dest":
        kw = dict(cfg.kw)
        dest = Destination(kw.pop("blocks"), machine=machine, **kw)
    else:
        dest = Destination(machine=machine)
    try:
        dest.load(iter_events(path, schema_sets=True))
    finally:  # the images go now, not when a later collection finds their cycles
        dest.images.clear()
        dest.received.clear()
    return 0


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def run_one(cmd: str, data: bytes, work: str, seed: Seed, timeout: float,
            memory: int = 0, trace: bool = False) -> dict | None:
    """Run one input; a dict describing the failure, or None. ``memory``: MB of address space
    (the soft ``RLIMIT_AS``; a destination may also hold its capture's RAMBlocks)."""
    import traceback

    from vmig.cli import main
    from vmig.errors import VmigError

    inp = os.path.join(work, "input.bin")
    seed_path = os.path.join(work, "seed.bin")
    desc_path = os.path.join(work, "desc.json")
    _write(inp, data)
    if cmd == "diff" or cmd == "check-desc-from":
        _write(seed_path, seed.data if cmd == "diff" else _strip_trailer(seed))
    if cmd == "check-desc-from":
        t = _trailer_bytes(data)
        _write(desc_path, t if t is not None else data[-4096:])
    if memory:
        lim = memory << 20
        if cmd in LIBRARY:
            lim += dest_config(seed.capture).ram_bytes
        resource.setrlimit(resource.RLIMIT_AS, (lim, resource.getrlimit(resource.RLIMIT_AS)[1]))
    out, err = io.StringIO(), io.StringIO()
    failure = None
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        if cmd in LIBRARY:
            try:
                rc = run_dest(cmd, inp, seed)
            except VmigError as e:
                rc = 2
                err.write(e.one_line() + "\n")
        else:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv_for(cmd, inp, work, seed_path, desc_path))
    except InputTimeout:
        rc = None
        failure = {"type": "Timeout", "where": _innermost(traceback.format_exc())}
    except BaseException as e:  # noqa: BLE001 - anything escaping main is a failure
        rc = None
        failure = {"type": type(e).__name__, "where": _innermost(traceback.format_exc()),
                   "message": str(e)[:200]}
        if trace:
            failure["traceback"] = traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    text = err.getvalue()
    if failure is None:
        if "internal error" in text:
            m = re.search(r"internal error: (\w+)", text)
            failure = {"type": m.group(1) if m else "?", "where": _innermost(text),
                       "message": text.strip().splitlines()[-1][:300]}
        elif rc not in (0, 1, 2):
            failure = {"type": f"exit{rc}", "where": "?", "message": text[:300]}
        elif "Traceback" in text:
            failure = {"type": "Traceback", "where": _innermost(text), "message": text[-300:]}
        elif rc == 2 and cmd not in LIBRARY and not _names_a_file(text, work):
            failure = {"type": "ErrorLine", "where": cmd, "message": repr(text)[:300]}
        if failure is not None and trace:
            failure["traceback"] = text
    if failure is None:
        with open(inp, "rb") as f:
            if f.read() != data:
                failure = {"type": "InputModified", "where": cmd}
        extra = set(os.listdir(work)) - {"input.bin", "seed.bin", "desc.json", "out",
                                         "rewritten.bin"}
        if extra:
            failure = {"type": "WroteOutside", "where": cmd, "message": sorted(extra)[:5]}
            for name in extra:  # so that the next inputs start clean
                p = os.path.join(work, name)
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
    if cmd.startswith("extract"):
        shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    elif cmd == "rewrite":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(work, "rewritten.bin"))
    if failure is not None:
        failure["cmd"] = cmd
        failure["rc"] = rc
    return failure


def _names_a_file(text: str, work: str) -> bool:
    """An exit-2 report is one line of printable characters naming the file it is about (the
    input, the seed or description beside it, an output): what every bad input must get."""
    lines = text.splitlines()
    return len(lines) == 1 and lines[0].isprintable() and work in lines[0]


def _trailer_bytes(data: bytes) -> bytes | None:
    p = data.rfind(b"\x06", 0, max(0, len(data) - 5))
    while p >= 0:
        if p + 5 + int.from_bytes(data[p + 1:p + 5], "big") == len(data):
            return data[p + 5:]
        p = data.rfind(b"\x06", 0, p)
    return None


def _strip_trailer(seed: Seed) -> bytes:
    return seed.data if seed.trailer is None else seed.data[:seed.trailer[0]]


def _on_alarm(signum: int, frame: object) -> None:
    raise InputTimeout()


def _work_base() -> str | None:
    """/dev/shm when writable (outputs in memory), else the default temporary folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def prepare_process(memory: int, work: str | None = None) -> tuple[list[Seed], str]:
    """Set a worker process up: SIGALRM, caches, the address-space limit; the seeds and a work
    folder (in memory when /dev/shm is there: outputs are fsync'ed and renamed, and the campaign
    measures vmig, not the disk)."""
    import functools

    import vmig.cli
    from vmig.vmstate.machines import schemas

    signal.signal(signal.SIGALRM, _on_alarm)
    os.environ["VMIG_DEBUG"] = "1"  # the traceback of an internal error names the frame
    os.environ["VMIG_EXTRACT_THREAD"] = "0"
    os.environ["VMIG_WARM"] = "0"  # no page-table warmer thread per mapped input (a few KB)
    # one parser per command per process (building it is a third of a small input's time) and
    # one read of each bundled schema set (a pure function of the file)
    if not hasattr(vmig.cli.build_parser, "cache_info"):
        vmig.cli.build_parser = functools.lru_cache(maxsize=None)(vmig.cli.build_parser)
        schemas._load = functools.lru_cache(maxsize=None)(schemas._load)
    seeds = load_seeds()
    _memoize_seed_trailers(seeds)
    if memory:  # hard limit: the soft one (per input) is raised for a destination's RAMBlocks
        top = (memory << 20) + max(dest_config(s.capture).ram_bytes for s in seeds if not s.rp)
        resource.setrlimit(resource.RLIMIT_AS, (top, top))
    if work is not None:  # a worker: a folder inside the parent's (which removes it, even after a kill)
        os.mkdir(work, 0o700)
        return seeds, work
    return seeds, tempfile.mkdtemp(prefix="vmig-fuzz-", dir=_work_base())


def _memoize_seed_trailers(seeds: list[Seed]) -> None:
    """Parse each seed's trailer once per process: an input whose trailer is byte-identical to a
    seed's (most mutations leave it alone) gets that parse (``parse_json`` is a pure function of
    the bytes and its result a read-only view). Every other trailer is parsed as it comes."""
    from vmig.stream import vmdesc

    parse = getattr(vmdesc.parse_json, "__wrapped__", vmdesc.parse_json)
    known: dict[tuple[bytes, object], object] = {}
    texts = {_trailer_bytes(s.data) for s in seeds if s.trailer is not None}

    def parse_json(raw: bytes | bytearray | memoryview, object_pairs_hook: object = None) -> object:
        data = bytes(raw)
        if data not in texts:
            return parse(data, object_pairs_hook)
        key = (data, object_pairs_hook)
        if key not in known:
            known[key] = parse(data, object_pairs_hook)
        return known[key]

    parse_json.__wrapped__ = parse  # type: ignore[attr-defined]
    vmdesc.parse_json = parse_json


def worker(args: argparse.Namespace) -> int:
    """Run batches of indices read from stdin ("start count" lines); one JSON line per batch."""
    seeds, work = prepare_process(args.memory, args.work_dir)
    progress_fd = os.open(args.progress_file, os.O_WRONLY | os.O_CREAT, 0o600)
    commands = args.commands.split(",") if args.commands else None
    try:
        for line in sys.stdin:
            start, count = map(int, line.split())
            fails = []
            for i in range(start, start + count):
                seed, cmd, data = build_input(args.seed, i, seeds)
                if commands and cmd not in commands:
                    continue
                os.pwrite(progress_fd, struct.pack("<q", i), 0)
                f = run_one(cmd, data, work, seed, args.timeout, args.memory)
                if f is not None:
                    f["index"] = i
                    f["seed_file"] = seed.name
                    fails.append(f)
            sys.__stdout__.write(json.dumps({"done": count, "failures": fails}) + "\n")
            sys.__stdout__.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ----------------------------------------------------------------------------------- parent
class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.next_index = 0
        self.done = 0
        self.failures: dict[tuple[str, str], dict] = {}
        self.failure_count = 0
        self.tmp = tempfile.mkdtemp(prefix="vmig-fuzz-parent-")
        self.work_root = tempfile.mkdtemp(prefix="vmig-fuzz-", dir=_work_base())

    def _spawn(self, n: int) -> tuple[subprocess.Popen, str]:
        prog = os.path.join(self.tmp, f"progress{n}-{time.monotonic_ns()}")
        cmd = [sys.executable, __file__, "--worker", "--seed", str(self.args.seed),
               "--timeout", str(self.args.timeout), "--memory", str(self.args.memory),
               "--progress-file", prog,
               "--work-dir", os.path.join(self.work_root, f"w{n}-{time.monotonic_ns()}")]
        if self.args.commands:
            cmd += ["--commands", self.args.commands]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env, bufsize=1)
        return p, prog

    def _record(self, f: dict) -> None:
        self.failure_count += 1
        key = (f["type"], f.get("where", "?"))
        if key not in self.failures:
            self.failures[key] = dict(f, count=0)
            print(f"FAILURE {f['type']} at {f.get('where')} cmd={f.get('cmd')} "
                  f"index={f.get('index')} seed_file={f.get('seed_file')}: "
                  f"{f.get('message', '')}", flush=True)
        self.failures[key]["count"] += 1

    def _want_more(self, t0: float) -> bool:
        if self.args.count is not None and self.next_index >= self.args.count:
            return False
        if self.args.seconds is not None and time.monotonic() - t0 >= self.args.seconds:
            return False
        return True

    def run(self) -> int:
        import selectors

        t0 = time.monotonic()
        batch = self.args.batch
        sel = selectors.DefaultSelector()
        workers: dict[int, tuple[subprocess.Popen, str, tuple[int, int]]] = {}

        def give(n: int, p: subprocess.Popen, prog: str) -> bool:
            if not self._want_more(t0):
                return False
            count = batch if self.args.count is None else min(batch, self.args.count - self.next_index)
            rng = (self.next_index, count)
            self.next_index += count
            p.stdin.write(f"{rng[0]} {rng[1]}\n")
            p.stdin.flush()
            workers[n] = (p, prog, rng)
            return True

        def start(n: int, first: tuple[int, int] | None = None) -> None:
            p, prog = self._spawn(n)
            sel.register(p.stdout, selectors.EVENT_READ, n)
            if first is not None:
                p.stdin.write(f"{first[0]} {first[1]}\n")
                p.stdin.flush()
                workers[n] = (p, prog, first)
            elif not give(n, p, prog):
                p.stdin.close()
                p.wait()
                sel.unregister(p.stdout)

        for n in range(self.args.jobs):
            start(n)
        last_report = time.monotonic()
        interrupted = False

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            self._loop(sel, workers, give, start, t0, last_report)
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: stop the workers, report what ran
            interrupted = True
            for p, _, _ in workers.values():
                p.kill()
                p.wait()
        elapsed = time.monotonic() - t0
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.work_root, ignore_errors=True)  # with the folders of killed workers
        print(json.dumps({"seed": self.args.seed, "inputs": self.done, "seconds": round(elapsed, 1),
                          "rate": round(self.done / max(elapsed, 1e-9), 1), "jobs": self.args.jobs,
                          "interrupted": interrupted, "failures": self.failure_count,
                          "distinct": [dict(v, key=list(k)) for k, v in self.failures.items()]}),
              flush=True)
        return 1 if self.failure_count or interrupted else 0

    def _loop(self, sel, workers, give, start, t0: float, last_report: float) -> None:
        while workers:
            for key, _ in sel.select(timeout=5):
                n = key.data
                p, prog, rng = workers[n]
                line = p.stdout.readline()
                if line:
                    msg = json.loads(line)
                    self.done += msg["done"]
                    for f in msg["failures"]:
                        self._record(f)
                    if not give(n, p, prog):
                        del workers[n]
                        sel.unregister(p.stdout)
                        p.stdin.close()
                        p.wait()
                    continue
                # the worker died inside batch rng: the input it was running is a failure
                sel.unregister(p.stdout)
                del workers[n]
                rc = p.wait()
                try:
                    with open(prog, "rb") as fh:
                        idx = struct.unpack("<q", fh.read(8))[0]
                except (OSError, struct.error):
                    idx = rng[0]
                self._record({"type": f"WorkerDied(rc={rc})", "where": "?", "index": idx,
                              "cmd": "?"})
                self.done += idx - rng[0] + 1
                rest = (idx + 1, rng[0] + rng[1] - idx - 1)
                start(n, rest if rest[1] > 0 else None)
            if time.monotonic() - last_report > self.args.report_every:
                last_report = time.monotonic()
                el = time.monotonic() - t0
                print(f"[{el:8.0f} s] {self.done} inputs, {self.done / max(el, 1e-9):.1f}/s, "
                      f"{self.failure_count} failures ({len(self.failures)} distinct)", flush=True)


def show(args: argparse.Namespace) -> int:
    """Write input ``--show INDEX`` to ``--out``, print the command that runs it, then run it
    here as a worker does and print what it found (the traceback of a failure included)."""
    seeds, work = prepare_process(args.memory)
    seed, cmd, data = build_input(args.seed, args.show, seeds)
    out = args.out or f"fuzz-{args.seed}-{args.show}.bin"
    with open(out, "wb") as f:
        f.write(data)
    how = (f"a Destination like {seed.capture} loads it ({cmd})" if cmd in LIBRARY
           else " ".join(argv_for(cmd, out, ".", "SEED", "DESC")))
    print(f"{out}: {len(data)} bytes from {seed.name}; command {cmd}: {how}")
    try:
        failure = run_one(cmd, data, work, seed, args.timeout, args.memory, trace=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failure is not None:
        print(failure.pop("traceback", ""), end="")
    print(json.dumps(failure or "no failure"))
    return 1 if failure else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=None, help="inputs to run (default: 1000)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds per input (a hang, not a slow input under load)")
    ap.add_argument("--memory", type=int, default=1536, help="MB of address space per worker")
    ap.add_argument("--commands", default=None, help="only these commands (comma-separated)")
    ap.add_argument("--report-every", type=float, default=60.0)
    ap.add_argument("--show", type=int, default=None, help="write input INDEX to --out")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--progress-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.count is None and args.seconds is None:
        args.count = 1000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.show is not None:
        return show(args)
    return Campaign(args).run()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
