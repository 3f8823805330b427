"""Real-QEMU captures of RAM streams with XBZRLE and compressed pages (stored in tests/data/ram).

The guest is a 512-byte boot sector (no kernel needed) that keeps rewriting memory while the
migration runs, so the dirty log really reports re-dirtied pages and QEMU sends them again as
XBZRLE deltas or zlib pages. Source of the boot sector (GNU as, ``.code16``, linked at 0x7c00)::

      cli; xor ax,ax; mov ds,ax; xor bx,bx
    outer: mov eax,cr0; or al,1; mov cr0,eax; and al,0xfe; mov cr0,eax
                                               ; PE on/off flushes TCG's TLB, which re-arms
                                               ; dirty logging (a CR3 write does not without paging)
        inc bx; mov ax,0x1000
    1:  mov es,ax; mov es:[0x10],bx            ; a counter word in each page 0x10000..0x6f000
        mov di,bx; imul di,di,37; add di,ax; and di,0xffe
        mov es:[di],bx                         ; and one at a moving offset
        add ax,0x100; cmp ax,0x7000; jb 1b
        mov ax,0x7000; mov es,ax; mov di,0x100; mov ax,bx; mov cx,100; cld; rep stosw
                                               ; 200 changed bytes (two-byte ULEB128 counts)
        mov dx,0x8000; mov es,dx; xor di,di; mov cx,2048; rep stosw
                                               ; a whole page rewritten: XBZRLE overflow
        jmp outer
    .org 510; .word 0xaa55

Captures are cached per process in a temporary directory by the pytest fixtures of
tests/support/ram_captures.py; each takes a few seconds under TCG.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmig.testing.qemu import Qemu, wait_file_stable

BOOT_SECTOR_HEX = (
    "fa31c08ed831db0f20c00c010f22c024fe0f22c043b800108ec026891e100089df6bff2501c781e7"
    "fe0f26891d0500013d007072e3b800708ec0bf000189d8b96400fcf3abba00808ec231ffb90008f3abebb4"
)


def boot_sector() -> bytes:
    code = bytes.fromhex(BOOT_SECTOR_HEX)
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def capture_dirtying(
    workdir: Path,
    *,
    capabilities: dict[str, bool],
    parameters: dict[str, Any] | None = None,
    passes_seconds: float = 2.0,
    extra_args: tuple[str, ...] = (),
    mem: str = "16M",
    run_guest: bool = True,
    until: Callable[[dict[str, Any]], bool] | None = None,
    slow_bandwidth: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Migrate a VM running the boot-sector guest to a file; return (stream path, query-migrate).

    The downtime limit starts tiny so that the migration keeps iterating while the guest dirties
    pages, then is raised so that it completes: after ``passes_seconds``, or once ``until``
    returns True for a ``query-migrate`` answer (polled; at most 30 s).

    QEMU completes as soon as a bitmap sync finds (almost) nothing dirty, which happens when the
    syncs come faster than the TCG vCPU gets to run (XBZRLE passes are tiny). ``slow_bandwidth``
    (bytes/s) is applied once the first pass is over, so each pass takes long enough for the
    guest to re-dirty its pages.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "boot.img"
    disk.write_bytes(boot_sector() + bytes(1024 * 1024 - 512))
    out = workdir / "stream.bin"
    if out.exists():
        out.unlink()
    args = [
        "-machine", "pc", "-accel", "tcg", "-m", mem, "-smp", "1", "-nodefaults",
        "-display", "none", "-drive", f"file={disk},format=raw,if=ide", *extra_args,
    ]
    if not run_guest:
        args.append("-S")
    with Qemu(args, workdir=workdir, binary=qemu_binary() or "qemu-system-x86_64") as q:
        if run_guest:
            time.sleep(1.0)  # SeaBIOS boots the sector well within this under TCG
        params = {"downtime-limit": 1, "max-bandwidth": 8 * 1024 * 1024}
        params.update(parameters or {})
        q.set_migration(capabilities, params)
        q.qmp("migrate", {"uri": f"exec:cat > {out}"})
        if until is None:
            time.sleep(passes_seconds)
        else:
            deadline = time.monotonic() + 30
            slowed = slow_bandwidth is None
            while time.monotonic() < deadline:
                info = q.qmp("query-migrate")
                if info.get("status") in ("completed", "failed", "cancelled") or until(info):
                    break
                if not slowed and info.get("ram", {}).get("dirty-sync-count", 0) >= 2:
                    q.qmp("migrate-set-parameters", {"max-bandwidth": slow_bandwidth})
                    slowed = True
                time.sleep(0.002)
        q.qmp("migrate-set-parameters", {"downtime-limit": 60000, "max-bandwidth": 1 << 40})
        info = q.wait_migration(60)
        if info.get("status") != "completed":
            raise RuntimeError(f"migration did not complete: {info}")
    wait_file_stable(out)  # the exec: child may still be flushing when the status flips
    return out, info


def main(argv: list[str] | None = None) -> int:
    """Regenerate tests/data/ram/{xbzrle,compress}.bin.lz4 (+ .json with query-migrate).

    ``python3 tests/support/qemu_capture.py [OUTDIR]`` — retries the XBZRLE capture until QEMU did
    not converge early (see :func:`capture_dirtying`).
    """
    import sys
    import tempfile

    import lz4.frame

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "data" / "ram"
    out.mkdir(parents=True, exist_ok=True)
    jobs = {
        "xbzrle": dict(capabilities={"xbzrle": True}, passes_seconds=1.0),
        "compress": dict(capabilities={"compress": True},
                         parameters={"compress-threads": 1, "compress-level": 1}, passes_seconds=0.6),
    }
    for name, kw in jobs.items():
        for attempt in range(20):
            with tempfile.TemporaryDirectory() as d:
                path, info = capture_dirtying(Path(d), **kw)  # type: ignore[arg-type]
                pages = info.get("xbzrle-cache", {}).get("pages", 0)
                if name == "xbzrle" and not 1000 <= pages <= 30000:
                    continue
                (out / f"{name}.bin.lz4").write_bytes(lz4.frame.compress(path.read_bytes(), compression_level=9))
                manifest = {"name": name, "qemu": qemu_binary(), "capabilities": kw["capabilities"],
                            "parameters": kw.get("parameters", {}), "query-migrate": info,
                            "notes": "captured by tests/ram/qemu_capture.py (boot-sector guest)"}
                (out / f"{name}.json").write_text(json.dumps(manifest, indent=1) + "\n")
                print(name, path.stat().st_size, "attempts", attempt + 1)
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
