"""Containers built here byte by byte (qcow2 per docs/interop/qcow2.txt, libvirt per its 92-byte
header), valid and hostile: reads of v2/v3 images, 32- and 64-bit VM-state sizes, zero and
unallocated clusters, extended L2 entries; and one-line errors (exit 2, file and offset named, no
allocation by a claimed size) for truncation, huge counts, entries outside the file, loops,
unknown codes, partial saves, mismatched payloads, corrupt or truncated compression.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from vmig.cli import main
from vmig.io.containers import InputPath
from vmig.io.streams import read_all
from vmig.testing.fixtures import sample_s1

S1 = sample_s1().read_bytes()
REPO = Path(__file__).resolve().parents[2]
CB = 12
CS = 1 << CB
XCB = 14  # extended L2 entries need clusters of at least 16 KiB


def qcow2(stream: bytes, *, version: int = 3, large: bool = False, disk: int = 1 << 20,
          zero: tuple[int, ...] = (), unallocated: tuple[int, ...] = (), extended: bool = False,
          nb_snapshots: int | None = None, extra_size: int | None = None, cb: int = CB) -> bytearray:
    """An image with one snapshot 'vm' (ID 1) whose VM state is ``stream``.

    Layout: cluster 0 header, 1 snapshot table, 2 L1, then one L2 cluster per L1 entry used, then
    the data clusters in order. ``zero``/``unallocated``: VM-state cluster indices read as zeros.
    """
    CS = 1 << cb  # noqa: N806
    entry = 16 if extended else 8
    per_l2 = CS // entry
    span = CS * per_l2
    first = -(-disk // span)
    nclusters = -(-len(stream) // CS)
    nl2 = -(-nclusters // per_l2)
    l1_size = first + nl2
    l2_at = 3 * CS
    data_at = l2_at + nl2 * CS
    img = bytearray(data_at + nclusters * CS)
    img[data_at:data_at + len(stream)] = stream
    l1 = bytearray(8 * l1_size)
    for k in range(nl2):
        struct.pack_into(">Q", l1, 8 * (first + k), (l2_at + k * CS) | 1 << 63)
    img[2 * CS:2 * CS + len(l1)] = l1
    for c in range(nclusters):
        pos = l2_at + (c // per_l2) * CS + (c % per_l2) * entry
        host = data_at + c * CS
        if c in unallocated:
            continue
        if extended:
            if c in zero:
                struct.pack_into(">QQ", img, pos, 0, 0xFFFF_FFFF << 32)
            else:
                struct.pack_into(">QQ", img, pos, host | 1 << 63, 0xFFFF_FFFF)
        else:
            struct.pack_into(">Q", img, pos, (host | 1 << 63) if c not in zero else (host | 1))
    hdr = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, 0, 0, cb, disk, 0, l1_size, 2 * CS,
                      0, 0, 1 if nb_snapshots is None else nb_snapshots, CS)
    if version == 3:
        hdr += struct.pack(">QQQII", 1 << 4 if extended else 0, 0, 0, 4, 104)
    img[:len(hdr)] = hdr
    extra = struct.pack(">QQ", len(stream), disk) if version == 3 else b""
    vm32 = 0 if large else len(stream)
    sid, name = b"1", b"vm"
    ent = struct.pack(">QIHHIIQII", 2 * CS, l1_size, len(sid), len(name), 1_700_000_000, 0, 5_000_000_000,
                      vm32, len(extra) if extra_size is None else extra_size) + extra + sid + name
    img[CS:CS + len(ent)] = ent
    return img


def _write(tmp_path: Path, data: bytes, name: str = "in.img") -> str:
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return str(p)


def _fails(capsys, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ------------------------------------------------------------------------------------ valid reads

@pytest.mark.parametrize(("version", "large", "extended"), [(2, False, False), (3, False, False), (3, True, False),
                                                              (3, False, True)],
                         ids=["v2", "v3", "v3-64bit-size", "v3-extended-l2"])
def test_vm_state_read_back(tmp_path, capsys, version, large, extended):
    path = _write(tmp_path, qcow2(S1, version=version, large=large, extended=extended,
                                  cb=XCB if extended else CB))
    assert read_all(path) == S1
    assert main(["check", path]) == 0
    assert main(["check", path, "--snapshot", "vm"]) == 0
    assert main(["check", path, "--snapshot", "1"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("extended", [False, True], ids=["standard", "extended-l2"])
def test_zero_and_unallocated_clusters_read_as_zeros(tmp_path, extended):
    cs = 1 << (XCB if extended else CB)
    img = qcow2(S1, zero=(3,), unallocated=(5, 6), extended=extended, cb=XCB if extended else CB)
    want = bytearray(S1)
    for c in (3, 5, 6):
        want[c * cs:(c + 1) * cs] = bytes(cs)
    assert read_all(_write(tmp_path, img)) == bytes(want)


def test_vm_state_spanning_several_l2_tables(tmp_path):
    big = S1 * 3  # > 2 MiB: the VM state needs more than one L2 table with 4 KiB clusters
    path = _write(tmp_path, qcow2(big))
    assert read_all(path) == big
    assert read_all(InputPath(path, "vm")) == big


# ------------------------------------------------------------------------------------ hostile qcow2

def test_truncated_image(tmp_path, capsys):
    img = qcow2(S1)
    path = _write(tmp_path, img[: len(img) - 3 * CS])
    _fails(capsys, ["sections", path], path, "points outside the file", "offset")


def test_huge_snapshot_count_allocates_nothing(tmp_path, capsys):
    path = _write(tmp_path, qcow2(S1, nb_snapshots=0xFFFF_FFFF))
    tracemalloc.start()
    try:
        _fails(capsys, ["info", path], path, "too many snapshots", "offset 0x3c")
        path2 = _write(tmp_path, qcow2(S1, nb_snapshots=60000), "b.img")
        _fails(capsys, ["sections", path2], path2, "snapshot table (60000 entries", "runs past the end")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_huge_extra_data_and_vm_state_past_l1(tmp_path, capsys):
    _fails(capsys, ["sections", _write(tmp_path, qcow2(S1, extra_size=0x7FFF_FFFF))], "extra data too large")
    img = qcow2(S1)
    struct.pack_into(">I", img, CS + 8, 1)  # l1_size 1: the VM state (L1 index 1) is outside it
    _fails(capsys, ["sections", _write(tmp_path, img, "c.img")], "extends past its L1 table")
    img = qcow2(S1, version=3)
    struct.pack_into(">Q", img, CS + 40, 1 << 60)  # 64-bit VM state size far beyond the L1 table
    _fails(capsys, ["sections", _write(tmp_path, img, "d.img")], "extends past its L1 table")
    img = qcow2(S1, version=3)
    struct.pack_into(">I", img, CS + 8, 0xFFFF_FFFF)  # l1_size beyond QEMU's 32 MiB L1 limit
    struct.pack_into(">Q", img, CS + 40, 1 << 62)
    _fails(capsys, ["sections", _write(tmp_path, img, "e.img")], "L1 table too large")


def test_l1_and_l2_entries_outside_the_file(tmp_path, capsys):
    img = qcow2(S1)
    struct.pack_into(">Q", img, 2 * CS + 8, (1 << 40) | 1 << 63)  # L1[1] -> far away
    _fails(capsys, ["sections", _write(tmp_path, img)], "L1 entry 1 points outside the file",
           f"offset {2 * CS + 8:#x}")
    img = qcow2(S1)
    struct.pack_into(">Q", img, 3 * CS + 8 * 7, (1 << 40) | 1 << 63)  # L2[7] -> far away
    _fails(capsys, ["sections", _write(tmp_path, img, "b.img")], "L2 entry points outside the file",
           f"offset {3 * CS + 56:#x}")


@pytest.mark.parametrize(("where", "target", "held"), [
    ("l1", 2 * CS, "the L1 table"),        # L1 entry -> the L1 table itself
    ("l2", 3 * CS, "an L2 table"),         # L2 entry -> its own L2 table
    ("l2", 2 * CS, "the L1 table"),
    ("l2", CS, "the snapshot table"),
])
def test_loops_are_refused(tmp_path, capsys, where, target, held):
    img = qcow2(S1)
    pos = 2 * CS + 8 if where == "l1" else 3 * CS + 8 * 4
    struct.pack_into(">Q", img, pos, target | 1 << 63)
    _fails(capsys, ["sections", _write(tmp_path, img)], f"points at {held} (a loop)", f"offset {pos:#x}")


def test_same_l2_table_twice_is_a_loop(tmp_path, capsys):
    big = S1 * 3
    img = qcow2(big)
    l2_first = struct.unpack_from(">Q", img, 2 * CS + 8)[0]
    struct.pack_into(">Q", img, 2 * CS + 16, l2_first)  # L1[2] = L1[1]
    _fails(capsys, ["sections", _write(tmp_path, img)], "points at an L2 table (a loop)")


def test_extended_l2_needs_16k_clusters(tmp_path, capsys):
    _fails(capsys, ["sections", _write(tmp_path, qcow2(S1, extended=True))], "extended L2 entries", "cluster_bits")


def test_compressed_cluster_and_unknown_features(tmp_path, capsys):
    img = qcow2(S1)
    struct.pack_into(">Q", img, 3 * CS, 1 << 62 | 12345)
    _fails(capsys, ["sections", _write(tmp_path, img)], "compressed cluster")
    img = qcow2(S1)
    struct.pack_into(">Q", img, 72, 1 << 9)
    _fails(capsys, ["sections", _write(tmp_path, img, "b.img")], "unknown incompatible feature bits")
    img = qcow2(S1)
    struct.pack_into(">I", img, 4, 7)
    _fails(capsys, ["sections", _write(tmp_path, img, "c.img")], "unsupported qcow2 version", "expected 2 or 3")


def test_qcow2_from_a_pipe_is_refused():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "vmig", "check", "-"], input=bytes(qcow2(S1)),
                       capture_output=True, env=env)
    assert r.returncode == 2
    assert b"qcow2 image from a pipe" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_snapshot_option_on_a_plain_stream(tmp_path, capsys):
    _fails(capsys, ["sections", str(sample_s1()), "--snapshot", "x"], "--snapshot applies to qcow2 images")


# ------------------------------------------------------------------------------------ libvirt

def libvirt(stream: bytes, *, code: int = 0, magic: bytes = b"LibvirtQemudSave", data_len: int = 4096,
            version: int = 2, cookie: int = 0, big_endian: bool = False) -> bytes:
    xml = b"<domain type='qemu'><name>hand</name></domain>\n"
    area = xml + b"\0" * (data_len - len(xml))
    o = ">" if big_endian else "<"
    return magic + struct.pack(o + "5I", version, data_len, 1, code, cookie) + bytes(56) + area + stream


def test_libvirt_valid_raw_gzip_and_byte_swapped(tmp_path, capsys):
    for i, (data, name) in enumerate([(libvirt(S1), "hand"), (libvirt(gzip.compress(S1), code=1), "hand"),
                                      (libvirt(S1, big_endian=True), "hand")]):
        path = _write(tmp_path, data, f"{i}.save")
        assert read_all(path) == S1
        assert main(["info", path, "--json"]) == 0
        assert f'"domain": "{name}"' in capsys.readouterr().out


def test_libvirt_hostile_headers(tmp_path, capsys):
    _fails(capsys, ["sections", _write(tmp_path, libvirt(S1, code=9))],
           "unknown libvirt save image compression code", "offset 0x1c", "found 9")
    _fails(capsys, ["sections", _write(tmp_path, libvirt(S1, data_len=4096)[:3000], "b")],
           "domain XML area runs past the end of the file")
    _fails(capsys, ["sections", _write(tmp_path, libvirt(S1, version=9), "c")], "unsupported libvirt save image version")
    _fails(capsys, ["sections", _write(tmp_path, libvirt(S1, magic=b"LibvirtQemudPart"), "d")],
           "partial libvirt save image")
    _fails(capsys, ["sections", _write(tmp_path, libvirt(S1, code=1), "e")], "header says gzip (1) but")
    _fails(capsys, ["sections", _write(tmp_path, libvirt(S1, cookie=5000), "f")], "cookie offset outside")
    tracemalloc.start()
    try:
        data = bytearray(libvirt(S1))
        struct.pack_into("<I", data, 20, 0xFFFF_FFF0)
        _fails(capsys, ["sections", _write(tmp_path, data, "g")], "runs past the end of the file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_libvirt_from_a_pipe_and_truncated_payload(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "vmig", "check", "-"], input=libvirt(gzip.compress(S1), code=1),
                        capture_output=True, env=env)
    assert ok.returncode == 0, ok.stderr
    cut = libvirt(gzip.compress(S1), code=1)
    bad = subprocess.run([sys.executable, "-m", "vmig", "sections", "-"], input=cut[: len(cut) - 5000],
                         capture_output=True, env=env)
    assert bad.returncode == 2 and b"gzip data ends early" in bad.stderr
    huge = bytearray(libvirt(S1))
    struct.pack_into("<I", huge, 20, 0x7000_0000)
    r = subprocess.run([sys.executable, "-m", "vmig", "sections", "-"], input=bytes(huge), capture_output=True, env=env)
    assert r.returncode == 2 and b"too large to read from a pipe" in r.stderr


# ------------------------------------------------------------------------------------ compression

def test_corrupt_and_truncated_compression(tmp_path, capsys):
    import lzma

    import zstandard

    z = zstandard.ZstdCompressor(write_checksum=True).compress(S1)  # as the zstd program writes
    _fails(capsys, ["sections", _write(tmp_path, z[: len(z) // 2], "a.zst")], "zstd data ends early")
    bad = bytearray(z)
    bad[len(bad) // 2] ^= 0xFF
    bad[len(bad) // 2 + 1] ^= 0xFF
    _fails(capsys, ["sections", _write(tmp_path, bad, "b.zst")], "zstd data is corrupt")
    x = lzma.compress(S1)
    _fails(capsys, ["sections", _write(tmp_path, x[:-40], "c.xz")], "xz data ends early")
    g = gzip.compress(S1)
    _fails(capsys, ["sections", _write(tmp_path, g[:1000], "d.gz")], "gzip data ends early", "offset")


def test_nested_too_deep(tmp_path, capsys):
    data = S1
    for _ in range(6):
        data = gzip.compress(data, compresslevel=1)
    _fails(capsys, ["sections", _write(tmp_path, data)], "nested more than 4 deep")


def test_lzop_without_the_program(tmp_path):
    if shutil.which("lzop") is None:  # installed by scripts/test
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("lzop program missing: cannot make lzop data")
    lzop = subprocess.run(["lzop", "-c"], input=S1, capture_output=True, check=True)
    f = tmp_path / "x.lzo"
    f.write_bytes(lzop.stdout)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "vmig", "check", str(f)], capture_output=True, env=env)
    assert r.returncode == 2
    assert b"needs the 'lzop' program" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    ok = subprocess.run([sys.executable, "-m", "vmig", "check", str(f)], capture_output=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ok.returncode == 0, ok.stderr
