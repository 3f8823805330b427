"""The README's Python examples run as written (against the bundled real captures)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmig.device.machine import QmpError

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first is not None and text.index("```sh") < 20
    lines = [ln for ln in first.group(1).splitlines() if ln.strip()]
    assert len(lines) == 2
    assert lines[0].startswith("pip install . && vmig ")
    assert lines[1] == "bash scripts/test"
    assert "bash scripts/test" in (README.parent / ".ci" / "run").read_text()


def test_library_example_runs() -> None:
    code = python_blocks()[0]
    scope: dict = {}
    exec(compile(code, "README-library", "exec"), scope)
    assert scope["pages"] > 0 and len(scope["vmem"]) == 1


def test_device_model_example_runs_and_ends_with_the_documented_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = python_blocks()[1]
    with pytest.raises(QmpError, match=r"'requested-size' has to be multiples of 'block-size' \(0x200000\)"):
        exec(compile(code, "README-device", "exec"), {})
    out = capsys.readouterr().out.split()
    assert out[:3] == ["0x140000000", "524288000", "00000000000000000000"]


def test_engine_example_runs() -> None:
    code = python_blocks()[2]
    assert "PrecopySource" in code
    scope: dict = {}
    exec(compile(code, "README-engine", "exec"), scope)
    assert scope["src"].stats.passes == 2 and scope["vmem"].size == 300 << 20
