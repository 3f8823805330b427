"""The lab's guests: the plugging Linux guest (kernel + initramfs) and a page-dirtying multiboot image.

The Linux guest is built on demand by ``fixtures/guest/build.py`` into ``~/.cache/vmig/guest``
(never committed); it loads the virtio-mem driver and prints :data:`GUEST_READY` on its console.
The multiboot image is a few bytes of x86 code written to the same folder on first use.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vmig.testing.qemu import CACHE_DIR, REPO_ROOT, QemuLabError

__all__ = ["GUEST_DIR", "GUEST_CMDLINE", "GUEST_READY", "guest_kernel_initrd", "guest_args", "dirty_guest_image"]


GUEST_DIR = CACHE_DIR / "guest"
GUEST_CMDLINE = "console=ttyS0 quiet panic=-1 memhp_default_state=online_movable init_on_free=1"


def guest_kernel_initrd(*, rebuild: bool = False) -> tuple[Path, Path]:
    """Return ``(vmlinuz, initrd)`` of the plugging guest, building them on demand.

    Built by ``fixtures/guest/build.py`` into ``~/.cache/vmig/guest`` (never committed).

    Raises:
        QemuLabError: the build failed.
    """
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.gz"
    if kernel.exists() and initrd.exists() and not rebuild:
        return kernel, initrd
    script = REPO_ROOT / "fixtures" / "guest" / "build.py"
    argv = [sys.executable, str(script), "--out", str(GUEST_DIR)] + (["--rebuild"] if rebuild else [])
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0 or not (kernel.exists() and initrd.exists()):
        raise QemuLabError(f"guest build failed ({res.returncode}): {res.stderr[-2000:]}")
    return kernel, initrd


def guest_args(serial_log: Path, *, dirty: bool = False, extra_cmdline: str = "") -> list[str]:
    """Command-line pieces that boot the plugging guest with its console in ``serial_log``.

    The guest prints ``VMIG-READY`` once its virtio-mem driver is loaded, and with ``dirty=True``
    keeps rewriting a tmpfs file (dirty pages for live precopy).
    """
    kernel, initrd = guest_kernel_initrd()
    cmdline = GUEST_CMDLINE + (" vmig.dirty=1" if dirty else "") + (f" {extra_cmdline}" if extra_cmdline else "")
    return ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-serial", f"file:{Path(serial_log).resolve()}"]


GUEST_READY = "VMIG-READY"


def _dirty_guest_bytes(base: int = 0x0100_0000, pages: int = 1024) -> bytes:
    """A tiny multiboot (a.out kludge) guest that keeps rewriting ``pages`` pages from ``base``.

    QEMU's multiboot loader enters it in flat 32-bit protected mode with paging off. Each pass
    increments a counter (ESI) and stores it at two offsets of every page, so every page is a
    non-zero "normal" page whose bytes tell which pass wrote it. Each pass also flips CR0.WP:
    QEMU flushes the TCG TLB on that change, which re-arms dirty tracking for pages written
    after the last bitmap sync (without paging nothing else flushes it).
    """
    import struct

    load = 0x0010_0000
    code = bytearray()
    code += b"\xfa"                                   # cli
    code += b"\x31\xf6"                               # xor esi, esi
    outer = len(code)
    code += b"\x46"                                   # inc esi
    code += b"\x0f\x20\xc0"                           # mov eax, cr0
    code += b"\x35" + struct.pack("<I", 0x0001_0000)  # xor eax, CR0.WP
    code += b"\x0f\x22\xc0"                           # mov cr0, eax
    code += b"\xbf" + struct.pack("<I", base)         # mov edi, base
    code += b"\xb9" + struct.pack("<I", pages)        # mov ecx, pages
    inner = len(code)
    code += b"\x89\x37"                               # mov [edi], esi
    code += b"\x89\xb7" + struct.pack("<I", 0x808)    # mov [edi+0x808], esi
    code += b"\x81\xc7" + struct.pack("<I", 0x1000)   # add edi, 4096
    code += b"\xe2" + struct.pack("<b", inner - (len(code) + 2))  # loop inner
    code += b"\xeb" + struct.pack("<b", outer - (len(code) + 2))  # jmp outer
    magic, flags = 0x1BADB002, 0x0001_0000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFF_FFFF,
                         load, load, 0, 0, load + 32)
    return header + bytes(code) + b"\0" * ((-len(code)) % 16) + b"VMIG-DIRTY-GUEST\0"


def dirty_guest_image() -> Path:
    """Path of the tiny page-dirtying multiboot guest (written to the cache on first use).

    Use with ``-kernel PATH`` on a ``pc`` machine; it needs no initrd and prints nothing.
    """
    data = _dirty_guest_bytes()
    path = GUEST_DIR / "dirty-guest.mb"
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path
