"""Real-QEMU driver for tests, captures and oracle checks.

Covers: finding the ``qemu-system-x86_64`` binary (and failing, not skipping, under CI when it is
missing), starting a QEMU process with a QMP socket (optionally inside a chroot, with the work
folders bind-mounted), talking QMP/HMP synchronously, migrating a VM into a file
(``exec:cat > FILE``), loading a stream back into a fresh QEMU (``-incoming defer`` +
``migrate-incoming``). The QEMU 10.0 chroot is built by :mod:`vmig.testing.trixie`; the guests
come from :mod:`vmig.testing.guest`.

Mirrors QEMU's QMP interface (``qapi/migration.json``: ``migrate``, ``migrate-incoming``,
``query-migrate``, ``migrate-set-capabilities``/``-parameters``; ``qapi/machine.json``:
``query-memory-devices``) and the facts in ``docs``/``spec/lab-notes.md``. QMP itself goes through
QEMU's own ``qemu.qmp.QMPClient`` (asyncio); this module runs a private event loop per ``Qemu`` so
callers stay synchronous.

Theory of operation:
  1. Every path handed to QEMU (socket, ``exec:cat`` files, serial log) is absolute, so a
     chroot'ed QEMU that sees the work folder at the same absolute path resolves them identically.
  2. A ``Qemu`` owns its process, its QMP client and its event loop; ``stop()`` releases all three
     and is idempotent, so ``with Qemu(...)`` never leaks a process.
  3. A failed incoming migration makes QEMU exit; ``load_stream`` turns that into
     ``LoadResult(ok=False, stderr=...)`` instead of an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vmig.errors import VmigError
from vmig.records import field, record

__all__ = [
    "QemuLabError",
    "QmpCommandError",
    "Qemu",
    "LoadResult",
    "find_qemu",
    "require_qemu",
    "qemu_version",
    "load_stream",
    "wait_for_text",
    "started",
    "dump_json",
    "CACHE_DIR",
    "REPO_ROOT",
    "is_mountpoint",
    "wait_file_stable",
]

DEFAULT_BINARY = "qemu-system-x86_64"
CACHE_DIR = Path(os.environ.get("VMIG_CACHE", str(Path.home() / ".cache" / "vmig")))
REPO_ROOT = Path(__file__).resolve().parents[2]

_FINAL_MIGRATION_STATES = frozenset({"completed", "failed", "cancelled"})
# sun_path is 108 bytes on Linux; keep a margin for the NUL and odd filesystems.
_MAX_SOCKET_PATH = 100


class QemuLabError(VmigError):
    """The lab could not drive QEMU (it died, timed out, or refused a command)."""


class QmpCommandError(QemuLabError):
    """A QMP command returned an error reply.

    Attributes:
        command: the QMP command name.
        error_class: QEMU's error class (e.g. ``GenericError``).
        desc: QEMU's error description.
    """

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command} failed: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


# --------------------------------------------------------------------------- binary discovery


def find_qemu(binary: str = DEFAULT_BINARY) -> str | None:
    """Return the absolute path of the QEMU binary, or ``None`` if it is not installed.

    Env ``VMIG_QEMU`` overrides the binary name/path.
    """
    wanted = os.environ.get("VMIG_QEMU", binary)
    if os.path.isabs(wanted):
        return wanted if os.access(wanted, os.X_OK) else None
    return shutil.which(wanted)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_qemu(binary: str = DEFAULT_BINARY) -> str:
    """Return the QEMU binary path, or end the current test.

    Under ``CI=true`` a missing QEMU FAILS the test (``pytest.fail``); elsewhere it skips.
    """
    found = find_qemu(binary)
    if found is not None:
        return found
    import pytest  # lazily: this module is also used outside pytest (capture script)

    msg = f"{binary} not found (install qemu-system-x86 or run scripts/test)"
    if _in_ci():
        pytest.fail(f"CI=true and {msg}", pytrace=False)
    pytest.skip(msg)
    raise AssertionError("unreachable")  # pragma: no cover - pytest.skip raises


def qemu_version(binary: str = DEFAULT_BINARY, *, chroot: Path | None = None) -> str:
    """Return the first line of ``qemu-system-x86_64 --version`` (e.g. ``QEMU emulator version 7.2.22 ...``)."""
    argv = [binary, "--version"]
    if chroot is not None:
        argv = ["chroot", str(chroot), *argv]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout
    return out.splitlines()[0].strip() if out else ""


# --------------------------------------------------------------------------- chroot bind mounts


def is_mountpoint(path: Path) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 4 and parts[4].replace("\\040", " ") == target:
                    return True
    except OSError:
        return False
    return False


class _ChrootMounts:
    """Bind-mounts ``/proc``, ``/dev``, ``/sys`` and work folders into a chroot.

    Mounts are reference-counted per target path across all ``Qemu`` objects of this process, so
    two chroot'ed QEMUs sharing a folder (a postcopy pair) keep it until the last one stops;
    mounts that existed before (made by someone else) are never undone.
    """

    _refs: dict[str, int] = {}
    _lock = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self._held: list[str] = []

    def bind(self, src: Path) -> None:
        src = Path(os.path.realpath(src))
        dst = str(self.root) + str(src)
        with self._lock:
            if dst in self._refs:
                self._refs[dst] += 1
                self._held.append(dst)
                return
            if is_mountpoint(Path(dst)):
                return  # not ours: leave it alone
            Path(dst).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(src), dst], check=True, capture_output=True)
            self._refs[dst] = 1
            self._held.append(dst)

    def setup(self, extra: list[Path]) -> None:
        # /sys too: virtio-mem's default block-size is the host THP size, read from
        # /sys/kernel/mm/transparent_hugepage/hpage_pmd_size; without /sys QEMU falls back to
        # 1 MiB and the device no longer matches one created outside the chroot (2 MiB).
        for p in [Path("/proc"), Path("/dev"), Path("/sys"), *extra]:
            self.bind(p)

    def teardown(self) -> None:
        with self._lock:
            while self._held:
                dst = self._held.pop()
                self._refs[dst] -= 1
                if self._refs[dst] > 0:
                    continue
                del self._refs[dst]
                res = subprocess.run(["umount", dst], capture_output=True)
                if res.returncode != 0:
                    subprocess.run(["umount", "-l", dst], capture_output=True)


# --------------------------------------------------------------------------- the QEMU process


class Qemu:
    """One QEMU process with a QMP connection (context manager).

    Args:
        args: the command line without the binary and without ``-qmp`` (e.g. ``["-machine", "pc",
            "-accel", "tcg", "-m", "512M", ...]``).
        workdir: folder for the QMP socket, stderr log and temporary files (made absolute).
        binary: QEMU binary name or path (inside the chroot when ``chroot`` is given).
        chroot: run ``chroot CHROOT binary ...`` with ``/proc``, ``/dev``, ``/sys`` and ``workdir``
            bind-mounted at the same absolute paths (QEMU 10.0 from the trixie chroot).
        incoming: value for ``-incoming`` (e.g. ``"defer"`` or ``"tcp:127.0.0.1:4444"``).
        extra_binds: further host folders to bind-mount into the chroot.

    Attributes:
        argv: the full command line (after ``start()``; computed eagerly).
        process: the ``subprocess.Popen`` once started.
    """

    _counter = 0

    def __init__(
        self,
        args: list[str],
        *,
        workdir: Path,
        binary: str = DEFAULT_BINARY,
        chroot: Path | None = None,
        incoming: str | None = None,
        extra_binds: list[Path] | None = None,
    ) -> None:
        self.args = list(args)
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.chroot = Path(chroot).resolve() if chroot is not None else None
        self.incoming = incoming
        self.extra_binds = [Path(p) for p in (extra_binds or [])]
        Qemu._counter += 1
        tag = f"{os.getpid()}-{Qemu._counter}"
        self._sock_dir_tmp: Path | None = None
        sock = self.workdir / f"qmp-{tag}.sock"
        if len(str(sock)) > _MAX_SOCKET_PATH:
            self._sock_dir_tmp = Path(tempfile.mkdtemp(prefix="vmig-q"))
            sock = self._sock_dir_tmp / "qmp.sock"
        self.socket_path = sock
        self.stderr_path = self.workdir / f"qemu-{tag}.stderr"
        self.stdout_path = self.workdir / f"qemu-{tag}.stdout"
        self.process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._mounts: _ChrootMounts | None = None
        self.argv: list[str] = self._build_argv()

    # -- command line
    def _build_argv(self) -> list[str]:
        argv = [self.binary, *self.args]
        if self.incoming is not None:
            argv += ["-incoming", self.incoming]
        argv += ["-qmp", f"unix:{self.socket_path},server=on,wait=off"]
        if self.chroot is not None:
            argv = ["chroot", str(self.chroot), *argv]
        return argv

    # -- lifecycle
    def __enter__(self) -> Qemu:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, connect_timeout: float = 30.0) -> Qemu:
        """Launch QEMU and connect QMP.

        Raises:
            QemuLabError: QEMU exited before QMP answered, or the socket never appeared.
        """
        if self.process is not None:
            raise QemuLabError("Qemu.start() called twice")
        if self.chroot is not None:
            self._mounts = _ChrootMounts(self.chroot)
            binds = [self.workdir, *self.extra_binds]
            if self._sock_dir_tmp is not None:
                binds.append(self._sock_dir_tmp)
            self._mounts.setup(binds)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.workdir
            )
        self._loop = asyncio.new_event_loop()
        try:
            self._connect(connect_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self, timeout: float) -> None:
        from qemu.qmp import QMPClient

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise QemuLabError(
                    f"QEMU exited with {self.process.returncode} before QMP connected: "
                    f"{self.stderr_text().strip()}"
                )
            if self.socket_path.exists():
                async def _go() -> Any:
                    client = QMPClient(f"vmig-{self.socket_path.name}")
                    await client.connect(str(self.socket_path))
                    return client

                try:
                    self._client = self._run(_go())
                    return
                except Exception as e:  # socket present but not yet accepting
                    last = e
            time.sleep(0.05)
        raise QemuLabError(f"QMP socket {self.socket_path} not ready after {timeout}s: {last}")

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        if timeout is not None:
            coro = asyncio.wait_for(coro, timeout)
        return self._loop.run_until_complete(coro)

    @property
    def running(self) -> bool:
        """True while the QEMU process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Quit QEMU (QMP ``quit``, then SIGTERM, then SIGKILL), close QMP, unmount; idempotent.

        Returns:
            QEMU's exit code, or ``None`` if it was never started.
        """
        if self._client is not None and self.running:
            with contextlib.suppress(Exception):
                self._run(self._client.execute("quit"), timeout=5)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._run(self._client.disconnect(), timeout=5)
            self._client = None
        rc: int | None = None
        if self.process is not None:
            try:
                rc = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    rc = self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    rc = self.process.wait()
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.close()
            self._loop = None
        if self._mounts is not None:
            self._mounts.teardown()
            self._mounts = None
        with contextlib.suppress(OSError):
            self.socket_path.unlink()
        if self._sock_dir_tmp is not None:
            shutil.rmtree(self._sock_dir_tmp, ignore_errors=True)
            self._sock_dir_tmp = None
        return rc

    def stderr_text(self) -> str:
        """Everything QEMU wrote to stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- monitor
    def qmp(self, cmd: str, args: Mapping[str, Any] | None = None, *, timeout: float = 60.0) -> Any:
        """Execute one QMP command and return its ``return`` value.

        Raises:
            QmpCommandError: QEMU answered with an error.
            QemuLabError: not connected, the connection dropped, or timeout.
        """
        from qemu.qmp import ExecuteError

        if self._client is None:
            raise QemuLabError(f"QMP {cmd}: not connected")
        try:
            return self._run(self._client.execute(cmd, dict(args) if args else None), timeout=timeout)
        except ExecuteError as e:
            raise QmpCommandError(cmd, e.error_class, str(e)) from e
        except TimeoutError as e:
            raise QemuLabError(f"QMP {cmd}: no answer after {timeout}s") from e
        except Exception as e:
            raise QemuLabError(
                f"QMP {cmd} failed ({type(e).__name__}: {e}); qemu running={self.running}; "
                f"stderr: {self.stderr_text().strip()[-500:]}"
            ) from e

    def hmp(self, cmdline: str) -> str:
        """Run an HMP command through ``human-monitor-command`` and return its text output."""
        return str(self.qmp("human-monitor-command", {"command-line": cmdline}))

    # -- migration
    def set_migration(self, capabilities: Mapping[str, bool] | None = None,
                      parameters: Mapping[str, Any] | None = None) -> None:
        """Set migration capabilities (``{name: bool}``) and parameters (``{name: value}``)."""
        if capabilities:
            self.qmp("migrate-set-capabilities", {"capabilities": [
                {"capability": k, "state": bool(v)} for k, v in capabilities.items()]})
        if parameters:
            self.qmp("migrate-set-parameters", dict(parameters))

    def wait_migration(self, timeout: float = 120.0, *, poll: float = 0.05,
                       until: frozenset[str] = _FINAL_MIGRATION_STATES) -> dict:
        """Poll ``query-migrate`` until its status is in ``until`` (default completed/failed/cancelled).

        Raises:
            QemuLabError: timeout, or QEMU went away.
        """
        deadline = time.monotonic() + timeout
        info: dict = {}
        while True:
            info = self.qmp("query-migrate")
            if info.get("status") in until:
                return info
            if time.monotonic() > deadline:
                raise QemuLabError(f"migration not finished after {timeout}s: {info}")
            time.sleep(poll)

    def migrate_to_file(self, path: Path | str, capabilities: Mapping[str, bool] | None = None,
                        parameters: Mapping[str, Any] | None = None, timeout: float = 120.0) -> dict:
        """Migrate this VM into ``path`` via ``exec:cat > ABS`` and return the final ``query-migrate``.

        Raises:
            QemuLabError: the migration failed or timed out.
        """
        abspath = Path(path).resolve()
        self.set_migration(capabilities, parameters)
        self.qmp("migrate", {"uri": f"exec:cat > {shlex.quote(str(abspath))}"})
        info = self.wait_migration(timeout)
        if info.get("status") != "completed":
            raise QemuLabError(f"migration to {abspath} ended {info.get('status')}: {info}")
        # exec: the child cat may still be flushing when the status flips; wait for the file to settle
        wait_file_stable(abspath)
        return info

    def hold_migration_before_switchover(self, path: Path | str, timeout: float = 120.0) -> dict:
        """Start a migration into ``path`` and hold it in ``pre-switchover`` (the outgoing
        migration is active, so devices are "busy"); ``migrate-continue`` with state
        ``pre-switchover`` (or :meth:`wait_migration` after it) finishes it.

        Returns:
            the ``query-migrate`` answer in ``pre-switchover``.

        Raises:
            QemuLabError: the migration ended or failed instead of pausing.
        """
        abspath = Path(path).resolve()
        self.set_migration({"pause-before-switchover": True})
        self.qmp("migrate", {"uri": f"exec:cat > {shlex.quote(str(abspath))}"})
        info = self.wait_migration(timeout, until=frozenset({"pre-switchover", "failed", "completed"}))
        if info.get("status") != "pre-switchover":
            raise QemuLabError(f"migration to {abspath} did not pause before switchover: {info}")
        return info

    # -- virtio-mem / guest helpers
    def memory_devices(self) -> list:
        """``query-memory-devices``."""
        return list(self.qmp("query-memory-devices"))

    def read_memory(self, gpa: int, size: int) -> bytes:
        """``size`` bytes of guest-physical memory at ``gpa`` (QMP ``pmemsave`` into workdir,
        which a chroot'ed QEMU sees at the same path)."""
        out = self.workdir / f"pmem-{gpa:x}-{size:x}.bin"
        self.qmp("pmemsave", {"val": gpa, "size": size, "filename": str(out)})
        try:
            return out.read_bytes()
        finally:
            out.unlink(missing_ok=True)

    def resize_virtio_mem(self, dev_id: str, requested: int, timeout: float = 60.0) -> dict:
        """``qom-set`` the device's ``requested-size`` and wait until its ``size`` equals it.

        Returns:
            the device's ``query-memory-devices`` ``data`` dict once it reached the size.
        """
        self.qmp("qom-set", {"path": dev_id, "property": "requested-size", "value": int(requested)})
        deadline = time.monotonic() + timeout
        while True:
            for d in self.memory_devices():
                if d.get("data", {}).get("id") == dev_id:
                    data = d["data"]
                    if data.get("size") == requested:
                        return data
            if time.monotonic() > deadline:
                raise QemuLabError(f"{dev_id} did not reach size {requested} in {timeout}s: "
                                   f"{self.memory_devices()}")
            time.sleep(0.1)


