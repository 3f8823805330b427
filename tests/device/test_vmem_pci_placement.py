"""PCI placement of virtio-mem-pci in the machine model against QEMU 7.2: automatic slots after
other PCI devices and after the machine's default VGA/NIC, ``addr=`` (slot and function), PCIe
root ports on q35, and a taken slot.
The oracle is the migration stream QEMU writes: the device's section idstr and its RAMBlock
idstr both start with the PCI dev-path."""

from __future__ import annotations

import pytest

from vmig.device.cmdline import machine_from_argv
from vmig.errors import DeviceError
from vmig.io.streams import iter_events
from vmig.testing.qemu import Qemu, QemuLabError

BASE = ["-accel", "tcg", "-m", "512M,maxmem=4G", "-smp", "1", "-display", "none",
        "-S", "-object", "memory-backend-ram,id=mem0,size=1G"]
VMEM = "virtio-mem-pci,id=vm0,memdev=mem0,requested-size=128M"

ND = "-nodefaults"
CASES = {
    "after-another-device": ["-machine", "pc", ND, "-device", "virtio-rng-pci", "-device", VMEM],
    "addr": ["-machine", "pc", ND, "-device", VMEM + ",addr=0x5"],
    "addr-function": ["-machine", "pc", ND, "-device", VMEM + ",addr=0x6.0x3"],
    "explicit-then-auto": ["-machine", "pc", ND, "-device", "virtio-rng-pci,addr=0x2", "-device", VMEM],
    "q35-auto": ["-machine", "q35", ND, "-device", "virtio-rng-pci", "-device", VMEM],
    "q35-root-port": ["-machine", "q35", ND, "-device",
                      "pcie-root-port,id=rp0,chassis=1,slot=1,bus=pcie.0,addr=0x4",
                      "-device", VMEM + ",bus=rp0"],
    # the machine's default VGA and NIC come first (no -nodefaults)
    "pc-defaults": ["-machine", "pc", "-device", VMEM],
    "q35-defaults": ["-machine", "q35", "-device", VMEM],
    "pc-vga-none": ["-machine", "pc", "-vga", "none", "-device", VMEM],
    "pc-net-none": ["-machine", "pc", "-net", "none", "-device", VMEM],
    "pc-netdev": ["-machine", "pc", "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
                  "-device", VMEM],
    "pc-nic-model": ["-machine", "pc", "-nic", "user,model=virtio-net-pci", "-device", VMEM],
    "pc-nodefaults-vga": ["-machine", "pc", ND, "-vga", "std", "-device", VMEM],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_pci_path_is_qemus(qemu_bin, lab_dir, name):
    argv = CASES[name][:2] + BASE + CASES[name][2:]
    model = machine_from_argv(argv)
    path = model.pci_path(model.devices[0])
    q = Qemu(argv, workdir=lab_dir)
    q.start()
    try:
        q.migrate_to_file(lab_dir / "s.bin")
    finally:
        q.stop()
    sections, blocks = set(), []
    for ev in iter_events(str(lab_dir / "s.bin"), schema_sets=True):
        if type(ev).__name__ == "SectionHeader" and ev.idstr.endswith("/virtio-mem"):
            sections.add(ev.idstr)
        if type(ev).__name__ == "RamRecords" and ev.batch.mem_size:
            blocks = [b.idstr for b in ev.batch.mem_size if b.idstr.endswith("/mem0")]
    assert sections == {f"{path}/virtio-mem"} and blocks == [f"{path}/mem0"]


def test_taken_slot_fails_with_qemus_message(qemu_bin, lab_dir):
    argv = ["-machine", "pc"] + BASE + [ND, "-device", "virtio-rng-pci", "-device", VMEM + ",addr=0x2"]
    with pytest.raises(DeviceError) as ei:
        machine_from_argv(argv)
    q = Qemu(argv, workdir=lab_dir)
    with pytest.raises(QemuLabError):
        q.start()
    q.stop()
    line = q.stderr_text().strip().splitlines()[-1]
    assert line.endswith(": " + str(ei.value))
    assert str(ei.value) == "PCI: slot 2 function 0 not available for virtio-mem-pci, in use by virtio-rng-pci,id=(null)"


def test_a_bus_behind_a_bridge_is_refused_by_name():
    argv = ["-machine", "pc"] + BASE + [ND, "-device", "pci-bridge,id=br0,chassis_nr=1",
                                        "-device", VMEM + ",bus=br0"]
    from vmig.errors import UsageError

    with pytest.raises(UsageError, match="bus 'br0' \\(pci-bridge\\)"):
        machine_from_argv(argv)
