"""Wire layouts of the virtio-mem config space and virtqueue request/response structs.

Covers the 56-byte device config (``struct virtio_mem_config``), the 24-byte guest request
(``struct virtio_mem_req``) and the 10-byte device response (``struct virtio_mem_resp``), all
little-endian as in the virtio specification and QEMU's ``include/standard-headers/linux/virtio_mem.h``
(mirrored, not copied). Declared with construct; these are control-path structs (one per guest
request), never a per-page hot path.
"""

from __future__ import annotations

import enum

from construct import Bytes, Int16ul, Int64ul, Padding, Struct

__all__ = [
    "CONFIG_SIZE",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "RequestType",
    "ResponseType",
    "BlockState",
    "VirtioMemConfig",
    "VirtioMemRequest",
    "VirtioMemResponse",
    "build_request",
    "build_response",
]

CONFIG_SIZE = 56
REQUEST_SIZE = 24
RESPONSE_SIZE = 10


class RequestType(enum.IntEnum):
    """``VIRTIO_MEM_REQ_*``."""

    PLUG = 0
    UNPLUG = 1
    UNPLUG_ALL = 2
    STATE = 3


class ResponseType(enum.IntEnum):
    """``VIRTIO_MEM_RESP_*``."""

    ACK = 0
    NACK = 1
    BUSY = 2
    ERROR = 3


class BlockState(enum.IntEnum):
    """``VIRTIO_MEM_STATE_*`` (payload of an ACKed STATE request)."""

    PLUGGED = 0
    UNPLUGGED = 1
    MIXED = 2


# struct virtio_mem_config: block_size, node_id, 6 pad, addr, region_size, usable_region_size,
# plugged_size, requested_size.  The padding is written as zeros; on parse it is skipped.
VirtioMemConfig = Struct(
    "block_size" / Int64ul,
    "node_id" / Int16ul,
    Padding(6),
    "addr" / Int64ul,
    "region_size" / Int64ul,
    "usable_region_size" / Int64ul,
    "plugged_size" / Int64ul,
    "requested_size" / Int64ul,
)

# struct virtio_mem_req: the union's three members (plug/unplug/state) share one layout
# (addr le64, nb_blocks le16, 6 padding); UNPLUG_ALL ignores them.
VirtioMemRequest = Struct(
    "type" / Int16ul,
    "padding" / Bytes(6),
    "addr" / Int64ul,
    "nb_blocks" / Int16ul,
    "padding2" / Bytes(6),
)

# struct virtio_mem_resp: type, 6 padding, union { state le16 }.
VirtioMemResponse = Struct(
    "type" / Int16ul,
    Padding(6),
    "state" / Int16ul,
)

_ZERO6 = bytes(6)
assert VirtioMemConfig.sizeof() == CONFIG_SIZE
assert VirtioMemRequest.sizeof() == REQUEST_SIZE
assert VirtioMemResponse.sizeof() == RESPONSE_SIZE


def build_request(type: int, addr: int = 0, nb_blocks: int = 0) -> bytes:
    """Encode one guest request (24 bytes, zero padding).

    Args:
        type: a :class:`RequestType` (any u16 is accepted, to build protocol violations).
        addr: guest-physical start address (PLUG/UNPLUG/STATE).
        nb_blocks: number of device blocks (u16).
    """
    return VirtioMemRequest.build(
        dict(type=int(type), padding=_ZERO6, addr=addr, nb_blocks=nb_blocks, padding2=_ZERO6)
    )


def build_response(type: int, state: int = 0) -> bytes:
    """Encode one device response (10 bytes)."""
    return VirtioMemResponse.build(dict(type=int(type), state=int(state)))
