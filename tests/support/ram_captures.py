"""pytest fixtures (a plugin loaded by tests/conftest.py): QEMU 7.2 captures with XBZRLE and compressed pages.

``xbzrle_capture`` / ``compress_capture`` are stored real captures (tests/data/ram, made by
``python3 tests/support/qemu_capture.py``: a boot-sector guest dirtying memory while QEMU 7.2
migrates it with the xbzrle / compress capability) with their ``query-migrate`` answers.
They are stored because a live XBZRLE capture is not reproducible on a 2-core TCG machine:
QEMU often converges after a handful of passes (a bitmap sync that finds nothing dirty).
``live_compress_capture`` captures again with the installed QEMU (qemu marker).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lz4.frame
import pytest
import qemu_capture

DATA = Path(__file__).resolve().parents[1] / "data" / "ram"


def _stored(name: str) -> tuple[bytes, dict[str, Any]]:
    buf = lz4.frame.decompress((DATA / f"{name}.bin.lz4").read_bytes())
    return buf, json.loads((DATA / f"{name}.json").read_text())["query-migrate"]


@pytest.fixture(scope="session")
def xbzrle_capture() -> tuple[bytes, dict[str, Any]]:
    """A QEMU 7.2 precopy stream with the xbzrle capability and a guest dirtying pages."""
    return _stored("xbzrle")


@pytest.fixture(scope="session")
def compress_capture() -> tuple[bytes, dict[str, Any]]:
    """A QEMU 7.2 precopy stream with the compress capability (1 thread, level 1)."""
    return _stored("compress")


@pytest.fixture(scope="session")
def live_compress_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    """The compress capture taken now with the installed QEMU."""
    from vmig.testing.qemu import require_qemu

    require_qemu()
    work = tmp_path_factory.mktemp("compress")
    path, info = qemu_capture.capture_dirtying(
        work, capabilities={"compress": True},
        parameters={"compress-threads": 1, "compress-level": 1}, passes_seconds=0.6)
    return path.read_bytes(), info
