"""Extract guest RAM from a migration stream: per-RAMBlock sparse files, a guest-physical image.

Covers ``vmig extract``: one sparse file per RAMBlock (zero pages are holes), ``state.json`` and
``desc.json``; ``--format qemu`` reproduces QEMU's ``scripts/analyze-migration.py -x`` output
(file names = idstrs relative to DIR, ``state.json``/``desc.json`` as that script writes them);
``--physical`` places the main RAM by the machine's layout (pc / q35 RAM split around the PCI
hole, as QEMU's ``hw/i386/pc_piix.c`` / ``pc_q35.c`` compute ``below_4g_mem_size``) and each
virtio-mem device's plugged blocks at its ``memaddr`` (``hw/virtio/virtio-mem.c`` state), as a
raw sparse file or an ELF core (one PT_LOAD per range, like ``dump-guest-memory``'s ELF).

Page contents follow the destination's loader (``migration/ram.c`` ``ram_load_precopy``):
records are applied in stream order onto the current page content, so XBZRLE deltas and short
zlib pages build on what earlier records wrote, and the last write wins.

Theory of operation:

1. Nothing is written outside DIR: every output goes into a private temporary folder
   (:class:`vmig.io.output.StagedDir`: beside a new DIR, inside an existing one), with names
   from :func:`safe_relpath` (no absolute paths, no ``..``, no NUL, no over-long components;
   collisions get a ``~N`` suffix); files are opened with ``O_EXCL`` and ``O_NOFOLLOW``. On
   success the folder is published at once (one rename, or a merge checked before any move);
   on any failure or Ctrl-C it is removed.
2. Block files are created at their used length with ``ftruncate`` (sparse); a block longer
   than :data:`MAX_BLOCK_BYTES` is refused. At most :data:`MAX_OPEN_FILES` block files are
   open at once (least recently used closed first), so any number of blocks fits the process's
   file limit. Records are applied by :func:`vmig.stream.ramcodec.apply_batch` (the engine's
   destination uses the same applier) with :class:`BlockImages` as its page target: a run of
   PAGE records at consecutive addresses goes out as ``pwritev`` calls whose iovecs point into
   the input; ZERO records write nothing unless the page held data before (vmig format) —
   ``--format qemu`` mimics the script, which never writes a zero fill.
3. Page state needed across records (was this page written?) is one bool per target page.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from vmig.errors import RamError, StreamError, UsageError
from vmig.io.output import AtomicFile, EarlyWriteback, StagedDir, pwrite_all, write_all
from vmig.records import field, record
from vmig.runs import true_runs
from vmig.stream.events import Configuration, DeviceState, RamRecords, VmDescriptionEvent
from vmig.stream.ramcodec import apply_batch, page_runs

__all__ = [
    "safe_relpath",
    "NameMapper",
    "BlockImages",
    "ExtractResult",
    "extract",
    "machine_layout",
    "PhysRange",
    "write_physical",
    "write_elf_core",
    "main_ram_blocks",
    "extract_mapped_ram",
    "MAX_BLOCK_BYTES",
    "MAX_OPEN_FILES",
]

#: the longest RAMBlock extracted (1 TiB, the guest-physical space of QEMU's default 40 physical
#: address bits): a stream may claim up to 2^64 bytes, and a sparse file that large is refused
MAX_BLOCK_BYTES = 1 << 40
#: block files kept open at once (a stream may declare any number of blocks)
MAX_OPEN_FILES = 64

_MAX_COMPONENT = 200  # bytes; leaves room for a "~N" suffix under NAME_MAX (255)
_MAX_PATH = 3000
_IOV_MAX = 1024
_WRITES_PER_JOB = 4096  # queued writes handed to the writer thread at once (at most)


# ------------------------------------------------------------------------------------ names
def _component(raw: bytes) -> bytes:
    """One safe path component for the bytes between two slashes of an idstr."""
    if raw in (b".", b".."):
        return raw.replace(b".", b"%2e")
    out = raw.replace(b"%", b"%25").replace(b"\x00", b"%00")
    if len(out) > _MAX_COMPONENT:
        digest = hashlib.sha256(raw).hexdigest()[:16].encode()
        out = out[: _MAX_COMPONENT - 17] + b"~" + digest
    return out


def safe_relpath(idstr: str | bytes) -> bytes:
    """Map a RAMBlock idstr to a safe relative path (bytes) under the output directory.

    The QEMU script writes ``"./" + idstr``; this keeps that mapping for ordinary names
    (``/rom@etc/acpi/tables`` → ``rom@etc/acpi/tables``, ``0000:00:02.0/mem0`` unchanged) and
    maps what could escape or fail: empty components (leading ``/``, ``//``) are dropped,
    ``.``/``..`` become ``%2e``/``%2e%2e``, ``%`` and NUL are percent-escaped, over-long
    components are shortened with a hash suffix. An idstr with no component left becomes ``%``.
    """
    raw = idstr.encode("latin-1") if isinstance(idstr, str) else bytes(idstr)
    parts = [_component(p) for p in raw.split(b"/") if p != b""]
    if not parts:
        parts = [b"%"]
    path = b"/".join(parts)
    if len(path) > _MAX_PATH:
        path = b"%long~" + hashlib.sha256(raw).hexdigest().encode()
    return path


class NameMapper:
    """Assigns every block a unique safe relative path; a file never shadows a directory."""

    RESERVED = (b"state.json", b"desc.json")

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self._taken_files: set[bytes] = set(self.RESERVED)
        self._taken_dirs: set[bytes] = set()

    def _unique(self, parent: list[bytes], comp: bytes, *taken: set[bytes]) -> bytes:
        n = 1
        cand = comp
        while any(b"/".join(parent + [cand]) in t for t in taken):
            cand = comp + b"~%d" % n
            n += 1
        return cand

    def path_for(self, idstr: str) -> bytes:
        """The unique safe relative path of block ``idstr`` (stable for a given idstr)."""
        if idstr in self.files:
            return self.files[idstr]
        parts = safe_relpath(idstr).split(b"/")
        # a directory component may not be an existing file...
        for i in range(len(parts) - 1):
            parts[i] = self._unique(parts[:i], parts[i], self._taken_files)
        # ...and the file itself may be neither a file nor a directory already
        parts[-1] = self._unique(parts[:-1], parts[-1], self._taken_files, self._taken_dirs)
        for i in range(1, len(parts)):
            self._taken_dirs.add(b"/".join(parts[:i]))
        path = b"/".join(parts)
        self._taken_files.add(path)
        self.files[idstr] = path
        return path


# ------------------------------------------------------------------------------ block images
@record
class _Block:
    idstr: str
    length: int
    fd: int
    path: bytes
    written: np.ndarray  # bool per target page: holds data written by a record


class BlockImages:
    """Sparse per-block files inside ``root`` receiving RAM records in stream order.

    Args:
        root: directory (bytes or str) the files are created in (a private temp dir).
        qemu_compat: mimic analyze-migration.py -x (zero fills are never written).
    """

    def __init__(self, root: str | bytes, *, qemu_compat: bool = False) -> None:
        self.root = os.fsencode(root)
        self.qemu_compat = qemu_compat
        self.names = NameMapper()
        self.blocks: dict[str, _Block] = {}
        self._open_fds: OrderedDict[str, _Block] = OrderedDict()  # blocks whose fd is open, LRU
        self._map_key: Any = None
        self._map: list[_Block | None] = []
        self.pages_written = 0
        self._ps = 4096  # the page size of the batch being applied
        # One writer thread: page writes (which release the GIL) overlap with decoding the next
        # batch. FIFO order keeps "last write wins"; reads drain it first; bounded backlog.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmig-extract")
        self._writeback = EarlyWriteback()  # used by the thread that writes
        self._pending: deque[Future[None]] = deque()
        self._queued: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.threaded = os.environ.get("VMIG_EXTRACT_THREAD", "1") == "1"

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue a write; writes go to the writer thread a batch at a time (:meth:`_flush`)."""
        if not self.threaded:
            fn(*args)
            return
        self._queued.append((fn, args))
        if len(self._queued) >= _WRITES_PER_JOB:
            self._flush()

    def _flush(self) -> None:
        """Hand the queued writes to the writer thread as one job (order kept)."""
        if self._queued:
            jobs, self._queued = self._queued, []
            while len(self._pending) >= 8:
                self._pending.popleft().result()
            self._pending.append(self._writer.submit(_run_jobs, jobs))

    def drain(self) -> None:
        """Wait for every queued write (raises the first write error)."""
        self._flush()
        while self._pending:
            self._pending.popleft().result()

    def _open(self, idstr: str, length: int) -> _Block:
        if length > MAX_BLOCK_BYTES:
            raise RamError(f"RAMBlock {idstr!r} claims {length:#x} bytes; vmig extracts blocks "
                           f"of at most {MAX_BLOCK_BYTES:#x} bytes (1 TiB)",
                           expected=f"<= {MAX_BLOCK_BYTES:#x}", found=f"{length:#x}")
        blk = self.blocks.get(idstr)
        if blk is not None:
            if length > blk.length:  # a later MEM_SIZE grew the block
                os.ftruncate(self.fd(blk), length)
                blk.length = length
            return blk
        rel = self.names.path_for(idstr)
        full = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        blk = _Block(idstr, length, fd, rel, np.zeros(0, dtype=np.bool_))
        self.blocks[idstr] = blk
        self._track(blk)
        os.ftruncate(fd, length)
        return blk

    def fd(self, blk: _Block) -> int:
        """The open descriptor of ``blk``'s file (re-opened if it was closed to save fds)."""
        if blk.fd < 0:
            path = os.path.join(self.root, blk.path)
            blk.fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            self._track(blk)
        else:
            self._open_fds.move_to_end(blk.idstr)
        return blk.fd

    def _track(self, blk: _Block) -> None:
        self._open_fds[blk.idstr] = blk
        if len(self._open_fds) > MAX_OPEN_FILES:
            self.drain()  # queued writes may use the descriptor about to be closed
            _, old = self._open_fds.popitem(last=False)
            self._writeback.forget(old.fd)
            os.close(old.fd)
            old.fd = -1

    def set_blocks(self, blocks: Iterable[Any]) -> None:
        """Create files for a MEM_SIZE block list (``RamBlock`` objects)."""
        for b in blocks:
            self._open(b.idstr, b.used_length)

    def _mapping(self, batch: Any) -> list[_Block | None]:
        if batch.blocks is not self._map_key:
            self._map = [self._open(b.idstr, b.used_length) for b in batch.blocks]
            self._map_key = batch.blocks
        return self._map

    def _written(self, blk: _Block, ps: int) -> np.ndarray:
        n = -(-blk.length // ps)
        if len(blk.written) < n:
            w = np.zeros(n, dtype=np.bool_)
            w[: len(blk.written)] = blk.written
            blk.written = w
        return blk.written

    def add_batch(self, batch: Any) -> None:
        """Apply one ``RamBatch``'s page records to the files, in record order."""
        if batch.mem_size is not None:
            self.set_blocks(batch.mem_size)
        if len(batch) == 0:
            return
        self._mapping(batch)
        self._ps = batch.page_size
        apply_batch(batch, self)
        self._flush()

    # -- PageTarget (vmig.stream.ramcodec.apply_batch) --------------------------------------------
    def copy_pages(self, block: Any, addr: int, raw: np.ndarray, offs: np.ndarray) -> None:
        """A run of consecutive pages: ``pwritev`` calls whose iovecs point into the input (an
        mmap for files), so the kernel copies every page exactly once."""
        b, ps = self._open(block.idstr, block.used_length), self._ps
        written = self._written(b, ps)
        written[addr // ps : addr // ps + len(offs)] = True
        self.pages_written += len(offs)
        mv = memoryview(raw)
        offs_l = offs.tolist()
        pos = addr
        for c in range(0, len(offs_l), _IOV_MAX):
            bufs = [mv[o : o + ps] for o in offs_l[c : c + _IOV_MAX]]
            self._submit(self._write_pages, self.fd(b), bufs, pos)
            pos += len(bufs) * ps

    def put_pages(self, block: Any, addrs: np.ndarray, raw: np.ndarray, offs: np.ndarray) -> None:
        """Distinct pages in ascending order: one ``pwritev`` per run of consecutive pages (at
        most ``IOV_MAX`` pages), all handed to the writer thread as one job."""
        b, ps = self._open(block.idstr, block.used_length), self._ps
        self._written(b, ps)[addrs // ps] = True
        self.pages_written += len(addrs)
        mv = memoryview(raw)
        offs_l, addr_l, fd = offs.tolist(), addrs.tolist(), self.fd(b)
        writes = []
        for s, e in page_runs(addrs, ps):
            for c in range(s, e, _IOV_MAX):
                writes.append((fd, [mv[o : o + ps] for o in offs_l[c : min(e, c + _IOV_MAX)]], addr_l[c]))
        self._submit(self._write_runs, writes)

    def _write_runs(self, writes: list[tuple[int, list[memoryview], int]]) -> None:
        for fd, bufs, pos in writes:
            self._write_pages(fd, bufs, pos)

    def _write_pages(self, fd: int, bufs: list[memoryview], pos: int) -> None:
        _pwritev_all(fd, bufs, pos)
        self._writeback.wrote(fd, pos, sum(len(x) for x in bufs))

    def fill_pages(self, block: Any, addrs: np.ndarray, fills: np.ndarray) -> None:
        """ZERO records: a zero fill of a page that holds no data writes nothing (a hole)."""
        b, ps = self._open(block.idstr, block.used_length), self._ps
        pages = addrs // ps
        written = self._written(b, ps)
        nz = fills != 0
        if self.qemu_compat:
            # the script writes nothing for a zero fill (and fails on a non-zero one)
            for i in np.flatnonzero(nz).tolist():
                self._submit(pwrite_all, self.fd(b), bytes((int(fills[i]),)) * ps, int(pages[i]) * ps)
                written[pages[i]] = True
            return
        if not nz.any() and not written[pages].any():
            return
        for i in range(len(pages)):
            p = int(pages[i])
            if nz[i] or written[p]:
                self._submit(pwrite_all, self.fd(b), bytes((int(fills[i]),)) * ps, p * ps)
                written[p] = bool(nz[i])

    def read_page(self, block: Any, addr: int) -> bytearray:
        b, ps = self._open(block.idstr, block.used_length), self._ps
        self.drain()
        page = bytearray(os.pread(self.fd(b), ps, addr)) if self._written(b, ps)[addr // ps] else bytearray(ps)
        return page + bytes(ps - len(page))

    def write_page(self, block: Any, addr: int, page: bytearray) -> None:
        b, ps = self._open(block.idstr, block.used_length), self._ps
        pwrite_all(self.fd(b), page[: max(0, min(ps, b.length - addr))], addr)
        self._written(b, ps)[addr // ps] = True
        self.pages_written += 1

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._writer.shutdown(wait=True)
        for b in self._open_fds.values():
            try:
                os.close(b.fd)
            except OSError:
                pass
            b.fd = -1
        self._open_fds.clear()


def _run_jobs(jobs: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    for fn, args in jobs:
        fn(*args)


def _pwritev_all(fd: int, bufs: list[memoryview], pos: int) -> None:
    total = sum(len(x) for x in bufs)
    done = os.pwritev(fd, bufs, pos)
    if done < total:  # short write (rare): finish with plain writes
        pwrite_all(fd, b"".join(bytes(x) for x in bufs)[done:], pos + done)


# ----------------------------------------------------------------------------- layout
@record(frozen=True)
class PhysRange:
    """A guest-physical range backed by a block file range."""

    gpa: int
    length: int
    idstr: str
    block_offset: int


def machine_layout(machine: str | None, ram_size: int) -> list[tuple[int, int, int]]:
    """Where the main RAM goes: ``[(gpa, length, offset in pc.ram)]``.

    pc (i440fx): RAM of 3.5 GiB or more keeps 3 GiB below 4 GiB (``gigabyte_align``), the rest
    at 4 GiB; q35: RAM of 2.75 GiB or more keeps 2 GiB low, else everything is low.
    Other machines: the block at address 0.
    """
    name = machine or ""
    if name.startswith("pc-q35") or name == "q35":
        lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
    elif name.startswith("pc-i440fx") or name == "pc" or name.startswith("pc-"):
        lowmem = 0xC0000000 if ram_size >= 0xE0000000 else 0xE0000000
    else:
        return [(0, ram_size, 0)]
    below = min(ram_size, lowmem)
    out = [(0, below, 0)]
    if ram_size > below:
        out.append((1 << 32, ram_size - below, below))
    return out


def _virtio_mem_ranges(devices: list[tuple[str, Any]], blocks: dict[str, int]) -> list[PhysRange]:
    out: list[PhysRange] = []
    for dev_path, st in devices:
        tmp = st["tmp"]
        addr, bs = int(tmp["addr"]), int(tmp["block_size"])
        bitmap = np.asarray(st["bitmap"], dtype=np.bool_)
        block = next((n for n in blocks if n.startswith(dev_path + "/")), None)
        if block is None:
            continue
        for a, z in true_runs(bitmap):
            out.append(PhysRange(addr + a * bs, (z - a) * bs, block, a * bs))
    return out


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> None:
    """Copy a range keeping holes (SEEK_DATA/SEEK_HOLE), so the result stays sparse."""
    end = src_off + length
    pos = src_off
    while pos < end:
        try:
            data = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError:
            return  # no more data
        if data >= end:
            return
        hole = min(os.lseek(src_fd, data, os.SEEK_HOLE), end)
        p = data
        while p < hole:
            n = min(hole - p, 8 << 20)
            buf = os.pread(src_fd, n, p)
            if not buf:
                return  # the source is shorter than the range: the rest reads as zero
            pwrite_all(dst_fd, buf, dst_off + (p - src_off))
            p += len(buf)
        pos = hole


def write_physical(ranges: list[PhysRange], images: dict[str, tuple[int, int]], out_fd: int) -> None:
    """Write a raw sparse guest-physical image (``images``: idstr → (fd, length))."""
    size = max((r.gpa + r.length for r in ranges), default=0)
    os.ftruncate(out_fd, size)
    for r in ranges:
        fd, _ = images[r.idstr]
        _copy_range(fd, out_fd, r.block_offset, r.gpa, r.length)


def write_elf_core(ranges: list[PhysRange], images: dict[str, tuple[int, int]], out_fd: int) -> None:
    """Write an ELF64 x86-64 core file with one PT_LOAD per range (p_paddr = guest address).

    Like QEMU's ``dump-guest-memory`` ELF output, without CPU notes: ``p_vaddr`` is 0, file
    offsets are page aligned and the data regions are sparse where the guest RAM is zero.
    """
    ranges = sorted(ranges, key=lambda r: r.gpa)
    phnum = len(ranges)
    ehsize, phentsize = 64, 56
    data_off = -(-(ehsize + phentsize * phnum) // 4096) * 4096
    ident = b"\x7fELF" + bytes((2, 1, 1, 0)) + bytes(8)
    eh = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, ehsize if phnum else 0, 0, 0, ehsize,
                             phentsize, min(phnum, 0xFFFF), 64, 0, 0)
    phs = bytearray()
    off = data_off
    offsets = []
    for r in ranges:
        offsets.append(off)
        phs += struct.pack("<IIQQQQQQ", 1, 7, off, 0, r.gpa, r.length, r.length, 4096)
        off += -(-r.length // 4096) * 4096
    os.ftruncate(out_fd, off)
    pwrite_all(out_fd, eh + bytes(phs), 0)
    for r, o in zip(ranges, offsets):
        fd, _ = images[r.idstr]
        _copy_range(fd, out_fd, r.block_offset, o, r.length)


# ----------------------------------------------------------------------------- driver
@record
class ExtractResult:
    """What ``extract`` wrote (paths relative to DIR) and counts."""

    files: dict[str, str] = field(default_factory=dict)
    pages_written: int = 0
    physical: str | None = None


class _SlimBatch:
    """What ``vmig_json`` reads of a RAM batch (counts per flags value, size, block list)."""

    __slots__ = ("_kinds", "_count", "nbytes", "mem_size", "blocks")

    def __init__(self, b: Any) -> None:
        self._kinds = b.flag_counts()
        self._count = len(b)
        self.nbytes = b.nbytes
        self.mem_size = b.mem_size
        self.blocks = b.blocks

    def flag_counts(self) -> dict[int, int]:
        return self._kinds

    def __len__(self) -> int:
        return self._count


def _slim(ev: Any) -> Any:
    """A RamRecords event without its page bytes and columns (bounded memory)."""
    return RamRecords(ev.offset, ev.length, _SlimBatch(ev.batch), ev.section_id)


@contextlib.contextmanager
def _staged(out_dir: str, *, qemu_compat: bool = False,
            inputs: Iterable[str] = ()) -> Iterator[tuple[str, BlockImages]]:
    """A temporary folder with the block images, published into ``out_dir`` at once only if the
    body succeeds, removed otherwise (nothing half-written is left behind, on Ctrl-C too)."""
    with StagedDir(out_dir, inputs=inputs) as staged:
        images = BlockImages(staged.path, qemu_compat=qemu_compat)
        try:
            yield staged.path, images
        finally:
            images.close()


def extract(
    events: Iterable[Any],
    out_dir: str,
    *,
    fmt: str = "vmig",
    physical: str | None = None,
    elf: bool = False,
    progress: Callable[[int], None] | None = None,
    inputs: Iterable[str] = (),
) -> ExtractResult:
    """Extract RAM blocks, ``state.json`` and ``desc.json`` from decoded events into ``out_dir``.

    Args:
        events: the decoder's events (``vmig.io.streams.iter_events``).
        out_dir: DIR (created if missing). Nothing is written outside it, except ``physical``.
        fmt: ``"vmig"`` (vmig's JSON, raw trailer bytes, destination page semantics) or
            ``"qemu"`` (QEMU 7.2's analyze-migration.py -x files) or ``"qemu-10.0"`` (QEMU
            10.0's: its ``state.json`` groups fields as :mod:`vmig.vmstate.qemu_json` says).
        physical: also write a guest-physical image to this path (written atomically).
        elf: the physical image as an ELF core instead of raw.
        progress: called with the absolute offset reached, now and then.
        inputs: the input paths (DIR and ``physical`` may not be one of them).

    Raises:
        UsageError: DIR cannot be used; a target entry exists as a directory or a symlink is
            in the way; ``physical`` is a directory or an input.
        OSError: writing failed (ENOSPC…): nothing was published.
        StreamError: the stream is invalid (from the decoder or a bad page payload).
    """
    if fmt not in ("vmig", "qemu", "qemu-10.0"):
        raise UsageError(f"unknown extract format {fmt!r}")
    if physical is not None:
        from vmig.io.output import refuse_output

        refuse_output(physical, inputs, what="--physical image")
    kept: list[Any] = []
    machine: str | None = None
    trailer: bytes | None = None
    trailer_offset: int | None = None
    vm_devices: list[tuple[str, Any]] = []
    with _staged(out_dir, qemu_compat=fmt.startswith("qemu"), inputs=inputs) as (tmp, images):
        for ev in events:
            if isinstance(ev, RamRecords):
                images.add_batch(ev.batch)
                kept.append(_slim(ev))
                if progress is not None:
                    progress(ev.offset + ev.length)
                continue
            kept.append(ev)
            if isinstance(ev, Configuration):
                machine = ev.name
            elif isinstance(ev, VmDescriptionEvent):
                trailer = bytes(ev.raw)
                trailer_offset = ev.offset
            elif isinstance(ev, DeviceState) and physical is not None:
                st = _virtio_mem_state(ev)
                if st is not None:
                    vm_devices.append(st)
        images.drain()
        result = ExtractResult(pages_written=images.pages_written)
        for idstr, b in images.blocks.items():
            result.files[idstr] = os.fsdecode(b.path)
        _write_json(tmp, kept, trailer, fmt, trailer_offset)
        if physical is not None:
            _physical(images, machine, vm_devices, _staged_target(physical, out_dir, tmp), elf)
            result.physical = physical
    return result


def _staged_target(path: str, out_dir: str, tmp: str) -> str:
    """Where to write ``path``: inside the staged folder when it names a file inside DIR (so it
    is published with the rest), else ``path`` itself (written atomically on its own)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        return path
    target = os.path.join(tmp, rel)
    if os.path.lexists(target):
        raise UsageError(f"{path}: --physical would replace an extracted file; choose another name")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return target


def _virtio_mem_state(ev: Any) -> tuple[str, Any] | None:
    from vmig.vmstate import virtio_mem

    idstr = ev.idstr
    if idstr.endswith("/virtio-mem-device-early"):
        st = virtio_mem.decode_early(ev.payload, offset=ev.offset)
        return idstr[: -len("/virtio-mem-device-early")], st
    if idstr.endswith("/virtio-mem"):
        st = virtio_mem.decode_virtio_mem(ev.payload, offset=ev.offset)
        dev = st["device"]
        if "tmp" not in dev:
            return None  # 8.0+ late section: the early section carried addr and bitmap
        return idstr[: -len("/virtio-mem")], dev
    return None


def _write_json(tmp: str, kept: list[Any], trailer: bytes | None, fmt: str,
                trailer_offset: int | None = None) -> None:
    if fmt.startswith("qemu"):
        from vmig.vmstate import qemu_json

        if trailer is None:
            raise StreamError("the stream has no vmdesc trailer; analyze-migration.py -x needs one "
                              "(use --format vmig)")
        desc = qemu_json.desc_dict(trailer, offset=trailer_offset)
        state = qemu_json.state_dict(kept, dialect="10.0" if fmt == "qemu-10.0" else "7.2")
        enc = json.JSONEncoder(indent=4, separators=(",", ": "))
        _write_new(tmp, "desc.json", enc.encode(desc).encode())
        _write_new(tmp, "state.json", enc.encode(state).encode())
    else:
        from vmig.vmstate import vmig_json

        doc = vmig_json.analyze(kept)
        _write_new(tmp, "state.json", (json.dumps(doc, indent=2) + "\n").encode())
        if trailer is not None:
            _write_new(tmp, "desc.json", trailer)


def _write_new(root: str, name: str, data: bytes) -> None:
    fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        write_all(fd, data)  # every byte, or an OSError (a short write is never ignored)
    finally:
        os.close(fd)


_ROM_BLOCKS = ("pc.bios", "pc.rom", "isa-bios")


def main_ram_blocks(blocks: dict[str, int]) -> list[str]:
    """The RAMBlocks that make up the machine's main RAM, in guest-physical order.

    ``pc.ram`` when present (plain ``-m``); otherwise (``-machine memory-backend=ID`` or NUMA
    ``memdev``s, whose RAMBlocks are named by the backend ids) every block that is neither a ROM
    nor owned by a device (device blocks are ``<device path>/<name>``), in natural order of
    their ids — the stream does not record NUMA node order, so ``ram0, ram1`` is assumed to be
    node 0, node 1.
    """
    if "pc.ram" in blocks:
        return ["pc.ram"]
    import re

    def natural(s: str) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

    parts = [n for n in blocks if "/" not in n and n not in _ROM_BLOCKS]
    return sorted(parts, key=natural)


def _main_ranges(machine: str | None, blocks: dict[str, int]) -> list[PhysRange]:
    parts = main_ram_blocks(blocks)
    if not parts:
        raise RamError("no main RAM block in the stream; cannot build a physical image")
    bounds = []  # (start in the concatenated RAM, idstr, length)
    pos = 0
    for n in parts:
        bounds.append((pos, n, blocks[n]))
        pos += blocks[n]
    out: list[PhysRange] = []
    for gpa, length, off in machine_layout(machine, pos):
        end = off + length
        for start, n, ln in bounds:
            a, z = max(off, start), min(end, start + ln)
            if a < z:
                out.append(PhysRange(gpa + (a - off), z - a, n, a - start))
    return out


def _physical(images: BlockImages, machine: str | None, devices: list[tuple[str, Any]],
              path: str, elf: bool) -> str:
    blocks = {n: b.length for n, b in images.blocks.items()}
    ranges = _main_ranges(machine, blocks) + _virtio_mem_ranges(devices, blocks)
    images.drain()
    fds: dict[str, tuple[int, int]] = {}
    try:
        for name in {r.idstr for r in ranges}:  # own read-only descriptors: few, and stable
            b = images.blocks[name]
            fds[name] = (os.open(os.path.join(images.root, b.path), os.O_RDONLY | os.O_NOFOLLOW),
                         b.length)
        with AtomicFile(path) as out:
            (write_elf_core if elf else write_physical)(ranges, fds, out.fd)
    finally:
        for fd, _ in fds.values():
            os.close(fd)
    return path


def extract_mapped_ram(buf: bytes | memoryview, out_dir: str, *, inputs: Iterable[str] = (),
                       name: str = "<bytes>") -> ExtractResult:
    """Block files (and ``desc.json``, the trailer) of a mapped-ram file (QEMU 9.0+ ``file:``).

    Pages whose bitmap bit is set are copied from their fixed offsets; the others stay holes.
    ``state.json`` is not written: the device sections after the RAM area are not decoded here,
    but the whole file is decoded first, so a file cut short (or otherwise invalid) anywhere is
    refused before anything is written.

    Raises:
        StreamError: the file is not a complete, valid mapped-ram stream (``path`` = ``name``).
    """
    from vmig.io.decoding import decode_bytes
    from vmig.stream import mapped_ram
    from vmig.stream.vmdesc import find_trailer

    try:
        decode_bytes(buf)  # validates the whole file (mapped-ram pages are skipped, not read)
        blocks, _ = mapped_ram.find_block_list(buf)
    except StreamError as e:
        e.path = name  # decoded from memory: name the file
        raise
    with _staged(out_dir, inputs=inputs) as (tmp, images):
        result = ExtractResult()
        mv = memoryview(buf)
        for b in blocks:
            blk = images._open(b.idstr, b.used_length)
            result.files[b.idstr] = os.fsdecode(blk.path)
            if b.ignored:
                continue
            present = mapped_ram.present_pages(buf, b)
            for a, z in true_runs(present):
                start = b.pages_offset + a * b.page_size
                _pwritev_all(images.fd(blk), [mv[start : start + (z - a) * b.page_size]], a * b.page_size)
                result.pages_written += z - a
        found = find_trailer(buf)
        if found is not None:
            _write_new(tmp, "desc.json", bytes(found[1].raw))
    return result

