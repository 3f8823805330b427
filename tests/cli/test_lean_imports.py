"""Start-up cost: the commands that only validate and count RAM records (``analyze``,
``check``, ``sections``, ``info memory-devices``) run on a stream without a virtio-mem device
without importing numpy (about a third of their start-up on a small capture), when the
compiled walker is built; the output is the same as with numpy loaded first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmig.stream.ram import compiled_walker_available

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = (["analyze"], ["check"], ["sections"], ["info", "memory-devices"], ["analyze", "--format", "qemu"])
PROBE = """
import contextlib, io, json, sys
if sys.argv[1] == "numpy-first":
    import numpy  # noqa: F401
from vmig.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(sys.argv[2:])
print(json.dumps({"rc": rc, "numpy": "numpy" in sys.modules, "out": out.getvalue()}))
"""


def _run(mode: str, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VMIG_PURE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", PROBE, mode, *argv], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    return json.loads(res.stdout)


@pytest.mark.parametrize("capture", ["xbzrle_capture", "compress_capture"])
@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_validating_commands_do_not_import_numpy(request, tmp_path, capture, argv) -> None:
    if not compiled_walker_available():
        if os.environ.get("CI") == "true":
            pytest.fail("the compiled RAM walker is not built")
        pytest.skip("compiled RAM walker not built (the Python walker uses numpy)")
    data, _ = request.getfixturevalue(capture)
    stream = tmp_path / "s.bin"
    stream.write_bytes(data)
    lean = _run("lean", [*argv, str(stream)])
    full = _run("numpy-first", [*argv, str(stream)])
    assert lean["rc"] == 0 and (lean["out"] or argv[0] == "info")  # info: no device, no line
    assert not lean["numpy"]
    assert full["numpy"] and (full["rc"], full["out"]) == (lean["rc"], lean["out"])
