"""Outputs written so that a failure leaves nothing behind and a success is complete.

Every command that writes files goes through this module:

* :class:`AtomicFile` — one output file: written under a temporary name in the target's folder,
  every write checked (a short ``os.write`` is continued, never ignored), ``fsync``-ed, then
  renamed onto the target. A symlink at the target is replaced, never followed; a directory at
  the target, or the target being one of the inputs, is refused before anything is written.
* :class:`StagedDir` — a folder of outputs (``extract``): built in a temporary folder and
  published at once. A missing or empty DIR is replaced by the finished folder with one
  ``rename``; into a DIR that already holds files, every move is checked first (no symlink in
  the way, no file where a folder goes and no folder where a file goes) and only then performed,
  so a conflict publishes nothing.
* :func:`write_all` / :func:`pwrite_all` — loops that finish short writes.
* :class:`EarlyWriteback` — starts the kernel's writeback of large outputs while they are
  still being written, so the sync before publishing waits only for the last part.

Any failure (``OSError`` such as ENOSPC, EIO, EMFILE, or Ctrl-C) removes the temporary file or
folder and is re-raised with the output's name attached (``OSError.filename``), so the CLI can
print one line naming it.

Theory of operation:

1. The temporary name is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the target's own
   folder (same file system: the final ``rename`` is atomic and cannot fail with EXDEV).
2. Nothing is renamed into place before every byte is written and synced.
3. Clean-up runs on every exception, ``KeyboardInterrupt`` included (``BaseException``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable
from types import TracebackType

from vmig.errors import UsageError

__all__ = [
    "AtomicFile",
    "StagedDir",
    "write_all",
    "pwrite_all",
    "refuse_output",
    "same_file",
    "fsync_tree",
    "EarlyWriteback",
    "WRITEBACK_BYTES",
]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``, continuing after short writes."""
    mv = memoryview(data).cast("B")
    while mv:
        n = os.write(fd, mv)
        if n <= 0:  # pragma: no cover - a regular file never returns 0 for a non-empty write
            raise OSError(errno.EIO, "write returned 0")
        mv = mv[n:]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, pos: int) -> None:
    """Write all of ``data`` at offset ``pos`` of ``fd``, continuing after short writes."""
    mv = memoryview(data).cast("B")
    while mv:
        n = os.pwrite(fd, mv, pos)
        if n <= 0:  # pragma: no cover
            raise OSError(errno.EIO, "pwrite returned 0")
        mv = mv[n:]
        pos += n


#: bytes written to one file after which :class:`EarlyWriteback` starts their writeback
WRITEBACK_BYTES = 32 << 20


class EarlyWriteback:
    """Per-file accounting of written ranges; every :data:`WRITEBACK_BYTES` it asks the kernel
    to start writing the range out (``posix_fadvise(POSIX_FADV_DONTNEED)``: on Linux this starts
    writeback of the dirty pages without waiting, and drops the pages already clean). Writing
    to disk then overlaps with decoding, and the page cache holds little of a multi-GB output.
    Durability still comes from the ``fsync`` before publishing. Not thread-safe: call it from
    the thread that writes.
    """

    def __init__(self, threshold: int = WRITEBACK_BYTES) -> None:
        self.threshold = threshold
        self._ranges: dict[int, list[int]] = {}  # fd -> [low, high, bytes since the last start]
        self.enabled = hasattr(os, "posix_fadvise")

    def wrote(self, fd: int, pos: int, n: int) -> None:
        """``n`` bytes were written to ``fd`` at ``pos``."""
        if not self.enabled or n <= 0:
            return
        r = self._ranges.get(fd)
        if r is None:
            r = self._ranges[fd] = [pos, pos + n, 0]
        else:
            r[0], r[1] = min(r[0], pos), max(r[1], pos + n)
        r[2] += n
        if r[2] >= self.threshold:
            self._start(fd, r)

    def _start(self, fd: int, r: list[int]) -> None:
        with contextlib.suppress(OSError):  # advice only: durability comes from the fsync
            os.posix_fadvise(fd, r[0], r[1] - r[0], os.POSIX_FADV_DONTNEED)
        del self._ranges[fd]

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed: start what is pending and drop its accounting."""
        r = self._ranges.get(fd)
        if r is not None:
            self._start(fd, r)


def same_file(a: str, b: str) -> bool:
    """True when paths ``a`` and ``b`` name the same file (``-`` is never a file)."""
    if a == "-" or b == "-":
        return False
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_output(path: str, inputs: Iterable[str] = (), *, what: str = "output") -> None:
    """Refuse an output file ``path`` that is a directory or one of ``inputs``.

    Raises:
        UsageError: with the path and the reason.
    """
    for inp in inputs:
        if inp is not None and same_file(inp, path):
            raise UsageError(f"{path}: the {what} is the input {inp}; give another name")
    try:
        st = os.stat(path)  # follows a link: a link to a folder is refused like the folder
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a directory; the {what} must be a file name")


def _with_name(e: OSError, name: str) -> OSError:
    if e.filename is None:
        e.filename = name
    return e


def _temp_name(directory: str, prefix: str) -> str:
    return os.path.join(directory, f".{prefix}-{secrets.token_hex(6)}")


class AtomicFile:
    """A file written under a temporary name and renamed onto ``path`` on success.

    Use as a context manager: the body writes through :meth:`write` (or the descriptor
    :attr:`fd`); a clean exit syncs and publishes, an exception removes the temporary file.

    Args:
        path: the target file name.
        inputs: paths that must not be the target (e.g. the command's input).
        mode: permission bits before the umask.

    Raises:
        UsageError: ``path`` is a directory or one of ``inputs``.
        OSError: creating, writing or renaming failed (``filename`` = ``path``).
    """

    def __init__(self, path: str, *, inputs: Iterable[str] = (), mode: int = 0o666) -> None:
        refuse_output(path, inputs)
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        base = os.path.basename(path) or "out"
        self.tmp = _temp_name(self.directory, f"{base[:40]}.vmig")
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | getattr(os, "O_CLOEXEC", 0), mode)
        except OSError as e:
            raise _with_name(e, path) from None
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of ``data`` (returns its length; file-object protocol)."""
        try:
            write_all(self.fd, data)
        except OSError as e:
            raise _with_name(e, self.path) from None
        return len(memoryview(data).cast("B"))

    def flush(self) -> None:  # file-object protocol: writes are unbuffered
        return None

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._done

    def commit(self) -> None:
        """fsync, close and rename onto the target (replacing a file or a symlink there)."""
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            refuse_output(self.path)  # a folder may have appeared meanwhile
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise _with_name(e, self.path) from None
        except BaseException:
            self.abort()
            raise
        self._done = True
        _fsync_dir(self.directory)

    def abort(self) -> None:
        """Remove the temporary file (idempotent)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        self._done = True

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.commit()
        else:
            self.abort()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the data itself was synced
    finally:
        os.close(fd)


def _syncfs(path: str) -> bool:
    """``syncfs(2)`` on the file system holding ``path`` (Linux): one call instead of one fsync
    per file for a folder of many files. False when not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)
    return True


