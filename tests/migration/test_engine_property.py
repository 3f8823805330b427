"""Property: source → stream → Destination, over seeds, resize histories, guest writes (also into
unplugged blocks, racing the migration), passes, XBZRLE, postcopy and both notifier styles.

The source is the engine (framing and unmodelled sections from the real pc-paused capture, the
virtio-mem sections from the device model); the destination is a second model machine of the same
command line. After the load:

* plugged RAM (``pc.ram`` and every plugged virtio-mem block) equals the source's;
* unplugged virtio-mem RAM is what QEMU 7.2 leaves there: precopy → zero (post_load discards
  it); postcopy → the pages the discard manager let through (written during the migration, so
  re-sent) hold the source's bytes, everything else zero; with the free-page-hint notifier
  nothing of an unplugged block travels, so zero;
* the destination device equals the source device (size, requested size, usable region, bitmap).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmig.device.cmdline import machine_from_argv
from vmig.device.guest import GuestDriver
from vmig.io.decoding import new_decoder
from vmig.io.streams import iter_events
from vmig.migration.destination import Destination
from vmig.migration.models import model_sections
from vmig.migration.notifiers import VirtioMemNotifier
from vmig.migration.ram import GuestRam
from vmig.migration.source import PrecopySource, StreamTemplate
from vmig.testing import fixtures

MiB = 1 << 20
PS = 4096
VMEM = "0000:00:02.0/mem0"
RAM = 4 * MiB
BACKEND = 32 * MiB
# the pc-paused VM, smaller: the device and its section layout are the same, only the sizes change
ARGV = ["-machine", "pc", "-m", "4M,maxmem=4G", "-object", f"memory-backend-ram,id=mem0,size={BACKEND}",
        "-device", "virtio-mem-pci,id=vm0,memdev=mem0,requested-size=16M", "-nodefaults"]


@cache
def _template() -> tuple[list, StreamTemplate]:
    evs = list(iter_events(str(fixtures.path("pc-paused")), schema_sets=True))
    return evs, StreamTemplate.from_events(evs)


def _machine():
    m = machine_from_argv(ARGV)
    m.system_reset()
    return m


sizes = st.integers(0, BACKEND // (2 * MiB)).map(lambda n: n * 2 * MiB)


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), history=st.lists(sizes, min_size=1, max_size=4),
       passes=st.integers(1, 3), writes=st.integers(0, 12), racing=st.integers(0, 3),
       xbzrle=st.booleans(), postcopy=st.booleans(),
       style=st.sampled_from(["discard-manager", "free-page-hint"]))
def test_source_stream_destination(seed, history, passes, writes, racing, xbzrle, postcopy, style):
    rng = np.random.default_rng(seed)
    evs, template = _template()
    src = _machine()
    dev = src.devices[0]
    drv = GuestDriver(dev)
    drv.probe()
    ram = GuestRam([("pc.ram", RAM), (VMEM, BACKEND)])
    ram.write("pc.ram", 0, rng.bytes(16 * PS))
    for size in history:  # resizes before the migration; the guest follows, writes to its memory
        dev.qom_set_requested_size(size)
        drv.run()
        for b in np.flatnonzero(dev.bitmap)[:4].tolist():
            ram.write(VMEM, b * dev.block_size, rng.bytes(PS))
    source = PrecopySource(template, ram, notifiers=[VirtioMemNotifier(dev, VMEM, style)],
                           models=model_sections(src, evs), migration=src.migration,
                           xbzrle=xbzrle, postcopy=postcopy)
    raced: set[int] = set()
    data = bytearray(source.setup())
    plugged = np.flatnonzero(dev.bitmap)
    unplugged = np.flatnonzero(~dev.bitmap)
    for _ in range(passes):
        data += source.iterate()
        for _ in range(writes):
            if len(plugged) and rng.random() < 0.7:
                off = int(rng.choice(plugged)) * dev.block_size + int(rng.integers(dev.block_size // PS)) * PS
                ram.write(VMEM, off, rng.bytes(int(rng.integers(1, PS))))
            else:
                ram.write("pc.ram", int(rng.integers(RAM // PS)) * PS, rng.bytes(100))
        for _ in range(racing if len(unplugged) else 0):  # a write into an unplugged block
            off = int(rng.choice(unplugged)) * dev.block_size + int(rng.integers(dev.block_size // PS)) * PS
            ram.write(VMEM, off, b"\x01" + rng.bytes(PS - 1))
            raced.add(off // PS)
    if postcopy:
        data += source.switchover() + source.postcopy_pages(int(rng.integers(0, 50))) + source.postcopy_complete()
    else:
        data += source.complete()

    dst = _machine()
    dec = new_decoder()
    dec.receive_data(bytes(data))
    dec.receive_data(b"")
    dest = Destination(machine=dst).load(dec.events())
    assert dest.complete

    assert np.array_equal(dest.images["pc.ram"], ram["pc.ram"].data)
    got, want = dest.images[VMEM].reshape(-1, PS), ram[VMEM].data.reshape(-1, PS)
    per = dev.block_size // PS
    plugged_pages = np.repeat(dev.bitmap, per)
    assert np.array_equal(got[plugged_pages], want[plugged_pages])
    raced_pages = np.zeros(len(plugged_pages), dtype=bool)
    if postcopy and style == "discard-manager":  # let through, kept (no discard in postcopy)
        raced_pages[sorted(raced)] = True
    assert np.array_equal(got[raced_pages], want[raced_pages])
    assert not got[~plugged_pages & ~raced_pages].any()

    d = dst.devices[0]
    assert (d.size, d.requested_size, d.usable_region_size) == (dev.size, dev.requested_size, dev.usable_region_size)
    assert np.array_equal(d.bitmap, dev.bitmap)
