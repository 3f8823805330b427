"""The progress helper draws only on a TTY and only after its delay."""

from __future__ import annotations

import io

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