def fsync_tree(root: str) -> None:
    """Make every file and folder under ``root`` durable: ``syncfs`` of its file system where
    available, else fsync of each regular file and folder (symlinks are not followed)."""
    if _syncfs(root):
        return
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue
                raise
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


class StagedDir:
    """A folder of outputs built under a temporary name and published into ``out_dir`` at once.

    Attributes:
        path: the temporary folder to write into (inside ``out_dir``, or beside it when
            ``out_dir`` does not exist yet).

    Raises:
        UsageError: ``out_dir`` exists and is not a folder, or is one of ``inputs``.
    """

    def __init__(self, out_dir: str, *, inputs: Iterable[str] = ()) -> None:
        self.out_dir = out_dir
        for inp in inputs:
            if inp is not None and same_file(inp, out_dir):
                raise UsageError(f"{out_dir}: the output folder is the input {inp}")
        try:
            st = os.stat(out_dir)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise UsageError(f"{out_dir}: cannot use as output directory: {e.strerror}") from e
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{out_dir}: exists and is not a directory")
        try:
            if st is None or not os.listdir(out_dir):
                # a new (or empty) DIR: build beside it, publish with one rename
                parent = os.path.dirname(os.path.abspath(out_dir))
                os.makedirs(parent, exist_ok=True)
                self.replace_whole = True
                self.path = _temp_name(parent, f"{os.path.basename(os.path.abspath(out_dir))[:40]}.vmig")
            else:
                self.replace_whole = False
                self.path = _temp_name(out_dir, "vmig-extract")
            os.mkdir(self.path, 0o755)
        except OSError as e:
            raise UsageError(f"{out_dir}: cannot create output directory: {e.strerror}") from e

    def publish(self) -> None:
        """Sync the staged files and move them into ``out_dir`` (all of them, or none)."""
        try:
            fsync_tree(self.path)
            if self.replace_whole:
                try:
                    os.rename(self.path, self.out_dir)  # atomic; replaces an empty folder
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    # DIR got entries meanwhile: fall back to the checked merge
                    inner = _temp_name(self.out_dir, "vmig-extract")
                    os.rename(self.path, inner)
                    self.path = inner
                    self._merge()
                else:
                    _fsync_dir(os.path.dirname(os.path.abspath(self.out_dir)))
                    return
            else:
                self._merge()
        except OSError as e:
            self.abort()
            raise _with_name(e, self.out_dir) from None
        except BaseException:
            self.abort()
            raise

    def _merge(self) -> None:
        moves: list[tuple[str, str]] = []
        _plan(self.path, self.out_dir, moves)  # raises before anything moves
        for src, dst in moves:
            os.replace(src, dst)
        shutil.rmtree(self.path, ignore_errors=True)
        _fsync_dir(self.out_dir)

    def abort(self) -> None:
        """Remove the staged folder (idempotent)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.publish()
            return
        self.abort()
        if isinstance(ev, OSError):
            _with_name(ev, self.out_dir)  # e.g. ENOSPC from a write into the staged folder


def _plan(src: str, dst: str, moves: list[tuple[str, str]]) -> None:
    """The renames that merge folder ``src`` into existing folder ``dst``; refuses a symlink in
    the way and a file/folder where the other kind goes."""
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        s_dir = os.path.isdir(s) and not os.path.islink(s)
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            moves.append((s, d))
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{d}: a symbolic link is in the way of the output; remove it")
        if s_dir:
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"{d}: exists and is not a directory")
            _plan(s, d, moves)
        elif stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{d}: exists as a directory")
        else:
            moves.append((s, d))
