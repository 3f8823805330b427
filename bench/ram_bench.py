#!/usr/bin/env python3
"""RAM benchmark: vmig against QEMU's own scripts/analyze-migration.py on real memory layouts.

Builds (once, cached in ~/.cache/vmig/bench, never in the repository) migration streams with
real QEMU 7.2: a paused ``pc`` guest whose main RAM is a ``memory-backend-file`` holding a page
pattern written here (``-machine pc,memory-backend=ram0``; no guest kernel needed), migrated
with ``exec:cat > FILE``, in these layouts:

* ``z10-1g`` / ``z10-4g``: 1 GiB / 4 GiB guest, every 10th page zero, the others random;
* ``runs-1g``: 1 GiB guest, alternating zero and random runs of random length (1-64 pages);
* ``long-1g``: 1 GiB guest, alternating zero and random runs of 8-128 MiB;
* ``booted``: a booted Linux guest (512 MiB, the test guest of ``vmig.testing.qemu`` with 64 MiB
  of tmpfs data and its page-dirtying loop) migrated live with limited bandwidth over 5
  dirty-bitmap syncs.

Then, in the same run, per stream and command, the best of ``--runs`` wall times of vmig and of
the peer (default: 2, and 7 for the streams under 256 MiB, whose start-up bound runs vary most;
both with a warm byte-code cache and a warm page cache), and their ratio:
``analyze``, ``check``, ``info memory-devices`` and ``ram`` against the peer's default mode
(``-f S``); ``extract --format qemu`` against ``-x`` (outputs compared file by file), once with both writing
into the cache folder's disk and once into a tmpfs (``/dev/shm``, when there is room). It also
prints, per command, vmig's time on the 4 GiB stream over its time on the 1 GiB stream of the
same layout, and the peak RSS of ``cat S | vmig ram -`` on the 4 GiB stream.

Usage::

    python3 bench/ram_bench.py [--cache DIR] [--streams z10-1g,z10-4g,...] [--runs N] [--build-only]

Exit status 1 if a target below is missed (TARGETS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
SEED = 20261207

#: layout name -> (guest RAM bytes, pattern)
PAGED = {
    "z10-1g": (1 * GiB, "z10"),
    "z10-4g": (4 * GiB, "z10"),
    "runs-1g": (1 * GiB, "runs"),
    "long-1g": (1 * GiB, "long"),
}
ALL_STREAMS = ("z10-1g", "z10-4g", "runs-1g", "long-1g", "booted")
#: best of how many runs: a start-up bound run of a small stream varies by tens of percent on
#: a shared VM, so it is repeated more (cheaply)
DEFAULT_RUNS, SHORT_RUNS, SHORT_STREAM = 2, 7, 256 << 20
COMMANDS = ("analyze", "check", "info", "ram", "extract")

#: (stream, command) -> minimum ratio against the peer; ("linear", command) -> max 4G/1G time ratio
TARGETS: dict[tuple[str, str], float] = {
    ("z10-4g", "analyze"): 4.0, ("z10-4g", "check"): 4.0, ("z10-4g", "info"): 4.0,
    ("z10-4g", "ram"): 3.0, ("z10-4g", "extract"): 2.0,
    ("runs-1g", "analyze"): 3.0, ("booted", "analyze"): 2.0,
}
LINEAR_MAX = 4.6
PIPE_RSS_MAX_MB = 100.0


def zero_mask(pattern: str, npages: int) -> np.ndarray:
    """True for the pages of the layout that are zero."""
    rng = np.random.default_rng(SEED)
    if pattern == "z10":
        return np.arange(npages) % 10 == 0
    if pattern == "runs":
        lo, hi = 1, 65
    elif pattern == "long":
        lo, hi = 8 * MiB // PAGE, 128 * MiB // PAGE + 1
    else:
        raise ValueError(pattern)
    lengths = rng.integers(lo, hi, size=npages // lo + 2)
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, npages)) + 1
    run_of_page = np.searchsorted(ends[:k], np.arange(npages), side="right")
    return run_of_page % 2 == 1  # runs alternate data, zero, data, ...


def make_ram_file(path: Path, size: int, pattern: str) -> None:
    """Write the guest RAM image: random pages except where the layout puts zero pages."""
    npages = size // PAGE
    zero = zero_mask(pattern, npages)
    rng = np.random.default_rng(SEED + 1)
    tmp = path.with_suffix(".tmp")
    chunk = 16384  # pages (64 MiB)
    with open(tmp, "wb") as f:
        for first in range(0, npages, chunk):
            z = zero[first:first + chunk]
            if z.all():
                f.seek(len(z) * PAGE, os.SEEK_CUR)
                continue
            pages = np.frombuffer(rng.bytes(len(z) * PAGE), dtype=np.uint8).reshape(len(z), PAGE).copy()
            pages[z] = 0
            pages[~z, 0] |= 1  # never an all-zero random page
            f.write(pages.tobytes())
        f.truncate(size)
    tmp.replace(path)


def _migrate(args: list[str], out: Path, work: Path, *, boot: bool = False) -> dict:
    """Run QEMU with ``args``, migrate it into ``out``; returns the final query-migrate."""
    from vmig.testing.guest import GUEST_READY
    from vmig.testing.qemu import Qemu, wait_for_text

    tmp = out.with_suffix(".tmp")
    with Qemu(args, workdir=work) as q:
        if not boot:
            final = q.migrate_to_file(tmp, None, {"max-bandwidth": 1 << 40}, timeout=1800)
        else:
            wait_for_text(work / "serial.log", GUEST_READY, 600, proc=q)
            time.sleep(2.0)
            # a downtime limit nothing can meet keeps QEMU iterating until the syncs are counted
            q.set_migration(None, {"max-bandwidth": 32 * MiB, "downtime-limit": 1})
            q.qmp("migrate", {"uri": f"exec:cat > {tmp}"})
            deadline = time.monotonic() + 600
            while True:
                info = q.qmp("query-migrate")
                if info.get("ram", {}).get("dirty-sync-count", 0) >= 5:
                    break
                if info.get("status") in ("completed", "failed") or time.monotonic() > deadline:
                    raise SystemExit(f"booted guest: no 5 dirty syncs: {info}")
                time.sleep(0.05)
            q.set_migration(None, {"downtime-limit": 10000, "max-bandwidth": 1 << 40})
            final = q.wait_migration(600)
            if final.get("status") != "completed":
                raise SystemExit(f"booted guest migration ended {final}")
        from vmig.testing.qemu import wait_file_stable

        wait_file_stable(tmp)
    tmp.replace(out)
    return final


def make_stream(cache: Path, name: str) -> Path:
    """The cached stream ``name`` (built with QEMU when missing); its manifest is NAME.json."""
    stream = cache / f"{name}.bin"
    manifest = cache / f"{name}.json"
    if stream.exists() and manifest.exists():
        return stream
    work = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=cache))
    try:
        base = ["-accel", "tcg", "-smp", "1", "-nodefaults", "-display", "none"]
        if name == "booted":
            from vmig.testing.guest import guest_args

            # no scrub: the pages the kernel freed while booting keep their bytes, as in any guest;
            # plus 64 MiB of file data in tmpfs
            argv = ["-machine", "pc", "-m", "512M", *base,
                    *guest_args(work / "serial.log", dirty=True, extra_cmdline="vmig.scrub=0 vmig.fill=64")]
            final = _migrate(argv, stream, work, boot=True)
        else:
            size, pattern = PAGED[name]
            ram = work / "ram.img"
            make_ram_file(ram, size, pattern)
            argv = ["-machine", "pc,memory-backend=ram0", "-m", f"{size // GiB}G", *base, "-S",
                    "-object", f"memory-backend-file,id=ram0,size={size // GiB}G,mem-path={ram},share=on"]
            final = _migrate(argv, stream, work)
        manifest.write_text(json.dumps({"query-migrate": final, "argv": argv}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stream


ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
# Byte-code caching as for an installed package (this environment may set
# PYTHONDONTWRITEBYTECODE); the cache lives outside the repository. Both vmig and the peer run
# with it and are warmed up once before timing (the peer's script itself, run as __main__, is
# compiled on every run, as it is for any user of it).
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
ENV["PYTHONPYCACHEPREFIX"] = str(Path.home() / ".cache" / "vmig" / "pycache")


def timed(argv: list[str], cwd: str | None = None, before: Callable[[], None] | None = None,
          runs: int = 2) -> tuple[float, int, int]:
    """Best of ``runs``: (seconds, exit code, peak RSS in bytes of that process)."""
    best = None
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=ENV)
        assert p.stderr is not None
        err = p.stderr.read()
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            print(f"  {' '.join(argv[2:4])}: exit {rc}: {err.decode(errors='replace')[-300:]}")
        r = (dt, rc, ru.ru_maxrss * 1024)
        if best is None or r[0] < best[0]:
            best = r
    assert best is not None
    return best


def pipe_rss(stream: Path) -> tuple[float, int, int]:
    """``cat S | vmig ram -``: (seconds, exit code, peak RSS of the vmig process)."""
    t0 = time.perf_counter()
    cat = subprocess.Popen(["cat", str(stream)], stdout=subprocess.PIPE)
    p = subprocess.Popen([sys.executable, "-m", "vmig", "ram", "-"], stdin=cat.stdout,
                         stdout=subprocess.DEVNULL, env=ENV)
    assert cat.stdout is not None
    cat.stdout.close()
    _, status, ru = os.wait4(p.pid, 0)
    cat.wait()
    return time.perf_counter() - t0, os.waitstatus_to_exitcode(status), ru.ru_maxrss * 1024


def same_tree(a: Path, b: Path) -> tuple[bool, str]:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if fa != fb:
        return False, f"file lists differ: {fa} vs {fb}"
    for rel in fa:
        if subprocess.run(["cmp", "-s", str(a / rel), str(b / rel)]).returncode != 0:
            return False, f"{rel} differs"
    return True, f"{len(fa)} files identical"


def vmig_argv(command: str, stream: Path, out: Path) -> list[str]:
    vmig = [sys.executable, "-m", "vmig"]
    return {
        "analyze": vmig + ["analyze", str(stream)],
        "check": vmig + ["check", str(stream)],
        "info": vmig + ["info", "memory-devices", str(stream)],
        "ram": vmig + ["ram", str(stream)],
        "extract": vmig + ["extract", str(stream), "-o", str(out), "--format", "qemu"],
    }[command]


def bench_stream(name: str, stream: Path, peer: str, cache: Path, runs: int,
                 times: dict[tuple[str, str], float], ratios: dict[tuple[str, str], float]) -> bool:
    """Time every command on one stream; fills ``times``/``ratios``; False if something failed."""
    ok = True
    qm = json.loads((cache / f"{name}.json").read_text())["query-migrate"]["ram"]
    print(f"\n== {name}: {stream.stat().st_size / 1e6:.0f} MB; query-migrate normal {qm['normal']} "
          f"duplicate {qm['duplicate']} dirty-sync-count {qm.get('dirty-sync-count')}")
    subprocess.run(["cat", str(stream)], stdout=subprocess.DEVNULL)  # warm the page cache
    tp, rc, rss_p = timed([sys.executable, peer, "-f", str(stream)], runs=runs)
    ok &= rc == 0
    print(f"  peer -f: {tp:.2f} s, peak RSS {rss_p / 1e6:.0f} MB")
    work = Path(tempfile.mkdtemp(prefix="ram-bench-", dir=cache))
    try:
        vdir, pdir = work / "vmig", work / "peer"
        pdir.mkdir()
        for cmd in COMMANDS:
            before = (lambda: shutil.rmtree(vdir, ignore_errors=True)) if cmd == "extract" else None
            tv, rc, rss = timed(vmig_argv(cmd, stream, vdir), before=before, runs=runs)
            ok &= rc == 0
            times[name, cmd] = tv
            if cmd == "extract":
                tpx, prc, rss_px = timed([sys.executable, peer, "-f", str(stream), "-x"], cwd=str(pdir),
                                         before=lambda: [p.unlink() for p in pdir.rglob("*") if p.is_file()],
                                         runs=runs)
                ok &= prc == 0
                same, why = same_tree(vdir, pdir)
                ok &= same
                ratios[name, cmd] = tpx / tv
                print(f"  extract --format qemu: {tv:.2f} s, {rss / 1e6:.0f} MB | peer -x: {tpx:.2f} s, "
                      f"{rss_px / 1e6:.0f} MB | ratio {tpx / tv:.1f}x | outputs: {why}")
                shutil.rmtree(vdir, ignore_errors=True)
                for p in pdir.rglob("*"):
                    if p.is_file():
                        p.unlink()
                ok &= extract_tmpfs(name, stream, peer, runs, times, ratios)
            else:
                ratios[name, cmd] = tp / tv
                label = "info memory-devices" if cmd == "info" else cmd
                print(f"  {label}: {tv:.2f} s, {rss / 1e6:.0f} MB | ratio {tp / tv:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ok


def extract_tmpfs(name: str, stream: Path, peer: str, runs: int,
                  times: dict[tuple[str, str], float], ratios: dict[tuple[str, str], float]) -> bool:
    """``extract`` against ``-x`` again with both writing into a tmpfs (``/dev/shm``), where
    syncing costs nothing and the disk's write speed does not bound either tool; skipped
    (True) without a tmpfs big enough for both outputs."""
    shm = Path("/dev/shm")
    need = 3 * stream.stat().st_size
    if not shm.is_dir() or shutil.disk_usage(shm).free < need:
        print("  extract on tmpfs: skipped (no /dev/shm with room for both outputs)")
        return True
    work = Path(tempfile.mkdtemp(prefix="ram-bench-", dir=shm))
    try:
        vdir, pdir = work / "vmig", work / "peer"
        pdir.mkdir()
        tv, rc, _ = timed(vmig_argv("extract", stream, vdir), before=lambda: shutil.rmtree(vdir, ignore_errors=True),
                          runs=runs)
        tpx, prc, _ = timed([sys.executable, peer, "-f", str(stream), "-x"], cwd=str(pdir),
                            before=lambda: [p.unlink() for p in pdir.rglob("*") if p.is_file()], runs=runs)
        same, why = same_tree(vdir, pdir)
        times[name, "extract-tmpfs"] = tv
        ratios[name, "extract-tmpfs"] = tpx / tv
        print(f"  extract on tmpfs: {tv:.2f} s | peer -x: {tpx:.2f} s | ratio {tpx / tv:.1f}x | outputs: {why}")
        return rc == 0 and prc == 0 and same
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "vmig" / "bench"))
    ap.add_argument("--streams", default=",".join(ALL_STREAMS), help="comma-separated subset of " + ", ".join(ALL_STREAMS))
    ap.add_argument("--runs", type=int, default=None,
                    help=f"best of N runs per measurement (default {DEFAULT_RUNS}; {SHORT_RUNS} for streams "
                         f"under {SHORT_STREAM >> 20} MiB, whose runs take a few tenths of a second)")
    ap.add_argument("--build-only", action="store_true", help="build the cached streams and stop")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.streams.split(",") if n]
    unknown = set(names) - set(ALL_STREAMS)
    if unknown:
        ap.error(f"unknown streams: {sorted(unknown)}")
    streams = {}
    for n in names:
        t0 = time.perf_counter()
        streams[n] = make_stream(cache, n)
        print(f"stream {n}: {streams[n]} ({streams[n].stat().st_size / 1e9:.3f} GB; "
              f"built/cached in {time.perf_counter() - t0:.1f} s)", flush=True)
    if args.build_only:
        return 0

    from vmig.stream import ram as _ram
    from vmig.testing.peer import fetch_analyze_migration

    print(f"interpreter: {sys.executable}; byte-code cache: PYTHONPYCACHEPREFIX={ENV['PYTHONPYCACHEPREFIX']}; "
          f"walker: {'compiled' if _ram.compiled_walker_available() and not os.environ.get('VMIG_PURE') else 'pure Python'}")
    peer = str(fetch_analyze_migration())
    subprocess.run([sys.executable, peer, "-h"], stdout=subprocess.DEVNULL, env=ENV)
    first = next(iter(streams.values()))
    subprocess.run(vmig_argv("analyze", first, Path()), stdout=subprocess.DEVNULL, env=ENV)  # byte-code cache
    times: dict[tuple[str, str], float] = {}
    ratios: dict[tuple[str, str], float] = {}
    ok = True
    for n, s in streams.items():
        runs = args.runs or (SHORT_RUNS if s.stat().st_size < SHORT_STREAM else DEFAULT_RUNS)
        ok &= bench_stream(n, s, peer, cache, runs, times, ratios)

    summary: dict[str, float] = {f"{s}/{c}": round(r, 2) for (s, c), r in ratios.items()}
    if "z10-1g" in streams and "z10-4g" in streams:
        print("\n4 GiB / 1 GiB time (every 10th page zero):")
        for c in COMMANDS:
            lin = times["z10-4g", c] / times["z10-1g", c]
            summary[f"linear/{c}"] = round(lin, 2)
            print(f"  {c}: {lin:.2f}")
            if lin > LINEAR_MAX:
                print(f"MISSED: {c} 4G/1G {lin:.2f} > {LINEAR_MAX}")
                ok = False
    if "z10-4g" in streams:
        tr, rc, rss = pipe_rss(streams["z10-4g"])
        print(f"\ncat z10-4g | vmig ram - : {tr:.2f} s, peak RSS {rss / 1e6:.1f} MB (rc {rc})")
        summary["pipe_rss_mb"] = round(rss / 1e6, 1)
        ok &= rc == 0
        if rss / 1e6 > PIPE_RSS_MAX_MB:
            print(f"MISSED: pipe RSS {rss / 1e6:.0f} MB > {PIPE_RSS_MAX_MB:.0f} MB")
            ok = False
    for key, t in TARGETS.items():
        if key in ratios and ratios[key] < t:
            print(f"MISSED: {key[0]} {key[1]} ratio {ratios[key]:.1f} < {t}")
            ok = False
    print("summary:", json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
