"""Hypothesis state machine: guest requests, requested-size writes, resets and migration phases.

The device model is checked two ways after every step:

* against an independent reference written here straight from spec/virtio-mem.md §3–§5 (plain
  Python sets and the check lists of §3.3–§3.6), response by response;
* against the invariants of spec §8 (I1–I3, I5–I7, I10), with QEMU's documented exceptions:
  I4 (size ≤ requested) is *not* asserted (QEMU lets requested drop below size and a refused
  reset keeps size), I5 may be exceeded (U only grows), I9 only when not busy.

Versions: 7.2 (reference), 5.1 (no usable-region rounding) and 8.2 (unplug-all not busy when
nothing is plugged) — picked per run.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from vmig.device.requests import RequestType, ResponseType, VirtioMemResponse, build_request
from vmig.device.state import MigrationState
from vmig.device.versions import Behaviour
from vmig.device.virtio_mem import (
    MemoryBackend,
    VirtioMem,
    VirtioMemProperties,
)
from vmig.errors import DeviceError
from vmig.units import MiB

EXTENT = 256 * MiB
OUTGOING = ["none", "setup", "active", "pre-switchover", "device", "postcopy-active",
            "completed", "failed", "cancelled", "cancelling"]
POSTCOPY = ["none", "advise", "discard", "listening", "running", "end"]


class Reference:
    """The spec's algorithm, written independently of the model."""

    def __init__(self, version, addr, region, bs, requested):
        self.v = version
        self.addr, self.region, self.bs = addr, region, bs
        self.requested = requested
        self.size = 0
        self.plugged: set[int] = set()
        self.U = 0
        self.resize(requested, True)

    def resize(self, req, can_shrink):
        new = min(self.region, req + EXTENT)
        if self.v >= (5, 2):
            new = (new + self.bs - 1) // self.bs * self.bs
        if req == 0:
            new = 0
        if new < self.U and not can_shrink:
            return
        self.U = new

    def valid(self, a, size):
        return (a % self.bs == 0 and size != 0 and a + size < 2**64
                and self.addr <= a < self.addr + self.U and a + size <= self.addr + self.U)

    def blocks(self, a, n):
        first = (a - self.addr) // self.bs
        return set(range(first, first + n))

    def change(self, a, n, plug, busy):
        size = n * self.bs
        if not self.valid(a, size):
            return ResponseType.ERROR
        if plug and self.size + size > self.requested:
            return ResponseType.NACK
        b = self.blocks(a, n)
        if plug and b & self.plugged:
            return ResponseType.ERROR
        if not plug and not b <= self.plugged:
            return ResponseType.ERROR
        if busy:
            return ResponseType.BUSY
        if plug:
            self.plugged |= b
            self.size += size
        else:
            self.plugged -= b
            self.size -= size
        return ResponseType.ACK

    def unplug_all(self, busy):
        if busy and (self.v < (8, 2) or self.size):
            return ResponseType.BUSY
        self.plugged.clear()
        self.size = 0
        self.resize(self.requested, True)
        return ResponseType.ACK

    def state(self, a, n):
        if not self.valid(a, n * self.bs):
            return ResponseType.ERROR, None
        b = self.blocks(a, n)
        if b <= self.plugged:
            return ResponseType.ACK, 0
        if not b & self.plugged:
            return ResponseType.ACK, 1
        return ResponseType.ACK, 2

    def set_requested(self, value):
        if value % self.bs:
            return "align"
        if value > self.region:
            return "exceed"
        if value != self.requested:
            self.resize(value, False)
            self.requested = value
        return None


