"""Helpers for round-trip migration tests: byte-exact codec checks, device-state edits, loads.

What it covers:

* :func:`assert_roundtrip` — decode → encode must give the input back byte for byte; a mismatch
  names the first differing offset and the top-level record that holds it
  (:func:`describe_mismatch` does the reporting and is usable on any two byte strings);
* :func:`edit_device_state` — decode one device section's payload (the stream's own trailer
  through :class:`~vmig.vmstate.engine.SchemaSet`, or the built-in virtio-mem codecs),
  let a callback mutate the values, re-encode them and splice them back into the stream;
  :func:`set_virtio_mem_plugged` sets a virtio-mem bitmap and ``size`` consistently;
* :func:`memory_devices` — ``query-memory-devices`` as the stream shows it (:mod:`vmig.analysis.virtio_mem`);
* :func:`assert_loads_in_qemu` — loads a stream into a real QEMU
  (:func:`vmig.testing.qemu.load_stream`) and fails with QEMU's stderr when QEMU refuses it.

Mirrors QEMU's migration/savevm.c (section framing; the loader reads a FULL section's payload
with no length field, so an edited payload must keep its length) and hw/virtio/virtio-mem.c
(``size`` is the number of plugged blocks times ``block-size``; the ``tmp`` fields are checked
against the destination's properties at load).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vmig.errors import UsageError
from vmig.io.streams import records
from vmig.stream import events as ev
from vmig.stream.encoder import encode
from vmig.stream.vmdesc import VmDescription, find_trailer
from vmig.vmstate import virtio_mem as vm

__all__ = [
    "assert_roundtrip",
    "describe_mismatch",
    "decode_stream",
    "edit_device_state",
    "set_virtio_mem_plugged",
    "virtio_mem_plugged",
    "memory_devices",
    "assert_loads_in_qemu",
]

Description = VmDescription | bytes | None


def _as_description(description: Description) -> VmDescription | None:
    if description is None or isinstance(description, VmDescription):
        return description
    return VmDescription(description, source="description")


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


# --------------------------------------------------------------------------- device-state edits


def _device_states(events: Iterable[ev.Event]) -> Iterator[ev.DeviceState]:
    for e in events:
        if isinstance(e, ev.Command) and e.children:
            yield from _device_states(e.children)
        elif isinstance(e, ev.DeviceState):
            yield e


def _codec(e: ev.DeviceState, trailer: VmDescription | None) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    section = f"{e.idstr} instance {e.instance_id}"
    if e.idstr.endswith(vm.IDSTR_SUFFIX):
        return (lambda p: vm.decode_virtio_mem(p, offset=e.offset, section=section)), vm.encode_virtio_mem
    if e.idstr.endswith(vm.IDSTR_SUFFIX_EARLY):
        return (lambda p: vm.decode_early(p, offset=e.offset, section=section)), vm.encode_early
    if trailer is None:
        raise UsageError(f"cannot decode {section}: the stream has no trailer and no description was given")
    from vmig.vmstate.engine import SchemaSet

    schema = SchemaSet(trailer.root).for_section(e.idstr, e.instance_id)
    if schema is None:
        raise UsageError(f"cannot decode {section}: not in the description ({trailer.source})")
    return (lambda p: schema.decode(p, offset=e.offset, section=section)), schema.encode


def edit_device_state(data: bytes, idstr_suffix: str, edit: Callable[[Any], None], *,
                      description: Description = None) -> bytes:
    """Return ``data`` with one device section's state re-encoded after ``edit(values)``.

    The section is the only ``DeviceState`` (also inside postcopy PACKAGED blobs) whose idstr
    ends with ``idstr_suffix``. Its payload is decoded with the built-in virtio-mem codecs
    (``…/virtio-mem``, ``…/virtio-mem-device-early``) or the schema the stream's own trailer
    (else ``description``) gives for ``(idstr, instance)``; ``edit`` mutates the values in place.

    The payload must keep its length: QEMU's loader reads FULL payloads without a length
    field, and a changed length would also have to change the trailer's recorded ``size``s and
    any enclosing PACKAGED length. vmig refuses such edits rather than rewrite QEMU's JSON.

    Raises:
        UsageError: no or several matching sections, no schema for it, or the edit changed
            the payload length.
        SchemaError: the payload or the edited values do not fit the schema.
    """
    events = decode_stream(data, description=description)
    matches = [e for e in _device_states(events) if e.idstr.endswith(idstr_suffix)]
    if not matches:
        raise UsageError(f"no device section whose idstr ends with {idstr_suffix!r}")
    if len(matches) > 1:
        names = ", ".join(f"{e.idstr} instance {e.instance_id}" for e in matches)
        raise UsageError(f"{idstr_suffix!r} matches {len(matches)} sections ({names}); use a longer suffix")
    e = matches[0]
    found = find_trailer(data)
    trailer = found[1] if found is not None else _as_description(description)
    decode_payload, encode_payload = _codec(e, trailer)
    values = decode_payload(bytes(e.payload))
    edit(values)
    new = encode_payload(values)
    if len(new) != e.length:
        raise UsageError(
            f"edited {e.idstr} instance {e.instance_id} payload is {len(new)} bytes, was {e.length}: "
            "a FULL section payload has no length field, so the stream (and its trailer sizes) "
            "cannot be kept valid; keep the payload length unchanged"
        )
    out = bytearray(data)
    out[e.offset : e.offset + e.length] = new
    return bytes(out)


def _blocks_to_bool(blocks: Iterable[int] | np.ndarray, nblocks: int) -> np.ndarray:
    if isinstance(blocks, np.ndarray) and blocks.dtype == bool:
        if blocks.shape != (nblocks,):
            raise UsageError(f"bitmap has shape {blocks.shape}, the device has {nblocks} blocks")
        return blocks.copy()
    idx = np.asarray(list(blocks) if not isinstance(blocks, np.ndarray) else blocks, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= nblocks):
        raise UsageError(f"block numbers must be in 0..{nblocks - 1}, got {idx.min()}..{idx.max()}")
    out = np.zeros(nblocks, dtype=bool)
    out[idx] = True
    return out


def set_virtio_mem_plugged(data: bytes, blocks: Iterable[int] | np.ndarray, *,
                           device: str | None = None) -> bytes:
    """Return ``data`` with exactly ``blocks`` plugged on a virtio-mem device.

    Args:
        data: a complete stream with a virtio-mem device.
        blocks: block numbers to plug, or a bool array with one entry per block.
        device: the device path (``0000:00:02.0``); needed when the stream has several.

    Sets the bitmap and ``size`` (= plugged blocks × ``block_size``) together, in the
    ``…/virtio-mem`` section (≤ 7.2 layout) or the 8.0+ ``…/virtio-mem-device-early`` one.
    Nothing else changes: ``requested-size`` and the usable region stay as they were.
    """
    prefix = device or ""

    def apply(part: Any) -> None:
        tmp = part["tmp"]
        nblocks = vm.block_count(int(tmp["region_size"]), int(tmp["block_size"]))
        bits = _blocks_to_bool(blocks, nblocks)
        part["bitmap"] = bits
        part["size"] = int(bits.sum()) * int(tmp["block_size"])

    try:
        return edit_device_state(data, prefix + vm.IDSTR_SUFFIX, lambda s: apply(s["device"]))
    except KeyError:
        # 8.0+ early migration: tmp/size/bitmap moved to the early section
        return edit_device_state(data, prefix + vm.IDSTR_SUFFIX_EARLY, apply)


def virtio_mem_plugged(data: bytes, *, device: str | None = None) -> np.ndarray:
    """The plugged-block bool array of a virtio-mem device in ``data`` (see :mod:`vmig.analysis.virtio_mem`)."""
    from vmig.analysis.virtio_mem import MemoryDeviceCollector

    col = MemoryDeviceCollector(keep_pages=False)
    col.feed(decode_stream(data))
    devs = [d for d in col.result() if device is None or d.path == device]
    if len(devs) != 1:
        raise UsageError(f"expected one virtio-mem device{' ' + device if device else ''}, found {len(devs)}")
    return np.asarray(devs[0].bitmap, dtype=bool)


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
