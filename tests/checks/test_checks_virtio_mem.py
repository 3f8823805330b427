"""virtio-mem checks of `vmig check` on real fixtures and edited copies of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmig.analysis.edit import edit_virtio_mem
from vmig.cli import main
from vmig.testing import fixtures

BS = 2 << 20


def _write(tmp_path: Path, data: bytes, name: str = "edited.bin") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.fixture(scope="module")
def guest() -> bytes:
    if "pc-guest" not in fixtures.names():
        pytest.fail("fixture pc-guest missing")
    return fixtures.load("pc-guest")


def _plugged(data: bytes) -> tuple[np.ndarray, int]:
    out = {}

    def grab(s):  # noqa: ANN001
        out["bits"] = s.device.bitmap.copy()
        out["usable"] = s.device.usable_region_size

    edit_virtio_mem(data, grab)
    return out["bits"], out["usable"]


def test_clean_guest_fixture_passes(guest: bytes, tmp_path: Path, capsys) -> None:
    assert main(["check", _write(tmp_path, guest)]) == 0


def test_pages_in_unplugged_block_accepted(guest: bytes, tmp_path: Path, capsys) -> None:
    """Pages of an unplugged block: QEMU 7.2 sends them (a write racing an unplug) and discards
    them in post_load, so the check does not reject the stream (see
    tests/migration/test_engine_model.py for the load into QEMU 7.2)."""
    bits, _ = _plugged(guest)
    last = int(np.flatnonzero(bits)[-1])

    def unplug_last(s):  # noqa: ANN001
        s.device.bitmap[last] = False
        s.device.size -= BS

    edited = edit_virtio_mem(guest, unplug_last)
    assert main(["check", _write(tmp_path, edited)]) == 0
    assert "unplugged block" not in capsys.readouterr().err


def test_size_mismatch_flagged(guest: bytes, tmp_path: Path, capsys) -> None:
    def bump(s):  # noqa: ANN001
        s.device.size += BS

    assert main(["check", _write(tmp_path, edit_virtio_mem(guest, bump))]) == 1
    assert "plugged blocks x block-size" in capsys.readouterr().err


def test_plugged_beyond_usable_flagged(tmp_path: Path, capsys) -> None:
    data = fixtures.load("pc-paused")  # 128M requested: usable region 384M = 192 blocks

    def plug_far(s):  # noqa: ANN001
        assert s.device.usable_region_size == 384 << 20
        s.device.bitmap[300] = True
        s.device.size = BS

    assert main(["check", _write(tmp_path, edit_virtio_mem(data, plug_far))]) == 1
    err = capsys.readouterr().err
    assert "beyond the usable region" in err and "block 300" in err


@pytest.mark.parametrize(
    "dest, first_line",
    [
        ("memaddr=0x140000000", "Property 'memaddr' changed from 0x100000000 to 0x140000000"),
        ("block-size=4M", "Property 'block-size' changed from 0x200000 to 0x400000"),
        ("node=1", "Property 'node' changed from 0 to 1"),
        ("max-size=2G", "Size mismatch: 0000:00:02.0/mem0: 0x40000000 != 0x80000000: Invalid argument"),
    ],
)
def test_dest_prediction_messages(dest: str, first_line: str, capsys) -> None:
    # expected texts: spec virtio-mem.md §6.3 (verified there against QEMU 7.2)
    assert main(["check", str(fixtures.path("pc-paused")), "--dest", dest]) == 1
    assert first_line in capsys.readouterr().err


def test_dest_same_config_passes(capsys) -> None:
    spec = "memaddr=0x100000000,max-size=1G,block-size=2M,node=0"
    assert main(["check", str(fixtures.path("pc-paused")), "--dest", spec]) == 0


def test_dest_bad_spec_is_usage_error(capsys) -> None:
    assert main(["check", str(fixtures.path("pc-paused")), "--dest", "colour=blue"]) == 2