class VirtioMemMachine(RuleBasedStateMachine):
    @initialize(
        version=st.sampled_from(["7.2", "5.1", "8.2"]),
        bs_shift=st.integers(0, 3),
        region_blocks=st.sampled_from([64, 200, 512, 1024]),
        requested_blocks=st.integers(0, 1100),
    )
    def setup(self, version, bs_shift, region_blocks, requested_blocks):
        bs = (2 * MiB) << bs_shift
        region = region_blocks * bs
        requested = requested_blocks * bs
        self.mig = MigrationState()
        beh = Behaviour.for_qemu(version, "pc-i440fx-5.1")
        self.addr = 0x100000000
        props = VirtioMemProperties(MemoryBackend("mem0", region), id="vm0", memaddr=self.addr,
                                    block_size=bs, requested_size=requested)
        self.dev = VirtioMem.realize(props, behaviour=beh, migration=self.mig)
        self.ref = Reference(beh.qemu, self.addr, region, bs, requested)
        self.bs = bs
        self.nblocks = region_blocks

    # -- helpers
    def addr_of(self, block, misalign):
        return self.addr + block * self.bs + (4096 if misalign else 0)

    def send(self, t, a, n):
        raw = self.dev.handle_request(build_request(t, a, n))
        assert raw is not None
        r = VirtioMemResponse.parse(raw)
        return ResponseType(r.type), r.state

    def frozen_snapshot(self):
        return (self.dev.size, self.dev.usable_region_size, self.dev.bitmap.copy())

    # -- guest requests
    blocks = st.integers(-2, 1100)
    counts = st.integers(0, 300)

    @rule(block=blocks, n=counts, misalign=st.booleans())
    def plug(self, block, n, misalign):
        a = self.addr_of(block, misalign)
        if a < 0:
            return
        busy = self.mig.busy
        before = self.frozen_snapshot()
        got, _ = self.send(RequestType.PLUG, a, n)
        assert got is self.ref.change(a, n, True, busy)
        if busy:
            assert got is not ResponseType.ACK
            self.assert_frozen(before)

    @rule(block=blocks, n=counts, misalign=st.booleans())
    def unplug(self, block, n, misalign):
        a = self.addr_of(block, misalign)
        if a < 0:
            return
        busy = self.mig.busy
        before = self.frozen_snapshot()
        got, _ = self.send(RequestType.UNPLUG, a, n)
        assert got is self.ref.change(a, n, False, busy)
        if busy:
            self.assert_frozen(before)

    @rule(t=st.sampled_from([RequestType.PLUG, RequestType.UNPLUG, RequestType.STATE]),
          back=st.integers(-1, 3), extra=st.integers(-1, 1))
    def request_at_usable_end(self, t, back, extra):
        """Ranges ending just before, at, or just past addr + U (valid_range's edge)."""
        ublocks = self.dev.usable_region_size // self.bs
        block = ublocks - back
        n = max(0, back + extra)
        a = self.addr + block * self.bs
        if t is RequestType.STATE:
            got = self.send(t, a, n)
            want = self.ref.state(a, n)
            assert got[0] is want[0] and (want[0] is not ResponseType.ACK or got[1] == want[1])
        else:
            got = self.send(t, a, n)[0]
            assert got is self.ref.change(a, n, t is RequestType.PLUG, self.mig.busy)

    @rule(data=st.data())
    def plug_free_run(self, data):
        """Plug inside a free run, often exactly up to requested-size (the NACK boundary)."""
        ublocks = self.dev.usable_region_size // self.bs
        free = [(s, n) for s, n in self.dev.unplugged_runs() if s < ublocks]
        if not free:
            return
        start, count = data.draw(st.sampled_from(free))
        count = min(count, ublocks - start)
        remaining = max(0, (self.dev.requested_size - self.dev.size) // self.bs)
        n = data.draw(st.sampled_from(sorted({max(1, min(count, remaining)), min(count, remaining + 1) or 1})))
        a = self.addr + start * self.bs
        assert self.send(RequestType.PLUG, a, n)[0] is self.ref.change(a, n, True, self.mig.busy)

    @rule(data=st.data())
    def unplug_plugged_run(self, data):
        """Target an actually plugged run so UNPLUG ACKs are exercised often."""
        runs = self.dev.plugged_runs()
        if not runs:
            return
        start, count = data.draw(st.sampled_from(runs))
        n = data.draw(st.integers(1, count))
        a = self.addr + start * self.bs
        assert self.send(RequestType.UNPLUG, a, n)[0] is self.ref.change(a, n, False, self.mig.busy)

    @rule()
    def unplug_all(self):
        busy = self.mig.busy
        before = self.frozen_snapshot()
        got, _ = self.send(RequestType.UNPLUG_ALL, 0, 0)
        assert got is self.ref.unplug_all(busy)
        if got is ResponseType.BUSY:
            self.assert_frozen(before)

    @rule(block=blocks, n=counts)
    def state(self, block, n):
        a = self.addr_of(block, False)
        got = self.send(RequestType.STATE, a, n)
        want = self.ref.state(a, n)
        assert got[0] is want[0]
        if want[0] is ResponseType.ACK:
            assert got[1] == want[1]

    @rule(garbage=st.sampled_from(["short", "type", "space"]))
    def protocol_violation(self, garbage):
        before = self.frozen_snapshot()
        if garbage == "short":
            out = self.dev.handle_request(b"\x00" * 23)
        elif garbage == "type":
            out = self.dev.handle_request(build_request(7, self.addr, 1))
        else:
            out = self.dev.handle_request(build_request(0, self.addr, 1), 4)
        assert out is None and self.dev.broken
        self.assert_frozen(before)
        self.dev.virtio_reset()  # the driver resets the device and goes on

    # -- host side
    @rule(k=st.integers(0, 1100), misalign=st.booleans())
    def qom_set_requested(self, k, misalign):
        value = k * self.bs + (MiB if misalign else 0)
        want = self.ref.set_requested(value)
        try:
            self.dev.qom_set_requested_size(value)
            got = None
        except DeviceError as e:
            got = "align" if "multiples" in str(e) else "exceed" if "cannot exceed" in str(e) else str(e)
        assert got == want
        assert self.dev.requested_size == self.ref.requested

    @rule()
    def system_reset(self):
        busy = self.mig.busy
        before = self.frozen_snapshot()
        ok = self.dev.system_reset()
        want = self.ref.unplug_all(busy)
        assert ok is (want is ResponseType.ACK)
        if not ok:
            self.assert_frozen(before)  # I9 exception: refused while busy
        else:
            assert self.dev.size == 0 and not self.dev.bitmap.any()

    @rule(status=st.sampled_from(OUTGOING))
    def outgoing_migration(self, status):
        self.mig.set_outgoing(status)

    @rule(state=st.sampled_from(POSTCOPY))
    def incoming_postcopy(self, state):
        self.mig.set_incoming_postcopy(state)

    # -- invariants
    def assert_frozen(self, before):
        size, u, bitmap = before
        assert self.dev.size == size
        assert self.dev.usable_region_size == u
        assert np.array_equal(self.dev.bitmap, bitmap)

    @invariant()
    def matches_reference(self):
        if not hasattr(self, "dev"):
            return
        assert self.dev.size == self.ref.size
        assert self.dev.usable_region_size == self.ref.U
        assert set(np.flatnonzero(self.dev.bitmap).tolist()) == self.ref.plugged

    @invariant()
    def spec_invariants(self):
        if not hasattr(self, "dev"):
            return
        d = self.dev
        # I1
        assert len(d.bitmap) == d.region_size // d.block_size == self.nblocks
        # I2
        assert d.size == int(d.bitmap.sum()) * d.block_size
        # I3
        plugged = np.flatnonzero(d.bitmap)
        if len(plugged):
            assert (int(plugged[-1]) + 1) * d.block_size <= d.usable_region_size
        # I5 (U may be larger than the formula, never smaller)
        if d.requested_size:
            f = min(d.region_size, d.requested_size + EXTENT)
            if d.behaviour.rounds_usable_region:
                f = -(-f // d.block_size) * d.block_size
            assert d.usable_region_size >= f
        # I6
        assert d.usable_region_size <= d.region_size
        if d.behaviour.rounds_usable_region:
            assert d.usable_region_size % d.block_size == 0
        # I7
        if d.usable_region_size == 0:
            assert d.size == 0
        # I8 (alignment part; the realize path may exceed the region, not at runtime)
        assert d.requested_size % d.block_size == 0
        assert d.check_invariants() == []  # the model's own self-check agrees


VirtioMemMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestVirtioMemStateMachine = VirtioMemMachine.TestCase


# --------------------------------------------------------------------------------------------
# realize: any property combination is either refused with a DeviceError or gives a device in
# a state satisfying the invariants (h2/wsproto style: "legal, or a typed error").
# --------------------------------------------------------------------------------------------
from hypothesis import given  # noqa: E402

from vmig.device.virtio_mem import HostInfo  # noqa: E402
from vmig.units import GiB  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(["5.1", "6.1", "7.2", "8.0", "8.2", "9.2", "10.0", "master"]),
    region=st.sampled_from([0, 1 << 20, 3 << 20, 64 << 20, GiB, 3 * GiB, GiB + (1 << 20)]),
    bs=st.sampled_from([0, 1 << 19, 1 << 20, 3 << 20, 2 << 20, 128 << 20, GiB]),
    requested=st.sampled_from([0, 1 << 20, 2 << 20, 128 << 20, GiB, 2 * GiB]),
    addr=st.sampled_from([0, 0x100000000, 0x100100000, 0x140000000]),
    node=st.integers(0, 3),
    numa=st.integers(0, 3),
    page=st.sampled_from([4096, 2 << 20, GiB]),
    kind=st.sampled_from(["ram", "memfd", "file"]),
    ui=st.sampled_from([None, "on", "off", "auto"]),
    thp=st.sampled_from([2 << 20, None, 3 << 20]),
)
def test_realize_is_legal_or_refused(version, region, bs, requested, addr, node, numa, page, kind, ui, thp):
    from vmig.device.versions import Behaviour as B

    backend = MemoryBackend("m", region, kind=kind, page_size=page)
    props = VirtioMemProperties(backend, memaddr=addr, block_size=bs, requested_size=requested,
                                node=node, unplugged_inaccessible=ui)
    try:
        dev = VirtioMem.realize(props, behaviour=B.for_qemu(version), numa_nodes=numa,
                                host=HostInfo(thp_size=thp))
    except DeviceError as e:
        assert str(e) and "\n" not in str(e)
        assert not backend.mapped  # a refused realize leaves the backend free
        return
    assert dev.block_size >= dev.behaviour.min_block_size
    assert dev.block_size & (dev.block_size - 1) == 0
    assert dev.region_size % dev.block_size == 0 and dev.addr % dev.block_size == 0
    assert dev.requested_size % dev.block_size == 0
    assert dev.unplugged_inaccessible in ("on", "off")
    assert dev.size == 0 and not dev.bitmap.any() and dev.nb_blocks == region // dev.block_size
    assert dev.check_invariants() == []
    assert backend.mapped
