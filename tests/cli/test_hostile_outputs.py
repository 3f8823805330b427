"""``extract``, ``rewrite`` and ``--physical`` on hostile inputs and failing disks.

Inputs are built here from real captures: ``fixtures/s1.bin`` (QEMU 7.2) with its block list
edited (a 2^63-byte block, 100 000 extra blocks) and the QEMU 10.0 mapped-ram capture cut short.
Failing disks are a small tmpfs (when this process may mount one), a file-size limit
(``RLIMIT_FSIZE``) and a writer that returns short counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import lz4.frame
import pytest

from vmig.analysis.extract import MAX_BLOCK_BYTES, extract
from vmig.cli import main
from vmig.io.streams import iter_events
from vmig.testing import fixtures

ROOT = Path(__file__).resolve().parents[2]
S1 = fixtures.sample_s1()
DATA = Path(__file__).resolve().parents[1] / "data" / "ram"
MEM_SIZE_WORD = 0x1A + 17  # s1.bin: the ram START section header (17 bytes) at 0x1a, then MEM_SIZE


def s1_blocks(data: bytes) -> tuple[int, list[tuple[bytes, int]], int]:
    """(total, [(idstr, used_length)], offset after the list) of s1.bin's MEM_SIZE record."""
    w = struct.unpack_from(">Q", data, MEM_SIZE_WORD)[0]
    assert w & 0xFFF == 0x04
    total = remaining = w & ~0xFFF
    q = MEM_SIZE_WORD + 8
    out = []
    while remaining > 0:
        n = data[q]
        used = struct.unpack_from(">Q", data, q + 1 + n)[0]
        out.append((bytes(data[q + 1:q + 1 + n]), used))
        remaining -= used
        q += 1 + n + 8
    return total, out, q


def with_blocks(data: bytes, blocks: list[tuple[bytes, int]]) -> bytes:
    """s1.bin with its MEM_SIZE block list replaced (the total follows the lengths)."""
    _, _, end = s1_blocks(data)
    total = sum(u for _, u in blocks)
    entries = b"".join(bytes([len(n)]) + n + struct.pack(">Q", u) for n, u in blocks)
    return (data[:MEM_SIZE_WORD] + struct.pack(">Q", total | 0x04) + entries + data[end:])


def huge_pc_ram(length: int) -> bytes:
    data = S1.read_bytes()
    _, blocks, _ = s1_blocks(data)
    return with_blocks(data, [(n, length if n == b"pc.ram" else u) for n, u in blocks])


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, err.strip()


