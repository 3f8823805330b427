"""A migration of a captured VM run in the model: what ``vmig migrate`` does.

:func:`open_capture` rebuilds the source side of a real capture: its events, its RAM as a
:class:`~vmig.migration.ram.GuestRam`, the device-model machine of its QEMU command line with
the virtio-mem state the capture carried, one simulated Linux driver per device (attached to the
plugged state when the capture's transport shows DRIVER_OK, else booted with a probe), and a
:class:`~vmig.migration.source.PrecopySource` whose virtio-mem sections come from the models
(:func:`vmig.migration.models.model_sections`) and whose notifiers keep unplugged blocks out.

:func:`run` drives it as QEMU's migration thread would: ``passes`` precopy passes with guest
writes between them, then stop-and-copy, or a postcopy switchover whose page requests come from
return-path bytes or from the simulated guest touching what it wrote. ``requested-size`` changes
are applied before the migration (the guest follows them) or, with ``resize_during``, after the
first pass (7.2: the device answers BUSY while the migration runs, the stream carries the new
``requested-size`` with the old size). No file I/O: the stream comes back as bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmig.device.cmdline import machine_from_argv
from vmig.device.guest import GuestDriver
from vmig.device.requests import RequestType, ResponseType
from vmig.device.sections import virtio_mem_sections
from vmig.device.versions import capture_qemu_version
from vmig.errors import UsageError
from vmig.io.decoding import new_decoder
from vmig.io.streams import iter_events
from vmig.migration.destination import Destination
from vmig.migration.models import model_sections
from vmig.migration.notifiers import VirtioMemNotifier
from vmig.migration.ram import GuestRam
from vmig.migration.source import PrecopySource, StreamTemplate
from vmig.records import field, record
from vmig.stream.constants import MigCmd
from vmig.stream.events import Command, Configuration
from vmig.stream.vmdesc import VmDescription

__all__ = ["CapturedVm", "Plan", "Write", "Outcome", "open_capture", "run", "resolve_device"]

VIRTIO_STATUS_DRIVER_OK = 4


@record
class CapturedVm:
    """The source side of a captured VM (see :func:`open_capture`)."""

    events: list[Any]
    template: StreamTemplate
    ram: GuestRam
    machine: Any  # vmig.device.machine.Machine, or None without argv
    notifiers: list[VirtioMemNotifier]
    source: PrecopySource
    qemu_version: str = "7.2"
    drivers: list[GuestDriver] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)


def _has_switchover_start(events: Sequence[Any]) -> bool:
    return any(isinstance(e, Command) and e.cmd == MigCmd.SWITCHOVER_START for e in events)


def open_capture(path: str | Path, argv: Sequence[str] | None = None, *, postcopy: bool = False,
                 style: str = "discard-manager", qemu_version: str | None = None,
                 **source_kw: Any) -> CapturedVm:
    """A source over the RAM and device state of the capture at ``path``.

    Args:
        path: a capture (``.lz4`` accepted).
        argv: its QEMU command line (a capture manifest's ``argv``): builds the device-model
            machine, loads its virtio-mem state from the capture, adds one notifier per
            virtio-mem device (on its RAMBlock) and the model's section writers.
        postcopy: a postcopy source (the capture must be a postcopy one).
        style: the notifiers' style (see :class:`VirtioMemNotifier`).
        qemu_version: the binary version that wrote the capture (a manifest's
            ``qemu_version``); None: from the capture's machine type
            (:func:`vmig.device.versions.capture_qemu_version`).
        source_kw: more :class:`PrecopySource` keywords (``xbzrle``...).
    """
    events = list(iter_events(str(path), schema_sets=True))
    machine_type = next((e.name for e in events if isinstance(e, Configuration)), None)
    version = capture_qemu_version(machine_type, recorded=qemu_version,
                                   switchover_start=_has_switchover_start(events))
    machine = machine_from_argv(list(argv), qemu_version=version) if argv is not None else None
    dest = Destination(machine=machine).load(events)
    ram = GuestRam.from_images(dest.images, copy=False)
    notifiers: list[VirtioMemNotifier] = []
    drivers: list[GuestDriver] = []
    models: dict = {}
    if machine is not None:
        status = {s.dev_path: int(s.decoded.get("status") or 0) for s in virtio_mem_sections(events)}
        for dev in machine.devices:
            notifiers.append(VirtioMemNotifier(dev, machine.ram_block(dev), style))
            dev.driver_ok = bool(status.get(machine.pci_path(dev), 0) & VIRTIO_STATUS_DRIVER_OK)
            drivers.append(GuestDriver(dev))
        models = model_sections(machine, events)
    template = StreamTemplate.from_events(events)
    source = PrecopySource(template, ram, notifiers=notifiers, postcopy=postcopy, models=models,
                           migration=machine.migration if machine is not None else None, **source_kw)
    return CapturedVm(events, template, ram, machine, notifiers, source, version, drivers,
                   list(argv) if argv is not None else [])


def resolve_device(machine: Any, ref: str) -> int:
    """Index of the device ``ref`` names: its PCI path as ``vmig info memory-devices`` shows it
    (``0000:00:02.0``), its qdev id, or its index.

    Raises:
        UsageError: no such device.
    """
    devs = machine.devices
    for i, d in enumerate(devs):
        if ref in (machine.pci_path(d), d.id):
            return i
    if ref.isdigit() and int(ref) < len(devs):
        return int(ref)
    known = ", ".join(f"{i}={machine.pci_path(d)}" + (f" ({d.id})" if d.id else "") for i, d in enumerate(devs))
    raise UsageError(f"no virtio-mem device {ref!r} (devices: {known or 'none'})")


@record
class Plan:
    """What :func:`run` does (the ``vmig migrate`` options)."""

    postcopy: bool = False
    passes: int = 2
    seed: int = 0
    writes: int = 0
    resizes: Sequence[tuple[str, int]] = ()
    resize_during: bool = False
    return_path: bytes | None = None


@record
class Write:
    """One guest write: RAMBlock offset, guest-physical address, the bytes."""

    idstr: str
    offset: int
    gpa: int
    data: bytes


@record
class Outcome:
    """What moved, and the state the destination should end in."""

    stream: bytes
    passes: int
    normal: int
    zero: int
    xbzrle: int
    discarded_pages: int
    requests: list[tuple[str, int, int]]
    busy: int
    request_log: list[tuple[str, str, int]]  # (request, answer, blocks) of the guest drivers
    writes: list[Write]
    devices: list[dict[str, Any]]  # query-memory-devices of the model after the migration

    def summary(self) -> list[str]:
        """Human-readable lines (``vmig migrate`` prints them)."""
        out = [f"passes: {self.passes}",
               f"pages: {self.normal} normal, {self.zero} zero, {self.xbzrle} xbzrle",
               f"discards: {self.discarded_pages} pages",
               f"page requests: {len(self.requests)}",
               f"guest writes: {len(self.writes)}"]
        kinds: dict[str, int] = {}
        for req, ans, _ in self.request_log:
            kinds[f"{req} {ans}"] = kinds.get(f"{req} {ans}", 0) + 1
        out.append("virtio-mem requests: " + (", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
                                              or "none"))
        for d in self.devices:
            x = d["data"]
            out.append(f"{x.get('id', '(unnamed)')}: size {x['size']} requested-size {x['requested-size']}")
        out.append(f"stream: {len(self.stream)} bytes")
        return out


def _targets(s: CapturedVm) -> list[tuple[str, int, int, int]]:
    """(RAMBlock, offset, guest-physical address, length) of every plugged virtio-mem block;
    without plugged memory, ``pc.ram`` from 1 MiB to 16 MiB (guest-physical from 0)."""
    out: list[tuple[str, int, int, int]] = []
    if s.machine is not None:
        for dev in s.machine.devices:
            idstr = s.machine.ram_block(dev)
            for b in np.flatnonzero(dev.bitmap).tolist():
                out.append((idstr, b * dev.block_size, dev.addr + b * dev.block_size, dev.block_size))
    if not out and "pc.ram" in s.ram.blocks:
        length = min(s.ram["pc.ram"].used_length, 16 << 20) - (1 << 20)
        if length > 0:
            out.append(("pc.ram", 1 << 20, 1 << 20, length))
    return out


def _write(s: CapturedVm, rng: np.random.Generator, n: int, tag: int) -> list[Write]:
    """``n`` guest writes of 512 bytes at page starts of plugged memory (seeded)."""
    ps = s.ram.page_size
    targets = _targets(s)
    if n and not targets:
        raise UsageError("nothing to write into: no plugged virtio-mem block and no pc.ram")
    out: list[Write] = []
    for i in range(n):
        idstr, off, gpa, length = targets[int(rng.integers(len(targets)))]
        page = int(rng.integers(length // ps)) * ps
        data = (f"vmig-write-{tag}-{i}-".encode().ljust(16, b"-") + rng.bytes(48)) * 8
        s.ram.write(idstr, off + page, data)
        out.append(Write(idstr, off + page, gpa + page, data))
    return out


def _apply_resizes(s: CapturedVm, resizes: Sequence[tuple[str, int]]) -> None:
    """Each ``requested-size`` in turn, the device's guest driver following before the next
    (attached to a running guest's plugged state, or booting when the device never had one)."""
    for ref, size in resizes:
        i = resolve_device(s.machine, ref)
        s.machine.devices[i].qom_set_requested_size(size)
        d = s.drivers[i]
        d.attach() if not d.probed else d.run()


def run(s: CapturedVm, plan: Plan) -> Outcome:
    """Run the migration ``plan`` on ``s``; returns the stream and what moved.

    Raises:
        UsageError: a bad plan (no such device, postcopy without a postcopy template...).
        DeviceError: a ``requested-size`` the device refuses (QEMU's message).
    """
    if plan.passes < 1:
        raise UsageError("--passes must be at least 1")
    if plan.postcopy != s.source.postcopy:
        raise UsageError("the plan and the captured VM disagree on postcopy (open_capture(postcopy=...))")
    if (plan.resizes or plan.writes) and s.machine is None:
        raise UsageError("resizes and writes need the VM's command line")
    rng = np.random.default_rng(plan.seed)
    src = s.source
    log_start = [len(d.log) for d in s.drivers]
    if plan.resizes and not plan.resize_during:
        _apply_resizes(s, plan.resizes)
    else:
        for d in s.drivers:
            if d.dev.driver_ok:
                d.attach()
    log_start = [len(d.log) for d in s.drivers] if plan.resize_during else log_start
    writes: list[Write] = []
    parts = [src.setup()]
    for p in range(plan.passes):
        parts.append(src.iterate())
        if p == 0 and plan.resizes and plan.resize_during:
            _apply_resizes(s, plan.resizes)
        writes += _write(s, rng, plan.writes, p)
    requests: list[tuple[str, int, int]] = []
    if not plan.postcopy:
        parts.append(src.complete())
    else:
        parts.append(src.switchover())
        if plan.return_path is not None:
            for m in src.receive_return_path(plan.return_path):
                if m.args is not None and "start" in m.args:  # type: ignore[attr-defined]
                    requests.append((m.args.get("idstr", requests[-1][0] if requests else ""),  # type: ignore[attr-defined]
                                     m.args["start"], m.args["len"]))  # type: ignore[attr-defined]
        else:
            dest = Destination(machine=machine_from_argv(s.argv, qemu_version=s.qemu_version)
                               if s.argv else None)
            trailer = s.template.trailer  # the layouts of the capture's sections (any machine type)
            dec = new_decoder(descriptions=[VmDescription(trailer.raw, "template trailer")
                                            if trailer is not None else None])
            dec.receive_data(b"".join(parts))
            dest.load(dec.events())
            touched: dict[str, list[tuple[int, int]]] = {}
            for w in writes:
                touched.setdefault(w.idstr, []).append((w.offset, len(w.data)))
            requests = dest.request_pages(touched)
            src.receive_return_path(dest.take_return_path())
        parts.append(src.postcopy_pages(0))
        parts.append(src.postcopy_complete())
    log: list[tuple[str, str, int]] = []
    for d, start in zip(s.drivers, log_start):
        for req, ans in d.log[start:]:
            log.append((RequestType(req.type).name, ans.name if ans is not None else "none", req.nb_blocks))
    busy = sum(1 for _, a, _ in log if a == ResponseType.BUSY.name)
    st = src.stats
    return Outcome(b"".join(parts), st.passes, st.normal, st.duplicate, st.xbzrle, st.discarded_pages,
                   requests, busy, log, writes,
                   s.machine.query_memory_devices() if s.machine is not None else [])
