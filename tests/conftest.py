"""Root conftest: makes vmig's pytest fixtures available without installing the package.

The fixtures live in ``vmig.testing.pytest_plugin`` (also registered through the ``pytest11``
entry point when vmig is installed); importing them here makes them visible to every test of a
source checkout. A conftest fixture of the same name simply shadows the plugin's identical one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# helpers shared by test folders (stream builders, capture scripts, fixtures of stored captures)
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from vmig.testing.pytest_plugin import fixture_bytes, lab_dir, qemu_bin, qemu_loader, s1_path, vmig_roundtrip

pytest_plugins = ["ram_captures"]

__all__ = ["fixture_bytes", "lab_dir", "qemu_bin", "qemu_loader", "s1_path", "vmig_roundtrip"]


@pytest.fixture(scope="module")
def trixie() -> Path:
    """The QEMU 10.0 chroot. Built when missing only with VMIG_TRIXIE=1 (``.ci/run`` sets it, so
    CI builds and uses it); elsewhere an absent chroot skips the test."""
    from vmig.testing.trixie import ensure_trixie_chroot, trixie_qemu_available

    if not trixie_qemu_available() and os.environ.get("VMIG_TRIXIE") != "1":
        pytest.skip("trixie chroot absent (set VMIG_TRIXIE=1 to build it)")
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    return ensure_trixie_chroot()
