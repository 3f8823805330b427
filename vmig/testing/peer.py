"""Fetch and run QEMU's own ``scripts/analyze-migration.py`` (the peer parser) at test/bench time.

The script is GPL and never committed: it is extracted from Debian's QEMU source tarball into
``~/.cache/vmig/peer/<version>/analyze-migration.py``. Debian's deb-src is not configured on the
lab machines, so a temporary deb-src sources file (same mirror as the system's
``/etc/apt/sources.list.d/debian.sources``) and private apt lists are used; the system's apt
configuration is never touched. Mirrors nothing in QEMU; it only obtains QEMU's file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from vmig.testing.qemu import CACHE_DIR, QemuLabError
from vmig.testing.trixie import debian_mirror

__all__ = ["PEER_DIR", "peer_script_path", "fetch_analyze_migration", "run_peer"]

PEER_DIR = CACHE_DIR / "peer"
_SCRIPT = "scripts/analyze-migration.py"
# Debian suite shipping each QEMU version we compare against.
_SUITES = {"7.2": ["bookworm", "bookworm-updates"], "10.0": ["trixie", "trixie-updates"]}


def peer_script_path(version: str = "7.2") -> Path:
    """Where the cached script lives (whether or not it was fetched yet)."""
    return PEER_DIR / version / "analyze-migration.py"


def _apt(opts: list[str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", "-q", *opts, *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def fetch_analyze_migration(version: str = "7.2") -> Path:
    """Return the path of QEMU ``version``'s ``scripts/analyze-migration.py``, fetching it once.

    Env ``VMIG_PEER_SCRIPT`` points at an existing copy and skips the download.

    Raises:
        QemuLabError: apt could not download the source, or the tarball lacks the script.
    """
    override = os.environ.get("VMIG_PEER_SCRIPT")
    if override:
        return Path(override)
    dest = peer_script_path(version)
    if dest.exists():
        return dest
    suites = _SUITES.get(version)
    if suites is None:
        raise QemuLabError(f"no Debian suite known for QEMU {version}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="apt-src-", dir=dest.parent))
    try:
        sources = work / "deb-src.sources"
        sources.write_text(
            "Types: deb-src\n"
            f"URIs: {debian_mirror()}\n"
            f"Suites: {' '.join(suites)}\n"
            "Components: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        lists = work / "lists"
        (lists / "partial").mkdir(parents=True)
        opts = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={lists}",
        ]
        res = _apt(opts, "update")
        if res.returncode != 0:
            raise QemuLabError(f"apt-get update (deb-src) failed: {res.stderr[-1500:]}")
        dl = work / "dl"
        dl.mkdir()
        res = _apt(opts, "source", "--download-only", "qemu", cwd=dl)
        if res.returncode != 0:
            raise QemuLabError(f"apt-get source --download-only qemu failed: {res.stderr[-1500:]}")
        origs = sorted(dl.glob(f"qemu_{version}*.orig.tar.*"))
        if not origs:
            raise QemuLabError(f"no qemu_{version}*.orig tarball in {sorted(p.name for p in dl.iterdir())}")
        with tarfile.open(origs[0]) as tar:
            member = next((m for m in tar.getmembers()
                           if m.isfile() and m.name.split("/", 1)[-1] == _SCRIPT), None)
            if member is None:
                raise QemuLabError(f"{_SCRIPT} not in {origs[0].name}")
            fh = tar.extractfile(member)
            assert fh is not None
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(fh.read())
            tmp.replace(dest)
        (dest.parent / "SOURCE").write_text(f"{origs[0].name}:{member.name}\n")
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_peer(args: list[str], *, version: str = "7.2", timeout: float = 600.0) -> tuple[int, str, str]:
    """Run ``python3 analyze-migration.py ARGS``; return ``(returncode, stdout, stderr)``."""
    script = fetch_analyze_migration(version)
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                         timeout=timeout)
    return res.returncode, res.stdout, res.stderr
