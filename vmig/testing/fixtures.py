"""Access to the committed real-QEMU captures in ``fixtures/`` and to the spec sample ``s1.bin``.

Each fixture is ``fixtures/<name>.bin.lz4`` (an lz4 frame of the raw stream QEMU wrote) plus
``fixtures/<name>.json`` (the manifest: QEMU version, command line, capabilities, parameters,
final ``query-memory-devices``/HMP text, ``desc_from``...; see ``fixtures/README-fixtures.md``).
Made by ``fixtures/capture.py`` with QEMU 7.2. Mirrors nothing in QEMU.

Manifests store the command line with placeholders for host-specific paths:
``@KERNEL@``/``@INITRD@`` (the plugging guest from ``~/.cache/vmig/guest``), ``@DIRTYGUEST@``
(the tiny page-dirtying multiboot guest) and ``@WORKDIR@`` (a scratch folder, e.g. for the
serial log); ``resolve_args`` substitutes them.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import lz4.frame

__all__ = [
    "FIXTURES_DIR",
    "names",
    "path",
    "load",
    "manifest",
    "sample_s1",
    "resolve_args",
    "uses_guest",
    "PLACEHOLDER_KERNEL",
    "PLACEHOLDER_INITRD",
    "PLACEHOLDER_WORKDIR",
    "PLACEHOLDER_DIRTY_GUEST",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES_DIR = Path(os.environ.get("VMIG_FIXTURES", str(REPO_ROOT / "fixtures")))

PLACEHOLDER_KERNEL = "@KERNEL@"
PLACEHOLDER_INITRD = "@INITRD@"
PLACEHOLDER_WORKDIR = "@WORKDIR@"
PLACEHOLDER_DIRTY_GUEST = "@DIRTYGUEST@"


def names() -> list[str]:
    """Names of all fixtures that have both a manifest and a stream file, sorted."""
    return sorted(
        p.name[: -len(".json")]
        for p in FIXTURES_DIR.glob("*.json")
        if (FIXTURES_DIR / (p.name[: -len(".json")] + ".bin.lz4")).exists()
    )


def path(name: str) -> Path:
    """Path of the compressed stream ``fixtures/<name>.bin.lz4``.

    Raises:
        FileNotFoundError: no such fixture.
    """
    p = FIXTURES_DIR / f"{name}.bin.lz4"
    if not p.exists():
        raise FileNotFoundError(f"no fixture {name!r} ({p}); known: {names()}")
    return p


@lru_cache(maxsize=16)
def _load_cached(name: str, mtime_ns: int) -> bytes:
    return lz4.frame.decompress(path(name).read_bytes())


def load(name: str) -> bytes:
    """The decompressed stream bytes of fixture ``name`` (cached per file version)."""
    return _load_cached(name, path(name).stat().st_mtime_ns)


def manifest(name: str) -> dict[str, Any]:
    """The parsed manifest ``fixtures/<name>.json``."""
    p = FIXTURES_DIR / f"{name}.json"
    if not p.exists():
        raise FileNotFoundError(f"no fixture manifest {p}; known: {names()}")
    return dict(json.loads(p.read_text()))


def uses_guest(args: list[str]) -> bool:
    """True if the command line boots the plugging guest (needs ``guest_kernel_initrd()``)."""
    return any(PLACEHOLDER_KERNEL in a or PLACEHOLDER_INITRD in a for a in args)


def resolve_args(args: list[str], workdir: Path) -> list[str]:
    """Replace the manifest placeholders with real paths.

    ``@WORKDIR@`` → ``workdir`` (absolute); ``@KERNEL@``/``@INITRD@`` → the guest built on
    demand by ``vmig.testing.guest.guest_kernel_initrd()`` (only if the line uses them);
    ``@DIRTYGUEST@`` → ``vmig.testing.guest.dirty_guest_image()``.
    """
    wd = str(Path(workdir).resolve())
    out = [a.replace(PLACEHOLDER_WORKDIR, wd) for a in args]
    if any(PLACEHOLDER_DIRTY_GUEST in a for a in out):
        from vmig.testing.guest import dirty_guest_image

        img = str(dirty_guest_image())
        out = [a.replace(PLACEHOLDER_DIRTY_GUEST, img) for a in out]
    if uses_guest(out):
        from vmig.testing.guest import guest_kernel_initrd

        kernel, initrd = guest_kernel_initrd()
        out = [a.replace(PLACEHOLDER_KERNEL, str(kernel)).replace(PLACEHOLDER_INITRD, str(initrd))
               for a in out]
    return out


def sample_s1() -> Path:
    """Path of ``fixtures/s1.bin``: a real QEMU 7.2 capture of a never-started pc VM with a
    virtio-mem device (the stream the format notes quote offsets from), kept uncompressed."""
    return FIXTURES_DIR / "s1.bin"