def vmig_child(*argv: str, limits: dict[int, int] | None = None, timeout: float = 600) -> tuple[int, str, int]:
    """Run vmig in a child with resource limits: (exit code, stderr, peak RSS in kB)."""
    script = (
        "import resource, signal, sys\n"
        f"for k, v in {dict(limits or {})!r}.items(): resource.setrlimit(k, (v, v))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from vmig.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        # VmHWM: this process image's peak RSS (ru_maxrss would keep the forking parent's)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "print(int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                       env=env, timeout=timeout)
    *lines, rss = r.stderr.strip().splitlines()
    return r.returncode, "\n".join(lines), int(rss)


def leftovers(*dirs: Path) -> list[str]:
    found = []
    for d in dirs:
        if d.exists():
            found += [str(p) for p in d.rglob("*")]
    return found


# ------------------------------------------------------------------ a 2^63-byte block
def test_ram_on_a_2_63_byte_block_is_sane_and_small(tmp_path) -> None:
    src = tmp_path / "huge.bin"
    src.write_bytes(huge_pc_ram(1 << 63))
    rc, err, rss = vmig_child("ram", "--json", str(src))
    assert rc == 0, err
    assert rss < 300 * 1024, f"peak RSS {rss} kB"


def test_ram_on_a_2_63_byte_block_reports_it(capsys, tmp_path) -> None:
    src = tmp_path / "huge.bin"
    src.write_bytes(huge_pc_ram(1 << 63))
    assert main(["ram", "--json", str(src)]) == 0
    doc = json.loads(capsys.readouterr().out)
    pc = next(b for b in doc["blocks"] if b["idstr"] == "pc.ram")
    assert pc["length"] == 1 << 63 and pc["pages"] == (1 << 63) // 4096
    # s1.bin sends the first 512 MiB of pc.ram; the rest of the claimed block was never sent
    assert pc["never_sent"] == [[512 << 20, 1 << 63]]
    assert pc["pages_sent"] == (512 << 20) // 4096


def test_diff_and_check_on_a_2_63_byte_block(tmp_path) -> None:
    src = tmp_path / "huge.bin"
    src.write_bytes(huge_pc_ram(1 << 63))
    rc, err, rss = vmig_child("diff", str(S1), str(src))
    assert rc == 1, err  # the block lengths differ, nothing else
    assert rss < 300 * 1024, f"peak RSS {rss} kB"
    rc, err, rss = vmig_child("check", str(src))
    assert rc == 0 and rss < 300 * 1024, (err, rss)


@pytest.mark.parametrize("length", [1 << 63, 4 << 40])
def test_extract_refuses_a_block_over_the_bound(tmp_path, length) -> None:
    src = tmp_path / "huge.bin"
    src.write_bytes(huge_pc_ram(length))
    out = tmp_path / "out"
    rc, err, rss = vmig_child("extract", str(src), "-o", str(out))
    assert rc == 2
    assert err.count("\n") == 0 and "pc.ram" in err and f"{MAX_BLOCK_BYTES:#x}" in err, err
    assert rss < 300 * 1024, f"peak RSS {rss} kB"
    assert leftovers(out) == [] and sorted(os.listdir(tmp_path)) == ["huge.bin"]


# ------------------------------------------------------------- 100 000 declared blocks
def test_extract_100000_blocks_with_256_open_files(tmp_path) -> None:
    data = S1.read_bytes()
    _, blocks, _ = s1_blocks(data)
    extra = [(b"x%d" % i, 4096) for i in range(100_000)]
    src = tmp_path / "many.bin"
    src.write_bytes(with_blocks(data, blocks + extra))
    out = tmp_path / "out"
    rc, err, _ = vmig_child("extract", str(src), "-o", str(out),
                            limits={resource.RLIMIT_NOFILE: 256}, timeout=1200)
    assert rc == 0, err
    assert (out / "x99999").stat().st_size == 4096
    # the real blocks still hold their pages: compare with an extract of the capture itself
    ref = tmp_path / "ref"
    assert main(["extract", str(S1), "-o", str(ref)]) == 0
    assert (out / "pc.ram").read_bytes() == (ref / "pc.ram").read_bytes()


# --------------------------------------------------------------------- failing disks
def test_short_writes_are_finished(tmp_path, monkeypatch) -> None:
    real = os.write
    calls = []

    def short(fd: int, data) -> int:  # a nearly full file system: at most 1000 bytes a call
        calls.append(fd)
        return real(fd, memoryview(data)[:1000])

    monkeypatch.setattr(os, "write", short)
    out = tmp_path / "out"
    extract(iter_events(str(S1)), str(out))
    monkeypatch.undo()
    trailer = S1.read_bytes()[0x15FA78 + 5:]
    assert (out / "desc.json").read_bytes() == trailer  # 98 810 bytes, in short pieces
    assert len(calls) > 98
    json.loads((out / "state.json").read_text())


@pytest.mark.parametrize("argv", [["extract", "{src}", "-o", "{out}"],
                                  ["extract", "{src}", "-o", "{out}", "--physical", "{out}.img"],
                                  ["rewrite", "{src}", "{out}.bin"],
                                  ["rewrite", "{src}", "{out}.bin.lz4"]])
def test_file_size_limit_exit_2_nothing_left(tmp_path, argv) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    args = [a.format(src=S1, out=out) for a in argv]
    # 600 KB: the first block file, desc.json or the rewritten stream cannot be completed
    rc, err, _ = vmig_child(*args, limits={resource.RLIMIT_FSIZE: 600_000})
    assert rc == 2, err
    assert err.count("\n") == 0 and "File too large" in err and str(work) in err, err
    assert leftovers(work) == [], "a partial output was left behind"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("size", ["160k", "320k"])
def test_extract_onto_a_filesystem_that_fills_up(tmp_path, size) -> None:
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, size):
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN); the RLIMIT_FSIZE and "
                    "short-write tests cover the same paths")
    try:
        out = mnt / "out"
        rc, err, _ = vmig_child("extract", str(S1), "-o", str(out))
        assert rc == 2, err
        assert "No space left on device (ENOSPC)" in err and str(out) in err
        assert err.count("\n") == 0
        assert os.listdir(mnt) == [], "nothing may be left behind"
        rc, err, _ = vmig_child("rewrite", str(S1), str(mnt / "s1.bin"))
        assert rc == 2 and "ENOSPC" in err and os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ------------------------------------------------------------------- what is in the way
