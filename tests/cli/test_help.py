"""The command line as a new user meets it: --version, --help texts, pointers to the right command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import vmig
from vmig.cli import COMMAND_MODULES, main
from vmig.testing import fixtures

REPO = Path(__file__).resolve().parents[2]
HELPS = [[c] for c in COMMAND_MODULES if c != "info"] + [["info"], ["info", "memory-devices"]]
# what a user should not meet in --help: reST markup, Python internals
DEVELOPER_WORDS = re.compile(r"``|:mod:|:class:|:func:|:meth:|CHECKER_MODULES|register_checker|"
                             r"vmig\.(stream|vmstate|analysis|io)\b")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"vmig {version}" == f"vmig {vmig.__version__}"


@pytest.mark.parametrize("argv", HELPS, ids=[" ".join(a) for a in HELPS])
def test_help_is_written_for_users_with_an_example(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert not DEVELOPER_WORDS.search(text), DEVELOPER_WORDS.search(text)
    assert re.search(r"^Examples?:\n  vmig " + re.escape(argv[0]), text, re.M), text


def test_check_on_a_return_path_points_to_rp(capsys) -> None:
    rp = str(fixtures.path("postcopy-rp"))
    assert main(["check", rp]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(rp + ": ") and f"vmig rp {rp}" in line
    assert main(["rp", rp]) == 0  # and that command reads it
    capsys.readouterr()
    assert main(["check", str(fixtures.path("pc-paused"))]) == 0
