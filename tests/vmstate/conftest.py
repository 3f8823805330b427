"""pytest configuration for tests/vmstate (registers the ``peer`` marker)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "peer: compares with QEMU's analyze-migration.py (fetched; fails under CI)"
    )