def test_symlink_in_the_way_publishes_nothing(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "0000:00:02.0").symlink_to(elsewhere)  # s1.bin has block 0000:00:02.0/mem0
    (out / "mine").write_text("keep")
    rc, err = run(capsys, "extract", str(S1), "-o", str(out))
    assert rc == 2 and "symbolic link" in err and "0000:00:02.0" in err
    assert os.listdir(elsewhere) == []
    assert sorted(os.listdir(out)) == ["0000:00:02.0", "mine"], "published in part"


def test_outputs_that_are_directories_or_the_input(capsys, tmp_path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    src = tmp_path / "s1.bin"
    src.write_bytes(S1.read_bytes())
    before = src.read_bytes()
    for argv in (["rewrite", str(src), str(d)],
                 ["rewrite", str(src), str(src)],
                 ["extract", str(src), "-o", str(tmp_path / "x"), "--physical", str(d)],
                 ["extract", str(src), "-o", str(tmp_path / "x"), "--physical", str(src)],
                 ["extract", str(src), "-o", str(src)]):
        rc, err = run(capsys, *argv)
        assert rc == 2, argv
        assert err.count("\n") == 0
    assert src.read_bytes() == before
    assert os.listdir(d) == [] and not (tmp_path / "x").exists()


def test_rewrite_replaces_a_symlink_without_following_it(capsys, tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "out.bin"
    link.symlink_to(victim)
    rc, err = run(capsys, "rewrite", str(S1), str(link))
    assert rc == 0, err
    assert victim.read_bytes() == b"untouched"
    assert not link.is_symlink() and link.read_bytes() == S1.read_bytes()


def test_interrupt_removes_the_staged_output(tmp_path) -> None:
    out = tmp_path / "out"

    def interrupt(offset: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(iter_events(str(S1)), str(out), progress=interrupt)
    assert leftovers(tmp_path) == []
    out.mkdir()
    (out / "mine").write_text("keep")
    with pytest.raises(KeyboardInterrupt):
        extract(iter_events(str(S1)), str(out), progress=interrupt)
    assert os.listdir(out) == ["mine"]


def test_sigint_exit_130_and_clean(tmp_path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(fixtures.load("pc-running"))  # 21 MB: extract takes a while
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "vmig", "extract", str(src), "-o", str(out)],
                         stderr=subprocess.PIPE, text=True, env=env)
    # interrupt once the staged folder exists (the command is writing)
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        if any(n.startswith(".out.vmig") for n in os.listdir(tmp_path)):
            break
        time.sleep(0.01)
    if p.poll() is not None:
        pytest.fail("extract finished before it could be interrupted")
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait(timeout=300) == 130, err
    assert err.strip() == "vmig extract: interrupted"
    assert sorted(os.listdir(tmp_path)) == ["big.bin"]


# ----------------------------------------------------------- mapped-ram cut short
@pytest.fixture(scope="module")
def mapped_ram_capture() -> bytes:
    return lz4.frame.decompress((DATA / "mapped-ram-10.0.bin.lz4").read_bytes())


def test_truncated_mapped_ram_extract_fails(capsys, tmp_path, mapped_ram_capture) -> None:
    from vmig.stream import mapped_ram

    buf = mapped_ram_capture
    blocks, nxt = mapped_ram.find_block_list(buf)
    src = tmp_path / "mr.bin"
    out = tmp_path / "out"
    cuts = [5, 12, 20, 0x60, blocks[0].header_offset + 10, blocks[0].pages_offset + 4096,
            nxt, nxt + 100, len(buf) - 1]
    for cut in cuts:
        with open(src, "wb") as f:
            f.write(memoryview(buf)[:cut])
        rc, err = run(capsys, "extract", str(src), "-o", str(out))
        assert rc == 2, (cut, err)
        assert err.count("\n") == 0 and str(src) in err, (cut, err)
        assert not out.exists(), cut
    with contextlib.suppress(FileNotFoundError):
        src.unlink()


def test_physical_inside_a_new_dir_is_published_with_it(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    rc, err = run(capsys, "extract", str(S1), "-o", str(out), "--physical", str(out / "phys.img"))
    assert rc == 0, err
    assert (out / "phys.img").stat().st_size == 512 << 20  # pc: 512 MiB of RAM below 4 GiB
    assert (out / "phys.img").read_bytes()[:1 << 20] == (out / "pc.ram").read_bytes()[:1 << 20]
    rc, err = run(capsys, "extract", str(S1), "-o", str(out), "--physical", str(out / "pc.ram"))
    assert rc == 2 and "would replace an extracted file" in err
    assert sorted(os.listdir(tmp_path)) == ["out"]
