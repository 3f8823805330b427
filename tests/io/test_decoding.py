"""The decoder factory (vmig/io/decoding.py): one choice of layouts for every way of decoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmig.errors import StreamError
from vmig.io.decoding import decode_bytes, make_layout
from vmig.io.streams import iter_events
from vmig.stream.events import DeviceState, SectionHeader
from vmig.stream.vmdesc import find_trailer
from vmig.testing import fixtures

ROOT = Path(__file__).resolve().parents[2]
NO_TRAILER = [n for n in fixtures.names() if find_trailer(fixtures.load(n)) is None]


def test_builtin_layouts_do_not_depend_on_import_order() -> None:
    """Importing the virtio-mem schemas teaches a bare resolver nothing; the factory's resolver
    measures virtio-mem sections whatever was imported before."""
    code = (
        "from vmig.io.decoding import make_layout\n"
        "idstr = '0000:00:02.0/virtio-mem'\n"
        "assert make_layout(schema_sets=False).has_layout(idstr, 0, full=True)\n"
        "import vmig.vmstate.virtio_mem\n"
        "from vmig.stream.layout import LayoutResolver\n"
        "assert not LayoutResolver().has_layout(idstr, 0, full=True)\n"
        "assert LayoutResolver().has_layout('block', 0, full=False)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr


def test_trailer_first_then_given_descriptions() -> None:
    data = fixtures.sample_s1().read_bytes()
    own = find_trailer(data)[1]
    layout = make_layout(whole=data, schema_sets=False)
    assert [d.raw for d in layout.descriptions] == [own.raw]


def test_file_and_bytes_decode_alike_without_trailer(tmp_path: Path) -> None:
    assert NO_TRAILER, "the repository's fixtures include postcopy / suppress-vmdesc captures"
    name = NO_TRAILER[0]
    data = fixtures.load(name)
    path = tmp_path / "s.bin"
    path.write_bytes(data)

    def sections(events) -> list[tuple[str, int, int]]:  # noqa: ANN001
        return [(e.idstr, e.offset, e.length) for e in events if isinstance(e, DeviceState)]

    from_file = sections(iter_events(str(path), schema_sets=True))
    assert from_file == sections(decode_bytes(data)) and len(from_file) > 20


def test_schema_set_failures_reach_the_file_error(tmp_path: Path) -> None:
    """A trailer-less stream cut inside a FULL section: the error of iter_events says why the
    bundled schema set could not walk it (the same path decode_bytes takes)."""
    data = fixtures.load(NO_TRAILER[0])
    hdr = next(e for e in decode_bytes(data) if isinstance(e, SectionHeader) and e.type == 4
               and e.idstr not in ("ram",) and "virtio-mem" not in e.idstr)
    payload = next(e for e in decode_bytes(data) if isinstance(e, DeviceState)
                   and e.offset > hdr.offset)
    cut = data[: payload.offset + max(1, payload.length // 2)]
    path = tmp_path / "cut.bin"
    path.write_bytes(cut)
    with pytest.raises(StreamError) as from_file:
        list(iter_events(str(path), schema_sets=True))
    with pytest.raises(StreamError) as from_bytes:
        decode_bytes(cut)
    assert "vmig's schema set could not walk" in from_file.value.message
    assert str(path) in str(from_file.value)
    assert from_file.value.message == from_bytes.value.message
