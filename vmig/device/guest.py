"""A guest driver simulator that follows ``requested-size`` like Linux's virtio_mem driver.

Mirrors the decisions of drivers/virtio/virtio_mem.c (Linux 6.1, the lab guest) at the level
the device can observe: requests on the queue and their order. It talks to the device only
through the wire structs (24-byte requests, 10-byte responses, the 56-byte config space).

What it reproduces:

* probe: reads the config; if ``plugged_size != 0`` ("unplugging all memory is required", the
  reboot-during-postcopy case) it must send UNPLUG_ALL first and retries it while BUSY;
  UNPLUGGED_INACCESSIBLE is accepted when offered (Linux ≥ 5.16), or refused with
  ``legacy=True`` (the device then fails FEATURES_OK);
* the work loop (``virtio_mem_run_wq``): refresh config on a config change, then plug or unplug
  ``requested_size - plugged_size``; result codes map to ACK → done, NACK → retry immediately
  (-EAGAIN), BUSY → retry later with a back-off timer (-ETXTBSY), ERROR → "unknown error, marking
  device broken" (-EINVAL);
* sub-block mode (device block < 128 MiB Linux memory block): plugs fill partially plugged
  memory blocks first, then add new memory blocks in ascending order, only those that lie fully
  inside the usable region (-ENOSPC otherwise); unplugs go through memory blocks in reverse
  order, partially plugged ones first, and inside a block from the highest sub-block down, one
  sub-block per request (Linux 6.1 unplugs an online memory block that way unless the whole
  block goes at once).
  Big-block mode (block ≥ memory block) plugs/unplugs whole device blocks the same way.
* ``busy_blocks``: device blocks Linux cannot offline (unmovable pages), skipped on unplug —
  this is what leaves plugged memory scattered after a shrink on a real guest.

Time is abstract: :meth:`run` executes the work loop until it is idle or waits for its retry
timer; :meth:`tick` advances the timer.
"""

from __future__ import annotations

import enum
from typing import Any

from vmig.device.requests import (
    RESPONSE_SIZE,
    RequestType,
    ResponseType,
    VirtioMemConfig,
    VirtioMemResponse,
    build_request,
)
from vmig.device.virtio_mem import VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, ConfigChange, VirtioMem
from vmig.records import record
from vmig.units import MiB

__all__ = ["GuestDriver", "DriverState", "Rc", "RETRY_TIMER_MIN_MS", "RETRY_TIMER_MAX_MS"]

#: Linux: VIRTIO_MEM_RETRY_TIMER_MIN_MS / _MAX_MS (back-off for BUSY / -ENOMEM).
RETRY_TIMER_MIN_MS = 50_000
RETRY_TIMER_MAX_MS = 300_000
MEMORY_BLOCK_SIZE = 128 * MiB
MAX_NB_BLOCKS = 0xFFFF


class DriverState(enum.Enum):
    """Where the simulated driver stands after :meth:`GuestDriver.run`."""

    IDLE = "idle"            # plugged == requested (or cannot do more: -ENOSPC)
    RETRY = "retry"          # waiting for the retry timer (BUSY answers)
    BROKEN = "broken"        # ERROR answer or the device broke
    FAILED = "failed"        # probe failed (feature negotiation)


class Rc(enum.IntEnum):
    """Linux return codes of the driver's plug/unplug steps (negative errno values)."""

    OK = 0
    EAGAIN = -11   # NACK: retry immediately
    EBUSY = -16    # memory could not be offlined: retry later
    EINVAL = -22   # ERROR: "unknown error, marking device broken"
    ETXTBSY = -26  # BUSY: the hypervisor cannot process the request now, retry later
    ENOSPC = -28   # nothing more can be plugged (usable region / granularity)


@record
class _Req:
    type: RequestType
    addr: int = 0
    nb_blocks: int = 0


