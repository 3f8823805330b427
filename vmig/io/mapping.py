"""A regular input file mapped read-only, with its page tables warmed on a second core.

Why: every 4 KiB page of a RAM-heavy stream holds a record header, so a walk over a mapped
capture touches every page of the file. On a page-cache-resident 1 GB capture, filling the
process's page tables (page faults, or ``MADV_POPULATE_READ``) costs ~0.1 s of CPU, about as
much as the rest of the walk. A :class:`MappedFile` hands that work to a helper thread:

1. the warmer populates the page tables ``ahead`` bytes past the consumer's position, one
   window at a time, with ``madvise(MADV_POPULATE_READ)`` called through ctypes (which releases
   the GIL, so it runs truly in parallel with the decoder);
2. behind the consumer (minus ``lag`` bytes, for consumers that work behind the decoder) it
   drops the page-table entries again (``MADV_DONTNEED``; views stay valid and fault pages back
   in from the page cache), so the resident set stays bounded on multi-GB files;
3. the mapping can be opened before the heavy imports of a command (``vmig.cli`` does this for
   STREAM arguments, :func:`open_early`), so the warming overlaps with Python start-up;
   :func:`adopt` hands the early mapping to the first reader of that file.

Nothing here changes what is read: without ctypes, on kernels before 5.14 (no
``MADV_POPULATE_READ``), or with ``VMIG_WARM=0``, the warmer does nothing and pages fault in on
access as for any mapping. This module is light (no numpy, no construct) so the CLI can import
it first.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from typing import Any

__all__ = ["MappedFile", "open_early", "adopt", "close_early"]

WINDOW = 16 << 20  # populate granularity (each call re-takes the GIL: few, large calls)
AHEAD = 64 << 20  # populate at most this far past the consumer (bounds the resident set)
DROP_WINDOW = 32 << 20  # drop behind the consumer once this much has accumulated
_POPULATE_READ = 22  # MADV_POPULATE_READ (Linux 5.14+); not exported by Python's mmap module
_DONTNEED = 4  # MADV_DONTNEED


class _Libc:
    """``madvise`` on raw addresses through ctypes (the GIL is released during the call)."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        self.madvise = ctypes.CDLL(None, use_errno=True).madvise
        self.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        self.madvise.restype = ctypes.c_int

    def buffer_address(self, obj: Any) -> int:
        """Start address of a (read-only) buffer object, via the C buffer protocol."""
        ctypes = self.ctypes

        class PyBuffer(ctypes.Structure):
            _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                        ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                        ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                        ("format", ctypes.c_void_p), ("shape", ctypes.c_void_p),
                        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                        ("internal", ctypes.c_void_p)]

        view = PyBuffer()
        api = ctypes.pythonapi
        api.PyObject_GetBuffer.argtypes = (ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int)
        api.PyBuffer_Release.argtypes = (ctypes.POINTER(PyBuffer),)
        if api.PyObject_GetBuffer(obj, ctypes.byref(view), 0) != 0:
            raise OSError("no buffer")
        try:
            return int(view.buf or 0)
        finally:
            api.PyBuffer_Release(ctypes.byref(view))


