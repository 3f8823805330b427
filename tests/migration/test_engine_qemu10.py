"""The engine from QEMU 10.0 captures (Debian trixie chroot): pc-i440fx-10.0, pc-q35-10.0 and
pc-i440fx-9.2 machine types on the same 10.0 binary give the three virtio-mem layouts.

Each test captures a paused VM with QEMU 10.0 itself, builds the engine source from it (QEMU
version 10.0 as a manifest records it), grows the device in the model, and checks that

* the stream's framing is the capture's: the ``virtio-mem-device-early`` section right after the
  RAM START section, SWITCHOVER_START right before the RAM END section for 10.0 machine types
  and none for 9.2 (the same order as in QEMU 10.0's own capture);
* QEMU 10.0 loads it (precopy, and postcopy from a file with postcopy-ram on) with
  ``query-memory-devices`` equal to the model's and the guest writes in place.

Runs when the chroot exists (``~/.cache/vmig/trixie``) or ``VMIG_TRIXIE=1`` asks to build it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from relay import relay_class

from vmig.device.versions import capture_qemu_version
from vmig.io.decoding import decode_bytes
from vmig.io.streams import iter_events
from vmig.migration.vm import Plan, open_capture, run
from vmig.stream.events import Command, SectionHeader
from vmig.testing import fixtures

MiB = 1 << 20
MACHINES = ("pc-i440fx-10.0", "pc-q35-10.0", "pc-i440fx-9.2")


def _args(machine: str) -> list[str]:
    return [machine if a == "pc" else a for a in fixtures.manifest("pc-paused")["argv"]]


@pytest.fixture(scope="module")
def captures(trixie: Path, tmp_path_factory) -> dict[str, Path]:
    from vmig.testing.qemu import Qemu

    wd = tmp_path_factory.mktemp("q10")
    out = {}
    for mt in MACHINES:
        with Qemu(_args(mt), workdir=wd, chroot=trixie) as q:
            assert q.qmp("query-version")["qemu"]["major"] == 10
            assert q.migrate_to_file(wd / f"{mt}.bin")["status"] == "completed"
        out[mt] = wd / f"{mt}.bin"
    return out


def _framing(events) -> list[str]:
    """Top-level sections and commands in order, runs of RAM PART sections as one."""
    out: list[str] = []
    for ev in events:
        if isinstance(ev, SectionHeader):
            s = f"{ev.type.name}:{ev.idstr}"
        elif isinstance(ev, Command):
            s = f"CMD:{ev.cmd.name}"
        else:
            continue
        if not (out and out[-1] == s == "SECTION_PART:ram"):
            out.append(s)
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("machine", MACHINES)
def test_engine_stream_from_a_qemu10_capture_loads_into_qemu10(machine, captures, trixie, lab_dir):
    from vmig.testing.qemu import load_stream

    s = open_capture(captures[machine], _args(machine), qemu_version="10.0")
    assert s.machine.devices[0].early_migration
    out = run(s, Plan(writes=5, seed=2, resizes=[("vm0", 300 * MiB)]))
    real = _framing(iter_events(str(captures[machine]), schema_sets=False))
    ours = _framing(decode_bytes(out.stream))
    assert ours == real
    i = ours.index("SECTION_START:ram")
    path = s.machine.pci_path(s.machine.devices[0])
    assert ours[i + 1] == f"SECTION_FULL:{path}/virtio-mem-device-early"
    end = ours.index("SECTION_END:ram")
    assert (ours[end - 1] == "CMD:SWITCHOVER_START") == machine.endswith("10.0")
    assert ("CMD:SWITCHOVER_START" in ours) == machine.endswith("10.0")

    res = load_stream(_args(machine), out.stream, workdir=lab_dir, chroot=trixie,
                      inspect=lambda q: [q.read_memory(w.gpa, len(w.data)) for w in out.writes])
    assert res.ok, res.stderr
    assert res.memory_devices == s.machine.query_memory_devices()
    assert res.memory_devices[0]["data"]["size"] == 300 * MiB
    assert res.inspected == [w.data for w in out.writes]


def _events_with_trailer(data: bytes, capture: Path):
    from vmig.io.streams import load_description

    return decode_bytes(data, description=load_description(str(capture)))


@pytest.mark.qemu
@pytest.mark.parametrize("machine", ["pc-i440fx-10.0", "pc-q35-10.0"])
def test_engine_postcopy_stream_loads_into_qemu10(machine, captures, trixie, lab_dir):
    from vmig.testing.qemu import load_stream

    s = open_capture(captures[machine], _args(machine), qemu_version="10.0", postcopy=True)
    out = run(s, Plan(postcopy=True, writes=4, seed=9, resizes=[("vm0", 200 * MiB)]))
    assert out.requests and out.discarded_pages
    ours = _framing(_events_with_trailer(out.stream, captures[machine]))
    path = s.machine.pci_path(s.machine.devices[0])
    assert ours[:5] == ["CMD:OPEN_RETURN_PATH", "CMD:PING", "CMD:POSTCOPY_ADVISE", "SECTION_START:ram",
                        f"SECTION_FULL:{path}/virtio-mem-device-early"]
    res = load_stream(_args(machine), out.stream, workdir=lab_dir, chroot=trixie, postcopy=True,
                      inspect=lambda q: [q.read_memory(w.gpa, len(w.data)) for w in out.writes])
    assert res.ok, res.stderr
    assert res.memory_devices == s.machine.query_memory_devices()
    assert res.inspected == [w.data for w in out.writes]


def test_capture_qemu_version_rules():
    assert capture_qemu_version("pc-i440fx-7.2") == "7.2"
    assert capture_qemu_version("pc-i440fx-9.2") == "9.2"
    assert capture_qemu_version("pc-i440fx-9.2", switchover_start=True) == "10.0"
    assert capture_qemu_version("pc-q35-10.0") == "10.0"
    assert capture_qemu_version("pc-i440fx-9.2", recorded="10.0.13") == "10.0"
    assert capture_qemu_version(None) == "7.2"


@pytest.mark.qemu
def test_vmig_migrate_postcopy_from_a_qemu10_capture_loads_into_qemu10(captures, trixie, lab_dir, tmp_path,
                                                                       capsys):
    import json

    from vmig.cli import main
    from vmig.testing.qemu import load_stream

    machine = "pc-i440fx-10.0"
    man = tmp_path / "cap.json"
    man.write_text(json.dumps({"argv": _args(machine), "qemu_version": "10.0.13"}))
    out = tmp_path / "post.bin"
    assert main(["migrate", "--template", str(captures[machine]), "--manifest", str(man), "-o", str(out),
                 "--postcopy", "--writes", "3", "--virtio-mem", "0000:00:02.0:requested-size=260M"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("QEMU 10.0, postcopy")
    res = load_stream(_args(machine), out, workdir=lab_dir, chroot=trixie, postcopy=True)
    assert res.ok, res.stderr
    got = res.memory_devices[0]["data"]
    assert (got["size"], got["requested-size"]) == (260 * MiB, 260 * MiB)
    assert f"vm0: size {260 * MiB} requested-size {260 * MiB}" in printed


def _postcopy_framing(events) -> list[str]:
    """:func:`_framing`, descending into PACKAGED, with runs of discards as one entry."""
    out: list[str] = []

    def walk(evs, ind: str) -> None:
        for ev in evs:
            if isinstance(ev, SectionHeader):
                s = f"{ind}{ev.type.name}:{ev.idstr}"
            elif isinstance(ev, Command):
                s = f"{ind}CMD:{ev.cmd.name}"
            else:
                continue
            if not (out and out[-1] == s and s.endswith(("SECTION_PART:ram", "POSTCOPY_RAM_DISCARD"))):
                out.append(s)
            if isinstance(ev, Command) and ev.children:
                walk(ev.children, ind + "  ")

    walk(events, "")
    return out


@pytest.mark.qemu
def test_engine_postcopy_framing_is_qemu10s(captures, trixie, tmp_path):
    """A real QEMU 10.0 postcopy (paused pc-i440fx-10.0 VM to a destination, through a recording
    relay) and the engine's postcopy stream have the same framing: SWITCHOVER_START right before
    the discards, the early section after RAM START, the late virtio-mem section in the package."""
    import time

    from vmig.io.streams import load_description
    from vmig.testing.qemu import Qemu

    relay_cls, free_port = relay_class()
    machine = "pc-i440fx-10.0"
    args = _args(machine)
    port = free_port()
    main_f, rp_f = tmp_path / "main.bin", tmp_path / "rp.bin"
    with Qemu(args, workdir=tmp_path, chroot=trixie) as src, \
            Qemu([a for a in args if a != "-S"], workdir=tmp_path, chroot=trixie,
                 incoming=f"tcp:127.0.0.1:{port}") as dst:
        dst.set_migration({"postcopy-ram": True})
        src.set_migration({"postcopy-ram": True}, {"max-bandwidth": 100_000})
        relay = relay_cls(port, main_f, rp_f)
        try:
            src.qmp("migrate", {"uri": f"tcp:127.0.0.1:{relay.port}"})
            src.wait_migration(30, until=frozenset({"active", "failed", "completed"}))
            time.sleep(0.3)
            src.qmp("migrate-start-postcopy")
            assert src.wait_migration(120)["status"] == "completed"
            assert dst.wait_migration(120)["status"] == "completed"
        finally:
            src.stop()
            dst.stop()
            relay.close()
    desc = load_description(str(captures[machine]))
    real = _postcopy_framing(iter_events(str(main_f), desc_from=desc))
    assert "CMD:SWITCHOVER_START" in real and "  CMD:POSTCOPY_LISTEN" in real

    s = open_capture(captures[machine], args, qemu_version="10.0", postcopy=True)
    out = run(s, Plan(postcopy=True, passes=2, writes=3))
    ours = _postcopy_framing(decode_bytes(out.stream, description=desc))
    assert ours == real, (ours, real)
