"""Build a model :class:`~vmig.device.machine.Machine` from a QEMU command line.

Understands the subset of ``qemu-system-x86_64`` options that decide virtio-mem's behaviour:
``-machine``/``-M`` (type, ``memory-backend``), ``-m size[,slots=N][,maxmem=S]``,
``-numa node,...`` (counted), ``-object memory-backend-{ram,memfd,file},id=,size=[,share=]
[,prealloc=][,mem-path=]`` (a file backend on hugetlbfs has the mount's huge page size),
``-cpu model[,phys-bits=N][,vendor=...]`` (vendor and physical address bits only),
``-device virtio-mem-pci,...`` (id, bus, addr, memdev, node, memaddr, block-size,
requested-size, prealloc, unplugged-inaccessible, x-early-migration, dynamic-memslots,
vectors), other PCI ``-device`` entries (only the slot they take: ``bus=``, ``addr=``, PCIe root
ports adding their bus) after the machine's default VGA and NIC (``-nodefaults``, ``-vga``,
``-nic``/``-net``/``-netdev`` decide those), ``-overcommit mem-lock=on`` and ``-incoming``.
Everything else is ignored, so a
fixture's full ``argv`` can be handed over unchanged. Mirrors QEMU's option parsing only as far
as the values go (qemu_opts / keyval size suffixes); no I/O of its own (the page size of a
``mem-path`` comes from the ``mem_path_page_size`` callable, by default
:func:`vmig.device.hostmem.mem_path_page_size`, which asks the host as QEMU does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vmig.device.hostmem import mem_path_page_size as _host_mem_path_page_size
from vmig.device.machine import PCI_BRIDGES, Machine
from vmig.device.virtio_mem import HostInfo, VirtioMem
from vmig.errors import UsageError
from vmig.units import MiB, parse_size

__all__ = ["machine_from_argv", "split_opts"]


def split_opts(text: str, implied: str | None = None) -> dict[str, str]:
    """``a=1,b=2`` → dict (QemuOpts-style; a leading bare word goes to ``implied``)."""
    out: dict[str, str] = {}
    for i, part in enumerate(p for p in text.split(",") if p):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
        elif i == 0 and implied:
            out[implied] = part
        else:
            out[part] = "on"
    return out


def _bool(v: str) -> bool:
    if v in ("on", "true", "yes"):
        return True
    if v in ("off", "false", "no"):
        return False
    raise UsageError(f"not a boolean: {v!r}")


def _ram_size(v: str) -> int:
    # -m without a suffix means MiB
    return parse_size(v) * (MiB if v.strip().isdigit() else 1)


# CPU models whose vendor is AuthenticAMD under TCG (the default qemu64 is one, and so is
# ``max``: TCG's max CPU keeps qemu64's vendor; checked with QEMU 7.2).
_AMD_MODELS = ("qemu64", "qemu32", "phenom", "athlon", "Opteron", "EPYC", "max")


def _is_amd(cpu: dict[str, str]) -> bool:
    if "vendor" in cpu:
        return cpu["vendor"] == "AuthenticAMD"
    return cpu.get("model", "qemu64").startswith(_AMD_MODELS)


#: PCI devices whose driver name does not end in "-pci" (they take a PCI slot too)
PCI_DRIVERS = frozenset({
    "pcie-root-port", "ioh3420", "e1000", "e1000e", "rtl8139", "VGA", "qxl-vga", "virtio-vga",
    "bochs-display", "ich9-ahci", "qemu-xhci", "nec-usb-xhci", "piix3-usb-uhci", "ich9-usb-ehci1",
    "ich9-intel-hda", "intel-hda", "lsi53c895a", "megasas", "vfio-pci", "ivshmem-plain",
})


_VGA_DRIVERS = {"std": "VGA", "cirrus": "cirrus-vga", "virtio": "virtio-vga", "qxl": "qxl-vga",
                "vmware": "vmware-svga", "bochs": "bochs-display"}


def _is_pci(o: dict[str, str]) -> bool:
    """Whether a ``-device`` takes a PCI slot (so later automatic slots move on)."""
    driver = o.get("driver", "")
    return driver.endswith("-pci") or driver in PCI_DRIVERS or driver in PCI_BRIDGES


def machine_from_argv(
    argv: Sequence[str],
    *,
    qemu_version: str = "7.2",
    host: HostInfo | None = None,
    mem_path_page_size: Callable[[str], int | None] = _host_mem_path_page_size,
) -> Machine:
    """Create the machine, backends and virtio-mem devices an argv describes (in argv order).

    Args:
        argv: QEMU arguments (with or without the binary as first element).
        qemu_version: the binary's version (``"7.2"``, ``"10.0"``).
        host: host facts.
        mem_path_page_size: huge page size of a ``mem-path`` (None: not hugetlbfs, the host's
            base page size); called once per ``memory-backend-file`` with a ``mem-path``.

    Returns:
        The model machine; devices realized (a system reset is *not* run: call
        ``machine.system_reset()`` to mirror QEMU's start-up reset).

    Raises:
        DeviceError: QEMU would refuse the command line (its message).
        UsageError: an option the model cannot interpret.
    """
    args = list(argv)
    if args and not args[0].startswith("-"):
        args = args[1:]
    machine_type = "pc"
    ram = 128 * MiB
    maxmem: int | None = None
    slots = 0
    numa = 0
    mlock = False
    incoming = False
    cpu: dict[str, str] = {}
    objects: list[dict[str, str]] = []
    devices: list[dict[str, str]] = []
    nodefaults = False
    vga: str | None = None
    nics: list[str] = []  # NIC models created at machine init (-nic, -net nic)
    net_options = False
    max_below_4g: int | None = None
    busy_memdevs: list[str] = []  # backends mapped by the machine (main RAM, NUMA nodes)
    i = 0
    while i < len(args):
        opt = args[i].lstrip("-")
        val = args[i + 1] if i + 1 < len(args) else ""
        takes_value = opt not in ("S", "daemonize", "nodefaults", "no-user-config", "no-reboot",
                                  "no-shutdown", "enable-kvm", "nographic")
        if opt in ("machine", "M"):
            mo = split_opts(val, "type")
            machine_type = mo.get("type", machine_type)
            if "max-ram-below-4g" in mo:
                max_below_4g = parse_size(mo["max-ram-below-4g"])
            if "memory-backend" in mo:
                busy_memdevs.append(mo["memory-backend"])
        elif opt == "m":
            o = split_opts(val, "size")
            ram = _ram_size(o["size"])
            if "maxmem" in o:
                maxmem = _ram_size(o["maxmem"])
            slots = int(o.get("slots", 0))
        elif opt == "numa":
            no = split_opts(val, "type")
            if no.get("type") == "node":
                numa += 1
                if "memdev" in no:
                    busy_memdevs.append(no["memdev"])
        elif opt == "object":
            o = split_opts(val, "qom-type")
            if o.get("qom-type", "").startswith("memory-backend-"):
                objects.append(o)
        elif opt == "device":
            o = split_opts(val, "driver")
            if o.get("driver") == "virtio-mem-pci" or _is_pci(o):
                devices.append(o)
        elif opt == "cpu":
            cpu = split_opts(val, "model")
        elif opt == "nodefaults":
            nodefaults = True
        elif opt == "vga":
            vga = val
        elif opt in ("nic", "net", "netdev"):
            net_options = True
            o = split_opts(val, "type")
            if opt == "nic" and o.get("type") != "none":
                nics.append(o.get("model", ""))
            elif opt == "net" and o.get("type") == "nic":
                nics.append(o.get("model", ""))
        elif opt == "overcommit":
            mlock = split_opts(val).get("mem-lock") == "on"
        elif opt == "incoming":
            incoming = True
        i += 2 if takes_value else 1
    h = host or HostInfo()
    if mlock:
        h = HostInfo(h.page_size, h.thp_size, True, h.discard_disabled, h.wakeup_suspend, h.acpi)
    m = Machine(machine_type, ram, maxmem, slots=slots, numa_nodes=numa, qemu_version=qemu_version,
                host=h, incoming=incoming, amd_cpu=_is_amd(cpu), phys_bits=int(cpu.get("phys-bits", 40)),
                max_ram_below_4g=max_below_4g)
    for o in objects:
        kind = o["qom-type"].removeprefix("memory-backend-")
        page_size = h.page_size
        if kind == "file" and "mem-path" in o:
            page_size = mem_path_page_size(o["mem-path"]) or h.page_size
        m.add_backend(
            o["id"], parse_size(o["size"]), kind=kind, share=_bool(o.get("share", "off")),
            prealloc=_bool(o.get("prealloc", "off")), page_size=page_size,
        )
        if o["id"] in busy_memdevs:
            m.backends[o["id"]].mapped = True
    # machine init creates the default VGA and NICs before any -device (QEMU 7.2, checked)
    if (vga if vga is not None else ("none" if nodefaults else "std")) != "none":
        m.pci_add(_VGA_DRIVERS.get(vga or "std", "VGA"))
    if not nodefaults and not net_options:
        nics.append("")
    for model in nics:
        m.pci_add(model or ("e1000" if m.pci_root == "pci.0" else "e1000e"))
    for d in devices:
        if d.get("driver") != "virtio-mem-pci":  # other PCI devices only take their slot
            m.pci_add(d["driver"], d.get("id"), bus=d.get("bus"), addr=d.get("addr"))
            continue
        bs = d.get("block-size")
        if bs is not None:
            VirtioMem.check_block_size_property(parse_size(bs), m.behaviour)
        m.device_add(
            d.get("memdev"),
            d.get("id"),
            node=int(d.get("node", 0)),
            memaddr=parse_size(d.get("memaddr", "0")),
            block_size=parse_size(bs) if bs else 0,
            requested_size=parse_size(d.get("requested-size", "0")),
            prealloc=_bool(d.get("prealloc", "off")),
            unplugged_inaccessible=d.get("unplugged-inaccessible"),
            early_migration=_bool(d["x-early-migration"]) if "x-early-migration" in d else None,
            dynamic_memslots=_bool(d.get("dynamic-memslots", "off")),
            vectors=int(d["vectors"]) if "vectors" in d else None,
            bus=d.get("bus"),
            addr=d.get("addr"),
        )
    return m
