"""Root conftest: makes vmig's pytest fixtures available without installing the package.

The fixtures live in ``vmig.testing.pytest_plugin`` (also registered through the ``pytest11``
entry point when vmig is installed); importing them here makes them visible to every test of a
source checkout. A conftest fixture of the same name simply shadows the plugin's identical one.
"""

from __future__ import annotations

import sys
from pathlib import Path

# helpers shared by test folders (stream builders, capture scripts, fixtures of stored captures)
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from vmig.testing.pytest_plugin import fixture_bytes, lab_dir, qemu_bin, qemu_loader, s1_path, vmig_roundtrip

pytest_plugins = ["ram_captures"]

__all__ = ["fixture_bytes", "lab_dir", "qemu_bin", "qemu_loader", "s1_path", "vmig_roundtrip"]
