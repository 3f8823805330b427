"""Start-up cost: the commands that only validate and count RAM records (``analyze``,
``check``, ``sections``, ``info memory-devices``) run on a stream without a virtio-mem device
without importing numpy (about a third of their start-up on a small capture), when the
compiled walker is built; the output is the same as with numpy loaded first. Run as a command
(``entry_point``), they also leave the standard modules of ``vmig.cli.DEFERRED_MODULES``
unexecuted, and import no ``dataclasses`` (vmig declares its value classes with
``vmig.records``); a deferred module still works when something uses it."""

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
from vmig.cli import DEFERRED_MODULES, defer_modules, main
if sys.argv[1] == "lean":
    defer_modules()  # as entry_point does
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(sys.argv[2:])
executed = [n for n in DEFERRED_MODULES if type(sys.modules.get(n)).__name__ != "_DeferredModule"]
print(json.dumps({"rc": rc, "numpy": "numpy" in sys.modules, "out": out.getvalue(),
                  "executed": executed, "dataclasses": "dataclasses" in sys.modules}))
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
    assert lean["executed"] == [] and not lean["dataclasses"]
    assert full["numpy"] and (full["rc"], full["out"]) == (lean["rc"], lean["out"])


USE_DEFERRED = """
import sys
from vmig.cli import DEFERRED_MODULES, defer_modules
defer_modules()
import construct  # imports every deferred module by name
import hashlib, inspect, pickle, traceback
assert all(type(sys.modules[n]).__name__ == "_DeferredModule" for n in DEFERRED_MODULES)
from hashlib import sha1
assert sha1(b"").hexdigest() == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
assert pickle.loads(pickle.dumps({"a": 1})) == {"a": 1}
assert inspect.isfunction(defer_modules) and callable(construct.debug.pdb.post_mortem)
try:
    raise ValueError("x")
except ValueError:
    assert "ValueError: x" in traceback.format_exc()
assert all(type(sys.modules[n]).__name__ == "module" for n in DEFERRED_MODULES)
print("ok")
"""


def test_deferred_modules_work_when_used() -> None:
    res = subprocess.run([sys.executable, "-c", USE_DEFERRED], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr


def test_an_internal_error_traceback_with_deferred_modules(tmp_path) -> None:
    """VMIG_DEBUG=1 prints the traceback of an internal error through the deferred traceback."""
    probe = ("import sys\nfrom vmig.cli import defer_modules, main\ndefer_modules()\n"
             "import vmig.cli.sections as m\n"
             "m.handler = lambda args: 1 / 0\n"
             "sys.exit(main(['sections', sys.argv[1]]))\n")
    stream = tmp_path / "s.bin"
    stream.write_bytes(b"QEVM\x00\x00\x00\x03\x00")
    res = subprocess.run([sys.executable, "-c", probe, str(stream)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "VMIG_DEBUG": "1",
                              "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert res.returncode == 3
    assert "Traceback (most recent call last)" in res.stderr and "ZeroDivisionError" in res.stderr
