"""qcow2 images: the header, the internal-snapshot table, and a snapshot's VM state (what HMP
``savevm`` / ``virsh snapshot-create`` store: the migration stream of the VM).

Layout (QEMU ``docs/interop/qcow2.txt``; all numbers big-endian): a header (v2: 72 bytes,
v3: ``header_length``), the snapshot table at ``snapshots_offset`` (``nb_snapshots`` entries of
40 bytes + extra data + ID + name, each padded to 8 bytes), and per snapshot an L1 table of
``l1_size`` entries pointing to L2 tables (one cluster each) whose entries point to data clusters.
A snapshot's VM state is stored in its own guest address space just past the virtual disk: from
the first L1 entry that maps no disk cluster (``l1_vm_state_index`` = disk size rounded up to
whole L2 spans) for ``vm_state_size`` bytes (the 64-bit size in the extra data when present, else
the 32-bit one). Unallocated and zero clusters read as zeros; extended L2 entries (32
subclusters) are followed per subcluster. Compressed clusters, encryption and external data
files are refused (``savevm`` writes none of them).

Hostile images: every offset and length is checked against the file size before anything is read
or allocated by it; a snapshot table larger than QEMU's limits, L1/L2 entries outside the file,
and L2 tables or data clusters that land on metadata already walked (a loop) are one-line
``StreamError`` s naming the file, offset and what was expected.

Sans-I/O except for the ``pread(offset, n)`` callable the caller hands in (an mmap'ed or open file).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator

from vmig.errors import StreamError, UsageError
from vmig.records import field, record

__all__ = ["MAGIC", "Qcow2Image", "Snapshot", "parse", "select_snapshot", "vm_state_extents", "refcount",
           "writable_vm_state", "VmStateWriter",
           "snapshot_listing"]

MAGIC = b"QFI\xfb"
MAX_SNAPSHOTS = 65536  # QEMU's QCOW_MAX_SNAPSHOTS
MAX_SNAPSHOT_EXTRA = 1024  # QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA
MAX_L1_BYTES = 32 << 20  # QEMU's QCOW_MAX_L1_SIZE
SNAPSHOT_ENTRY_MIN = 40
INCOMPAT_EXTERNAL_DATA = 1 << 2
INCOMPAT_COMPRESSION_TYPE = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
INCOMPAT_KNOWN = 0x1F
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55
L2_COMPRESSED = 1 << 62
L2_ZERO = 1

Pread = Callable[[int, int], bytes]


@record(frozen=True)
class Snapshot:
    """One entry of the snapshot table."""

    index: int
    entry_offset: int
    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    vm_state_size_32: int
    disk_size: int | None
    icount: int | None

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "vm_state_size": self.vm_state_size,
                "date_sec": self.date_sec, "date_nsec": self.date_nsec,
                "vm_clock_nsec": self.vm_clock_nsec, "disk_size": self.disk_size,
                "icount": self.icount, "l1_table_offset": self.l1_table_offset, "l1_size": self.l1_size}


@record
class Qcow2Image:
    """The parts of a qcow2 header vmig uses, and the snapshot table."""

    name: str
    file_size: int
    version: int
    cluster_bits: int
    size: int
    incompatible_features: int
    snapshots_offset: int
    backing_file: str | None
    snapshots: list[Snapshot] = field(default_factory=list)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTENDED_L2)

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    def to_json(self) -> dict:
        return {"format": "qcow2", "version": self.version, "cluster_size": self.cluster_size,
                "virtual_size": self.size, "backing_file": self.backing_file,
                "extended_l2": self.extended_l2,
                "snapshots": [s.to_json() for s in self.snapshots], "listing": snapshot_listing(self)}


def _err(msg: str, name: str, offset: int | None = None, **kw) -> StreamError:
    return StreamError(f"qcow2: {msg}", path=name, offset=offset, **kw)


def _need(pread: Pread, off: int, n: int, file_size: int, name: str, what: str) -> bytes:
    if off < 0 or n < 0 or off + n > file_size:
        raise _err(f"{what} ({n} bytes at {off:#x}) runs past the end of the file", name, off,
                   expected=f"end <= file size {file_size}", found=off + n)
    b = pread(off, n)
    if len(b) != n:
        raise _err(f"{what}: short read", name, off, expected=n, found=len(b))
    return b


def parse(pread: Pread, file_size: int, name: str) -> Qcow2Image:
    """Read the header and the snapshot table.

    Raises:
        StreamError: not a qcow2 image, an unsupported feature, or a hostile table.
    """
    head = _need(pread, 0, 72, file_size, name, "qcow2 header")
    (magic, version, backing_off, backing_size, cluster_bits, size, crypt, _l1_size, _l1_off,
     _rt_off, _rt_clusters, nb_snapshots, snapshots_offset) = struct.unpack(">4sIQIIQIIQQIIQ", head)
    if magic != MAGIC:
        raise _err("not a qcow2 image", name, 0, expected=repr(MAGIC), found=repr(magic))
    if version not in (2, 3):
        raise _err("unsupported qcow2 version", name, 4, expected="2 or 3", found=version)
    incompat = 0
    if version == 3:
        v3 = _need(pread, 72, 32, file_size, name, "qcow2 v3 header")
        incompat = struct.unpack_from(">Q", v3, 0)[0]
        header_length = struct.unpack_from(">I", v3, 28)[0]
        if header_length < 104 or header_length > file_size:
            raise _err("bad v3 header length", name, 100, expected=">= 104 and inside the file",
                       found=header_length)
    if not 9 <= cluster_bits <= 21:
        raise _err("cluster_bits out of range", name, 20, expected="9..21", found=cluster_bits)
    if incompat & INCOMPAT_EXTENDED_L2 and cluster_bits < 14:
        raise _err("extended L2 entries need clusters of at least 16 KiB", name, 20, expected="cluster_bits >= 14",
                   found=cluster_bits)
    if incompat & ~INCOMPAT_KNOWN:
        raise _err("unknown incompatible feature bits", name, 72, expected=f"only bits of {INCOMPAT_KNOWN:#x}",
                   found=f"{incompat:#x}")
    if incompat & INCOMPAT_EXTERNAL_DATA:
        raise _err("images with an external data file have no internal snapshots", name, 72)
    if crypt:
        raise _err("encrypted image: vmig reads unencrypted VM state only", name, 32, expected=0, found=crypt)
    backing = None
    if backing_off:
        if backing_size > 1023:
            raise _err("backing file name too long", name, 16, expected="<= 1023", found=backing_size)
        backing = _need(pread, backing_off, backing_size, file_size, name, "backing file name").decode(
            "utf-8", errors="replace")
    img = Qcow2Image(name, file_size, version, cluster_bits, size, incompat, snapshots_offset, backing)
    if nb_snapshots > MAX_SNAPSHOTS:
        raise _err("too many snapshots", name, 60, expected=f"<= {MAX_SNAPSHOTS}", found=nb_snapshots)
    if nb_snapshots and snapshots_offset + nb_snapshots * SNAPSHOT_ENTRY_MIN > file_size:
        raise _err(f"snapshot table ({nb_snapshots} entries of at least {SNAPSHOT_ENTRY_MIN} bytes at "
                   f"{snapshots_offset:#x}) runs past the end of the file", name, 60,
                   expected=f"<= {max(0, file_size - snapshots_offset) // SNAPSHOT_ENTRY_MIN} entries",
                   found=nb_snapshots)
    off = snapshots_offset
    for i in range(nb_snapshots):
        sn, off = _snapshot_entry(pread, off, i, img)
        img.snapshots.append(sn)
    return img


def _snapshot_entry(pread: Pread, off: int, index: int, img: Qcow2Image) -> tuple[Snapshot, int]:
    name, fs = img.name, img.file_size
    what = f"snapshot table entry {index}"
    fixed = _need(pread, off, SNAPSHOT_ENTRY_MIN, fs, name, what)
    (l1_off, l1_size, id_size, name_size, date_sec, date_nsec, vm_clock, vm32,
     extra_size) = struct.unpack(">QIHHIIQII", fixed)
    if extra_size > MAX_SNAPSHOT_EXTRA:
        raise _err(f"{what}: extra data too large", name, off + 36, expected=f"<= {MAX_SNAPSHOT_EXTRA}",
                   found=extra_size)
    rest = _need(pread, off + SNAPSHOT_ENTRY_MIN, extra_size + id_size + name_size, fs, name, what)
    extra = rest[:extra_size]
    vm_large = struct.unpack_from(">Q", extra, 0)[0] if extra_size >= 8 else None
    disk_size = struct.unpack_from(">Q", extra, 8)[0] if extra_size >= 16 else None
    icount = struct.unpack_from(">q", extra, 16)[0] if extra_size >= 24 else None
    sid = rest[extra_size:extra_size + id_size].decode("utf-8", errors="replace")
    sname = rest[extra_size + id_size:].decode("utf-8", errors="replace")
    end = off + SNAPSHOT_ENTRY_MIN + extra_size + id_size + name_size
    end += -end % 8
    return Snapshot(index, off, sid, sname, l1_off, l1_size, date_sec, date_nsec, vm_clock,
                    vm_large if vm_large is not None else vm32, vm32, disk_size, icount), end


def _describe(img: Qcow2Image) -> str:
    return ", ".join(f"{s.id} {s.name!r}" for s in img.snapshots)


def select_snapshot(img: Qcow2Image, want: str | None) -> Snapshot:
    """The snapshot named or numbered ``want`` (IDs first, as QEMU's ``loadvm`` looks them up), or
    the only one when ``want`` is None.

    Raises:
        UsageError: no snapshot, several and none chosen, or no match (the message lists them).
    """
    if not img.snapshots:
        raise UsageError(f"{img.name}: qcow2 image without internal snapshots (no VM state to read)")
    if want is None:
        if len(img.snapshots) == 1:
            return img.snapshots[0]
        raise UsageError(f"{img.name}: qcow2 image with {len(img.snapshots)} snapshots; choose one with "
                         f"--snapshot NAME|ID: {_describe(img)}")
    for key in ("id", "name"):
        for s in img.snapshots:
            if getattr(s, key) == want:
                return s
    raise UsageError(f"{img.name}: no snapshot {want!r} in the qcow2 image; it has: {_describe(img)}")


def vm_state_extents(img: Qcow2Image, snap: Snapshot, pread: Pread) -> Iterator[tuple[int | None, int]]:
    """The snapshot's VM state as runs ``(host offset or None for zeros, length)``, in order,
    adjacent host runs merged; lazily (one L2 table read at a time).

    Raises:
        StreamError: no VM state, L1/L2 entries outside the file or in a loop, compressed clusters.
    """
    name, fs, cs = img.name, img.file_size, img.cluster_size
    if snap.vm_state_size == 0:
        raise UsageError(f"{name}: snapshot {snap.id} {snap.name!r} has no VM state (a disk-only snapshot)")
    span = cs * img.l2_entries  # virtual bytes one L1 entry maps
    disk = snap.disk_size if snap.disk_size is not None else img.size
    first = -(-disk // span)  # l1_vm_state_index
    last = (first * span + snap.vm_state_size - 1) // span
    where = f"snapshot {snap.id} {snap.name!r}"
    if snap.l1_table_offset % cs:
        raise _err(f"{where}: L1 table not cluster aligned", name, snap.entry_offset,
                   expected=f"a multiple of {cs}", found=f"{snap.l1_table_offset:#x}")
    if snap.l1_size * 8 > MAX_L1_BYTES:
        raise _err(f"{where}: L1 table too large", name, snap.entry_offset + 8,
                   expected=f"<= {MAX_L1_BYTES // 8} entries", found=snap.l1_size)
    if last >= snap.l1_size:
        raise _err(f"{where}: VM state of {snap.vm_state_size} bytes extends past its L1 table", name,
                   snap.entry_offset + 8, expected=f"l1_size > {last}", found=snap.l1_size)
    l1 = _need(pread, snap.l1_table_offset + 8 * first, 8 * (last - first + 1), fs, name, f"{where}: L1 table")
    meta: dict[int, str] = {0: "the header"}  # cluster index -> what it holds
    for c in range(snap.l1_table_offset // cs, -(-(snap.l1_table_offset + 8 * snap.l1_size) // cs)):
        meta.setdefault(c, "the L1 table")
    if img.snapshots_offset:
        for c in range(img.snapshots_offset // cs, img.snapshots[-1].entry_offset // cs + 1):
            meta.setdefault(c, "the snapshot table")
    remaining = snap.vm_state_size
    run_host: int | None = None
    run_len = 0
    sub = cs // 32
    for k in range(last - first + 1):
        l1e = struct.unpack_from(">Q", l1, 8 * k)[0]
        l2_off = l1e & OFFSET_MASK
        l1_pos = snap.l1_table_offset + 8 * (first + k)
        n_here = min(remaining, span)  # the VM state starts at an L1 boundary
        pieces: list[tuple[int | None, int]]
        if l2_off == 0:
            pieces = [(None, n_here)]
        else:
            if l2_off + cs > fs:
                raise _err(f"{where}: L1 entry {first + k} points outside the file", name, l1_pos,
                           expected=f"an L2 table below {fs:#x}", found=f"{l2_off:#x}")
            held = meta.get(l2_off // cs)
            if held is not None:
                raise _err(f"{where}: L1 entry {first + k} points at {held} (a loop)", name, l1_pos,
                           expected="an L2 table of its own", found=f"{l2_off:#x}")
            meta[l2_off // cs] = "an L2 table"
            n_clusters = -(-n_here // cs)
            l2 = pread(l2_off, n_clusters * img.l2_entry_size)
            pieces = []
            left = n_here
            for j in range(n_clusters):
                e = struct.unpack_from(">Q", l2, j * img.l2_entry_size)[0]
                take = min(cs, left)
                left -= take
                pos = l2_off + j * img.l2_entry_size
                if e & L2_COMPRESSED:
                    raise _err(f"{where}: compressed cluster in the VM state (savevm writes none)", name, pos)
                host = e & OFFSET_MASK
                if img.extended_l2:
                    alloc = struct.unpack_from(">Q", l2, j * 16 + 8)[0] & 0xFFFF_FFFF
                    if alloc:
                        _check_data(host, take, meta, img, where, pos)
                    for s_i in range(-(-take // sub)):
                        t = min(sub, take - s_i * sub)
                        pieces.append((host + s_i * sub if alloc >> s_i & 1 else None, t))
                    continue
                if host == 0 or e & L2_ZERO:
                    pieces.append((None, take))
                else:
                    pieces.append((_check_data(host, take, meta, img, where, pos), take))
        for host, n in pieces:
            if run_len and ((host is None and run_host is None) or
                            (host is not None and run_host is not None and run_host + run_len == host)):
                run_len += n
                continue
            if run_len:
                yield run_host, run_len
            run_host, run_len = host, n
        remaining -= n_here
    if run_len:
        yield run_host, run_len


def _check_data(host: int, take: int, meta: dict[int, str], img: Qcow2Image, where: str, pos: int) -> int:
    cs = img.cluster_size
    if host % cs or host + take > img.file_size:
        raise _err(f"{where}: L2 entry points outside the file", img.name, pos,
                   expected=f"a data cluster below {img.file_size:#x}", found=f"{host:#x}")
    held = meta.get(host // cs)
    if held is not None:
        raise _err(f"{where}: L2 entry points at {held} (a loop)", img.name, pos,
                   expected="a data cluster", found=f"{host:#x}")
    return host


def _size_text(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0
    v = float(n)
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.3g} {units[i]}"


def snapshot_listing(img: Qcow2Image) -> str:
    """The snapshot table as ``qemu-img snapshot -l`` prints it (dates in local time)."""
    lines = ["Snapshot list:", f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}"]
    for s in img.snapshots:
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.date_sec))
        ms = s.vm_clock_nsec // 1_000_000
        clock = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
        icount = "" if s.icount is None or s.icount < 0 else str(s.icount)
        lines.append(f"{s.id:<9} {s.name:<16} {_size_text(s.vm_state_size):>8}{date:>20}{clock:>13}{icount:>11}")
    return "\n".join(lines) + "\n"


def refcount(img: Qcow2Image, pread: Pread, host: int) -> int:
    """The reference count of the host cluster holding byte ``host`` (refcount table, then block).

    Raises:
        StreamError: the refcount table or block lies outside the file.
    """
    head = _need(pread, 48, 12, img.file_size, img.name, "qcow2 header")
    rt_off, rt_clusters = struct.unpack(">QI", head)
    order = 4
    if img.version == 3:
        order = struct.unpack(">I", _need(pread, 96, 4, img.file_size, img.name, "qcow2 header"))[0]
        if order > 6:
            raise _err("refcount_order out of range", img.name, 96, expected="<= 6", found=order)
    bits = 1 << order
    per_block = img.cluster_size * 8 // bits
    cluster = host >> img.cluster_bits
    idx = cluster // per_block
    if idx >= rt_clusters * img.cluster_size // 8:
        return 0
    block = struct.unpack(">Q", _need(pread, rt_off + 8 * idx, 8, img.file_size, img.name, "refcount table"))[0]
    block &= OFFSET_MASK
    if block == 0:
        return 0
    i = cluster % per_block
    if bits >= 8:
        raw = _need(pread, block + i * bits // 8, bits // 8, img.file_size, img.name, "refcount block")
        return int.from_bytes(raw, "big")
    byte = _need(pread, block + i * bits // 8, 1, img.file_size, img.name, "refcount block")[0]
    return (byte >> (i * bits % 8)) & ((1 << bits) - 1)


def writable_vm_state(img: Qcow2Image, snap: Snapshot, pread: Pread) -> list[tuple[int, int]]:
    """The host runs ``(offset, length)`` of the snapshot's VM state, checked for being written in
    place: every cluster allocated and referenced once (so no other snapshot or the active image
    shares it).

    Raises:
        UsageError: a cluster is unallocated/zero or shared (the image would need new clusters).
    """
    runs: list[tuple[int, int]] = []
    cs = img.cluster_size
    for host, n in vm_state_extents(img, snap, pread):
        if host is None:
            raise UsageError(f"{img.name}: snapshot {snap.id} {snap.name!r}: its VM state has unallocated or zero "
                             "clusters; vmig writes a VM state in place only")
        for c in range(host // cs, -(-(host + n) // cs)):
            rc = refcount(img, pread, c * cs)
            if rc != 1:
                raise UsageError(f"{img.name}: snapshot {snap.id} {snap.name!r}: VM state cluster at {c * cs:#x} has "
                                 f"refcount {rc} (shared); vmig writes unshared clusters in place only")
        runs.append((host, n))
    return runs


class VmStateWriter:
    """Writes a new VM state of exactly the old length over ``runs`` (from
    :func:`writable_vm_state`) through ``pwrite(offset, data)``."""

    def __init__(self, runs: list[tuple[int, int]], pwrite: Callable[[int, bytes], None], name: str) -> None:
        self._runs = list(runs)
        self._pwrite = pwrite
        self._i = 0
        self._used = 0
        self.name = name
        self.total = sum(n for _, n in runs)
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        mv = memoryview(data)
        while len(mv):
            if self._i >= len(self._runs):
                raise UsageError(f"{self.name}: the new VM state is longer than the snapshot's ({self.total} bytes); "
                                 "vmig keeps the VM state length (edits must keep payload lengths)")
            host, n = self._runs[self._i]
            k = min(len(mv), n - self._used)
            self._pwrite(host + self._used, bytes(mv[:k]))
            self._used += k
            self.written += k
            mv = mv[k:]
            if self._used == n:
                self._i += 1
                self._used = 0

    def finish(self) -> None:
        if self.written != self.total:
            raise UsageError(f"{self.name}: the new VM state has {self.written} bytes, the snapshot's has "
                             f"{self.total}; vmig keeps the VM state length")
