"""The progress helper draws only on a TTY and only after its delay."""

from __future__ import annotations

import io
import sys

import pytest

from vmig.cli.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_tty() -> None:
    s = io.StringIO()
    p = Progress(100, "x", stream=s, delay=0)
    p(50)
    p.close()
    assert s.getvalue() == ""


def test_draws_on_a_tty_after_the_delay_and_clears() -> None:
    s = _Tty()
    p = Progress(1000, "ram", stream=s, delay=0)
    p(500)
    assert "50.0%" in s.getvalue() and s.getvalue().startswith("\rram [")
    p.close()
    assert s.getvalue().endswith("\r\x1b[K")
    s2 = _Tty()
    q = Progress(1000, stream=s2, delay=60)
    q(500)
    assert s2.getvalue() == ""


STREAM_COMMANDS = [
    (["analyze", "S"], "analyze"),
    (["analyze", "--format", "qemu", "S"], "analyze"),
    (["check", "S"], "check"),
    (["info", "memory-devices", "S"], "info"),
    (["sections", "S"], "sections"),
    (["ram", "S"], "ram"),
    (["extract", "S", "-o", "OUT", "--format", "qemu"], "extract"),
    (["rewrite", "S", "OUT/re.bin"], "rewrite"),
    (["diff", "S", "S"], "diff"),
]


@pytest.mark.parametrize("argv,label", STREAM_COMMANDS, ids=[" ".join(a[:2]) for a, _ in STREAM_COMMANDS])
def test_every_stream_walking_command_draws_progress_on_a_tty(argv, label, monkeypatch, tmp_path, s1_path):
    from vmig.cli import main, progress

    monkeypatch.setattr(progress, "DELAY", 0.0)
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    out = tmp_path / "out"
    out.mkdir()
    args = [str(s1_path) if a == "S" else a.replace("OUT", str(out)) for a in argv]
    rc = main(args)
    assert rc in (0, 1), err.getvalue()  # diff of a stream with itself: 0; check: 0
    text = err.getvalue()
    assert f"\r{label} [" in text, text
    assert text.endswith("\r\x1b[K")


@pytest.mark.parametrize("argv", [["sections", "S"], ["info", "memory-devices", "S"], ["analyze", "--format", "qemu", "S"]],
                         ids=["sections", "info", "analyze-qemu"])
def test_commands_that_skip_ram_build_no_columns(argv, monkeypatch, s1_path, capsys):
    """These commands read only record counts and block lists: the walk validates and counts,
    and no batch ever builds its columns (RamBatch._set_columns is never reached)."""
    from vmig.cli import main
    from vmig.stream import ram

    def refuse(self, columns):
        raise AssertionError("columns built")

    monkeypatch.setattr(ram.RamBatch, "_set_columns", refuse)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main([str(s1_path) if a == "S" else a for a in argv]) == 0
    # the same patch does stop a command that needs page positions (an internal error: exit 3)
    capsys.readouterr()
    assert main(["ram", str(s1_path)]) == 3
    assert "AssertionError: columns built" in capsys.readouterr().err
