"""The recording TCP relay of fixtures/capture.py, for tests whose migration needs a return path
(postcopy-ram on): ``relay_class()`` returns ``(Relay, free_port)``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def relay_class():
    """fixtures/capture.py's ``Relay`` and ``_free_port`` (the module loaded once per process)."""
    if "vmig_fixture_capture" in sys.modules:
        mod = sys.modules["vmig_fixture_capture"]
        return mod.Relay, mod._free_port
    path = Path(__file__).resolve().parents[2] / "fixtures" / "capture.py"
    spec = importlib.util.spec_from_file_location("vmig_fixture_capture", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod.Relay, mod._free_port
