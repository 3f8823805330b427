"""QEMU 10.0 for the lab: a Debian trixie chroot built with debootstrap.

QEMU 10.0 runs from the chroot through :class:`vmig.testing.qemu.Qemu` (``chroot=``), which
bind-mounts ``/proc``, ``/dev``, ``/sys`` and the work folders at the same absolute paths.
The chroot lives in ``~/.cache/vmig/trixie`` (``VMIG_CACHE`` to move it) and is never committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vmig.testing.qemu import CACHE_DIR, QemuLabError, is_mountpoint, qemu_version

__all__ = ["debian_mirror", "trixie_qemu_available", "ensure_trixie_chroot"]


def debian_mirror() -> str:
    """The first ``URIs:`` of /etc/apt/sources.list.d/debian.sources (the machine's mirror)."""
    src = Path("/etc/apt/sources.list.d/debian.sources")
    if src.exists():
        for line in src.read_text().splitlines():
            if line.strip().lower().startswith("uris:"):
                uris = line.split(":", 1)[1].split()
                if uris:
                    return uris[0]
    lst = Path("/etc/apt/sources.list")
    if lst.exists():
        for line in lst.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return "http://deb.debian.org/debian"


def trixie_qemu_available(dir: Path | None = None) -> bool:
    """True if the trixie chroot exists with its QEMU binary."""
    d = Path(dir) if dir is not None else CACHE_DIR / "trixie"
    return (d / "usr/bin/qemu-system-x86_64").exists() and (d / ".vmig-complete").exists()


def ensure_trixie_chroot(dir: Path | None = None) -> Path:
    """Build (once) a Debian trixie chroot with QEMU 10.0 and return its root.

    Uses ``debootstrap --variant=minbase --include=qemu-system-x86,qemu-utils trixie DIR MIRROR``
    with this machine's Debian mirror; installs ``debootstrap`` through apt if missing. Idempotent:
    a finished chroot is marked with ``.vmig-complete``.

    Raises:
        QemuLabError: debootstrap failed.
    """
    d = Path(dir) if dir is not None else CACHE_DIR / "trixie"
    d = d.resolve()
    if trixie_qemu_available(d):
        return d
    if shutil.which("debootstrap") is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True, env=env,
                       capture_output=True)
    if d.exists():
        # a half-built chroot from an interrupted run: make sure nothing is mounted, then redo
        for sub in ("proc", "dev"):
            if is_mountpoint(d / sub):
                subprocess.run(["umount", "-l", str(d / sub)], capture_output=True)
        shutil.rmtree(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=qemu-system-x86,qemu-utils", "trixie",
         str(d), debian_mirror()],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise QemuLabError(f"debootstrap trixie failed ({res.returncode}): {res.stderr[-2000:]}"
                           f"{res.stdout[-2000:]}")
    (d / ".vmig-complete").write_text(qemu_version(chroot=d) + "\n")
    return d
