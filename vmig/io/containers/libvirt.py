"""libvirt save images (``virsh save``, ``managedsave``): the header, the domain XML, and where
the QEMU stream starts.

Layout (libvirt ``src/qemu/qemu_saveimage.h`` ``virQEMUSaveHeader``, host byte order; libvirt
also accepts a byte-swapped header, and so does this module): ``magic[16]`` =
``LibvirtQemudSave`` (``LibvirtQemudPart`` while the save has not completed), then u32
``version`` (1 or 2), ``data_len``, ``was_running``, ``compressed``, ``cookieOffset`` and 14
unused u32 — 92 bytes. The domain XML (NUL-terminated, padded so libvirt can edit it in place)
fills the next ``data_len`` bytes; a ``<cookie>`` document starts ``cookieOffset`` bytes into
that area when non-zero. The QEMU stream follows at ``92 + data_len``, raw or compressed by an
external program (``compressed``: 0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd).

Sans-I/O: :func:`parse_header` takes the first 92 bytes, :func:`parse_xml` the data area.
"""

from __future__ import annotations

import struct

from vmig.errors import StreamError
from vmig.records import asdict, record

__all__ = ["HEADER_SIZE", "MAGIC", "MAGIC_PARTIAL", "COMPRESSION", "LibvirtHeader", "parse_header",
           "parse_xml", "MAX_XML_FROM_PIPE"]

MAGIC = b"LibvirtQemudSave"
MAGIC_PARTIAL = b"LibvirtQemudPart"
HEADER_SIZE = 92
#: libvirt's ``compressed`` codes (``virQEMUSaveFormat``)
COMPRESSION: dict[int, str] = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd"}
VERSIONS = (1, 2)
#: a pipe cannot be checked against a file size: the XML area read from one is capped here
MAX_XML_FROM_PIPE = 64 << 20


@record(frozen=True)
class LibvirtHeader:
    """The decoded header of a libvirt save image."""

    magic: str
    version: int
    data_len: int
    was_running: int
    compressed: int
    cookie_offset: int
    byte_order: str  # "little" or "big" (as the header was written)

    @property
    def partial(self) -> bool:
        """True for ``LibvirtQemudPart``: libvirt had not finished writing the image."""
        return self.magic == MAGIC_PARTIAL.decode()

    @property
    def compression(self) -> str:
        return COMPRESSION.get(self.compressed, f"unknown ({self.compressed})")

    @property
    def stream_offset(self) -> int:
        return HEADER_SIZE + self.data_len

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(partial=self.partial, compression=self.compression, stream_offset=self.stream_offset)
        return d


def parse_header(head: bytes, name: str, *, file_size: int | None = None) -> LibvirtHeader:
    """Decode the 92-byte header ``head`` of input ``name``.

    Args:
        file_size: the input's size when known (a regular file): ``data_len`` is checked against it.

    Raises:
        StreamError: short header, unknown version or compression code, data past the end.
    """
    magic = head[:16]
    if magic not in (MAGIC, MAGIC_PARTIAL):
        raise StreamError("not a libvirt save image", path=name, offset=0,
                          expected=MAGIC.decode(), found=repr(bytes(magic)))
    if len(head) < HEADER_SIZE:
        raise StreamError(f"libvirt save header ends early ({len(head)} of {HEADER_SIZE} bytes)",
                          path=name, offset=len(head))
    order = "<"
    version = struct.unpack_from("<I", head, 16)[0]
    if version not in VERSIONS and struct.unpack_from(">I", head, 16)[0] in VERSIONS:
        order = ">"  # written on a host of the other byte order
    version, data_len, was_running, compressed, cookie = struct.unpack_from(order + "5I", head, 16)
    if version not in VERSIONS:
        raise StreamError("unsupported libvirt save image version", path=name, offset=16,
                          expected=" or ".join(map(str, VERSIONS)), found=version)
    if compressed not in COMPRESSION:
        raise StreamError("unknown libvirt save image compression code", path=name, offset=28,
                          expected=", ".join(f"{k} {v}" for k, v in COMPRESSION.items()), found=compressed)
    if version == 1 and compressed != 0:
        raise StreamError("a version 1 libvirt save image cannot be compressed", path=name, offset=28,
                          expected=0, found=compressed)
    if file_size is not None and HEADER_SIZE + data_len > file_size:
        raise StreamError("libvirt save image: the domain XML area runs past the end of the file",
                          path=name, offset=20, expected=f"data_len <= {file_size - HEADER_SIZE}",
                          found=data_len)
    if file_size is None and data_len > MAX_XML_FROM_PIPE:
        raise StreamError("libvirt save image: domain XML area too large to read from a pipe",
                          path=name, offset=20, expected=f"data_len <= {MAX_XML_FROM_PIPE}", found=data_len)
    if cookie and cookie >= data_len:
        raise StreamError("libvirt save image: cookie offset outside the XML area", path=name, offset=32,
                          expected=f"< data_len {data_len}", found=cookie)
    return LibvirtHeader(magic.decode(), version, data_len, was_running, compressed, cookie,
                         "little" if order == "<" else "big")


def parse_xml(area: bytes, header: LibvirtHeader) -> tuple[str, str | None]:
    """``(domain XML, cookie XML or None)`` from the ``data_len`` bytes after the header."""
    end = header.cookie_offset if header.cookie_offset else len(area)
    xml = area[:end].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    cookie = None
    if header.cookie_offset:
        cookie = area[header.cookie_offset:].split(b"\0", 1)[0].decode("utf-8", errors="replace") or None
    return xml, cookie


def domain_name(xml: str) -> str | None:
    """The ``<name>`` of a domain XML document (None when absent or unparsable)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    el = root.find("name")
    return el.text if el is not None else None