def wait_file_stable(path: Path, settle: float = 0.2, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        if size == last and size >= 0:
            return
        last = size
        time.sleep(settle)


def wait_for_text(path: Path, text: str, timeout: float = 120.0, *, proc: Qemu | None = None) -> str:
    """Wait until file ``path`` (e.g. a serial log) contains ``text``; return the file's content.

    Raises:
        QemuLabError: timeout, or ``proc`` died meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if proc is not None and not proc.running:
            raise QemuLabError(f"QEMU exited while waiting for {text!r}: {proc.stderr_text()}")
        if time.monotonic() > deadline:
            raise QemuLabError(f"{text!r} not seen in {path} after {timeout}s; tail: {content[-800:]}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- loading a stream


@record
class LoadResult:
    """What happened when a stream was loaded into a fresh QEMU.

    Attributes:
        ok: the incoming migration completed.
        status: the last ``query-migrate`` answer seen (``None`` if QEMU died before answering).
        stderr: QEMU's stderr (its error message when the load failed).
        memory_devices: ``query-memory-devices`` after a successful load (else ``[]``).
        hmp_memory_devices: HMP ``info memory-devices`` text after a successful load (else ``""``).
        argv: the destination's full command line.
        returncode: QEMU's exit code if it exited by itself during the load.
    """

    ok: bool
    status: dict | None
    stderr: str
    memory_devices: list = field(default_factory=list)
    hmp_memory_devices: str = ""
    argv: list[str] = field(default_factory=list)
    returncode: int | None = None
    inspected: Any = None


def load_stream(
    args: list[str],
    stream: Path | bytes,
    *,
    workdir: Path,
    postcopy: bool = False,
    binary: str = DEFAULT_BINARY,
    timeout: float = 120.0,
    chroot: Path | None = None,
    inspect: Callable[[Qemu], Any] | None = None,
) -> LoadResult:
    """Load ``stream`` into a fresh QEMU started with ``args`` + ``-S -incoming defer``.

    Args:
        args: the source VM's command line (without binary/``-qmp``; ``-S`` is added if absent).
        stream: a stream file or its bytes (written to a temp file under ``workdir``).
        postcopy: enable the ``postcopy-ram`` capability first (needed for postcopy streams).
        inspect: called with the running :class:`Qemu` after a completed load (e.g. to
            ``pmemsave`` guest memory); its return value is ``LoadResult.inspected``.

    Returns:
        ``LoadResult``; a load QEMU rejected gives ``ok=False`` with its stderr, never an exception.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    if isinstance(stream, (bytes, bytearray, memoryview)):
        fd, name = tempfile.mkstemp(prefix="incoming-", suffix=".bin", dir=workdir)
        with os.fdopen(fd, "wb") as fh:
            fh.write(stream)
        tmp = src = Path(name)
    else:
        src = Path(stream).resolve()
    dest_args = list(args)
    if "-S" not in dest_args:
        dest_args.append("-S")
    binds = [] if chroot is None or src.is_relative_to(workdir) else [src.parent]
    q = Qemu(dest_args, workdir=workdir, binary=binary, chroot=chroot, incoming="defer",
             extra_binds=binds)
    status: dict | None = None
    try:
        try:
            q.start()
        except QemuLabError:
            rc = q.process.poll() if q.process is not None else None
            return LoadResult(False, None, q.stderr_text(), argv=q.argv, returncode=rc)
        try:
            if postcopy:
                q.set_migration({"postcopy-ram": True})
            q.qmp("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(src))}"})
            deadline = time.monotonic() + timeout
            while True:
                status = q.qmp("query-migrate")
                if status.get("status") in _FINAL_MIGRATION_STATES:
                    break
                if time.monotonic() > deadline:
                    raise QemuLabError(f"load of {src} not finished after {timeout}s: {status}")
                time.sleep(0.05)
        except QmpCommandError:
            raise
        except QemuLabError:
            # QEMU exits on a failed incoming migration (the QMP connection drops first, the
            # process follows): that is a result, not an error.
            rc = None
            if q.process is not None:
                try:
                    rc = q.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    raise
            if rc is None:
                raise
            return LoadResult(False, status, q.stderr_text(), argv=q.argv, returncode=rc)
        ok = status.get("status") == "completed"
        mem = q.memory_devices() if ok else []
        hmp = q.hmp("info memory-devices") if ok else ""
        seen = inspect(q) if ok and inspect is not None else None
        return LoadResult(ok, status, q.stderr_text(), mem, hmp, argv=q.argv, inspected=seen)
    finally:
        q.stop()
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def started(args: list[str], **kw: Any) -> Iterator[Qemu]:
    """``with started(args, workdir=...) as q:`` — shorthand for ``with Qemu(...) as q``."""
    with Qemu(args, **kw) as q:
        yield q


def dump_json(obj: Any) -> str:
    """Stable JSON text for manifests (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"
