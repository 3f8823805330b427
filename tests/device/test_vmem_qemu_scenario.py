"""Real QEMU 7.2 and the model driven through the same steps; their answers must agree.

One command line starts QEMU (paused, no guest) and builds the model
(:func:`vmig.device.cmdline.machine_from_argv`). Then both get the same requested-size writes
(valid and invalid), system resets while idle, while an outgoing migration is held in
``pre-switchover`` (QEMU's ``pause-before-switchover``), and after it completed. After every
step the QMP answers are compared: ``query-memory-devices``, ``qom-get`` of ``size`` /
``requested-size`` / ``block-size`` / ``memaddr`` / ``unplugged-inaccessible``, and the
``qom-set`` errors. The usable region — invisible over QMP — is compared through the migration
streams QEMU writes: the model's pre-save must re-encode each virtio-mem section byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmig.device.cmdline import machine_from_argv
from vmig.device.machine import Machine, QmpError
from vmig.device.sections import encode_section, virtio_mem_sections
from vmig.io.streams import iter_events

pytestmark = pytest.mark.qemu

ARGS = {
    "pc": (
        "-machine pc-i440fx-7.2 -accel tcg -m 512M,maxmem=4G -smp 1 -nodefaults -display none -S "
        "-object memory-backend-ram,id=mem0,size=1G "
        "-device virtio-mem-pci,id=vm0,memdev=mem0,requested-size=900M "
        "-object memory-backend-memfd,id=mem1,size=2G "
        "-device virtio-mem-pci,id=vm1,memdev=mem1,block-size=4M,requested-size=8M"
    ).split(),
    "q35": (
        "-machine q35 -accel tcg -m 4G,maxmem=20G -smp 2 -nodefaults -display none -S "
        "-object memory-backend-ram,id=ram0,size=2G -object memory-backend-ram,id=ram1,size=2G "
        "-numa node,nodeid=0,cpus=0,memdev=ram0 -numa node,nodeid=1,cpus=1,memdev=ram1 "
        "-object memory-backend-ram,id=mem0,size=8G "
        "-device virtio-mem-pci,id=vm0,memdev=mem0,node=0,requested-size=0 "
        "-object memory-backend-ram,id=mem1,size=8G "
        "-device virtio-mem-pci,id=vm1,memdev=mem1,node=1,requested-size=1G"
    ).split(),
}
PROPS = ["size", "requested-size", "block-size", "memaddr", "node", "memdev", "unplugged-inaccessible"]


class Pair:
    """Runs each step on QEMU and on the model and compares the answers."""

    def __init__(self, q, model: Machine, ids: list[str]) -> None:
        self.q, self.m, self.ids = q, model, ids

    def compare_state(self, where: str) -> None:
        assert self.m.qmp("query-memory-devices") == self.q.qmp("query-memory-devices"), where
        for dev in self.ids:
            for prop in PROPS:
                args = {"path": dev, "property": prop}
                assert self.m.qmp("qom-get", args) == self.q.qmp("qom-get", args), (where, dev, prop)
                self.hmp(f"qom-get {dev} {prop}")
        assert self.m.hmp("info memory-devices") == self.q.hmp("info memory-devices").replace("\r\n", "\n")

    def qom_set(self, dev: str, prop: str, value) -> None:
        from vmig.testing.qemu import QmpCommandError

        args = {"path": dev, "property": prop, "value": value}
        try:
            q_ans = ("ok", self.q.qmp("qom-set", args))
        except QmpCommandError as e:
            q_ans = ("error", e.desc)
        try:
            m_ans = ("ok", self.m.qmp("qom-set", args))
        except QmpError as e:
            m_ans = ("error", e.desc)
        assert m_ans == q_ans, args

    def hmp(self, line: str) -> None:
        assert self.m.hmp(line) == self.q.hmp(line).replace("\r\n", "\n"), line

    def reset(self) -> None:
        self.q.qmp("system_reset")
        self.m.qmp("system_reset")


def _compare_stream(path: Path, model: Machine) -> None:
    secs = virtio_mem_sections(iter_events(str(path)))
    assert len(secs) == len(model.devices)
    for sec, dev in zip(secs, model.devices):
        assert encode_section(sec, dev) == sec.payload, (path.name, dev.id, sec.decoded.device)


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_model_answers_like_qemu(machine, qemu_bin, lab_dir):
    from vmig.testing.qemu import Qemu

    args = ARGS[machine]
    model = machine_from_argv(args)
    model.system_reset()  # QEMU resets the machine once at start
    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        p = Pair(q, model, ["vm0", "vm1"])
        p.compare_state("start")
        # requested-size writes, valid and invalid, over QMP and HMP
        for dev, value in [("vm0", 128 << 20), ("vm0", 3 << 20), ("vm1", 6 << 20), ("vm1", 12 << 20),
                           ("vm0", 64 << 30), ("vm0", 2**64), ("vm0", "1G"), ("vm0", 0),
                           ("vmx", 0)]:
            p.qom_set(dev, "requested-size", value)
        for dev, prop in [("vm0", "size"), ("vm0", "block-size"), ("vm0", "memaddr"), ("vm1", "bogus")]:
            p.qom_set(dev, prop, 0)
        p.hmp("qom-set vm1 requested-size 16M")
        p.hmp("qom-set vm1 requested-size 15M")
        p.hmp("qom-set vm0 requested-size 1.5M")
        p.compare_state("after qom-set")
        _compare_stream_now(q, model, lab_dir / "a.bin")  # U only grew; streams agree
        p.reset()
        p.compare_state("after reset")
        _compare_stream_now(q, model, lab_dir / "b.bin")


def _compare_stream_now(q, model: Machine, out: Path) -> None:
    q.migrate_to_file(out)
    model.migration.set_outgoing("completed")
    _compare_stream(out, model)


def test_reset_during_migration_like_qemu(qemu_bin, lab_dir):
    """§5.1 (verified): reset refused while the migration waits in pre-switchover."""
    from vmig.testing.qemu import Qemu

    args = ARGS["pc"]
    model = machine_from_argv(args)
    model.system_reset()
    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        p = Pair(q, model, ["vm0", "vm1"])
        p.qom_set("vm0", "requested-size", 128 << 20)  # U stays 1G (grown by the initial 900M)
        out = lab_dir / "pre.bin"
        assert q.hold_migration_before_switchover(out)["status"] == "pre-switchover"
        model.migration.set_outgoing("pre-switchover")
        p.reset()  # refused by both: nothing visible over QMP, U kept (seen in the stream)
        p.qom_set("vm1", "requested-size", 40 << 20)  # requested-size still settable while busy
        p.qom_set("vm1", "requested-size", 41 << 20)
        p.compare_state("reset during migration")
        q.qmp("migrate-continue", {"state": "pre-switchover"})
        assert q.wait_migration()["status"] == "completed"
        model.migration.set_outgoing("completed")
        import time

        time.sleep(0.3)  # let exec:cat flush
        _compare_stream(out, model)  # carries U = 0x40000000 with requested 128M (spec §5.1)
        assert model.devices[0].usable_region_size == 0x40000000
        p.reset()  # now accepted: U shrinks to the formula value
        assert model.devices[0].usable_region_size == 0x18000000
        p.compare_state("reset after migration")
        q.set_migration({"pause-before-switchover": False})
        _compare_stream_now(q, model, lab_dir / "post.bin")


BASE_BAD = "-machine pc-i440fx-7.2 -accel tcg -smp 1 -nodefaults -display none -S".split()
M4G = ["-m", "512M,maxmem=4G"]
MEM0 = ["-object", "memory-backend-ram,id=mem0,size=1G"]
BAD_CMDLINES = {
    "block-size not a power of 2": M4G + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0,block-size=3M"],
    "block-size too small": M4G + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0,block-size=512K"],
    "requested-size unaligned": M4G + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0,requested-size=3M"],
    "node without numa": M4G + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0,node=1"],
    "busy memdev": M4G + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0",
                                 "-device", "virtio-mem-pci,id=vm1,memdev=mem0"],
    "memaddr unaligned": M4G + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0,memaddr=0x100100000"],
    "backend size unaligned": M4G + ["-object", "memory-backend-ram,id=mem0,size=1025M",
                                     "-device", "virtio-mem-pci,id=vm0,memdev=mem0"],
    "no maxmem": ["-m", "512M"] + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0"],
    "not enough space": ["-m", "512M,maxmem=1G"] + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0"],
    "address conflict": M4G + MEM0 + ["-object", "memory-backend-ram,id=mem1,size=1G",
                                      "-device", "virtio-mem-pci,id=vm0,memdev=mem0",
                                      "-device", "virtio-mem-pci,id=vm1,memdev=mem1,memaddr=0x120000000"],
    "no memdev": M4G + ["-device", "virtio-mem-pci,id=vm0"],
    "vectors on 7.2": M4G + MEM0 + ["-device", "virtio-mem-pci,id=vm0,memdev=mem0,vectors=2"],
    # small sizes: mem-lock=on makes QEMU lock (populate) its RAM before the device fails
    "mlock": ["-m", "32M,maxmem=64M", "-object", "memory-backend-ram,id=mem0,size=16M",
              "-overcommit", "mem-lock=on", "-device", "virtio-mem-pci,id=vm0,memdev=mem0"],
}


@pytest.mark.parametrize("case", sorted(BAD_CMDLINES))
def test_realize_errors_like_qemu(case, qemu_bin, lab_dir):
    """The model refuses the same command lines with QEMU's message (found in QEMU's stderr)."""
    import subprocess

    from vmig.errors import DeviceError

    argv = BASE_BAD + BAD_CMDLINES[case]
    with pytest.raises(DeviceError) as e:
        machine_from_argv(argv)
    res = subprocess.run([qemu_bin, *argv], capture_output=True, text=True, timeout=60, cwd=lab_dir)
    assert res.returncode != 0
    assert str(e.value) in res.stderr, (case, res.stderr)


def test_realize_warnings_like_qemu(qemu_bin, lab_dir):
    """Realize warnings (block size below the default; 'off' without a shared zero page)."""
    from vmig.testing.qemu import Qemu

    args = BASE_BAD + M4G + [
        "-object", "memory-backend-ram,id=mem0,size=1G",
        "-device", "virtio-mem-pci,id=vm0,memdev=mem0,block-size=1M",
        "-object", "memory-backend-ram,id=mem1,size=1G,share=on",
        "-device", "virtio-mem-pci,id=vm1,memdev=mem1,unplugged-inaccessible=off",
    ]
    model = machine_from_argv(args)
    warnings = [w for d in model.devices for w in d.warnings]
    assert len(warnings) == 2
    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        assert model.qmp("query-memory-devices") == q.qmp("query-memory-devices")
        assert model.qom_get("vm1", "unplugged-inaccessible") == q.qmp(
            "qom-get", {"path": "vm1", "property": "unplugged-inaccessible"})
        stderr = q.stderr_text()
    for w in warnings:
        assert f"warning: {w}" in stderr, (w, stderr)


@pytest.mark.parametrize("change", [
    "requested-size=128M,memaddr=0x140000000",
    "requested-size=128M,block-size=4M",
])
def test_load_sanity_checks_like_qemu(change, qemu_bin, lab_dir, s1_path):
    """s1.bin loaded into a destination started differently: QEMU's and the model's refusal."""
    from vmig.device.sections import load_section
    from vmig.errors import MigrationError
    from vmig.testing.qemu import load_stream

    src_args = ("-machine pc-i440fx-7.2 -accel tcg -m 512M,maxmem=4G -smp 1 -nodefaults -display none "
                "-object memory-backend-ram,id=mem0,size=1G "
                "-device virtio-mem-pci,id=vm0,memdev=mem0,requested-size=128M").split()
    dst_args = [a.replace("requested-size=128M", change) for a in src_args]
    (sec,) = virtio_mem_sections(iter_events(str(s1_path)))
    with pytest.raises(MigrationError) as e:
        load_section(sec, machine_from_argv(dst_args).devices[0])
    res = load_stream(dst_args, s1_path, workdir=lab_dir, binary=qemu_bin)
    assert not res.ok
    qemu_lines = [ln.split(": ", 1)[1] if ln.startswith("qemu-system-x86_64: ") else ln
                  for ln in res.stderr.splitlines()]
    model_lines = str(e.value).splitlines()
    start = qemu_lines.index(model_lines[0])
    assert qemu_lines[start:start + len(model_lines)] == model_lines
    # and the matching destination loads it
    ok = load_stream(src_args, s1_path, workdir=lab_dir, binary=qemu_bin)
    assert ok.ok
    m = machine_from_argv(src_args)
    load_section(sec, m.devices[0])
    assert ok.memory_devices == m.query_memory_devices()


@pytest.mark.parametrize("cpu,maxmem", [
    ("qemu64,phys-bits=48", "1000G"),   # below the HyperTransport hole: base 0x140000000
    ("qemu64,phys-bits=48", "1010G"),   # AMD: RAM above 4G moves to 1 TiB
    ("Skylake-Client,phys-bits=48", "1010G"),  # Intel: no relocation
])
def test_device_memory_placement_near_1tib(cpu, maxmem, qemu_bin, lab_dir):
    from vmig.testing.qemu import Qemu

    args = ["-machine", "pc-i440fx-7.2", "-accel", "tcg", "-cpu", cpu, "-m", f"4G,maxmem={maxmem}",
            "-nodefaults", "-display", "none", "-S", "-object", "memory-backend-ram,id=mem0,size=1G",
            "-device", "virtio-mem-pci,id=vm0,memdev=mem0"]
    model = machine_from_argv(args)
    with Qemu(args, workdir=lab_dir, binary=qemu_bin) as q:
        assert model.qmp("query-memory-devices") == q.qmp("query-memory-devices")


def test_phys_bits_too_low_like_qemu(qemu_bin, lab_dir):
    import subprocess

    from vmig.errors import DeviceError

    argv = ["-machine", "pc-i440fx-7.2", "-accel", "tcg", "-m", "4G,maxmem=1010G", "-nodefaults",
            "-display", "none", "-S"]
    with pytest.raises(DeviceError) as e:
        machine_from_argv(argv)
    res = subprocess.run([qemu_bin, *argv], capture_output=True, text=True, timeout=60, cwd=lab_dir)
    assert res.returncode != 0 and str(e.value) in res.stderr
