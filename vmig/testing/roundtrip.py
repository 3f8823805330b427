"""Helpers for round-trip migration tests: byte-exact codec checks, memory devices, loads into QEMU.

Edits of device state are :mod:`vmig.analysis.edit`'s.

What it covers:

* :func:`assert_roundtrip` — decode → encode must give the input back byte for byte; a mismatch
  names the first differing offset and the top-level record that holds it
  (:func:`describe_mismatch` does the reporting and is usable on any two byte strings);
* :func:`memory_devices` — ``query-memory-devices`` as the stream shows it (:mod:`vmig.analysis.virtio_mem`);
* :func:`assert_loads_in_qemu` — loads a stream into a real QEMU
  (:func:`vmig.testing.qemu.load_stream`) and fails with QEMU's stderr when QEMU refuses it.

Mirrors QEMU's migration/savevm.c (section framing) and the loads of a real QEMU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vmig.analysis.edit import Description
from vmig.analysis.edit import as_description as _as_description
from vmig.io.streams import records
from vmig.stream import events as ev
from vmig.stream.encoder import encode

__all__ = [
    "assert_roundtrip",
    "describe_mismatch",
    "decode_stream",
    "memory_devices",
    "assert_loads_in_qemu",
]

def decode_stream(data: bytes, *, description: Description = None) -> list[ev.Event]:
    """Decode a complete stream into events (ending with ``StreamEnd``).

    Sections are measured with the stream's own trailer, then ``description`` (a
    :class:`VmDescription` or raw trailer JSON, e.g. from another capture of the same VM), then
    the bundled machine schema sets — so trailer-less and postcopy streams decode too.
    """
    from vmig.io.decoding import decode_bytes

    return decode_bytes(data, description=_as_description(description), name=None)


# --------------------------------------------------------------------------- round trip


def _first_difference(a: bytes | memoryview, b: bytes | memoryview) -> int | None:
    """Offset of the first byte where ``a`` and ``b`` differ (length difference counts), or None."""
    n = min(len(a), len(b))
    x = np.frombuffer(a, dtype=np.uint8, count=n)
    y = np.frombuffer(b, dtype=np.uint8, count=n)
    diff = np.flatnonzero(x != y)
    if len(diff):
        return int(diff[0])
    return None if len(a) == len(b) else n


def describe_mismatch(expected: bytes, actual: bytes, events: Iterable[ev.Event],
                      *, description: str | None = None) -> str | None:
    """Explain where ``actual`` first differs from ``expected``, or None when they are equal.

    Args:
        expected: the original stream.
        actual: the bytes that should equal it (e.g. the re-encoded stream).
        events: the decoded events of ``expected`` (locate the top-level record).
        description: a label prefixed to the message (e.g. the fixture name).

    Returns:
        ``"… first difference at byte offset N (expected 0x.., got 0x..) in <type> record
        idstr=… at offset O"``.
    """
    off = _first_difference(expected, actual)
    if off is None:
        return None
    exp = f"0x{expected[off]:02x}" if off < len(expected) else "end of stream"
    got = f"0x{actual[off]:02x}" if off < len(actual) else "end of stream"
    where = "outside every decoded record"
    for rec in records([e for e in events if not isinstance(e, ev.StreamEnd)]):
        if rec.offset <= off < rec.offset + rec.length or (
            off == len(expected) and rec.offset + rec.length == off
        ):
            where = (f"in {rec.type} record idstr={rec.idstr!r} instance={rec.instance_id} "
                     f"section_id={rec.section_id} at offset {rec.offset} (length {rec.length})")
            break
    label = f"{description}: " if description else ""
    return (f"{label}round trip differs: {len(expected)} bytes in, {len(actual)} out; first "
            f"difference at byte offset {off} (expected {exp}, got {got}) {where}")


def assert_roundtrip(data: bytes, *, description: Description = None) -> list[ev.Event]:
    """Decode ``data`` and re-encode it; the bytes must be identical.

    Args:
        data: a complete stream.
        description: trailer JSON to measure sections with when the stream has none
            (``suppress-vmdesc``, postcopy); see :func:`decode_stream`.

    Returns:
        The decoded events (ending with ``StreamEnd``), for further assertions.

    Raises:
        AssertionError: the re-encoded bytes differ (message from :func:`describe_mismatch`).
    """
    events = decode_stream(data, description=description)
    out = encode(events)
    if out != data:
        msg = describe_mismatch(data, out, events)
        raise AssertionError(msg or "round trip differs")
    return events


# --------------------------------------------------------------------------- reports and loads


def memory_devices(data: bytes, *, ids: Mapping[str, str] | None = None,
                   description: Description = None) -> list[dict[str, Any]]:
    """``query-memory-devices`` as the stream shows it (keys and order as QEMU 7.2's).

    The qdev ``id`` is not in the stream: it is present only for device paths mapped in ``ids``.
    """
    from vmig.analysis.virtio_mem import MemoryDeviceCollector, qmp_list

    col = MemoryDeviceCollector(keep_pages=False)
    col.feed(decode_stream(data, description=description))
    return qmp_list(col.result(), ids)


def _mismatches(expected: list[Mapping[str, Any]], actual: list[Mapping[str, Any]]) -> list[str]:
    if len(expected) != len(actual):
        return [f"{len(actual)} memory devices, expected {len(expected)}"]
    out = []
    for i, (want, got) in enumerate(zip(expected, actual)):
        if want.get("type") is not None and want.get("type") != got.get("type"):
            out.append(f"device {i}: type {got.get('type')!r}, expected {want.get('type')!r}")
        gdata = got.get("data", {})
        for k, v in (want.get("data") or {}).items():
            if gdata.get(k) != v:
                out.append(f"device {i}: {k} = {gdata.get(k)!r}, expected {v!r}")
    return out


def assert_loads_in_qemu(argv: list[str], data: bytes | Path, *, workdir: Path, postcopy: bool = False,
                         expect_memory_devices: list[Mapping[str, Any]] | None = None,
                         binary: str | None = None, timeout: float = 120.0) -> Any:
    """Load ``data`` into a fresh real QEMU started with ``argv``; it must complete.

    Args:
        argv: the source VM's command line (no binary; fixtures' manifests resolved with
            :func:`vmig.testing.fixtures.resolve_args`).
        data: the stream bytes or file.
        workdir: scratch folder for QEMU's sockets, logs and the stream file.
        postcopy: enable ``postcopy-ram`` on the destination first.
        expect_memory_devices: ``query-memory-devices`` entries QEMU must report after the load,
            in order; only the keys given in each entry's ``data`` are compared (so
            :func:`memory_devices` output, which has no ``id``, can be passed as is).
        binary: QEMU binary (default: ``qemu-system-x86_64`` / ``$VMIG_QEMU``).

    Returns:
        The :class:`vmig.testing.qemu.LoadResult`.

    Raises:
        AssertionError: QEMU refused the stream (message carries its stderr) or reported other
            memory devices than expected.
    """
    from vmig.testing import qemu

    kw: dict[str, Any] = {"workdir": Path(workdir), "postcopy": postcopy, "timeout": timeout}
    if binary is not None:
        kw["binary"] = binary
    res = qemu.load_stream(list(argv), data, **kw)
    if not res.ok:
        status = (res.status or {}).get("status")
        raise AssertionError(
            f"QEMU refused the stream (migration status {status!r}, exit code {res.returncode}):\n"
            f"{res.stderr.strip()}"
        )
    if expect_memory_devices is not None:
        problems = _mismatches(list(expect_memory_devices), res.memory_devices)
        if problems:
            raise AssertionError("after the load QEMU reports other memory devices: " + "; ".join(problems)
                                 + f"\nQEMU: {res.memory_devices}")
    return res
