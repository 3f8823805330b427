"""Memory-device placement, monitor output and the seed walkthrough (spec §7, QEMU's commit).

Expected values: spec/virtio-mem.md §7 (verified on QEMU 7.2) and the walkthrough in the
commit message that introduced virtio-mem (QEMU 910b25766b, 5.1) — copied from that message,
with its one-space indentation removed.
"""

from __future__ import annotations

import pytest

from vmig.cli import main
from vmig.cli.demo import seed_transcript
from vmig.device.machine import Machine, QmpError
from vmig.errors import DeviceError
from vmig.units import GiB, MiB, parse_size

SEED_BLOCK_1 = """\
Memory device [virtio-mem]: "vm0"
  memaddr: 0x140000000
  node: 0
  requested-size: 0
  size: 0
  max-size: 8589934592
  block-size: 2097152
  memdev: /objects/mem0
Memory device [virtio-mem]: "vm1"
  memaddr: 0x340000000
  node: 1
  requested-size: 1073741824
  size: 1073741824
  max-size: 8589934592
  block-size: 2097152
  memdev: /objects/mem1
"""

SEED_BLOCK_2 = """\
Memory device [virtio-mem]: "vm0"
  memaddr: 0x140000000
  node: 0
  requested-size: 524288000
  size: 524288000
  max-size: 8589934592
  block-size: 2097152
  memdev: /objects/mem0
Memory device [virtio-mem]: "vm1"
  memaddr: 0x340000000
  node: 1
  requested-size: 209715200
  size: 209715200
  max-size: 8589934592
  block-size: 2097152
  memdev: /objects/mem1
"""


def test_seed_transcript_has_both_blocks_exactly():
    out = seed_transcript()
    first, rest = out.split("(qemu) qom-set vm0 requested-size 500M\n")
    assert first == "(qemu) info memory-devices\n" + SEED_BLOCK_1
    assert rest == (
        "(qemu) qom-set vm1 requested-size 200M\n(qemu) info memory-devices\n" + SEED_BLOCK_2
    )


def test_vmig_demo_seed_cli(capsys):
    assert main(["demo", "seed"]) == 0
    out = capsys.readouterr().out
    assert SEED_BLOCK_1 in out and SEED_BLOCK_2 in out
    assert out.index(SEED_BLOCK_1) < out.index(SEED_BLOCK_2)


def seed_machine(machine: str) -> Machine:
    m = Machine(machine, 4 * GiB, 20 * GiB, numa_nodes=2)
    m.add_backend("mem0", 8 * GiB)
    m.add_backend("mem1", 8 * GiB)
    m.device_add("mem0", "vm0", node=0)
    m.device_add("mem1", "vm1", node=1, requested_size=GiB)
    return m


@pytest.mark.parametrize("machine,a0,a1", [("pc", 0x140000000, 0x340000000), ("q35", 0x180000000, 0x380000000)])
def test_worked_example_addresses(machine, a0, a1):
    m = seed_machine(machine)
    assert [d["data"]["memaddr"] for d in m.query_memory_devices()] == [a0, a1]


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_small_ram_base(machine):
    m = Machine(machine, 512 * MiB, 4 * GiB)
    m.add_backend("mem0", GiB)
    assert m.device_add("mem0", "vm0").addr == 0x100000000


def test_q35_two_devices_alignment():
    m = Machine("q35", 512 * MiB, 4 * GiB)
    m.add_backend("mem0", GiB)
    m.add_backend("mem1", 2 * GiB)
    assert m.device_add("mem0", "a").addr == 0x100000000
    assert m.device_add("mem1", "b", block_size=4 * MiB).addr == 0x140000000


def test_device_memory_region_size():
    assert Machine("pc", 4 * GiB, 20 * GiB).device_memory_size == 16 * GiB
    assert Machine("pc", 4 * GiB, 20 * GiB, slots=2).device_memory_size == 18 * GiB


def test_preplug_errors_verified():
    m = Machine("pc", 512 * MiB)
    m.add_backend("mem0", GiB)
    with pytest.raises(DeviceError) as e:
        m.device_add("mem0", "vm0")
    assert str(e.value) == (
        "memory devices (e.g. for memory hotplug) are not enabled, please specify the maxmem option"
    )
    m = Machine("pc", 512 * MiB, 1 * GiB)
    m.add_backend("mem0", GiB)
    with pytest.raises(DeviceError) as e:
        m.device_add("mem0", "vm0")
    assert str(e.value) == "not enough space, currently 0x0 in use of total space for memory devices 0x20000000"
    m = Machine("pc", 512 * MiB, 4 * GiB)
    m.add_backend("mem0", GiB)
    with pytest.raises(DeviceError, match=r"^address must be aligned to 0x200000 bytes$"):
        m.device_add("mem0", "vm0", memaddr=0x100100000)
    m.add_backend("odd", GiB + MiB)
    with pytest.raises(DeviceError, match=r"^backend memory size must be multiple of 0x200000$"):
        m.device_add("odd", "vm1")


def test_explicit_address_conflict():
    m = Machine("pc", 512 * MiB, 4 * GiB)
    m.add_backend("mem0", GiB)
    m.add_backend("mem1", GiB)
    m.device_add("mem0", "vm0")
    with pytest.raises(DeviceError, match=r"^address range conflicts with memory device id='vm0'$"):
        m.device_add("mem1", "vm1", memaddr=0x100000000 + 512 * MiB)
    assert m.device_add("mem1", "vm1", memaddr=0x100000000 + GiB).addr == 0x140000000