class MappedFile:
    """``path`` mapped read-only (``view``), with an optional page-table warmer thread.

    Args:
        fd: an open descriptor of a regular, non-empty file (the instance owns it from now on).
        st: its ``os.fstat``.
        path: its name (for messages).
        warm: start the warmer thread.
    """

    def __init__(self, fd: int, st: os.stat_result, path: str, *, warm: bool = True) -> None:
        self.path = path
        self.key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.size = st.st_size
        try:
            self.mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.lag = 0
        self._pos = 0  # consumer position (bytes before it were consumed)
        self._dropped = 0  # page-table entries before this offset were dropped
        self._stop = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if warm and os.environ.get("VMIG_WARM", "1") != "0":
            try:
                libc = _Libc()
                base = libc.buffer_address(self.mmap)
            except (ImportError, OSError, AttributeError):
                return  # no ctypes here: pages fault in on access
            if base:
                self._thread = threading.Thread(target=self._warm, args=(libc, base),
                                                name="vmig-warm", daemon=True)
                self._thread.start()

    @classmethod
    def open(cls, path: str, *, warm: bool = True) -> MappedFile | None:
        """Map ``path`` if it is a non-empty regular file, else None (OSError if unopenable)."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            os.close(fd)
            return None
        return cls(fd, st, path, warm=warm)

    def consumed(self, offset: int) -> None:
        """The consumer is done with the bytes before ``offset`` (cheap; called per event)."""
        if offset - self._pos < WINDOW:
            return
        if self._thread is None:  # no warmer: drop behind on the caller's thread
            self._pos = offset
            end = offset - self.lag
            end -= end % mmap.PAGESIZE
            if end - self._dropped >= DROP_WINDOW:
                try:
                    self.mmap.madvise(mmap.MADV_DONTNEED, self._dropped, end - self._dropped)
                except (OSError, ValueError, AttributeError):
                    self._dropped = self.size  # not supported here: stop trying
                else:
                    self._dropped = end
            return
        with self._cond:
            self._pos = offset
            self._cond.notify()

    def _warm(self, libc: _Libc, base: int) -> None:
        size = self.size
        ahead = dropped = 0
        cond = self._cond
        # (the consumer reports progress every WINDOW bytes; see consumed())
        while True:
            with cond:
                while not self._stop and (ahead >= size or ahead >= self._pos + AHEAD) and \
                        self._pos - self.lag - dropped < DROP_WINDOW:
                    cond.wait()
                if self._stop:
                    return
                pos = self._pos - self.lag
            if pos - dropped >= DROP_WINDOW:
                end = pos - pos % mmap.PAGESIZE
                libc.madvise(base + dropped, end - dropped, _DONTNEED)
                dropped = end
            ahead = max(ahead, dropped, pos + self.lag)  # never populate what was consumed
            if ahead < size and ahead < pos + self.lag + AHEAD:
                n = min(WINDOW, size - ahead)
                if libc.madvise(base + ahead, n, _POPULATE_READ) != 0:
                    ahead = size  # not supported (old kernel) or a hole: stop populating
                else:
                    ahead += n

    def close(self) -> None:
        """Stop the warmer, then unmap (views still alive keep the mapping; see mmap.close)."""
        t = self._thread
        if t is not None:
            with self._cond:
                self._stop = True
                self._cond.notify()
            t.join()
            self._thread = None
        try:
            self.mmap.close()
        except BufferError:
            pass  # views into the mapping are still alive; it goes with them
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_early: dict[tuple, MappedFile] = {}
_early_lock = threading.Lock()


def open_early(path: str) -> None:
    """Map ``path`` now and start warming it, for a reader that will :func:`adopt` it later.

    Best effort: a path that is not a readable regular file is ignored (the reader reports it).
    """
    if path == "-" or path.endswith(".lz4"):
        return
    try:
        st = os.stat(path)  # never open a FIFO here: its writer would meet an early close
        if not stat.S_ISREG(st.st_mode):
            return
        mf = MappedFile.open(path)
    except (OSError, ValueError):
        return
    if mf is None:
        return
    with _early_lock:
        old = _early.pop(mf.key, None)
        _early[mf.key] = mf
    if old is not None:
        old.close()


def adopt(fd: int) -> MappedFile | None:
    """The early mapping of the file open as ``fd`` (same device, inode, size and mtime), if
    any; it is removed from the early set (the caller now owns and closes it)."""
    if not _early:
        return None
    st = os.fstat(fd)
    with _early_lock:
        return _early.pop((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), None)


def close_early() -> None:
    """Close early mappings nobody adopted (the CLI calls this when a command ends)."""
    with _early_lock:
        left = list(_early.values())
        _early.clear()
    for mf in left:
        mf.close()
