"""pytest fixtures for vmig's tests (registered as the ``vmig`` pytest11 plugin).

Also imported by ``tests/conftest.py`` so it works from a source checkout without installing.

Fixtures:
    qemu_bin      path of qemu-system-x86_64 (skips the test, or FAILS it under ``CI=true``)
    lab_dir       a fresh scratch folder for QEMU sockets, logs and streams
    fixture_bytes factory ``fixture_bytes(name) -> bytes`` (decompressed ``fixtures/<name>.bin.lz4``)
    s1_path       path of the spec sample ``s1.bin``
    vmig_roundtrip   ``vmig.testing.roundtrip.assert_roundtrip`` (decode → encode must be identical)
    qemu_loader      ``qemu_loader(argv, data, **kw)``: ``assert_loads_in_qemu`` bound to a fresh
                     workdir and the QEMU binary (skips without QEMU; FAILS under ``CI=true``)

Marker ``qemu`` (declared in pyproject) tags tests that run real QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["qemu_bin", "lab_dir", "fixture_bytes", "s1_path", "vmig_roundtrip", "qemu_loader"]


@pytest.fixture
def qemu_bin() -> str:
    """Absolute path of ``qemu-system-x86_64``; missing QEMU skips (FAILS under ``CI=true``)."""
    from vmig.testing.qemu import require_qemu

    return require_qemu()


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    """A fresh, absolute scratch folder for one test's QEMU files."""
    d = tmp_path / "lab"
    d.mkdir()
    return d.resolve()


@pytest.fixture(scope="session")
def fixture_bytes() -> Callable[[str], bytes]:
    """Factory returning the decompressed bytes of a committed fixture by name."""
    from vmig.testing import fixtures

    return fixtures.load


@pytest.fixture(scope="session")
def s1_path() -> Path:
    """Path of ``s1.bin`` (the spec's real capture); missing sample FAILS (it is part of the spec)."""
    from vmig.testing import fixtures

    try:
        return fixtures.sample_s1()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
        raise  # pragma: no cover


@pytest.fixture(scope="session")
def vmig_roundtrip() -> Callable[..., list]:
    """``assert_roundtrip(data, *, description=None) -> events``: re-encoding must give ``data``."""
    from vmig.testing.roundtrip import assert_roundtrip

    return assert_roundtrip


@pytest.fixture
def qemu_loader(tmp_path: Path) -> Callable[..., object]:
    """``qemu_loader(argv, data, *, postcopy=False, expect_memory_devices=None) -> LoadResult``.

    :func:`vmig.testing.roundtrip.assert_loads_in_qemu` with a fresh absolute workdir (pass the
    same folder to ``fixtures.resolve_args`` via ``qemu_loader.workdir``) and the QEMU binary.
    Missing QEMU skips the test, or FAILS it under ``CI=true``.
    """
    import functools

    from vmig.testing.qemu import require_qemu
    from vmig.testing.roundtrip import assert_loads_in_qemu

    binary = require_qemu()
    workdir = (tmp_path / "qemu-loader").resolve()
    workdir.mkdir()
    loader = functools.partial(assert_loads_in_qemu, workdir=workdir, binary=binary)
    loader.workdir = workdir  # type: ignore[attr-defined]
    return loader
