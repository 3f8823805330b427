"""A one-screen summary of an input: the containers around the stream, then the stream itself —
machine type, the sections it carries (counted when complete), its devices and RAM totals.

Sans-I/O: :class:`Summary` is fed decoder events (and given the container layers the input layer
found, :class:`vmig.io.containers.Layer`); :func:`render_text` turns its JSON document into the
text ``vmig info STREAM`` prints. The RAM numbers come from :class:`vmig.analysis.ram.RamView`
(the same counting as ``vmig ram``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from vmig.analysis.ram import RamView
from vmig.stream.constants import SectionType
from vmig.stream.events import (
    Command,
    Configuration,
    EndOfStream,
    FileHeader,
    SectionEnd,
    SectionHeader,
    VmDescriptionEvent,
)

__all__ = ["Summary", "render_text", "container_text"]

_MACHINE_VERSION = re.compile(r"-(\d+)\.(\d+)$")


class Summary:
    """Accumulates what ``vmig info STREAM`` reports."""

    def __init__(self) -> None:
        self.ram = RamView()
        self.version: int | None = None
        self.machine: str | None = None
        self.kinds: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.devices: dict[tuple[str, int], dict[str, Any]] = {}
        self.iterative: dict[str, int] = {}
        self.trailer = False
        self.eof = False
        self.end = 0
        self._open: SectionHeader | None = None

    def feed(self, ev: Any) -> None:
        self.ram.feed(ev)
        if isinstance(ev, SectionHeader):
            self._open = ev  # counted once complete (a cut input may end inside it)
        elif isinstance(ev, SectionEnd) and self._open is not None:
            h, self._open = self._open, None
            self.kinds[h.type.name] += 1
            if h.idstr is not None and h.type == SectionType.SECTION_FULL:
                self.devices[(h.idstr, h.instance_id)] = {
                    "idstr": h.idstr, "instance_id": h.instance_id, "version_id": h.version_id}
            elif h.idstr is not None and h.type == SectionType.SECTION_START:
                self.iterative[h.idstr] = h.version_id
        elif isinstance(ev, FileHeader):
            self.version = ev.version
        elif isinstance(ev, Configuration):
            self.machine = ev.name
        elif isinstance(ev, Command):
            self.commands[ev.cmd.name] += 1
        elif isinstance(ev, EndOfStream):
            self.eof = True
        elif isinstance(ev, VmDescriptionEvent):
            self.trailer = True
        length = getattr(ev, "length", None)
        offset = getattr(ev, "offset", None)
        if isinstance(length, int) and isinstance(offset, int):
            self.end = max(self.end, offset + length)

    def to_json(self, layers: list[Any] | None = None) -> dict[str, Any]:
        m = _MACHINE_VERSION.search(self.machine or "")
        ram = self.ram.to_json()
        return {
            "containers": [layer.to_json() for layer in (layers or [])],
            "stream": {
                "bytes": self.end,
                "version": self.version,
                "machine": self.machine,
                "qemu_at_least": f"{m.group(1)}.{m.group(2)}" if m else None,
                "eof": self.eof,
                "vmdesc_trailer": self.trailer,
            },
            "sections": dict(sorted(self.kinds.items())),
            "commands": dict(sorted(self.commands.items())),
            "iterative": [{"idstr": k, "version_id": v} for k, v in self.iterative.items()],
            "devices": list(self.devices.values()),
            "ram": {"blocks": [{"idstr": b["idstr"], "length": b["length"], "normal": b["normal"],
                                "zero": b["zero"], "bytes": b["bytes"]} for b in ram["blocks"]],
                    "totals": ram["totals"]},
        }


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def container_text(layers: list[dict[str, Any]]) -> list[str]:
    """Lines describing the container layers (outermost first) of a summary document."""
    lines: list[str] = []
    for layer in layers:
        kind = layer["kind"]
        if kind == "libvirt":
            lines.append(
                f"container: libvirt save image ({layer['magic']} version {layer['version']}, "
                f"{layer['byte_order']}-endian): domain {layer.get('domain')!r}, was_running "
                f"{layer['was_running']}, compressed {layer['compressed']} ({layer['compression']}), "
                f"data_len {layer['data_len']}, cookieOffset {layer['cookie_offset']}, stream at byte "
                f"{layer['stream_offset']}")
        elif kind == "qcow2":
            sel = layer.get("selected")
            lines.append(f"container: qcow2 version {layer['version']}, cluster size {layer['cluster_size']}, "
                         f"virtual size {layer['virtual_size']}, {len(layer['snapshots'])} internal snapshot(s)"
                         + (f"; reading snapshot {sel['id']} {sel['name']!r}" if sel else ""))
            lines.extend("  " + line for line in layer.get("listing", "").splitlines())
        else:
            lines.append(f"container: {kind}-compressed")
    return lines


def render_text(doc: dict[str, Any]) -> str:
    """The text of ``vmig info STREAM`` for a :meth:`Summary.to_json` document."""
    lines = container_text(doc["containers"]) or ["container: none (plain stream)"]
    s = doc["stream"]
    lines.append(f"stream: {s['bytes']} bytes, format version {s['version']}, machine {s['machine']}"
                 + (f" (QEMU {s['qemu_at_least']} or later)" if s["qemu_at_least"] else "")
                 + f", EOF {'yes' if s['eof'] else 'no'}, vmdesc trailer {'yes' if s['vmdesc_trailer'] else 'no'}")
    lines.append("sections: " + (", ".join(f"{k} {v}" for k, v in doc["sections"].items()) or "none"))
    if doc["commands"]:
        lines.append("commands: " + ", ".join(f"{k} {v}" for k, v in doc["commands"].items()))
    if doc["iterative"]:
        lines.append("iterative: " + ", ".join(f"{d['idstr']} v{d['version_id']}" for d in doc["iterative"]))
    lines.append(f"devices: {len(doc['devices'])}")
    for d in doc["devices"]:
        lines.append(f"  {d['idstr']} instance {d['instance_id']} version {d['version_id']}")
    t = doc["ram"]["totals"]
    lines.append(f"RAM: {len(doc['ram']['blocks'])} block(s), normal pages {t['normal']}, zero pages {t['zero']}, "
                 f"xbzrle {t['xbzrle']}, compressed {t['compressed']}, {t['bytes']} bytes")
    for b in doc["ram"]["blocks"]:
        lines.append(f"  {b['idstr']} {_mib(b['length'])}: normal {b['normal']}, zero {b['zero']}, {b['bytes']} bytes")
    return "\n".join(lines) + "\n"
