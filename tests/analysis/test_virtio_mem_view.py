"""`vmig info memory-devices` / `vmig check` against every real fixture with a virtio-mem device.

Oracle: the manifest's ``query-memory-devices`` and HMP ``info memory-devices`` text, captured
from the source QEMU at the moment of migration (fixtures/capture.py).
"""

from __future__ import annotations

import json

import pytest

from vmig.cli import main
from vmig.testing import fixtures

_WITH_VIRTIO_MEM = [n for n in fixtures.names() if fixtures.manifest(n).get("query-memory-devices")]
# streams that carry no trailer: decoded from the bundled schema sets alone (no --desc-from)
_NO_TRAILER = [n for n in _WITH_VIRTIO_MEM
               if fixtures.manifest(n).get("kind") == "postcopy" or "suppress-vmdesc=on" in " ".join(
                   fixtures.manifest(n).get("argv", []))]


def _strip_ids(entries: list[dict]) -> list[dict]:
    return [{"type": e["type"], "data": {k: v for k, v in e["data"].items() if k != "id"}} for e in entries]


def _hmp_without_ids(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").splitlines()
    return [ln for ln in lines if not ln.startswith("Memory device [")]


def _stream_file(name: str, tmp_path) -> str:
    return str(fixtures.path(name))


@pytest.mark.parametrize("name", _WITH_VIRTIO_MEM)
def test_info_json_matches_qmp(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    man = fixtures.manifest(name)
    assert main(["info", "memory-devices", str(fixtures.path(name)), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert _strip_ids(got) == _strip_ids(man["query-memory-devices"])


@pytest.mark.parametrize("name", _WITH_VIRTIO_MEM)
def test_info_hmp_matches_qemu(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    man = fixtures.manifest(name)
    assert main(["info", "memory-devices", str(fixtures.path(name))]) == 0
    out = capsys.readouterr().out
    assert _hmp_without_ids(out) == _hmp_without_ids(man["hmp-info-memory-devices"])
    # header lines: same count and kind; the id is replaced by the device path
    ours = [ln for ln in out.splitlines() if ln.startswith("Memory device [virtio-mem]: ")]
    assert len(ours) == len(man["query-memory-devices"])


@pytest.mark.parametrize("name", _WITH_VIRTIO_MEM)
def test_info_id_mapping(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With --id PATH=ID taken from the manifest (matched by memaddr) the HMP text is identical."""
    man = fixtures.manifest(name)
    assert main(["info", "memory-devices", str(fixtures.path(name)), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main(["info", "memory-devices", str(fixtures.path(name))]) == 0
    paths = [ln.split('"')[1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("Memory device")]
    by_addr = {e["data"]["memaddr"]: e["data"].get("id", "") for e in man["query-memory-devices"]}
    args = [f"{p}={by_addr[e['data']['memaddr']]}" for p, e in zip(paths, ours)]
    argv = ["info", "memory-devices", str(fixtures.path(name))]
    for a in args:
        argv += ["--id", a]
    assert main(argv) == 0
    assert capsys.readouterr().out == man["hmp-info-memory-devices"].replace("\r\n", "\n")
    # QMP with the ids: QEMU's entries, keys in the order QEMU printed them
    assert main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == man["query-memory-devices"]
    assert [list(e["data"]) for e in got] == [list(e["data"]) for e in man["query-memory-devices"]]


def test_info_id_with_unknown_path_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An --id naming no device of the stream is refused (exit 2), naming the paths there are."""
    argv = ["info", "memory-devices", str(fixtures.path("q35-numa")), "--id", "0000:00:09.0=vm9"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "'0000:00:09.0'" in err and "0000:00:01.0, 0000:00:02.0" in err


@pytest.mark.parametrize("name", _NO_TRAILER)
def test_no_trailer_decodes_from_bundled_sets(name: str) -> None:
    """No trailer, no --desc-from: every FULL section (also inside PACKAGED) is walked with the
    bundled schema set of the stream's machine type, and the virtio-mem state equals QMP's."""
    from vmig.analysis.virtio_mem import MemoryDeviceCollector, qmp_list
    from vmig.io.decoding import new_decoder
    from vmig.stream.events import Command, DeviceState, SectionHeader
    from vmig.stream.vmdesc import find_trailer

    data = fixtures.load(name)
    assert find_trailer(data) is None, "fixture unexpectedly has a trailer"
    dec = new_decoder(name=None)
    dec.receive_data(data)
    dec.receive_data(b"")
    events = list(dec.events())
    assert dec.layout.schema_set() is not None
    assert dec.layout.schema_set().machine == fixtures.manifest(name)["machine"]

    def flat(evs):  # noqa: ANN001, ANN202
        for e in evs:
            if isinstance(e, Command) and e.children:
                yield from flat(e.children)
            else:
                yield e

    flat_events = list(flat(events))
    fulls = [e for e in flat_events if isinstance(e, SectionHeader) and e.type == 4]
    states = [e for e in flat_events if isinstance(e, DeviceState) and e.section_type == 4]
    assert len(fulls) == len(states) > 20
    col = MemoryDeviceCollector()
    col.feed(events)
    assert _strip_ids(qmp_list(col.result())) == _strip_ids(fixtures.manifest(name)["query-memory-devices"])


@pytest.mark.parametrize("name", _WITH_VIRTIO_MEM)
def test_check_clean_fixture(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vmig.analysis.virtio_mem import iter_stream_events
    from vmig.checks.virtio_mem import VirtioMemChecker

    chk = VirtioMemChecker()
    problems = []
    for ev in iter_stream_events(str(fixtures.path(name))):
        problems += chk(ev) or []
    assert problems == []
    devs = chk.collector.result()
    assert devs and all(d.ramblock is not None for d in devs)
    for d in devs:
        # QEMU sends pages only for plugged blocks (and, precopy, for every plugged block)
        bits = d.device.bitmap
        blocks = set((d.pages() // d.device.block_size).tolist())
        assert blocks <= set(map(int, bits.nonzero()[0]))


def _page_block_ranges(name: str) -> list[tuple[int, int]]:
    """Plugged ranges as the RAM section shows them: blocks that have pages (independent of the
    virtio-mem section; QEMU's precopy sends every page of a plugged block, never others)."""
    import numpy as np

    from vmig.io.streams import iter_events
    from vmig.runs import true_runs
    from vmig.stream.events import RamRecords

    bs = fixtures.manifest(name)["query-memory-devices"][0]["data"]["block-size"]
    blocks: set[int] = set()
    for ev in iter_events(str(fixtures.path(name))):
        if isinstance(ev, RamRecords) and len(ev.batch):
            b = ev.batch
            for i, blk in enumerate(b.blocks):
                if blk.idstr.endswith("/mem0"):
                    mask = (b.block == i) & np.isin(b.types(), (2, 8))
                    blocks.update((b.addr[mask] // bs).tolist())
    nblocks = fixtures.manifest(name)["query-memory-devices"][0]["data"]["max-size"] // bs
    bits = np.zeros(nblocks, dtype=bool)
    bits[sorted(blocks)] = True
    return true_runs(bits)


def test_map_ranges_match_ram_pages(capsys: pytest.CaptureFixture[str]) -> None:
    name = "pc-guest"
    assert main(["info", "memory-devices", str(fixtures.path(name)), "--map", "--width", "32"]) == 0
    out = capsys.readouterr().out
    listed = []
    for ln in out.splitlines():
        ln = ln.strip()
        if ln.startswith("blocks ["):
            a, b = ln[len("blocks ["):].split(")")[0].split(", ")
            listed.append((int(a), int(b)))
    assert listed and listed == _page_block_ranges(name)
    rows = [ln for ln in out.splitlines() if ln.strip().startswith("0x")]
    assert all(len(r.split("|")[1]) <= 32 for r in rows)
    size = fixtures.manifest(name)["query-memory-devices"][0]["data"]["size"]
    assert sum(b - a for a, b in listed) * (2 << 20) == size


def test_analyze_shows_virtio_mem_decoded(capsys: pytest.CaptureFixture[str]) -> None:
    name = "pc-guest"
    assert main(["analyze", str(fixtures.path(name))]) == 0
    doc = json.loads(capsys.readouterr().out)
    text = json.dumps(doc)
    want = fixtures.manifest(name)["query-memory-devices"][0]["data"]
    # the virtio-mem section's state carries the decoded device fields, not a hex blob
    sec = [s for s in doc["sections"] if s.get("idstr", "").endswith("/virtio-mem")][0]
    dev = sec["state"]["virtio"]["decoded"]["device"]
    assert dev["tmp"]["addr"] == want["memaddr"] and dev["size"] == want["size"]
    assert dev["requested_size"] == want["requested-size"] and dev["tmp"]["block_size"] == want["block-size"]
    assert "virtio/started" in sec["state"]["virtio"]["decoded"]["subsections"]
    assert text


@pytest.mark.parametrize("name", _WITH_VIRTIO_MEM)
def test_every_virtio_mem_payload_roundtrips(name: str) -> None:
    from vmig.analysis.virtio_mem import iter_stream_events
    from vmig.stream.events import Command, DeviceState
    from vmig.vmstate import virtio_mem as vm

    def flat(events):  # noqa: ANN001, ANN202
        for e in events:
            if isinstance(e, Command) and e.children:
                yield from flat(e.children)
            else:
                yield e

    n = 0
    for ev in flat(iter_stream_events(str(fixtures.path(name)))):
        if isinstance(ev, DeviceState) and ev.idstr.endswith("/virtio-mem"):
            raw = bytes(ev.payload)
            assert vm.encode_virtio_mem(vm.decode_virtio_mem(raw)) == raw
            assert vm.measure_virtio_mem(raw) == len(raw)
            n += 1
    assert n == len(fixtures.manifest(name)["query-memory-devices"])
