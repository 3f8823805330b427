"""The engine writes modelled devices from their models, and ``vmig migrate``, against real QEMU.

* The virtio-mem sections come from the device model at the moment QEMU saves them: after a
  model-side shrink (704→628 MiB) or grow (0→920 MiB) QEMU 7.2 loads the engine's stream with
  ``query-memory-devices`` equal to the model's and every guest write into plugged memory kept.
* A page that arrives for an unplugged block is discarded by QEMU 7.2's post_load: ``pmemsave``
  reads zeros; the Destination does the same and ``vmig check`` accepts the stream.
* ``vmig migrate`` streams from the real captures pass ``vmig check``, carry no page of an
  unplugged block and load into QEMU 7.2 with the device sizes the guest driver reached and the
  written pages as the stream carries them; postcopy ones too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vmig.cli import main
from vmig.device.sections import virtio_mem_sections
from vmig.io.decoding import decode_bytes
from vmig.io.streams import iter_events
from vmig.migration.destination import Destination
from vmig.migration.vm import Plan, open_capture, run
from vmig.stream.constants import MigCmd
from vmig.stream.events import Command, RamRecords
from vmig.testing import fixtures

MiB = 1 << 20
VMEM = "0000:00:02.0/mem0"


def _vm(name: str, **kw):
    man = fixtures.manifest(name)
    return open_capture(fixtures.path(name), man["argv"], qemu_version=man["qemu_version"], **kw)


def _sent_pages(events, idstr: str) -> np.ndarray:
    out: set[int] = set()

    def walk(evs):
        for ev in evs:
            if isinstance(ev, RamRecords):
                b = ev.batch
                t = b.types()
                for i in np.flatnonzero((t == 2) | (t == 8) | (t == 0x40)).tolist():
                    if b.blocks[int(b.block[i])].idstr == idstr:
                        out.add(int(b.addr[i]) // 4096)
            elif isinstance(ev, Command):
                walk(ev.children)

    walk(events)
    return np.array(sorted(out), dtype=np.int64)


def _load(name: str, data: bytes, lab_dir: Path, reads: list[tuple[int, int]], **kw):
    from vmig.testing.qemu import load_stream

    args = fixtures.resolve_args(fixtures.manifest(name)["argv"], lab_dir)
    return load_stream(args, data, workdir=lab_dir,
                       inspect=lambda q: [q.read_memory(gpa, n) for gpa, n in reads], **kw)


# -- the device model is the only source of its sections ----------------------------------------


@pytest.mark.qemu
def test_model_shrink_704_to_628_is_what_qemu_72_loads(qemu_bin, lab_dir):
    s = _vm("pc-guest")
    out = run(s, Plan(writes=6, seed=3, resizes=[("vm0", 704 * MiB), ("vm0", 628 * MiB)]))
    dev = s.machine.devices[0]
    assert dev.size == dev.requested_size == 628 * MiB
    assert any(r == "UNPLUG" for r, _, _ in out.request_log)
    (sec,) = virtio_mem_sections(decode_bytes(out.stream))
    assert (sec.decoded.device.size, sec.decoded.device.requested_size) == (628 * MiB, 628 * MiB)
    per = dev.block_size // 4096
    assert np.array_equal(_sent_pages(decode_bytes(out.stream), VMEM),
                          np.flatnonzero(np.repeat(dev.bitmap, per)))
    res = _load("pc-guest", out.stream, lab_dir, [(w.gpa, len(w.data)) for w in out.writes])
    assert res.ok, res.stderr
    assert res.memory_devices == s.machine.query_memory_devices()
    assert res.inspected == [w.data for w in out.writes]


@pytest.mark.qemu
def test_model_grow_0_to_920_keeps_every_write_into_new_blocks(qemu_bin, lab_dir):
    s = _vm("pc-paused")  # never started: the guest boots (probe) and plugs
    assert s.machine.devices[0].size == 0
    out = run(s, Plan(writes=11, passes=1, seed=5, resizes=[("0000:00:02.0", 920 * MiB)]))
    dev = s.machine.devices[0]
    assert dev.size == 920 * MiB and len(out.writes) == 11
    assert all(dev.addr <= w.gpa < dev.addr + dev.region_size for w in out.writes)
    res = _load("pc-paused", out.stream, lab_dir, [(w.gpa, len(w.data)) for w in out.writes])
    assert res.ok, res.stderr
    assert res.memory_devices == s.machine.query_memory_devices()
    assert res.memory_devices[0]["data"]["size"] == 920 * MiB
    assert res.inspected == [w.data for w in out.writes]  # 11 of 11 writes kept


@pytest.mark.qemu
def test_postcopy_package_carries_the_model_state_and_qemu_72_loads_it(qemu_bin, lab_dir):
    s = _vm("postcopy-main", postcopy=True)
    out = run(s, Plan(postcopy=True, writes=4, seed=1, resizes=[("vm0", 300 * MiB)]))
    dev = s.machine.devices[0]
    assert dev.size == 300 * MiB
    evs = decode_bytes(out.stream)
    pk = next(e for e in evs if isinstance(e, Command) and e.cmd == MigCmd.PACKAGED)
    (sec,) = virtio_mem_sections(pk.children)
    assert sec.decoded.device.size == 300 * MiB
    assert np.array_equal(sec.decoded.device.bitmap[: dev.nb_blocks], dev.bitmap)
    assert out.requests  # the guest touched what it wrote: discarded pages were requested
    res = _load("postcopy-main", out.stream, lab_dir, [(w.gpa, len(w.data)) for w in out.writes],
                postcopy=True)
    assert res.ok, res.stderr
    assert res.memory_devices == s.machine.query_memory_devices()
    assert res.inspected == [w.data for w in out.writes]


# -- one rule for pages of unplugged blocks ------------------------------------------------------


@pytest.mark.qemu
def test_page_of_an_unplugged_block_is_discarded_on_load_like_qemu_72(qemu_bin, lab_dir, tmp_path):
    s = _vm("pc-guest")
    dev = s.machine.devices[0]
    stray = 1000 * MiB  # unplugged in the capture
    assert not dev.bitmap[stray // dev.block_size]
    kept = 10 * MiB  # plugged
    assert dev.bitmap[kept // dev.block_size]
    data = s.source.setup() + s.source.iterate()
    s.ram.write(VMEM, stray, b"racing-an-unplug" * 256)  # 7.2's notifier filtered only pass 1
    s.ram.write(VMEM, kept, b"plugged-write-ok" * 256)
    data += s.source.complete()
    evs = decode_bytes(data)
    assert stray // 4096 in set(_sent_pages(evs, VMEM).tolist())  # it travels

    path = tmp_path / "race.bin"
    path.write_bytes(data)
    assert main(["check", str(path)]) == 0
    man = fixtures.manifest("pc-guest")
    from vmig.device.cmdline import machine_from_argv

    dest = Destination(machine=machine_from_argv(man["argv"])).load(evs)
    assert not dest.images[VMEM][stray : stray + 4096].any()
    assert dest.images[VMEM][kept : kept + 16].tobytes() == b"plugged-write-ok"

    res = _load("pc-guest", data, lab_dir, [(dev.addr + stray, 4096), (dev.addr + kept, 4096)])
    assert res.ok, res.stderr
    assert res.inspected == [bytes(4096), b"plugged-write-ok" * 256]


def test_postcopy_package_discards_nothing():
    """Inside a postcopy package post_load skips the discard (incoming postcopy runs)."""
    from vmig.device.virtio_mem import unplugged_discarded_at_load

    bits = np.array([True, False, False, True, False])
    assert unplugged_discarded_at_load(bits, 2 * MiB, incoming_postcopy=False) == \
        ((2 * MiB, 4 * MiB), (8 * MiB, 2 * MiB))
    assert unplugged_discarded_at_load(bits, 2 * MiB, incoming_postcopy=True) == ()


# -- vmig migrate --------------------------------------------------------------------------------

CASES = {
    "pc-guest": ["vm0:requested-size=704M", "0000:00:02.0:requested-size=628M"],
    "q35-numa": ["vm0:requested-size=512M", "1:requested-size=200M"],
    "pc-paused": ["0:requested-size=920M", "0:requested-size=400M"],
    "pc-running": ["vm0:requested-size=256M", "vm0:requested-size=64M"],
}


def _marked_pages(data: bytes, name: str) -> list[tuple[int, bytes]]:
    """(guest-physical address, page) of every page the stream carries with a guest-write mark,
    read back from the stream itself (virtio-mem blocks: memaddr + offset)."""
    evs = decode_bytes(data)
    dest = Destination().load(evs)
    devs = {s.dev_path: s.decoded.device.tmp.addr for s in virtio_mem_sections(evs)}
    out = []
    for idstr, img in dest.images.items():
        path, _, _ = idstr.rpartition("/")
        if path not in devs:
            continue
        pages = img[: len(img) // 4096 * 4096].reshape(-1, 4096)
        mark = np.frombuffer(b"vmig-write-", np.uint8)
        for p in np.flatnonzero((pages[:, : len(mark)] == mark).all(axis=1)).tolist():
            out.append((devs[path] + int(p) * 4096, pages[p].tobytes()))
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(CASES))
def test_vmig_migrate_streams_load_into_qemu_72(name, qemu_bin, lab_dir, tmp_path, capsys):
    out = tmp_path / "out.bin"
    argv = ["migrate", "--template", str(fixtures.path(name)), "-o", str(out), "--writes", "3",
            "--passes", "2", "--seed", "7"]
    for r in CASES[name]:
        argv += ["--virtio-mem", r]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "passes: 3" in printed and "guest writes: 6" in printed
    assert main(["check", str(out)]) == 0
    capsys.readouterr()
    data = out.read_bytes()
    evs = decode_bytes(data)
    secs = virtio_mem_sections(evs)
    # the last requested size given per device, reached by the guest driver
    want: dict[int, int] = {}
    for r in CASES[name]:
        ref, size = r.rsplit(":requested-size=", 1)
        idx = {"vm0": 0, "vm1": 1, "0000:00:02.0": 0}.get(ref, int(ref) if ref.isdigit() else -1)
        want[idx] = int(size[:-1]) * MiB
    for sec in secs:
        d = sec.decoded.device
        bits = np.asarray(d.bitmap[: d.tmp.region_size // d.tmp.block_size], dtype=bool)
        ramblock = next(i for i in Destination().load(evs).images if i.startswith(sec.dev_path + "/"))
        per = d.tmp.block_size // 4096
        assert np.array_equal(_sent_pages(evs, ramblock), np.flatnonzero(np.repeat(bits, per)))
    marked = _marked_pages(data, name)
    assert marked  # the writes went into plugged virtio-mem memory
    res = _load(name, data, lab_dir, [(gpa, 4096) for gpa, _ in marked])
    assert res.ok, res.stderr
    sizes = [(m["data"]["size"], m["data"]["requested-size"]) for m in res.memory_devices]
    for idx, size in want.items():
        assert sizes[idx] == (size, size), (idx, sizes)
    shown = json.loads(_info_json(out, capsys))  # what the stream says, read by the analysis side
    assert [{k: v for k, v in m["data"].items() if k != "id"} for m in shown] == \
        [{k: v for k, v in m["data"].items() if k != "id"} for m in res.memory_devices]
    assert res.inspected == [page for _, page in marked]


def _info_json(path: Path, capsys) -> str:
    assert main(["info", "memory-devices", "--json", str(path)]) == 0
    return capsys.readouterr().out


@pytest.mark.qemu
def test_vmig_migrate_postcopy_stream_loads_into_qemu_72(qemu_bin, lab_dir, tmp_path, capsys):
    out = tmp_path / "pc.bin"
    assert main(["migrate", "--template", str(fixtures.path("pc-guest")), "-o", str(out), "--postcopy",
                 "--writes", "4", "--virtio-mem", "vm0:requested-size=500M"]) == 0
    printed = capsys.readouterr().out
    data = out.read_bytes()
    evs = decode_bytes(data)
    assert [e.cmd for e in evs if isinstance(e, Command)][:3] == \
        [MigCmd.OPEN_RETURN_PATH, MigCmd.PING, MigCmd.POSTCOPY_ADVISE]
    n_req = int(printed.split("page requests: ")[1].split()[0])
    assert n_req > 0 and "discards: 0 pages" not in printed
    marked = _marked_pages(data, "pc-guest")
    res = _load("pc-guest", data, lab_dir, [(gpa, 4096) for gpa, _ in marked], postcopy=True)
    assert res.ok, res.stderr
    got = res.memory_devices[0]["data"]
    assert (got["size"], got["requested-size"]) == (500 * MiB, 500 * MiB)
    assert res.inspected == [page for _, page in marked]


def test_vmig_migrate_return_path_file_drives_the_requests(tmp_path, capsys):
    """Page requests from real return-path bytes (the postcopy-rp capture): every REQ_PAGES of
    the file is served."""
    from vmig.stream.constants import RpMsg
    from vmig.stream.return_path import decode_rp

    rp = tmp_path / "rp.bin"
    rp.write_bytes(fixtures.load("postcopy-rp"))
    reqs = [m for m in decode_rp(rp.read_bytes()) if m.type in (RpMsg.REQ_PAGES, RpMsg.REQ_PAGES_ID)]
    out = tmp_path / "o.bin"
    assert main(["migrate", "--template", str(fixtures.path("postcopy-main")), "-o", str(out),
                 "--postcopy", "--return-path", str(rp)]) == 0
    assert f"page requests: {len(reqs)}" in capsys.readouterr().out
    assert list(iter_events(str(out), schema_sets=True))


def test_vmig_migrate_bad_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "o.bin"
    assert main(["migrate", "--template", str(fixtures.path("pc-guest")), "-o", str(out),
                 "--virtio-mem", "vm9:requested-size=4M"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vm9" in err and "0000:00:02.0" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(["migrate", "--template", str(fixtures.path("pc-guest")), "-o", str(out),
                 "--virtio-mem", "vm0:size=4M"]) == 2
    assert "DEV:requested-size=SIZE" in capsys.readouterr().err
    bare = tmp_path / "cap.bin"
    bare.write_bytes(b"QEVM")
    assert main(["migrate", "--template", str(bare), "-o", str(out)]) == 2
    assert "manifest" in capsys.readouterr().err


def test_demo_reboot_during_postcopy_timeline(capsys):
    """The model's timeline of the special case (the real-QEMU counterpart is
    tests/device/test_vmem_qemu_guest.py::test_reboot_during_postcopy_like_qemu)."""
    assert main(["demo", "reboot-during-postcopy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "UNPLUG(64)=BUSY" in lines[1]  # a resize during the outgoing migration
    assert "reset refused" in lines[3] and "size 512 MiB" in lines[3]
    assert "UNPLUG_ALL required; answered BUSY 3 time(s)" in lines[4]
    assert lines[6].startswith("retry timer fires: UNPLUG_ALL(0)=ACK, PLUG(64)=ACK")
    assert lines[-1] == "replugged: size 512 MiB, requested 512 MiB (256 blocks)"


def test_vmig_migrate_resize_during_the_migration_is_answered_busy(tmp_path, capsys):
    """QEMU 7.2 refuses plug/unplug while the outgoing migration runs: the guest's requests are
    answered BUSY, and the stream carries the new requested-size with the old size."""
    out = tmp_path / "o.bin"
    assert main(["migrate", "--template", str(fixtures.path("pc-guest")), "-o", str(out), "--xbzrle",
                 "--passes", "3", "--writes", "2", "--resize-during", "--virtio-mem", "vm0:requested-size=500M"]) == 0
    printed = capsys.readouterr().out
    assert "PLUG BUSY x1" in printed and "PLUG ACK" not in printed
    assert main(["check", str(out)]) == 0
    (sec,) = virtio_mem_sections(decode_bytes(out.read_bytes()))
    assert (sec.decoded.device.size, sec.decoded.device.requested_size) == (300 * MiB, 500 * MiB)
