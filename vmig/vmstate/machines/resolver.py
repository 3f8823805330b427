"""The layout resolver that ends with the bundled schema set of the stream's machine type.

Theory of operation:
  1. The sets are the last resort of :class:`MachineLayoutResolver`: the stream's own trailer,
     ``--desc-from`` and the table of built-in layouts win; the set answers only at end of input
     when the tail holds no trailer.
  2. The set is chosen from the CONFIGURATION record's machine name (every set is tried when
     the stream has none); a walk's candidate end is accepted only if a section end follows it
     (with footers: a footer naming this section's id).
  3. Nothing matches → the decoder's :class:`~vmig.errors.SchemaError` names the section and says
     to use ``--desc-from``; ``MachineLayoutResolver.failures`` says why the set did not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from vmig.errors import SchemaError
from vmig.stream.inbuf import NeedMoreInput
from vmig.stream.layout import LayoutResolver, MeasureFn, fits_section_end
from vmig.stream.vmdesc import find_trailer
from vmig.vmstate.machines.schemas import MachineSchemas, available_machines, load_schema_set


class MachineLayoutResolver(LayoutResolver):
    """A :class:`~vmig.stream.layout.LayoutResolver` that falls back to the bundled schema set
    of the stream's machine type for FULL sections nothing else describes.

    Order: the stream's own trailer and ``--desc-from`` descriptions, the table of built-in
    layouts (virtio-mem), then the schema set chosen from the CONFIGURATION record's machine
    name (``machine`` callable, e.g. ``lambda: decoder.configuration.name``, or a fixed name).

    Args:
        descriptions, layouts: as for LayoutResolver.
        machine: machine type name, or a callable returning it (None until known).
    """

    def __init__(self, descriptions: Iterable[Any] = (), layouts: Mapping[str, MeasureFn] | None = None,
                 machine: str | Callable[[], str | None] | None = None) -> None:
        super().__init__(descriptions, layouts)
        self._machine = machine
        self._sets: dict[str, MachineSchemas | None] = {}
        #: why the schema set could not walk a section (for a caller's error message)
        self.failures: list[str] = []
        self._trailer_checked: bool | None = None

    def bind(self, decoder: Any) -> MachineLayoutResolver:
        """Take the machine name from ``decoder.configuration`` when it has been read."""
        self._machine = lambda: decoder.configuration.name if decoder.configuration else None
        return self

    def _tail_has_trailer(self, view: memoryview) -> bool:
        if self._trailer_checked is None:
            self._trailer_checked = find_trailer(view) is not None
        return self._trailer_checked

    @property
    def machine(self) -> str | None:
        m = self._machine
        return m() if callable(m) else m

    def schema_set(self) -> MachineSchemas | None:
        name = self.machine
        if name is None:
            return None
        if name not in self._sets:
            self._sets[name] = load_schema_set(name)
        return self._sets[name]

    def has_layout(self, idstr: str, instance_id: int, full: bool) -> bool:
        if super().has_layout(idstr, instance_id, full):
            return True
        ss = self.schema_set()
        return bool(full and ss is not None and ss.variants(idstr))

    def measure(self, view: memoryview, *, idstr: str, instance_id: int, version_id: int,
                section_id: int, full: bool, at_eof: bool, offset: int = 0,
                footers: bool | None = None) -> int | None:
        n = super().measure(view, idstr=idstr, instance_id=instance_id, version_id=version_id,
                            section_id=section_id, full=full, at_eof=at_eof, offset=offset,
                            footers=footers)
        if n is not None or not full:
            return n
        # The schema sets are the last resort: the stream's own trailer (located by the
        # decoder in the buffered tail at end of input) must win, so answer only once all
        # input is here and the tail holds no trailer.
        if not at_eof:
            return None
        if self._tail_has_trailer(view):
            return None
        ss = self.schema_set()
        if ss is None:
            if self.machine is not None:
                return None
            # No CONFIGURATION record (send-configuration=off): try every bundled set; the
            # section-end check below keeps a wrong guess from being accepted.
            saved = self._machine
            for name in available_machines():
                self._machine = name
                try:
                    n = self.measure(view, idstr=idstr, instance_id=instance_id,
                                     version_id=version_id, section_id=section_id, full=full,
                                     at_eof=at_eof, offset=offset, footers=footers)
                finally:
                    self._machine = saved
                if n is not None:
                    return n
            return None
        if not ss.variants(idstr):
            # Not covered: let the decoder look for a trailer and, failing that, raise its
            # SchemaError naming the section and suggesting --desc-from.
            return None
        def check(end: int) -> bool:
            return bool(fits_section_end(view, end, at_eof, footers, section_id))

        try:
            return ss.measure(idstr, version_id, view, check=check, offset=offset)
        except NeedMoreInput:
            # all input is here (at_eof): every variant ran past the end or failed
            self.failures.append(f"{idstr} instance {instance_id}: every schema-set walk ran past "
                                 "the end of the input")
            return None
        except SchemaError as e:
            self.failures.append(f"{idstr} instance {instance_id}: {e.message}")
            return None
