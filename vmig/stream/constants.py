"""Wire constants of QEMU's migration stream, with QEMU's names (migration/savevm.c, ram.c).

Names are kept so that a reader can grep between vmig and QEMU: ``QEMU_VM_SECTION_START`` is
``SectionType.SECTION_START``, ``RAM_SAVE_FLAG_CONTINUE`` is ``RamFlag.CONTINUE``,
``MIG_CMD_POSTCOPY_ADVISE`` is ``MigCmd.POSTCOPY_ADVISE``.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION = 3
QEMU_VM_FILE_VERSION_COMPAT = 2  # recognised only to be rejected as obsolete

VMS_NULLPTR_MARKER = 0x30
TARGET_PAGE_SIZE_X86 = 4096
RP_RECV_BITMAP_ENDING = 0x0123456789ABCDEF
MULTIFD_MAGIC = 0x11223344
DISCARD_VERSION = 0
DISCARD_MAX_RANGES = 12


class SectionType(IntEnum):
    """The type byte of a top-level record (QEMU_VM_*)."""

    EOF = 0x00
    SECTION_START = 0x01
    SECTION_PART = 0x02
    SECTION_END = 0x03
    SECTION_FULL = 0x04
    SUBSECTION = 0x05
    VMDESCRIPTION = 0x06
    CONFIGURATION = 0x07
    COMMAND = 0x08
    SECTION_FOOTER = 0x7E


class RamFlag(IntFlag):
    """RAM_SAVE_FLAG_* bits in the low bits of a RAM record word."""

    FULL = 0x001
    ZERO = 0x002
    MEM_SIZE = 0x004
    PAGE = 0x008
    EOS = 0x010
    CONTINUE = 0x020
    XBZRLE = 0x040
    HOOK = 0x080
    COMPRESS_PAGE = 0x100
    MULTIFD_FLUSH = 0x200


ENCODING_FLAG_XBZRLE = 0x01


class MigCmd(IntEnum):
    """MIG_CMD_* command numbers of COMMAND (0x08) records."""

    INVALID = 0
    OPEN_RETURN_PATH = 1
    PING = 2
    POSTCOPY_ADVISE = 3
    POSTCOPY_LISTEN = 4
    POSTCOPY_RUN = 5
    POSTCOPY_RAM_DISCARD = 6
    PACKAGED = 7
    ENABLE_COLO = 8
    POSTCOPY_RESUME = 9
    RECV_BITMAP = 10
    SWITCHOVER_START = 11


class RpMsg(IntEnum):
    """MIG_RP_MSG_* types on the return path (destination to source)."""

    INVALID = 0
    SHUT = 1
    PONG = 2
    REQ_PAGES_ID = 3
    REQ_PAGES = 4
    RECV_BITMAP = 5
    RESUME_ACK = 6
    SWITCHOVER_ACK = 7
