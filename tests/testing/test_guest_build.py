"""The guests the lab boots: the plugging Linux initramfs and the tiny page-dirtying multiboot image."""

from __future__ import annotations

import gzip
import struct

import pytest

from vmig.testing.guest import dirty_guest_image, guest_kernel_initrd

MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "virtio_mem"]


def _cpio_newc(data: bytes) -> dict[str, bytes]:
    """name -> content of a ``cpio -H newc`` archive (110-byte ASCII headers, 4-byte alignment)."""
    out: dict[str, bytes] = {}
    off = 0
    while True:
        hdr = data[off:off + 110]
        assert hdr[:6] == b"070701", f"bad newc magic at {off}"
        fsize, nsize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = data[off + 110:off + 110 + nsize - 1].decode()
        off = (off + 110 + nsize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = data[off:off + fsize]
        off = (off + fsize + 3) & ~3


@pytest.mark.qemu
def test_initramfs_has_busybox_modules_and_init(qemu_bin: str) -> None:
    kernel, initrd = guest_kernel_initrd()
    assert kernel.read_bytes()[0x202:0x206] == b"HdrS"  # Linux x86 boot protocol header
    files = _cpio_newc(gzip.decompress(initrd.read_bytes()))
    for m in MODULES:
        assert files[f"lib/modules/{m}.ko"][:4] == b"\x7fELF"
    assert files["bin/busybox"][:4] == b"\x7fELF"
    init = files["init"].decode()
    assert init.startswith("#!/bin/sh")
    assert "VMIG-READY" in init and "online_movable" in init and "vmig.dirty" in init
    # inserted with insmod in dependency order (the kernel package ships no modules.dep)
    assert "for m in " + " ".join(MODULES) + "; do" in init
    assert "insmod /lib/modules/$m.ko" in init


def test_dirty_guest_is_a_valid_multiboot_aout_image() -> None:
    img = dirty_guest_image().read_bytes()
    magic, flags, checksum, header, load, load_end, bss_end, entry = struct.unpack_from("<8I", img)
    assert magic == 0x1BADB002 and flags & 0x10000
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert header == load and entry == load + 32 and load_end == 0 and bss_end == 0
    assert img[32] == 0xFA  # cli: no IDT, interrupts stay off
