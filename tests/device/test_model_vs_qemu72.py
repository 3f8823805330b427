"""Device model vs. real QEMU 7.2: command lines where the two used to differ.

Each case runs QEMU 7.2 itself (``-S``, TCG) and the model on the same command line and compares
either the refusal (QEMU's error line, exact) or the placed devices (``query-memory-devices``)
and QEMU's warning lines: ``-cpu max`` is AMD under TCG (the HyperTransport-hole relocation),
``max-ram-below-4g``, a memdev already mapped by ``-numa node,memdev=``, an alignment above the
expected maximum (a warning, the device is placed), the messages for a missing memdev without
maxmem, an unknown memdev, a duplicate id, an anonymous device in an address conflict, and
``qom-set`` of the ``memdev`` link after realize.
"""

from __future__ import annotations

import subprocess

import pytest

from vmig.device.cmdline import machine_from_argv
from vmig.device.machine import QmpError
from vmig.errors import DeviceError

pytestmark = pytest.mark.qemu

BASE = ["-machine", "pc-i440fx-7.2", "-accel", "tcg", "-nodefaults", "-display", "none", "-S"]
R1G = ["-object", "memory-backend-ram,id=m,size=1G"]
R1G2 = R1G + ["-object", "memory-backend-ram,id=n,size=1G"]

REFUSED = {
    "numa-busy-memdev": ["-m", "512M,maxmem=4G", "-object", "memory-backend-ram,id=r0,size=512M",
                         "-numa", "node,memdev=r0", "-device", "virtio-mem-pci,id=vm0,memdev=r0"],
    "no-memdev-no-maxmem": ["-m", "512M", "-device", "virtio-mem-pci,id=vm0"],
    "unknown-memdev": ["-m", "512M,maxmem=4G", "-device", "virtio-mem-pci,id=vm0,memdev=nope"],
    "duplicate-id": ["-m", "512M,maxmem=4G", *R1G2, "-device", "virtio-mem-pci,id=vm0,memdev=m",
                     "-device", "virtio-mem-pci,id=vm0,memdev=n"],
    "conflict-with-unnamed": ["-m", "512M,maxmem=8G", *R1G2,
                              "-device", "virtio-mem-pci,memdev=m,memaddr=0x140000000",
                              "-device", "virtio-mem-pci,id=vm1,memdev=n,memaddr=0x140000000"],
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_have_qemus_exact_line(case, qemu_bin, lab_dir):
    argv = BASE + REFUSED[case]
    res = subprocess.run([qemu_bin, *argv], capture_output=True, text=True, timeout=60, cwd=lab_dir)
    assert res.returncode != 0
    qemu_line = res.stderr.strip().splitlines()[-1].split(": ", 2)[-1]
    with pytest.raises(DeviceError) as e:
        machine_from_argv(argv)
    assert str(e.value) == qemu_line, (case, res.stderr)


PLACED = {
    "alignment-above-expected": ["-m", "512M,maxmem=20G", "-object", "memory-backend-ram,id=m,size=8G",
                                 "-device", "virtio-mem-pci,id=vm0,memdev=m,block-size=8G"],
    "pc-max-ram-below-4g": ["-machine", "pc-i440fx-7.2,max-ram-below-4g=1G", "-m", "3G,maxmem=8G", *R1G,
                            "-device", "virtio-mem-pci,id=vm0,memdev=m"],
    "q35-max-ram-below-4g": ["-machine", "pc-q35-7.2,max-ram-below-4g=1G", "-m", "3G,maxmem=8G", *R1G,
                             "-device", "virtio-mem-pci,id=vm0,memdev=m"],
    "cpu-max-is-amd": ["-cpu", "max,phys-bits=42", "-m", "4G,maxmem=1010G", *R1G,
                       "-device", "virtio-mem-pci,id=vm0,memdev=m"],
}


@pytest.mark.parametrize("case", sorted(PLACED))
def test_placement_and_warnings_like_qemu(case, qemu_bin, lab_dir):
    from vmig.testing.qemu import Qemu

    argv = BASE + PLACED[case]
    model = machine_from_argv(argv)
    with Qemu(argv, workdir=lab_dir, binary=qemu_bin) as q:
        assert model.qmp("query-memory-devices") == q.qmp("query-memory-devices")
        warnings = [ln.split("warning: ", 1)[1] for ln in q.stderr_text().splitlines() if "warning: " in ln]
    assert model.warnings == warnings
    if case == "cpu-max-is-amd":
        assert model.devices[0].addr >= 1 << 40  # moved above the HyperTransport hole


def test_qom_set_memdev_after_realize_like_qemu(qemu_bin, lab_dir):
    from vmig.testing.qemu import Qemu, QmpCommandError

    argv = BASE + ["-m", "512M,maxmem=4G", *R1G2, "-device", "virtio-mem-pci,id=vm0,memdev=m"]
    model = machine_from_argv(argv)
    with Qemu(argv, workdir=lab_dir, binary=qemu_bin) as q:
        with pytest.raises(QmpCommandError) as real:
            q.qmp("qom-set", {"path": "vm0", "property": "memdev", "value": "/objects/n"})
    with pytest.raises(QmpError) as ours:
        model.qom_set("vm0", "memdev", "/objects/n")
    assert str(ours.value) == real.value.desc
