"""``vmig check`` (exit 0/1, the checker table) and ``vmig rewrite`` (byte-exact, atomic)."""

from __future__ import annotations

import lz4.frame

from vmig.checks import registry
from vmig.cli import main
from vmig.stream import EndOfStream
from vmig.testing import fixtures

S1 = fixtures.sample_s1()


def test_check_ok_and_truncated(capsys, tmp_path):
    assert main(["check", str(S1)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.bin"
    bad.write_bytes(S1.read_bytes()[:-10])
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "offset 0x15fa78" in err[0]


def test_check_corrupt_footer_names_section(capsys, tmp_path):
    data = bytearray(S1.read_bytes())
    data[0x1515E3:0x1515E7] = b"\x00\x00\x00\x09"
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "section timer instance 0" in err and "expected 0, found 9" in err


def test_listed_checker_runs_and_reports(capsys, monkeypatch):
    seen = []

    def factory(ctx):
        def on_event(ev):
            seen.append(type(ev).__name__)
            if isinstance(ev, EndOfStream):
                return [f"EOF at {ev.offset:#x} in {ctx.path}"]
            return None
        return on_event

    monkeypatch.setattr(registry, "CHECKERS", (*registry.CHECKERS, ("test-eof", factory)))
    assert main(["check", str(S1)]) == 1
    err = capsys.readouterr().err
    assert "test-eof: EOF at 0x15fa77" in err
    assert seen[0] == "FileHeader" and seen[-1] == "StreamEnd"


def test_rewrite_identical_and_lz4(tmp_path, capsys):
    out = tmp_path / "out.bin"
    assert main(["rewrite", str(S1), str(out)]) == 0
    assert out.read_bytes() == S1.read_bytes()
    lz = tmp_path / "out.bin.lz4"
    assert main(["rewrite", str(out), str(lz)]) == 0
    assert lz4.frame.decompress(lz.read_bytes()) == S1.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".vmig")] == []


def test_rewrite_refuses_same_file_and_cleans_up_on_error(tmp_path, capsys):
    src = tmp_path / "a.bin"
    src.write_bytes(S1.read_bytes())
    assert main(["rewrite", str(src), str(src)]) == 2
    assert "onto itself" in capsys.readouterr().err
    bad = tmp_path / "bad.bin"
    bad.write_bytes(S1.read_bytes()[:5000])
    out = tmp_path / "o.bin"
    assert main(["rewrite", str(bad), str(out)]) == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".vmig")] == []
