"""``vmig ram``: rounds of the dirty-bitmap walk and unplugged virtio-mem pages, on real captures.

Oracle: the ``query-migrate`` answer QEMU gave at the end of each capture (fixture manifests,
tests/data/ram, and the QEMU 10.0 captures made here): a round needs a bitmap sync, so rounds
<= ``dirty-sync-count``; the page totals equal ``normal`` and ``duplicate``, also for a
mapped-ram file of a VM whose virtio-mem device has nothing plugged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qemu10 import capture

from vmig.analysis.ram import KINDS
from vmig.cli import main
from vmig.testing import fixtures

REPO = Path(__file__).resolve().parents[2]
RAM_DATA = REPO / "tests" / "data" / "ram"


def _captures() -> list[tuple[str, Path, dict]]:
    out = []
    for name in fixtures.names():
        man = fixtures.manifest(name)
        if "query-migrate" in man and man.get("kind") != "return-path":
            out.append((name, REPO / "fixtures" / f"{name}.bin.lz4", man["query-migrate"]))
    for man_path in sorted(RAM_DATA.glob("*.json")):
        man = json.loads(man_path.read_text())
        out.append((man_path.stem, RAM_DATA / f"{man_path.stem}.bin.lz4", man["query-migrate"]))
    return out


CAPTURES = _captures()


def ram_json(capsys: pytest.CaptureFixture[str], path: Path) -> dict:
    assert main(["ram", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_capture_is_covered() -> None:
    names = {c[0] for c in CAPTURES}
    assert {"pc-running", "postcopy-main", "mapped-ram-10.0", "xbzrle", "compress"} <= names


@pytest.mark.parametrize("name,path,qm", CAPTURES, ids=[c[0] for c in CAPTURES])
def test_rounds_at_most_dirty_syncs(capsys, name: str, path: Path, qm: dict) -> None:
    doc = ram_json(capsys, path)
    rounds = doc["rounds"]
    assert 1 <= len(rounds) <= qm["ram"]["dirty-sync-count"]
    assert "passes" not in doc
    # rounds partition the page records: their sums are the totals
    for k in KINDS:
        assert sum(r[k] for r in rounds) == doc["totals"][k]
    assert sum(r["resent"] for r in rounds) == doc["totals"]["resent"]
    assert [r["index"] for r in rounds] == list(range(len(rounds)))
    assert rounds[0]["resent"] == 0


def test_running_guest_has_several_rounds(capsys) -> None:
    doc = ram_json(capsys, REPO / "fixtures" / "pc-running.bin.lz4")
    assert len(doc["rounds"]) >= 2
    # the later rounds re-send pages the guest dirtied again
    assert all(r["resent"] > 0 for r in doc["rounds"][1:])
    out = main(["ram", str(REPO / "fixtures" / "pc-running.bin.lz4")])
    text = ""
    assert out == 0
    text = capsys.readouterr().out
    assert f"rounds: {len(doc['rounds'])}" in text and "pass" not in text


def test_postcopy_switchover_starts_a_round(capsys) -> None:
    doc = ram_json(capsys, REPO / "fixtures" / "postcopy-main.bin.lz4")
    assert [r["postcopy"] for r in doc["rounds"]] == [False, True]
    # the destination's page requests moved the walk: jumps, not rounds
    assert doc["rounds"][1]["jumps"] >= 1


def test_unplugged_pages_of_a_record_stream(capsys) -> None:
    """postcopy-main: 416 MiB of the 1 GiB device plugged (its manifest); the rest is unplugged."""
    man = fixtures.manifest("postcopy-main")
    (dev,) = man["query-memory-devices"]
    size, max_size = dev["data"]["size"], dev["data"]["max-size"]
    doc = ram_json(capsys, REPO / "fixtures" / "postcopy-main.bin.lz4")
    (blk,) = [b for b in doc["blocks"] if b["idstr"].endswith("/mem0")]
    assert blk["unplugged"] == (max_size - size) // 4096
    assert doc["totals"]["unplugged"] == blk["unplugged"]


@pytest.mark.qemu
@pytest.mark.slow
def test_mapped_ram_with_unplugged_virtio_mem_equals_query_migrate(capsys) -> None:
    path, info = capture("pc-10.0-mapped-ram-unplugged")
    doc = ram_json(capsys, path)
    t = doc["totals"]
    assert (t["normal"], t["zero"]) == (info["ram"]["normal"], info["ram"]["duplicate"])
    assert t["unplugged"] == (1 << 30) // 4096
    assert 1 <= len(doc["rounds"]) <= info["ram"]["dirty-sync-count"]


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("name", ["pc-10.0-running", "pc-10.0-postcopy", "pc-10.0-guest"])
def test_qemu_10_rounds_at_most_dirty_syncs(capsys, name: str) -> None:
    path, info = capture(name)
    doc = ram_json(capsys, path)
    assert 1 <= len(doc["rounds"]) <= info["ram"]["dirty-sync-count"]
    assert (doc["totals"]["normal"], doc["totals"]["zero"]) == (info["ram"]["normal"], info["ram"]["duplicate"])
