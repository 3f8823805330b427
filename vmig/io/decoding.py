"""The one place where a stream decoder is assembled: which descriptions and layouts measure sections.

QEMU writes no length for a non-RAM section (migration/savevm.c ``vmstate_save``); a reader
learns it from a description. Every decoder vmig builds for an input gets its
:class:`~vmig.stream.layout.LayoutResolver` here, consulted in this order:

1. the stream's own vmdesc trailer, when the whole stream is at hand (``whole``);
2. the ``descriptions`` given by the caller (``--desc-from``, a trailer of another capture);
3. the built-in layouts of :func:`builtin_layouts` (block, dirty-bitmap, virtio-mem);
4. with ``schema_sets``, vmig's bundled schema set of the stream's machine type
   (:mod:`vmig.vmstate.machines`), chosen from the CONFIGURATION record.

:func:`explain` appends why the schema set could not walk a section to a decoder's error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from vmig.errors import StreamError
from vmig.stream.decoder import StreamDecoder
from vmig.stream.events import Event
from vmig.stream.layout import STREAM_LAYOUTS, LayoutResolver, MeasureFn
from vmig.stream.vmdesc import VmDescription, find_trailer
from vmig.vmstate.machines import MachineLayoutResolver

__all__ = ["builtin_layouts", "make_layout", "new_decoder", "decode_bytes", "explain"]


def builtin_layouts() -> Mapping[str, MeasureFn]:
    """The explicit table of built-in layouts every decoder of an input gets: the wire codec's
    (:data:`~vmig.stream.layout.STREAM_LAYOUTS`) and the virtio-mem sections'
    (:data:`vmig.vmstate.virtio_mem.LAYOUTS`, imported here, not at module load: light import)."""
    from vmig.vmstate.virtio_mem import LAYOUTS as VIRTIO_MEM_LAYOUTS

    return MappingProxyType({**STREAM_LAYOUTS, **VIRTIO_MEM_LAYOUTS})


def make_layout(*, whole: bytes | memoryview | None = None,
                descriptions: Iterable[VmDescription | None] = (),
                schema_sets: bool = True) -> LayoutResolver:
    """The layout resolver for one input (order in the module docstring).

    Args:
        whole: the whole stream, when at hand: its own trailer is located and consulted first.
        descriptions: further descriptions in priority order (None entries are skipped).
        schema_sets: end with the bundled schema set of the stream's machine type.
    """
    if schema_sets:
        layout: LayoutResolver = MachineLayoutResolver(layouts=builtin_layouts())
    else:
        layout = LayoutResolver(layouts=builtin_layouts())
    if whole is not None:
        found = find_trailer(whole)
        if found is not None:
            layout.add_description(found[1])
    for d in descriptions:
        if d is not None:
            layout.add_description(d)
    return layout


def new_decoder(*, whole: bytes | memoryview | None = None,
                descriptions: Iterable[VmDescription | None] = (), schema_sets: bool = True,
                fast: bool = True, name: str | None = "<bytes>") -> StreamDecoder:
    """A :class:`StreamDecoder` with the layouts of :func:`make_layout` (``name`` goes into
    its errors). ``whole`` only locates the trailer: the caller still feeds the bytes."""
    layout = make_layout(whole=whole, descriptions=descriptions, schema_sets=schema_sets)
    dec = StreamDecoder(path=name, layout=layout, fast=fast)
    if isinstance(layout, MachineLayoutResolver):
        layout.bind(dec)  # the schema set is chosen from the CONFIGURATION record's machine name
    return dec


def explain(e: StreamError, dec: StreamDecoder) -> StreamError:
    """Append to ``e`` why the bundled schema set could not walk a section, if it tried."""
    layout = dec.layout
    if isinstance(layout, MachineLayoutResolver) and layout.failures:
        e.message += "; vmig's schema set could not walk: " + "; ".join(layout.failures[:2])
    return e


def decode_bytes(data: bytes | memoryview, *, description: VmDescription | None = None,
                 schema_sets: bool = True, fast: bool = True,
                 name: str | None = "<bytes>") -> list[Event]:
    """All events of an in-memory stream, measured as :func:`make_layout` says (so a postcopy or
    trailer-less stream of a known machine type decodes too).

    Raises:
        StreamError: the stream is invalid.
    """
    dec = new_decoder(whole=data, descriptions=[description], schema_sets=schema_sets, fast=fast,
                      name=name)
    try:
        dec.receive_data(data)
        dec.receive_data(b"")
        return list(dec.events())
    except StreamError as e:
        explain(e, dec)
        raise
