"""Helpers for the vmstate tests: real streams (s1.bin + fixtures/) decoded once.

The streams are decoded with the real decoder (``vmig.stream.decoder``); a stream without a
trailer is decoded with the description of the fixture its manifest names in ``desc_from``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

from vmig.stream.decoder import decode
from vmig.stream.events import Command, DeviceState, Event
from vmig.stream.layout import LayoutResolver
from vmig.stream.vmdesc import VmDescription, find_trailer
from vmig.testing import fixtures

S1 = "s1"


def stream_names() -> list[str]:
    """s1 plus every committed fixture that is a QEVM stream (not a recorded return path)."""
    return [S1, *(n for n in fixtures.names() if fixtures.manifest(n).get("kind") != "return-path")]


@cache
def stream_bytes(name: str) -> bytes:
    if name == S1:
        return fixtures.sample_s1().read_bytes()
    return fixtures.load(name)


@cache
def own_description(name: str) -> VmDescription | None:
    found = find_trailer(stream_bytes(name))
    return None if found is None else found[1]


@cache
def desc_from(name: str) -> VmDescription | None:
    """The description of the fixture named by the manifest's ``desc_from``, if any."""
    if name == S1:
        return None
    other = fixtures.manifest(name).get("desc_from")
    if not other:
        return None
    return own_description(other)


@dataclass(frozen=True)
class Decoded:
    name: str
    events: list[Event]
    own: VmDescription | None
    other: VmDescription | None

    def descriptions(self) -> list[VmDescription]:
        return [d for d in (self.own, self.other) if d is not None]

    def device_states(self) -> list[DeviceState]:
        out: list[DeviceState] = []

        def walk(evs: Any) -> None:
            for ev in evs:
                if isinstance(ev, DeviceState):
                    out.append(ev)
                if isinstance(ev, Command) and ev.children:
                    walk(ev.children)

        walk(self.events)
        return out

    def entry_for(self, ev: DeviceState) -> Any:
        for d in self.descriptions():
            entry = d.device(ev.idstr, ev.instance_id)
            if entry is not None:
                return entry
        return None


@cache
def decoded(name: str) -> Decoded:
    own, other = own_description(name), desc_from(name)
    layout = LayoutResolver([d for d in (own, other) if d is not None])
    return Decoded(name, decode(stream_bytes(name), layout=layout), own, other)


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
