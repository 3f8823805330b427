"""The offline migration engine against real captures and real QEMU 7.2.

Sources are built from real captures (device sections, RAM contents), run precopy/postcopy,
and what they write is loaded by QEMU itself, which is then asked over QMP what it loaded
(memory devices, guest memory through ``pmemsave``). The destination's checks are compared
with the error lines QEMU prints for the same bad configuration.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from vmig.analysis.ram import RamView
from vmig.device.cmdline import machine_from_argv
from vmig.device.requests import ResponseType
from vmig.errors import MigrationError, UsageError
from vmig.io.decoding import decode_bytes as decode
from vmig.io.streams import iter_events
from vmig.migration.destination import Destination
from vmig.migration.notifiers import VirtioMemNotifier
from vmig.migration.ram import GuestRam
from vmig.migration.source import PrecopySource, StreamTemplate
from vmig.stream.constants import MigCmd, RpMsg, SectionType
from vmig.stream.events import Command, SectionEnd, SectionHeader
from vmig.testing import fixtures
from vmig.testing.engine import from_capture

VMEM = "0000:00:02.0/mem0"


@cache
def _capture(name: str) -> tuple:
    evs = tuple(iter_events(str(fixtures.path(name)), schema_sets=True))
    return evs, Destination().load(evs)


def _machine(name: str):
    mach = machine_from_argv(fixtures.manifest(name)["argv"])
    Destination(machine=mach, keep_ram=False).load(_capture(name)[0])  # the device as captured
    return mach


def _source(name: str, *, style: str = "discard-manager", postcopy: bool = False):
    m = from_capture(fixtures.path(name), fixtures.manifest(name)["argv"], style=style, postcopy=postcopy)
    return m.source, m.ram, m.machine.devices[0], m.notifiers[0], m.machine


def _view(data: bytes) -> RamView:
    view = RamView()
    for ev in decode(data):
        view.feed(ev)
    return view


def _sent_pages(data: bytes, idstr: str) -> np.ndarray:
    """Page indices of ``idstr`` that the stream carries (any kind)."""
    out = []
    for ev in decode(data):
        if type(ev).__name__ == "RamRecords":
            b = ev.batch
            types = b.types()
            for i in np.flatnonzero((types == 2) | (types == 8)).tolist():
                if b.blocks[int(b.block[i])].idstr == idstr:
                    out.append(int(b.addr[i]) // 4096)
    return np.array(sorted(set(out)), dtype=np.int64)


def test_setup_writes_the_capture_bytes_up_to_ram_start():
    """Header, configuration and the RAM START section (MEM_SIZE list + EOS) come out byte for
    byte as QEMU wrote them in the capture."""
    src, *_ = _source("pc-guest")
    out = src.setup()
    real = fixtures.load("pc-guest")
    ram_id = src.template.ram_section.section_id
    start_end = next(e for e in _capture("pc-guest")[0] if isinstance(e, SectionEnd) and e.section_id == ram_id)
    assert len(out) == start_end.offset + start_end.length
    assert out == real[: len(out)]


def test_unplugged_blocks_never_travel_and_plugged_ones_do():
    src, ram, dev, notifier, _ = _source("pc-guest")
    data = src.setup() + src.iterate(30000) + src.iterate() + src.complete()
    sent = _sent_pages(data, VMEM)
    per = dev.block_size // 4096
    plugged = np.flatnonzero(np.repeat(dev.bitmap, per))
    assert dev.bitmap.sum() == 150  # 300 MiB plugged in the capture
    assert np.array_equal(sent, plugged)  # exactly the plugged pages, not even zero records beyond
    assert notifier.cleared_pages == (len(dev.bitmap) - int(dev.bitmap.sum())) * per
    assert src.stats.normal + src.stats.duplicate == sum(b.pages for b in ram) - notifier.cleared_pages


def test_discard_manager_filters_only_the_first_bitmap_free_page_hints_every_sync():
    """A write into an unplugged block during migration (the guest cannot plug: BUSY) is sent
    by 7.2 (only the initial bitmap is filtered) and dropped by 5.1's per-sync free-page hint."""
    stray = 1000 * 1024 * 1024  # inside the unplugged part of the 1 GiB region
    results = {}
    for style in ("discard-manager", "free-page-hint"):
        src, ram, dev, _, _ = _source("pc-guest", style=style)
        assert not dev.bitmap[stray // dev.block_size]
        data = src.setup() + src.iterate()
        ram.write(VMEM, stray, b"\x5a" * 4096)
        data += src.complete()
        results[style] = stray // 4096 in set(_sent_pages(data, VMEM).tolist())
    assert results == {"discard-manager": True, "free-page-hint": False}


def test_dirty_pages_are_resent_in_later_passes_and_last_write_wins():
    src, ram, _, _, _ = _source("pc-running")
    data = bytearray(src.setup() + src.iterate(5000))
    ram.write("pc.ram", 0x200000, b"first" * 1000)
    data += src.iterate() + src.iterate()
    ram.write("pc.ram", 0x200000, b"again" * 1000)
    data += src.complete()
    assert src.stats.passes == 3
    assert src.stats.per_pass[-1]["normal"] == 2  # the two pages written last
    view = _view(bytes(data)).to_json()
    assert view["totals"]["normal"] == src.stats.normal
    assert view["totals"]["zero"] == src.stats.duplicate
    dest = Destination(blocks={b.idstr: b.used_length for b in ram}).load(decode(bytes(data)))
    for b in ram:
        assert np.array_equal(dest.images[b.idstr], b.data), b.idstr
    assert bytes(dest.images["pc.ram"][0x200000:0x200005]) == b"again"


def test_destination_images_equal_extract_output(tmp_path):
    """Two independent appliers of page records (numpy images here, pwrite files in extract)
    agree on a capture with re-sent pages."""
    from vmig.analysis.extract import extract

    evs, dest = _capture("pc-running")
    res = extract(iter(evs), str(tmp_path / "x"))
    for idstr, rel in res.files.items():
        data = (tmp_path / "x" / rel).read_bytes()
        assert data == dest.images[idstr].tobytes(), idstr


def test_engine_stream_loads_in_qemu_with_the_written_memory(qemu_bin, lab_dir):
    src, ram, dev, _, mach = _source("pc-guest")
    data = bytearray(src.setup() + src.iterate(10000))
    ram.write("pc.ram", 0x100000, b"vmig-engine" * 64)
    data += src.iterate() + src.complete()
    args = fixtures.resolve_args(fixtures.manifest("pc-guest")["argv"], lab_dir)

    def look(q):
        return q.read_memory(0x100000, 704)

    from vmig.testing.qemu import load_stream

    res = load_stream(args, bytes(data), workdir=lab_dir, inspect=look)
    assert res.ok, res.stderr
    assert res.inspected == b"vmig-engine" * 64
    got = res.memory_devices[0]["data"]
    assert got["size"] == dev.size == 300 << 20
    assert got["requested-size"] == dev.requested_size


@pytest.mark.parametrize("change, line", [
    (("512M,maxmem=4G", "256M,maxmem=4G"), "Size mismatch: pc.ram: 0x20000000 != 0x10000000: Invalid argument"),
    (("memory-backend-ram,id=mem0,size=1G", "memory-backend-ram,id=mem1,size=1G"),
     'Unknown ramblock "0000:00:02.0/mem0", cannot accept migration'),
])
def test_destination_refuses_what_qemu_refuses_with_its_lines(qemu_bin, lab_dir, change, line):
    args = fixtures.manifest("pc-paused")["argv"]
    dest_args = [a.replace(*change) for a in args]
    if "mem1" in change[1]:
        dest_args = [a.replace("memdev=mem0", "memdev=mem1") for a in dest_args]
    from vmig.testing.qemu import load_stream

    res = load_stream(dest_args, fixtures.load("pc-paused"), workdir=lab_dir)
    assert not res.ok
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    # the destination's RAM blocks, as that QEMU has them
    blocks = {b.idstr: b.used_length for b in GuestRam.from_images(_capture("pc-paused")[1].images)
              .ram_blocks()}
    if "Size" in line:
        blocks["pc.ram"] = 0x10000000
    else:
        blocks["0000:00:02.0/mem1"] = blocks.pop(VMEM)
    with pytest.raises(MigrationError) as ei:
        Destination(blocks).load(_capture("pc-paused")[0])
    ours = str(ei.value).splitlines()
    assert ours[0] == line
    assert ours == qemu_lines[-3:]


def _postcopy_stream():
    src, ram, dev, notifier, mach = _source("postcopy-main", postcopy=True)
    parts = [src.setup(), src.iterate(20000)]
    ram.write("pc.ram", 0x300000, b"dirty-after-send" * 256)  # sent in pass 1, then dirtied
    parts.append(src.switchover())
    src.request("pc.ram", 0x300000, 4096)
    parts.append(src.postcopy_pages(1000))
    parts.append(src.postcopy_complete())
    return src, ram, dev, parts


def test_postcopy_stream_shape_and_destination_states():
    src, ram, dev, parts = _postcopy_stream()
    data = b"".join(parts)
    evs = decode(data)
    cmds = [e.cmd for e in evs if isinstance(e, Command)]
    assert cmds[:3] == [MigCmd.OPEN_RETURN_PATH, MigCmd.PING, MigCmd.POSTCOPY_ADVISE]
    assert MigCmd.POSTCOPY_RAM_DISCARD in cmds
    pk = next(e for e in evs if isinstance(e, Command) and e.cmd == MigCmd.PACKAGED)
    inner = [c.cmd for c in pk.children if isinstance(c, Command)]
    assert inner == [MigCmd.POSTCOPY_LISTEN, MigCmd.PING, MigCmd.POSTCOPY_RUN]
    assert cmds[-1] == MigCmd.PING and evs[-1].__class__.__name__ == "StreamEnd"
    # the page dirtied after it was sent is discarded at switchover...
    discards = [e.args for e in evs if isinstance(e, Command) and e.cmd == MigCmd.POSTCOPY_RAM_DISCARD]
    assert any(a["idstr"] == "pc.ram" and any(s <= 0x300000 < s + n for s, n in a["ranges"])
               for a in discards)
    # ...and the request brings it first in the next section
    first = next(e for e in evs
                 if type(e).__name__ == "RamRecords" and e.offset > len(parts[0] + parts[1] + parts[2]))
    assert first.batch.blocks[int(first.batch.block[0])].idstr == "pc.ram"
    assert int(first.batch.addr[0]) == 0x300000
    dest = Destination(machine=machine_from_argv(fixtures.manifest("postcopy-main")["argv"])).load(evs)
    assert [s for i, s in enumerate(dest.postcopy_history) if i == 0 or s != dest.postcopy_history[i - 1]] == \
        ["none", "advise", "discard", "listening", "running", "end"]
    assert bytes(dest.images["pc.ram"][0x300000:0x300010]) == b"dirty-after-send"
    for b in ram:
        assert np.array_equal(dest.images[b.idstr], b.data), b.idstr
    assert [t for t in (e.type for e in evs if isinstance(e, SectionHeader))][-1] == SectionType.SECTION_END


def test_engine_postcopy_stream_loads_in_qemu(qemu_bin, lab_dir):
    src, ram, dev, parts = _postcopy_stream()
    args = fixtures.resolve_args(fixtures.manifest("postcopy-main")["argv"], lab_dir)

    def look(q):
        return q.read_memory(0x300000, 4096)

    from vmig.testing.qemu import load_stream

    res = load_stream(args, b"".join(parts), workdir=lab_dir, postcopy=True, inspect=look)
    assert res.ok, res.stderr
    assert res.inspected == b"dirty-after-send" * 256
    assert res.memory_devices[0]["data"]["size"] == dev.size


def _destination_running():
    """A destination (with its machine model) fed an engine postcopy stream up to RUN; returns
    (destination, machine, the events still to feed)."""
    it = iter(decode(b"".join(_postcopy_stream()[3])))
    mach = machine_from_argv(fixtures.manifest("postcopy-main")["argv"])
    dest = Destination(machine=mach)
    for ev in it:
        dest.feed(ev)
        if dest.postcopy == "running":
            break
    return dest, mach, it


def test_reboot_during_incoming_postcopy_keeps_plugged_memory():
    """While incoming postcopy runs, a system reset cannot unplug (BUSY); after the stream
    ends the same reset unplugs everything (spec virtio-mem.md §5.1)."""
    dest, mach, it = _destination_running()
    dev = mach.devices[0]
    plugged = dev.size
    assert plugged > 0 and mach.migration.busy
    mach.system_reset()
    assert dev.size == plugged and dev.bitmap.sum() * dev.block_size == plugged
    assert dev.unplug_all().type == ResponseType.BUSY
    for ev in it:
        dest.feed(ev)
    assert dest.postcopy == "end" and not mach.migration.busy
    mach.system_reset()
    assert dev.size == 0 and not dev.bitmap.any()


def test_page_requests_skip_received_pages_and_unplugged_blocks():
    dest, mach, _ = _destination_running()
    dev = mach.devices[0]
    per = dev.block_size
    unplugged_first = int(np.flatnonzero(~dev.bitmap)[0]) * per
    plugged_first = int(np.flatnonzero(dev.bitmap)[0]) * per
    missing = dest.missing("pc.ram")
    assert len(missing) > 0
    gap = int(missing[0]) * 4096
    reqs = dest.page_requests({VMEM: [(unplugged_first, 3 * 4096), (plugged_first, 4096)],
                               "pc.ram": [(gap, 4096)]})
    want = [("pc.ram", gap, 4096)]
    if not dest.received[VMEM][plugged_first // 4096]:
        want.insert(0, (VMEM, plugged_first, 4096))
    assert reqs == want  # nothing of the unplugged range; received pages not asked again


def test_source_refuses_steps_out_of_order():
    src, *_ = _source("pc-paused")
    with pytest.raises(UsageError):
        src.iterate()
    src.setup()
    with pytest.raises(UsageError):
        src.switchover()  # not a postcopy source


def test_device_model_plugs_before_migration_and_qemu_loads_the_result(qemu_bin, lab_dir):
    """The model grows the device (requested-size, guest PLUG), the guest writes into a newly
    plugged block, the source sends the model's virtio-mem section and the new block's pages;
    QEMU 7.2 loads it and reports the new size, and the block holds the written bytes."""
    from vmig.device.sections import encode_section, virtio_mem_sections
    from vmig.testing.qemu import load_stream

    evs, captured = _capture("pc-guest")
    mach = _machine("pc-guest")
    dev = mach.devices[0]
    bs = dev.block_size
    dev.qom_set_requested_size(320 << 20)
    assert dev.plug(dev.addr + 150 * bs, 10).type == ResponseType.ACK
    ram = GuestRam.from_images(captured.images)
    ram.write(VMEM, 155 * bs, b"plugged!" * 512)
    sec = virtio_mem_sections(evs)[0]
    src = PrecopySource(StreamTemplate.from_events(evs), ram, migration=mach.migration,
                        notifiers=[VirtioMemNotifier(dev, VMEM)],
                        device_payloads={sec.dev_path + "/virtio-mem": encode_section(sec, dev)})
    data = src.setup() + src.iterate() + src.complete()
    assert np.array_equal(_sent_pages(data, VMEM), np.flatnonzero(np.repeat(dev.bitmap, bs // 4096)))
    gpa = dev.addr + 155 * bs
    args = fixtures.resolve_args(fixtures.manifest("pc-guest")["argv"], lab_dir)

    def look(q):
        return q.read_memory(gpa, 4096)

    res = load_stream(args, data, workdir=lab_dir, inspect=look)
    assert res.ok, res.stderr
    got = res.memory_devices[0]["data"]
    assert (got["size"], got["requested-size"]) == (320 << 20, 320 << 20)
    assert res.inspected == b"plugged!" * 512


def test_postcopy_loop_over_return_path_bytes():
    """Destination and source talk in bytes both ways: the destination's PONGs and page requests
    (REQ_PAGES_ID when the block changes, else REQ_PAGES, as in the real postcopy-rp capture)
    reach the source, which serves the requested pages first; the return path ends with SHUT 0."""
    from vmig.io.decoding import new_decoder
    from vmig.stream.return_path import decode_rp

    src, ram, _, _, _ = _source("postcopy-main", postcopy=True)
    dest = Destination(machine=machine_from_argv(fixtures.manifest("postcopy-main")["argv"]))
    dec = new_decoder()
    dec.receive_data(src.setup() + src.iterate(5000) + src.switchover())
    for ev in dec.events():
        dest.feed(ev)
    assert dest.postcopy == "running"
    gaps = dest.missing("pc.ram")
    touched = {"pc.ram": [(int(gaps[0]) * 4096, 4096), (int(gaps[-1]) * 4096, 4096)],
               "/rom@etc/acpi/tables": [(0, 4096)], "pc.bios": [(0, 8192)]}
    reqs = dest.request_pages(touched)
    rp = dest.take_return_path()
    msgs = decode_rp(rp, require_shut=False)
    assert [m.args["value"] for m in msgs if m.type == RpMsg.PONG] == [1, 2, 3, 4]
    got = [(m.type, m.args["idstr"], m.args["start"], m.args["len"]) for m in msgs
           if m.type in (RpMsg.REQ_PAGES, RpMsg.REQ_PAGES_ID)]
    want = [(RpMsg.REQ_PAGES_ID if i == 0 or r[0] != reqs[i - 1][0] else RpMsg.REQ_PAGES, *r)
            for i, r in enumerate(reqs)]
    assert got == want and len(reqs) == 4 and want[1][0] == RpMsg.REQ_PAGES
    real_types = {m.type for m in decode_rp(fixtures.load("postcopy-rp"))}
    assert {RpMsg.PONG, RpMsg.REQ_PAGES, RpMsg.REQ_PAGES_ID} <= real_types

    served = src.receive_return_path(rp)
    assert len(served) == len(msgs)
    first = src.postcopy_pages(0)  # only the requested pages
    n_before = src.stats.normal + src.stats.duplicate
    dec.receive_data(first + src.postcopy_complete())
    dec.receive_data(b"")
    for ev in dec.events():
        dest.feed(ev)
    assert n_before > 0 and dest.postcopy == "end"
    for idstr, start, length in reqs:
        assert dest.images[idstr][start:start + length].tobytes() == ram[idstr].data[start:start + length].tobytes()
    end = decode_rp(dest.take_return_path())
    assert [(m.type, m.args) for m in end if hasattr(m, "type")] == [(RpMsg.SHUT, {"status": 0})]
    for b in ram:
        assert np.array_equal(dest.images[b.idstr], b.data), b.idstr


def test_destination_refuses_a_discard_beyond_the_block():
    from vmig.stream.framing import build_command_data

    dest = Destination({"pc.ram": 1 << 20})
    dest._blocks([type("B", (), {"idstr": "pc.ram", "used_length": 1 << 20})()])
    data = build_command_data(MigCmd.POSTCOPY_RAM_DISCARD, {"idstr": "pc.ram", "ranges": [(0xF0000, 0x20000)]})
    ev = Command(0, 0, MigCmd.POSTCOPY_RAM_DISCARD, data,
                 args={"version": 0, "idstr": "pc.ram", "ranges": [(0xF0000, 0x20000)]})
    with pytest.raises(MigrationError, match="beyond RAMBlock 'pc.ram'"):
        dest.feed(ev)


def test_q35_two_numa_virtio_mem_devices_through_the_engine_load_in_qemu(qemu_bin, lab_dir):
    """q35, virtio-mem behind PCIe root ports on two NUMA nodes: both devices' unplugged blocks
    stay out, QEMU loads the engine's stream and reports both devices as the model has them."""
    from vmig.testing.qemu import load_stream

    m = from_capture(fixtures.path("q35-numa"), fixtures.manifest("q35-numa")["argv"])
    data = m.source.setup() + m.source.iterate(20000) + m.source.iterate() + m.source.complete()
    for n in m.notifiers:
        per = n.device.block_size // 4096
        assert np.array_equal(_sent_pages(data, n.block), np.flatnonzero(np.repeat(n.device.bitmap, per)))
        assert n.cleared_pages == int((~n.device.bitmap).sum()) * per > 0
    args = fixtures.resolve_args(fixtures.manifest("q35-numa")["argv"], lab_dir)
    res = load_stream(args, data, workdir=lab_dir)
    assert res.ok, res.stderr
    got = sorted((d["data"]["node"], d["data"]["size"]) for d in res.memory_devices)
    assert got == sorted((dev.node, dev.size) for dev in m.machine.devices)


def _xbzrle_run():
    m = from_capture(fixtures.path("pc-running"), fixtures.manifest("pc-running")["argv"], xbzrle=True)
    src, ram = m.source, m.ram
    x, y = 0x250000, 0x260000
    ram.write("pc.ram", x, b"A" * 4096)
    ram.write("pc.ram", y, b"B" * 4096)
    data = src.setup() + src.iterate()  # pass 1: everything, as normal pages
    ram.write("pc.ram", x, b"first-change")
    ram.write("pc.ram", y, b"B" * 16)
    data += src.iterate()  # pass 2: x and y enter the cache, sent as pages
    ram.write("pc.ram", x + 100, b"second-change")  # a small delta
    ram.write("pc.ram", y, b"B" * 16)  # dirty, but the same bytes: nothing is sent
    data += src.complete()
    return m, data, x, y


def test_xbzrle_source_sends_deltas_from_the_third_pass():
    m, data, x, y = _xbzrle_run()
    src = m.source
    assert src.stats.xbzrle == 1 and src.stats.passes == 3
    assert src.stats.per_pass[1] == {"normal": 2, "duplicate": 0}
    assert src.stats.per_pass[2] == {"normal": 0, "duplicate": 0, "xbzrle": 1}
    view = _view(data).to_json()
    assert view["totals"]["xbzrle"] == 1
    dest = Destination().load(decode(data))
    for b in m.ram:
        assert np.array_equal(dest.images[b.idstr], b.data), b.idstr


def test_xbzrle_stream_loads_in_qemu(qemu_bin, lab_dir):
    from vmig.testing.qemu import load_stream

    m, data, x, _ = _xbzrle_run()
    args = fixtures.resolve_args(fixtures.manifest("pc-running")["argv"], lab_dir)

    def look(q):
        return q.read_memory(x, 4096)

    res = load_stream(args, data, workdir=lab_dir, inspect=look)
    assert res.ok, res.stderr
    assert res.inspected == m.ram["pc.ram"].data[x : x + 4096].tobytes()
    assert res.inspected[100:113] == b"second-change"


def test_a_section_the_destination_lacks_fails_with_qemus_lines(qemu_bin, lab_dir):
    """A destination without the serial port: QEMU names the section; so does the Destination
    given the destination's sections."""
    from vmig.testing.qemu import load_stream

    args = fixtures.resolve_args(fixtures.manifest("pc-guest")["argv"], lab_dir)
    i = args.index("-serial")
    res = load_stream(args[:i] + args[i + 2:], fixtures.load("pc-guest"), workdir=lab_dir)
    assert not res.ok
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    evs = _capture("pc-guest")[0]
    have = {(e.idstr, e.instance_id) for e in evs if isinstance(e, SectionHeader)} - {("serial", 0)}
    with pytest.raises(MigrationError) as ei:
        Destination(sections=have, keep_ram=False).load(evs)
    assert str(ei.value).splitlines() == qemu_lines