def test_hole_is_reused_first_fit():
    m = Machine("pc", 512 * MiB, 8 * GiB)
    for i in range(3):
        m.add_backend(f"m{i}", GiB)
    m.device_add("m0", "a", memaddr=0x100000000 + GiB)
    assert m.device_add("m1", "b").addr == 0x100000000  # the hole before "a"
    assert m.device_add("m2", "c").addr == 0x100000000 + 2 * GiB


def test_query_and_hmp_format_anonymous():
    # observed on QEMU 7.2: no "id" key for an anonymous device and "" in HMP
    m = Machine("q35", 512 * MiB, 4 * GiB)
    m.add_backend("mem1", 2 * GiB)
    d = m.device_add("mem1", None, block_size=4 * MiB)
    assert m.query_memory_devices() == [{"type": "virtio-mem", "data": {
        "memdev": "/objects/mem1", "memaddr": 4294967296, "block-size": 4194304, "size": 0,
        "node": 0, "max-size": 2147483648, "requested-size": 0}}]
    assert m.hmp("info memory-devices").startswith('Memory device [virtio-mem]: ""\n  memaddr: 0x100000000\n')
    assert d.qom_path == "/machine/peripheral-anon/device[0]"


def test_qom_errors_as_qemu_7_2():
    """Messages observed from QEMU 7.2 QMP/HMP (see the real-QEMU scenario test)."""
    m = Machine("q35", 512 * MiB, 4 * GiB)
    m.add_backend("mem0", GiB)
    m.device_add("mem0", "vm0", requested_size=128 * MiB)
    cases = [
        (("vm0", "memaddr", 0), "Attempt to set property 'memaddr' on anonymous device (type 'virtio-mem') after it was realized"),
        (("vm0", "size", 0), "Property 'virtio-mem.size' is not writable"),
        (("vm0", "block-size", 2 * MiB), "'block-size' cannot be changed"),
        (("vm0", "foo", 0), "Property 'virtio-mem-pci.foo' not found"),
        (("vmx", "requested-size", 0), "Device 'vmx' not found"),
        (("vm0", "requested-size", -1), "'requested-size' has to be multiples of 'block-size' (0x200000)"),
        (("vm0", "requested-size", 2**64), "Parameter 'requested-size' expects uint64"),
        (("vm0", "requested-size", "500M"), "Parameter 'requested-size' expects uint64"),
    ]
    for args, msg in cases:
        with pytest.raises(QmpError) as e:
            m.qom_set(*args)
        assert e.value.desc == msg
    assert m.qom_get("vm0", "unplugged-inaccessible") == "off"
    assert m.qom_get("vm0", "memdev") == "/objects/mem0"
    assert m.hmp("qom-set vm0 requested-size 2G") == (
        "Error: 'requested-size' cannot exceed the memory backend size(0x40000000)\n"
    )
    assert m.hmp("qom-set vm0 requested-size 1.5M") == (
        "Error: 'requested-size' has to be multiples of 'block-size' (0x200000)\n"
    )
    assert m.hmp("qom-set vm0 requested-size foo").startswith(
        "Error: Parameter 'requested-size' expects a non-negative number below 2^64\n"
    )
    assert m.hmp("qom-get vm0 requested-size") == "134217728\n"


def test_parse_size():
    assert parse_size("500M") == 524288000
    assert parse_size("1G") == GiB
    assert parse_size("1.5M") == 1572864
    assert parse_size("4096") == 4096


def test_amd_1tib_relocation_and_phys_bits():
    """Observed on QEMU 7.2 (pc, -m 4G): maxmem 1000G → 0x140000000; 1010G → relocated to 1 TiB
    on AMD vCPUs (0x10040000000 with phys-bits=48), not on Intel; with 40 phys-bits QEMU exits."""
    def addr(maxmem, **kw):
        m = Machine("pc", 4 * GiB, maxmem * GiB, **kw)
        m.add_backend("mem0", GiB)
        return m.device_add("mem0", "vm0").addr

    assert addr(1000, phys_bits=48) == 0x140000000
    assert addr(1010, phys_bits=48) == 0x10040000000
    assert addr(1010, phys_bits=48, amd_cpu=False) == 0x140000000
    with pytest.raises(DeviceError) as e:
        Machine("pc", 4 * GiB, 1010 * GiB)
    assert str(e.value) == "Address space limit 0xffffffffff < 0x1fc3fffffff phys-bits too low (40)"


@pytest.mark.parametrize(("huge", "block_size"), [
    (1 * GiB, 1 * GiB),    # hugetlbfs page above 1 MiB: the page size (QEMU 7.2, default_block_size)
    (None, 2 * MiB),       # not hugetlbfs: base pages, the THP size
])
def test_mem_path_page_size_decides_default_block_size(huge, block_size):
    from vmig.device.cmdline import machine_from_argv

    seen: list[str] = []

    def page_size_of(path: str) -> int | None:
        seen.append(path)
        return huge

    m = machine_from_argv(["-m", "1G,maxmem=8G", "-object", "memory-backend-file,id=f,size=2G,mem-path=/hp",
                           "-device", "virtio-mem-pci,id=vm0,memdev=f"], mem_path_page_size=page_size_of)
    dev = m.devices[0]
    assert seen == ["/hp"]
    assert dev.block_size == block_size
    assert m.ram_block_page_size(dev) == (huge or 4096)
    if huge:
        with pytest.raises(DeviceError, match=r"at least the page size \(0x40000000\)"):
            machine_from_argv(["-m", "1G,maxmem=8G", "-object", "memory-backend-file,id=f,size=2G,mem-path=/hp",
                               "-device", "virtio-mem-pci,id=vm0,memdev=f,block-size=512M"],
                              mem_path_page_size=page_size_of)
