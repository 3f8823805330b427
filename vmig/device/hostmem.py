"""Page size of a file-backed memory backend, read from the host the way QEMU reads it.

A ``memory-backend-file,mem-path=PATH`` RAMBlock gets the page size of the file system that holds
PATH: on hugetlbfs (``statfs`` ``f_type`` ``HUGETLBFS_MAGIC``) the mount's huge page size
(``f_bsize``), anywhere else the host base page size. This mirrors QEMU's
``qemu_fd_getpagesize()`` (util/mmap-alloc.c), which ``file_ram_alloc()`` applies to the file it
opens or creates: PATH itself when it exists, else a new file in PATH's folder.

The only module of ``vmig.device`` that does I/O; :func:`vmig.device.cmdline.machine_from_argv`
takes it as its default page-size source.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from vmig.errors import DeviceError

__all__ = ["HUGETLBFS_MAGIC", "mem_path_page_size"]

#: ``f_type`` of a hugetlbfs mount (linux/magic.h)
HUGETLBFS_MAGIC = 0x958458F6

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class _StatFs(ctypes.Structure):
    # struct statfs (64-bit Linux): f_type, f_bsize come first, both __fsword_t (long)
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("_rest", ctypes.c_byte * 104)]


def _statfs(path: str) -> tuple[int, int]:
    buf = _StatFs()
    while True:
        if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) == 0:
            return buf.f_type & 0xFFFFFFFF, buf.f_bsize
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err), path)


def mem_path_page_size(mem_path: str) -> int | None:
    """The huge page size of ``mem_path``'s hugetlbfs mount; None off hugetlbfs (base pages).

    Raises:
        DeviceError: neither ``mem_path`` nor its folder exists (QEMU cannot create the file).
    """
    target = mem_path if os.path.exists(mem_path) else (os.path.dirname(mem_path) or ".")
    try:
        f_type, f_bsize = _statfs(target)
    except OSError as e:
        raise DeviceError(f"mem-path {mem_path}: {e.strerror}") from None
    if f_type == HUGETLBFS_MAGIC:
        return f_bsize
    return None