class GuestDriver:
    """Linux-like virtio-mem driver bound to one :class:`VirtioMem`.

    Args:
        device: the device model.
        legacy: a driver without UNPLUGGED_INACCESSIBLE support (pre-5.16 Linux).
        memory_block_size: Linux memory block size (128 MiB on x86).
        min_subblock_size: smallest sub-block Linux uses (6.1 on x86: one pageblock = 2 MiB;
            dmesg ``subblock size: 0x200000``, requested 258M → 129 plugged 2 MiB blocks).
        busy_blocks: device block indices whose memory cannot be offlined (skipped on unplug).

    Attributes:
        log: every request sent and the response type, in order.
        state: a :class:`DriverState`.
        plugged_size: the driver's own view of plugged bytes.
    """

    def __init__(
        self,
        device: VirtioMem,
        *,
        legacy: bool = False,
        memory_block_size: int = MEMORY_BLOCK_SIZE,
        min_subblock_size: int = 2 * MiB,
        busy_blocks: set[int] | None = None,
    ) -> None:
        self.dev = device
        self.legacy = legacy
        self.mb_size = memory_block_size
        self.min_subblock_size = min_subblock_size
        self.usable_region_size = 0
        self.busy_blocks = set(busy_blocks or ())
        self.log: list[tuple[_Req, ResponseType | None]] = []
        self.state = DriverState.IDLE
        self.plugged_size = 0
        self.requested_size = 0
        self.unplug_all_required = False
        self.config_changed = False
        self.retry_timer_ms = RETRY_TIMER_MIN_MS
        self.retry_in_ms: int | None = None
        self.probed = False
        # the driver's own plugged-state copy (Linux keeps per-sub-block state)
        self._plugged: set[int] = set()

    # -- device access (only through the wire structs) ----------------------------------------
    def _read_config(self) -> Any:
        return VirtioMemConfig.parse(self.dev.config_bytes())

    def _send(self, req: _Req) -> ResponseType | None:
        raw = self.dev.handle_request(build_request(req.type, req.addr, req.nb_blocks), RESPONSE_SIZE)
        rtype = None if raw is None else ResponseType(VirtioMemResponse.parse(raw).type)
        self.log.append((req, rtype))
        return rtype

    # -- lifecycle ----------------------------------------------------------------------------------
    def probe(self) -> DriverState:
        """``virtio_mem_probe``: negotiate features, read config, set DRIVER_OK, run once."""
        accepted = self.dev.host_features()
        if self.legacy:
            accepted &= ~(1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE)
        if not self.dev.validate_features(accepted):
            self.state = DriverState.FAILED
            return self.state
        self.dev.virtio_reset()
        cfg = self._read_config()
        self.addr = cfg.addr
        self.block_size = cfg.block_size
        self.region_size = cfg.region_size
        self.plugged_size = cfg.plugged_size
        self._plugged = set()
        if self.plugged_size:
            # Linux: "unplugging all memory is required"
            self.unplug_all_required = True
        self.config_changed = True
        self.dev.driver_ok = True
        self.probed = True
        self.state = DriverState.IDLE
        return self.run()

    def attach(self) -> DriverState:
        """Take over the driver of a running guest: the device already has DRIVER_OK and the
        driver's plugged state is the device's (no UNPLUG_ALL, no reset); then run once, so a
        pending ``requested_size`` change is followed. A device that never saw a driver
        (``driver_ok`` off) is probed instead (:meth:`probe`, the guest boots).

        The plugged state is taken from the device model itself: the simulated driver stands for
        a guest whose bookkeeping matched the device when it was captured.
        """
        if not self.dev.driver_ok:
            return self.probe()
        cfg = self._read_config()
        self.addr = cfg.addr
        self.block_size = cfg.block_size
        self.region_size = cfg.region_size
        self.plugged_size = cfg.plugged_size
        self.usable_region_size = cfg.usable_region_size
        self.requested_size = cfg.requested_size
        self._plugged = {int(b) for b in self.dev.bitmap.nonzero()[0]}
        self.unplug_all_required = False
        self.config_changed = True
        self.probed = True
        self.state = DriverState.IDLE
        return self.run()

    def notify_config_change(self) -> None:
        """The config-change interrupt (``virtio_mem_config_changed``)."""
        self.config_changed = True

    def pump_events(self) -> None:
        """Take the device's ConfigChange events as interrupts (other events stay queued)."""
        if self.dev.drain_events(ConfigChange):
            self.notify_config_change()

    def tick(self, ms: int) -> DriverState:
        """Advance time; if the retry timer fires, run the work loop again."""
        if self.retry_in_ms is not None:
            self.retry_in_ms -= ms
            if self.retry_in_ms <= 0:
                self.retry_in_ms = None
                return self.run()
        return self.state

    # -- work loop ----------------------------------------------------------------------------------
    def _refresh_config(self) -> None:
        cfg = self._read_config()
        self.plugged_size = cfg.plugged_size  # Linux WARNs if it differs, then takes it
        self.usable_region_size = cfg.usable_region_size
        self.requested_size = cfg.requested_size

    def run(self, max_rounds: int = 1000) -> DriverState:
        """Run ``virtio_mem_run_wq`` until idle, waiting for a retry, or broken."""
        if not self.probed or self.state in (DriverState.BROKEN, DriverState.FAILED):
            return self.state
        self.pump_events()
        for _ in range(max_rounds):
            rc = Rc.OK
            if self.unplug_all_required:
                rc = self._unplug_all()
            if self.config_changed:
                self.config_changed = False
                self._refresh_config()
            if rc is Rc.OK and self.requested_size != self.plugged_size:
                diff = self.requested_size - self.plugged_size
                rc = self._plug(diff) if diff > 0 else self._unplug(-diff)
            if self.dev.broken:
                self.state = DriverState.BROKEN
                return self.state
            if rc in (Rc.OK, Rc.ENOSPC):
                self.retry_timer_ms = RETRY_TIMER_MIN_MS
                self.state = DriverState.IDLE
                return self.state
            if rc in (Rc.ETXTBSY, Rc.EBUSY):
                self.retry_in_ms = self.retry_timer_ms
                self.retry_timer_ms = min(self.retry_timer_ms * 2, RETRY_TIMER_MAX_MS)
                self.state = DriverState.RETRY
                return self.state
            if rc is Rc.EAGAIN:
                continue
            # -EINVAL and friends: "unknown error, marking device broken"
            self.state = DriverState.BROKEN
            return self.state
        self.state = DriverState.RETRY
        return self.state

    def _unplug_all(self) -> Rc:
        rtype = self._send(_Req(RequestType.UNPLUG_ALL))
        if rtype is ResponseType.ACK:
            self.unplug_all_required = False
            self.plugged_size = 0
            self._plugged.clear()
            self.config_changed = True  # the usable region might have shrunk
            return Rc.OK
        if rtype is ResponseType.BUSY:
            return Rc.ETXTBSY
        return Rc.EINVAL

    def _request(self, rtype: RequestType, first_block: int, count: int) -> Rc:
        """Send PLUG/UNPLUG for [first_block, first_block+count) device blocks, in ≤65535 chunks."""
        while count:
            n = min(count, MAX_NB_BLOCKS)
            addr = self.addr + first_block * self.block_size
            resp = self._send(_Req(rtype, addr, n))
            size = n * self.block_size
            if resp is ResponseType.ACK:
                blocks = range(first_block, first_block + n)
                if rtype is RequestType.PLUG:
                    self.plugged_size += size
                    self._plugged.update(blocks)
                else:
                    self.plugged_size -= size
                    self._plugged.difference_update(blocks)
            elif resp is ResponseType.NACK:
                return Rc.EAGAIN
            elif resp is ResponseType.BUSY:
                return Rc.ETXTBSY
            else:
                return Rc.EINVAL
            first_block += n
            count -= n
        return Rc.OK

    # -- geometry ---------------------------------------------------------------------------------
    # Linux 6.1 (virtio_mem_init): sub-block size = max(MAX_ORDER_NR_PAGES * PAGE_SIZE (4 MiB),
    # device block size). If that is below the memory block size the driver works in sub-block
    # mode (SBM: units are memory blocks, plugged sub-block by sub-block), otherwise in big-block
    # mode (BBM: units of max(device block, memory block), plugged whole). Units start at the
    # first unit-aligned address; only units entirely below addr + usable_region_size are used.
    def _geometry(self) -> tuple[int, int, int, int]:
        """(unit size, sub size, first unit index, last usable unit index) in device-block units."""
        bs = self.block_size
        sb = max(self.min_subblock_size, bs)
        if sb < self.mb_size:
            unit, sub = self.mb_size, sb
        else:
            unit = max(bs, self.mb_size)
            sub = unit
        first = -(-self.addr // unit)
        end_addr = self.addr + self.usable_region_size - 1
        last = end_addr // unit
        if (end_addr + 1) % unit:
            last -= 1
        return unit, sub, first, last

    def _unit_subs(self) -> tuple[int, int, list[list[int]]]:
        """(blocks per sub, subs per unit, [first device block of each sub] per usable unit)."""
        unit, sub, first, last = self._geometry()
        per_sub = sub // self.block_size
        subs_per_unit = unit // sub
        units = []
        for u in range(first, last + 1):
            b0 = (u * unit - self.addr) // self.block_size
            units.append([b0 + i * per_sub for i in range(subs_per_unit)])
        return per_sub, subs_per_unit, units

    def _plug(self, diff: int) -> Rc:
        """``virtio_mem_{sbm,bbm}_plug_request``: partially plugged units first, then empty ones,
        both in ascending order; inside a unit, runs of unplugged sub-blocks from the lowest."""
        per_sub, _, units = self._unit_subs()
        nb = diff // (per_sub * self.block_size)
        if nb == 0:
            return Rc.ENOSPC
        plugged = lambda sb: sb in self._plugged  # noqa: E731
        partial = [u for u in units if 0 < sum(map(plugged, u)) < len(u)]
        empty = [u for u in units if not any(map(plugged, u))]
        for subs in partial + empty:
            i = 0
            while nb and i < len(subs):
                if plugged(subs[i]):
                    i += 1
                    continue
                j = i
                while j < len(subs) and j - i < nb and not plugged(subs[j]):
                    j += 1
                rc = self._request(RequestType.PLUG, subs[i], (j - i) * per_sub)
                if rc is not Rc.OK:
                    return rc
                nb -= j - i
                i = j
            if not nb:
                return Rc.OK
        return Rc.ENOSPC

    def _unplug(self, diff: int) -> Rc:
        """``virtio_mem_{sbm,bbm}_unplug_request``: units in reverse order, partially plugged ones
        first; inside a unit from the highest sub-block down, skipping ones Linux cannot offline."""
        per_sub, _, units = self._unit_subs()
        nb = diff // (per_sub * self.block_size)
        if nb == 0:
            return Rc.OK
        known = {b for u in units for b in u}
        # plugged sub-blocks outside the usable units (only after a refused reset) count too
        stray = sorted(b for b in self._plugged if b not in known and (b % per_sub) == 0)
        if stray:
            units = units + [[b] for b in stray]
        plugged = lambda sb: sb in self._plugged  # noqa: E731
        busy = lambda sb: any(b in self.busy_blocks for b in range(sb, sb + per_sub))  # noqa: E731
        partial = [u for u in reversed(units) if 0 < sum(map(plugged, u)) < len(u)]
        full = [u for u in reversed(units) if u and all(map(plugged, u))]
        any_busy = False
        for subs in partial + full:
            whole = all(map(plugged, subs)) and not any(map(busy, subs))
            if whole and nb >= len(subs):
                # an online memory block wholly unplugged: one request for all its sub-blocks
                rc = self._request(RequestType.UNPLUG, subs[0], len(subs) * per_sub)
                if rc is not Rc.OK:
                    return rc
                nb -= len(subs)
            else:
                # Linux 6.1 (online memory block, partly unplugged): one sub-block per request,
                # from the highest down
                for sb in reversed(subs):
                    if not nb:
                        break
                    if not plugged(sb):
                        continue
                    if busy(sb):
                        any_busy = True
                        continue
                    rc = self._request(RequestType.UNPLUG, sb, per_sub)
                    if rc is not Rc.OK:
                        return rc
                    nb -= 1
            if not nb:
                return Rc.OK
        return Rc.EBUSY if nb and any_busy else Rc.OK
