#!/usr/bin/env python3
"""Generate vmig's bundled schema sets (vmig/vmstate/machines/<machine>.json) from real QEMU.

For each machine type (QEMU 7.2's pc-i440fx-7.2 and pc-q35-7.2, run by the host's QEMU; QEMU 10.0's
pc-i440fx-10.0 and pc-q35-10.0 and its pc-i440fx-9.2, run from the Debian trixie chroot of
``vmig.testing.trixie.ensure_trixie_chroot``) the script captures streams of
a set of common configurations (paused and booted guests, default devices and -nodefaults, one
and two virtio-mem devices, PCIe root ports, 1 and 2 CPUs), takes every capture's vmdesc trailer,
and merges the section descriptions: per section idstr, the distinct field layouts ("variants")
with the union of the subsections seen at every level. It then runs ``-dump-vmstate`` for the
machine, cross-checks the field names of each captured vmsd against the dump, and adds the
subsections the dump lists that no capture contained (fields typed from the dump's C sizes,
marked ``"source": "dump-vmstate"``; used only when such a subsection is actually met).

A capture whose QEMU fails is skipped with a message (QEMU 10.0.13 under TCG aborts in
``tlb_reset_dirty_range_all`` when migrating the booted two-node guest with two virtio-mem devices:
numa2-guest is then missing from the 10.0 sets; numa2-paused covers its sections).

Extra captures (e.g. the repository fixtures) can be merged with ``--stream FILE`` (raw or .lz4).

Usage: python scripts/gen_machine_schemas.py [--machine pc-i440fx-7.2 ...] [--stream F ...]
       [--no-guest] [--out vmig/vmstate/machines]
Needs qemu-system-x86_64 (7.2) and, for the 9.2/10.0 machine types, the trixie chroot (QEMU 10.0).
Takes a few minutes per machine (guest boots under TCG).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vmig.testing.qemu import QemuLabError  # noqa: E402
from vmig.vmstate.machines import (  # noqa: E402
    SCHEMA_FORMAT,
    loads_vmdesc,
    merge_description,
    schema_path,
)

MACHINES = ("pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-9.2", "pc-i440fx-10.0", "pc-q35-10.0")
# machine types QEMU 7.2 does not know: generated with QEMU 10.0 from the trixie chroot
CHROOT_MACHINES = frozenset({"pc-i440fx-9.2", "pc-i440fx-10.0", "pc-q35-10.0"})


def chroot_for(machine: str) -> Path | None:
    """The QEMU 10.0 chroot for the machine types QEMU 7.2 lacks, else None (the host's QEMU)."""
    if machine not in CHROOT_MACHINES:
        return None
    from vmig.testing.trixie import ensure_trixie_chroot

    return ensure_trixie_chroot()


def configs(machine: str) -> list[tuple[str, list[str], str]]:
    """(name, QEMU args, mode) per capture; mode: 'paused', 'guest' (boot + plug) or 'run'."""
    q35 = machine.startswith("pc-q35")
    mem1 = ["-object", "memory-backend-ram,id=mem0,size=1G",
            "-device", "virtio-mem-pci,id=vm0,memdev=mem0,requested-size=128M"]
    two = ["-object", "memory-backend-ram,id=r0,size=512M", "-object", "memory-backend-ram,id=r1,size=512M",
           "-numa", "node,nodeid=0,memdev=r0", "-numa", "node,nodeid=1,memdev=r1",
           "-object", "memory-backend-ram,id=mem0,size=1G", "-object", "memory-backend-ram,id=mem1,size=2G",
           "-device", "virtio-mem-pci,id=vm0,memdev=mem0,node=0,requested-size=128M",
           "-device", "virtio-mem-pci,id=vm1,memdev=mem1,node=1,block-size=4M,requested-size=256M"]
    base = ["-machine", machine, "-accel", "tcg", "-m", "512M,maxmem=4G", "-display", "none"]
    numa_base = ["-machine", machine, "-accel", "tcg", "-m", "1G,maxmem=8G", "-display", "none", "-smp", "2"]
    out = [
        ("nodefaults-paused", base + ["-nodefaults", "-S"] + mem1, "paused"),
        ("defaults-paused", base + ["-S"] + mem1, "paused"),
        ("defaults-smp2-run", base + ["-smp", "2"] + mem1, "run"),
        ("numa2-paused", numa_base + ["-nodefaults", "-S"] + two, "paused"),
        ("nodefaults-guest", base + ["-nodefaults"] + mem1, "guest"),
        # a booted guest switches ACPI CPU hotplug to the modern interface: the PM device then
        # carries a per-possible-CPU array (cpuhp subsection), so capture 2 and 4 CPUs too
        ("smp2-guest", base + ["-nodefaults", "-smp", "2"] + mem1, "guest"),
        ("smp4-guest", base + ["-smp", "4"] + mem1, "guest"),
        ("numa2-guest", numa_base + ["-nodefaults"] + two, "guest"),
    ]
    if q35:
        rp = ["-device", "pcie-root-port,id=rp0,chassis=1,slot=1,bus=pcie.0,addr=0x2",
              "-object", "memory-backend-ram,id=mem0,size=1G",
              "-device", "virtio-mem-pci,id=vm0,memdev=mem0,bus=rp0,requested-size=128M"]
        out.append(("rootport-paused", base + ["-nodefaults", "-S"] + rp, "paused"))
        out.append(("rootport-guest", base + ["-nodefaults"] + rp, "guest"))
    return out


def capture(name: str, args: list[str], mode: str, work: Path, use_guest: bool,
            chroot: Path | None = None) -> bytes | None:
    from vmig.testing.guest import GUEST_DIR, GUEST_READY, guest_args
    from vmig.testing.qemu import Qemu, wait_for_text

    out = work / f"{name}.bin"
    extra: list[str] = []
    if mode == "guest":
        if not use_guest:
            return None
        serial = work / f"{name}.serial"
        extra = guest_args(serial)
    binds = [GUEST_DIR] if chroot is not None and mode == "guest" else None
    with Qemu(args + extra, workdir=work, chroot=chroot, extra_binds=binds) as q:
        if mode == "guest":
            wait_for_text(serial, GUEST_READY, timeout=180, proc=q)
            q.resize_virtio_mem("vm0", 256 << 20, timeout=120)
            q.resize_virtio_mem("vm0", 128 << 20, timeout=120)
        elif mode == "run":
            time.sleep(1.0)
        q.migrate_to_file(out)
    return out.read_bytes()


def dump_vmstate(machine: str, work: Path, chroot: Path | None = None) -> dict[str, Any]:
    argv = ["qemu-system-x86_64", "-machine", machine, "-accel", "tcg", "-display", "none",
            "-nodefaults", "-dump-vmstate"]
    if chroot is None:
        path = work / f"{machine}.dump.json"
        subprocess.run([*argv, str(path)], check=True, capture_output=True)
    else:
        inner = f"/tmp/vmig-dump-{machine}.json"
        path = chroot / inner.lstrip("/")
        subprocess.run(["chroot", str(chroot), *argv, inner], check=True, capture_output=True)
    try:
        return json.loads(path.read_text())
    finally:
        if chroot is not None:
            path.unlink(missing_ok=True)


def qemu_version_of(chroot: Path | None) -> str:
    argv = ["qemu-system-x86_64", "--version"]
    if chroot is not None:
        argv = ["chroot", str(chroot), *argv]
    text = subprocess.run(argv, capture_output=True, text=True).stdout
    return text.split("version", 1)[1].split()[0] if "version" in text else "?"


def read_stream(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".lz4":
        import lz4.frame

        data = lz4.frame.decompress(data)
    return data


def machine_of(data: bytes) -> str | None:
    """The CONFIGURATION record's machine name (byte 8 = 0x07, be32 len, name)."""
    if len(data) > 13 and data[8] == 0x07:
        n = int.from_bytes(data[9:13], "big")
        return data[13 : 13 + n].decode("latin-1")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", action="append", choices=MACHINES)
    ap.add_argument("--stream", action="append", default=[], type=Path,
                    help="extra capture (raw or .lz4) whose trailer is merged into its machine's set")
    ap.add_argument("--no-guest", action="store_true", help="skip the booted-guest captures")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    machines = args.machine or list(MACHINES)
    extra: dict[str, list[tuple[str, bytes]]] = {}
    for p in args.stream:
        data = read_stream(p)
        m = machine_of(data)
        if m in machines:
            extra.setdefault(m, []).append((p.name, data))
    with tempfile.TemporaryDirectory(prefix="vmig-gen-") as tmp:
        work = Path(tmp)
        for machine in machines:
            chroot = chroot_for(machine)
            version = qemu_version_of(chroot)
            sections: dict[str, list[dict[str, Any]]] = {}
            sources: list[dict[str, Any]] = []
            inputs: list[tuple[str, list[str], bytes]] = []
            for name, qargs, mode in configs(machine):
                try:
                    data = capture(name, qargs, mode, work, not args.no_guest, chroot)
                except QemuLabError as e:  # a QEMU crash in one configuration: use the others
                    print(f"{machine}: {name} failed, skipped: {str(e)[-300:]}", file=sys.stderr)
                    continue
                if data is None:
                    print(f"{machine}: skipped {name} (no guest)", file=sys.stderr)
                    continue
                inputs.append((name, qargs, data))
            for name, data in extra.get(machine, []):
                inputs.append((name, [], data))
            for name, qargs, data in inputs:
                desc = loads_vmdesc(data)
                if desc is None:
                    print(f"{machine}: {name} has no trailer, ignored", file=sys.stderr)
                    continue
                n = 0
                for dev in desc["devices"]:
                    merge_description(sections, dev)
                    n += 1
                sources.append({"name": name, "argv": qargs, "sections": n})
                print(f"{machine}: {name}: {n} sections", file=sys.stderr)
            dump = dump_vmstate(machine, work, chroot)
            from vmig.vmstate.machines import add_dump_subsections

            notes = add_dump_subsections(sections, dump)
            doc = {
                "format": SCHEMA_FORMAT,
                "machine": machine,
                "qemu_version": version,
                "generated_by": "scripts/gen_machine_schemas.py",
                "captures": sources,
                "dump_vmstate_notes": notes,
                "sections": dict(sorted(sections.items())),
            }
            out = (args.out / f"{machine}.json") if args.out else schema_path(machine)
            out.parent.mkdir(parents=True, exist_ok=True)
            text = "{\n" + ",\n".join(
                f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in doc.items()
            ) + "\n}\n"
            out.write_text(text)
            print(f"{machine}: wrote {out} ({len(sections)} section names)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
