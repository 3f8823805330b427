"""Real QEMU 10.0 captures (Debian trixie chroot) for the analysis tests, made once per process.

Each capture is a small VM (no guest kernel; paused or running firmware) migrated with QEMU 10.0:
precopy with and without its JSON trailer, postcopy through a recording relay, and mapped-ram with
an unplugged virtio-mem device. ``capture(name)`` returns ``(path, query-migrate answer)``; beside
each stream ``stream.bin`` lies its manifest ``stream.json`` as the committed fixtures have one
(``argv``, ``capabilities``, ``machine``, ``qemu_version`` as the running QEMU reports them), which
``vmig check --dest-capture`` and ``vmig migrate`` read.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

MiB = 1 << 20
_BASE = ["-accel", "tcg", "-m", "256M,maxmem=4G", "-display", "none"]
_VMEM = ["-object", "memory-backend-ram,id=mem0,size=1G",
         "-device", "virtio-mem-pci,id=vm0,memdev=mem0,requested-size=128M"]

# name -> (QEMU arguments, how: "precopy" | "running" | "guest" | "postcopy" | "mapped-ram")
CAPTURES: dict[str, tuple[list[str], str]] = {
    "pc-10.0-paused": (["-machine", "pc", *_BASE, "-nodefaults", "-S", *_VMEM], "precopy"),
    "q35-10.0-smp2": (["-machine", "q35", *_BASE, "-smp", "2", "-S", *_VMEM], "precopy"),
    "pc-10.0-running": (["-machine", "pc", *_BASE, *_VMEM], "running"),
    # Linux booted, 256 MiB plugged by its driver, 2 vCPUs (modern CPU hotplug state)
    "pc-10.0-guest": (["-machine", "pc", *_BASE, "-smp", "2", "-nodefaults", *_VMEM], "guest"),
    "pc-7.2-on-10.0": (["-machine", "pc-i440fx-7.2", *_BASE, "-nodefaults", "-S", *_VMEM], "precopy"),
    # pc-paused's command line (the QEMU 7.2 fixture) on QEMU 10.0 with its 7.2 machine type
    "pc-paused-on-10.0": (["-machine", "pc-i440fx-7.2", "-accel", "tcg", "-m", "512M,maxmem=4G", "-smp", "1",
                           "-nodefaults", "-display", "none", "-S", *_VMEM], "precopy"),
    "pc-9.2-paused": (["-machine", "pc-i440fx-9.2", *_BASE, "-nodefaults", "-S", *_VMEM], "precopy"),
    "pc-10.0-novmdesc": (["-machine", "pc,suppress-vmdesc=on", *_BASE, "-nodefaults", "-S", *_VMEM],
                         "precopy"),
    "pc-10.0-postcopy": (["-machine", "pc", *_BASE, "-nodefaults", "-S", *_VMEM], "postcopy"),
    "pc-10.0-nofooter": (["-machine", "pc", *_BASE, "-nodefaults", "-S", *_VMEM,
                          "-global", "migration.send-section-footer=off"], "precopy"),
    # with send-configuration=off QEMU 10.0.13 aborts writing the JSON trailer (json-writer.c
    # "leave_container: Assertion `depth' failed"): suppress-vmdesc=on leaves the trailer out
    "pc-10.0-noconfig": (["-machine", "pc,suppress-vmdesc=on", *_BASE, "-nodefaults", "-S", *_VMEM,
                          "-global", "migration.send-configuration=off"], "precopy"),
    "q35-10.0-novmdesc": (["-machine", "q35,suppress-vmdesc=on", *_BASE, "-smp", "2", "-S", *_VMEM],
                          "precopy"),
    "pc-9.2-novmdesc": (["-machine", "pc-i440fx-9.2,suppress-vmdesc=on", *_BASE, "-nodefaults", "-S",
                         *_VMEM], "precopy"),
    # a 1 GiB virtio-mem device with nothing plugged: its blocks are never scanned by QEMU
    "pc-10.0-mapped-ram-unplugged": (
        ["-machine", "pc", "-accel", "tcg", "-m", "64M,maxmem=2G", "-display", "none", "-nodefaults",
         "-S", "-object", "memory-backend-ram,id=mem0,size=1G",
         "-device", "virtio-mem-pci,id=vm0,memdev=mem0,requested-size=0"], "mapped-ram"),
}


def trixie_or_fail() -> Path:
    """The QEMU 10.0 chroot (built on first use); fails under CI, skips otherwise when impossible."""
    from vmig.testing.qemu import QemuLabError
    from vmig.testing.trixie import ensure_trixie_chroot

    try:
        return ensure_trixie_chroot()
    except (QemuLabError, OSError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"QEMU 10.0 chroot unavailable under CI: {e}")
        pytest.skip(f"QEMU 10.0 chroot unavailable: {e}")


@functools.cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="vmig-q10-")).resolve()
    atexit.register(shutil.rmtree, path, ignore_errors=True)  # the captures live for one process
    return path


class _Relay:
    """Localhost TCP relay recording the source → destination bytes (postcopy needs the return path)."""

    def __init__(self, target_port: int, record: Path) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.lsock.getsockname()[1])
        self.target_port, self.record = target_port, record
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        src, _ = self.lsock.accept()
        dst = socket.create_connection(("127.0.0.1", self.target_port))
        for a, b, path in ((src, dst, self.record), (dst, src, None)):
            t = threading.Thread(target=self._pump, args=(a, b, path), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, path: Path | None) -> None:
        fh = open(path, "wb") if path is not None else None  # noqa: SIM115 - closed below
        try:
            while data := a.recv(1 << 16):
                if fh is not None:
                    fh.write(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            if fh is not None:
                fh.close()
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.acceptor.join(30)
        for t in self.threads:
            t.join(30)
        self.lsock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_manifest(q: Any, args: list[str], capabilities: dict[str, bool], out: Path) -> None:
    """``out``'s manifest (``stream.json`` beside ``stream.bin``), from what ``q`` (the source
    QEMU, still running) reports: its version and the machine type its ``-machine`` resolved to."""
    ver = q.qmp("query-version")["qemu"]
    wanted = args[args.index("-machine") + 1].split(",")[0]
    machine = next((m["name"] for m in q.qmp("query-machines")
                    if wanted in (m["name"], m.get("alias"))), wanted)
    doc = {"argv": list(args), "capabilities": dict(capabilities), "machine": machine,
           "qemu_version": f"{ver['major']}.{ver['minor']}.{ver['micro']}"}
    out.with_name(out.name.removesuffix(".bin") + ".json").write_text(json.dumps(doc, indent=2) + "\n")


@functools.cache
def _capture(name: str) -> tuple[Path, dict[str, Any]]:
    from vmig.testing.qemu import Qemu

    root = trixie_or_fail()
    args, how = CAPTURES[name]
    wd = _workdir() / name
    wd.mkdir()
    out = wd / "stream.bin"
    if how == "postcopy":
        dport = _free_port()
        src_wd, dst_wd = wd / "src", wd / "dst"
        with Qemu(args, workdir=src_wd, chroot=root) as src, \
                Qemu(args, workdir=dst_wd, chroot=root, incoming=f"tcp:127.0.0.1:{dport}") as dst:
            caps = {"postcopy-ram": True}
            _write_manifest(src, args, caps, out)
            dst.set_migration(caps)
            # precopy throttled so that it cannot finish before the switchover
            src.set_migration(caps, {"max-bandwidth": 256 << 10})
            relay = _Relay(dport, out)
            try:
                src.qmp("migrate", {"uri": f"tcp:127.0.0.1:{relay.port}"})
                src.wait_migration(60, until=frozenset({"active", "failed", "completed"}))
                time.sleep(0.3)
                src.qmp("migrate-start-postcopy")
                info = src.wait_migration(300)
                dst.wait_migration(300)
            finally:
                src.stop()
                dst.stop()
                relay.close()
        assert info["status"] == "completed", info
        return out, info
    if how == "guest":
        from vmig.testing.guest import GUEST_DIR, GUEST_READY, guest_args
        from vmig.testing.qemu import wait_for_text

        serial = wd / "serial.log"
        args = args + guest_args(serial)
    binds = [GUEST_DIR] if how == "guest" else None
    with Qemu(args, workdir=wd, chroot=root, extra_binds=binds) as q:
        if how == "running":
            time.sleep(1.0)
        if how == "guest":
            wait_for_text(serial, GUEST_READY, timeout=300, proc=q)
            q.resize_virtio_mem("vm0", 256 * MiB, timeout=180)
        _write_manifest(q, args, {"mapped-ram": True} if how == "mapped-ram" else {}, out)
        if how == "mapped-ram":
            q.set_migration({"mapped-ram": True})
            q.qmp("migrate", {"uri": f"file:{out}"})
            info = q.wait_migration(120)
        else:
            info = q.migrate_to_file(out)
    assert info["status"] == "completed", info
    return out, info


def capture(name: str) -> tuple[Path, dict[str, Any]]:
    """``(stream path, final query-migrate)`` of the QEMU 10.0 capture ``name`` (see CAPTURES)."""
    return _capture(name)
