"""The codec's must-show on every real capture, through the commands a user runs.

For each fixture (postcopy main stream and suppress-vmdesc capture included, given ``--desc-from``
the precopy capture of the same configuration named in the manifest): ``vmig sections --json``
tiles the input, ``vmig rewrite`` gives identical bytes, ``vmig check`` exits 0. Trailer-less
fixtures must also work without ``--desc-from`` thanks to the bundled machine schema sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmig.cli import main
from vmig.testing import fixtures as fx

NAMES = [n for n in fx.names() if fx.manifest(n).get("kind") != "return-path"]
NO_TRAILER = [n for n in NAMES if fx.manifest(n).get("desc_from") and n in ("pc-novmdesc", "postcopy-main")]


def _desc_args(name: str, use_desc_from: bool) -> list[str]:
    other = fx.manifest(name).get("desc_from")
    return ["--desc-from", str(fx.path(other))] if (other and use_desc_from) else []


CASES = [(n, True) for n in NAMES] + [(n, False) for n in NO_TRAILER]


@pytest.mark.parametrize(("name", "use_desc_from"), CASES,
                         ids=[f"{n}-{'desc-from' if d else 'bundled'}" for n, d in CASES])
def test_sections_rewrite_check(name: str, use_desc_from: bool, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    data = fx.load(name)
    src = tmp_path / f"{name}.bin"
    src.write_bytes(data)
    extra = _desc_args(name, use_desc_from)

    assert main(["sections", str(src), "--json", *extra]) == 0
    rows = json.loads(capsys.readouterr().out)
    pos = 0
    for row in rows:
        assert row["offset"] == pos
        pos += row["length"]
    assert pos == len(data)
    assert rows[0]["type"] == "header"

    out = tmp_path / "out.bin"
    assert main(["rewrite", str(src), str(out), *extra]) == 0
    assert out.read_bytes() == data

    assert main(["check", str(src), *extra]) == 0
    capsys.readouterr()


def test_trailer_less_fixtures_are_the_expected_ones() -> None:
    assert sorted(NO_TRAILER) == ["pc-novmdesc", "postcopy-main"]
